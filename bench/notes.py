# Explanations for missed goals, used by report.py. Each entry is printed
# under "Missed goals: why" only when a row with that id misses its goal in
# the run being reported; `{name}` fields are filled from that run's numbers
# (see `ctx` in report.py). The causes were established with the strace and
# perf profiles that bench/run also records (see the end of RESULTS.md).


def notes(c):
    return {
        "B1": f"""
Each job is two process starts and, in fspl, three flushes where Filespooler
makes two: `prepare -s` advances the sequence file in place (`pwrite` +
`fdatasync`, no journal commit while its length stays), and `queue-write`
`fsync`s the new job and then its directory (syscall table: B1 ours 2
`fsync`, ref 1, for `queue-write` alone). Each is needed for a promise
(docs/durability.md, "Every flush"): Filespooler skips the directory
flushes and can lose an acknowledged job or a used number. On this disk a
create + `fsync` + directory `fsync` costs {c['create_ms']} ms, an in-place
`fdatasync` {c['fdatasync_ms']} ms; per job fspl takes {c['b1_ours_ms']} ms
and Filespooler {c['b1_ref_ms']} ms. Measured alone (B0 under "All
measurements"): `prepare -s SEQ` {c['prepseq_ours']} against
{c['prepseq_ref']}, the same without a sequence file (`-s -`, no flush)
{c['prep_ours']} against {c['prep_ref']}, one `queue-write` {c['qw_ours']}
against {c['qw_ref']}, and `--version` {c['start_ours']} against
{c['start_ref']}. fspl's binary is larger (text {c['text_ours']} against
{c['text_ref']}: zstd, xz, gzip, lz4, BLAKE3, signatures and encryption),
and `queue-write` now checks every job (header CRCs, payload digest), whose
CPU feature probes trap to the hypervisor in a VM (`std_detect`, BLAKE3's
AVX-512 probe). Start-up was trimmed already: fspl loads neither
`libgcc_s` (its `__cpu_indicator_init` alone is a series of trapping
`cpuid`s) nor `libm`, and clap builds only the options of the command
used. The flush latency of this shared virtual disk moves the row more
than any of that; read the spread under "All measurements".
""",
        "B2": f"""
Per job: fspl {c['b2_ours_ms']} ms, Filespooler {c['b2_ref_ms']} ms, plain
`xargs -n1 true` {c['b2_raw_ms']} ms, so nearly all of it is starting the
command. On top of that fspl makes the advance durable (`pwrite` +
`fdatasync` of nextseq, {c['fdatasync_ms']} ms on this disk) and unlinks the
job file; the syscall table shows nothing else per job (`openat` and one
header `read`, a few `statx`, the spawn, `fdatasync`, `unlink`; the payload
file itself is handed to the command, no copy). Filespooler's advance
(write `nextseq.temp`, `fsync`, `rename`, and no directory flush, so it is
not durable) costs a little more than ours. Both ratios sit close to their
goals and move with the disk's flush latency: over three consecutive quiet
full runs on this machine ours/raw was 0.96×, 1.00× and 1.22×, ours/ref
0.81×, 0.90× and 0.80×. The `fdatasync` is the crash-safety guarantee
(docs/durability.md) and stays; what is left to trim is per-job `statx`
calls.
""",
        "B3": f"""
Both implementations do the same work per file: open, read the header,
close (fspl: one `read` and a `statx` to refuse FIFOs and other non-regular
files; Filespooler: two `read`s). Time is almost all kernel path lookup and
page-cache copies (perf of a 100k listing: `__d_lookup_rcu`,
`link_path_walk`, `may_open`, `_copy_to_iter`), so the two are at parity
within noise: over three consecutive quiet full runs the 2000-job listing
was 0.98×, 0.95× and 1.12× ref and the 100,000-job listing 0.97×, 0.95×
and 0.91×. A 2000-job listing takes about 15 ms, of which fspl's larger
start-up (B0: `--version` {c['start_ours']} against {c['start_ref']}) is a
visible part. Possible gains: open each file relative to a directory fd
(`openat(dirfd, name)`) instead of by its full path, and trust
`d_type == DT_REG` from `getdents64` to skip the `statx`.
""",
        "B4": f"""
A compressed job costs fspl two fresh zstd decoder contexts (one to read the
header during the scan, one to run it: a uprobe on `ZSTD_createDCtx` counts
20 calls for 10 jobs), each allocated and zeroed (`ZSTD_createDCtx` is
{c['zstd_dctx']} of all samples in the B4 profile, the largest item in fspl's
own code), and a pump thread (`fspl-pump`) that copies the decompressed
payload into a pipe for the command, where an uncompressed job's file is
handed over directly. Reusing one decoder context across jobs
(`ZSTD_DCtx_reset`), and decoding the header only once, would remove most
of the first cost. Most of the time is still the command's own start
(`true` in `ld-linux`).
""",
        "B5": f"""
`queue-process` without `--trust` hands the job file itself to the command
and checks the payload's digest beside it: a second read of the payload
(`pread`, never a mapping), hashed on all cores as BLAKE3 subtrees that are
merged at the end; the job counts as done only when both have finished. A
checked run cannot be faster than reading the payload once and hashing it
once, which `cat` ({c['b5_cat']}) and `b3sum` ({c['b5_b3sum']}, mapped,
all cores) show; fspl took {c['b5_ours']} (the reference, which checks
nothing, {c['b5_ref']}). On two cores the command's read and the hash
share the CPU: the floor is the sum of their CPU times spread over both
cores, and anything else running on the machine comes off it. With a command
slower than the hash (`sha256sum`) the check is hidden behind it:
{c['b5_sha_ours']} against the reference's {c['b5_sha_ref']}. With
`--trust` the command must read only checked bytes: the payload is hashed
under a read lease before the command starts (the S2 time,
{c['b5_true']}), then fed to it through a pipe from the leased file,
spliced (the pipe takes references to the file's pages, no copy) except
for the last pipe's worth, which is copied so that no spliced page is left
in the pipe once the lease goes; {c['b5_trust']} against {c['b5_notrust']}
without `--trust`. The hash pass cannot overlap the command, which may not
see a byte before all of them are checked (docs/security.md).
The job made by `fspl prepare -i BIG` carries a payload length and a
BLAKE3 digest (fspl's default for a regular file). `prepare` hashes the file first (the header, which holds the digest, comes
first) on two threads, with positional reads, cutting BLAKE3's tree into
subtrees, and then has the kernel send the payload (`copy_file_range`,
`sendfile`). `queue-write` has the kernel copy the payload into the
temporary while a second thread hashes what was stored, read back from the
page cache; the kernel is asked to start writing every 8 MiB
(`sync_file_range`) and the `fsync` runs while the hashing ends.
`_blake3_hash_many_avx512` is {c['blake_prepare']} of the prepare
samples (profile below); for a job made with `--no-digest`, prepare is at
{c['nd_prepare']}× ref. On a machine whose other core is busy, the hashing
thread competes for it; and the flush of a large file to this virtual disk
dominates and varies from run to run (compare the min … max spreads of `dd`
and fspl under "All measurements").
""",
        "B6": f"""
Peak RSS is dominated by the binary itself: even `--version` peaks at
{c['floor_ours']} for fspl against {c['floor_ref']} for Filespooler (fspl
links zstd, xz, gzip, lz4, BLAKE3 and the signature/encryption code; text
{c['text_ours']} against {c['text_ref']}), and that floor is what misses
the goal. Beyond it, a listing grows by about {c['b3_bytes_ours']} bytes per
job in fspl against {c['b3_bytes_ref']} in Filespooler (B3, 2000 to 100,000
jobs), and the 1 GiB commands stay at the floor plus their buffers
(streaming, no payload held in memory). Getting under Filespooler's floor
would take a smaller binary (the release profile already uses fat LTO and
`panic = "abort"`): codecs and crypto behind cargo features, or
`opt-level = "s"`, and fewer relocations touched at start-up.
""",
        "B7": """
The per-job cost of a NOP job is one `fdatasync` and one `unlink`; a rise
with the queue's size would come from directory lookups (`openat` by name
in a larger directory) and from the scan's memory. See the B7 runs under
"All measurements" for the spread; disk flushes are shared with every other
process writing to the same disk.
""",
        "S1": f"""
Signing costs one ed25519 signature per job (tens of microseconds) inside
a `prepare` that takes about 2 ms to start and write; verifying costs one
ed25519 verification per job inside `queue-process` (since the signature
memo, once per job rather than three times). Signed {c['s1_sign']} against
unsigned {c['s1_unsign']} to sign, {c['s1_ver']} against
{c['s1_unver']} to run; per job that is {c['s1_ver_us']} µs more to run
(one verification, the trust-file lookup and the policy checks). Both runs
are dominated by process starts and disk flushes, whose noise is of the
same size as the difference (see the min … max spread under "All
measurements").
""",
        "S3": f"""
Without `--trust` the encrypted payload is decrypted on all cores (age's
64 KiB STREAM chunks are independent: worker threads read and decrypt
batches of them with `pread`, the reader hands them out in order), hashed
on its way and written to a pipe that the command reads; its length is
checked from the age file's size before anything runs. The plaintext run
does one read and one hash ({c['s3_plain']}); the encrypted one adds
ChaCha20-Poly1305 over every byte ({c['s3_crypto']} of the samples, ring's
AVX2 assembly, about 3.8 GB/s on one core here), a copy of every byte out
of the page cache for the decrypting threads, and the pipe (every byte
copied into it and out of it), on the same two cores: {c['s3_enc']}. The
decryption alone, spread over both cores, takes about as long as the whole
plaintext run; the hash, the copies and the command's own read share the
same two cores, so 1.5× cannot be reached here. `age -d` (Debian's Go
build, one core) takes {c['s3_age']}, {c['s3_age_ratio']}× the plaintext
run. More cores would move it. fspl's encrypted runs also vary widely
(see the min … max spread under "All measurements"), and the single
`fspl-pump` thread does three things one after the other for every byte
(copy it out of the decrypted batch, hash it, write it into the pipe):
hashing in the decrypting threads, or splicing the decrypted batches into
the pipe, would shorten that path, though not to 1.5×.
""",
        "D1": f"""
Latency is measured from the exit of the `queue-write` that delivered a
job to the first instruction of its command. The daemon learns of a new
job from inotify (the rename into `jobs/`), takes the queue lock, reads
the header, and spawns; the slow cases are jobs that arrive while the
previous job's command or its durable `nextseq` advance is still running,
so they wait their turn in sequence. See "D1 in full" above.
""",
        "D2": f"""
See "D2 in full" above for the split between anonymous memory and the
binary's own pages.
""",
        "T1": f"""
On the bench directory's file system the push took {c['t1_ours']} against
tar's {c['t1_tar']}; on a journaled ext4 (row T1j, a loop device made by
the benchmark) {c['t1j_ours']} against {c['t1j_tar']}. This machine's ext4
has no journal (`/proc/fs/jbd2` is empty), and without one ext4's inode
allocator skips every inode freed in the last minute (six while that
inode-table block is unwritten), reading its
inode-table block to see when it was freed (`recently_deleted` and
`find_get_block` lead the kernel profile). A push removes each job from
its outbox once the receiver has it on disk, so every file it creates at
the receiver comes after thousands of fresh removals nearby, and each
create walks past all of them: 10,000 creates right after 10,000 removals
took 2.8 to 5 s here, and 0.2 s on the journaled loop device. tar creates
files and removes none. Journaled ext4 (the default) has no such step, and
there the push is compared with tar on equal terms.
""",
        "T1j": """
See T1.
""",
        "T3": f"""
A push moves the jobs: besides creating each file at the destination (as
`cp` does), it links each under its name only once it is flushed (so no
partial file is ever visible; `cp` writes under the final name at once),
and removes each from the outbox once the destination's directory is
synced (`cp` removes nothing). In a CPU profile of a 10,000-job push on a
fresh ext4, the outbox unlinks take about 30 % of the CPU and the links
about 20 %, which is what the push costs over `cp`; it overlaps them with
the receiving on three threads (receive; flush, link and directory fsync;
remove), batch by batch. The same move done by hand, `cp` + `sync` + `rm`
+ `sync`, took {c['t3_cprm']} here (push {c['t3_ours']}, `cp` + `sync`
{c['t3_cp']}). On this shared machine the creation of a file costs more
the more files were deleted recently nearby (ext4's inode allocator
skips recently deleted inodes: `recently_deleted` and
`find_inode_bit` lead the kernel profile of both commands), so single
runs of either vary by several times.
""",
        "D3": f"""
The daemon runs the same processing loop as `queue-process` (shared code);
what it adds is its start-up (configuration, control socket, inotify
watch), the wake-up after each run, and the shut-down, which this
measurement includes.
""",
    }

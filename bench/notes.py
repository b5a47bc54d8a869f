# Explanations for missed goals, used by report.py. Each entry is printed
# under "Missed goals: why" only when a row with that id misses its goal in
# the run being reported; `{name}` fields are filled from that run's numbers
# (see `ctx` in report.py). The causes were established with the strace and
# perf profiles that bench/run also records (see the end of RESULTS.md).


def notes(c):
    return {
        "B1": f"""
Each job is two process starts and, in fspl, four flushes where Filespooler
does two: `prepare -s` replaces the sequence file (write, `fsync`, `rename`)
and then `fsync`s its directory, and `queue-write` `fsync`s the new job and
then its directory (syscall table: B1 ours 2 `fsync`, ref 1, for
`queue-write` alone). The directory flushes are what makes an acknowledged
job and a used sequence number survive a power cut (docs/durability.md);
Filespooler skips them and can lose both. On this disk a create + `fsync` +
directory `fsync` costs {c['create_ms']} ms against {c['fdatasync_ms']} ms
for an in-place `fdatasync`, so the flushes, not CPU, set the per-job time
(ours {c['b1_ours_ms']} ms, ref {c['b1_ref_ms']} ms per job). We do not drop
them to meet the goal. What could be gained without weakening anything:
`prepare -s` could advance the sequence file in place (`pwrite` +
`fdatasync`, one flush, as `queue-process` already does for nextseq, with
the same argument: numbers only grow) instead of the replace protocol (two
journal commits).
""",
        "B2": f"""
Per job fspl runs the command ({c['b2_raw_ms']} ms for `xargs -n1 true`
alone), then makes the advance durable (`pwrite` + `fdatasync` of nextseq,
{c['fdatasync_ms']} ms measured on this disk) and unlinks the job file
(about 0.15 ms on ext4 here, `strace -c -w`): ours {c['b2_ours_ms']} ms per
job. The syscall table shows nothing else per job (one `openat`, one header
`read`, two `statx`, the spawn, `fdatasync`, `unlink`; the payload is handed
to the command as the open file, no copy). The fdatasync is the crash-safety
guarantee (docs/durability.md) and stays; Filespooler pays more for its
advance (`fsync` + `rename`, no directory flush, so it is not even durable),
which is why ours is still below ref. The 1.15× raw goal holds only where a
flush costs well under a tenth of a process start; timing noise from other
processes' disk writes also lands on the flushes (see the spread under
"All measurements").
""",
        "B3": f"""
Both implementations do the same work per file: open, read the header,
close (fspl: one `read` and a `statx` to refuse FIFOs and other non-regular
files; Filespooler: two `read`s). Time is almost all kernel path lookup and
page-cache copies (perf: `__d_lookup_rcu`, `link_path_walk`, `may_open`,
`_copy_to_iter`), so the two are at parity within noise. Possible gains:
open each file relative to a directory fd (`openat(dirfd, name)`) instead of
by its full path, and trust `d_type == DT_REG` from `getdents64` to skip the
`statx`.
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
The job made by `fspl prepare -i BIG` carries a payload length and a BLAKE3
digest (fspl's default for a regular file). `prepare` therefore reads the
file twice, once to hash it (the header, which holds the digest, comes
first) and once to send it; `queue-process` reads and hashes the whole
payload before it starts the command, so that a cut-short or altered
payload is refused before anything runs, and then hands the file to the
command. That extra pass is the whole difference: `_blake3_hash_many_avx512`
is {c['blake_prepare']} of the prepare samples and {c['blake_process']} of
the process samples (profiles below), the rest is the kernel copying the
page cache; for a job made with `--no-digest` the same commands are at or
below the targets (process {c['nd_process']}× cat, prepare {c['nd_prepare']}×
ref). Dropping the check is not an option (it is a safety feature), but it
can be cheaper: hash through `mmap` instead of `read` (no copy) and with
BLAKE3's multi-threaded mode (`Hasher::update_mmap_rayon`), which on this
2-core machine would roughly halve the hashing time. `queue-write` does no
hashing: it copies stdin to the new file in 128 KiB `read`/`write` pairs
and then flushes file and directory, against `dd`'s 1 MiB blocks and one
flush; `copy_file_range` when stdin is a regular file (as here) would save
the user-space copy.
""",
        "B6": f"""
Peak RSS is dominated by the binary itself: even `--version` peaks at
{c['floor_ours']} for fspl against {c['floor_ref']} for Filespooler (fspl
links zstd, xz, gzip, lz4, BLAKE3 and the signature/encryption code; text
{c['text_ours']} against {c['text_ref']}). Beyond that floor, listing grows by
about {c['b3_bytes_ours']} bytes per job in fspl against
{c['b3_bytes_ref']} in Filespooler (B3: the scan keeps every decoded header,
its path and metadata for sorting and duplicate checks). Neither is a leak,
but the per-job figure can be cut by keeping only seq, ctime and the file
name per entry.
""",
        "B7": """
The per-job cost of a NOP job is one `fdatasync` and one `unlink`; a rise
with the queue's size would come from directory lookups (`openat` by name
in a larger directory) and from the scan's memory. See the B7 runs under
"All measurements" for the spread; disk flushes are shared with every other
process writing to the same disk.
""",
    }

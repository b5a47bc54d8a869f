//! `queue-write` checks what it acknowledges (issue 12, item A).
//!
//! It used to store anything with exit 0: an empty file left by a failed
//! `prepare > file`, random bytes, a cut-short job. The README's
//! `queue-write ... && rm "$f"` then deleted the evidence, `queue-ls` hid
//! the file and `queue-status` said `idle`. Now the job is checked as it is
//! copied (header; payload length and digest when the job has them;
//! compressed jobs decoded; encrypted ones decrypted with `--identity`, or
//! their age header checked without), and a job that fails is refused:
//! exit 1, one line saying what is wrong and that nothing was stored,
//! nothing in `jobs/` (no temporary either), the input left as it was.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helper::*;

fn write_cmd(q: &Path, extra: &[&OsStr]) -> Command {
    let mut c = ours([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]);
    c.args(extra);
    c
}

/// A payload that is not all one byte.
fn payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// Write `job` from a file and from a pipe; both must be refused with one
/// line naming `why`, leave `jobs/` empty and the file as it was.
#[track_caller]
fn refused(sb: &Sandbox, q: &Path, label: &str, job: &[u8], extra: &[&OsStr], why: &str) {
    let file = sb.path(format!("refused-{label}"));
    std::fs::write(&file, job).unwrap();
    let before = std::fs::metadata(&file).unwrap();
    let outs: [(&str, Output); 2] = [
        ("file", run_with_file(write_cmd(q, extra), &file)),
        ("pipe", run_with_input(write_cmd(q, extra), job)),
    ];
    for (how, out) in outs {
        assert_eq!(
            out.status.code(),
            Some(1),
            "{label} ({how}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = one_line_error(out);
        assert!(
            line.contains("nothing was stored") && line.contains(why),
            "{label} ({how}): {line:?} does not say {why:?} and that nothing was stored"
        );
        assert_eq!(
            file_names(&q.join("jobs")),
            Vec::<String>::new(),
            "{label} ({how}): {line}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), job, "{label}: input changed");
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());
}

/// Write `job` from a file and from a pipe; both must be stored
/// byte-identical (one file each).
#[track_caller]
fn stored(sb: &Sandbox, q: &Path, label: &str, job: &[u8], extra: &[&OsStr]) {
    let file = sb.path(format!("stored-{label}"));
    std::fs::write(&file, job).unwrap();
    for how in ["file", "pipe"] {
        let out = match how {
            "file" => run_with_file(write_cmd(q, extra), &file),
            _ => run_with_input(write_cmd(q, extra), job),
        };
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{label} ({how}) was not stored: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names = file_names(&q.join("jobs"));
        assert_eq!(names.len(), 1, "{label} ({how}): {names:?}");
        assert!(names[0].starts_with("fspl-"), "{label}: {names:?}");
        let got = std::fs::read(q.join("jobs").join(&names[0])).unwrap();
        assert!(got == job, "{label} ({how}): stored bytes differ");
        std::fs::remove_file(q.join("jobs").join(&names[0])).unwrap();
    }
}

#[test]
fn queue_write_acknowledged_an_empty_file_and_the_readme_loop_deleted_it() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    refused(&sb, &q, "empty", b"", &[], "empty");
    // The README's loop, verbatim: the good job is stored and removed, the
    // empty one (a failed `prepare > file`) is kept, and the loop says so.
    let sync = sb.path("sync");
    std::fs::create_dir(&sync).unwrap();
    std::fs::write(sync.join("a.fspl"), prepare(&sb, 1, b"hi\n", &[])).unwrap();
    std::fs::write(sync.join("b.fspl"), b"").unwrap();
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(r#"for f in sync/*.fspl; do "$0" queue-write -q q < "$f" && rm "$f"; done"#)
        .arg(fspl_bin())
        .current_dir(sb.dir.path());
    let out = run(sh);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty file"), "{err}");
    assert!(!sync.join("a.fspl").exists());
    assert!(sync.join("b.fspl").exists(), "the empty file was deleted");
    assert_eq!(sb.job_files(&q).len(), 1);
    // queue-status sees one job, not an idle queue hiding a bad file.
    let st = run(ours([
        OsStr::new("queue-ls"),
        OsStr::new("-q"),
        q.as_os_str(),
    ]));
    assert_eq!(String::from_utf8_lossy(&st.stdout).lines().count(), 2);
}

#[test]
fn queue_write_acknowledged_random_bytes() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let mut x = 0x1234_5678_9abc_def0u64;
    let random: Vec<u8> = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    refused(&sb, &q, "random", &random, &[], "bad magic");
    refused(&sb, &q, "text", b"hello, queue\n", &[], "bad magic");
    // Random bytes after a correct magic: a bad version or prefix CRC.
    let mut m = b"*FILESPOOLER".to_vec();
    m.extend_from_slice(&random[..100]);
    refused(&sb, &q, "magic-then-random", &m, &[], "");
}

#[test]
fn queue_write_acknowledged_a_job_cut_inside_its_header() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let job = prepare(&sb, 1, b"payload\n", &[]);
    let meta_len = u64::from_be_bytes(job[14..22].try_into().unwrap()) as usize;
    let header = 30 + meta_len;
    for (cut, why) in [
        (5, "truncated header"),
        (29, "truncated header: only 29 of the 30 prefix bytes"),
        (30, "truncated header: only 0 of"),
        (header - 1, "metadata bytes"),
    ] {
        refused(&sb, &q, &format!("cut-{cut}"), &job[..cut], &[], why);
    }
    // A changed byte in the prefix and in the metadata: CRC mismatches; a
    // version this fspl does not read.
    let mut p = job.clone();
    p[20] ^= 1;
    refused(
        &sb,
        &q,
        "prefix-crc",
        &p,
        &[],
        "CRC-32 mismatch on file prefix",
    );
    let mut m = job.clone();
    m[40] ^= 0x20;
    refused(&sb, &q, "meta-crc", &m, &[], "CRC-32 mismatch on metadata");
    let mut v = job.clone();
    v[13] = 2;
    let crc = crc32(&v[..26]);
    v[26..30].copy_from_slice(&crc.to_be_bytes());
    refused(&sb, &q, "version", &v, &[], "unsupported format version 2");
    // A metadata length beyond the limit (prefix otherwise consistent).
    let mut l = job[..30].to_vec();
    l[14..22].copy_from_slice(&(17u64 << 20).to_be_bytes());
    let crc = crc32(&l[..26]);
    l[26..30].copy_from_slice(&crc.to_be_bytes());
    refused(&sb, &q, "meta-limit", &l, &[], "exceeds the limit");
}

#[test]
fn queue_write_acknowledged_a_job_whose_payload_was_cut_short_or_extended() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    // Small, and large enough to be hashed on a second thread.
    for n in [10usize, 9 * 1024 * 1024 + 77] {
        let job = prepare(&sb, 1, &payload(n), &[]);
        refused(
            &sb,
            &q,
            &format!("short-{n}"),
            &job[..job.len() - 1],
            &[],
            &format!("payload is {} bytes, the header says {n}", n - 1),
        );
        let mut long = job.clone();
        long.extend_from_slice(b"more");
        refused(
            &sb,
            &q,
            &format!("long-{n}"),
            &long,
            &[],
            &format!("payload is longer than the {n} bytes the header says"),
        );
    }
}

#[test]
fn queue_write_acknowledged_a_job_with_a_changed_payload_byte() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    for n in [1usize, 5000, 9 * 1024 * 1024 + 77] {
        let job = prepare(&sb, 1, &payload(n), &[]);
        for at in [job.len() - n, job.len() - 1] {
            let mut bad = job.clone();
            bad[at] ^= 0x40;
            refused(
                &sb,
                &q,
                &format!("flip-{n}-{at}"),
                &bad,
                &[],
                "payload blake3 digest",
            );
        }
    }
}

#[test]
fn queue_write_acknowledged_a_corrupt_compressed_job() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    for format in ["zstd", "gzip", "xz", "lz4"] {
        let job = prepare(
            &sb,
            1,
            &payload(70_000),
            &[OsStr::new("--compress"), OsStr::new(format)],
        );
        // Cut short: the stream does not end.
        refused(
            &sb,
            &q,
            &format!("{format}-cut"),
            &job[..job.len() / 2],
            &[],
            &format!("{format} data"),
        );
        // A changed byte in the middle of the compressed data.
        let mut bad = job.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        refused(&sb, &q, &format!("{format}-flip"), &bad, &[], "");
    }
    // A well-formed zstd stream around a job whose payload does not match
    // its digest: decoded and refused for what is inside.
    let mut job = prepare(&sb, 1, &payload(3000), &[]);
    let last = job.len() - 1;
    job[last] ^= 1;
    let z = zstd(&sb, &job);
    refused(&sb, &q, "zstd-inner", &z, &[], "payload blake3 digest");
    // And a compressed stream that holds no job at all.
    let z = zstd(&sb, b"just some text, no job header here\n");
    refused(&sb, &q, "zstd-nojob", &z, &[], "zstd data: bad magic");
}

fn zstd(sb: &Sandbox, data: &[u8]) -> Vec<u8> {
    let p = sb.path("to-compress");
    std::fs::write(&p, data).unwrap();
    let mut c = Command::new("zstd");
    c.args(["-q", "-c", "--check"]).arg(&p);
    ok(run(c))
}

struct Key {
    secret: PathBuf,
    public: PathBuf,
}

fn keygen(sb: &Sandbox, name: &str) -> Key {
    let secret = sb.path(name);
    ok(run(ours([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        secret.as_os_str(),
        OsStr::new("-C"),
        OsStr::new(name),
    ])));
    Key {
        public: sb.path(format!("{name}.pub")),
        secret,
    }
}

#[test]
fn queue_write_acknowledged_an_encrypted_job_it_could_have_checked() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let k = keygen(&sb, "receiver");
    let stranger = keygen(&sb, "stranger");
    let to = format!("@{}", k.public.display());
    let id = [OsStr::new("--identity"), k.secret.as_os_str()];
    let wrong = [OsStr::new("--identity"), stranger.secret.as_os_str()];
    for n in [100usize, 9 * 1024 * 1024 + 5] {
        let job = prepare(
            &sb,
            1,
            &payload(n),
            &[OsStr::new("--encrypt-to"), OsStr::new(&to)],
        );
        // Valid: stored with the right identity, and without one (only the
        // age header can be checked then).
        stored(&sb, &q, &format!("enc-{n}"), &job, &id);
        stored(&sb, &q, &format!("enc-noid-{n}"), &job, &[]);
        // No identity given opens it: refused.
        refused(
            &sb,
            &q,
            &format!("enc-wrong-{n}"),
            &job,
            &wrong,
            "none of the --identity keys decrypts it",
        );
        // A changed ciphertext byte (past the age header): refused with the
        // identity; without one it cannot be told from a good job.
        let mut bad = job.clone();
        let at = bad.len() - 20;
        bad[at] ^= 1;
        refused(&sb, &q, &format!("enc-flip-{n}"), &bad, &id, "age data");
        stored(&sb, &q, &format!("enc-flip-noid-{n}"), &bad, &[]);
        // Cut short: refused with the identity (age authenticates the end).
        refused(
            &sb,
            &q,
            &format!("enc-cut-{n}"),
            &job[..job.len() - 30],
            &id,
            "age data",
        );
    }
    // A broken age header is refused even without an identity.
    let job = prepare(&sb, 1, b"x", &[OsStr::new("--encrypt-to"), OsStr::new(&to)]);
    let mut bad = job.clone();
    bad[30] = b'\n';
    refused(&sb, &q, "enc-header", &bad, &[], "invalid age header");
    refused(
        &sb,
        &q,
        "enc-header-cut",
        &job[..40],
        &[],
        "invalid age header",
    );
}

#[test]
fn valid_jobs_of_every_kind_are_stored_byte_identical() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let k = keygen(&sb, "sender");
    let big = payload(9 * 1024 * 1024 + 3);
    let mut jobs: Vec<(String, Vec<u8>)> = vec![
        ("digest".into(), prepare(&sb, 1, b"hello\n", &[])),
        ("empty-payload".into(), prepare(&sb, 2, b"", &[])),
        (
            "no-digest".into(),
            prepare(&sb, 3, b"hello\n", &[OsStr::new("--no-digest")]),
        ),
        ("big".into(), prepare(&sb, 4, &big, &[])),
        (
            "big-no-digest".into(),
            prepare(&sb, 5, &big, &[OsStr::new("--no-digest")]),
        ),
        (
            "signed".into(),
            prepare(
                &sb,
                6,
                b"signed\n",
                &[OsStr::new("--sign"), k.secret.as_os_str()],
            ),
        ),
        ("nop".into(), ok(run(ours(["prepare-nop", "--seq", "7"])))),
        ("fail".into(), ok(run(ours(["prepare-fail", "--seq", "8"])))),
        (
            "stdin".into(),
            ok(run_with_input(
                ours(["prepare", "--seq", "9", "-i", "-"]),
                b"from stdin\n",
            )),
        ),
    ];
    for format in ["zstd", "gzip", "xz", "lz4"] {
        for (label, p) in [("small", &b"compressed\n"[..]), ("big", &big[..])] {
            jobs.push((
                format!("{format}-{label}"),
                prepare(&sb, 10, p, &[OsStr::new("--compress"), OsStr::new(format)]),
            ));
        }
    }
    // Made by Filespooler (no payload length or digest), plain and zstd.
    let ref_input = sb.path("ref-input");
    std::fs::write(&ref_input, b"from the reference\n").unwrap();
    let mut c = theirs(["prepare", "-s", "-", "-i"]);
    c.arg(&ref_input);
    let reference_job = ok(run(c));
    jobs.push(("reference".into(), reference_job.clone()));
    jobs.push(("reference-zstd".into(), zstd(&sb, &reference_job)));
    jobs.push((
        "reference-nop".into(),
        ok(run(theirs(["prepare-nop", "-s", "-"]))),
    ));
    for (label, job) in &jobs {
        stored(&sb, &q, label, job, &[]);
    }
    // The reference stores and reads what we accepted.
    ok(run_with_input(
        theirs([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]),
        &jobs[0].1,
    ));
    let ls = ok(run(theirs([
        OsStr::new("queue-ls"),
        OsStr::new("-q"),
        q.as_os_str(),
    ])));
    assert_eq!(String::from_utf8_lossy(&ls).lines().count(), 2);
}

//! Issue 11, the trust and quarantine half: attacks on the promises of
//! docs/security.md that worked against earlier versions, each replayed
//! with the real binary, real keys and real files.
//!
//! - a weak (small-order) ed25519 key in a trust file let anyone forge
//!   jobs "signed" by it without a secret key;
//! - a job in `rejected/` (or `corrupt/`) was replaced by a later file of
//!   the same name, and a `rejected/` or `corrupt/` that is a symbolic
//!   link was written through;
//! - file names and other job-controlled text printed raw into log lines
//!   forged lines and terminal escapes;
//! - a sender limited to some queues could still send jobs without `to`
//!   to unnamed queues and through `stdin-process`.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helper::*;
use crate::security::*;

// ---- weak keys ----

/// The compressed Edwards identity point: a small-order ("weak") public key.
const IDENTITY: [u8; 32] = {
    let mut k = [0u8; 32];
    k[0] = 1;
    k
};

/// A signature that verifies for every message under a small-order key
/// when verification is not strict: R = identity, s = 0.
fn keyless_signature() -> [u8; 64] {
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&IDENTITY);
    sig
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base58(bytes: &[u8]) -> String {
    const A: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new(); // little-endian base 58
    for &b in bytes {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(digits.iter().rev().map(|&d| A[d as usize] as char))
        .collect()
}

/// `ssh-ed25519 AAAA... comment` for raw key bytes.
fn ssh_line(key: &[u8; 32], comment: &str) -> String {
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(key);
    format!("ssh-ed25519 {} {comment}", base64(&blob))
}

#[test]
fn weak_trust_key_allowing_keyless_forgery_is_refused() {
    let t = Setup::new();
    // The forger holds no secret key at all: the genuine job with the
    // identity point as signer and R = identity, s = 0 as signature.
    let forged = tamper(&t.genuine(1), |_, e, _| {
        e.signer = Some(IDENTITY);
        e.signature = Some(keyless_signature());
    });
    for key in [ssh_line(&IDENTITY, "evil"), base58(&IDENTITY)] {
        std::fs::write(
            &t.trust,
            format!(
                "{}{}",
                sender("laptop", &t.laptop.public, r#"queues = ["backups"]"#),
                sender("evil", &key, "")
            ),
        )
        .unwrap();
        let f = t.write(&t.q, &forged);
        let line = one_line_error(t.process(&t.q, &[]));
        t.not_run(1);
        assert!(
            line.contains(t.trust.to_str().unwrap()) && line.contains("sender \"evil\""),
            "the error names neither the trust file nor the entry: {line}"
        );
        assert!(line.contains("weak"), "{line}");
        assert!(
            t.q.join("jobs").join(&f).is_file(),
            "the job was moved or lost"
        );
        assert_eq!(nextseq(&t.q), 1);
        // stdin-process loads the same trust file and refuses it the same way.
        let mut c = fs([OsStr::new("stdin-process"), OsStr::new("--trust")]);
        c.arg(&t.trust)
            .args(["sh", "--", "-c", SCRIPT])
            .arg(&t.marks);
        let line = one_line_error(run_with_input(c, &forged));
        assert!(line.contains("sender \"evil\"") && line.contains("weak"));
        t.not_run(1);
        std::fs::remove_file(t.q.join("jobs").join(&f)).unwrap();
    }
    // With only the genuine sender trusted, the forgery is refused on its
    // own account and the genuine job runs.
    std::fs::write(&t.trust, sender("laptop", &t.laptop.public, "")).unwrap();
    let f = t.write(&t.q, &forged);
    let out = t.process(&t.q, &[]);
    t.not_run(1);
    assert_refused(&t.q, &out, &f, Some(1), None, "weak");
    t.genuine_runs(1);
}

/// `--encrypt-to` a small-order key: an `age1` one made age panic inside
/// `prepare`; an `ssh-ed25519` one was accepted, and what was encrypted
/// to it anyone could decrypt.
#[test]
fn weak_encrypt_to_recipient_crashed_prepare_or_was_accepted() {
    let s = Sandbox::new();
    let payload = s.path("payload");
    std::fs::write(&payload, PAYLOAD).unwrap();
    let seqfile = s.path("seq");
    std::fs::write(&seqfile, "5\n").unwrap();
    for weak in [
        // The all-zero X25519 point.
        "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq5cu47z".to_string(),
        ssh_line(&IDENTITY, "evil"),
    ] {
        let mut c = fs([OsStr::new("prepare"), OsStr::new("-s")]);
        c.arg(&seqfile)
            .arg("-i")
            .arg(&payload)
            .args(["--encrypt-to", &weak]);
        let line = one_line_error(run(c));
        assert!(line.contains("weak (small-order) key"), "{line}");
        assert_eq!(
            std::fs::read_to_string(&seqfile).unwrap(),
            "5\n",
            "a sequence number was used"
        );
    }
}

// ---- quarantine never replaces ----

/// Every (file, bytes, reason) in `dir`, file names with a `.reason` beside
/// them.
fn quarantined(dir: &Path) -> Vec<(String, Vec<u8>, String)> {
    let mut v: Vec<(String, Vec<u8>, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".reason"))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            let reason = std::fs::read_to_string(dir.join(format!("{n}.reason")))
                .unwrap_or_else(|e| panic!("{n} has no reason file beside it: {e}"));
            (n, bytes, reason)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_refused_job_in_rejected_was_overwritten_by_a_later_file_of_the_same_name() {
    let t = Setup::new();
    let (id, recipient) = age_keygen(&t.s, "receiver.age");
    // The genuine job, encrypted; refused because --identity was forgotten.
    let genuine = t.prepare(
        1,
        Some(&t.laptop.secret),
        Some(QUEUE_NAME),
        &["--encrypt-to", &recipient],
        &["backup", "db"],
    );
    let name = t.write(&t.q, &genuine);
    let out = t.process(&t.q, &[]);
    assert_refused(&t.q, &out, &name, None, None, "give --identity");
    // Later files of the same name: garbage, then an unsigned job.
    let later: [&[u8]; 2] = [b"*FILESPOOLER garbage", &t.prepare(1, None, None, &[], &[])];
    for (i, bytes) in later.iter().enumerate() {
        std::fs::write(t.q.join("jobs").join(&name), bytes).unwrap();
        let out = t.process(&t.q, &[]);
        ok(out.clone());
        let err = String::from_utf8_lossy(&out.stderr);
        let files = quarantined(&t.q.join("rejected"));
        assert_eq!(files.len(), 2 + i, "{files:?}; {err}");
        assert!(
            files.iter().any(|(n, b, _)| *n == name && *b == genuine),
            "the genuine job is no longer in rejected/ under its name: {files:?}"
        );
        let (moved_to, _, reason) = files
            .iter()
            .find(|(_, b, _)| b == bytes)
            .expect("the later file is in rejected/");
        assert_ne!(*moved_to, name);
        assert!(
            moved_to.starts_with("fspl-") && moved_to.ends_with(".fspl"),
            "{moved_to}"
        );
        assert!(reason.lines().count() == 1, "{reason:?}");
        // The log says where it went.
        assert!(
            err.contains(&format!(
                "moved to {}",
                t.q.join("rejected").join(moved_to).display()
            )),
            "{err}"
        );
    }
    // Put back as docs/security.md says; with the identity it runs.
    let rejected = t.q.join("rejected").join(&name);
    ok(run_with_file(
        fs([OsStr::new("queue-write"), OsStr::new("-q"), t.q.as_os_str()]),
        &rejected,
    ));
    std::fs::remove_file(&rejected).unwrap();
    std::fs::remove_file(t.q.join("rejected").join(format!("{name}.reason"))).unwrap();
    ok(t.process(&t.q, &["--identity", id.to_str().unwrap()]));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
}

#[test]
fn queue_check_repair_overwrote_a_file_already_in_corrupt() {
    let s = Sandbox::new();
    let q = s.queue("q");
    let name = "fspl-00000000-0000-4000-8000-000000000001.fspl";
    let contents: [&[u8]; 3] = [b"*FILESPOOLER first", b"second", b"third"];
    for (i, bytes) in contents.iter().enumerate() {
        std::fs::write(q.join("jobs").join(name), bytes).unwrap();
        let out = run(fs([
            OsStr::new("queue-check"),
            OsStr::new("--repair"),
            OsStr::new("-q"),
            q.as_os_str(),
        ]));
        assert!(
            out.status.code() != Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let files = quarantined(&q.join("corrupt"));
        assert_eq!(files.len(), i + 1, "{files:?}");
        for earlier in &contents[..=i] {
            assert!(
                files.iter().any(|(_, b, _)| b == earlier),
                "{:?} is lost from corrupt/: {files:?}",
                String::from_utf8_lossy(earlier)
            );
        }
        assert!(files.iter().all(|(n, _, r)| n.starts_with("fspl-")
            && n.ends_with(".fspl")
            && r.lines().count() == 1));
    }
    assert!(
        std::fs::read(q.join("corrupt").join(name)).unwrap() == contents[0],
        "the first file keeps its name"
    );
}

#[test]
fn a_symlinked_rejected_or_corrupt_dir_was_written_through() {
    let t = Setup::new();
    let elsewhere = t.s.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t.q.join("rejected")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t.q.join("corrupt")).unwrap();
    let unsigned = t.prepare(1, None, Some(QUEUE_NAME), &[], &[]);
    let f = t.write(&t.q, &unsigned);
    let line = one_line_error(t.process(&t.q, &[]));
    assert!(line.contains("rejected"), "{line}");
    t.not_run(1);
    assert_eq!(
        std::fs::read(t.q.join("jobs").join(&f)).unwrap(),
        unsigned,
        "the job left jobs/"
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // queue-check --repair: the same for corrupt/.
    let bad =
        t.q.join("jobs/fspl-00000000-0000-4000-8000-00000000000b.fspl");
    std::fs::write(&bad, b"*FILESPOOLER garbage").unwrap();
    let out = run(fs([
        OsStr::new("queue-check"),
        OsStr::new("--repair"),
        OsStr::new("-q"),
        t.q.as_os_str(),
    ]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("fspl: error: ") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(std::fs::read(&bad).unwrap(), b"*FILESPOOLER garbage");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

// ---- log injection ----

/// A job file name that, printed raw, forges a log line, starts a line
/// without the prefix, and clears the screen.
const EVIL_NAME: &[u8] =
    b"fspl-x\nfspl: info: FORGED all jobs succeeded\nrogue line \x1b[2J\x1b]0;title\x07.fspl";

/// Every stderr line is one of ours: starts with `prefix`, has no control
/// character (ESC, BEL, CR...) in it, and nothing forged.
#[track_caller]
fn clean_log(err: &[u8], prefix: impl Fn(&str) -> bool) {
    let text = String::from_utf8_lossy(err);
    assert!(
        !err.iter().any(|&b| b < 0x20 && b != b'\n'),
        "a raw control character reached the log: {text:?}"
    );
    for l in text.lines() {
        assert!(prefix(l), "a line that is not ours: {l:?} in {text:?}");
        assert!(
            !l.contains("FORGED")
                || l.contains(r"fspl-x\nfspl: info: FORGED all jobs succeeded\nrogue line "),
            "the name is not shown escaped: {l:?}"
        );
    }
}

fn is_fspl_line(l: &str) -> bool {
    l.starts_with("fspl: ")
}

#[test]
fn a_job_file_name_with_newline_and_escape_forged_log_lines() {
    let t = Setup::new();
    let evil = OsStr::from_bytes(EVIL_NAME);
    // With --trust: an unsigned job refused (warning, reason file).
    std::fs::write(
        t.q.join("jobs").join(evil),
        t.prepare(1, None, Some(QUEUE_NAME), &[], &[]),
    )
    .unwrap();
    let out = t.process(&t.q, &[]);
    ok(out.clone());
    t.not_run(1);
    clean_log(&out.stderr, is_fspl_line);
    assert!(String::from_utf8_lossy(&out.stderr).contains("job refused: unsigned job"));
    let reason = std::fs::read(t.q.join("rejected").join({
        let mut r = evil.to_os_string();
        r.push(".reason");
        r
    }))
    .unwrap();
    assert_eq!(reason.iter().filter(|&&b| b == b'\n').count(), 1);
    assert!(reason.ends_with(b"\n"));
    assert!(
        !reason.iter().any(|&b| b < 0x20 && b != b'\n'),
        "{reason:?}"
    );
    // Without --trust: a job whose command fails (a warning and the error
    // line that names the file).
    let plain = t.queue("plain", None);
    std::fs::write(
        plain.join("jobs").join(evil),
        t.prepare(1, None, None, &[], &[]),
    )
    .unwrap();
    let mut c = fs([OsStr::new("queue-process"), OsStr::new("-q")]);
    c.arg(&plain).args(["--on-error", "retry", "false"]);
    let out = run(c);
    assert!(!out.status.success());
    clean_log(&out.stderr, is_fspl_line);
    assert!(String::from_utf8_lossy(&out.stderr).contains("fspl: error: "));
    // Signed jobs whose params or `to` carry control characters, refused
    // (with --allow-job-params, the params are quoted in the reason).
    for (to, params, reason) in [
        (QUEUE_NAME, ["backup\n\x1b[0m", "x"], "are not allowed"),
        ("db-\n\x1b[31m", ["backup", "x"], "addressed to queue"),
    ] {
        let weird = t.prepare(1, Some(&t.laptop.secret), Some(to), &[], &params);
        std::fs::write(t.q.join("jobs").join(evil), weird).unwrap();
        let out = t.process(&t.q, &["--allow-job-params"]);
        ok(out.clone());
        t.not_run(1);
        clean_log(&out.stderr, is_fspl_line);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{err}");
    }
    // stdin-process: the refusal line.
    let mut c = fs([OsStr::new("stdin-process"), OsStr::new("--trust")]);
    c.arg(&t.trust)
        .args(["sh", "--", "-c", SCRIPT])
        .arg(&t.marks);
    let weird = t.prepare(3, Some(&t.laptop.secret), Some("q\n\x1b[2J"), &[], &[]);
    let out = run_with_input(c, &weird);
    assert!(!out.status.success());
    clean_log(&out.stderr, is_fspl_line);
}

/// `2026-11-23T19:30:50Z  INFO ...`: the daemon's human line prefix.
fn is_daemon_human_line(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() > 22
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && l[20..]
            .trim_start()
            .split(' ')
            .next()
            .is_some_and(|lvl| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&lvl))
}

#[test]
fn a_job_file_name_with_newline_and_escape_forged_daemon_log_lines() {
    let t = Setup::new();
    let evil = OsStr::from_bytes(EVIL_NAME);
    std::fs::write(
        t.q.join("jobs").join(evil),
        t.prepare(1, None, Some(QUEUE_NAME), &[], &[]),
    )
    .unwrap();
    let plain = t.queue("plain", None);
    std::fs::write(
        plain.join("jobs").join(evil),
        t.prepare(1, None, None, &[], &[]),
    )
    .unwrap();
    let q = |p: &Path| format!("{:?}", p.to_str().unwrap());
    let config = t.s.path("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nsocket = {}\nrescan_interval = 3600\nshutdown_grace = 1\n\n\
             [[job]]\nname = \"trusting\"\ntype = \"process\"\nqueue = {}\ncommand = [\"true\"]\ntrust = {}\n\n\
             [[job]]\nname = \"plain\"\ntype = \"process\"\nqueue = {}\ncommand = [\"false\"]\nmax_failures = 1\n",
            q(&t.s.path("d.sock")),
            q(&t.q),
            q(&t.trust),
            q(&plain),
        ),
    )
    .unwrap();
    let log = t.s.path("daemon.log");
    let mut child = Command::new(fspl_bin())
        .arg("daemon")
        .arg("-c")
        .arg(&config)
        .args(["--log-format", "human"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read(&log).unwrap_or_default();
        let s = String::from_utf8_lossy(&text);
        if s.contains("job refused") && s.contains("stopped after") {
            break text;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon did not log the refusal and the failure: {s}");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    clean_log(&text, is_daemon_human_line);
    assert!(!t.q.join("jobs").join(evil).exists());
    assert!(t.q.join("rejected").join(evil).exists());
}

// ---- senders limited by `queues` ----

#[test]
fn a_sender_limited_to_queues_reached_an_unnamed_queue_without_to() {
    let t = Setup::new();
    // laptop may address "backups" and "db-*" only.
    let unnamed = t.queue("unnamed", None);
    let job = t.prepare(1, Some(&t.laptop.secret), None, &[], &["backup", "db"]);
    let f = t.write(&unnamed, &job);
    let out = t.process(&unnamed, &[]);
    t.not_run(1);
    assert_refused(
        &unnamed,
        &out,
        &f,
        Some(1),
        Some("laptop"),
        "sender \"laptop\" may only address the queues it is allowed",
    );
    assert_eq!(nextseq(&unnamed), 1);
    // stdin-process (no queue at all).
    let mut c = fs([OsStr::new("stdin-process"), OsStr::new("--trust")]);
    c.arg(&t.trust)
        .args(["sh", "--", "-c", SCRIPT])
        .arg(&t.marks);
    let line = one_line_error(run_with_input(c, &job));
    assert!(
        line.contains("job 1 (stdin) refused: sender \"laptop\" may only address"),
        "{line}"
    );
    t.not_run(1);
    // A sender without `queues` keeps sending without `to`.
    let free = keygen(&t.s, "free");
    let trust2 = t.s.path("trust2.toml");
    std::fs::write(&trust2, sender("free", &free.public, "")).unwrap();
    let job = t.prepare(1, Some(&free.secret), None, &[], &[]);
    let mut c = fs([OsStr::new("stdin-process"), OsStr::new("--trust")]);
    c.arg(&trust2)
        .args(["sh", "--", "-c", SCRIPT])
        .arg(&t.marks);
    ok(run_with_input(c, &job));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    std::fs::remove_file(t.marker(1)).unwrap();
    t.write(&unnamed, &job);
    ok(t.process_with(&unnamed, Some(&trust2), &[]));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    // And laptop's jobs addressed to a named queue it may use still run.
    std::fs::remove_file(t.marker(1)).unwrap();
    t.genuine_runs(1);
}

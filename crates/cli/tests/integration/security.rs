//! Signed, access-controlled and encrypted jobs, end to end: real keys
//! (`fspl keygen`, `ssh-keygen`, `age-keygen`), real job files, real
//! processes, no mocked crypto.
//!
//! Every refusal asserts that the command did not run (the marker file it
//! would create is absent), that the file went to `DIR/rejected/` with a
//! one-line reason beside it, that one log line names file, seq, sender and
//! reason, that `queue-status` shows it, that nextseq did not move, and that
//! the genuine job with that seq still runs when it arrives.
//!
//! `age`, `age-keygen` and `ssh-keygen` must be installed (scripts/test
//! installs them); the tests fail, never skip, when they are missing.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fspl_format::{Ctime, DigestAlg, Extension, JobHeader};

use crate::both::Impl;
use crate::helper::*;

/// The name the test queue is given with `queue-init --name`.
pub const QUEUE_NAME: &str = "backups";
/// What the genuine jobs carry.
pub const PAYLOAD: &[u8] = b"the genuine payload\n";

/// Fail with a clear message unless `tool` is on PATH.
#[track_caller]
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; the security tests need it: apt-get install -y {package} \
         (scripts/test installs it)"
    );
}

/// Run a command and insist that it succeeds.
#[track_caller]
pub fn must(mut c: Command) -> Vec<u8> {
    c.stdin(std::process::Stdio::null());
    ok(c.output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}")))
}

/// Our binary, without inherited FSPL_* variables.
pub fn fs<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Impl::Ours.cmd(args)
}

/// A key pair: the secret key file, the public key line and its
/// `SHA256:` fingerprint.
pub struct KeyPair {
    pub secret: PathBuf,
    pub public: String,
    pub fingerprint: String,
}

/// `ssh-keygen -l -f FILE`'s fingerprint.
pub fn ssh_fingerprint(public: &Path) -> String {
    require("ssh-keygen", "openssh-client");
    let mut c = Command::new("ssh-keygen");
    c.arg("-l").arg("-f").arg(public);
    let out = String::from_utf8(must(c)).unwrap();
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// `fspl keygen -o DIR/name -C name`.
pub fn keygen(s: &Sandbox, name: &str) -> KeyPair {
    let secret = s.path(name);
    let out = String::from_utf8(must(fs([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        secret.as_os_str(),
        OsStr::new("-C"),
        OsStr::new(name),
    ])))
    .unwrap();
    let fingerprint = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("keygen printed no fingerprint: {out}"))
        .to_string();
    let public = std::fs::read_to_string(s.path(format!("{name}.pub"))).unwrap();
    KeyPair {
        secret,
        public: public.trim_end().to_string(),
        fingerprint,
    }
}

/// `ssh-keygen -t ed25519 -N '' -f DIR/name`.
pub fn ssh_keygen(s: &Sandbox, name: &str) -> KeyPair {
    require("ssh-keygen", "openssh-client");
    let secret = s.path(name);
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&secret);
    must(c);
    let public = std::fs::read_to_string(s.path(format!("{name}.pub"))).unwrap();
    KeyPair {
        fingerprint: ssh_fingerprint(&s.path(format!("{name}.pub"))),
        secret,
        public: public.trim_end().to_string(),
    }
}

/// `age-keygen -o DIR/name`: the identity file and its recipient.
pub fn age_keygen(s: &Sandbox, name: &str) -> (PathBuf, String) {
    require("age-keygen", "age");
    let id = s.path(name);
    let mut c = Command::new("age-keygen");
    c.arg("-o").arg(&id);
    must(c);
    let mut c = Command::new("age-keygen");
    c.arg("-y").arg(&id);
    let recipient = String::from_utf8(must(c)).unwrap().trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    (id, recipient)
}

/// Run `age ARGS` with `input` on stdin; its stdout.
pub fn age(args: &[&OsStr], input: &[u8]) -> Vec<u8> {
    require("age", "age");
    let mut c = Command::new("age");
    c.args(args);
    ok(run_with_input(c, input))
}

/// One `[[sender]]` of a trust file.
pub fn sender(name: &str, key: &str, extra: &str) -> String {
    format!("[[sender]]\nname = \"{name}\"\nkey = \"{key}\"\n{extra}\n")
}

/// The command every test runs: writes its stdin to DIR/ran-$FSPL_SEQ (the
/// marker) and its arguments, one a line, to DIR/args-$FSPL_SEQ.
pub const SCRIPT: &str =
    r#"cat > "$0/ran-$FSPL_SEQ" && for a; do printf '%s\n' "$a"; done > "$0/args-$FSPL_SEQ""#;

/// A receiver with a named queue and a trust file for one sender, "laptop".
pub struct Setup {
    pub s: Sandbox,
    pub laptop: KeyPair,
    /// The queue, named QUEUE_NAME.
    pub q: PathBuf,
    pub trust: PathBuf,
    /// A regular file holding PAYLOAD.
    pub payload: PathBuf,
    /// Where the command leaves its markers.
    pub marks: PathBuf,
}

impl Setup {
    /// laptop may send params `backup *` and `restore **`, to queues
    /// "backups" and "db-*".
    pub fn new() -> Setup {
        let s = Sandbox::new();
        let laptop = keygen(&s, "laptop");
        let q = s.path("q");
        must(fs([
            OsStr::new("queue-init"),
            OsStr::new("-q"),
            q.as_os_str(),
            OsStr::new("--name"),
            OsStr::new(QUEUE_NAME),
        ]));
        let trust = s.path("trust.toml");
        std::fs::write(
            &trust,
            sender(
                "laptop",
                &laptop.public,
                r#"params = [["backup", "*"], ["restore", "**"]]
queues = ["backups", "db-*"]"#,
            ),
        )
        .unwrap();
        let payload = s.path("payload");
        std::fs::write(&payload, PAYLOAD).unwrap();
        let marks = s.path("marks");
        std::fs::create_dir(&marks).unwrap();
        Setup {
            s,
            laptop,
            q,
            trust,
            payload,
            marks,
        }
    }

    /// Another queue in the sandbox, named or not.
    pub fn queue(&self, dir: &str, name: Option<&str>) -> PathBuf {
        let q = self.s.path(dir);
        let mut c = fs([OsStr::new("queue-init"), OsStr::new("-q"), q.as_os_str()]);
        if let Some(n) = name {
            c.args(["--name", n]);
        }
        must(c);
        q
    }

    /// `prepare --seq SEQ -i PAYLOAD [--sign KEY] [--to TO] EXTRA -- PARAMS`.
    pub fn prepare(
        &self,
        seq: u64,
        key: Option<&Path>,
        to: Option<&str>,
        extra: &[&str],
        params: &[&str],
    ) -> Vec<u8> {
        let mut c = fs(["prepare", "--seq", &seq.to_string(), "-i"]);
        c.arg(&self.payload);
        if let Some(k) = key {
            c.arg("--sign").arg(k);
        }
        if let Some(t) = to {
            c.args(["--to", t]);
        }
        c.args(extra);
        c.arg("--").args(params);
        must(c)
    }

    /// The genuine job: signed by laptop, to QUEUE_NAME, params `backup db`.
    pub fn genuine(&self, seq: u64) -> Vec<u8> {
        self.prepare(
            seq,
            Some(&self.laptop.secret),
            Some(QUEUE_NAME),
            &[],
            &["backup", "db"],
        )
    }

    /// `queue-write` into `q` (or, for a job queue-write refuses, straight
    /// into `jobs/`, as an attacker or a sync tool could); the new file's
    /// name.
    pub fn write(&self, q: &Path, job: &[u8]) -> String {
        deliver(q, job)
    }

    /// `queue-process -q Q --trust TRUST EXTRA sh -c SCRIPT MARKS`.
    pub fn process(&self, q: &Path, extra: &[&str]) -> Output {
        self.process_with(q, Some(&self.trust), extra)
    }

    pub fn process_with(&self, q: &Path, trust: Option<&Path>, extra: &[&str]) -> Output {
        let mut c = fs([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
        if let Some(t) = trust {
            c.arg("--trust").arg(t);
        }
        c.args(extra)
            .args(["sh", "--", "-c", SCRIPT])
            .arg(&self.marks);
        run(c)
    }

    /// The file the command creates when job `seq` runs.
    pub fn marker(&self, seq: u64) -> PathBuf {
        self.marks.join(format!("ran-{seq}"))
    }

    /// The arguments job `seq` ran with.
    pub fn args_of(&self, seq: u64) -> Vec<String> {
        std::fs::read_to_string(self.marks.join(format!("args-{seq}")))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Assert that job `seq` did not run.
    #[track_caller]
    pub fn not_run(&self, seq: u64) {
        assert!(
            !self.marker(seq).exists(),
            "the command ran for seq {seq} although the job should have been refused"
        );
    }

    /// Write the genuine job `seq`, process, and assert that it ran with
    /// the genuine payload and that nextseq moved past it.
    #[track_caller]
    pub fn genuine_runs(&self, seq: u64) {
        let name = self.write(&self.q, &self.genuine(seq));
        let out = self.process(&self.q, &[]);
        ok(out);
        assert_eq!(
            std::fs::read(self.marker(seq)).unwrap_or_default(),
            PAYLOAD,
            "the genuine job {seq} did not run with its payload"
        );
        assert!(!self.q.join("jobs").join(name).exists());
        assert_eq!(nextseq(&self.q), seq + 1);
    }
}

/// The queue's nextseq.
pub use fspl_testkit::nextseq;

/// Everything a refusal must leave behind, for the job stored as `file`:
/// `queue-process` itself succeeded, the file is in rejected/ and not in
/// jobs/, its reason is one line (starting with the seq and naming the
/// sender when known) containing `reason`, exactly one log line names file,
/// seq, sender and reason, and `queue-status` lists it.
#[track_caller]
pub fn assert_refused(
    q: &Path,
    out: &Output,
    file: &str,
    seq: Option<u64>,
    sender: Option<&str>,
    reason: &str,
) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "refusing a job is not a failure of queue-process: {err}"
    );
    assert!(
        !q.join("jobs").join(file).exists(),
        "{file} is still in jobs/; stderr: {err}"
    );
    assert!(
        q.join("rejected").join(file).is_file(),
        "{file} is not in rejected/; stderr: {err}"
    );
    let why = std::fs::read_to_string(q.join("rejected").join(format!("{file}.reason"))).unwrap();
    assert!(
        why.ends_with('\n') && why.lines().count() == 1,
        "not one line: {why:?}"
    );
    assert!(why.contains(reason), "{why:?} does not say {reason:?}");
    if let Some(n) = seq {
        assert!(why.starts_with(&format!("seq {n}: ")), "{why:?}");
    }
    if let Some(s) = sender {
        assert!(why.contains(&format!("sender {s:?}")), "{why:?}");
    }
    let logged: Vec<&str> = err.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(logged.len(), 1, "one log line per refusal: {err}");
    let line = logged[0];
    assert!(line.starts_with("fspl: warning: job refused: "), "{line}");
    assert!(line.contains(file), "{line}");
    assert!(line.contains(reason), "{line}");
    let seq_field = match seq {
        Some(n) => format!(" seq={n} "),
        None => " seq=- ".to_string(),
    };
    assert!(line.contains(&seq_field), "{line} lacks {seq_field:?}");
    assert!(
        line.contains(&format!("sender=\"{}\"", sender.unwrap_or("-"))),
        "{line}"
    );
    let st = run(fs([
        OsStr::new("queue-status"),
        OsStr::new("-q"),
        q.as_os_str(),
    ]));
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("rejected:") && l.contains(file) && l.contains(reason)),
        "queue-status does not show the refusal: {text}"
    );
}

// ---- crafting job files (as an attacker, or a sender with the key) ----

/// Split a plain job into its decoded header, extension and payload.
pub fn split(job: &[u8]) -> (JobHeader, Extension, Vec<u8>) {
    let d = fspl_format::decode(job).expect("a plain job");
    (d.header, d.ext, job[d.header_len as usize..].to_vec())
}

/// Encode a job with valid CRCs.
pub fn join(h: &JobHeader, e: &Extension, payload: &[u8]) -> Vec<u8> {
    let mut out = h.encode_with(e).unwrap();
    out.extend_from_slice(payload);
    out
}

/// Change a job's fields and encode it again with valid CRCs, keeping its
/// signature (what someone without the key can do).
pub fn tamper(job: &[u8], f: impl FnOnce(&mut JobHeader, &mut Extension, &mut Vec<u8>)) -> Vec<u8> {
    let (mut h, mut e, mut p) = split(job);
    f(&mut h, &mut e, &mut p);
    join(&h, &e, &p)
}

/// Change a job's fields and sign it again with the secret key file at
/// `key` (what its owner can do): length and digest follow the payload.
pub fn resign(
    job: &[u8],
    key: &Path,
    f: impl FnOnce(&mut JobHeader, &mut Extension, &mut Vec<u8>),
) -> Vec<u8> {
    let (mut h, mut e, mut p) = split(job);
    f(&mut h, &mut e, &mut p);
    let k = fspl_trust::SecretKey::load(key).unwrap();
    let (len, digest) = fspl_trust::digest::hash_reader(DigestAlg::Blake3, &mut &p[..]).unwrap();
    e.payload_len = Some(len);
    e.digest = Some(digest);
    e.signer = Some(k.public().bytes());
    e.signature = None;
    e.signature = Some(k.sign(&h.signed_bytes(&e).unwrap()));
    join(&h, &e, &p)
}

fn now_secs() -> i64 {
    Ctime::now().secs
}

// ---- refusals: each case, with the genuine job running afterwards ----

#[test]
fn unsigned_jobs_are_refused_with_a_trust_file_whoever_made_them() {
    let t = Setup::new();
    // Ours, unsigned (it carries a digest and a destination, but no
    // signature) and the reference's (no extension at all).
    let ours = t.prepare(1, None, Some(QUEUE_NAME), &[], &["backup", "db"]);
    let theirs = {
        let mut c = Impl::Ref.cmd(["prepare", "-s", "-", "-i"]);
        c.arg(&t.payload).args(["--", "backup", "db"]);
        must(c)
    };
    for job in [ours, theirs] {
        let f = t.write(&t.q, &job);
        let out = t.process(&t.q, &[]);
        t.not_run(1);
        assert_refused(&t.q, &out, &f, Some(1), None, "unsigned job");
        assert_eq!(nextseq(&t.q), 1);
    }
    t.genuine_runs(1);
}

#[test]
fn a_job_signed_by_an_unknown_key_is_refused() {
    let t = Setup::new();
    let stranger = keygen(&t.s, "stranger");
    let f = t.write(
        &t.q,
        &t.prepare(
            1,
            Some(&stranger.secret),
            Some(QUEUE_NAME),
            &[],
            &["backup", "db"],
        ),
    );
    let out = t.process(&t.q, &[]);
    t.not_run(1);
    // The reason names the key by its fingerprint.
    assert_refused(
        &t.q,
        &out,
        &f,
        Some(1),
        None,
        &format!(
            "signed by a key that is not in the trust file ({})",
            stranger.fingerprint
        ),
    );
    t.genuine_runs(1);
}

#[test]
fn a_bad_signature_is_refused() {
    let t = Setup::new();
    let genuine = t.genuine(1);
    for bit in [0usize, 63 * 8 + 7] {
        let forged = tamper(&genuine, |_, e, _| {
            let sig = e.signature.as_mut().unwrap();
            sig[bit / 8] ^= 1 << (bit % 8);
        });
        let f = t.write(&t.q, &forged);
        let out = t.process(&t.q, &[]);
        t.not_run(1);
        assert_refused(&t.q, &out, &f, Some(1), Some("laptop"), "bad signature");
    }
    // A signature by the right key over other bytes: laptop's signature of
    // job 2, grafted onto job 1.
    let other = t.genuine(2);
    let sig2 = split(&other).1.signature;
    let grafted = tamper(&genuine, |_, e, _| e.signature = sig2);
    let f = t.write(&t.q, &grafted);
    let out = t.process(&t.q, &[]);
    t.not_run(1);
    assert_refused(&t.q, &out, &f, Some(1), Some("laptop"), "bad signature");
    t.genuine_runs(1);
}

#[test]
fn any_changed_header_field_breaks_the_signature() {
    let t = Setup::new();
    let genuine = t.genuine(1);
    type Change = Box<dyn Fn(&mut JobHeader, &mut Extension, &mut Vec<u8>)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "param",
            Box::new(|h, _, _| {
                if let fspl_format::CmdType::Command(c) = &mut h.cmd_type {
                    c.params[1] = b"everything".to_vec();
                }
            }),
        ),
        (
            "added env entry",
            Box::new(|h, _, _| {
                if let fspl_format::CmdType::Command(c) = &mut h.cmd_type {
                    c.env.push((b"LD_PRELOAD".to_vec(), b"/tmp/x.so".to_vec()));
                }
            }),
        ),
        ("ctime", Box::new(|h, _, _| h.ctime.nanos ^= 1)),
        (
            "command type",
            Box::new(|h, _, _| h.cmd_type = fspl_format::CmdType::Nop),
        ),
        (
            "payload length and payload",
            Box::new(|_, e, p| {
                p.push(b'!');
                e.payload_len = Some(p.len() as u64);
            }),
        ),
        (
            // The attacker replaces the payload and fixes up length and
            // digest to match: the signature covers them.
            "payload with a matching digest",
            Box::new(|_, e, p| {
                *p = b"rm -rf ~\n".to_vec();
                let (n, d) =
                    fspl_trust::digest::hash_reader(DigestAlg::Blake3, &mut &p[..]).unwrap();
                e.payload_len = Some(n);
                e.digest = Some(d);
            }),
        ),
        (
            "digest algorithm",
            Box::new(|_, e, _| e.digest.as_mut().unwrap().alg = DigestAlg::Sha256),
        ),
    ];
    for (what, change) in changes {
        let forged = tamper(&genuine, |h, e, p| change(h, e, p));
        assert_ne!(forged, genuine, "{what}");
        let f = t.write(&t.q, &forged);
        let out = t.process(&t.q, &["--allow-job-params"]);
        t.not_run(1);
        assert_refused(&t.q, &out, &f, Some(1), Some("laptop"), "bad signature");
        assert_eq!(nextseq(&t.q), 1, "{what}");
    }
    // Another signer: a key that is not trusted, or not a key at all.
    let stranger = keygen(&t.s, "stranger");
    let stranger_key = fspl_trust::PublicKey::parse(&stranger.public)
        .unwrap()
        .bytes();
    // About half of all 32-byte strings are not points on the curve.
    let not_a_key = (1..=255u8)
        .map(|b| [b; 32])
        .find(|k| fspl_trust::PublicKey::from_bytes(k).is_err())
        .unwrap();
    for (key, reason) in [
        (stranger_key, "not in the trust file"),
        (not_a_key, "signer key is not a valid ed25519 key"),
    ] {
        let forged = tamper(&genuine, |_, e, _| e.signer = Some(key));
        let f = t.write(&t.q, &forged);
        let out = t.process(&t.q, &[]);
        t.not_run(1);
        assert_refused(&t.q, &out, &f, Some(1), None, reason);
    }
    // Changing the destination is caught too (by the signature: the
    // forged "to" matches this queue).
    let other_queue = t.prepare(
        1,
        Some(&t.laptop.secret),
        Some("db-main"),
        &[],
        &["backup", "db"],
    );
    let redirected = tamper(&other_queue, |_, e, _| e.to = Some(QUEUE_NAME.into()));
    let f = t.write(&t.q, &redirected);
    let out = t.process(&t.q, &[]);
    t.not_run(1);
    assert_refused(&t.q, &out, &f, Some(1), Some("laptop"), "bad signature");
    t.genuine_runs(1);
}

#[test]
fn a_changed_payload_is_refused_by_its_digest_and_length() {
    let t = Setup::new();
    let genuine = t.genuine(1);
    let hl = fspl_format::decode(&genuine).unwrap().header_len as usize;
    let mut flipped = genuine.clone();
    flipped[hl + 3] ^= 0x01;
    let mut longer = genuine.clone();
    longer.extend_from_slice(b"appended");
    let shorter = genuine[..genuine.len() - 1].to_vec();
    for (job, reason) in [
        (flipped, "does not match the header's"),
        (longer, "the header says"),
        (shorter, "the header says"),
    ] {
        let f = t.write(&t.q, &job);
        let out = t.process(&t.q, &[]);
        t.not_run(1);
        assert_refused(&t.q, &out, &f, Some(1), Some("laptop"), reason);
    }
    t.genuine_runs(1);
}

/// Without a trust file the digest is checked while the command reads
/// the payload (docs/security.md): a changed payload of the right length
/// reaches the command, but the job then fails (never a success) and stays
/// queued under --on-error retry. A copy of the right length but another
/// digest lying next to the genuine job is still refused before anything
/// runs, and a payload of the wrong length too (its file's size says so).
#[test]
fn a_digest_mismatch_without_a_trust_file_fails_the_job_and_a_bad_copy_is_refused() {
    let t = Setup::new();
    // An unsigned job from a regular file carries length and digest.
    let job = t.prepare(1, None, None, &[], &[]);
    let e = split(&job).1;
    assert_eq!(e.payload_len, Some(PAYLOAD.len() as u64));
    assert!(e.digest.is_some() && e.signature.is_none());
    let unnamed = t.queue("plain", None);
    let mut bad = job.clone();
    let n = bad.len();
    bad[n - 2] ^= 0x40;
    let f = t.write(&unnamed, &bad);
    let out = t.process_with(&unnamed, None, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("payload check failed: payload blake3 digest"),
        "{err}"
    );
    assert_eq!(nextseq(&unnamed), 1);
    assert!(unnamed.join("jobs").join(&f).exists(), "{err}");
    assert!(!unnamed.join("rejected").exists(), "{err}");
    // Cut short: refused before anything runs.
    std::fs::remove_file(t.marker(1)).unwrap();
    std::fs::remove_file(unnamed.join("jobs").join(&f)).unwrap();
    let f = t.write(&unnamed, &job[..n - 1]);
    let out = t.process_with(&unnamed, None, &[]);
    t.not_run(1);
    assert_refused(&unnamed, &out, &f, Some(1), None, "the header says");
    // The damaged copy next to the genuine job: refused, and the genuine
    // one runs.
    let f = t.write(&unnamed, &bad);
    t.write(&unnamed, &job);
    let out = t.process_with(&unnamed, None, &[]);
    assert_refused(&unnamed, &out, &f, Some(1), None, "does not match");
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    assert_eq!(nextseq(&unnamed), 2);
}

#[test]
fn a_job_for_another_queue_or_none_is_refused() {
    let t = Setup::new();
    let key = Some(t.laptop.secret.as_path());
    let p = &["backup", "db"];
    // Addressed elsewhere; not addressed at all (a named queue takes only
    // jobs sent --to it).
    for (job, reason) in [
        (
            t.prepare(1, key, Some("db-main"), &[], p),
            "addressed to queue \"db-main\", but this queue is \"backups\"",
        ),
        (
            t.prepare(1, key, None, &[], p),
            "not addressed to a queue, but this queue is \"backups\"",
        ),
    ] {
        let f = t.write(&t.q, &job);
        let out = t.process(&t.q, &[]);
        t.not_run(1);
        assert_refused(&t.q, &out, &f, Some(1), Some("laptop"), reason);
    }
    // A queue without a name refuses jobs addressed to a queue.
    let unnamed = t.queue("unnamed", None);
    let f = t.write(&unnamed, &t.genuine(1));
    let out = t.process(&unnamed, &[]);
    t.not_run(1);
    assert_refused(
        &unnamed,
        &out,
        &f,
        Some(1),
        Some("laptop"),
        "this queue has no name",
    );
    // The sender may not address this queue: "other" is not in its list.
    let other = t.queue("other", Some("other"));
    let f = t.write(&other, &t.prepare(1, key, Some("other"), &[], p));
    let out = t.process(&other, &[]);
    t.not_run(1);
    assert_refused(
        &other,
        &out,
        &f,
        Some(1),
        Some("laptop"),
        "sender \"laptop\" may not address queue \"other\"",
    );
    // A glob in the list: "db-*" admits db-main.
    let db = t.queue("db", Some("db-main"));
    t.write(&db, &t.prepare(1, key, Some("db-main"), &[], p));
    ok(t.process(&db, &[]));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    std::fs::remove_file(t.marker(1)).unwrap();
    t.genuine_runs(1);
}

#[test]
fn a_job_from_the_future_is_refused_beyond_the_configured_skew() {
    let t = Setup::new();
    let genuine = t.genuine(1);
    let ahead = |secs: i64| {
        resign(&genuine, &t.laptop.secret, |h, _, _| {
            h.ctime = Ctime {
                secs: now_secs() + secs,
                nanos: 0,
            }
        })
    };
    // An hour ahead: refused with the default skew (300 s).
    let f = t.write(&t.q, &ahead(3600));
    let out = t.process(&t.q, &[]);
    t.not_run(1);
    assert_refused(
        &t.q,
        &out,
        &f,
        Some(1),
        Some("laptop"),
        "more than 300s in the future",
    );
    // A minute ahead is within it.
    t.write(&t.q, &ahead(60));
    ok(t.process(&t.q, &[]));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    // max_future_skew is configurable: 2 hours admits the job an hour
    // ahead, 10 s refuses one a minute ahead.
    let trust_text = std::fs::read_to_string(&t.trust).unwrap();
    let wide = t.s.path("wide.toml");
    std::fs::write(&wide, format!("max_future_skew = 7200\n{trust_text}")).unwrap();
    let narrow = t.s.path("narrow.toml");
    std::fs::write(&narrow, format!("max_future_skew = 10\n{trust_text}")).unwrap();
    let ahead2 = |secs: i64| {
        resign(&t.genuine(2), &t.laptop.secret, |h, _, _| {
            h.ctime = Ctime {
                secs: now_secs() + secs,
                nanos: 0,
            }
        })
    };
    let f = t.write(&t.q, &ahead2(60));
    let out = t.process_with(&t.q, Some(&narrow), &[]);
    t.not_run(2);
    assert_refused(
        &t.q,
        &out,
        &f,
        Some(2),
        Some("laptop"),
        "more than 10s in the future",
    );
    t.write(&t.q, &ahead2(3600));
    ok(t.process_with(&t.q, Some(&wide), &[]));
    assert_eq!(std::fs::read(t.marker(2)).unwrap(), PAYLOAD);
    assert_eq!(nextseq(&t.q), 3);
}

#[test]
fn params_outside_the_allowlist_are_refused_when_they_would_be_used() {
    let t = Setup::new();
    let key = Some(t.laptop.secret.as_path());
    for (seq, params) in [
        (1, &["rm", "-rf", "/"][..]),
        (1, &["backup"][..]),
        (1, &["backup", "db", "extra"][..]),
        (1, &["Backup", "db"][..]),
    ] {
        let f = t.write(&t.q, &t.prepare(seq, key, Some(QUEUE_NAME), &[], params));
        let out = t.process(&t.q, &["--allow-job-params"]);
        t.not_run(seq);
        assert_refused(
            &t.q,
            &out,
            &f,
            Some(seq),
            Some("laptop"),
            "are not allowed for sender \"laptop\"",
        );
    }
    // Allowed: `backup *` (a glob matching a slash and a space too) and
    // `restore **` (any further params), appended after the command's own.
    for (seq, params) in [
        (1, &["backup", "db/main x"][..]),
        (2, &["restore"][..]),
        (3, &["restore", "a", "b", "c"][..]),
    ] {
        t.write(&t.q, &t.prepare(seq, key, Some(QUEUE_NAME), &[], params));
        ok(t.process(&t.q, &["--allow-job-params"]));
        assert_eq!(t.args_of(seq), params, "seq {seq}");
    }
    // Without --allow-job-params the params are not used, so not checked:
    // the job runs without them.
    t.write(
        &t.q,
        &t.prepare(4, key, Some(QUEUE_NAME), &[], &["rm", "-rf"]),
    );
    ok(t.process(&t.q, &[]));
    assert!(t.marker(4).exists());
    assert!(t.args_of(4).is_empty());
}

#[test]
fn undecryptable_and_unreadable_files_are_refused_with_a_trust_file_and_skipped_without() {
    let t = Setup::new();
    let (id, recipient) = age_keygen(&t.s, "receiver.age");
    let (_, stranger) = age_keygen(&t.s, "stranger.age");
    let for_stranger = t.prepare(
        1,
        Some(&t.laptop.secret),
        Some(QUEUE_NAME),
        &["--encrypt-to", &stranger],
        &["backup", "db"],
    );
    let mut corrupt = t.genuine(1);
    corrupt[40] ^= 0xff;
    let id_arg = id.to_str().unwrap();
    for (job, with_id, reason) in [
        (&for_stranger, true, "cannot decrypt"),
        (
            &for_stranger,
            false,
            "encrypted (age): give --identity to read it",
        ),
        (&corrupt, true, "CRC-32 mismatch"),
    ] {
        let f = t.write(&t.q, job);
        let extra: &[&str] = if with_id {
            &["--identity", id_arg]
        } else {
            &[]
        };
        // Without a trust file: skipped, left where it is, not run.
        let out = t.process_with(&t.q, None, extra);
        ok(out);
        t.not_run(1);
        assert!(t.q.join("jobs").join(&f).exists());
        // With one: refused. Its seq cannot be known.
        let out = t.process(&t.q, extra);
        t.not_run(1);
        assert_refused(&t.q, &out, &f, None, None, reason);
        assert_eq!(nextseq(&t.q), 1);
    }
    // A job encrypted to us runs.
    t.write(
        &t.q,
        &t.prepare(
            1,
            Some(&t.laptop.secret),
            Some(QUEUE_NAME),
            &["--encrypt-to", &recipient],
            &["backup", "db"],
        ),
    );
    ok(t.process(&t.q, &["--identity", id_arg]));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
}

#[test]
fn refusals_happen_in_timestamp_order_too() {
    let t = Setup::new();
    let forged = tamper(&t.genuine(7), |h, _, _| h.seq = 8);
    let f = t.write(&t.q, &forged);
    let out = t.process(&t.q, &["--order-by", "timestamp"]);
    t.not_run(8);
    assert_refused(&t.q, &out, &f, Some(8), Some("laptop"), "bad signature");
    t.write(&t.q, &t.genuine(7));
    ok(t.process(&t.q, &["--order-by", "timestamp"]));
    assert!(t.marker(7).exists());
}

#[test]
fn a_forged_copy_of_the_next_job_does_not_block_the_genuine_one() {
    let t = Setup::new();
    let genuine = t.genuine(1);
    let forged = tamper(&genuine, |h, _, _| {
        if let fspl_format::CmdType::Command(c) = &mut h.cmd_type {
            c.params[1] = b"all".to_vec();
        }
    });
    let bad = t.write(&t.q, &forged);
    let good = t.write(&t.q, &genuine);
    let out = t.process(&t.q, &[]);
    assert_refused(&t.q, &out, &bad, Some(1), Some("laptop"), "bad signature");
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    assert!(!t.q.join("jobs").join(good).exists());
    assert_eq!(nextseq(&t.q), 2);
}

/// Regression: a copy of the next job whose payload (not header) was
/// changed stopped processing as "same seq, different contents" instead of
/// being refused, so the genuine copy beside it could not run.
#[test]
fn regression_a_copy_with_a_changed_payload_blocked_the_genuine_job() {
    let t = Setup::new();
    let genuine = t.genuine(1);
    let mut forged = genuine.clone();
    let n = forged.len();
    forged[n - 1] ^= 0x01;
    let bad = t.write(&t.q, &forged);
    let good = t.write(&t.q, &genuine);
    let out = t.process(&t.q, &[]);
    assert_refused(&t.q, &out, &bad, Some(1), Some("laptop"), "does not match");
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    assert!(!t.q.join("jobs").join(good).exists());
    assert_eq!(nextseq(&t.q), 2);
}

/// Regression: the log line of a refused file whose seq cannot be known
/// (undecryptable, corrupt) said `seq=0`.
#[test]
fn regression_refusal_log_said_seq_0_for_an_unreadable_file() {
    let t = Setup::new();
    let mut corrupt = t.genuine(1);
    corrupt[31] ^= 0x10;
    let f = t.write(&t.q, &corrupt);
    let out = t.process(&t.q, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("seq=0"), "{err}");
    assert_refused(&t.q, &out, &f, None, None, "unreadable job file");
}

/// Regression: when a signed job's header passed and its payload did not,
/// the log line and the reason file said `sender="-"`.
#[test]
fn regression_payload_refusal_of_a_signed_job_did_not_name_its_sender() {
    let t = Setup::new();
    let mut job = t.genuine(1);
    job.push(b'\n');
    let f = t.write(&t.q, &job);
    let out = t.process(&t.q, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sender=\"laptop\""), "{err}");
    assert_refused(&t.q, &out, &f, Some(1), Some("laptop"), "the header says");
}

/// Regression: a compressed or encrypted job carrying a length and digest
/// whose payload could not be decoded to the end (cut short, corrupt)
/// counted as a failed job, not a refusal, so `--on-error delete` deleted
/// it and advanced nextseq past the genuine job's seq.
#[test]
fn regression_a_cut_short_compressed_or_encrypted_job_advanced_nextseq_under_on_error_delete() {
    let t = Setup::new();
    let (id, recipient) = age_keygen(&t.s, "receiver.age");
    let big: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&t.payload, &big).unwrap();
    let id_arg = id.to_str().unwrap();
    for (seq, (extra, trust)) in [
        (&["--compress", "zstd"][..], true),
        (&["--compress", "gzip"][..], false),
        (&["--encrypt-to", &recipient][..], true),
    ]
    .into_iter()
    .enumerate()
    {
        let seq = seq as u64 + 1;
        let job = t.prepare(
            seq,
            Some(&t.laptop.secret),
            Some(QUEUE_NAME),
            extra,
            &["backup", "db"],
        );
        let f = t.write(&t.q, &job[..job.len() / 2]);
        let trust_file = trust.then_some(t.trust.as_path());
        let out = t.process_with(
            &t.q,
            trust_file,
            &["--on-error", "delete", "--identity", id_arg],
        );
        t.not_run(seq);
        // An encrypted file's size tells its payload's length: cut short,
        // it is refused by that before any of it is decrypted.
        let reason = if extra[0] == "--encrypt-to" {
            "(cut short or altered)"
        } else {
            "payload cannot be read to the end"
        };
        assert_refused(&t.q, &out, &f, Some(seq), trust.then_some("laptop"), reason);
        assert_eq!(nextseq(&t.q), seq, "{extra:?}");
        t.write(&t.q, &job);
        ok(t.process_with(&t.q, trust_file, &["--identity", id_arg]));
        assert_eq!(std::fs::read(t.marker(seq)).unwrap(), big, "{extra:?}");
    }
}

// ---- stdin-process ----

#[test]
fn stdin_process_refuses_before_running_and_checks_only_the_senders_queues() {
    let t = Setup::new();
    let trust = t.trust.to_str().unwrap().to_string();
    let key = Some(t.laptop.secret.as_path());
    let stranger = keygen(&t.s, "stranger");
    let genuine = t.genuine(1);
    let mut payload_changed = genuine.clone();
    let n = payload_changed.len();
    payload_changed[n - 3] ^= 0x04;
    let mut cut = genuine.clone();
    cut.truncate(n - 5);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (t.prepare(1, None, None, &[], &[]), "unsigned job"),
        (
            t.prepare(1, Some(&stranger.secret), None, &[], &[]),
            "not in the trust file",
        ),
        (
            tamper(&genuine, |h, _, _| h.ctime.secs += 1),
            "bad signature",
        ),
        (payload_changed, "does not match"),
        (cut, "the header says"),
        (
            t.prepare(1, key, Some("other"), &[], &[]),
            "may not address queue \"other\"",
        ),
    ];
    for (job, reason) in cases {
        let mut c = fs(["stdin-process", "--trust", &trust, "sh", "--", "-c", SCRIPT]);
        c.arg(&t.marks);
        let line = one_line_error(run_with_input(c, &job));
        assert!(line.contains("job 1 (stdin) refused: "), "{line}");
        assert!(line.contains(reason), "{line} does not say {reason:?}");
        t.not_run(1);
    }
    // A job addressed to an allowed queue (there is no queue here) runs;
    // one addressed to none does not: laptop has a `queues` list, so it
    // may only reach the queues in it, by name.
    let mut c = fs(["stdin-process", "--trust", &trust, "sh", "--", "-c", SCRIPT]);
    c.arg(&t.marks);
    ok(run_with_input(
        c,
        &t.prepare(1, key, Some("db-main"), &[], &["backup", "x"]),
    ));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    let mut c = fs(["stdin-process", "--trust", &trust, "sh", "--", "-c", SCRIPT]);
    c.arg(&t.marks);
    let line = one_line_error(run_with_input(c, &t.prepare(2, key, None, &[], &[])));
    assert!(
        line.contains("job 2 (stdin) refused: sender \"laptop\" may only address"),
        "{line}"
    );
    t.not_run(2);
    // Params are checked when --allow-job-params would append them.
    let job = t.prepare(3, key, Some("db-main"), &[], &["rm", "-rf", "/"]);
    let mut c = fs([
        "stdin-process",
        "--trust",
        &trust,
        "--allow-job-params",
        "sh",
        "--",
        "-c",
        SCRIPT,
    ]);
    c.arg(&t.marks);
    let line = one_line_error(run_with_input(c, &job));
    assert!(
        line.contains("are not allowed for sender \"laptop\""),
        "{line}"
    );
    t.not_run(3);
    let mut c = fs(["stdin-process", "--trust", &trust, "sh", "--", "-c", SCRIPT]);
    c.arg(&t.marks);
    ok(run_with_input(c, &job));
    assert!(t.args_of(3).is_empty());
}

/// Signed NOP and Fail jobs (prepare-nop, prepare-fail --sign) pass a trust
/// file like any other: a NOP fills a gap, a Fail job fails (it is not
/// refused); unsigned ones are refused.
#[test]
fn signed_nop_and_fail_jobs_are_accepted_and_unsigned_ones_refused() {
    let t = Setup::new();
    let special = |kind: &str, seq: u64, sign: bool| {
        let mut c = fs([kind, "--seq", &seq.to_string(), "--to", QUEUE_NAME]);
        if sign {
            c.arg("--sign").arg(&t.laptop.secret);
        }
        must(c)
    };
    let f = t.write(&t.q, &special("prepare-nop", 1, false));
    let out = t.process(&t.q, &[]);
    assert_refused(&t.q, &out, &f, Some(1), None, "unsigned job");
    t.write(&t.q, &special("prepare-nop", 1, true));
    let f = t.write(&t.q, &special("prepare-fail", 2, false));
    let out = t.process(&t.q, &[]);
    assert_refused(&t.q, &out, &f, Some(2), None, "unsigned job");
    assert_eq!(nextseq(&t.q), 2, "the signed NOP ran");
    t.write(&t.q, &special("prepare-fail", 2, true));
    let line = one_line_error(t.process(&t.q, &[]));
    assert!(line.contains("Fail job"), "{line}");
    assert_eq!(nextseq(&t.q), 2);
    ok(t.process(&t.q, &["--on-error", "delete"]));
    t.genuine_runs(3);
}

/// Everything at once: signed, addressed, compressed and encrypted to two
/// recipients; each recipient's identity reads it.
#[test]
fn a_signed_compressed_job_encrypted_to_two_recipients_runs_for_either() {
    let t = Setup::new();
    let (a_id, a) = age_keygen(&t.s, "a.age");
    let ssh = ssh_keygen(&t.s, "id_ed25519");
    let job = t.prepare(
        1,
        Some(&t.laptop.secret),
        Some(QUEUE_NAME),
        &[
            "--compress",
            "xz",
            "--encrypt-to",
            &a,
            "--encrypt-to",
            &ssh.public,
        ],
        &["backup", "db"],
    );
    for (seq, id) in [(1u64, &a_id), (2, &ssh.secret)] {
        let q = t.queue(&format!("q{seq}"), Some(QUEUE_NAME));
        t.write(&q, &job);
        ok(t.process(
            &q,
            &["--allow-job-params", "--identity", id.to_str().unwrap()],
        ));
        assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
        assert_eq!(t.args_of(1), ["backup", "db"]);
        std::fs::remove_file(t.marker(1)).unwrap();
    }
}

/// Regression: `stdin-process --trust --ignore-payload` did not check the
/// payload, so a signed job with a changed payload ran, and its command
/// could read that payload from the stdin it inherits.
#[test]
fn regression_stdin_process_ignore_payload_ran_a_job_with_a_changed_payload() {
    let t = Setup::new();
    let trust = t.trust.to_str().unwrap().to_string();
    let genuine = t.genuine(1);
    let mut changed = genuine.clone();
    let n = changed.len();
    changed[n - 2] ^= 0x01;
    let file = t.s.path("changed.fspl");
    std::fs::write(&file, &changed).unwrap();
    let cmd = || {
        let mut c = fs([
            "stdin-process",
            "--trust",
            &trust,
            "--ignore-payload",
            "sh",
            "--",
            "-c",
            SCRIPT,
        ]);
        c.arg(&t.marks);
        c
    };
    // From a pipe and from a regular file.
    let line = one_line_error(run_with_input(cmd(), &changed));
    assert!(
        line.contains("refused") && line.contains("does not match"),
        "{line}"
    );
    let line = one_line_error(run_with_file(cmd(), &file));
    assert!(
        line.contains("refused") && line.contains("does not match"),
        "{line}"
    );
    t.not_run(1);
    // The genuine job runs; what the command can read from the stdin it
    // inherits is still the (checked) payload, as with Filespooler.
    ok(run_with_input(cmd(), &genuine));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    std::fs::remove_file(t.marker(1)).unwrap();
    std::fs::write(&file, &genuine).unwrap();
    ok(run_with_file(cmd(), &file));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
}

// ---- replay ----

#[test]
fn a_signed_job_replayed_into_a_queue_with_another_name_is_refused() {
    let t = Setup::new();
    let job = t.genuine(1);
    t.write(&t.q, &job);
    ok(t.process(&t.q, &[]));
    assert!(t.marker(1).exists());
    std::fs::remove_file(t.marker(1)).unwrap();
    // The same bytes, copied into a second queue (allowed for the sender
    // by its glob) and into one without a name.
    let db = t.queue("db", Some("db-main"));
    let f = t.write(&db, &job);
    let out = t.process(&db, &[]);
    t.not_run(1);
    assert_refused(
        &db,
        &out,
        &f,
        Some(1),
        Some("laptop"),
        "addressed to queue \"backups\", but this queue is \"db-main\"",
    );
    let unnamed = t.queue("unnamed", None);
    let f = t.write(&unnamed, &job);
    let out = t.process(&unnamed, &[]);
    t.not_run(1);
    assert_refused(&unnamed, &out, &f, Some(1), Some("laptop"), "has no name");
}

#[test]
fn a_job_below_nextseq_is_never_run_again() {
    let t = Setup::new();
    let one = t.genuine(1);
    let two = t.genuine(2);
    t.write(&t.q, &one);
    t.write(&t.q, &two);
    ok(t.process(&t.q, &[]));
    assert!(t.marker(1).exists() && t.marker(2).exists());
    std::fs::remove_file(t.marker(1)).unwrap();
    std::fs::remove_file(t.marker(2)).unwrap();
    // Replayed, twice over, and with an identical copy.
    for _ in 0..2 {
        t.write(&t.q, &one);
        t.write(&t.q, &two);
        t.write(&t.q, &one);
        let out = t.process(&t.q, &[]);
        ok(out);
        t.not_run(1);
        t.not_run(2);
        assert_eq!(nextseq(&t.q), 3);
    }
    let st = String::from_utf8(
        run(fs([
            OsStr::new("queue-status"),
            OsStr::new("-q"),
            t.q.as_os_str(),
        ]))
        .stdout,
    )
    .unwrap();
    assert!(
        st.contains("below next:  6 (already run or skipped; never run again)"),
        "{st}"
    );
    // The next genuine job still runs.
    t.genuine_runs(3);
    t.not_run(1);
}

// ---- interoperability ----

#[test]
fn the_reference_reads_a_signed_job_like_the_same_job_unsigned() {
    let t = Setup::new();
    let signed = t.prepare(
        5,
        Some(&t.laptop.secret),
        Some(QUEUE_NAME),
        &[],
        &["backup", "db"],
    );
    let e = split(&signed).1;
    assert!(e.signature.is_some() && e.signer.is_some() && e.to.is_some());
    assert!(e.digest.is_some() && e.payload_len == Some(PAYLOAD.len() as u64));
    // The same job as Filespooler writes it: without the x-fspl extension.
    let unsigned = tamper(&signed, |_, e, _| *e = Extension::default());
    assert!(unsigned.len() < signed.len());
    for cmd in ["stdin-info", "stdin-payload"] {
        let a = ok(run_with_input(Impl::Ref.cmd([cmd]), &signed));
        let b = ok(run_with_input(Impl::Ref.cmd([cmd]), &unsigned));
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{cmd}"
        );
        assert_eq!(a, ok(run_with_input(fs([cmd]), &signed)), "{cmd}: ours");
    }
    let info =
        String::from_utf8(ok(run_with_input(Impl::Ref.cmd(["stdin-info"]), &signed))).unwrap();
    assert!(
        info.starts_with("FSPL_SEQ=5\n") && info.contains("FSPL_PARAM_2=db\n"),
        "{info}"
    );
    // And a queue of signed jobs is processed by it as usual.
    let rq = t.s.path("rq");
    must(Impl::Ref.cmd([OsStr::new("queue-init"), OsStr::new("-q"), rq.as_os_str()]));
    must(Impl::Ref.cmd([
        OsStr::new("queue-set-next"),
        OsStr::new("-q"),
        rq.as_os_str(),
        OsStr::new("5"),
    ]));
    ok(run_with_input(
        Impl::Ref.cmd([OsStr::new("queue-write"), OsStr::new("-q"), rq.as_os_str()]),
        &signed,
    ));
    let mut c = Impl::Ref.cmd([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        rq.as_os_str(),
        OsStr::new("--allow-job-params"),
        OsStr::new("sh"),
        OsStr::new("--"),
        OsStr::new("-c"),
        OsStr::new(SCRIPT),
    ]);
    c.arg(&t.marks);
    must(c);
    assert_eq!(std::fs::read(t.marker(5)).unwrap(), PAYLOAD);
    assert_eq!(t.args_of(5), ["backup", "db"]);
}

#[test]
fn the_reference_processes_an_encrypted_queue_with_the_age_cli_as_decoder() {
    let t = Setup::new();
    let (age_id, age_recipient) = age_keygen(&t.s, "receiver.age");
    let rq = t.s.path("rq");
    must(Impl::Ref.cmd([OsStr::new("queue-init"), OsStr::new("-q"), rq.as_os_str()]));
    // To an age recipient and to an ssh-ed25519 line (laptop's own public
    // key, so its OpenSSH secret key is an identity for the age CLI).
    for seq in 1..=2 {
        let job = t.prepare(
            seq,
            Some(&t.laptop.secret),
            None,
            &[
                "--encrypt-to",
                &age_recipient,
                "--encrypt-to",
                &t.laptop.public,
            ],
            &["backup", &format!("n{seq}")],
        );
        assert!(job.starts_with(b"age-encryption.org/v1\n"));
        assert!(!job.windows(PAYLOAD.len()).any(|w| w == PAYLOAD));
        assert!(!job.windows(6).any(|w| w == b"backup"));
        ok(run_with_input(
            Impl::Ref.cmd([OsStr::new("queue-write"), OsStr::new("-q"), rq.as_os_str()]),
            &job,
        ));
    }
    for (id, seq) in [(&age_id, 1u64), (&t.laptop.secret, 2)] {
        let decoder = format!("age -d -i '{}'", id.display());
        let ls = String::from_utf8(must(Impl::Ref.cmd([
            OsStr::new("queue-ls"),
            OsStr::new("-q"),
            rq.as_os_str(),
            OsStr::new("-d"),
            OsStr::new(&decoder),
        ])))
        .unwrap();
        assert_eq!(ls.lines().count(), 4 - seq as usize, "{ls}");
        let mut c = Impl::Ref.cmd([
            OsStr::new("queue-process"),
            OsStr::new("-q"),
            rq.as_os_str(),
            OsStr::new("-n"),
            OsStr::new("1"),
            OsStr::new("--allow-job-params"),
            OsStr::new("-d"),
            OsStr::new(&decoder),
            OsStr::new("sh"),
            OsStr::new("--"),
            OsStr::new("-c"),
            OsStr::new(SCRIPT),
        ]);
        c.arg(&t.marks);
        must(c);
        assert_eq!(std::fs::read(t.marker(seq)).unwrap(), PAYLOAD);
        assert_eq!(t.args_of(seq), ["backup".to_string(), format!("n{seq}")]);
    }
}

#[test]
fn our_receiver_reads_jobs_the_age_cli_encrypted() {
    let t = Setup::new();
    let (age_id, age_recipient) = age_keygen(&t.s, "receiver.age");
    let key = Some(t.laptop.secret.as_path());
    let p = &["backup", "db"];
    // Binary to an age recipient; armored to an ssh-ed25519 recipients
    // file; a job made by the reference (unsigned, so no --trust for it).
    let pubfile = t.s.path("laptop.pub");
    let jobs = [
        age(
            &[OsStr::new("-r"), OsStr::new(&age_recipient)],
            &t.prepare(1, key, Some(QUEUE_NAME), &[], p),
        ),
        age(
            &[OsStr::new("-a"), OsStr::new("-R"), pubfile.as_os_str()],
            &t.prepare(2, key, Some(QUEUE_NAME), &[], p),
        ),
    ];
    assert!(jobs[1].starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    let ids = [
        "--identity",
        age_id.to_str().unwrap(),
        "--identity",
        t.laptop.secret.to_str().unwrap(),
    ];
    for (i, job) in jobs.iter().enumerate() {
        let mut c = fs(["stdin-info"]);
        c.args(ids);
        let info = String::from_utf8(ok(run_with_input(c, job))).unwrap();
        assert!(info.starts_with(&format!("FSPL_SEQ={}\n", i + 1)), "{info}");
        t.write(&t.q, job);
    }
    let mut args = vec!["--allow-job-params"];
    args.extend(ids);
    ok(t.process(&t.q, &args));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    assert_eq!(std::fs::read(t.marker(2)).unwrap(), PAYLOAD);
    assert_eq!(t.args_of(2), p);
    // The reference's job, encrypted by the age CLI, without a trust file.
    let theirs = {
        let mut c = Impl::Ref.cmd(["prepare", "-s", "-", "-i"]);
        c.arg(&t.payload);
        must(c)
    };
    let plain = t.queue("plain", None);
    t.write(
        &plain,
        &age(&[OsStr::new("-r"), OsStr::new(&age_recipient)], &theirs),
    );
    ok(t.process_with(&plain, None, &ids));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
}

/// Regression: with an --identity that fits some jobs but not others,
/// queue-ls left the others out (they counted as unreadable) instead of
/// showing them as encrypted.
#[test]
fn regression_queue_ls_left_out_jobs_encrypted_to_another_identity() {
    let t = Setup::new();
    let (age_id, age_recipient) = age_keygen(&t.s, "receiver.age");
    let (_, stranger) = age_keygen(&t.s, "stranger.age");
    let key = Some(t.laptop.secret.as_path());
    let mine = t.write(
        &t.q,
        &t.prepare(
            1,
            key,
            Some(QUEUE_NAME),
            &["--encrypt-to", &age_recipient],
            &[],
        ),
    );
    let theirs = t.write(
        &t.q,
        &t.prepare(2, key, Some(QUEUE_NAME), &["--encrypt-to", &stranger], &[]),
    );
    let ls = |extra: &[&str]| {
        let mut c = fs([OsStr::new("queue-ls"), OsStr::new("-q"), t.q.as_os_str()]);
        c.args(extra);
        String::from_utf8(must(c)).unwrap()
    };
    let encrypted_row = |text: &str, f: &str| {
        text.lines()
            .any(|l| l.starts_with("? ") && l.contains("(encrypted)") && l.ends_with(f))
    };
    // No identity: both are shown, as encrypted.
    let text = ls(&[]);
    assert!(
        encrypted_row(&text, &mine) && encrypted_row(&text, &theirs),
        "{text}"
    );
    // Our identity: ours is listed, the other stays an encrypted row.
    let text = ls(&["--identity", age_id.to_str().unwrap()]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("1 ") && l.ends_with(&mine)),
        "{text}"
    );
    assert!(encrypted_row(&text, &theirs), "{text}");
    let st = String::from_utf8(
        run(fs([
            OsStr::new("queue-status"),
            OsStr::new("-q"),
            t.q.as_os_str(),
        ]))
        .stdout,
    )
    .unwrap();
    assert!(
        st.contains(&format!("encrypted:   {mine} (give --identity to read it)")),
        "{st}"
    );
}

// ---- readers with --trust ----

#[test]
fn readers_with_a_trust_file_name_the_signer_and_what_would_be_refused() {
    let t = Setup::new();
    let good = t.write(&t.q, &t.genuine(1));
    let unsigned = t.write(&t.q, &t.prepare(2, None, Some(QUEUE_NAME), &[], &[]));
    let trust = t.trust.to_str().unwrap();
    let q = t.q.to_str().unwrap();
    let ls = String::from_utf8(must(fs(["queue-ls", "-q", q, "--trust", trust]))).unwrap();
    let lines: Vec<&str> = ls.lines().collect();
    assert!(lines[0].ends_with(" signer"), "{ls}");
    assert!(
        lines[1].starts_with("1 ") && lines[1].contains(&good),
        "{ls}"
    );
    assert!(lines[1].ends_with(" laptop (payload unchecked)"), "{ls}");
    assert!(
        lines[2].contains(&unsigned) && lines[2].contains("REFUSED: unsigned job"),
        "{ls}"
    );
    // Without --trust the listing is Filespooler's.
    let plain = String::from_utf8(must(fs(["queue-ls", "-q", q]))).unwrap();
    assert!(
        plain.lines().next().unwrap().ends_with(" filename"),
        "{plain}"
    );
    // queue-info refuses to show a job that would be refused.
    must(fs(["queue-info", "-q", q, "-j", "1", "--trust", trust]));
    let line = one_line_error(run(fs([
        "queue-info",
        "-q",
        q,
        "-j",
        "2",
        "--trust",
        trust,
    ])));
    assert!(line.contains("would be refused: unsigned job"), "{line}");
    // queue-status lists it.
    let st =
        String::from_utf8(run(fs(["queue-status", "-q", q, "--trust", trust])).stdout).unwrap();
    assert!(
        st.contains(&format!("refusable:   seq 2, {unsigned}: unsigned job")),
        "{st}"
    );
}

// ---- keys ----

#[test]
fn keygen_writes_an_openssh_pair_that_ssh_keygen_reads() {
    require("ssh-keygen", "openssh-client");
    let s = Sandbox::new();
    let k = keygen(&s, "k");
    let mode = std::fs::metadata(&k.secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pubtext = std::fs::read_to_string(s.path("k.pub")).unwrap();
    assert_eq!(pubtext.lines().count(), 1);
    assert!(pubtext.starts_with("ssh-ed25519 AAAA") && pubtext.ends_with(" k\n"));
    // ssh-keygen derives the same public key from our secret key and
    // prints the same fingerprint as we do.
    let mut c = Command::new("ssh-keygen");
    c.arg("-y").arg("-f").arg(&k.secret);
    let derived = String::from_utf8(must(c)).unwrap();
    let mine: Vec<&str> = k.public.split(' ').take(2).collect();
    let theirs: Vec<&str> = derived.split_whitespace().take(2).collect();
    assert_eq!(mine, theirs);
    let fp = ssh_fingerprint(&s.path("k.pub"));
    assert!(fp.starts_with("SHA256:"), "{fp}");
    assert_eq!(k.fingerprint, fp);
    // An existing key is never overwritten.
    let before = std::fs::read(&k.secret).unwrap();
    let line = one_line_error(run(fs([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        k.secret.as_os_str(),
    ])));
    assert!(line.contains("already exists"), "{line}");
    assert_eq!(std::fs::read(&k.secret).unwrap(), before);
}

#[test]
fn openssh_keys_made_by_ssh_keygen_sign_verify_and_decrypt() {
    let t = Setup::new();
    let ssh = ssh_keygen(&t.s, "id_ed25519");
    let trust = t.s.path("ssh-trust.toml");
    std::fs::write(
        &trust,
        sender("desktop", &ssh.public, r#"params = [["backup", "*"]]"#),
    )
    .unwrap();
    let job = t.prepare(
        1,
        Some(&ssh.secret),
        Some(QUEUE_NAME),
        &["--encrypt-to", &ssh.public],
        &["backup", "db"],
    );
    t.write(&t.q, &job);
    let id = ssh.secret.to_str().unwrap();
    ok(t.process_with(
        &t.q,
        Some(&trust),
        &["--identity", id, "--allow-job-params"],
    ));
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    assert_eq!(t.args_of(1), ["backup", "db"]);
    // The same key is not trusted by laptop's trust file.
    let f = t.write(
        &t.q,
        &t.prepare(2, Some(&ssh.secret), Some(QUEUE_NAME), &[], &[]),
    );
    let out = t.process(&t.q, &[]);
    t.not_run(2);
    assert_refused(&t.q, &out, &f, Some(2), None, "not in the trust file");
    // A passphrase-protected key is refused with a way out.
    let locked = t.s.path("locked");
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&locked);
    must(c);
    let mut c = fs(["prepare", "--seq", "3", "--sign"]);
    c.arg(&locked);
    let line = one_line_error(run(c));
    assert!(line.contains("passphrase-protected"), "{line}");
    assert!(line.contains("no sequence number was used"), "{line}");
}

#[test]
fn a_secret_key_or_identity_readable_by_others_is_refused() {
    let t = Setup::new();
    let seqfile = t.s.path("seq");
    let job = t.genuine(1);
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&t.laptop.secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut c = fs(["prepare", "-s"]);
        c.arg(&seqfile).arg("--sign").arg(&t.laptop.secret);
        let out = run(c);
        assert!(out.stdout.is_empty(), "no job may be written");
        let line = one_line_error(out);
        assert!(line.contains("are too open"), "{line}");
        assert!(
            line.contains(&format!("chmod 600 {}", t.laptop.secret.display())),
            "{line}"
        );
        assert!(line.contains("no sequence number was used"), "{line}");
        assert!(!seqfile.exists() || std::fs::read_to_string(&seqfile).unwrap().trim() == "1");
        // As an identity for decryption too.
        let mut c = fs(["stdin-info", "--identity"]);
        c.arg(&t.laptop.secret);
        let line = one_line_error(run_with_input(c, &job));
        assert!(line.contains("too open"), "{line}");
    }
    std::fs::set_permissions(&t.laptop.secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = fs(["prepare", "-s"]);
    c.arg(&seqfile).arg("--sign").arg(&t.laptop.secret);
    ok(run(c));
    assert_eq!(std::fs::read_to_string(&seqfile).unwrap().trim(), "2");
}

#[test]
fn a_bad_trust_file_is_one_line_error_and_nothing_runs() {
    let t = Setup::new();
    t.write(&t.q, &t.genuine(1));
    let bad = t.s.path("bad.toml");
    for (text, says) in [
        (
            "[[sender]]\nname = \"x\"\nkey = \"ssh-ed25519 AAAAnotakey\"\n",
            "sender \"x\"",
        ),
        ("typo = 1\n", "bad.toml"),
        (
            &*format!(
                "{}{}",
                sender("a", &t.laptop.public, ""),
                sender("b", &t.laptop.public, "")
            ),
            "same key",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let line = one_line_error(t.process_with(&t.q, Some(&bad), &[]));
        assert!(line.contains(says), "{line}");
        t.not_run(1);
    }
    assert_eq!(nextseq(&t.q), 1);
    assert!(!t.q.join("rejected").exists());
}

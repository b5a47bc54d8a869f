//! Fixtures shared by the integration tests.

#![allow(dead_code)]

pub use fspl_testkit::daemon::{
    Daemon, config_text, dir_url, process_job, pull_job, push_job, recorder,
};
pub use fspl_testkit::jobs::{crc32, noise};
pub use fspl_testkit::procs::{Cleanup, Leftovers, gone, is_root, signal};
pub use fspl_testkit::{
    SOON, file_names, free_port, job_names, lines, nextseq, q, root, sshd, wait_for,
};

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The golden job files made by Filespooler 1.2.4.
pub fn vectors() -> PathBuf {
    root().join("testdata/vectors")
}

/// Our binary.
pub fn fspl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fspl"))
}

/// The reference Filespooler 1.2.4: $FSPL_REFERENCE, or installed into
/// target/fspl-ref on first use (once, under a lock, for all test threads
/// and processes). A missing reference is installed, never skipped.
pub fn reference_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("FSPL_REFERENCE") {
            let p = PathBuf::from(p);
            assert!(p.exists(), "FSPL_REFERENCE={} does not exist", p.display());
            return p;
        }
        let dir = root().join("target/fspl-ref");
        let bin = dir.join("bin/fspl");
        std::fs::create_dir_all(root().join("target")).unwrap();
        let lock = File::create(root().join("target/fspl-ref.lock")).unwrap();
        lock.lock().unwrap();
        if !bin.exists() {
            let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "install",
                    "filespooler",
                    "--version",
                    "1.2.4",
                    "--locked",
                    "--quiet",
                    "--root",
                ])
                .arg(&dir)
                .status()
                .expect("run cargo install for the reference Filespooler");
            assert!(
                st.success(),
                "installing the reference Filespooler 1.2.4 failed"
            );
        }
        bin
    })
    .clone()
}

/// A command for our binary, with TZ=UTC so times print predictably.
pub fn fspl() -> Command {
    let mut c = Command::new(fspl_bin());
    c.env("TZ", "UTC");
    c
}

/// A command for the reference binary, with TZ=UTC.
pub fn reference() -> Command {
    let mut c = Command::new(reference_bin());
    c.env("TZ", "UTC");
    c
}

/// Run with `stdin` as input; returns the output whatever the exit status.
pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().unwrap();
    out
}

/// Run with the file at `path` as stdin.
pub fn run_with_file(mut cmd: Command, path: &Path) -> Output {
    cmd.stdin(File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    cmd.output().expect("run")
}

/// Run with no stdin.
pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output().expect("run")
}

/// Assert success and return stdout.
#[track_caller]
pub fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "command failed ({}): stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Assert failure with exactly one stderr line starting with "fspl: error: ";
/// returns that line.
#[track_caller]
pub fn one_line_error(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(
        lines[0].starts_with("fspl: error: "),
        "unexpected error format: {err}"
    );
    lines[0].to_string()
}

pub use fspl_testkit::Sandbox;

/// Queues made with our binary.
pub trait MakeQueue {
    /// `fspl queue-init -q SANDBOX/name`.
    fn queue(&self, name: &str) -> PathBuf;
}

impl MakeQueue for Sandbox {
    fn queue(&self, name: &str) -> PathBuf {
        let q = self.path(name);
        ok(run(ours([
            OsStr::new("queue-init"),
            OsStr::new("-q"),
            q.as_os_str(),
        ])));
        q
    }
}

/// Our binary with these arguments.
pub fn ours<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = fspl();
    c.args(args);
    c
}

/// The reference binary with these arguments.
pub fn theirs<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = reference();
    c.args(args);
    c
}

/// Put `job` into `queue` as a sync tool (or anything else that writes
/// into `jobs/`) could, also when `queue-write` would refuse it: through
/// `queue-write` when that stores it; otherwise, after checking that the
/// refusal was clean (exit 1, one line saying nothing was stored, nothing
/// left in `jobs/`), by writing the file into `jobs/` directly. For tests
/// of what readers and processors make of bad files. The new file's name.
#[track_caller]
pub fn deliver(queue: &Path, job: &[u8]) -> String {
    let listing = |q: &Path| file_names(&q.join("jobs"));
    let before = listing(queue);
    let mut c = fspl();
    clean_env(&mut c);
    c.args([
        OsStr::new("queue-write"),
        OsStr::new("-q"),
        queue.as_os_str(),
    ]);
    let out = run_with_input(c, job);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "queue-write: {err}");
        assert!(
            err.lines().count() == 1 && err.contains("nothing was stored"),
            "queue-write refused the job without saying nothing was stored: {err}"
        );
        assert_eq!(listing(queue), before, "queue-write refused but left files");
        return place(queue, job);
    }
    let mut after = listing(queue);
    after.retain(|n| !before.contains(n));
    assert_eq!(after.len(), 1, "queue-write made {after:?}");
    after.remove(0)
}

/// Write `job` straight into `queue/jobs/` under a fresh job name (no
/// `queue-write`, no checks); the name.
pub fn place(queue: &Path, job: &[u8]) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let name = format!(
        "fspl-00000000-0000-4000-8000-{:012x}.fspl",
        (u64::from(std::process::id()) << 20) | NEXT.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::write(queue.join("jobs").join(&name), job).unwrap();
    name
}

/// [`wait_for`] within [`SOON`].
#[track_caller]
pub fn wait_soon(what: &str, f: impl FnMut() -> bool) {
    wait_for(what, SOON, f)
}

/// An executable shell script in the sandbox.
pub fn script(sb: &Sandbox, name: &str, body: &str) -> PathBuf {
    fspl_testkit::procs::script(sb.dir.path(), name, body)
}

/// `fspl prepare --seq SEQ -i - [extra] | fspl queue-write -q QUEUE`.
pub fn send(queue: &Path, seq: u64, payload: &str, extra: &[&str]) {
    let mut prep = ours(["prepare", "--seq", &seq.to_string(), "-i", "-"]);
    prep.args(extra);
    let job = ok(run_with_input(prep, payload.as_bytes()));
    ok(run_with_input(
        ours([
            OsStr::new("queue-write"),
            OsStr::new("-q"),
            queue.as_os_str(),
        ]),
        &job,
    ));
}

/// `fspl prepare --seq SEQ -i FILE EXTRA...` with `payload` in FILE
/// (`payload-SEQ-LEN` in the sandbox); the job.
pub fn prepare(sb: &Sandbox, seq: u64, payload: &[u8], extra: &[&OsStr]) -> Vec<u8> {
    let input = sb.path(format!("payload-{seq}-{}", payload.len()));
    std::fs::write(&input, payload).unwrap();
    let mut c = ours([
        OsStr::new("prepare"),
        OsStr::new("--seq"),
        OsStr::new(&seq.to_string()),
        OsStr::new("-i"),
        input.as_os_str(),
    ]);
    c.args(extra);
    ok(run(c))
}

/// A signing key and a trust file that lists it.
pub struct Keys {
    pub secret: PathBuf,
    pub trust: PathBuf,
}

/// `fspl keygen` a key "sender" in the sandbox and a trust file for it.
pub fn keys(sb: &Sandbox) -> Keys {
    let secret = sb.path("sender.key");
    ok(run(ours([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        secret.as_os_str(),
        OsStr::new("-C"),
        OsStr::new("sender"),
    ])));
    let public = std::fs::read_to_string(sb.path("sender.key.pub")).unwrap();
    let trust = sb.path("trust.toml");
    std::fs::write(
        &trust,
        format!("[[sender]]\nname = \"sender\"\nkey = {:?}\n", public.trim()),
    )
    .unwrap();
    Keys { secret, trust }
}

/// A daemon config for the sandbox: the socket at `d.sock` in it, events
/// only, `extra` lines in `[daemon]`; then the jobs.
pub fn config(sb: &Sandbox, extra: &str, jobs: &[String]) -> String {
    sb.config(extra, jobs)
}

/// `fspl daemon -c CONFIG --log-format logfmt`.
pub fn daemon_command(config: &Path) -> Command {
    fspl_testkit::daemon::command(&fspl_bin(), config, "logfmt")
}

/// Starting our binary as a daemon.
pub trait StartDaemon: Sized {
    /// Write `text` to sb/daemon.toml and start `fspl daemon` on it (the
    /// socket at sb/d.sock, stderr to a fresh sb/daemon-N.log); returns
    /// once the control socket answers.
    fn start(sb: &Sandbox, text: &str, format: &str) -> Self {
        Self::start_with(sb, text, format, |_| {})
    }

    /// The same, with `tweak` applied to the command first.
    fn start_with(sb: &Sandbox, text: &str, format: &str, tweak: impl FnOnce(&mut Command))
    -> Self;
}

impl StartDaemon for Daemon {
    fn start_with(
        sb: &Sandbox,
        text: &str,
        format: &str,
        tweak: impl FnOnce(&mut Command),
    ) -> Daemon {
        let config = sb.path("daemon.toml");
        std::fs::write(&config, text).unwrap();
        let mut n = 0;
        let log = loop {
            let l = sb.path(format!("daemon-{n}.log"));
            if !l.exists() {
                break l;
            }
            n += 1;
        };
        let mut cmd = fspl_testkit::daemon::command(&fspl_bin(), &config, format);
        tweak(&mut cmd);
        let mut d = Daemon::spawn(&fspl_bin(), cmd, &sb.socket(), &log);
        d.config = config;
        d
    }
}

/// Remove FSPL_* and FAILPOINTS from `cmd`'s environment.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FSPL_") || k == "FAILPOINTS" {
            cmd.env_remove(k);
        }
    }
}

/// SHA-256 (hex) via the system's sha256sum, to avoid a crypto dependency
/// in tests.
pub fn sha256_hex(data: &[u8]) -> String {
    let out = run_with_input(Command::new("sha256sum"), data);
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

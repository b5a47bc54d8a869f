//! Fixtures shared by fspl's tests (never published, never a dependency of
//! a shipped crate): temporary directories, queues and jobs, polling with a
//! deadline, and real servers started by the tests on 127.0.0.1 (one module
//! per server: [`sshd`], ...). A server that is missing is installed, never
//! skipped.

pub mod daemon;
pub mod jobs;
pub mod moto;
pub mod nats;
pub mod procs;
pub mod prometheus;
pub mod remaphore;
pub mod s3;
pub mod sshd;
pub mod tree;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fspl_format::{CmdType, Ctime, JobHeader};
use fspl_queue::Queue;

/// A generous upper bound for anything that should happen "soon": only
/// ever a deadline, never a measurement.
pub const SOON: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo target directory tests may cache builds in (servers built
/// once, the reference binary).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A private temporary directory (mode 0700 whatever the umask: daemons
/// refuse a control socket in a directory others may write to).
pub fn private_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .unwrap()
}

/// A private temporary directory for a test's queues, files, config and
/// control socket. How a queue is made in it depends on the tests (with
/// the binary, or through the library): each test crate adds a `queue`
/// method by a trait of its own.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Sandbox {
        Sandbox::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: private_tempdir("fspl-test-"),
        }
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The control socket every daemon config of this sandbox uses.
    pub fn socket(&self) -> PathBuf {
        self.path("d.sock")
    }

    /// A daemon config text: `[daemon]` with [`Sandbox::socket`], events
    /// only, `daemon_extra` lines; then the job tables (see
    /// [`daemon::config_text`]).
    pub fn config(&self, daemon_extra: &str, jobs: &[String]) -> String {
        daemon::config_text(Some(&self.socket()), daemon_extra, jobs)
    }

    /// Job files (names) currently in a queue's jobs/ directory.
    pub fn job_files(&self, queue: &Path) -> Vec<String> {
        job_names(&queue.join("jobs"))
    }
}

/// Poll `f` every 20 ms until it holds; panic after `timeout` naming `what`.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TOML basic string (paths in tests are ASCII).
pub fn q(s: impl AsRef<std::ffi::OsStr>) -> String {
    format!("{:?}", s.as_ref().to_str().unwrap())
}

/// Lines of a file; none when it does not exist yet.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The queue's nextseq, read from the file (no lock taken: a daemon may
/// hold the queue lock).
pub fn nextseq(queue: &Path) -> u64 {
    std::fs::read_to_string(queue.join("nextseq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Names of the job files (`fspl-*.fspl`) in `dir` (a queue's `jobs/`, an
/// outbox, a `dir:` destination), sorted.
pub fn job_names(dir: &Path) -> Vec<String> {
    let mut v = file_names(dir);
    v.retain(|n| n.starts_with("fspl-") && n.ends_with(".fspl"));
    v
}

/// Names of everything in `dir` (temporaries included), sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh queue made through the library (nextseq 1).
pub fn init_queue(path: &Path) -> PathBuf {
    Queue::init(path, false).unwrap();
    path.to_path_buf()
}

/// A Command job with this seq and payload, built through the library.
pub fn job(seq: u64, payload: &[u8]) -> Vec<u8> {
    let h = JobHeader {
        seq,
        ctime: Ctime::now(),
        cmd_type: CmdType::Command(Default::default()),
    };
    let mut b = h.encode().unwrap();
    b.extend_from_slice(payload);
    b
}

/// Store a job the way `queue-write` does (temporary name, then rename).
pub fn write_job(queue: &Path, seq: u64, payload: &[u8]) {
    Queue::new(queue)
        .write_job(&mut &job(seq, payload)[..])
        .unwrap();
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

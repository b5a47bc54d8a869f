//! A real OpenSSH server for the transport tests: started by the test on
//! 127.0.0.1 on a free port, with its own host key, its own sshd_config
//! and authorized_keys in the test's directory, and a client config that
//! trusts exactly that host key. Debian's openssh-server is installed
//! when /usr/sbin/sshd is missing (never skipped).

use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// Install openssh-server (and the client) once, if sshd is missing.
pub fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let lock = File::create(std::env::temp_dir().join("fspl-test-sshd-install.lock")).unwrap();
        lock.lock().unwrap();
        if Path::new(SSHD).exists() && which("ssh") && which("ssh-keygen") {
            return;
        }
        crate::procs::apt_install(
            &["openssh-server", "openssh-client"],
            "installing openssh-server failed",
        );
        assert!(Path::new(SSHD).exists(), "{SSHD} missing after installing");
    });
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// Make an ed25519 key pair without a passphrase; returns the private key.
pub fn keygen(path: &Path, comment: &str) -> PathBuf {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
    path.to_path_buf()
}

pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    pub ssh_config: PathBuf,
    pub authorized_keys: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Sshd {
    /// Start a server whose files live in `dir` (created). The
    /// authorized_keys file starts empty: see [`Sshd::authorize`].
    pub fn start(dir: &Path) -> Sshd {
        ensure_installed();
        if is_root() {
            // sshd's privilege separation directory.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        std::fs::create_dir_all(dir).unwrap();
        let host_key = keygen(&dir.join("host_ed25519"), "fspl-test-host");
        let authorized_keys = dir.join("authorized_keys");
        File::create(&authorized_keys).unwrap();
        let log = dir.join("sshd.log");
        for _attempt in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host}\n\
                     AuthorizedKeysFile {ak}\n\
                     PidFile {pid}\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     MaxStartups 100:30:200\n\
                     MaxSessions 100\n\
                     LogLevel ERROR\n",
                    host = host_key.display(),
                    ak = authorized_keys.display(),
                    pid = dir.join("sshd.pid").display(),
                ),
            )
            .unwrap();
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !up {
                let _ = child.kill();
                let _ = child.wait();
                // Most likely someone took the port meanwhile: another one.
                continue;
            }
            let known_hosts = dir.join("known_hosts");
            let pubkey = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
            std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {pubkey}")).unwrap();
            let ssh_config = dir.join("ssh_config");
            std::fs::write(
                &ssh_config,
                format!(
                    "Host *\n\
                     \x20 HostName 127.0.0.1\n\
                     \x20 Port {port}\n\
                     \x20 UserKnownHostsFile {kh}\n\
                     \x20 GlobalKnownHostsFile /dev/null\n\
                     \x20 StrictHostKeyChecking yes\n\
                     \x20 BatchMode yes\n\
                     \x20 IdentitiesOnly yes\n\
                     \x20 IdentityAgent none\n\
                     \x20 LogLevel ERROR\n\
                     \x20 ConnectTimeout 10\n",
                    kh = known_hosts.display()
                ),
            )
            .unwrap();
            return Sshd {
                dir: dir.to_path_buf(),
                port,
                ssh_config,
                authorized_keys,
                log,
                child,
            };
        }
        panic!(
            "sshd did not start; its log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// A fresh client key whose authorized_keys line runs `command` with
    /// `options` (e.g. "restrict"). Returns the private key's path.
    pub fn authorize(&self, name: &str, options: &str, command: &str) -> PathBuf {
        let key = keygen(&self.dir.join(format!("client_{name}")), name);
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let mut line = String::from(options);
        if !command.is_empty() {
            if !line.is_empty() {
                line.push(',');
            }
            line.push_str(&format!("command=\"{}\"", command.replace('"', "\\\"")));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .unwrap();
        writeln!(f, "{line} {}", public.trim()).unwrap();
        key
    }

    /// The ssh command (as words) that logs in with `key`: for
    /// `FSPL_SSH` (joined) or `SshOptions::command`.
    pub fn ssh_words(&self, key: &Path) -> Vec<String> {
        vec![
            "ssh".into(),
            "-F".into(),
            self.ssh_config.display().to_string(),
            "-i".into(),
            key.display().to_string(),
        ]
    }

    /// The same, as one `FSPL_SSH` value.
    pub fn fspl_ssh(&self, key: &Path) -> String {
        shlex::try_join(self.ssh_words(key).iter().map(String::as_str)).unwrap()
    }

    /// Run `ssh HOST ARGS...` with `key`; stdin closed.
    pub fn ssh(&self, key: &Path) -> Command {
        let w = self.ssh_words(key);
        let mut c = Command::new(&w[0]);
        c.args(&w[1..]).arg("-T").arg("fspl-test-host");
        c
    }

    /// The listening sshd's pid (each connection is served by a child of
    /// it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What sshd wrote to its log (errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child (the listener; sessions are its
        // children and end with their connections).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// Processes as /proc shows them: pid, parent pid and argv.
pub fn processes() -> Vec<(i32, i32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                // pid (comm) state ppid ...; comm may contain spaces.
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0);
        out.push((pid, ppid, argv));
    }
    out
}

//! The original remaphore (upstream d71c197, CC0), built from
//! `shared/remaphore/reference` with Debian's Go toolchain (its build.sh
//! installs `golang-go` and the NATS Go client package on first use), to
//! run as a live peer in the interoperability tests; and remaphore
//! configuration files for a set of nodes.
//!
//! The build happens once, under a file lock, into
//! `nats::cache_dir()/remaphore-d71c197` (`$FSPL_REMAPHORE_REFERENCE`
//! names a directory holding `remaphore` and `mkcreds` to use instead).
//! The sources are looked for in `$FSPL_REMAPHORE_SRC`, then
//! `<repository>/../shared/remaphore/reference`, then
//! `/work/shared/remaphore/reference`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the reference sources are.
pub fn source_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FSPL_REMAPHORE_SRC") {
        return PathBuf::from(p);
    }
    let beside = crate::root().join("../shared/remaphore/reference");
    if beside.join("build.sh").exists() {
        return beside;
    }
    PathBuf::from("/work/shared/remaphore/reference")
}

/// The directory holding the built `remaphore` and `mkcreds`.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build).clone()
}

/// The original remaphore.
pub fn remaphore_bin() -> PathBuf {
    bin_dir().join("remaphore")
}

fn build() -> PathBuf {
    if let Some(p) = std::env::var_os("FSPL_REMAPHORE_REFERENCE") {
        return PathBuf::from(p);
    }
    let cache = crate::nats::cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let dir = cache.join("remaphore-d71c197");
    let lock = File::create(cache.join("remaphore-d71c197.lock")).unwrap();
    lock.lock().unwrap();
    if dir.join("remaphore").exists() && dir.join("mkcreds").exists() {
        return dir;
    }
    let src = source_dir();
    assert!(
        src.join("build.sh").exists(),
        "the reference remaphore sources are not at {} (set FSPL_REMAPHORE_SRC)",
        src.display()
    );
    let tmp = cache.join(format!("remaphore-d71c197.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("bash")
        .arg(src.join("build.sh"))
        .arg(&tmp)
        .output()
        .expect("run the reference remaphore's build.sh");
    assert!(
        out.status.success(),
        "building the reference remaphore failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    dir
}

/// A NATS credentials file the original accepts (it insists on one; a
/// server without authorization ignores it), made by the reference's
/// `mkcreds`.
pub fn write_dummy_creds(path: &Path) -> PathBuf {
    let out = Command::new(bin_dir().join("mkcreds")).output().unwrap();
    assert!(out.status.success());
    crate::nats::write_private(path, &String::from_utf8(out.stdout).unwrap());
    path.to_path_buf()
}

/// A key pair made by the original's `-C`: (base58 public, base58 secret).
pub fn keypair() -> (String, String) {
    let out = Command::new(remaphore_bin()).arg("-C").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().skip_while(|l| !l.contains("[ Identities ]"));
    lines.next();
    let line = lines.next().expect("an identity line");
    let mut f = line.split_whitespace();
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

/// One node: its destination and key pair.
#[derive(Clone, Debug)]
pub struct Node {
    pub destination: String,
    pub public: String,
    pub secret: String,
}

impl Node {
    pub fn new(destination: &str) -> Node {
        let (public, secret) = keypair();
        Node {
            destination: destination.to_string(),
            public,
            secret,
        }
    }

    /// This node's config: `server`, `credentials`, its identity (allowed
    /// every verb), `peers` as (node, verbs), then `extra` general lines.
    pub fn write_config(
        &self,
        path: &Path,
        server: &str,
        creds: &Path,
        peers: &[(&Node, &str)],
        extra: &str,
    ) -> PathBuf {
        let mut s = format!(
            "server: {server}\ncredentials: {}\nsubject: remaphore\ndestination: {}\nallow_skew: 5s\n{extra}\n\n[ Identities ]\n{} {} [*]\n\n[ Peers ]\n",
            creds.display(),
            self.destination,
            self.public,
            self.secret
        );
        for (p, verbs) in peers {
            s.push_str(&format!("{} {} {verbs}\n", p.destination, p.public));
        }
        std::fs::write(path, s).unwrap();
        path.to_path_buf()
    }
}

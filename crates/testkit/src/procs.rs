//! Processes and things tests leave behind: signals, probing a pid,
//! executable scripts, and guards that clean up whatever happens.

use std::path::{Path, PathBuf};

/// Send `sig` to `pid` (a child of the test); it must be delivered.
#[track_caller]
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Whether a pid is gone (reaped: a zombie still answers signal 0).
pub fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Whether the tests run as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An executable shell script `dir/name` (`#!/bin/sh` then `body`).
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Kills, when dropped, the processes whose pids the test's commands wrote
/// into these files (background children left behind), whatever happens.
pub struct Leftovers(pub Vec<PathBuf>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                // SAFETY: a background process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Removes these paths (files or trees: things made outside the sandbox)
/// when dropped, or at [`Cleanup::clean`].
pub struct Cleanup(pub Vec<PathBuf>);

impl Cleanup {
    pub fn clean(&self) {
        for p in &self.0 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = std::fs::remove_dir_all(p);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.clean();
    }
}

/// A live process's peak resident memory in KiB (`VmHWM` of
/// /proc/PID/status), or None when it is gone. After an exec this is the
/// new program's own peak (wait4's ru_maxrss of a posix_spawn'd child is
/// not: it starts from the parent's).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Install Debian packages with apt-get (through sudo unless root),
/// updating the package lists once if the first try fails; panics with
/// `what` when they cannot be installed.
pub fn apt_install(pkgs: &[&str], what: &str) {
    let apt = |args: &[&str]| {
        let mut c = if is_root() {
            std::process::Command::new("apt-get")
        } else {
            let mut c = std::process::Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install: Vec<&str> = ["install", "-y", "-q"]
        .iter()
        .chain(pkgs)
        .copied()
        .collect();
    if !apt(&install) {
        assert!(apt(&["update", "-q"]), "apt-get update failed");
        assert!(apt(&install), "{what}");
    }
}

//! Where the control socket lives, and whom to trust on it. Shared by the
//! daemon (which creates the socket) and `fspl status` (which asks it).
//!
//! The default is `daemon.sock` in a directory of our own:
//! `$XDG_RUNTIME_DIR/fspl/`, else `/run/fspl/` for root, else
//! `/tmp/fspl-UID/`. Another user must never be able to put a socket where
//! we look for ours (the old `/tmp/fspl-UID.sock` could be created first by
//! anyone), so:
//!
//! - the daemon creates the socket's directory (mode 0700) when it is
//!   missing and refuses a directory that is a symlink, is not owned by it
//!   or root, or is writable by group or others; the default directory must
//!   moreover be its own with mode 0700 (as tmux and ssh-agent do);
//! - `fspl status` refuses a socket whose directory fails the same checks
//!   (a directory of any owner will do for root), and believes only a
//!   daemon running as the same user or root (`SO_PEERCRED`); root also
//!   believes one running as the directory's owner (the systemd unit's
//!   daemon runs as user `fspl` in `/run/fspl`, owned by it).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The socket's file name in the default directory.
pub const SOCKET_NAME: &str = "daemon.sock";

/// Our effective uid.
pub fn our_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The default directory: `$XDG_RUNTIME_DIR/fspl`, else `/run/fspl` for
/// root, else `/tmp/fspl-UID`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("fspl");
    }
    match our_uid() {
        0 => PathBuf::from("/run/fspl"),
        uid => PathBuf::from(format!("/tmp/fspl-{uid}")),
    }
}

/// The default control socket: `daemon.sock` in [`default_dir`].
pub fn default_socket() -> PathBuf {
    default_dir().join(SOCKET_NAME)
}

/// Every place a default socket may be, for whatever environment the
/// daemon was started in: `$XDG_RUNTIME_DIR/fspl/` (when set),
/// `/run/fspl/` (root's, and the systemd unit's), `/tmp/fspl-UID/`.
pub fn usual_sockets() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(d).join("fspl").join(SOCKET_NAME));
    }
    v.push(PathBuf::from("/run/fspl").join(SOCKET_NAME));
    v.push(PathBuf::from(format!("/tmp/fspl-{}", our_uid())).join(SOCKET_NAME));
    v
}

/// What is wrong with a control socket's directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirProblem {
    #[error("does not exist")]
    Missing,
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("is a symbolic link (it must be a real directory)")]
    Symlink,
    #[error("is not a directory")]
    NotADirectory,
    #[error("is owned by uid {owner}, not by you (uid {ours}) or root")]
    Owner { owner: u32, ours: u32 },
    #[error(
        "is writable by {} (mode {mode:04o}), so another user could put a socket there",
        if mode & 0o002 != 0 { "others" } else { "its group" }
    )]
    Writable { mode: u32 },
    #[error("has mode {mode:04o}; the default directory must be private (mode 0700)")]
    NotPrivate { mode: u32 },
}

/// The socket's directory (`.` for a bare file name).
pub fn dir_of(socket: &Path) -> PathBuf {
    match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The checks every control socket directory must pass, for the daemon and
/// for `fspl status`: a real directory (not a symlink), owned by `ours` or
/// root (by anyone when `any_owner`), not writable by group or others.
/// Returns the directory's owner.
pub fn check_dir(dir: &Path, ours: u32, any_owner: bool) -> Result<u32, DirProblem> {
    let m = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DirProblem::Missing),
        Err(e) => return Err(DirProblem::Unreadable(e.to_string())),
    };
    if m.file_type().is_symlink() {
        return Err(DirProblem::Symlink);
    }
    if !m.is_dir() {
        return Err(DirProblem::NotADirectory);
    }
    let owner = m.uid();
    if !any_owner && owner != ours && owner != 0 {
        return Err(DirProblem::Owner { owner, ours });
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirProblem::Writable { mode });
    }
    Ok(owner)
}

/// The stricter check of the default directory (the daemon's alone):
/// owned by us, mode 0700.
pub fn check_private_dir(dir: &Path, ours: u32) -> Result<(), DirProblem> {
    check_dir(dir, ours, false)?;
    let m = std::fs::symlink_metadata(dir).map_err(|e| DirProblem::Unreadable(e.to_string()))?;
    if m.uid() != ours {
        return Err(DirProblem::Owner {
            owner: m.uid(),
            ours,
        });
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DirProblem::NotPrivate { mode });
    }
    Ok(())
}

/// For the daemon: create the directory of `socket` (and its missing
/// parents) with mode 0700 when it is missing. Returns the directory.
pub fn create_dir(socket: &Path) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let dir = dir_of(socket);
    if std::fs::symlink_metadata(&dir).is_err() {
        let r = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        if let Err(e) = r {
            return Err((dir, e));
        }
    }
    Ok(dir)
}

/// Whether `fspl status` believes the process answering on a socket whose
/// directory is owned by `dir_owner`: it runs as us or root; for root, also
/// as the directory's owner (only that user and root can create a socket
/// in a directory that passed [`check_dir`]).
pub fn trusted_peer(peer: u32, ours: u32, dir_owner: u32) -> bool {
    peer == ours || peer == 0 || (ours == 0 && peer == dir_owner)
}

/// The effective uid of the process that listens on the other end of a
/// connected Unix socket (`SO_PEERCRED`).
pub fn peer_uid(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the
    // descriptor is borrowed for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_ourselves_and_root_are_trusted_and_root_also_trusts_the_directory_owner() {
        // A user trusts itself and root, never another user, whoever owns
        // the directory.
        assert!(trusted_peer(1000, 1000, 1000));
        assert!(trusted_peer(0, 1000, 1000));
        assert!(!trusted_peer(1001, 1000, 1000));
        assert!(!trusted_peer(1001, 1000, 1001));
        assert!(!trusted_peer(1001, 1000, 0));
        // Root trusts itself and the owner of the directory (the daemon's
        // user in /run/fspl), nobody else.
        assert!(trusted_peer(0, 0, 0));
        assert!(trusted_peer(999, 0, 999));
        assert!(!trusted_peer(999, 0, 0));
        assert!(!trusted_peer(12345, 0, 999));
    }

    #[test]
    fn default_socket_is_daemon_sock_in_a_directory_of_its_own() {
        let d = default_socket();
        assert_eq!(d.file_name().unwrap(), SOCKET_NAME);
        let dir = d.parent().unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert!(
            name == "fspl" || name == format!("fspl-{}", our_uid()),
            "{}",
            d.display()
        );
    }

    #[test]
    fn directory_checks_name_what_is_wrong() {
        let t = tempfile::tempdir().unwrap();
        let ours = our_uid();
        let d = t.path().join("d");
        assert_eq!(check_dir(&d, ours, false), Err(DirProblem::Missing));
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_dir(&d, ours, false), Ok(ours));
        assert_eq!(check_private_dir(&d, ours), Ok(()));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(check_dir(&d, ours, false), Ok(ours));
        assert_eq!(
            check_private_dir(&d, ours),
            Err(DirProblem::NotPrivate { mode: 0o750 })
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = check_dir(&d, ours, true).unwrap_err();
        assert_eq!(e, DirProblem::Writable { mode: 0o1777 });
        assert!(e.to_string().contains("writable by others"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = check_dir(&d, ours, true).unwrap_err();
        assert!(e.to_string().contains("writable by its group"), "{e}");
        let l = t.path().join("l");
        std::os::unix::fs::symlink(&d, &l).unwrap();
        assert_eq!(check_dir(&l, ours, true), Err(DirProblem::Symlink));
        let f = t.path().join("f");
        std::fs::write(&f, "").unwrap();
        assert_eq!(check_dir(&f, ours, true), Err(DirProblem::NotADirectory));
        // Somebody else's directory (another uid than ours and root).
        assert_eq!(
            check_dir(t.path(), ours.wrapping_add(1).max(1), false).map(|_| ()),
            if ours == 0 {
                Ok(())
            } else {
                Err(DirProblem::Owner {
                    owner: ours,
                    ours: ours.wrapping_add(1).max(1),
                })
            }
        );
    }

    #[test]
    fn peer_uid_of_a_socket_pair_is_ours() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(peer_uid(a.as_fd()).unwrap(), our_uid());
    }
}

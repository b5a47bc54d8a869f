//! Where a command is, looked up as `execvp` would with our own PATH: for
//! `daemon --check` (the daemon starts commands with `execvp` semantics,
//! from its own working directory, with its own PATH), and for remaphore
//! scripts, which run with a cleared environment but are found through
//! ours (as Go's `exec.Command` finds them for remaphore).
//!
//! - a name with a slash is a path; the configuration allows only absolute
//!   ones (a relative one would depend on the directory the daemon was
//!   started in);
//! - a bare name is searched in the directories of PATH, in order; the
//!   first executable regular file found is run. Without PATH, the C
//!   library's default, `/bin:/usr/bin`, is searched.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The search path `execvp` uses when PATH is not set (glibc's `_CS_PATH`).
pub const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Whether `path` is a file we may execute (`access(X_OK)`, as the
/// daemon's user).
fn executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Why `path` cannot be run, or None when it can.
fn unrunnable(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("{} does not exist", path.display()))
        }
        Err(e) => Some(format!("{}: {e}", path.display())),
        Ok(m) if m.is_dir() => Some(format!("{} is a directory", path.display())),
        Ok(m) if !m.is_file() => Some(format!("{} is not a regular file", path.display())),
        Ok(m) if !executable(path) => Some(format!(
            "{} is not executable (mode {:04o})",
            path.display(),
            m.permissions().mode() & 0o7777
        )),
        Ok(_) => None,
    }
}

/// The file `program` runs as, searching `path_var` (the value of PATH;
/// None: unset) for a bare name; or why it would not run.
pub fn find(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, String> {
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return match unrunnable(&p) {
            None => Ok(p),
            Some(why) => Err(why),
        };
    }
    let search = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    let mut not_executable = None;
    for dir in search.as_bytes().split(|&b| b == b':') {
        // An empty element is the working directory, as for execvp.
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(program);
        match unrunnable(&candidate) {
            None => return Ok(candidate),
            Some(why) if candidate.exists() && not_executable.is_none() => {
                not_executable = Some(why)
            }
            Some(_) => {}
        }
    }
    let shown = String::from_utf8_lossy(search.as_bytes()).into_owned();
    let unset = if path_var.is_none() {
        " (PATH is not set: the default)"
    } else {
        ""
    };
    Err(match not_executable {
        Some(why) => format!(
            "{:?} is not found in PATH ({shown}){unset} as an executable file: {why}",
            program.to_string_lossy()
        ),
        None => format!(
            "{:?} is not found in PATH ({shown}){unset}",
            program.to_string_lossy()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let write = |p: &Path, mode: u32| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&a.join("tool"), 0o644);
        write(&b.join("tool"), 0o755);
        let path = format!("{}:{}", a.display(), b.display());
        // The first executable one, past one that is not.
        assert_eq!(
            find(OsStr::new("tool"), Some(OsStr::new(&path))),
            Ok(b.join("tool"))
        );
        let only_a = a.display().to_string();
        let e = find(OsStr::new("tool"), Some(OsStr::new(&only_a))).unwrap_err();
        assert!(
            e.contains("not found in PATH") && e.contains("not executable"),
            "{e}"
        );
        let e = find(OsStr::new("nope"), Some(OsStr::new(&path))).unwrap_err();
        assert_eq!(e, format!("\"nope\" is not found in PATH ({path})"));
        let e = find(OsStr::new("nope"), None).unwrap_err();
        assert!(e.contains("(/bin:/usr/bin) (PATH is not set"), "{e}");
        assert!(find(OsStr::new("sh"), None).is_ok());
        // Paths.
        assert_eq!(find(b.join("tool").as_os_str(), None), Ok(b.join("tool")));
        let e = find(a.join("tool").as_os_str(), None).unwrap_err();
        assert!(e.ends_with("is not executable (mode 0644)"), "{e}");
        let e = find(a.as_os_str(), None).unwrap_err();
        assert!(e.ends_with("is a directory"), "{e}");
        let e = find(a.join("missing").as_os_str(), None).unwrap_err();
        assert!(e.ends_with("does not exist"), "{e}");
    }
}

//! Fault injection at every I/O step, for the reliability tests. Compiled
//! only with the `failpoints` feature; otherwise `hit` is an inline no-op.
//!
//! Configure with the FAILPOINTS environment variable (the `fail` crate's
//! syntax): `FAILPOINTS='write:before-rename=return(abort)'` aborts the
//! process at that point (as SIGKILL would), `return(eio)` / `return(enospc)`
//! make the step fail with that error, `sleep(100)` delays it.
//! `FAILPOINTS='a=return(abort);b=1*return(eio)'` sets several.
//!
//! Every name is listed in `NAMES`, so a test can visit them all.

use std::io;

/// Every failpoint, in the order the steps happen.
pub const NAMES: &[&str] = &[
    "prepare:after-lock",
    "prepare:after-header",
    "seqfile:before-write",
    "seqfile:before-sync",
    "seqfile:after-sync",
    "prepare:after-commit",
    "prepare:mid-payload",
    "write:after-create",
    "write:mid-copy",
    "write:before-fsync",
    "write:before-rename",
    "write:before-dirsync",
    "write:after-dirsync",
    "replace:after-write",
    "replace:before-rename",
    "replace:before-dirsync",
    "nextseq:before-write",
    "nextseq:before-sync",
    "nextseq:after-sync",
    "process:after-scan",
    "process:before-run",
    "process:after-run",
    "process:after-advance",
    "process:after-delete",
    "reject:before-move",
    "reject:after-move",
    "batch:after-add",
    "batch:before-flush",
    "batch:before-rename",
    "batch:mid-rename",
    "batch:before-dirsync",
    "batch:after-dirsync",
    "push:after-ack",
    "push:mid-remove",
    "push:before-remove-sync",
    "push:after-remove-sync",
    "pull:after-commit",
    "pull:mid-remove",
    "pull:before-remove-sync",
    "pull:after-remove-sync",
];

/// Reached a step: act as configured (abort, fail, delay) or do nothing.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> io::Result<()> {
    debug_assert!(NAMES.contains(&name), "unlisted failpoint {name}");
    match fail::eval(name, |arg| arg) {
        None | Some(None) => Ok(()),
        Some(Some(action)) => match action.as_str() {
            "abort" => std::process::abort(),
            "eio" => Err(io::Error::from_raw_os_error(libc::EIO)),
            "enospc" => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            other => Err(io::Error::other(format!("failpoint {name}: {other}"))),
        },
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) -> io::Result<()> {
    Ok(())
}

/// Keep the failpoint registry alive for the process (reads FAILPOINTS).
#[cfg(feature = "failpoints")]
pub fn setup() -> Box<dyn std::any::Any> {
    Box::new(fail::FailScenario::setup())
}

#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Box<dyn std::any::Any> {
    Box::new(())
}

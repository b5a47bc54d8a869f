//! Builds and packaging (issue 18): what a lean build (`cargo build
//! --no-default-features`) leaves out says so cleanly. The Debian package
//! itself is checked by scripts/test-package (it needs a release build).

use crate::helper::*;

/// A build without the daemon has no `daemon` or `status` command: usage
/// errors (exit 2) naming the command, never a panic; its `--version`
/// says which features it has.
#[cfg(not(feature = "daemon"))]
#[test]
fn lean_build_refuses_daemon_commands_as_unknown_and_says_so_in_its_version() {
    for cmd in ["daemon", "status"] {
        let out = run(ours([cmd]));
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("unrecognized subcommand '{cmd}'")),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let v = String::from_utf8(ok(run(ours(["--version"])))).unwrap();
    assert!(!v.contains("daemon"), "{v}");
}

/// The default build has them all.
#[cfg(all(feature = "daemon", feature = "s3", feature = "nats"))]
#[test]
fn default_build_names_its_features_in_its_version() {
    let v = String::from_utf8(ok(run(ours(["--version"])))).unwrap();
    assert!(v.contains("(features: daemon, s3, nats"), "{v}");
    let out = run(ours(["daemon", "--help"]));
    assert_eq!(out.status.code(), Some(0));
}

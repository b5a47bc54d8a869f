//! Builds and packaging (issue 18): a lean build (`cargo build
//! --no-default-features`: queue, codecs, trust and the daemon) names what
//! it leaves out cleanly. The Debian package
//! itself is checked by scripts/test-package (it needs a release build).

use crate::helper::*;

/// A build without S3 and NATS has no `s3-upload` or `nats` command: usage
/// errors (exit 2) naming the command, never a panic; it has the daemon;
/// its `--version` says which features it has.
#[cfg(not(any(feature = "s3", feature = "nats")))]
#[test]
fn lean_build_refuses_s3_and_nats_commands_as_unknown_and_says_so_in_its_version() {
    for cmd in ["s3-upload", "nats"] {
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
    assert!(v.contains("(features: daemon)"), "{v}");
    let out = run(ours(["daemon", "--help"]));
    assert_eq!(out.status.code(), Some(0), "the lean build has the daemon");
}

/// The default build has them all.
#[cfg(all(feature = "s3", feature = "nats"))]
#[test]
fn default_build_names_its_features_in_its_version() {
    let v = String::from_utf8(ok(run(ours(["--version"])))).unwrap();
    assert!(v.contains("(features: daemon, s3, nats"), "{v}");
    let out = run(ours(["daemon", "--help"]));
    assert_eq!(out.status.code(), Some(0));
}

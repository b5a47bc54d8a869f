//! `fspl` links no async SDK and hands the commands that need one to
//! `fspl-full` by exec (docs/compatibility.md, "Two binaries").

use std::process::Command;

use crate::helper::*;

/// Regression (lean_start_up_paid_for_the_async_sdks): with tokio,
/// object_store, async-nats and rustls linked into `fspl`, every
/// `prepare` and `queue-write` paid their relocations (twice the page
/// faults of the reference). No function of theirs may be in `fspl`; they
/// must be in `fspl-full` (binutils' `nm`, which the Rust toolchain's
/// linker comes with, lists the symbols).
#[test]
fn lean_start_up_paid_for_the_async_sdks() {
    let symbols = |bin: std::path::PathBuf| {
        let mut c = Command::new("nm");
        c.arg("--defined-only").arg(&bin);
        let out = run(c);
        assert!(out.status.success(), "nm {}", bin.display());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let lean = symbols(fspl_bin());
    let full = symbols(fspl_bin().with_file_name("fspl-full"));
    // Mangled names carry the crate name with its length.
    // fspl-full has tokio in every build (the daemon), the others with
    // their features.
    let sdks = [
        ("5tokio", true),
        ("12object_store", cfg!(feature = "s3")),
        ("10async_nats", cfg!(feature = "nats")),
        ("6rustls", cfg!(any(feature = "s3", feature = "nats"))),
    ];
    for (sdk, in_full) in sdks {
        let n = |text: &str| text.lines().filter(|l| l.contains(sdk)).count();
        assert_eq!(n(&lean), 0, "fspl links {sdk}");
        assert_eq!(n(&full) > 0, in_full, "fspl-full and {sdk}");
    }
}

/// The handed-over command is the same process: `fspl daemon` runs as
/// fspl-full under the pid `fspl` started with (systemd's MAINPID).
#[test]
fn the_daemon_runs_as_fspl_full_in_the_same_process() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let text = config(&sb, "", &[process_job("run", &q, &["true"], "")]);
    let d = Daemon::start(&sb, &text, "logfmt");
    let exe = std::fs::read_link(format!("/proc/{}/exe", d.pid())).unwrap();
    assert_eq!(exe.file_name().unwrap(), "fspl-full", "{}", exe.display());
    let (st, _) = d.stop();
    assert!(st.success(), "{st}");
}

/// Without fspl-full next to it, `fspl` still runs everything of its own
/// and refuses the others with one line naming where it looked.
#[test]
fn a_missing_fspl_full_is_one_line_naming_the_path() {
    let sb = Sandbox::new();
    let dir = sb.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("fspl");
    std::fs::copy(fspl_bin(), &alone).unwrap();
    let q = sb.path("q");
    let mut init = Command::new(&alone);
    init.arg("queue-init").arg("-q").arg(&q);
    assert!(run(init).status.success());
    let mut handed = vec![vec!["daemon", "--check", "-c", "/nonexistent.toml"]];
    if cfg!(feature = "nats") {
        handed.push(vec!["nats", "example-config"]);
    }
    if cfg!(feature = "s3") {
        handed.push(vec![
            "push",
            "-q",
            q.to_str().unwrap(),
            "s3://bucket/prefix",
        ]);
    }
    for args in handed {
        let mut c = Command::new(&alone);
        c.args(&args);
        let out = run(c);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = one_line_error(out);
        assert!(
            e.contains(&format!(
                "{}: No such file or directory",
                dir.join("fspl-full").display()
            )),
            "{args:?}: {e}"
        );
    }
}

/// Exit statuses come through the exec unchanged: a remaphore config
/// error's, and `fspl status`'s for a daemon that is not running.
#[test]
fn exit_statuses_of_fspl_full_reach_the_caller() {
    let sb = Sandbox::new();
    if cfg!(feature = "nats") {
        let mut c = fspl();
        c.args(["nats", "send", "-c", "/nonexistent.conf", "hello"]);
        let out = run(c);
        let full = {
            let mut c = Command::new(fspl_bin().with_file_name("fspl-full"));
            c.args(["nats", "send", "-c", "/nonexistent.conf", "hello"]);
            run(c)
        };
        assert_eq!(out.status.code(), full.status.code());
        assert_ne!(out.status.code(), Some(0));
        assert_eq!(out.stderr, full.stderr, "same error line");
    }
    let mut c = fspl();
    c.arg("status").arg("--socket").arg(sb.path("none.sock"));
    let out = run(c);
    let mut c = Command::new(fspl_bin().with_file_name("fspl-full"));
    c.arg("status").arg("--socket").arg(sb.path("none.sock"));
    let full = run(c);
    assert_eq!(out.status.code(), full.status.code());
    assert_ne!(out.status.code(), Some(0));
}

/// Regression (sigterm_as_soon_as_the_control_socket_answered_killed_the_
/// daemon): the control socket was bound before the signal handlers were
/// installed, so a SIGTERM right after it answered took the default
/// action (the exec through fspl-full widened the window enough for a
/// loaded test run to hit it).
#[test]
fn sigterm_as_soon_as_the_control_socket_answered_killed_the_daemon() {
    for _ in 0..5 {
        let sb = Sandbox::new();
        let q = sb.queue("q");
        let text = config(&sb, "", &[process_job("run", &q, &["true"], "")]);
        let d = Daemon::start(&sb, &text, "logfmt");
        let (st, log) = d.stop();
        assert!(st.success(), "{st}: {log}");
    }
}

/// `remaphore` may link to either binary (docs/compatibility.md): both
/// print the same example configuration for remaphore's `-C`.
#[cfg(feature = "nats")]
#[test]
fn remaphore_links_to_either_binary_and_behave_the_same() {
    let sb = Sandbox::new();
    let mut outs = Vec::new();
    for target in ["fspl", "fspl-full"] {
        let dir = sb.path(target);
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("remaphore");
        std::os::unix::fs::symlink(fspl_bin().with_file_name(target), &link).unwrap();
        let mut c = Command::new(&link);
        c.arg("-C");
        let out = run(c);
        assert!(out.status.success(), "{target}: {out:?}");
        assert!(!out.stdout.is_empty(), "{target}: no example configuration");
        outs.push(out.stdout);
    }
    // The example has fresh keys in it: compare its shape, line by line.
    let shape = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .map(|l| match l.split_whitespace().next() {
                Some(w) if w.ends_with(':') || w.starts_with('[') => w.to_string(),
                Some(_) => "<key>".to_string(),
                None => String::new(),
            })
            .collect()
    };
    assert_eq!(shape(&outs[0]), shape(&outs[1]));
}

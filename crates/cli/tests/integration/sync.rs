//! `fspl sync` (issue 16) as real processes: two trees, A and B, whose
//! change sets cross through outbox and inbox queues carried by `fspl
//! push` (to a `dir:` destination, and over SSH to `fspl serve-stdin`),
//! one-shot rounds and daemons on each side. After both sides ran, the
//! trees are compared with a manifest of content hashes. Every timing is
//! a generous deadline, never a measurement.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helper::wait_soon as wait_for;
use crate::helper::*;

/// One side: its tree, outbox and inbox, in a sandbox.
struct Side {
    name: &'static str,
    peer: &'static str,
    dir: PathBuf,
    outbox: PathBuf,
    inbox: PathBuf,
}

impl Side {
    /// alpha and beta, each the other's peer.
    fn pair(sb: &Sandbox) -> (Side, Side) {
        (
            Side::new(sb, "alpha", "beta"),
            Side::new(sb, "beta", "alpha"),
        )
    }

    fn new(sb: &Sandbox, name: &'static str, peer: &'static str) -> Side {
        let s = Side {
            name,
            peer,
            dir: sb.path(format!("{name}/tree")),
            outbox: sb.path(format!("{name}/outbox")),
            inbox: sb.path(format!("{name}/inbox")),
        };
        fs::create_dir_all(&s.dir).unwrap();
        for qd in [&s.outbox, &s.inbox] {
            ok(run(ours([
                OsStr::new("queue-init"),
                OsStr::new("-q"),
                qd.as_os_str(),
            ])));
        }
        s
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--dir".into(),
            self.dir.display().to_string(),
            "--name".into(),
            self.name.into(),
            "--peer".into(),
            self.peer.into(),
            "--outbox".into(),
            self.outbox.display().to_string(),
            "--inbox".into(),
            self.inbox.display().to_string(),
        ]
    }

    fn cmd(&self, sub: &str, extra: &[&str]) -> Command {
        let mut c = fspl();
        c.args(["sync", sub]).args(self.args()).args(extra);
        c
    }

    fn once(&self) -> serde_json::Value {
        let out = ok(run(self.cmd("once", &["--json"])));
        serde_json::from_slice(&out).unwrap()
    }

    fn fails(&self, extra: &[&str]) -> String {
        one_line_error(run(self.cmd("once", extra)))
    }

    /// The daemon's [[job]] tables for this side: the sync, and a push of
    /// its outbox into `to`.
    fn jobs(&self, to: &Path, extra: &str) -> Vec<String> {
        vec![
            format!(
                "[[job]]\nname = \"sync-{n}\"\ntype = \"sync\"\ndir = {}\nlocal_name = \"{n}\"\npeer = \"{p}\"\noutbox = {}\ninbox = {}\n{extra}\n",
                q(&self.dir),
                q(&self.outbox),
                q(&self.inbox),
                n = self.name,
                p = self.peer
            ),
            format!(
                "[[job]]\nname = \"push-{n}\"\ntype = \"push\"\noutbox = {}\nto = \"dir:{}\"\n",
                q(&self.outbox),
                to.display(),
                n = self.name
            ),
        ]
    }
}

/// `fspl push` of `from`'s outbox into `to`'s inbox (a `dir:` URL).
fn push(from: &Side, to: &Side) {
    ok(run(ours([
        OsStr::new("push"),
        OsStr::new("-q"),
        from.outbox.as_os_str(),
        OsStr::new(&format!("dir:{}", to.inbox.display())),
    ])));
}

/// Rounds on both sides with pushes in between, until nothing moves.
fn settle(a: &Side, b: &Side) {
    for _ in 0..6 {
        let ra = a.once();
        push(a, b);
        let rb = b.once();
        push(b, a);
        let ra2 = a.once();
        let moved = |r: &serde_json::Value| {
            r["sets_sent"].as_u64().unwrap() + r["sets_received"].as_u64().unwrap()
        };
        if moved(&rb) + moved(&ra2) == 0 && moved(&ra) == 0 {
            return;
        }
    }
    panic!("the trees did not settle in 6 rounds");
}

/// What the tree holds (the sync's own directory left out).
fn manifest(root: &Path) -> BTreeMap<String, String> {
    fspl_testkit::tree::manifest(root, ".fspl-sync")
}

fn write(p: &Path, s: impl AsRef<[u8]>) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, s).unwrap();
}

fn set_mtime(p: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn two_trees_crossed_by_dir_pushes_converge_through_every_kind_of_change() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    write(&a.p("notes.txt"), "first");
    write(&a.p("src/main.rs"), "fn main() {}");
    write(&a.p("src/deep/er/mod.rs"), "// deep");
    fs::create_dir_all(a.p("empty/also-empty")).unwrap();
    symlink("src/main.rs", a.p("main-link")).unwrap();
    write(&a.p("run.sh"), "#!/bin/sh\n");
    fs::set_permissions(a.p("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&b.p("from-beta.txt"), "made on beta");
    settle(&a, &b);
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
    assert_eq!(
        fs::read_to_string(b.p("src/deep/er/mod.rs")).unwrap(),
        "// deep"
    );
    assert_eq!(
        fs::read_link(b.p("main-link")).unwrap(),
        Path::new("src/main.rs")
    );
    assert_eq!(fs::metadata(b.p("run.sh")).unwrap().mode() & 0o777, 0o755);
    assert!(b.p("empty/also-empty").is_dir());
    assert_eq!(
        fs::read_to_string(a.p("from-beta.txt")).unwrap(),
        "made on beta"
    );

    // Modify, delete, rename, change a mode, remove an empty directory,
    // retarget a link: on both sides at once.
    write(&a.p("notes.txt"), "second");
    fs::rename(a.p("src"), a.p("source")).unwrap();
    fs::remove_file(b.p("from-beta.txt")).unwrap();
    fs::set_permissions(b.p("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_dir(b.p("empty/also-empty")).unwrap();
    fs::remove_file(b.p("main-link")).unwrap();
    symlink("notes.txt", b.p("main-link")).unwrap();
    settle(&a, &b);
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
    assert_eq!(fs::read_to_string(b.p("notes.txt")).unwrap(), "second");
    assert!(!b.p("src").exists() && b.p("source/deep/er/mod.rs").is_file());
    assert!(!a.p("from-beta.txt").exists());
    assert_eq!(fs::metadata(a.p("run.sh")).unwrap().mode() & 0o777, 0o700);
    assert!(!a.p("empty/also-empty").exists() && a.p("empty").is_dir());
    assert_eq!(
        fs::read_link(a.p("main-link")).unwrap(),
        Path::new("notes.txt")
    );

    let st = ok(run(a.cmd("status", &["--json"])));
    let st: serde_json::Value = serde_json::from_slice(&st).unwrap();
    assert_eq!(st["local_changes"], 0);
    assert_eq!(st["inbox"], 0);
    assert_eq!(st["last_round"]["error"], serde_json::Value::Null);
}

#[test]
fn ten_thousand_small_files_arrive_whole() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    for i in 0..10_000 {
        write(
            &a.p(&format!("d{:02}/f{i:05}.txt", i % 50)),
            format!("file {i}\n"),
        );
    }
    let r = a.once();
    assert_eq!(r["files_sent"], 10_000);
    push(&a, &b);
    let r = b.once();
    assert_eq!(r["files_received"], 10_000);
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
}

/// Files that land on a file system mounted inside the tree are flushed
/// one by one, since the tree's `syncfs` does not reach another file
/// system; files on the tree's own file system are not, because one
/// `syncfs` covers them all (docs/sync.md). Seen in a real trace
/// (`strace -y` names each descriptor's file).
#[test]
fn files_landing_on_a_file_system_mounted_inside_the_tree_are_fsynced_themselves() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    let inner = b.p("inner");
    let _tmpfs = crate::reliability_disk::Tmpfs::mount(&inner, "8m").unwrap_or_else(|e| {
        panic!(
            "cannot mount a tmpfs at {} (the tests run as root): {e}",
            inner.display()
        )
    });
    // As A's directory is (a tmpfs's root starts as 1777).
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..5 {
        write(&a.p(&format!("inner/in{i}.txt")), format!("inside {i}\n"));
        write(&a.p(&format!("top/out{i}.txt")), format!("outside {i}\n"));
    }
    b.once();
    a.once();
    push(&a, &b);
    let trace = sb.path("apply.trace");
    let mut c = Command::new("strace");
    c.args([
        "-f",
        "-y",
        "-qq",
        "-e",
        "trace=fsync,fdatasync,syncfs",
        "-o",
    ])
    .arg(&trace)
    .arg(fspl_bin())
    .env("TZ", "UTC")
    .args(["sync", "once"])
    .args(b.args());
    ok(run(c));
    let t = fs::read_to_string(&trace).unwrap();
    let flushed_under = |dir: &Path| {
        let prefix = format!("<{}/", dir.display());
        t.lines()
            .filter(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&prefix))
            .count()
    };
    assert!(
        flushed_under(&inner) >= 5,
        "the files on the inner file system were not fsynced one by one:\n{t}"
    );
    assert_eq!(
        flushed_under(&b.p("top")),
        0,
        "files on the tree's own file system were fsynced one by one:\n{t}"
    );
    assert!(t.contains("syncfs("), "no syncfs in the trace:\n{t}");
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
}

/// Run `c` and return its output and its peak RSS in KiB, measured by
/// `/usr/bin/time` (scripts/test installs it).
///
/// Regression (sync_large_file_rss_was_the_harness): `wait4` on our own
/// child reported 230 MiB in CI because the child is started with
/// posix_spawn (CLONE_VM), and exec records the *parent's* peak RSS, the
/// test harness's, as the child's. `time` forks from a small process.
fn run_rss(c: Command) -> (Output, i64) {
    let time = crate::reliability_procs::TIME;
    assert!(
        std::path::Path::new(time).exists(),
        "{time} is missing (Debian package `time`; scripts/test installs it)"
    );
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut t = Command::new(time);
    t.args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        t.current_dir(d);
    }
    let out = t.output().unwrap();
    let text = fs::read_to_string(report.path()).unwrap();
    // "Command exited with non-zero status N" may come first.
    let kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from {time}: {text:?}"));
    (out, kib)
}

/// A large file goes through in constant memory: 1 GiB (the issue's
/// size; FSPL_SYNC_LARGE_MIB sets another).
#[test]
fn a_large_file_is_streamed_in_constant_memory() {
    let mib: u64 = std::env::var("FSPL_SYNC_LARGE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    {
        // Incompressible, so that every byte goes through.
        use std::io::Write;
        // One random MiB, each copy stamped with its index every 4 KiB:
        // LZ4's matches reach back 64 KiB, so every copy is as
        // incompressible as the first, and no two MiB are the same.
        let mut f = fs::File::create(a.p("big.bin")).unwrap();
        let mut x: u64 = 0x1234_5678;
        let mut buf = vec![0u8; 1 << 20];
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        for i in 0..mib {
            for page in buf.chunks_mut(4096) {
                page[..8].copy_from_slice(&i.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let (out, rss_a) = run_rss(a.cmd("once", &["--compression", "lz4"]));
    ok(out);
    push(&a, &b);
    let (out, rss_b) = run_rss(b.cmd("once", &[]));
    ok(out);
    assert_eq!(
        fs::metadata(b.p("big.bin")).unwrap().len(),
        mib << 20,
        "the whole file arrived"
    );
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
    // Far below the file's size: the file never sits in memory.
    for (side, rss) in [("sender", rss_a), ("receiver", rss_b)] {
        assert!(
            rss < 96 * 1024,
            "{side} peak RSS {rss} KiB for a {mib} MiB file"
        );
    }
}

/// A file that keeps changing while it is read is not sent torn: the
/// round reads it three times, then leaves it for the next round
/// (`torn` in the report), and the next round, once it is still, sends
/// it whole.
#[test]
fn a_file_changing_while_read_is_retried_then_left_for_the_next_round() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    write(&a.p("still.txt"), "still");
    // Big enough that reading it takes longer than the writer's pause.
    let busy = a.p("busy.log");
    fs::write(&busy, noise(32 << 20, 7)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, busy) = (stop.clone(), busy.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&busy).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(f, "line {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let report = a.once();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(report["torn"], 1, "{report}");
    assert_eq!(report["files_sent"], 1, "only still.txt: {report}");
    push(&a, &b);
    b.once();
    assert!(b.p("still.txt").exists());
    assert!(!b.p("busy.log").exists(), "no torn copy arrived");
    // Still now: the next round sends it whole.
    let report = a.once();
    assert_eq!(report["torn"], 0, "{report}");
    push(&a, &b);
    b.once();
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
}

#[test]
fn conflicts_keep_every_losing_version_as_a_conflict_copy() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    write(&a.p("both.txt"), "v0");
    write(&a.p("gone.txt"), "v0");
    write(&a.p("dir/old.txt"), "old");
    write(&a.p("keep.txt"), "keeps the tree from looking emptied");
    settle(&a, &b);
    // Changed on both sides: beta's is newer.
    write(&a.p("both.txt"), "alpha's older edit");
    set_mtime(&a.p("both.txt"), 2_000_000_000);
    write(&b.p("both.txt"), "beta's newer edit");
    set_mtime(&b.p("both.txt"), 2_000_000_060);
    // Changed on alpha (newer than the deletion? no: an old mtime), deleted on beta.
    write(&a.p("gone.txt"), "alpha's edit of a file beta deleted");
    set_mtime(&a.p("gone.txt"), 1_000_000_000);
    fs::remove_file(b.p("gone.txt")).unwrap();
    // A directory deleted on alpha while beta makes a file in it.
    fs::remove_dir_all(a.p("dir")).unwrap();
    write(&b.p("dir/new.txt"), "made inside a deleted directory");
    settle(&a, &b);
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
    for s in [&a, &b] {
        assert_eq!(
            fs::read_to_string(s.p("both.txt")).unwrap(),
            "beta's newer edit"
        );
        assert_eq!(
            fs::read_to_string(s.p("both.sync-conflict-20330518-033320-alpha.txt")).unwrap(),
            "alpha's older edit"
        );
        // The deletion is newer than alpha's edit: it wins, the edit stays
        // as a copy.
        assert!(!s.p("gone.txt").exists());
        assert_eq!(
            fs::read_to_string(s.p("gone.sync-conflict-20010909-014640-alpha.txt")).unwrap(),
            "alpha's edit of a file beta deleted"
        );
        assert_eq!(
            fs::read_to_string(s.p("dir/new.txt")).unwrap(),
            "made inside a deleted directory"
        );
        assert!(!s.p("dir/old.txt").exists());
    }
    let st = ok(run(a.cmd("status", &["--json"])));
    let st: serde_json::Value = serde_json::from_slice(&st).unwrap();
    assert_eq!(st["conflicts"].as_array().unwrap().len(), 2);
}

#[test]
fn safety_refusals_name_the_problem_and_force_overrides_them() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    for i in 0..20 {
        write(&a.p(&format!("f{i:02}")), "x");
    }
    settle(&a, &b);
    // 90% of the tree deleted: not sent.
    for i in 0..18 {
        fs::remove_file(a.p(&format!("f{i:02}"))).unwrap();
    }
    let e = a.fails(&[]);
    assert!(e.contains("would delete 18 of 20 entries"), "{e}");
    assert_eq!(fspl_testkit::job_names(&a.outbox.join("jobs")).len(), 0);
    // Forced: sent; the receiver refuses it in turn, until forced too.
    ok(run(a.cmd("once", &["--force"])));
    push(&a, &b);
    let e = b.fails(&[]);
    assert!(
        e.contains("change set seq") && e.contains("would delete 18"),
        "{e}"
    );
    assert!(b.p("f00").exists());
    ok(run(b.cmd("once", &["--force"])));
    assert!(!b.p("f00").exists() && b.p("f19").exists());

    // An emptied root.
    for i in 18..20 {
        fs::remove_file(a.p(&format!("f{i:02}"))).unwrap();
    }
    let e = a.fails(&[]);
    assert!(
        e.contains("is empty but 2 entries were synced before"),
        "{e}"
    );
    // A missing root.
    fs::remove_dir_all(&a.dir).unwrap();
    let e = a.fails(&[]);
    assert!(e.contains("is missing: refusing to sync"), "{e}");
    // `.` in the excludes turns syncing off, and says so.
    let e = b.fails(&["--exclude", "."]);
    assert!(
        e.contains("syncing is disabled: exclude contains \".\""),
        "{e}"
    );
}

#[test]
fn excluded_paths_and_the_syncs_own_queues_inside_the_tree_are_never_sent() {
    let sb = Sandbox::new();
    let (mut a, b) = Side::pair(&sb);
    // Queues inside the tree.
    a.outbox = a.p("queues/out");
    a.inbox = a.p("queues/in");
    write(&a.p("keep.txt"), "k");
    write(&a.p("skip.log"), "l");
    write(&a.p("target/debug/x"), "x");
    ok(run(a.cmd(
        "once",
        &["--exclude", "*.log", "--exclude", "target/"],
    )));
    ok(run(ours([
        OsStr::new("push"),
        OsStr::new("-q"),
        a.outbox.as_os_str(),
        OsStr::new(&format!("dir:{}", b.inbox.display())),
    ])));
    b.once();
    assert!(b.p("keep.txt").exists());
    assert!(!b.p("skip.log").exists() && !b.p("target").exists());
    // The queues (their parent is an ordinary directory) are not sent.
    assert!(!b.p("queues/out").exists() && !b.p("queues/in").exists());
}

#[test]
fn sigkill_mid_apply_leaves_only_whole_files_and_the_next_round_converges() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    for i in 0..1500 {
        write(
            &a.p(&format!("d{}/f{i:04}", i % 10)),
            format!("{i}").repeat(200),
        );
    }
    a.once();
    push(&a, &b);
    // Kill the receiving side at several instants; after each kill every
    // file present is whole.
    let want = manifest(&a.dir);
    for delay_ms in [30u64, 90, 200, 400] {
        let mut c = b.cmd("once", &[]);
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        for (p, v) in manifest(&b.dir) {
            if p.contains(".fspl-sync-tmp.") {
                continue;
            }
            assert_eq!(Some(&v), want.get(&p), "{p} after a kill at {delay_ms} ms");
        }
    }
    // Rounds on both sides converge (what the killed rounds applied
    // partly goes back to alpha as no-ops).
    settle(&a, &b);
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
    assert_eq!(manifest(&a.dir), want);
}

#[test]
fn over_ssh_change_sets_go_through_serve_stdin() {
    use crate::helper::sshd::Sshd;
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    let sshd = Sshd::start(&sb.path("sshd"));
    let intake = sb.path("intake.toml");
    fs::write(
        &intake,
        format!(
            "[identity.alpha.queues]\nsync = {}\n[identity.beta.queues]\nsync = {}\n",
            q(&b.inbox),
            q(&a.inbox)
        ),
    )
    .unwrap();
    let key = |id: &str| {
        sshd.authorize(
            id,
            "restrict",
            &format!(
                "{} serve-stdin {id} -c {}",
                fspl_bin().display(),
                intake.display()
            ),
        )
    };
    let (ka, kb) = (key("alpha"), key("beta"));
    let ssh_push = |from: &Side, k: &Path| {
        let mut c = ours([
            OsStr::new("push"),
            OsStr::new("-q"),
            from.outbox.as_os_str(),
            OsStr::new("ssh://fspl-test-host/sync"),
        ]);
        c.env(fspl_transport::ssh::SSH_ENV, sshd.fspl_ssh(k));
        ok(run(c));
    };
    write(&a.p("a.txt"), "from alpha over ssh");
    write(&b.p("b/b.txt"), "from beta over ssh");
    for _ in 0..2 {
        a.once();
        ssh_push(&a, &ka);
        b.once();
        ssh_push(&b, &kb);
    }
    a.once();
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
    assert_eq!(
        fs::read_to_string(b.p("a.txt")).unwrap(),
        "from alpha over ssh"
    );
    assert_eq!(
        fs::read_to_string(a.p("b/b.txt")).unwrap(),
        "from beta over ssh"
    );
}

/// alpha's signing key (`fspl keygen`) and a trust file naming it.
fn alpha_signs(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let key = sb.path("alpha.key");
    ok(run(ours([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        key.as_os_str(),
    ])));
    let public = fs::read_to_string(sb.path("alpha.key.pub")).unwrap();
    let trust = sb.path("trust.toml");
    fs::write(
        &trust,
        format!("[[sender]]\nname = \"alpha\"\nkey = {:?}\n", public.trim()),
    )
    .unwrap();
    (key, trust)
}

#[test]
fn signed_and_encrypted_change_sets_are_applied_and_forged_ones_refused() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    let (key, trust) = alpha_signs(&sb);
    let age = sb.path("beta.age");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "command -v age-keygen >/dev/null && age-keygen -o {} 2>&1",
            age.display()
        ))
        .output()
        .unwrap();
    let recipient = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Public key: ").map(String::from));
    write(&a.p("secret.txt"), "signed");
    let mut send = vec!["--sign".to_string(), key.display().to_string()];
    if let Some(r) = &recipient {
        send.extend(["--encrypt-to".into(), r.clone()]);
    }
    let send: Vec<&str> = send.iter().map(String::as_str).collect();
    ok(run(a.cmd("once", &send)));
    push(&a, &b);
    let mut recv = vec!["--trust".to_string(), trust.display().to_string()];
    if recipient.is_some() {
        recv.extend(["--identity".into(), age.display().to_string()]);
    }
    let recv: Vec<&str> = recv.iter().map(String::as_str).collect();
    ok(run(b.cmd("once", &recv)));
    assert_eq!(fs::read_to_string(b.p("secret.txt")).unwrap(), "signed");
    // An unsigned change set is refused with the trust file, and moved aside.
    write(&a.p("unsigned.txt"), "forged");
    a.once();
    push(&a, &b);
    let e = b.fails(&recv);
    assert!(
        e.contains("change set seq 2 in the inbox was refused"),
        "{e}"
    );
    assert!(!b.p("unsigned.txt").exists());
}

/// The rounds' interval is an hour: every change gets across because a
/// change in the tree (inotify) and a change set landing in the inbox
/// wake the job.
#[test]
fn a_daemon_on_each_side_keeps_the_trees_in_step_woken_by_changes() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    let fast = "interval_min = 3600\ninterval_max = 3600";
    let mk = |s: &Side, to: &Side, home: &Sandbox| {
        format!(
            "[daemon]\nsocket = {}\nrescan_interval = 3600\nshutdown_grace = 1\n\n{}",
            q(home.path("d.sock")),
            s.jobs(&to.inbox, fast).join("\n")
        )
    };
    write(&a.p("hello.txt"), "from alpha's daemon");
    let (ha, hb) = (Sandbox::new(), Sandbox::new());
    let da = Daemon::start(&ha, &mk(&a, &b, &ha), "logfmt");
    let db = Daemon::start(&hb, &mk(&b, &a, &hb), "logfmt");
    wait_for("hello.txt on beta", || b.p("hello.txt").exists());
    write(&b.p("reply.txt"), "from beta's daemon");
    wait_for("reply.txt on alpha", || a.p("reply.txt").exists());
    fs::remove_file(a.p("hello.txt")).unwrap();
    wait_for("hello.txt gone on beta", || !b.p("hello.txt").exists());
    let j = db.job("sync-beta");
    assert_eq!(j["type"], "sync");
    assert!(j["jobs_succeeded"].as_u64().unwrap() >= 1, "{j}");
    wait_for("both trees equal", || manifest(&a.dir) == manifest(&b.dir));
    drop(da);
    drop(db);
}

#[test]
fn the_schedule_stretches_when_idle_backs_off_on_failure_and_stops_after_three() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    write(&a.p("x"), "x");
    let text = format!(
        "[daemon]\nsocket = {}\nrescan_interval = 3600\nshutdown_grace = 1\n\n{}",
        q(sb.path("d.sock")),
        a.jobs(&b.inbox, "interval_min = 1\ninterval_max = 4")[0]
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    // Idle: the gaps between rounds grow (1, 1.3, 1.69, 2.2, 2.86 s...).
    let mut times = Vec::new();
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    while times.len() < 6 && Instant::now() < deadline {
        let runs = d.job("sync-alpha")["runs"].as_u64().unwrap();
        if runs != last {
            last = runs;
            times.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(times.len(), 6, "six rounds in 40 s");
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(gaps[4] > gaps[0] + 0.8, "idle gaps grow: {gaps:?}");
    // Activity puts it back to interval_min.
    write(&a.p("y"), "y");
    wait_for("the change sent", || {
        fspl_testkit::job_names(&a.outbox.join("jobs")).len() == 1
            || fspl_testkit::job_names(&a.outbox.join("jobs")).len() == 2
    });
    // Failures: the tree goes away; three failed rounds in a row and the
    // error state, with the reason.
    fs::rename(&a.dir, sb.path("moved-away")).unwrap();
    wait_for("the error state", || d.state("sync-alpha") == "error");
    let j = d.job("sync-alpha");
    assert!(j["message"].as_str().unwrap().contains("is missing"), "{j}");
    assert!(j["runs_failed"].as_u64().unwrap() >= 3, "{j}");
    // Back, and cleared: it resumes.
    fs::rename(sb.path("moved-away"), &a.dir).unwrap();
    ok(run(ours([
        OsStr::new("status"),
        OsStr::new("--socket"),
        sb.path("d.sock").as_os_str(),
        OsStr::new("--clear"),
        OsStr::new("sync-alpha"),
    ])));
    wait_for("resumed", || d.state("sync-alpha") != "error");
}

/// The sending side killed at several instants of its round: the next
/// rounds send every change, with no gap in the seqs (a change set spooled
/// before the kill goes out first), and the trees converge.
#[test]
fn sigkill_mid_send_loses_no_change_and_leaves_no_gap() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    for (k, delay_ms) in [20u64, 60, 150, 300].into_iter().enumerate() {
        for i in 0..800 {
            write(
                &a.p(&format!("k{k}/f{i:04}")),
                format!("{k}-{i}").repeat(100),
            );
        }
        let mut c = a.cmd("once", &[]);
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    a.once();
    // The outbox holds change sets 1..=N without a gap.
    let out = ok(run(ours([
        OsStr::new("queue-ls"),
        OsStr::new("-q"),
        a.outbox.as_os_str(),
    ])));
    let seqs: Vec<u64> = String::from_utf8_lossy(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert!(!sorted.is_empty());
    assert_eq!(
        sorted,
        (1..=sorted.len() as u64).collect::<Vec<_>>(),
        "{out:?}"
    );
    settle(&a, &b);
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
    assert_eq!(
        fs::read_to_string(b.p("k3/f0799")).unwrap(),
        "3-799".repeat(100)
    );
}

/// A signed change set compressed with zstd (the default) is written into
/// its job as it is made: a header frame padded with a skippable frame,
/// then the payload's frame. It is still one zstd stream that `zstdcat`
/// reads as a whole job, and its signature and digest check out.
#[test]
fn a_signed_change_set_streamed_into_its_job_reads_with_zstdcat_and_checks_out() {
    let sb = Sandbox::new();
    let (a, b) = Side::pair(&sb);
    let (key, trust) = alpha_signs(&sb);
    write(&a.p("small.txt"), "signed and streamed");
    fs::write(a.p("big.bin"), noise(5 << 20, 3)).unwrap();
    ok(run(a.cmd("once", &["--sign", key.to_str().unwrap()])));
    let job = fs::read_dir(a.outbox.join("jobs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "fspl"))
        .expect("a job in the outbox");
    // The payload's frame starts after the 4 KiB kept for the header.
    let bytes = fs::read(&job).unwrap();
    assert_eq!(
        &bytes[4096..4100],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "a zstd frame"
    );
    let plain = Command::new("zstdcat").arg(&job).output().unwrap();
    assert!(plain.status.success(), "zstdcat: {:?}", plain);
    let mut info = fspl();
    info.arg("stdin-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = info.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&plain.stdout);
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdin-info: {out:?}");
    assert!(text.contains("fspl-sync-changeset"), "{text}");
    push(&a, &b);
    ok(run(b.cmd("once", &["--trust", trust.to_str().unwrap()])));
    assert_eq!(manifest(&a.dir), manifest(&b.dir));
}

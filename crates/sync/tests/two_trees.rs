//! Two trees synced through the library, change sets carried from one
//! side's outbox to the other's inbox by renaming the job files (what a
//! `dir:` push does). The CLI tests (crates/cli/tests/integration/sync.rs)
//! do the same with real processes and `fspl push`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use fspl_sync::{Keys, Options, RoundReport, SyncConfig, SyncError, round};

struct Side {
    cfg: SyncConfig,
    keys: Keys,
}

fn side(base: &Path, name: &str, peer: &str) -> Side {
    let dir = base.join(name).join("tree");
    fs::create_dir_all(&dir).unwrap();
    let mut cfg = SyncConfig::new(
        dir,
        peer.into(),
        base.join(name).join("outbox"),
        base.join(name).join("inbox"),
    );
    cfg.name = name.into();
    let keys = Keys::load(&cfg).unwrap();
    Side { cfg, keys }
}

impl Side {
    fn tree(&self) -> &Path {
        &self.cfg.dir
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.cfg.dir.join(rel)
    }
    fn round(&self) -> Result<RoundReport, SyncError> {
        round(&self.cfg, &self.keys, &Options::default(), &|_, _| {})
    }
    fn ok(&self) -> RoundReport {
        self.round()
            .unwrap_or_else(|e| panic!("{}: {}", self.cfg.name, fspl_queue::display_chain(&e)))
    }
}

/// Move every job of `from`'s outbox into `to`'s inbox.
fn carry(from: &Side, to: &Side) -> usize {
    let src = from.cfg.outbox.join("jobs");
    let dst = to.cfg.inbox.join("jobs");
    if !dst.exists() {
        fspl_queue::Queue::init(&to.cfg.inbox, false).unwrap();
    }
    let mut n = 0;
    for e in fs::read_dir(&src).unwrap().flatten() {
        fs::rename(e.path(), dst.join(e.file_name())).unwrap();
        n += 1;
    }
    n
}

/// Both sides run, change sets cross, until nothing moves.
fn settle(a: &Side, b: &Side) {
    for _ in 0..6 {
        a.ok();
        b.ok();
        let moved = carry(a, b) + carry(b, a);
        if moved == 0 {
            return;
        }
    }
    panic!("the trees did not settle in 6 rounds");
}

/// What the tree holds (the sync's own directory left out).
fn manifest(root: &Path) -> BTreeMap<String, String> {
    fspl_testkit::tree::manifest(root, ".fspl-sync")
}

fn write(p: &Path, s: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, s).unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn pair() -> (tempfile::TempDir, Side, Side) {
    let t = tempfile::tempdir().unwrap();
    let a = side(t.path(), "alpha", "beta");
    let b = side(t.path(), "beta", "alpha");
    (t, a, b)
}

#[test]
fn create_modify_delete_rename_mode_dirs_links_converge() {
    let (_t, a, b) = pair();
    write(&a.p("top.txt"), "top");
    write(&a.p("d/e/deep.txt"), "deep");
    fs::create_dir_all(a.p("empty/inner")).unwrap();
    symlink("d/e/deep.txt", a.p("link")).unwrap();
    symlink("/nonexistent/elsewhere", a.p("dangling")).unwrap();
    write(&b.p("from-b.txt"), "b's");
    settle(&a, &b);
    assert_eq!(manifest(a.tree()), manifest(b.tree()));
    assert_eq!(fs::read_to_string(b.p("d/e/deep.txt")).unwrap(), "deep");
    assert!(b.p("empty/inner").is_dir());
    assert_eq!(
        fs::read_link(b.p("link")).unwrap(),
        Path::new("d/e/deep.txt")
    );

    // Modify, delete, rename, mode, on both sides.
    write(&a.p("top.txt"), "top, changed");
    fs::remove_file(b.p("from-b.txt")).unwrap();
    fs::rename(a.p("d"), a.p("renamed")).unwrap();
    fs::set_permissions(b.p("empty"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(a.p("renamed/e/deep.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_dir(a.p("empty/inner")).unwrap();
    settle(&a, &b);
    assert_eq!(manifest(a.tree()), manifest(b.tree()));
    assert!(!b.p("from-b.txt").exists() && !a.p("from-b.txt").exists());
    assert!(!b.p("d").exists());
    assert_eq!(fs::metadata(a.p("empty")).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        fs::metadata(b.p("renamed/e/deep.txt")).unwrap().mode() & 0o777,
        0o600
    );
    assert!(!b.p("empty/inner").exists());
    // A quiet round sends nothing.
    let r = a.ok();
    assert_eq!((r.sets_sent, r.sets_received), (0, 0));
}

#[test]
fn both_changed_newer_wins_and_loser_is_kept_on_both_sides() {
    let (_t, a, b) = pair();
    write(&a.p("doc.txt"), "v0");
    settle(&a, &b);
    write(&a.p("doc.txt"), "alpha's");
    set_mtime(&a.p("doc.txt"), 2_000_000_000);
    write(&b.p("doc.txt"), "beta's, newer");
    set_mtime(&b.p("doc.txt"), 2_000_000_100);
    settle(&a, &b);
    assert_eq!(manifest(a.tree()), manifest(b.tree()));
    assert_eq!(fs::read_to_string(a.p("doc.txt")).unwrap(), "beta's, newer");
    let copy = "doc.sync-conflict-20330518-033320-alpha.txt";
    assert_eq!(fs::read_to_string(a.p(copy)).unwrap(), "alpha's");
    assert_eq!(fs::read_to_string(b.p(copy)).unwrap(), "alpha's");
}

#[test]
fn modification_beats_an_older_deletion_and_is_kept_when_the_deletion_is_newer() {
    let (_t, a, b) = pair();
    write(&a.p("x.txt"), "v0");
    write(&a.p("y.txt"), "v0");
    write(&a.p("z.txt"), "keeps the tree from being empty");
    settle(&a, &b);
    // x: deleted on a (now), modified on b with an mtime in the past:
    // the deletion is newer and wins; b's version is kept as a copy.
    fs::remove_file(a.p("x.txt")).unwrap();
    write(&b.p("x.txt"), "b's edit");
    set_mtime(&b.p("x.txt"), 1_000_000_000);
    // y: deleted on a, modified on b with an mtime in the future: the
    // modification wins.
    fs::remove_file(a.p("y.txt")).unwrap();
    write(&b.p("y.txt"), "b's newer edit");
    set_mtime(&b.p("y.txt"), 4_000_000_000);
    settle(&a, &b);
    assert_eq!(manifest(a.tree()), manifest(b.tree()));
    assert!(!a.p("x.txt").exists());
    assert_eq!(
        fs::read_to_string(a.p("x.sync-conflict-20010909-014640-beta.txt")).unwrap(),
        "b's edit"
    );
    assert_eq!(fs::read_to_string(a.p("y.txt")).unwrap(), "b's newer edit");
}

#[test]
fn directory_deleted_on_one_side_while_a_file_is_created_in_it_on_the_other() {
    let (_t, a, b) = pair();
    write(&a.p("d/old.txt"), "old");
    write(&a.p("other.txt"), "keeps the tree from being empty");
    settle(&a, &b);
    fs::remove_dir_all(a.p("d")).unwrap();
    write(&b.p("d/new.txt"), "made while the directory was deleted");
    settle(&a, &b);
    assert_eq!(manifest(a.tree()), manifest(b.tree()));
    assert!(!a.p("d/old.txt").exists());
    assert_eq!(
        fs::read_to_string(a.p("d/new.txt")).unwrap(),
        "made while the directory was deleted"
    );
}

#[test]
fn random_changes_on_both_sides_converge() {
    // Seeded: every run makes the same changes.
    let mut seed: u64 = 0x5eed_1234_abcd;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (_t, a, b) = pair();
    let names = ["a.txt", "b.txt", "d1/c.txt", "d1/d2/e.bin", "d3/f", "g"];
    for round_no in 0..12 {
        for s in [&a, &b] {
            for _ in 0..rnd(4) {
                let n = names[rnd(names.len() as u64) as usize];
                let p = s.p(n);
                match rnd(4) {
                    0 | 1 => write(&p, &format!("{} r{round_no} {}", s.cfg.name, rnd(1000))),
                    2 => {
                        let _ = fs::remove_file(&p);
                    }
                    _ => {
                        if p.is_file() {
                            let mode = [0o644, 0o600, 0o755][rnd(3) as usize];
                            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                        }
                    }
                }
            }
        }
        settle(&a, &b);
        assert_eq!(
            manifest(a.tree()),
            manifest(b.tree()),
            "after round {round_no}"
        );
    }
}

#[test]
fn an_emptied_root_is_refused_not_deleted_everywhere() {
    let (_t, a, b) = pair();
    for i in 0..3 {
        write(&a.p(&format!("f{i}")), "x");
    }
    settle(&a, &b);
    for i in 0..3 {
        fs::remove_file(a.p(&format!("f{i}"))).unwrap();
    }
    let e = a.round().unwrap_err();
    assert!(matches!(e, SyncError::EmptyRoot { synced: 3, .. }), "{e}");
    assert_eq!(carry(&a, &b), 0);
    assert!(b.p("f0").exists());
}

#[test]
fn a_root_without_its_marker_is_taken_for_unmounted() {
    let t = tempfile::tempdir().unwrap();
    let mut a = side(t.path(), "alpha", "beta");
    a.cfg.state = Some(t.path().join("alpha-state"));
    write(&a.p("f"), "x");
    a.ok();
    // The mount went away: an empty directory in its place.
    fs::remove_dir_all(a.tree()).unwrap();
    fs::create_dir(a.tree()).unwrap();
    let e = a.round().unwrap_err();
    assert!(matches!(e, SyncError::Unmounted { .. }), "{e}");
    fs::remove_dir_all(a.tree()).unwrap();
    let e = a.round().unwrap_err();
    assert!(matches!(e, SyncError::RootMissing { .. }), "{e}");
}

#[test]
fn a_change_set_deleting_most_of_the_tree_is_refused_unless_forced() {
    let (_t, a, b) = pair();
    for i in 0..20 {
        write(&a.p(&format!("f{i:02}")), "x");
    }
    settle(&a, &b);
    for i in 0..18 {
        fs::remove_file(a.p(&format!("f{i:02}"))).unwrap();
    }
    let e = a.round().unwrap_err();
    assert!(
        matches!(
            e,
            SyncError::TooManyDeletes {
                deletes: 18,
                total: 20,
                ..
            }
        ),
        "{e}"
    );
    round(&a.cfg, &a.keys, &Options { force: true }, &|_, _| {}).unwrap();
    carry(&a, &b);
    let e = b.round().unwrap_err();
    assert!(
        matches!(e, SyncError::TooManyDeletes { deletes: 18, .. }),
        "{e}"
    );
    assert!(b.p("f00").exists());
    round(&b.cfg, &b.keys, &Options { force: true }, &|_, _| {}).unwrap();
    assert!(!b.p("f00").exists());
    assert!(b.p("f19").exists());
}

#[test]
fn excluded_paths_stay_and_dot_disables_syncing() {
    let (_t, mut a, mut b) = pair();
    a.cfg.exclude = vec!["*.log".into(), "build/".into()];
    b.cfg.exclude = a.cfg.exclude.clone();
    write(&a.p("keep.txt"), "k");
    write(&a.p("noise.log"), "n");
    write(&a.p("build/out.o"), "o");
    settle(&a, &b);
    assert!(b.p("keep.txt").exists());
    assert!(!b.p("noise.log").exists() && !b.p("build").exists());
    a.cfg.exclude = vec![".".into()];
    let e = a.round().unwrap_err();
    assert!(matches!(e, SyncError::Disabled { .. }), "{e}");
    assert!(e.is_permanent());
}

/// A change set made by hand with a hostile entry, stored in b's inbox.
fn hostile(b: &Side, path: &[u8], link_first: Option<&[u8]>) {
    handmade(b, path, link_first, 0)
}

/// A change set made by hand (one file at `path`, after a link when
/// `link_first`), made at `created_ns` by alpha's clock, in b's inbox.
fn handmade(b: &Side, path: &[u8], link_first: Option<&[u8]>, created_ns: i64) {
    use fspl_sync::changeset::{Manifest, Writer};
    use fspl_sync::meta::{Meta, Version};
    let tmp = tempfile::tempfile().unwrap();
    let mut w = Writer::new(tmp);
    w.manifest(&Manifest {
        version: 1,
        from: "alpha".into(),
        to: "beta".into(),
        seq: 1,
        created_ns,
    })
    .unwrap();
    if let Some(l) = link_first {
        w.entry(
            l,
            &Version::Absent,
            &Version::Present(Meta::Link {
                target: b"/tmp".to_vec(),
                mtime: 0,
            }),
        )
        .unwrap();
    }
    let m = Meta::File {
        size: 4,
        mtime: 0,
        mode: 0o644,
    };
    w.file(path, &Version::Absent, &m, &mut &b"evil"[..])
        .unwrap();
    into_inbox(b, w);
}

/// Make the change set written in `w` a job in `b`'s inbox.
fn into_inbox(b: &Side, w: fspl_sync::changeset::Writer) {
    let (out, len, digest) = w.finish().unwrap();
    let fspl_sync::changeset::Out::File(mut f) = out else {
        unreachable!("a writer to a file")
    };
    if !b.cfg.inbox.exists() {
        fspl_queue::Queue::init(&b.cfg.inbox, false).unwrap();
    }
    let job = b.cfg.inbox.parent().unwrap().join("handmade.fspl");
    let _ = fs::remove_file(&job);
    fspl_sync::job::build(&mut f, len, Some(digest), 1, &b.keys, None, &job).unwrap();
    fspl_sync::job::store(&fspl_queue::Queue::new(&b.cfg.inbox), &job).unwrap();
}

/// A writer of change set 1 from alpha to beta, its manifest written.
fn handmade_writer() -> fspl_sync::changeset::Writer {
    use fspl_sync::changeset::{Manifest, Writer};
    let mut w = Writer::new(tempfile::tempfile().unwrap());
    w.manifest(&Manifest {
        version: 1,
        from: "alpha".into(),
        to: "beta".into(),
        seq: 1,
        created_ns: fspl_sync::now_ns(),
    })
    .unwrap();
    w
}

fn file_meta(size: u64) -> fspl_sync::meta::Meta {
    fspl_sync::meta::Meta::File {
        size,
        mtime: 1_000_000_000,
        mode: 0o644,
    }
}

#[test]
fn a_retracted_entry_is_skipped_and_the_next_copy_of_the_file_applied() {
    use fspl_sync::meta::Version;
    let (_t, _a, b) = pair();
    let mut w = handmade_writer();
    // A first read that came out short (padded, then taken back), then a
    // whole one.
    assert!(
        !w.file(b"f.txt", &Version::Absent, &file_meta(8), &mut &b"torn"[..])
            .unwrap()
    );
    w.retract(b"f.txt").unwrap();
    assert!(
        w.file(
            b"f.txt",
            &Version::Absent,
            &file_meta(8),
            &mut &b"complete"[..]
        )
        .unwrap()
    );
    // One only ever sent torn: nothing of it arrives.
    w.file(
        b"g.txt",
        &Version::Absent,
        &file_meta(5),
        &mut &b"gone?"[..],
    )
    .unwrap();
    w.retract(b"g.txt").unwrap();
    into_inbox(&b, w);
    let r = b.ok();
    assert_eq!(fs::read_to_string(b.p("f.txt")).unwrap(), "complete");
    assert!(!b.p("g.txt").exists(), "a retracted file is not applied");
    assert_eq!(r.files_received, 1, "{r:?}");
}

#[test]
fn a_retraction_that_does_not_follow_its_entry_is_hostile() {
    use fspl_sync::meta::Version;
    for twice in [false, true] {
        let (_t, _a, b) = pair();
        let mut w = handmade_writer();
        w.file(b"f.txt", &Version::Absent, &file_meta(1), &mut &b"x"[..])
            .unwrap();
        if twice {
            w.retract(b"f.txt").unwrap();
            w.retract(b"f.txt").unwrap();
        } else {
            w.retract(b"other.txt").unwrap();
        }
        into_inbox(&b, w);
        let e = b.round().unwrap_err();
        assert!(matches!(e, SyncError::Hostile { seq: 1, .. }), "{e}");
        assert!(e.to_string().contains("retraction"), "{e}");
        assert!(!b.p("f.txt").exists(), "nothing applied");
    }
}

#[test]
fn hostile_change_sets_are_refused_before_anything_is_written() {
    for (path, link) in [
        (&b"../escaped"[..], None),
        (b"/tmp/absolute", None),
        (b"ok/../../escaped", None),
        (b".fspl-sync/state.msgpack", None),
        (b"l/through-link", Some(&b"l"[..])),
    ] {
        let (t, _a, b) = pair();
        hostile(&b, path, link);
        let e = b.round().unwrap_err();
        assert!(matches!(e, SyncError::Hostile { seq: 1, .. }), "{e}");
        assert!(!t.path().join("beta/escaped").exists());
        assert!(!b.p("l").exists(), "nothing applied before the refusal");
    }
}

#[test]
fn a_symlink_in_the_tree_never_leads_a_write_out_of_it() {
    let (t, a, b) = pair();
    write(&a.p("d/f.txt"), "x");
    settle(&a, &b);
    // On b, d is replaced by a link to a directory outside the tree.
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::remove_dir_all(b.p("d")).unwrap();
    symlink(&outside, b.p("d")).unwrap();
    write(&a.p("d/f.txt"), "changed");
    a.ok();
    carry(&a, &b);
    let _ = b.round();
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
}

#[test]
fn a_peer_clock_ahead_by_more_than_max_skew_is_reported() {
    let (_t, _a, b) = pair();
    let hour = 3600 * 1_000_000_000i64;
    handmade(&b, b"from-the-future.txt", None, fspl_sync::now_ns() + hour);
    let r = b.ok();
    let skew = r.skew.expect("the skew is reported");
    assert!(
        skew.contains("alpha's clock is 3") && skew.contains("s ahead of ours"),
        "{skew}"
    );
    assert_eq!(
        fs::read_to_string(b.p("from-the-future.txt")).unwrap(),
        "evil"
    );
    // Within max_skew: nothing to report.
    let (_t, _a, b) = pair();
    handmade(&b, b"now.txt", None, fspl_sync::now_ns() + 1_000_000_000);
    assert_eq!(b.ok().skew, None);
}

/// Alter the first `from` in the only job of `b`'s inbox into `to` (a
/// change set made without compression carries file bytes as they are).
fn alter_inbox_job(b: &Side, from: &[u8], to: &[u8], mode: u32) -> PathBuf {
    let jobs = b.cfg.inbox.join("jobs");
    let job = fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut bytes = fs::read(&job).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the bytes to alter are in the job");
    bytes[at..at + to.len()].copy_from_slice(to);
    fs::write(&job, bytes).unwrap();
    fs::set_permissions(&job, fs::Permissions::from_mode(mode)).unwrap();
    job
}

#[test]
fn a_change_set_altered_in_the_inbox_is_refused_and_nothing_of_it_applied() {
    // 0644: read straight from the job file, checked by the apply's first
    // pass; 0664 (someone else may write it): checked as it is copied.
    for mode in [0o644, 0o664] {
        let (_t, mut a, b) = pair();
        a.cfg.compression = fspl_sync::config::Compression::None;
        write(&a.p("first.txt"), "one");
        write(&a.p("second.txt"), "hello, tree");
        a.ok();
        assert_eq!(carry(&a, &b), 1);
        let job = alter_inbox_job(&b, b"hello, tree", b"jello", mode);
        let name = job.file_name().unwrap().to_owned();
        let e = b.round().unwrap_err();
        let SyncError::Refused { seq: 1, reason, .. } = &e else {
            panic!("mode {mode:o}: {e}");
        };
        assert!(reason.contains("digest"), "mode {mode:o}: {reason}");
        assert!(!b.p("first.txt").exists(), "mode {mode:o}: nothing applied");
        assert!(
            !b.p("second.txt").exists(),
            "mode {mode:o}: nothing applied"
        );
        assert!(!job.exists(), "mode {mode:o}: the job left the inbox");
        assert!(
            b.cfg.inbox.join("rejected").join(&name).exists(),
            "mode {mode:o}: the job is in rejected/"
        );
    }
}

#[test]
fn a_change_set_shared_with_other_writers_is_applied_from_a_private_copy() {
    let (_t, a, b) = pair();
    write(&a.p("d/f.txt"), "content");
    fs::write(a.p("big.bin"), vec![7u8; 3 << 20]).unwrap();
    a.ok();
    assert_eq!(carry(&a, &b), 1);
    let jobs = b.cfg.inbox.join("jobs");
    for e in fs::read_dir(&jobs).unwrap().flatten() {
        fs::set_permissions(e.path(), fs::Permissions::from_mode(0o666)).unwrap();
    }
    let r = b.ok();
    assert_eq!(r.files_received, 2);
    assert_eq!(manifest(a.tree()), manifest(b.tree()));
}

//! Reliability suite (issue 7): a full disk. The queue and the sender's
//! sequence file live on a 10 MiB tmpfs (`mount -t tmpfs -o size=10m`,
//! which needs root); three 3 MiB jobs go in, then:
//!
//! - a fourth 3 MiB `queue-write` does not fit: one-line ENOSPC error, no
//!   job file, no temporary left, nextseq unchanged;
//! - the disk is filled to the last page; then `prepare -s` cannot commit
//!   its number (one-line error, sequence file unchanged), `prepare` with
//!   its stdout on the full disk cannot write the header (one-line error,
//!   "no sequence number was used", file unchanged), and a small
//!   `queue-write` fails like the big one;
//! - `queue-process` still runs the three jobs on the full disk (the
//!   nextseq advance overwrites in place and needs no new block) and so
//!   frees their space;
//! - with the filler removed, every write that failed is retried and
//!   succeeds, the sender carries on, and every job runs once, in order.
//!
//! `Lab::check` runs after every step. When a tmpfs cannot be mounted (not
//! root, no CAP_SYS_ADMIN) the test says so and injects ENOSPC with
//! failpoints at every write and replace step instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helper::*;
use crate::reliability_common::*;

const MIB: usize = 1024 * 1024;

/// A mounted tmpfs, unmounted on drop.
pub(crate) struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(text(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    fn unmount(&mut self) {
        if self.mounted {
            self.mounted = false;
            let st = Command::new("umount").arg(&self.dir).status();
            if !st.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Write to `path` until the file system is full; returns bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut total = 0u64;
    for chunk in [64 * 1024, 4096, 1] {
        let buf = vec![0x5au8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    total
}

fn temps_in(q: &Path) -> usize {
    std::fs::read_dir(q.join("jobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".fspl-tmp-"))
        .count()
}

/// A command expected to fail for lack of space: one `fspl: error:` line
/// naming ENOSPC. Returns the problems.
fn enospc_error(what: &str, out: &std::process::Output) -> Vec<String> {
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    if out.status.success() {
        return vec![format!("{what} succeeded on a full disk")];
    }
    if out.status.code() != Some(1)
        || lines.len() != 1
        || !lines[0].starts_with("fspl: error: ")
        || !lines[0].contains("No space left on device")
        || lines[0].contains("(os error")
    {
        return vec![format!(
            "{what}: expected exit 1 and one `fspl: error: ...No space left on device` line, got {}: {err:?}",
            out.status
        )];
    }
    Vec::new()
}

/// One round; `big` is the size of the four big jobs (three fit in 10 MiB,
/// the fourth does not).
fn on_tmpfs(tally: &mut Tally, sb: Sandbox, disk: PathBuf, mut fs: Tmpfs, big: usize) {
    let mut problems: Vec<(String, Vec<String>)> = Vec::new();
    let mut lab = Lab::in_dir(
        sb,
        Some(disk.clone()),
        false,
        big as u64,
        vec![big, big, big, big, 200, 5_000],
    );
    let mut step = |lab: &mut Lab, tally: &mut Tally, name: &str, mut p: Vec<String>| {
        p.extend(lab.check(tally));
        problems.push((name.to_string(), p));
    };

    for _ in 0..3 {
        lab.send();
    }
    step(&mut lab, tally, "three 3 MiB jobs written", Vec::new());

    // 1. A job that does not fit.
    let (n4, c) = lab.prepare_cmd();
    let job4 = ok(run(c));
    lab.note_sent(n4, &job4);
    let before = lab.sb.job_files(&lab.q);
    let out = run_with_input(lab.write_cmd(), &job4);
    tally.runs += 1;
    tally.faults += 1;
    let mut p = enospc_error("queue-write of a 3 MiB job into 1 MiB", &out);
    if lab.sb.job_files(&lab.q) != before {
        p.push("a job file appeared although the write failed".into());
    }
    if temps_in(&lab.q) != 0 {
        p.push("the failed write left a temporary file".into());
    }
    if lab.nextseq() != Some(1) {
        p.push(format!("nextseq moved to {:?}", lab.nextseq()));
    }
    step(&mut lab, tally, "write that does not fit", p);

    // 2. Fill the disk to the last page.
    let filler = disk.join("filler");
    let filled = fill(&filler);
    eprintln!("full-disk: filled the last {filled} bytes");

    // prepare -s with a sequence file that must be replaced (padded by
    // hand): the header goes out, the number cannot be committed.
    let seq_before = lab.seqfile_value();
    std::fs::write(&lab.seqfile, format!("{seq_before}          \n")).unwrap();
    let (_, c) = lab.prepare_cmd();
    let out = run(c);
    tally.runs += 1;
    tally.faults += 1;
    let mut p = enospc_error("prepare -s with the sequence file on a full disk", &out);
    if lab.seqfile_value() != seq_before {
        p.push(format!(
            "the sequence file moved from {seq_before} to {} although prepare failed",
            lab.seqfile_value()
        ));
    }
    if !text(&out.stderr).contains(&format!("seq {seq_before} again")) {
        p.push(format!(
            "the error does not say seq {seq_before} is still unused: {}",
            text(&out.stderr).trim()
        ));
    }
    step(&mut lab, tally, "prepare commit on a full disk", p);

    // The usual sequence file ("N\n") is advanced in place, which takes no
    // space: prepare succeeds on a full disk, and its job is whole. It is
    // written once there is room again.
    std::fs::write(&lab.seqfile, format!("{seq_before}\n")).unwrap();
    let (held, c) = lab.prepare_cmd();
    let out = run(c);
    tally.runs += 1;
    let mut p = Vec::new();
    if !out.status.success() {
        p.push(format!(
            "prepare -s advancing the sequence file in place failed on a full disk: {}",
            text(&out.stderr).trim()
        ));
    }
    if lab.seqfile_value() != held + 1 {
        p.push(format!(
            "after prepare -s on a full disk the sequence file says {}, expected {}",
            lab.seqfile_value(),
            held + 1
        ));
    }
    let held_job = out.stdout;
    lab.note_sent(held, &held_job);
    let seq_before = held + 1;
    step(&mut lab, tally, "prepare in place on a full disk", p);

    // prepare with stdout on the full disk: the header cannot be written.
    let (_, mut c) = lab.prepare_cmd();
    let dest = disk.join("outgoing.fspl");
    c.stdout(std::fs::File::create(&dest).unwrap());
    let out = c.stdin(std::process::Stdio::null()).output().unwrap();
    drop(c); // it holds the file on the tmpfs open
    tally.runs += 1;
    tally.faults += 1;
    let mut p = enospc_error("prepare > file on a full disk", &out);
    if lab.seqfile_value() != seq_before {
        p.push("the sequence file moved although no header was written".into());
    }
    if !text(&out.stderr).contains("no sequence number was used") {
        p.push(format!(
            "the error does not say no number was used: {}",
            text(&out.stderr).trim()
        ));
    }
    let _ = std::fs::remove_file(&dest);
    step(&mut lab, tally, "prepare to stdout on a full disk", p);

    // A small job does not fit either.
    let small = lab.prepare_fixed(seq_before + 1);
    let out = run_with_input(lab.write_cmd(), &small);
    tally.runs += 1;
    tally.faults += 1;
    let mut p = enospc_error("queue-write of a small job on a full disk", &out);
    if temps_in(&lab.q) != 0 {
        p.push("the failed write left a temporary file".into());
    }
    if lab.sb.job_files(&lab.q) != before {
        p.push("a job file appeared although the write failed".into());
    }
    step(&mut lab, tally, "small write on a full disk", p);

    // 3. The processor still runs on a full disk, and frees space.
    let out = run(lab.process_cmd());
    tally.runs += 1;
    let mut p = Vec::new();
    if !out.status.success() {
        p.push(format!(
            "queue-process on a full disk failed: {}",
            text(&out.stderr).trim()
        ));
    }
    if lab.nextseq() != Some(4) {
        p.push(format!(
            "after processing on a full disk nextseq is {:?}, expected 4",
            lab.nextseq()
        ));
    }
    step(&mut lab, tally, "queue-process on a full disk", p);

    // 4. Space freed: every failed write is retried and succeeds.
    std::fs::remove_file(&filler).unwrap();
    lab.write_ok(n4, &job4);
    lab.write_ok(held, &held_job);
    let n5 = lab.send();
    let mut p = Vec::new();
    if n5 != seq_before {
        p.push(format!(
            "after the failed prepares the sender used seq {n5}, expected {seq_before}"
        ));
    }
    lab.send();
    step(&mut lab, tally, "retries after freeing space", p);
    let p = lab.finish(tally);
    problems.push(("final run".into(), p));

    for (name, p) in problems {
        tally.problems(&format!("{big}-byte jobs: {name}"), p);
    }
    // Unmount before the sandbox (which holds the mount point) goes.
    fs.unmount();
    drop(lab);
}

#[test]
fn reliability_full_disk() {
    let sb = Sandbox::new();
    let disk = sb.path("disk");
    match Tmpfs::mount(&disk, "10m") {
        Ok(fs) => {
            let mut tally = Tally::new("full-disk-tmpfs");
            on_tmpfs(&mut tally, sb, disk, fs, 3 * MIB);
            // Long mode: other sizes, so the write fails at other offsets.
            let rounds = if long_mode() { 8 } else { 0 };
            let mut rng = Rng(0xd15c);
            for _ in 0..rounds {
                let big = 2_700_000 + rng.below(700_000) as usize;
                let sb = Sandbox::new();
                let disk = sb.path("disk");
                let fs = Tmpfs::mount(&disk, "10m").expect("mounted before");
                on_tmpfs(&mut tally, sb, disk, fs, big);
            }
            tally.finish();
        }
        Err(e) => {
            eprintln!(
                "full-disk: cannot mount a 10 MiB tmpfs ({e}); falling back to ENOSPC injected \
                 with failpoints at every write and replace step"
            );
            fallback();
        }
    }
}

#[cfg(feature = "failpoints")]
fn fallback() {
    crate::reliability_faults::sweep_only(
        "full-disk-injected-enospc",
        "enospc",
        &["write:", "replace:", "nextseq:", "prepare:"],
    );
}

#[cfg(not(feature = "failpoints"))]
fn fallback() {
    panic!(
        "no tmpfs could be mounted and this build has no failpoints to inject ENOSPC with; \
         run as root, or with `--features fspl/failpoints` as scripts/test does"
    );
}

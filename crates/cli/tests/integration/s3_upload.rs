//! `fspl s3-upload`: jollyae's spool-directory uploader (docs/s3.md), its
//! README flows against a real S3-compatible server (s3s-fs, started by
//! the fixture in fspl_testkit::s3), and what we add: several uploaders on
//! one spool, crash recovery, retries, bad credentials.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fspl_testkit::wait_for;

use crate::helper::{Sandbox, fspl, one_line_error, run};

/// A spool: incoming/, working/, completed/, failed/ and a tmp/ to write
/// files in before they are renamed into incoming/.
struct Spool {
    sb: Sandbox,
}

impl Spool {
    fn new() -> Spool {
        let sb = Sandbox::new();
        for d in ["incoming", "working", "completed", "failed", "tmp"] {
            std::fs::create_dir(sb.path(d)).unwrap();
        }
        Spool { sb }
    }

    fn dir(&self, d: &str) -> PathBuf {
        self.sb.path(d)
    }

    /// Submit a file as producers do: written elsewhere, renamed in.
    fn submit(&self, name: &str, data: &[u8]) {
        let tmp = self.dir("tmp").join(name);
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, self.dir("incoming").join(name)).unwrap();
    }

    fn names(&self, d: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// `fspl s3-upload` with -s/-i/-d/-f (as the README example), plus
    /// `extra`.
    fn upload(&self, extra: &[&str]) -> Command {
        let mut c = fspl();
        c.arg("s3-upload")
            .arg("-s")
            .arg(self.dir("incoming"))
            .arg("-i")
            .arg(self.dir("working"));
        c.args(extra);
        c
    }
}

/// A running uploader, its stderr in a file; killed on drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(mut c: Command, log: PathBuf) -> Running {
        let f = std::fs::File::create(&log).unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// "uploaded NAME to key KEY" lines of -v logs, by file name.
fn uploaded_counts(logs: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in logs.iter().flat_map(|l| l.lines()) {
        if let Some(rest) = l.strip_prefix("fspl: info: uploaded ")
            && let Some((name, _)) = rest.split_once(" to key ")
        {
            *m.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn contradictory_flags_are_one_line_usage_errors() {
    let s = Spool::new();
    let (d, f) = (s.dir("completed"), s.dir("failed"));
    let cases: [(&[&str], &str); 6] = [
        (&["-n", "-r", "-d", p(&d)], "-r (--remove) and -d (--dest) contradict"),
        (&["-n", "-d", p(&d), "-R", "-f", p(&f)], "-R (--remove-failed) and -f (--fail) contradict"),
        (&["-n", "--remove", "--dest", p(&d)], "-r (--remove) and -d (--dest) contradict"),
        (&["-d", p(&d)], "no bucket"),
        (&["-d", p(&d), "-b", "x", "--random-no-upload-fail", "0.2"], "only makes sense with -n"),
        (&["-n", "-d", p(&d), "--random-no-upload-fail", "1.5"], "is not a probability"),
    ];
    for (args, want) in cases {
        let out = run(s.upload(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let line = one_line_error(out);
        assert!(line.contains(want), "{args:?}: {line}");
    }
    // A directory that is not there is a configuration error too.
    let mut c = fspl();
    c.args(["s3-upload", "-n", "-s"])
        .arg(s.dir("nonexistent"))
        .arg("-d")
        .arg(&d);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(out).contains("nonexistent"));
}

/// The README's pipeline test: fake uploads failing at random, failed
/// files resubmitted (-f = incoming): every file ends in completed/,
/// uploaded exactly once, none lost.
#[test]
fn fake_uploads_failing_at_random_with_resubmission_end_with_every_file_completed_once() {
    let s = Spool::new();
    let mut up = Running::start(
        s.upload(&[
            "-v",
            "-n",
            "--random-no-upload-fail",
            "0.2",
            "-d",
            p(&s.dir("completed")),
            "-f",
            p(&s.dir("incoming")),
        ]),
        s.dir("log"),
    );
    let n = 60;
    for i in 0..n {
        s.submit(&format!("item-{i:03}"), format!("payload {i}").as_bytes());
    }
    wait_for("every file in completed/", Duration::from_secs(60), || {
        s.names("completed").len() == n
    });
    up.kill();
    let log = up.log();
    assert!(s.names("incoming").is_empty() && s.names("working").is_empty());
    let counts = uploaded_counts(std::slice::from_ref(&log));
    assert_eq!(counts.len(), n, "{log}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    // Some failed and were resubmitted (0.2 of 60: at least one, surely).
    assert!(log.contains("random failure"), "{log}");
    for i in 0..n {
        let name = format!("item-{i:03}");
        assert_eq!(
            std::fs::read(s.dir("completed").join(&name)).unwrap(),
            format!("payload {i}").as_bytes()
        );
    }
}

/// Several uploaders on one spool: each file is claimed (and uploaded) by
/// exactly one of them.
#[test]
fn several_fake_uploaders_on_one_spool_upload_each_file_once() {
    let s = Spool::new();
    let ups: Vec<Running> = (0..3)
        .map(|i| {
            Running::start(
                s.upload(&["-v", "-n", "-j", "2", "-d", p(&s.dir("completed"))]),
                s.dir(&format!("log{i}")),
            )
        })
        .collect();
    let n = 200;
    for i in 0..n {
        s.submit(&format!("f{i:04}"), b"x");
    }
    wait_for("every file in completed/", Duration::from_secs(60), || {
        s.names("completed").len() == n
    });
    let logs: Vec<String> = ups.iter().map(Running::log).collect();
    drop(ups);
    let counts = uploaded_counts(&logs);
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    // More than one uploader did some of the work.
    let busy = logs
        .iter()
        .filter(|l| l.contains("fspl: info: uploaded "))
        .count();
    assert!(busy >= 2, "only {busy} uploader(s) worked");
}

/// `--once`: drains incoming/ and exits; 1 when a file failed (it stays
/// for the next run when resubmitted).
#[test]
fn once_drains_and_exits_one_when_a_file_failed() {
    let s = Spool::new();
    for i in 0..10 {
        s.submit(&format!("a{i}"), b"x");
    }
    let out = run(s.upload(&["--once", "-n", "-d", p(&s.dir("completed"))]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(s.names("completed").len(), 10);
    s.submit("b", b"y");
    let out = run(s.upload(&[
        "--once",
        "-n",
        "--random-no-upload-fail",
        "1",
        "-d",
        p(&s.dir("completed")),
        "-f",
        p(&s.dir("failed")),
    ]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(s.names("failed"), ["b"]);
}

fn daemon_job(name: &str, s: &Spool, extra: &str) -> String {
    use fspl_testkit::q;
    format!(
        "[[job]]\nname = {}\ntype = \"s3-upload\"\nincoming = {}\nworking = {}\ncompleted = {}\n{extra}\n",
        q(name),
        q(s.dir("incoming")),
        q(s.dir("working")),
        q(s.dir("completed")),
    )
}

/// The daemon kind: files landing in `incoming` are uploaded as they
/// arrive; `fspl status` counts them, failed ones and their bytes.
#[test]
fn a_daemon_s3_upload_job_uploads_as_files_land_and_counts_them() {
    use crate::daemon::{Daemon, config};
    let s = Spool::new();
    let text = config(
        &s.sb,
        "",
        &[daemon_job(
            "up",
            &s,
            &format!(
                "no_upload = true\nrandom_no_upload_fail = 0.3\nfailed = {}",
                fspl_testkit::q(s.dir("failed"))
            ),
        )],
    );
    let d = Daemon::start(&s.sb, &text, "human");
    let n = 30;
    for i in 0..n {
        s.submit(&format!("f{i:02}"), b"12345");
    }
    wait_for("every file done", Duration::from_secs(30), || {
        s.names("completed").len() + s.names("failed").len() == n
    });
    let (done, failed) = (s.names("completed").len() as u64, s.names("failed").len() as u64);
    wait_for("the status counts", Duration::from_secs(10), || {
        let j = d.job("up");
        j["jobs_succeeded"].as_u64() == Some(done)
            && j["jobs_failed"].as_u64() == Some(failed)
            && j["bytes"].as_u64() == Some(done * 5)
            && j["queued"].as_u64() == Some(0)
    });
    assert_eq!(d.job("up")["type"], "s3-upload");
}

#[test]
fn daemon_check_refuses_contradictory_s3_upload_settings() {
    let s = Spool::new();
    let text = crate::daemon::config(
        &s.sb,
        "",
        &[daemon_job("up", &s, "no_upload = true\nremove = true")],
    );
    let cfg = s.sb.path("d.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = run({
        let mut c = fspl();
        c.args(["daemon", "--check", "-c"]).arg(&cfg);
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-r (--remove) and -d (--dest) contradict"), "{err}");
}

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
        (
            &["-n", "-r", "-d", p(&d)],
            "-r (--remove) and -d (--dest) contradict",
        ),
        (
            &["-n", "-d", p(&d), "-R", "-f", p(&f)],
            "-R (--remove-failed) and -f (--fail) contradict",
        ),
        (
            &["-n", "--remove", "--dest", p(&d)],
            "-r (--remove) and -d (--dest) contradict",
        ),
        (&["-d", p(&d)], "no bucket"),
        (
            &["-d", p(&d), "-b", "x", "--random-no-upload-fail", "0.2"],
            "only makes sense with -n",
        ),
        (
            &["-n", "-d", p(&d), "--random-no-upload-fail", "1.5"],
            "is not a probability",
        ),
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
    use crate::helper::{Daemon, StartDaemon, config};
    let s = Spool::new();
    let port = fspl_testkit::free_port();
    let text = config(
        &s.sb,
        &format!("metrics = \"127.0.0.1:{port}\""),
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
    let (done, failed) = (
        s.names("completed").len() as u64,
        s.names("failed").len() as u64,
    );
    wait_for("the status counts", Duration::from_secs(10), || {
        let j = d.job("up");
        j["jobs_succeeded"].as_u64() == Some(done)
            && j["jobs_failed"].as_u64() == Some(failed)
            && j["bytes"].as_u64() == Some(done * 5)
            && j["queued"].as_u64() == Some(0)
    });
    assert_eq!(d.job("up")["type"], "s3-upload");
    let series = [
        format!("fspl_s3_upload_files_total{{fspl_job=\"up\",result=\"uploaded\"}} {done}"),
        format!("fspl_s3_upload_files_total{{fspl_job=\"up\",result=\"failed\"}} {failed}"),
        format!("fspl_s3_upload_bytes_total{{fspl_job=\"up\"}} {}", done * 5),
        "fspl_s3_upload_queued_files{fspl_job=\"up\"} 0".to_string(),
        "fspl_s3_upload_uploading_files{fspl_job=\"up\"} 0".to_string(),
    ];
    let mut body = String::new();
    wait_for("the metrics", Duration::from_secs(10), || {
        body = crate::daemon::http_get(port, "/metrics").unwrap_or_default();
        series.iter().all(|l| body.lines().any(|b| b == l))
    });
}

#[test]
fn daemon_check_refuses_contradictory_s3_upload_settings() {
    let s = Spool::new();
    let text = crate::helper::config(
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
    assert!(
        err.contains("-r (--remove) and -d (--dest) contradict"),
        "{err}"
    );
}

// ---------------------------------------------------------------- real S3

use fspl_testkit::s3::S3Server;

const BUCKET: &str = "doodad-results";

/// A started s3s-fs with bucket `b`, its files under the spool's sandbox.
fn server(s: &Spool) -> S3Server {
    let srv = S3Server::start(&s.dir("s3"));
    srv.create_bucket(BUCKET);
    srv
}

/// `s.upload(extra)` talking to `srv`.
fn upload_to(s: &Spool, srv: &S3Server, extra: &[&str]) -> Command {
    let mut c = s.upload(extra);
    srv.configure(&mut c);
    c
}

/// What the server holds under `key` of bucket `b` (s3s-fs keeps each
/// object as a file).
fn object(srv: &S3Server, key: &str) -> Option<Vec<u8>> {
    std::fs::read(srv.data.join(BUCKET).join(key)).ok()
}

/// A payload of `n` bytes that differs at every position (so a misplaced
/// part shows).
fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + i / 4093) as u8) ^ seed).collect()
}

/// Multipart parts of an unfinished upload in the server's data directory.
fn parts_in_flight(srv: &S3Server) -> usize {
    std::fs::read_dir(&srv.data)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
                .count()
        })
        .unwrap_or(0)
}

/// The README's example: -v -b -s -i -d -f; a small file in one PUT, a
/// large one in parts; each object is the file, byte for byte; the files
/// end in completed/.
#[test]
fn readme_flow_uploads_each_file_as_it_lands_and_moves_it_to_completed() {
    let s = Spool::new();
    let srv = server(&s);
    let mut up = Running::start(
        upload_to(
            &s,
            &srv,
            &[
                "-v",
                "-b",
                BUCKET,
                "--part-size",
                "5",
                "-d",
                p(&s.dir("completed")),
                "-f",
                p(&s.dir("failed")),
            ],
        ),
        s.dir("log"),
    );
    let big = payload(12 << 20, 7);
    s.submit("small.txt", b"hello");
    s.submit("big.bin", &big);
    wait_for("both files completed", Duration::from_secs(60), || {
        s.names("completed") == ["big.bin", "small.txt"]
    });
    up.kill();
    assert_eq!(object(&srv, "small.txt").as_deref(), Some(&b"hello"[..]));
    assert!(object(&srv, "big.bin") == Some(big), "big.bin differs");
    assert!(s.names("working").is_empty() && s.names("failed").is_empty());
    let log = up.log();
    assert_eq!(
        uploaded_counts(std::slice::from_ref(&log)).len(),
        2,
        "{log}"
    );
}

/// -r removes uploaded files; --prefix goes before each key.
#[test]
fn remove_flag_removes_uploaded_files_and_prefix_prefixes_keys() {
    let s = Spool::new();
    let srv = server(&s);
    for i in 0..5 {
        s.submit(&format!("r{i}"), format!("data {i}").as_bytes());
    }
    let out = run(upload_to(
        &s,
        &srv,
        &["--once", "-b", BUCKET, "--prefix", "host1/", "-r"],
    ));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for i in 0..5 {
        assert_eq!(
            object(&srv, &format!("host1/r{i}")),
            Some(format!("data {i}").into_bytes())
        );
    }
    assert!(s.names("incoming").is_empty() && s.names("working").is_empty());
}

/// -f = incoming: a file whose upload failed (the server is down, and
/// --tries 1) goes back into incoming/ and is tried again later, until
/// the server is back. -R removes a failed file (bad credentials) instead.
#[test]
fn failed_files_are_resubmitted_with_f_incoming_and_removed_with_big_r() {
    let s = Spool::new();
    let mut srv = server(&s);
    srv.stop();
    let mut up = Running::start(
        upload_to(
            &s,
            &srv,
            &[
                "-v",
                "-b",
                BUCKET,
                "--tries",
                "1",
                "-d",
                p(&s.dir("completed")),
                "-f",
                p(&s.dir("incoming")),
            ],
        ),
        s.dir("log"),
    );
    s.submit("a", b"resubmit me");
    wait_for("two resubmissions", Duration::from_secs(60), || {
        up.log().matches("resubmitted").count() >= 2
    });
    srv.restart();
    wait_for("the file uploaded", Duration::from_secs(90), || {
        s.names("completed") == ["a"]
    });
    up.kill();
    assert_eq!(object(&srv, "a").as_deref(), Some(&b"resubmit me"[..]));

    s.submit("gone", b"x");
    let mut c = upload_to(
        &s,
        &srv,
        &["--once", "-b", BUCKET, "-d", p(&s.dir("completed")), "-R"],
    );
    c.env("AWS_SECRET_ACCESS_KEY", "wrong");
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(s.names("incoming").is_empty() && s.names("working").is_empty());
    assert_eq!(s.names("completed"), ["a"]);
    assert_eq!(object(&srv, "gone"), None);
}

/// Several uploaders on one spool, real uploads: every file becomes one
/// object, uploaded by exactly one uploader.
#[test]
fn several_uploaders_on_one_spool_upload_each_file_exactly_once() {
    let s = Spool::new();
    let srv = server(&s);
    let ups: Vec<Running> = (0..3)
        .map(|i| {
            Running::start(
                upload_to(
                    &s,
                    &srv,
                    &["-v", "-b", BUCKET, "-j", "3", "-d", p(&s.dir("completed"))],
                ),
                s.dir(&format!("log{i}")),
            )
        })
        .collect();
    let n = 90;
    for i in 0..n {
        s.submit(&format!("f{i:03}"), format!("file {i}").as_bytes());
    }
    wait_for("every file completed", Duration::from_secs(90), || {
        s.names("completed").len() == n
    });
    let logs: Vec<String> = ups.iter().map(Running::log).collect();
    drop(ups);
    let counts = uploaded_counts(&logs);
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    assert_eq!(srv.keys(BUCKET).len(), n);
    for i in 0..n {
        assert_eq!(
            object(&srv, &format!("f{i:03}")),
            Some(format!("file {i}").into_bytes())
        );
    }
}

/// The server goes away in the middle of a multipart upload and comes
/// back: the upload is retried and succeeds.
#[test]
fn server_stopped_mid_upload_then_restarted_retries_and_succeeds() {
    let s = Spool::new();
    let mut srv = server(&s);
    let mut up = Running::start(
        upload_to(
            &s,
            &srv,
            &[
                "-v",
                "-b",
                BUCKET,
                "--part-size",
                "5",
                "-j",
                "1",
                "--tries",
                "30",
                "-d",
                p(&s.dir("completed")),
                "-f",
                p(&s.dir("failed")),
            ],
        ),
        s.dir("log"),
    );
    let big = payload(40 << 20, 3);
    s.submit("big", &big);
    wait_for("a part on the server", Duration::from_secs(60), || {
        parts_in_flight(&srv) > 0
    });
    srv.stop();
    std::thread::sleep(Duration::from_secs(1));
    srv.restart();
    wait_for("the file uploaded", Duration::from_secs(120), || {
        s.names("completed") == ["big"]
    });
    up.kill();
    assert!(object(&srv, "big") == Some(big), "the object differs");
    assert!(s.names("failed").is_empty());
}

/// SIGKILL of the uploader in the middle of a multipart upload: no
/// partial object under the key; the file stays in working/, and the next
/// uploader takes it back and uploads it whole.
#[test]
fn sigkill_mid_multipart_leaves_no_partial_object_and_the_next_start_uploads_it() {
    let s = Spool::new();
    let srv = server(&s);
    let mut up = Running::start(
        upload_to(
            &s,
            &srv,
            &[
                "-b",
                BUCKET,
                "--part-size",
                "5",
                "-j",
                "1",
                "-d",
                p(&s.dir("completed")),
            ],
        ),
        s.dir("log"),
    );
    let big = payload(48 << 20, 9);
    s.submit("big", &big);
    wait_for("a part on the server", Duration::from_secs(60), || {
        parts_in_flight(&srv) > 0
    });
    up.kill(); // SIGKILL
    assert_eq!(object(&srv, "big"), None, "a partial object is visible");
    assert!(srv.keys(BUCKET).is_empty(), "{:?}", srv.keys(BUCKET));
    assert_eq!(s.names("working"), ["big"]);
    let out = run(upload_to(
        &s,
        &srv,
        &[
            "--once",
            "-v",
            "-b",
            BUCKET,
            "--part-size",
            "5",
            "-d",
            p(&s.dir("completed")),
        ],
    ));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken back"));
    assert_eq!(s.names("completed"), ["big"]);
    assert!(object(&srv, "big") == Some(big), "the object differs");
}

/// Wrong credentials: one clear error per file, no retries (no storm);
/// the file goes to failed/.
#[test]
fn wrong_credentials_fail_at_once_with_one_clear_error() {
    let s = Spool::new();
    let srv = server(&s);
    s.submit("x", b"x");
    let mut c = upload_to(
        &s,
        &srv,
        &[
            "--once",
            "-b",
            BUCKET,
            "-d",
            p(&s.dir("completed")),
            "-f",
            p(&s.dir("failed")),
        ],
    );
    c.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert_eq!(s.names("failed"), ["x"]);
    assert!(srv.keys(BUCKET).is_empty());
}

/// Uploading a large (sparse) file keeps the uploader's memory flat: its
/// peak RSS stays far below the file's size.
#[test]
fn uploading_a_large_file_keeps_memory_flat() {
    let s = Spool::new();
    let srv = server(&s);
    let f = std::fs::File::create(s.dir("tmp/sparse")).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    std::fs::rename(s.dir("tmp/sparse"), s.dir("incoming/sparse")).unwrap();
    let mut up = Running::start(
        upload_to(&s, &srv, &["-b", BUCKET, "-r", "-j", "1"]),
        s.dir("log"),
    );
    wait_for("the upload", Duration::from_secs(120), || {
        s.names("incoming").is_empty() && s.names("working").is_empty()
    });
    let hwm_kb = fspl_testkit::procs::peak_rss_kib(up.child.id()).expect("VmHWM");
    up.kill();
    let size = std::fs::metadata(srv.data.join(BUCKET).join("sparse"))
        .unwrap()
        .len();
    let _ = std::fs::remove_file(srv.data.join(BUCKET).join("sparse"));
    assert_eq!(size, 256 << 20);
    assert!(hwm_kb < 64 * 1024, "peak RSS {hwm_kb} kB");
}

/// -a public-read reaches the server: the object's ACL grants everyone
/// read (moto: s3s-fs keeps no ACLs).
#[test]
fn acl_flag_reaches_the_server() {
    use fspl_testkit::moto::Moto;
    let s = Spool::new();
    let m = Moto::start(&s.dir("moto.log"));
    m.create_bucket(BUCKET);
    s.submit("pub", b"public data");
    s.submit("priv", b"private data");
    let mut c = s.upload(&[
        "--once",
        "-b",
        BUCKET,
        "-a",
        "public-read",
        "-d",
        p(&s.dir("completed")),
    ]);
    m.configure(&mut c);
    // Only "pub" in this run.
    std::fs::rename(s.dir("incoming/priv"), s.dir("tmp/priv")).unwrap();
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::rename(s.dir("tmp/priv"), s.dir("incoming/priv")).unwrap();
    let mut c = s.upload(&["--once", "-b", BUCKET, "-d", p(&s.dir("completed"))]);
    m.configure(&mut c);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers READ";
    let grants = m.object_grants(BUCKET, "pub");
    assert!(grants.iter().any(|g| g == ALL_USERS), "{grants:?}");
    let grants = m.object_grants(BUCKET, "priv");
    assert!(!grants.iter().any(|g| g == ALL_USERS), "{grants:?}");
    assert_eq!(m.get(BUCKET, "pub"), b"public data");
}

/// An uploader starting on a spool where another one is uploading a file
/// does not take that file back (it is not an orphan): it is uploaded
/// once, by the one that claimed it.
#[test]
fn a_starting_uploader_leaves_alone_the_file_a_live_one_is_uploading() {
    let s = Spool::new();
    let srv = server(&s);
    let mut a = Running::start(
        upload_to(
            &s,
            &srv,
            &[
                "-v",
                "-b",
                BUCKET,
                "--part-size",
                "5",
                "-j",
                "1",
                "-d",
                p(&s.dir("completed")),
            ],
        ),
        s.dir("log-a"),
    );
    let big = payload(48 << 20, 5);
    s.submit("big", &big);
    wait_for("a part on the server", Duration::from_secs(60), || {
        parts_in_flight(&srv) > 0
    });
    let out = run(upload_to(
        &s,
        &srv,
        &["--once", "-v", "-b", BUCKET, "-d", p(&s.dir("completed"))],
    ));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let b_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!b_log.contains("taken back"), "{b_log}");
    assert!(!b_log.contains("uploaded big"), "{b_log}");
    wait_for("the file uploaded", Duration::from_secs(120), || {
        s.names("completed") == ["big"]
    });
    a.kill();
    assert_eq!(uploaded_counts(&[a.log(), b_log]).get("big"), Some(&1));
    assert!(object(&srv, "big") == Some(big), "the object differs");
    assert!(s.names("incoming").is_empty());
}

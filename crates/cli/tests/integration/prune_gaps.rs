//! Issue 17's gaps closed after the first round: `keep_completed` on the
//! `s3-upload` kind (a running daemon pruning the uploader's completed/
//! against a real S3 server, s3s-fs), bytes moved and throughput for the
//! kinds that move bytes (push, sync, s3-upload) in the status table,
//! `--json` and the metrics, and `promtool check metrics` after sync and
//! s3-upload jobs have run. (The grid boundary and the ctime of job files
//! are unit tests in crates/prune.) Every timing is a generous deadline.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use fspl_testkit::prometheus::{self, promtool};
use fspl_testkit::s3::S3Server;
use serde_json::Value;

use crate::helper::*;

const BUCKET: &str = "gaps";

/// Set a file's mtime to `secs_ago` seconds ago.
fn age(path: &Path, secs_ago: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// An uploader's spool in `sb`: incoming/, working/, completed/, and tmp/
/// to write files in before they are renamed into incoming/.
fn spool(sb: &Sandbox) {
    for d in ["incoming", "working", "completed", "tmp"] {
        std::fs::create_dir(sb.path(d)).unwrap();
    }
}

/// Submit a file as producers do (written elsewhere, renamed in), with
/// its mtime `secs_ago` seconds ago.
fn submit(sb: &Sandbox, name: &str, data: &[u8], secs_ago: u64) {
    let tmp = sb.path("tmp").join(name);
    std::fs::write(&tmp, data).unwrap();
    age(&tmp, secs_ago);
    std::fs::rename(&tmp, sb.path("incoming").join(name)).unwrap();
}

/// A `type = "s3-upload"` job on the spool of `sb`, to `srv`'s bucket.
fn upload_job(name: &str, sb: &Sandbox, extra: &str) -> String {
    format!(
        "[[job]]\nname = {}\ntype = \"s3-upload\"\nbucket = \"{BUCKET}\"\nincoming = {}\nworking = {}\ncompleted = {}\n{extra}\n",
        q(name),
        q(sb.path("incoming")),
        q(sb.path("working")),
        q(sb.path("completed")),
    )
}

fn server(sb: &Sandbox) -> S3Server {
    let srv = S3Server::start(&sb.path("s3"));
    srv.create_bucket(BUCKET);
    srv
}

/// Before: `keep_completed` was an unknown key of the s3-upload kind (the
/// issue names it: "an s3-upload with keep_completed = [...]"), so an
/// uploader's completed/ grew without bound. Now a running daemon prunes
/// it with the rules as uploads complete: of five files uploaded (and a
/// month-old file left from before), `last_n:2` keeps the two youngest;
/// every file did reach the server first.
#[test]
fn s3_upload_keep_completed_was_not_a_key_so_completed_grew_without_bound() {
    let sb = Sandbox::new();
    spool(&sb);
    let old = sb.path("completed").join("old.dat");
    std::fs::write(&old, b"from before").unwrap();
    age(&old, 30 * 86_400);
    let srv = server(&sb);
    let text = config(
        &sb,
        "",
        &[upload_job("up", &sb, "keep_completed = [\"last_n:2\"]")],
    );
    let d = Daemon::start_with(&sb, &text, "logfmt", |c| srv.configure(c));
    // Five files a minute apart (by mtime), the youngest last.
    for i in 0..5u64 {
        submit(
            &sb,
            &format!("f{i}.dat"),
            &[b'a' + i as u8; 1000],
            600 - i * 60,
        );
    }
    wait_soon("five objects on the server", || srv.keys(BUCKET).len() == 5);
    let mut keys = srv.keys(BUCKET);
    keys.sort();
    assert_eq!(keys, ["f0.dat", "f1.dat", "f2.dat", "f3.dat", "f4.dat"]);
    wait_soon("completed/ pruned to the two youngest", || {
        names(&sb.path("completed")) == ["f3.dat", "f4.dat"]
    });
    wait_soon("five uploads counted", || {
        d.job("up")["jobs_succeeded"].as_u64() == Some(5)
    });
    // The log (complete once the daemon has stopped): a line per file
    // removed.
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    for f in ["old.dat", "f0.dat", "f1.dat", "f2.dat"] {
        assert!(
            log.lines()
                .any(|l| l.contains("pruned") && l.contains(&format!("file={f}"))),
            "no pruned line for {f}:\n{log}"
        );
    }
    assert_eq!(names(&sb.path("completed")), ["f3.dat", "f4.dat"]);
}

/// `keep_completed` without `completed` (nothing kept to prune) and bad
/// rules are configuration errors at the key's line.
#[test]
fn s3_upload_keep_completed_without_completed_or_with_bad_rules_is_refused() {
    let sb = Sandbox::new();
    spool(&sb);
    let check = |job: String| {
        let cfg = sb.path("d.toml");
        std::fs::write(&cfg, config(&sb, "", &[job])).unwrap();
        let out = run({
            let mut c = fspl();
            c.args(["daemon", "--check", "-c"]).arg(&cfg);
            c
        });
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = check(format!(
        "[[job]]\nname = \"up\"\ntype = \"s3-upload\"\nno_upload = true\nincoming = {}\nworking = {}\nkeep_completed = [\"last_n:2\"]\n",
        q(sb.path("incoming")),
        q(sb.path("working")),
    ));
    assert!(e.contains("keep_completed: only with completed"), "{e}");
    let e = check(upload_job("up", &sb, "keep_completed = []"));
    assert!(e.contains("no keep rules given"), "{e}");
    let e = check(upload_job(
        "up",
        &sb,
        "keep_completed = [\"grid:1x1h | 1x1m\"]",
    ));
    assert!(e.contains("must not shrink"), "{e}");
}

/// The value of the series `series` (exact name and labels) in a scrape.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `fspl status` (the table) of a daemon on `socket`.
fn status_table(socket: &Path) -> String {
    let out = run({
        let mut c = Command::new(fspl_bin());
        c.env("TZ", "UTC").arg("status").arg("--socket").arg(socket);
        c
    });
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{out:?}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Before: the status told the bytes moved and throughput of push and
/// pull jobs in `--json` only (not in the table), and of sync and
/// s3-upload jobs nowhere (no `throughput_bps`, no gauge); and `promtool
/// check metrics` had only seen process, push, pull and prune jobs run
/// (issue 18: "after jobs of every kind have run"). Now a daemon with a
/// sync job, the push carrying its change sets, and an s3-upload job
/// against a real S3 server: each moves bytes; each has
/// `throughput_bps` > 0 in `--json`, its throughput gauge > 0, and a
/// table line with its bytes moved and throughput; and the scrape passes
/// promtool's lint.
#[test]
fn sync_and_s3_upload_had_no_throughput_and_promtool_never_saw_them_run() {
    let sb = Sandbox::new();
    // Sync side alpha, its change sets pushed to beta's inbox.
    let tree = sb.path("alpha/tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big.bin"), noise(200_000, 7)).unwrap();
    let (outbox, inbox, beta) = (
        sb.queue("alpha-outbox"),
        sb.queue("alpha-inbox"),
        sb.queue("beta-inbox"),
    );
    spool(&sb);
    let srv = server(&sb);
    let port = free_port();
    let text = config(
        &sb,
        &format!("metrics = \"127.0.0.1:{port}\""),
        &[
            format!(
                "[[job]]\nname = \"sync-alpha\"\ntype = \"sync\"\ndir = {}\nlocal_name = \"alpha\"\npeer = \"beta\"\noutbox = {}\ninbox = {}\ninterval_min = 1\ninterval_max = 4\n",
                q(&tree),
                q(&outbox),
                q(&inbox),
            ),
            push_job("push-alpha", &outbox, &dir_url(&beta), ""),
            upload_job("up", &sb, ""),
        ],
    );
    let d = Daemon::start_with(&sb, &text, "logfmt", |c| srv.configure(c));
    for i in 0..3u64 {
        submit(&sb, &format!("u{i}.dat"), &vec![b'u'; 100_000], 10);
    }
    let moved = |j: &Value| j["bytes"].as_u64().unwrap_or(0) > 0;
    let fast = |j: &Value| j["throughput_bps"].as_u64().unwrap_or(0) > 0;
    wait_soon("every job moved bytes and measured its throughput", || {
        let (jobs, _) = d.status();
        ["sync-alpha", "push-alpha", "up"].iter().all(|n| {
            jobs.iter()
                .find(|j| j["name"] == *n)
                .is_some_and(|j| moved(j) && fast(j))
        })
    });
    wait_soon("three uploads", || srv.keys(BUCKET).len() == 3);
    wait_soon("the uploads' bytes counted", || {
        d.job("up")["bytes"].as_u64() == Some(300_000)
    });
    assert!(!fspl_testkit::job_names(&beta.join("jobs")).is_empty());

    // The table: bytes moved and throughput at the end of STATE.
    let jobs = d.status().0;
    let table = status_table(&sb.socket());
    for n in ["sync-alpha", "push-alpha", "up"] {
        let j = jobs.iter().find(|j| j["name"] == n).unwrap();
        let bytes = j["bytes"].as_u64().unwrap();
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("no line for {n}:\n{table}"));
        let (_, tail) = line
            .split_once(&format!("; moved {bytes} bytes, "))
            .unwrap_or_else(|| panic!("{n}: no bytes moved:\n{table}"));
        let bps: u64 = tail.strip_suffix(" B/s").unwrap().parse().unwrap();
        assert!(bps > 0, "{table}");
    }

    // The gauges, and promtool's lint over the whole scrape.
    let scrape = || {
        prometheus::http_get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let gauges = [
        "fspl_sync_throughput_bytes_per_second{fspl_job=\"sync-alpha\"}",
        "fspl_transport_throughput_bytes_per_second{fspl_job=\"push-alpha\"}",
        "fspl_s3_upload_throughput_bytes_per_second{fspl_job=\"up\"}",
    ];
    wait_soon("the throughput gauges", || {
        let body = scrape();
        gauges
            .iter()
            .all(|g| sample(&body, g).is_some_and(|v| v > 0.0))
    });
    let body = scrape();
    for kind in ["fspl_sync_files_total", "fspl_s3_upload_files_total"] {
        assert!(body.contains(kind), "{kind} missing:\n{body}");
    }
    let out = promtool(&["check", "metrics"], body.as_bytes());
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (st, text) = d.stop();
    assert!(st.success(), "{text}");
}

//! `fspl prune` and the daemon's `prune` kind (issue 17) on real
//! directories: zrepl's grid boundaries over real mtimes, the dry run
//! agreeing with the real run, files that are not the directory's kind
//! (or still in use) never touched, and a running daemon pruning
//! `.out` files, rejected/, sent/ and completed/.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::helper::wait_soon as wait_for;
use crate::helper::*;

/// Set a file's mtime to `secs_ago` seconds before `base`.
fn age(path: &Path, base: SystemTime, secs_ago: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(base - Duration::from_secs(secs_ago))
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

fn prune<S: AsRef<OsStr>>(args: &[S]) -> std::process::Output {
    let mut c = ours(["prune"]);
    c.args(args);
    run(c)
}

/// zrepl's TestIntervalBoundariesAndAlignment over real files in a
/// rejected/ directory: grid 10m|10m|10m with entries at now, −10m, −20m,
/// −30m, −40m keeps the first four (now itself; an entry on an edge belongs
/// to the younger interval; the last interval includes its older edge). The reason file
/// goes with its job; a file that is not a job (notes.txt) and a
/// temporary are never touched, whatever the rules.
#[test]
fn prune_grid_over_rejected_files_matches_zrepls_boundaries() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let rej = qd.join("rejected");
    std::fs::create_dir(&rej).unwrap();
    let base = SystemTime::now() - Duration::from_secs(3600);
    for (i, mins) in [0u64, 10, 20, 30, 40].iter().enumerate() {
        let job = rej.join(format!("fspl-{i}.fspl"));
        std::fs::write(&job, b"x").unwrap();
        std::fs::write(rej.join(format!("fspl-{i}.fspl.reason")), b"why\n").unwrap();
        age(&job, base, mins * 60);
    }
    std::fs::write(rej.join("notes.txt"), b"mine").unwrap();
    age(&rej.join("notes.txt"), base, 99_999);
    std::fs::write(rej.join(".fspl-tmp-x"), b"t").unwrap();
    let out = prune(&[
        rej.as_os_str(),
        OsStr::new("--keep"),
        OsStr::new("grid:1x10m | 1x10m | 1x10m"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("4 kept, 1 removed"), "{text}");
    assert_eq!(
        names(&rej),
        [
            ".fspl-tmp-x",
            "fspl-0.fspl",
            "fspl-0.fspl.reason",
            "fspl-1.fspl",
            "fspl-1.fspl.reason",
            "fspl-2.fspl",
            "fspl-2.fspl.reason",
            "fspl-3.fspl",
            "fspl-3.fspl.reason",
            "notes.txt"
        ]
    );
    // Each kept line names the rule that kept it, with its time source.
    let kept: Vec<&str> = text.lines().filter(|l| l.contains(" keep ")).collect();
    assert_eq!(kept.len(), 4, "{text}");
    assert!(
        kept.iter().all(|l| l.contains(" mtime fspl-")
            && l.ends_with("(kept by #1 grid:1x10m | 1x10m | 1x10m)")),
        "{text}"
    );
}

/// The dry run says exactly what the real run then removes (a queue's
/// leftover jobs below nextseq and .out files, over two rules), and
/// removes nothing itself; the job at nextseq (not run yet) and the .out
/// file beside it are left alone by both, whatever the rules say.
#[test]
fn prune_dry_run_and_real_run_agree_and_spare_jobs_at_nextseq() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    for s in 1..=6 {
        send(&qd, s, &format!("p{s}"), &[]);
    }
    ok(run(ours([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        qd.as_os_str(),
        OsStr::new("--never-delete"),
        OsStr::new("--output-to"),
        OsStr::new("saveboth"),
        OsStr::new("cat"),
    ])));
    assert_eq!(nextseq(&qd), 7);
    // Seq 7 is waiting; an .out beside it as if it were running.
    let jobs = qd.join("jobs");
    let had = names(&jobs);
    send(&qd, 7, "p7", &[]);
    let seven = names(&jobs).into_iter().find(|n| !had.contains(n));
    let seven_out = format!("{}.out", seven.as_deref().unwrap());
    std::fs::write(jobs.join(&seven_out), b"running").unwrap();
    let before = names(&jobs);
    let rules = [
        "--keep",
        "last_n:2;regex=\\.out$",
        "--keep",
        "last_n:1;regex=\\.fspl$",
    ];
    let mut args: Vec<&OsStr> = vec![qd.as_os_str()];
    args.extend(rules.iter().map(OsStr::new));
    let mut dry = args.clone();
    dry.extend([OsStr::new("--dry-run"), OsStr::new("--json")]);
    let out = prune(&dry);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(names(&jobs), before, "a dry run removes nothing");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v["paths"][0]["entries"].as_array().unwrap();
    let would: Vec<String> = entries
        .iter()
        .filter(|e| e["action"] == "remove")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    // Six jobs below nextseq and six .out files judged: 2 + 1 kept.
    assert_eq!(entries.len(), 12, "{v}");
    assert_eq!(would.len(), 9, "{v}");
    for e in entries {
        let n = e["name"].as_str().unwrap();
        let src = e["time_source"].as_str().unwrap();
        assert_eq!(
            src,
            if n.ends_with(".out") {
                "mtime"
            } else {
                "ctime"
            }
        );
        if e["action"] == "keep" {
            let rule = e["kept_by"][0]["rule"].as_u64().unwrap();
            assert_eq!(rule, if n.ends_with(".out") { 1 } else { 2 }, "{e}");
        }
    }
    let left: Vec<&str> = v["paths"][0]["left_alone"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    let seven = seven.expect("seq 7's file");
    assert!(left.contains(&seven.as_str()), "{v}");
    assert!(left.contains(&seven_out.as_str()), "{v}");
    let out = prune(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let after = names(&jobs);
    let removed: Vec<String> = before
        .iter()
        .filter(|n| !after.contains(n))
        .cloned()
        .collect();
    let mut would_sorted = would.clone();
    would_sorted.sort();
    assert_eq!(
        removed, would_sorted,
        "the real run removes what the dry run said"
    );
    assert!(after.contains(&seven), "the job at nextseq stays");
    assert!(after.contains(&seven_out), "and its .out file");
    // And the queue goes on: seq 7 runs.
    ok(run(ours([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        qd.as_os_str(),
        OsStr::new("cat"),
    ])));
    assert_eq!(nextseq(&qd), 8);
}

/// A directory fspl does not manage, a rule that is wrong, or a path that
/// is not there: exit 2 and nothing removed anywhere (every path is
/// judged before anything is removed).
#[test]
fn prune_refuses_unmanaged_directories_and_bad_rules_removing_nothing() {
    let sb = Sandbox::new();
    let other = sb.path("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("fspl-1.fspl"), b"x").unwrap();
    let sent = sb.path("outbox/sent");
    std::fs::create_dir_all(&sent).unwrap();
    for i in 0..3 {
        std::fs::write(sent.join(format!("fspl-{i}.fspl")), b"x").unwrap();
    }
    let out = prune(&[
        sent.as_os_str(),
        other.as_os_str(),
        OsStr::new("--keep"),
        OsStr::new("last_n:1"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(out).contains("not a directory fspl prunes"),);
    assert_eq!(names(&sent).len(), 3);
    assert_eq!(names(&other).len(), 1);
    for bad in [
        "grid:1x1h | 1x10m",
        "last_n:0",
        "grid:24x1h(keep=0)",
        "regex:(",
        "keep:all",
    ] {
        let out = prune(&[sent.as_os_str(), OsStr::new("--keep"), OsStr::new(bad)]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(one_line_error(out).contains("keep rule"), "{bad}");
        assert_eq!(names(&sent).len(), 3);
    }
    // No rule at all is a usage error, never "remove everything".
    let out = prune(&[sent.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(names(&sent).len(), 3);
}

/// A running daemon prunes: a process job's .out files by its
/// keep_output, and a prune job's rejected/, sent/ and completed/
/// directories every interval, as files keep arriving.
#[test]
fn a_running_daemon_prunes_out_files_rejected_sent_and_completed() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let rej = qd.join("rejected");
    let sent = sb.path("outbox/sent");
    let done = sb.path("up/completed");
    for d in [&rej, &sent, &done] {
        std::fs::create_dir_all(d).unwrap();
    }
    let base = SystemTime::now();
    let fill = |dir: &Path, prefix: &str, n: u64, ext: &str| {
        for i in 0..n {
            let p = dir.join(format!("{prefix}{i}{ext}"));
            std::fs::write(&p, b"x").unwrap();
            age(&p, base, 100 * (n - i));
        }
    };
    fill(&rej, "fspl-r", 5, ".fspl");
    fill(&sent, "fspl-s", 5, ".fspl");
    fill(&done, "obj-", 5, ".bin");
    std::fs::write(sent.join("README"), b"not a job").unwrap();
    let prune_job = format!(
        "[[job]]\nname = \"tidy\"\ntype = \"prune\"\npaths = [{}, {}, {}]\nkeep = [\"last_n:2\"]\ninterval = 1\n",
        q(&rej),
        q(&sent),
        q(&done)
    );
    let text = config(
        &sb,
        "",
        &[
            process_job(
                "run",
                &qd,
                &["cat"],
                "output_to = \"saveboth\"\nkeep_output = [\"last_n:2\"]\npoll_min = 3600\npoll_max = 3600",
            ),
            prune_job,
        ],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    let outs = |qd: &Path| {
        names(&qd.join("jobs"))
            .into_iter()
            .filter(|n| n.ends_with(".out"))
            .count()
    };
    for s in 1..=5 {
        send(&qd, s, &format!("p{s}"), &[]);
    }
    wait_for("five jobs run, two .out files kept", || {
        nextseq(&qd) == 6 && outs(&qd) == 2
    });
    wait_for("the prune job to keep two files in each directory", || {
        names(&rej).len() == 2 && names(&sent).len() == 3 && names(&done).len() == 2
    });
    // The youngest two were kept; the README never touched.
    assert_eq!(names(&rej), ["fspl-r3.fspl", "fspl-r4.fspl"]);
    assert_eq!(names(&sent), ["README", "fspl-s3.fspl", "fspl-s4.fspl"]);
    assert_eq!(names(&done), ["obj-3.bin", "obj-4.bin"]);
    // New arrivals are pruned on the next interval.
    fill(&rej, "fspl-n", 3, ".fspl");
    std::fs::File::options()
        .write(true)
        .open(rej.join("fspl-n2.fspl"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    wait_for("the newest arrival to push the others out", || {
        names(&rej).contains(&"fspl-n2.fspl".to_string()) && names(&rej).len() == 2
    });
    let j = d.job("tidy");
    assert_eq!(j["type"], "prune");
    assert!(j["jobs_succeeded"].as_u64().unwrap() >= 9 + 2, "{j}");
    let (_, log) = d.stop();
    assert!(log.contains("pruned"), "{log}");
}

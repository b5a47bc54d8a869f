//! `queue-status` names what needs attention even when processing can go
//! on (unreadable files, a job that fails every time, refused jobs in
//! `rejected/`, stale temporaries, files below nextseq), and the two ways
//! past a gap with the real numbers; readers with `--trust` say what they
//! checked (`queue-ls` never vouches for a payload it did not read).
//! Exit statuses stay 0 (can progress), 1 (blocked), 2 (cannot tell).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::helper::*;
use crate::security::{PAYLOAD, Setup, fs, must, tamper};

/// `queue-status -q Q EXTRA` as text and as JSON: exit status (the same
/// for both), the text, the document.
fn status(q: &Path, extra: &[&str]) -> (Option<i32>, String, Value) {
    let text = run(fs([OsStr::new("queue-status"), OsStr::new("-q"), q.as_os_str()]).tap(extra));
    let json = run(fs([
        OsStr::new("queue-status"),
        OsStr::new("--json"),
        OsStr::new("-q"),
        q.as_os_str(),
    ])
    .tap(extra));
    assert_eq!(
        text.status.code(),
        json.status.code(),
        "text and --json exit"
    );
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "queue-status --json: {e}: {}",
            String::from_utf8_lossy(&json.stdout)
        )
    });
    (
        text.status.code(),
        String::from_utf8(text.stdout).unwrap(),
        doc,
    )
}

trait Tap {
    fn tap(self, extra: &[&str]) -> Self;
}

impl Tap for std::process::Command {
    fn tap(mut self, extra: &[&str]) -> Self {
        self.args(extra);
        self
    }
}

/// The text's `state:` line, without the label.
fn state_line(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("state:       "))
        .unwrap_or_else(|| panic!("no state line: {text}"))
}

/// The document's `attention` list.
fn attention(doc: &Value) -> Vec<String> {
    doc["attention"]
        .as_array()
        .unwrap_or_else(|| panic!("no attention list: {doc}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// An unsigned job with seq `seq` (payload PAYLOAD), written into `q`.
fn add(t: &Setup, q: &Path, seq: u64) -> String {
    t.write(q, &t.prepare(seq, None, None, &[], &[]))
}

/// `queue-process -q Q EXTRA sh -c SCRIPT`.
fn process(q: &Path, extra: &[&str], script: &str) -> Output {
    run(
        fs([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()])
            .tap(extra)
            .tap(&["sh", "--", "-c", script]),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn queue_status_said_ready_with_unreadable_files_present() {
    let t = Setup::new();
    add(&t, &t.q, 1);
    std::fs::write(t.q.join("jobs/fspl-junk.fspl"), b"not a job").unwrap();
    std::fs::write(t.q.join("jobs/fspl-junk2.fspl"), b"").unwrap();
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0), "a queue that can progress exits 0: {text}");
    assert_eq!(
        state_line(&text),
        "ready: 1 job can run now; attention: 2 unreadable files"
    );
    assert_eq!(doc["state"], "ready");
    assert_eq!(attention(&doc), ["2 unreadable files"]);
    assert_eq!(
        doc["summary"].as_str().unwrap(),
        state_line(&text),
        "summary is the state line"
    );
    // Nothing to look at: no attention at all.
    std::fs::remove_file(t.q.join("jobs/fspl-junk.fspl")).unwrap();
    std::fs::remove_file(t.q.join("jobs/fspl-junk2.fspl")).unwrap();
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(state_line(&text), "ready: 1 job can run now");
    assert_eq!(attention(&doc), Vec::<String>::new());
}

#[test]
fn queue_status_said_ready_while_the_next_job_failed_every_time() {
    let t = Setup::new();
    let first = add(&t, &t.q, 1);
    add(&t, &t.q, 2);
    let before = now();
    let out = process(&t.q, &[], "cat > /dev/null; exit 1");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the job failed (--on-error retry)"
    );
    let after = now();
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0), "retrying is progress: {text}");
    let state = state_line(&text);
    assert!(
        state.starts_with("ready: 2 jobs can run now; attention: job 1 failed at "),
        "{state}"
    );
    assert!(
        state.ends_with(" (command exited with status 1) and will be retried"),
        "{state}"
    );
    let failed = text
        .lines()
        .find(|l| l.starts_with("failed:"))
        .unwrap_or_else(|| panic!("no failed line: {text}"));
    assert!(
        failed.starts_with(&format!("failed:      job 1 ({first}) at ")),
        "{failed}"
    );
    assert!(
        failed.ends_with(": command exited with status 1; it will be retried"),
        "{failed}"
    );
    let f = &doc["last_failure"];
    assert_eq!(f["seq"], 1);
    assert_eq!(f["filename"], first.as_str());
    assert_eq!(f["outcome"], "command exited with status 1");
    let secs = f["time_secs"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&secs),
        "{secs} not in {before}..={after}"
    );
    // The time shown is that one (TZ=UTC).
    let shown = f["time"].as_str().unwrap();
    assert!(state.contains(&format!("failed at {shown} (")), "{state}");
    assert!(shown.ends_with("+00:00"), "{shown}");
    assert_eq!(attention(&doc).len(), 1, "{doc}");

    // Failing again: still recorded, with the new outcome.
    let out = process(&t.q, &[], "cat > /dev/null; exit 7");
    assert_eq!(out.status.code(), Some(1));
    let (_, _, doc) = status(&t.q, &[]);
    assert_eq!(
        doc["last_failure"]["outcome"],
        "command exited with status 7"
    );

    // Once it succeeds, the record is gone and nothing needs attention.
    ok(process(&t.q, &[], "cat > /dev/null"));
    assert!(!t.q.join("last-failure").exists(), "the record is removed");
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(state_line(&text), "idle: no jobs waiting");
    assert!(doc["last_failure"].is_null(), "{doc}");
    assert!(!text.contains("failed:"), "{text}");
}

#[test]
fn a_failure_record_that_no_longer_applies_is_not_shown() {
    let t = Setup::new();
    add(&t, &t.q, 1);
    add(&t, &t.q, 2);
    assert_eq!(process(&t.q, &[], "exit 1").status.code(), Some(1));
    // Skipped on the receiver: job 1 is below nextseq and never runs again.
    must(fs([
        OsStr::new("queue-set-next"),
        OsStr::new("-q"),
        t.q.as_os_str(),
        OsStr::new("2"),
    ]));
    assert!(
        t.q.join("last-failure").exists(),
        "queue-set-next leaves it"
    );
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0));
    assert!(doc["last_failure"].is_null(), "{text}");
    assert_eq!(
        state_line(&text),
        "ready: 1 job can run now; attention: 1 file below next seq (never run again)"
    );
    // A failure under --on-error leave moves on and removes the record.
    assert_eq!(
        process(&t.q, &["--on-error", "leave"], "exit 1")
            .status
            .code(),
        Some(0)
    );
    assert!(!t.q.join("last-failure").exists());
    // A damaged record is no record, and does not stop status.
    std::fs::write(t.q.join("last-failure"), b"seq=banana\n").unwrap();
    let (code, _, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0));
    assert!(doc["last_failure"].is_null());
}

#[test]
fn queue_status_said_idle_with_a_refused_job_in_rejected() {
    let t = Setup::new();
    let unsigned = add(&t, &t.q, 1);
    let out = t.process(&t.q, &[]);
    ok(out);
    assert!(t.q.join("rejected").join(&unsigned).exists());
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        state_line(&text),
        "idle: no jobs waiting; attention: 1 refused job in rejected/"
    );
    assert_eq!(attention(&doc), ["1 refused job in rejected/"]);
    assert_eq!(doc["rejected"][0]["filename"], unsigned.as_str());
}

#[test]
fn queue_status_said_idle_with_a_stale_temporary_file() {
    let t = Setup::new();
    let temp = t.q.join("jobs/.fspl-tmp-0123");
    let f = std::fs::File::create(&temp).unwrap();
    // A writer killed two hours ago (no lock held on it).
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    drop(f);
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        state_line(&text),
        "idle: no jobs waiting; attention: 1 stale temporary file"
    );
    assert_eq!(attention(&doc), ["1 stale temporary file"]);
    // One being written now is no concern.
    std::fs::File::create(t.q.join("jobs/.fspl-tmp-4567")).unwrap();
    let (_, _, doc) = status(&t.q, &[]);
    assert_eq!(attention(&doc), ["1 stale temporary file"]);
}

#[test]
fn queue_status_said_idle_with_files_below_nextseq() {
    let t = Setup::new();
    add(&t, &t.q, 1);
    add(&t, &t.q, 2);
    ok(process(&t.q, &["--never-delete"], "cat > /dev/null"));
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        state_line(&text),
        "idle: no jobs waiting; attention: 2 files below next seq (never run again)"
    );
    assert_eq!(
        attention(&doc),
        ["2 files below next seq (never run again)"]
    );
    assert_eq!(doc["below_next"], 2);
}

#[test]
fn every_attention_case_at_once_is_listed_in_order_and_the_exit_stays_0() {
    let t = Setup::new();
    add(&t, &t.q, 1);
    add(&t, &t.q, 2);
    add(&t, &t.q, 3);
    ok(process(
        &t.q,
        &["--never-delete", "-n", "1"],
        "cat > /dev/null",
    ));
    assert_eq!(process(&t.q, &[], "exit 1").status.code(), Some(1));
    std::fs::write(t.q.join("jobs/fspl-junk.fspl"), b"junk").unwrap();
    let rejected = t.q.join("rejected");
    std::fs::create_dir(&rejected).unwrap();
    std::fs::write(rejected.join("fspl-old.fspl"), b"x").unwrap();
    std::fs::write(rejected.join("fspl-old.fspl.reason"), b"seq 9: because\n").unwrap();
    let temp = std::fs::File::create(t.q.join("jobs/tmp-fspl-1.fspl.tmp")).unwrap();
    temp.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0), "{text}");
    let a = attention(&doc);
    assert_eq!(a.len(), 5, "{a:?}");
    assert!(a[0].starts_with("job 2 failed at "), "{a:?}");
    assert_eq!(
        a[1..],
        [
            "1 unreadable file",
            "1 refused job in rejected/",
            "1 stale temporary file",
            "1 file below next seq (never run again)"
        ]
    );
    assert_eq!(
        state_line(&text),
        format!("ready: 2 jobs can run now; attention: {}", a.join(", "))
    );
}

/// A queue at `dir` (which may hold a space) waiting for seq 3 with seq 5
/// present, and, after seq 3 arrives, for 4.
fn gap_queue(t: &Setup, dir: &str) -> PathBuf {
    let q = t.queue(dir, None);
    add(t, &q, 1);
    add(t, &q, 2);
    ok(process(&q, &[], "cat > /dev/null"));
    add(t, &q, 6);
    q
}

#[test]
fn queue_status_blocked_on_a_gap_did_not_say_how_to_go_on() {
    let t = Setup::new();
    let q = gap_queue(&t, "my queue");
    let shown = q.to_str().unwrap();
    let quoted = format!("'{shown}'");
    let (code, text, doc) = status(&q, &[]);
    assert_eq!(code, Some(1), "blocked exits 1: {text}");
    assert_eq!(
        state_line(&text),
        "blocked: waiting for seq 3; seq 6 present"
    );
    let hints: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("hint:        "))
        .collect();
    assert_eq!(
        hints,
        [
            "to fill the gap, send NOP jobs from the sender: fspl prepare-nop --seq N, for N = 3 to 5"
                .to_string(),
            format!("or give up on seqs 3–5 here: fspl queue-set-next -q {quoted} 6"),
        ]
    );
    assert_eq!(doc["hints"], serde_json::json!(hints));
    assert_eq!(
        doc["gap"],
        serde_json::json!({"waiting_for": 3, "missing_to": 5, "present": 6})
    );
    // Fill two of the three: now one seq is missing, and the hints say so.
    for seq in [3, 5] {
        t.write(&q, &must(fs(["prepare-nop", "--seq", &seq.to_string()])));
    }
    ok(process(&q, &[], "cat > /dev/null"));
    let (code, text, _) = status(&q, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        state_line(&text),
        "blocked: waiting for seq 4; seqs 5–6 present"
    );
    let hints: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("hint:        "))
        .collect();
    assert_eq!(
        hints,
        [
            "to fill the gap, send a NOP job from the sender: fspl prepare-nop --seq 4".to_string(),
            format!("or give up on seq 4 here: fspl queue-set-next -q {quoted} 5"),
        ]
    );
    // The receiver's command runs as shown, and then processing goes on.
    let cmd = hints[1].split_once(": ").unwrap().1;
    let bin_dir = fspl_bin().parent().unwrap().to_path_buf();
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(cmd)
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()));
    ok(run(sh));
    assert_eq!(crate::security::nextseq(&q), 5);
    ok(process(&q, &[], "cat > /dev/null"));
    let (code, text, doc) = status(&q, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(doc["gap"].is_null() && doc["hints"] == serde_json::json!([]));
    assert!(!text.contains("hint:"), "{text}");
}

#[test]
fn the_senders_nop_from_the_hint_fills_the_gap() {
    let t = Setup::new();
    let q = gap_queue(&t, "q2");
    for seq in [3, 4] {
        t.write(&q, &must(fs(["prepare-nop", "--seq", &seq.to_string()])));
    }
    ok(process(&q, &[], "cat > /dev/null"));
    let (_, text, doc) = status(&q, &[]);
    let hint = doc["hints"][0].as_str().unwrap().to_string();
    assert_eq!(
        hint, "to fill the gap, send a NOP job from the sender: fspl prepare-nop --seq 5",
        "{text}"
    );
    let cmd = hint.split_once(": ").unwrap().1;
    let args: Vec<&str> = cmd.split(' ').skip(1).collect();
    t.write(&q, &must(fs(args)));
    ok(process(&q, &[], "cat > /dev/null"));
    assert_eq!(crate::security::nextseq(&q), 7);
}

#[test]
fn queue_ls_trust_vouched_for_a_job_whose_payload_was_tampered() {
    let t = Setup::new();
    let genuine = t.genuine(1);
    let good = t.write(&t.q, &genuine);
    let changed = tamper(&t.genuine(2), |_, _, p| *p = b"evil payload\n".to_vec());
    let bad = t.write(&t.q, &changed);
    let q = t.q.to_str().unwrap();
    let trust = t.trust.to_str().unwrap();

    // The listing reads headers only, and says so on every signed row.
    let ls = String::from_utf8(must(fs(["queue-ls", "-q", q, "--trust", trust]))).unwrap();
    let rows: Vec<&str> = ls.lines().collect();
    assert_eq!(rows.len(), 3, "{ls}");
    assert!(rows[1].contains(&good) && rows[2].contains(&bad), "{ls}");
    for row in &rows[1..] {
        assert!(row.ends_with(" laptop (payload unchecked)"), "{ls}");
    }
    let doc: Value =
        serde_json::from_slice(&must(fs(["queue-ls", "-q", q, "--trust", trust, "--json"])))
            .unwrap();
    for job in doc["jobs"].as_array().unwrap() {
        assert_eq!(job["signer"], "laptop", "{doc}");
        assert_eq!(job["payload_checked"], false, "{doc}");
    }
    // Without --trust: Filespooler's listing, byte for byte.
    let ours_plain = must(fs(["queue-ls", "-q", q]));
    let theirs_plain = ok(run(theirs(["queue-ls", "-q", q])));
    assert_eq!(
        String::from_utf8_lossy(&ours_plain),
        String::from_utf8_lossy(&theirs_plain)
    );
    let plain_json: Value =
        serde_json::from_slice(&must(fs(["queue-ls", "-q", q, "--json"]))).unwrap();
    assert!(
        plain_json["jobs"][0].get("payload_checked").is_none(),
        "{plain_json}"
    );

    // queue-info --trust reads the one job's payload: the tampered one is
    // refused, as queue-process would refuse it; the genuine one is shown.
    let line = one_line_error(run(fs([
        "queue-info",
        "-q",
        q,
        "-j",
        "2",
        "--trust",
        trust,
    ])));
    assert!(
        line.contains(&format!("job 2 ({q}/jobs/{bad}) would be refused: payload")),
        "{line}"
    );
    let info: Value = serde_json::from_slice(&must(fs([
        "queue-info",
        "-q",
        q,
        "-j",
        "1",
        "--trust",
        trust,
        "--json",
    ])))
    .unwrap();
    assert_eq!(info["signer"], "laptop");
    assert_eq!(info["payload_checked"], true);
    // Without --trust, queue-info shows both, as Filespooler does.
    must(fs(["queue-info", "-q", q, "-j", "2"]));
    let plain_info: Value =
        serde_json::from_slice(&must(fs(["queue-info", "-q", q, "-j", "1", "--json"]))).unwrap();
    assert!(plain_info.get("payload_checked").is_none(), "{plain_info}");

    // And queue-process refuses it indeed, after running job 1.
    let out = t.process(&t.q, &[]);
    ok(out);
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    t.not_run(2);
    assert!(t.q.join("rejected").join(&bad).exists());
}

#[test]
fn queue_status_trust_did_not_say_that_payloads_were_not_checked() {
    let t = Setup::new();
    t.write(&t.q, &t.genuine(1));
    let changed = tamper(&t.genuine(2), |_, _, p| *p = b"evil payload\n".to_vec());
    let bad = t.write(&t.q, &changed);
    let unsigned = add(&t, &t.q, 3);
    let trust = t.trust.to_str().unwrap();
    let (code, text, doc) = status(&t.q, &["--trust", trust]);
    assert_eq!(code, Some(0), "{text}");
    // Job 3 would be refused: processing stops there (not counted).
    assert_eq!(
        state_line(&text),
        "ready: 2 jobs can run now; attention: 1 queued job would be refused"
    );
    assert!(
        text.contains(
            "trust:       3 pending jobs: signature, sender, params and queue checked; \
             payloads not read (queue-check --trust reads them)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("refusable:   seq 3, {unsigned}: unsigned job")),
        "{text}"
    );
    assert!(
        !text.contains(&format!("refusable:   seq 2, {bad}")),
        "{text}"
    );
    assert_eq!(
        doc["trust"],
        serde_json::json!({"headers_checked": 3, "payloads_checked": false})
    );
    assert_eq!(
        attention(&doc),
        ["1 queued job would be refused"],
        "the header-refused job only"
    );
    // queue-check reads the payloads and finds the tampered one.
    let out = run(fs([
        OsStr::new("queue-check"),
        OsStr::new("-q"),
        t.q.as_os_str(),
        OsStr::new("--trust"),
        t.trust.as_os_str(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let check = String::from_utf8(out.stdout).unwrap();
    assert!(
        check.contains(&format!("bad:         {bad} (seq 2): payload")),
        "{check}"
    );
    assert!(
        check.contains(
            "trust:       3 pending jobs: signature, sender, params and queue checked, and every payload read\n"
        ),
        "{check}"
    );
    // Without --trust there is no trust line and no trust object.
    let (_, text, doc) = status(&t.q, &[]);
    assert!(!text.contains("trust:"), "{text}");
    assert!(doc["trust"].is_null());
}

/// The `queue-status` example in docs/cli.md is what the command prints
/// for the situation it shows (names, times and the directory aside).
#[test]
fn the_queue_status_example_in_the_cli_reference_is_real_output() {
    let md = std::fs::read_to_string(root().join("docs/cli.md")).unwrap();
    let section = md
        .split_once("### `queue-status` *(fspl)*")
        .expect("a queue-status section")
        .1;
    let shown = section
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .expect("an example block")
        .0;
    let t = Setup::new();
    let set_next = |n: &str| {
        must(fs([
            OsStr::new("queue-set-next"),
            OsStr::new("-q"),
            t.q.as_os_str(),
            OsStr::new(n),
        ]))
    };
    set_next("4");
    let refused = add(&t, &t.q, 4);
    ok(t.process(&t.q, &[]));
    set_next("5");
    let five = add(&t, &t.q, 5);
    let six = add(&t, &t.q, 6);
    assert_eq!(process(&t.q, &[], "exit 1").status.code(), Some(1));
    std::fs::write(t.q.join("jobs/fspl-junk.fspl"), b"junk").unwrap();
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0));
    let time = doc["last_failure"]["time"].as_str().unwrap();
    let mut real = text.replace(t.q.to_str().unwrap(), "/srv/queue");
    real = real.replace(time, "2026-05-04T21:10:07+02:00");
    for name in [refused.as_str(), &five, &six, "fspl-junk.fspl"] {
        real = real.replace(name, "fspl-….fspl");
    }
    assert_eq!(real, shown);
}

#[test]
fn a_gap_hint_did_not_warn_that_an_encrypted_job_may_be_the_missing_one() {
    let t = Setup::new();
    let q = gap_queue(&t, "q3");
    let mut c = fs([
        "prepare",
        "--seq",
        "3",
        "--encrypt-to",
        &t.laptop.public,
        "-i",
    ]);
    c.arg(&t.payload);
    t.write(&q, &must(c));
    let (code, text, doc) = status(&q, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(
        doc["hints"][0], "first give --identity: 1 encrypted job was not read, one may be seq 3",
        "{text}"
    );
    assert_eq!(doc["hints"].as_array().unwrap().len(), 3, "{text}");
    assert_eq!(attention(&doc), ["1 encrypted job not read"]);
    // With the identity, the job is there and nothing is missing.
    let key = t.laptop.secret.to_str().unwrap();
    let (code, text, doc) = status(&q, &["--identity", key]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(doc["hints"], serde_json::json!([]));
}

#[test]
fn queue_status_counted_a_later_seq_with_conflicting_copies_as_runnable_and_said_nothing() {
    let t = Setup::new();
    add(&t, &t.q, 1);
    add(&t, &t.q, 2);
    // Two different jobs claim seq 2: processing will stop there.
    t.write(&t.q, &must(fs(["prepare-nop", "--seq", "2"])));
    let (code, text, doc) = status(&t.q, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        state_line(&text),
        "ready: 1 job can run now; attention: seq 2 is in files with different contents"
    );
    assert_eq!(doc["duplicates"][0]["identical"], false);
}

//! Hardening (issue 11), items 3 and 4, each as an attacker found it on
//! main: real processes, real files, real keys.
//!
//! 3. Crafted headers exhausted memory: 64 MiB of metadata holding nothing
//!    but empty params decoded to 1.6 GB, and a scan kept every decoded
//!    header, so three such files took queue-ls to 4.8 GB and
//!    queue-process (and the daemon) aborted under a memory limit on every
//!    run: the genuine job never ran. Now every reader runs under an
//!    address-space limit over a queue of such files at the largest size
//!    still allowed (and one at the old size), with its peak RSS measured.
//! 4. A keyless re-encoded copy (gzip, zstd, an extra unknown header key)
//!    of a genuine signed job passed every check but blocked the trusted
//!    queue as "seq 1 is in more than one file with different contents".

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fspl_format::{CmdType, Command as JobCommand, Ctime, JobHeader, PREFIX_LEN};

use crate::helper::*;
use crate::reliability_common::clean_fspl;
use crate::reliability_procs::{
    Finished, daemon_config, file_lines, fspl_bounded_with, wait_until,
};
use crate::security::{PAYLOAD, QUEUE_NAME, Setup, fs, tamper};

const LIMIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;
/// Address space every process here may use: far above what a debug
/// build needs (about 100 MiB of mappings, thread stacks included), far
/// below what decoding one hostile header took before (over 400 MiB at
/// 16 MiB, 1.6 GB at 64 MiB), so a reader that decodes without bound
/// aborts at once instead of swapping the machine.
const AS_LIMIT: u64 = 512 << 20;
/// Peak RSS any reader may reach, KiB: one 16 MiB metadata block plus at
/// most 16 MiB decoded, plus the program itself; two hostile headers held
/// at once would already be above it.
const RSS_LIMIT_KB: u64 = 64 * 1024;

// ---- item 3: memory ----

/// A job file around `meta` with valid CRCs.
fn frame(meta: &[u8]) -> Vec<u8> {
    let mut out = fspl_format::MAGIC.to_vec();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_be_bytes());
    out.extend_from_slice(&crc32(meta).to_be_bytes());
    let c = crc32(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(meta);
    out
}

/// How a hostile header fills its metadata.
#[derive(Clone, Copy, Debug)]
enum Filler {
    /// `[]` params: one byte each, a 24-byte vector each decoded.
    EmptyParams,
    /// `[0]` params: two bytes each, 25 bytes decoded.
    OneByteParams,
    /// `[[], []]` env pairs: three bytes each, 48 bytes decoded.
    EmptyEnvPairs,
}

/// Job `seq`, a Command whose metadata is exactly `len` bytes of `filler`
/// (and a short unknown key to make the length exact). Valid CRCs: anyone
/// who can drop a file in the queue can make it.
fn hostile(seq: u8, filler: Filler, len: usize) -> Vec<u8> {
    let build = |n: usize, pad: usize| {
        let mut m = vec![0x84, 0xa3];
        m.extend(b"seq");
        m.push(seq & 0x7f);
        m.extend(b"\xa5ctime\x92\xce\x65\x00\x00\x00\x00");
        m.extend(b"\xa8cmd_type\x81\xa7Command\x82\xa6params\xdd");
        let (params, env) = match filler {
            Filler::EmptyParams => (n, 0),
            Filler::OneByteParams => (n, 0),
            Filler::EmptyEnvPairs => (0, n),
        };
        m.extend((params as u32).to_be_bytes());
        for _ in 0..params {
            match filler {
                Filler::OneByteParams => m.extend(b"\x91\x00"),
                _ => m.push(0x90),
            }
        }
        m.extend(b"\xa3env\xdd");
        m.extend((env as u32).to_be_bytes());
        for _ in 0..env {
            m.extend(b"\x92\x90\x90");
        }
        m.extend(b"\xa3pad\xdb");
        m.extend((pad as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'p', pad));
        m
    };
    let base = build(0, 0).len();
    let per = match filler {
        Filler::EmptyParams => 1,
        Filler::OneByteParams => 2,
        Filler::EmptyEnvPairs => 3,
    };
    let n = (len - base) / per;
    let meta = build(n, len - base - n * per);
    assert_eq!(meta.len(), len);
    frame(&meta)
}

fn genuine(seq: u64) -> Vec<u8> {
    let mut v = JobHeader {
        seq,
        ctime: Ctime {
            secs: 1_700_000_000 + seq as i64,
            nanos: 0,
        },
        cmd_type: CmdType::Command(JobCommand {
            params: vec![b"genuine".to_vec()],
            env: vec![],
        }),
    }
    .encode()
    .unwrap();
    v.extend_from_slice(format!("payload {seq}\n").as_bytes());
    v
}

/// `fspl ARGS` under `AS_LIMIT` and a deadline, peak RSS measured by
/// /usr/bin/time (as `fspl_bounded`, plus the limit).
fn limited<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    fspl_bounded_with(args, None, LIMIT, limit_memory)
}

/// Run the command (and what it starts) with `AS_LIMIT` of address space.
fn limit_memory(c: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: AS_LIMIT,
                rlim_max: AS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The command jobs run: "SEQ FILENAME" appended to LOG.
fn recorder(log: &Path) -> Vec<OsString> {
    vec![
        "sh".into(),
        "--".into(),
        "-c".into(),
        r#"cat > /dev/null; echo "$FSPL_SEQ $FSPL_JOB_FILENAME" >> "$0""#.into(),
        log.as_os_str().to_os_string(),
    ]
}

/// Assert what must hold for every run here: no panic, no signal, one-line
/// messages, peak RSS under the limit.
#[track_caller]
fn check_run(f: &Finished, problems: &mut Vec<String>) {
    eprintln!("{}: peak RSS {} KiB", f.what, f.maxrss_kb);
    problems.extend(f.problems());
    if f.maxrss_kb == 0 || f.maxrss_kb > RSS_LIMIT_KB {
        problems.push(format!(
            "{}: peak RSS {} KiB (limit {RSS_LIMIT_KB})",
            f.what, f.maxrss_kb
        ));
    }
}

/// The hostile files: three at the largest metadata size allowed, one at
/// the 64 MiB the old limit allowed; all claim seq 1, so if any were taken
/// for a job it would also block the genuine one as a conflicting copy.
fn hostile_files(jobs: &Path) -> Vec<String> {
    let files = [
        (
            "fspl-hostile-empty-params.fspl",
            Filler::EmptyParams,
            16 * MIB,
        ),
        (
            "fspl-hostile-byte-params.fspl",
            Filler::OneByteParams,
            16 * MIB,
        ),
        (
            "fspl-hostile-env-pairs.fspl",
            Filler::EmptyEnvPairs,
            16 * MIB,
        ),
        ("fspl-hostile-64mib.fspl", Filler::EmptyParams, 64 * MIB),
    ];
    for (name, filler, len) in files {
        std::fs::write(jobs.join(name), hostile(1, filler, len)).unwrap();
    }
    files.iter().map(|f| f.0.to_string()).collect()
}

/// Regression: three files of 64 MiB of empty params took queue-ls to
/// 4.8 GB (each decoded to 1.6 GB, and the scan kept every header), and
/// under a memory limit queue-process and the daemon aborted on every run,
/// so the genuine job never ran. Now, over max-size hostile headers, every
/// reader stays under 64 MiB (the daemon: 64 MiB over its own idle
/// footprint, measured on an empty queue), reports each hostile file in
/// one line, and
/// the genuine jobs run (by queue-process and by the daemon, which keeps
/// serving its other queue).
#[test]
fn hostile_max_size_headers_exhausted_memory_and_the_genuine_job_never_ran() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let jobs = q.join("jobs");
    let log = sb.path("log");
    std::fs::write(jobs.join("fspl-genuine-1.fspl"), genuine(1)).unwrap();
    let hostile = hostile_files(&jobs);
    let qa = q.as_os_str();
    let qarg = |args: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![args[0].into(), "-q".into(), qa.to_os_string()];
        v.extend(args[1..].iter().map(OsString::from));
        v
    };
    let mut problems = Vec::new();
    let mut peak = 0;

    // Listing: the genuine job and nothing else; in --json each hostile
    // file once under "unreadable", with a one-line error.
    let f = limited(qarg(&["queue-ls"]));
    check_run(&f, &mut problems);
    peak = peak.max(f.maxrss_kb);
    let rows: Vec<String> = f
        .stdout_text()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    if rows.len() != 1 || !rows[0].starts_with("1 ") || !rows[0].ends_with("fspl-genuine-1.fspl") {
        problems.push(format!("queue-ls listed {rows:?}"));
    }
    let f = limited(qarg(&["queue-ls", "--json"]));
    check_run(&f, &mut problems);
    peak = peak.max(f.maxrss_kb);
    match serde_json::from_slice::<serde_json::Value>(&f.stdout) {
        Ok(doc) => {
            let unreadable = doc["unreadable"].as_array().cloned().unwrap_or_default();
            for h in &hostile {
                let n = unreadable
                    .iter()
                    .filter(|u| u["filename"] == h.as_str())
                    .filter(|u| u["error"].as_str().is_some_and(|e| !e.contains('\n')))
                    .count();
                if n != 1 {
                    problems.push(format!("queue-ls --json: {h} reported {n} times"));
                }
            }
        }
        Err(e) => problems.push(format!("queue-ls --json: {e}")),
    }
    // Status and check: each hostile file on one line (of each section),
    // not blocked, the genuine job ready.
    for (args, prefix, code) in [
        (vec!["queue-status"], "unreadable:", 0),
        (vec!["queue-check"], "bad:", 1),
    ] {
        let f = limited(qarg(&args));
        check_run(&f, &mut problems);
        peak = peak.max(f.maxrss_kb);
        let out = f.stdout_text();
        // Each says which limit it broke.
        if !(out.contains("bytes of memory decoded") && out.contains("exceeds the limit of")) {
            problems.push(format!("{}: no reason given:\n{out}", f.what));
        }
        if f.code != Some(code) || !out.contains("state:       ready: 1 job") {
            problems.push(format!("{}: exit {:?}:\n{out}", f.what, f.code));
        }
        for h in &hostile {
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with(prefix) && l.contains(h.as_str()))
                .collect();
            if lines.len() != 1 {
                problems.push(format!("{}: {h} reported as {lines:?}", f.what));
            }
        }
    }

    // Processing: the genuine job runs, once.
    let mut args = qarg(&["queue-process"]);
    args.extend(recorder(&log));
    let f = limited(&args);
    check_run(&f, &mut problems);
    peak = peak.max(f.maxrss_kb);
    if !f.success() {
        problems.push(format!("queue-process: exit {:?}: {}", f.code, f.stderr));
    }
    if file_lines(&log) != ["1 fspl-genuine-1.fspl"] {
        problems.push(format!("queue-process ran {:?}", file_lines(&log)));
    }
    if nextseq(&q) != 2 {
        problems.push(format!("nextseq is {} after queue-process", nextseq(&q)));
    }

    // The daemon: job 2 of the hostile queue and job 1 of a clean queue
    // run; the daemon stays up, under the same limits.
    std::fs::write(jobs.join("fspl-genuine-2.fspl"), genuine(2)).unwrap();
    let clean = sb.queue("clean");
    std::fs::write(clean.join("jobs/fspl-clean-1.fspl"), genuine(1)).unwrap();
    let clean_log = sb.path("clean-log");
    let socket = sb.path("d.sock");
    let cfg = sb.path("daemon.toml");
    // The daemon takes the command as is: `sh -c SCRIPT LOG`.
    let argv = |log: &Path| -> Vec<String> {
        recorder(log)
            .into_iter()
            .filter(|a| a != "--")
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    };
    std::fs::write(
        &cfg,
        daemon_config(
            &socket,
            &[
                ("hostile".into(), q.clone(), argv(&log), String::new()),
                (
                    "clean".into(),
                    clean.clone(),
                    argv(&clean_log),
                    String::new(),
                ),
            ],
        ),
    )
    .unwrap();
    // The daemon's own footprint, idle over an empty queue: what the
    // hostile headers may add to it is the bound (a debug build of
    // fspl-full maps far more of itself than a release one).
    let idle_kb = {
        let empty = sb.queue("empty");
        let (psock, pcfg) = (sb.path("p.sock"), sb.path("probe.toml"));
        std::fs::write(
            &pcfg,
            daemon_config(
                &psock,
                &[(
                    "empty".into(),
                    empty,
                    argv(&sb.path("p.log")),
                    String::new(),
                )],
            ),
        )
        .unwrap();
        let mut p = clean_fspl([OsStr::new("daemon"), OsStr::new("-c"), pcfg.as_os_str()]);
        p.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut probe = p.spawn().expect("start the probe daemon");
        assert!(
            wait_until(LIMIT, || std::os::unix::net::UnixStream::connect(&psock)
                .is_ok()),
            "the probe daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(300));
        let kb = fspl_testkit::procs::peak_rss_kib(probe.id()).expect("the probe daemon's VmHWM");
        let _ = probe.kill();
        let _ = probe.wait();
        kb
    };
    let dlog = sb.path("daemon.log");
    let mut d = clean_fspl([OsStr::new("daemon"), OsStr::new("-c"), cfg.as_os_str()]);
    d.args(["--log-format", "logfmt"])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&dlog).unwrap());
    limit_memory(&mut d);
    let mut daemon = d.spawn().expect("start fspl daemon");
    let ran = wait_until(LIMIT, || {
        file_lines(&log).len() == 2 && file_lines(&clean_log).len() == 1
    });
    let hwm = fspl_testkit::procs::peak_rss_kib(daemon.id());
    let alive = daemon.try_wait().unwrap().is_none();
    // SAFETY: our child.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let exit = wait_until(LIMIT, || daemon.try_wait().unwrap().is_some());
    if !exit {
        let _ = daemon.kill();
    }
    let status = daemon.wait().unwrap();
    let dl = std::fs::read_to_string(&dlog).unwrap_or_default();
    if !ran || !alive {
        problems.push(format!(
            "daemon: ran {:?} and {:?}, alive {alive}: {dl}",
            file_lines(&log),
            file_lines(&clean_log)
        ));
    }
    eprintln!("daemon: peak RSS {hwm:?} KiB, idle {idle_kb} KiB");
    match hwm {
        Some(kb) if kb.saturating_sub(idle_kb) <= RSS_LIMIT_KB => {
            peak = peak.max(kb.saturating_sub(idle_kb))
        }
        other => problems.push(format!(
            "daemon: peak RSS {other:?} KiB, {idle_kb} KiB of it idle (limit: idle + {RSS_LIMIT_KB})"
        )),
    }
    if status.code() != Some(0) || dl.contains("panicked") {
        problems.push(format!("daemon exit {status:?}: {dl}"));
    }
    eprintln!("hostile headers: largest peak RSS {peak} KiB (limit {RSS_LIMIT_KB})");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- item 4: re-encoded copies of a signed job ----

/// `gzip -c` or `zstd -c` of `data`.
fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
    crate::security::require(tool, tool);
    let mut c = Command::new(tool);
    c.arg("-c");
    ok(run_with_input(c, data))
}

/// The same job with one more top-level metadata key ("zzz": "x"), which
/// every reader ignores: CRCs recomputed, signature untouched (anyone can
/// make it).
fn with_extra_key(job: &[u8]) -> Vec<u8> {
    let d = fspl_format::decode(job).unwrap();
    let mut meta = job[PREFIX_LEN..d.header_len as usize].to_vec();
    assert!((0x80..0x8f).contains(&meta[0]), "a fixmap");
    meta[0] += 1;
    meta.extend_from_slice(b"\xa3zzz\xa1x");
    let mut out = frame(&meta);
    out.extend_from_slice(&job[d.header_len as usize..]);
    out
}

/// `queue-process -q Q [--trust TRUST] EXTRA` with a command that records
/// each run ("SEQ FILENAME" in MARKS/log) and its payload (MARKS/ran-SEQ).
fn process(t: &Setup, trust: bool, extra: &[&str]) -> std::process::Output {
    let mut c = fs([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        t.q.as_os_str(),
    ]);
    if trust {
        c.arg("--trust").arg(&t.trust);
    }
    c.args(extra)
        .args(["sh", "--", "-c"])
        .arg(r#"cat > "$0/ran-$FSPL_SEQ"; echo "$FSPL_SEQ $FSPL_JOB_FILENAME" >> "$0/log""#)
        .arg(&t.marks);
    run(c)
}

fn runs(t: &Setup) -> Vec<String> {
    file_lines(&t.marks.join("log"))
}

/// `fspl ARGS -q Q --trust TRUST`.
fn trusted(t: &Setup, args: &[&str]) -> std::process::Output {
    let mut c = fs(args);
    c.arg("-q").arg(&t.q).arg("--trust").arg(&t.trust);
    run(c)
}

fn put(q: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(q.join("jobs").join(name), bytes).unwrap();
}

fn rejected_in(q: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(q.join("rejected"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".reason"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Regression: a gzip or zstd copy of a genuine signed job, or one with an
/// extra unknown header key, passes the signature and digest checks (they
/// cover the job's meaning, not its bytes), and queue-process --trust then
/// stopped with "seq 1 is in more than one file with different contents":
/// anyone able to drop a file blocked a trusted queue. Now copies that pass
/// the trust file and carry the same signed content are one job: it runs
/// once, nextseq advances, the copies go as byte-identical copies do (all
/// deleted; all kept with --never-delete), and status, check and info
/// agree beforehand. Without --trust, bytes decide, as before.
#[test]
fn a_gzip_zstd_or_extra_key_copy_of_a_signed_job_blocked_the_trusted_queue() {
    for never_delete in [false, true] {
        let t = Setup::new();
        let job = t.genuine(1);
        // The first copy by name runs: the plain file, or (second round)
        // the zstd copy, whose payload is decoded and checked.
        let zstd_name = if never_delete {
            "fspl-0-zstd.fspl"
        } else {
            "fspl-3-zstd.fspl"
        };
        let files = [
            ("fspl-1-genuine.fspl", job.clone()),
            ("fspl-2-gzip.fspl", compress("gzip", &job)),
            (zstd_name, compress("zstd", &job)),
            ("fspl-4-extra-key.fspl", with_extra_key(&job)),
        ];
        for (name, bytes) in &files {
            put(&t.q, name, bytes);
        }
        // The copies really differ in bytes.
        for (name, bytes) in &files[1..] {
            assert_ne!(bytes, &job, "{name}");
        }
        let mut names: Vec<String> = files.iter().map(|f| f.0.to_string()).collect();
        names.sort();

        // Without a trust file nothing vouches for the copies: bytes decide.
        let out = process(&t, false, &[]);
        let err = one_line_error(out);
        assert!(err.contains("different contents"), "{err}");
        assert!(runs(&t).is_empty());

        // Status, check and info see one job.
        let st = trusted(&t, &["queue-status"]);
        let text = String::from_utf8_lossy(&st.stdout);
        assert_eq!(st.status.code(), Some(0), "{text}");
        assert!(text.contains("state:       ready: 1 job"), "{text}");
        assert!(
            text.contains(&format!(
                "duplicates:  seq 1 in 4 files, one signed job (run once): {}",
                names.join(", ")
            )),
            "{text}"
        );
        let st = trusted(&t, &["queue-status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        assert_eq!(doc["state"], "ready");
        assert_eq!(doc["duplicates"][0]["identical"], true);
        assert_eq!(doc["duplicates"][0]["same_bytes"], false);
        let ck = trusted(&t, &["queue-check"]);
        assert_eq!(
            ck.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&ck.stdout)
        );
        let info = String::from_utf8(ok(trusted(&t, &["queue-info", "-j", "1"]))).unwrap();
        assert!(info.contains("FSPL_PARAM_2=db"), "{info}");

        // Processed: once, nextseq advances, nothing refused.
        let extra: &[&str] = if never_delete {
            &["--never-delete"]
        } else {
            &[]
        };
        let out = process(&t, true, extra);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("refused"), "{err}");
        assert_eq!(runs(&t), [format!("1 {}", names[0])]);
        assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
        assert_eq!(nextseq(&t.q), 2);
        assert!(rejected_in(&t.q).is_empty());
        if never_delete {
            assert_eq!(file_names(&t.q.join("jobs")), names);
        } else {
            assert!(
                file_names(&t.q.join("jobs")).is_empty(),
                "{:?}",
                file_names(&t.q.join("jobs"))
            );
        }
        // And never again.
        ok(process(&t, true, &[]));
        assert_eq!(runs(&t).len(), 1);
    }
}

/// Two validly signed but different jobs with one seq (only the sender can
/// make that) still block, as before, with or without compressed copies
/// of either, and every reader says so; nothing runs or is refused.
#[test]
fn two_validly_signed_different_jobs_with_one_seq_still_block() {
    let t = Setup::new();
    let a = t.genuine(1);
    let b = t.prepare(
        1,
        Some(&t.laptop.secret),
        Some(QUEUE_NAME),
        &[],
        &["backup", "other"],
    );
    put(&t.q, "fspl-1-a.fspl", &a);
    put(&t.q, "fspl-2-a-gzip.fspl", &compress("gzip", &a));
    put(&t.q, "fspl-3-b.fspl", &b);
    let out = process(&t, true, &[]);
    let err = one_line_error(out);
    assert!(
        err.contains("seq 1 is in more than one file with different contents")
            && err.contains("fspl-1-a.fspl")
            && err.contains("fspl-3-b.fspl"),
        "{err}"
    );
    assert!(runs(&t).is_empty());
    assert_eq!(nextseq(&t.q), 1);
    assert!(rejected_in(&t.q).is_empty());
    assert_eq!(file_names(&t.q.join("jobs")).len(), 3);
    let st = trusted(&t, &["queue-status"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert_eq!(st.status.code(), Some(1), "{text}");
    assert!(
        text.contains("state:       blocked: seq 1 is in 3 files with different contents"),
        "{text}"
    );
    assert!(text.contains("DIFFERENT contents"), "{text}");
    let ck = trusted(&t, &["queue-check"]);
    assert_eq!(ck.status.code(), Some(1));
    let info = one_line_error(trusted(&t, &["queue-info", "-j", "1"]));
    assert!(info.contains("different contents"), "{info}");
}

/// Copies that fail verification next to the genuine job and its
/// re-encoded copy: a gzip copy whose payload was changed (same signed
/// header: it sorts first, so running the first copy unchecked would run
/// it) and a copy with a changed param (bad signature) are refused and
/// moved to rejected/; the genuine job runs once with its own payload.
#[test]
fn a_tampered_copy_is_refused_and_the_genuine_signed_job_runs_once() {
    let t = Setup::new();
    let job = t.genuine(1);
    let mut changed_payload = job.clone();
    let n = changed_payload.len();
    changed_payload[n - 2] ^= 0x01;
    let changed_param = tamper(&job, |h, _, _| {
        if let CmdType::Command(c) = &mut h.cmd_type {
            c.params[1] = b"all".to_vec();
        }
    });
    put(
        &t.q,
        "fspl-0-gzip-changed-payload.fspl",
        &compress("gzip", &changed_payload),
    );
    put(&t.q, "fspl-1-changed-param.fspl", &changed_param);
    put(&t.q, "fspl-5-genuine.fspl", &job);
    put(&t.q, "fspl-6-zstd.fspl", &compress("zstd", &job));
    // Status: the forgery would be refused; the rest is one job, ready.
    let st = trusted(&t, &["queue-status"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert_eq!(st.status.code(), Some(0), "{text}");
    assert!(text.contains("state:       ready: 1 job"), "{text}");
    assert!(
        text.contains("one signed job (run once; 1 other would be refused)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("refusable:") && l.contains("fspl-1-changed-param.fspl")),
        "{text}"
    );
    // Check reads the payloads: both bad copies are reported, not blocked.
    let ck = trusted(&t, &["queue-check", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&ck.stdout).unwrap();
    let bad: Vec<&str> = doc["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["filename"].as_str().unwrap())
        .collect();
    assert_eq!(
        bad,
        [
            "fspl-0-gzip-changed-payload.fspl",
            "fspl-1-changed-param.fspl"
        ]
    );
    assert_eq!(doc["blocked"], false);

    let out = process(&t, true, &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert_eq!(runs(&t), ["1 fspl-5-genuine.fspl"]);
    assert_eq!(std::fs::read(t.marker(1)).unwrap(), PAYLOAD);
    assert_eq!(nextseq(&t.q), 2);
    assert_eq!(
        rejected_in(&t.q),
        [
            "fspl-0-gzip-changed-payload.fspl",
            "fspl-1-changed-param.fspl"
        ]
    );
    let why = |f: &str| {
        std::fs::read_to_string(t.q.join("rejected").join(format!("{f}.reason"))).unwrap()
    };
    assert!(
        why("fspl-0-gzip-changed-payload.fspl").contains("does not match"),
        "{}",
        why("fspl-0-gzip-changed-payload.fspl")
    );
    assert!(why("fspl-1-changed-param.fspl").contains("bad signature"));
    assert_eq!(
        err.lines().filter(|l| l.contains("job refused")).count(),
        2,
        "{err}"
    );
    assert!(
        file_names(&t.q.join("jobs")).is_empty(),
        "{:?}",
        file_names(&t.q.join("jobs"))
    );
}

/// Regression: beside a job carrying its payload length and digest, a copy
/// with a changed payload is refused by queue-process, which then runs the
/// genuine job (with or without a trust file); but queue-status called the
/// queue blocked ("seq 1 is in 2 files with different contents") and
/// queue-info and queue-payload -j 1 failed the same way. Now they judge
/// the copies as queue-process does.
#[test]
fn status_info_and_payload_called_a_changed_copy_a_conflict_that_queue_process_resolves() {
    let t = Setup::new();
    let job = t.prepare(1, None, None, &[], &["backup", "db"]);
    let mut changed = job.clone();
    let n = changed.len();
    changed[n - 2] ^= 0x01;
    // The changed copy sorts first: taking the first unchecked would use it.
    put(&t.q, "fspl-0-changed.fspl", &changed);
    put(&t.q, "fspl-1-genuine.fspl", &job);
    let q = t.q.as_os_str();
    let st = run(fs([OsStr::new("queue-status"), OsStr::new("-q"), q]));
    let text = String::from_utf8_lossy(&st.stdout);
    assert_eq!(st.status.code(), Some(0), "{text}");
    assert!(text.contains("state:       ready: 1 job"), "{text}");
    assert!(
        text.contains(
            "duplicates:  seq 1 in 2 files, 1 would run; 1 other would be refused: \
             fspl-0-changed.fspl, fspl-1-genuine.fspl"
        ),
        "{text}"
    );
    let info = String::from_utf8(ok(run(fs([
        OsStr::new("queue-info"),
        OsStr::new("-q"),
        q,
        OsStr::new("-j"),
        OsStr::new("1"),
    ]))))
    .unwrap();
    assert!(
        info.contains("FSPL_JOB_FILENAME=fspl-1-genuine.fspl"),
        "{info}"
    );
    let payload = ok(run(fs([
        OsStr::new("queue-payload"),
        OsStr::new("-q"),
        q,
        OsStr::new("-j"),
        OsStr::new("1"),
    ])));
    assert_eq!(payload, PAYLOAD);
    let out = process(&t, false, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(runs(&t), ["1 fspl-1-genuine.fspl"]);
    assert_eq!(rejected_in(&t.q), ["fspl-0-changed.fspl"]);
    assert_eq!(nextseq(&t.q), 2);
}

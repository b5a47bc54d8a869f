//! Every `queue-process` and `stdin-process` option, run by both binaries on
//! copies of the same queue: same exit status, same stdout, same files left,
//! same `nextseq`.

use crate::both::*;
use crate::helper::*;

/// A Command job (made by the reference) with this payload.
fn job(seq: u64, payload: &[u8]) -> Vec<u8> {
    make_job(Impl::Ref, seq, &[], &[], Some(payload))
}

fn param_job(seq: u64, params: &[&[u8]]) -> Vec<u8> {
    make_job(Impl::Ref, seq, params, &[], None)
}

fn nop(seq: u64) -> Vec<u8> {
    make_special(Impl::Ref, "prepare-nop", seq)
}

fn fail(seq: u64) -> Vec<u8> {
    make_special(Impl::Ref, "prepare-fail", seq)
}

/// Setup: queue `q` holding these jobs under the names job_name(1..).
fn queue_with(jobs: &[Vec<u8>]) -> impl Fn(&Side) + '_ {
    move |s| {
        s.init("q");
        for (i, j) in jobs.iter().enumerate() {
            s.put_job("q", &job_name(i as u64 + 1), j);
        }
    }
}

fn process(s: &Side, args: &[&str]) -> (Seen, QueueState) {
    let mut a = vec!["queue-process", "-q", "q"];
    a.extend_from_slice(args);
    let o = s.run(&a);
    if s.imp == Impl::Ours && !o.status.success() && o.status.code() != Some(2) {
        // Whatever went wrong, our report is one line.
        let err = String::from_utf8_lossy(&o.stderr);
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("fspl: warning:"))
            .collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].starts_with("fspl: error: "), "{err}");
    }
    (seen(&o), s.state("q"))
}

fn names(ns: &[u64]) -> Vec<String> {
    ns.iter().map(|&n| job_name(n)).collect()
}

/// Prints "got <first payload line>" and fails when that line is "bad".
const JUDGE: &[&str] = &[
    "sh",
    "--",
    "-c",
    r#"read l; echo "got $l"; test "$l" != bad"#,
];

#[test]
fn sequence_and_timestamp_order() {
    // Prepared (so timestamped) in the order 3, 1, 2; seq 5 after a gap; a
    // leftover seq 0 below nextseq.
    let jobs = vec![
        job(3, b"3\n"),
        job(1, b"1\n"),
        job(2, b"2\n"),
        job(5, b"5\n"),
        job(0, b"0\n"),
    ];
    for order in ["sequence", "Sequence", "SEQUENCE"] {
        let (o, st) = same(queue_with(&jobs), |s| {
            process(s, &["--order-by", order, "cat"])
        });
        assert_eq!(o.code, Some(0), "a gap is not an error");
        assert_eq!(o.stdout, "1\n2\n3\n");
        assert_eq!(st.nextseq.as_deref(), Some("4\n"));
        assert_eq!(
            st.job_names(),
            names(&[4, 5]),
            "seq 5 and the old seq 0 stay"
        );
    }
    for order in ["timestamp", "Timestamp", "TIMESTAMP"] {
        let (o, st) = same(queue_with(&jobs), |s| {
            process(s, &["--order-by", order, "cat"])
        });
        assert_eq!(o.code, Some(0));
        assert_eq!(o.stdout, "3\n1\n2\n5\n0\n", "creation order, gaps and all");
        assert_eq!(st.nextseq.as_deref(), Some("1\n"), "nextseq untouched");
        assert!(st.job_names().is_empty());
    }
    // Timestamp order stops at a failure under Retry.
    let jobs = vec![job(2, b"2\n"), job(1, b"bad\n"), job(3, b"3\n")];
    let (o, st) = same(queue_with(&jobs), |s| {
        let mut a = vec!["--order-by", "timestamp"];
        a.extend_from_slice(JUDGE);
        process(s, &a)
    });
    assert_eq!(o.code, Some(1));
    assert_eq!(o.stdout, "got 2\ngot bad\n");
    assert_eq!(st.job_names(), names(&[2, 3]));
    assert_eq!(st.nextseq.as_deref(), Some("1\n"));
}

#[test]
fn on_error_retry_delete_leave_and_never_delete() {
    let jobs = vec![
        job(1, b"ok\n"),
        job(2, b"bad\n"),
        fail(3),
        nop(4),
        job(5, b"ok\n"),
    ];
    let mut results = Vec::new();
    for on_error in [None, Some("retry"), Some("delete"), Some("leave")] {
        for never_delete in [false, true] {
            let (o, st) = same(queue_with(&jobs), |s| {
                let mut a = vec![];
                if let Some(e) = on_error {
                    a.extend_from_slice(&["--on-error", e]);
                }
                if never_delete {
                    a.push("--never-delete");
                }
                a.extend_from_slice(JUDGE);
                process(s, &a)
            });
            results.push((on_error, never_delete, o, st));
        }
    }
    for (on_error, never_delete, o, st) in &results {
        let ctx = format!("--on-error {on_error:?} never_delete={never_delete}");
        match on_error.unwrap_or("retry") {
            "retry" => {
                assert_eq!(o.code, Some(1), "{ctx}");
                assert_eq!(o.stdout, "got ok\ngot bad\n", "{ctx}");
                assert_eq!(st.nextseq.as_deref(), Some("2\n"), "{ctx}");
                let left: &[u64] = if *never_delete {
                    &[1, 2, 3, 4, 5]
                } else {
                    &[2, 3, 4, 5]
                };
                assert_eq!(st.job_names(), names(left), "{ctx}");
            }
            mode => {
                assert_eq!(o.code, Some(0), "{ctx}");
                assert_eq!(o.stdout, "got ok\ngot bad\ngot ok\n", "{ctx}");
                assert_eq!(st.nextseq.as_deref(), Some("6\n"), "{ctx}");
                let left: &[u64] = match (mode, never_delete) {
                    (_, true) => &[1, 2, 3, 4, 5],
                    ("delete", false) => &[],
                    _ => &[2, 3],
                };
                assert_eq!(st.job_names(), names(left), "{ctx}");
            }
        }
    }
    // No option and "retry" are the same thing.
    assert_eq!(results[0].2, results[2].2);
    assert_eq!(results[0].3, results[2].3);
}

#[test]
fn maxjobs_counts_every_job_run_including_nop_and_fail() {
    let jobs = vec![
        job(1, b"1\n"),
        nop(2),
        fail(3),
        job(4, b"4\n"),
        job(5, b"5\n"),
    ];
    for n in ["0", "1", "2", "3", "4", "99"] {
        for opt in ["-n", "--maxjobs"] {
            let (o, st) = same(queue_with(&jobs), |s| {
                process(s, &[opt, n, "--on-error", "leave", "cat"])
            });
            let n: usize = n.parse().unwrap();
            assert_eq!(o.code, Some(0));
            let ran = n.min(5);
            assert_eq!(st.nextseq, Some(format!("{}\n", ran + 1)), "-n {n}");
            let want_out: String = ["1\n", "", "", "4\n", "5\n"][..ran].concat();
            assert_eq!(o.stdout, want_out, "-n {n}");
        }
    }
    let (o, _) = same(queue_with(&jobs), |s| process(s, &["--maxjobs=2", "cat"]));
    assert_eq!(o.stdout, "1\n");
}

#[test]
fn saveboth_keeps_stdout_and_stderr_of_every_job() {
    let jobs = vec![
        job(1, b"one\n"),
        nop(2),
        fail(3),
        job(4, b"bad\n"),
        job(5, b"five\n"),
    ];
    let script =
        r#"read l; echo "out:$l"; echo "err:$l" >&2; echo "out2"; echo "e2" >&2; test "$l" != bad"#;
    let setup = |s: &Side| {
        queue_with(&jobs)(s);
        // A stale, longer .out from an earlier run is truncated.
        s.write(&format!("q/jobs/{}.out", job_name(1)), &vec![b'#'; 1000]);
    };
    for case in ["SaveBoth", "saveboth"] {
        let (o, st) = same(setup, |s| {
            process(
                s,
                &[
                    "--output-to",
                    case,
                    "--on-error",
                    "delete",
                    "sh",
                    "--",
                    "-c",
                    script,
                ],
            )
        });
        assert_eq!(o.code, Some(0));
        assert_eq!(o.stdout, "", "nothing reaches our stdout");
        let out = |n: u64| st.files[&format!("{}.out", job_name(n))].clone().unwrap();
        // Both streams, in the order written, nothing overwritten.
        assert_eq!(out(1), "out:one\nerr:one\nout2\ne2\n");
        assert_eq!(out(2), "", "NOP job: empty .out");
        assert_eq!(out(3), "", "Fail job: empty .out");
        assert_eq!(out(4), "out:bad\nerr:bad\nout2\ne2\n");
        assert_eq!(out(5), "out:five\nerr:five\nout2\ne2\n");
        assert!(st.job_names().is_empty(), ".out files stay, jobs go");
        assert_eq!(st.files.len(), 5);
    }
    // PassBoth (the default, any case): output is ours.
    for args in [&["--output-to", "PASSBOTH"][..], &[]] {
        let (o, job_stderr_passed, st) = same(queue_with(&jobs[..1]), |s| {
            let mut c = s.cmd(["queue-process", "-q", "q"]);
            c.args(args).args(["sh", "--", "-c", script]);
            let out = run(c);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (seen(&out), stderr.contains("err:one\ne2\n"), s.state("q"))
        });
        assert_eq!(o.stdout, "out:one\nout2\n");
        assert!(job_stderr_passed, "stderr of the job reaches our stderr");
        assert!(st.files.is_empty());
    }
}

#[test]
fn allow_job_params_appends_them_after_our_args() {
    let jobs = vec![
        param_job(1, &[b"a b", b"-n"]),
        param_job(2, &[b"\xff", b""]),
        param_job(3, &[]),
    ];
    let script = r#"printf '[%s]' "$@"; echo"#;
    let (o, _) = same(queue_with(&jobs), |s| {
        process(
            s,
            &["--allow-job-params", "sh", "--", "-c", script, "x", "fixed"],
        )
    });
    assert_eq!(o.code, Some(0));
    assert_eq!(o.stdout, "[fixed][a b][-n]\n[fixed][\u{fffd}][]\n[fixed]\n");
    let (o, _) = same(queue_with(&jobs), |s| {
        process(s, &["sh", "--", "-c", script, "x", "fixed"])
    });
    assert_eq!(o.stdout, "[fixed]\n[fixed]\n[fixed]\n", "params ignored");
    // Ignored params are warned about: the reference once per job, we once
    // per run.
    let warnings = |imp: Impl| {
        let s = Side::new(imp);
        queue_with(&jobs)(&s);
        let o = s.run(["queue-process", "-q", "q", "true"]);
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains("allow-job-params"))
            .count()
    };
    assert_eq!(warnings(Impl::Ref), 2);
    assert_eq!(warnings(Impl::Ours), 1);
}

#[test]
fn ignore_payload_does_not_give_the_payload_to_the_command() {
    let jobs = vec![job(1, b"payload\n"), job(2, &vec![b'x'; 100_000])];
    let (o, _) = same(queue_with(&jobs), |s| {
        process(s, &["--ignore-payload", "wc", "--", "-c"])
    });
    assert_eq!(o.code, Some(0));
    assert_eq!(o.stdout, "0\n0\n", "stdin is our (empty) stdin");
    let (o, _) = same(queue_with(&jobs), |s| process(s, &["wc", "--", "-c"]));
    assert_eq!(o.stdout, "8\n100000\n");
}

/// Regression: with --ignore-payload Filespooler leaves the command's stdin
/// alone, so the command reads fspl's own stdin; we gave it /dev/null.
#[test]
fn ignore_payload_gave_the_command_dev_null_instead_of_our_stdin() {
    let jobs = vec![job(1, b"payload 1\n"), nop(2), job(3, b"payload 3\n")];
    // `read` takes one line at a time from a pipe, so each job gets one.
    let script = r#"read l; echo "$FSPL_SEQ got $l""#;
    let (o, st) = same(queue_with(&jobs), |s| {
        let o = s.run_in(
            [
                "queue-process",
                "-q",
                "q",
                "--ignore-payload",
                "sh",
                "--",
                "-c",
                script,
            ],
            b"line 1\nline 2\nline 3\n",
        );
        (seen(&o), s.state("q"))
    });
    assert_eq!(o.code, Some(0));
    assert_eq!(o.stdout, "1 got line 1\n3 got line 2\n");
    assert_eq!(st.nextseq.as_deref(), Some("4\n"));
    // stdin-process: the command inherits our stdin, which is positioned
    // right after the header, so it reads the payload and what follows.
    let mut input = job(1, b"payload\n");
    input.extend_from_slice(b"after\n");
    let r: Vec<Seen> = BOTH
        .iter()
        .map(|i| {
            seen(&run_with_input(
                i.cmd(["stdin-process", "--ignore-payload", "cat"]),
                &input,
            ))
        })
        .collect();
    assert_eq!(r[0], r[1]);
    assert_eq!(r[0].stdout, "payload\nafter\n");
}

#[test]
fn timeout_kills_the_command_and_counts_as_failure() {
    let jobs = vec![job(1, b"1\n"), job(2, b"slow\n"), job(3, b"3\n")];
    // Only the "slow" job sleeps (exec: the timeout kills the command, and
    // no orphan keeps our pipes open). 2 s leaves the quick jobs ample time
    // on a loaded machine.
    let script = r#"read l; echo "$l"; if [ "$l" = slow ]; then exec sleep 60; fi"#;
    let (o, st) = same(queue_with(&jobs), |s| {
        process(s, &["--timeout", "2", "sh", "--", "-c", script])
    });
    assert_eq!(o.code, Some(1));
    assert_eq!(o.stdout, "1\nslow\n");
    assert_eq!(st.nextseq.as_deref(), Some("2\n"));
    assert_eq!(st.job_names(), names(&[2, 3]));
    let (o, st) = same(queue_with(&jobs), |s| {
        process(
            s,
            &[
                "--timeout",
                "2",
                "--on-error",
                "delete",
                "sh",
                "--",
                "-c",
                script,
            ],
        )
    });
    assert_eq!(o.code, Some(0));
    assert_eq!(o.stdout, "1\nslow\n3\n");
    assert_eq!(st.nextseq.as_deref(), Some("4\n"));
    assert!(st.job_names().is_empty());
}

#[test]
fn decoder_reads_compressed_jobs() {
    let gz = |b: &[u8]| ok(run_with_input(std::process::Command::new("gzip"), b));
    let jobs = vec![
        gz(&job(1, b"one\n")),
        gz(&param_job(2, &[b"p"])),
        gz(&nop(3)),
        gz(&job(4, &vec![b'z'; 300_000])),
    ];
    for dec in ["zcat", "gzip -dc"] {
        let (ls, info, payload_len, (o, st)) = same(queue_with(&jobs), |s| {
            let ls = seen(&s.run(["queue-ls", "-q", "q", "-d", dec]));
            let info = seen(&s.run(["queue-info", "-q", "q", "-j", "2", "-d", dec]));
            let payload = s.run(["queue-payload", "-q", "q", "-j", "4", "-d", dec]);
            let p = process(
                s,
                &[
                    "-d",
                    dec,
                    "--allow-job-params",
                    "sh",
                    "--",
                    "-c",
                    "echo $FSPL_SEQ \"$@\" $(wc -c)",
                    "x",
                ],
            );
            (ls, info, payload.stdout.len(), p)
        });
        assert_eq!(ls.code, Some(0));
        assert_eq!(ls.stdout.lines().count(), 5);
        assert!(info.stdout.contains("FSPL_PARAM_1=p\n"));
        assert_eq!(payload_len, 300_000);
        assert_eq!(o.code, Some(0));
        assert_eq!(o.stdout, "1 4\n2 p 0\n4 300000\n");
        assert_eq!(st.nextseq.as_deref(), Some("5\n"));
    }
    // (Without -d the reference skips compressed files, while ours decodes
    // them itself: a deliberate extension, not compared here.)
}

#[test]
fn a_command_that_cannot_start_stops_processing_whatever_on_error_says() {
    let jobs = vec![job(1, b"1\n"), job(2, b"2\n")];
    for extra in [
        &[][..],
        &["--on-error", "delete"],
        &["--on-error", "leave"],
        &["--output-to", "saveboth", "--on-error", "delete"],
        &["--order-by", "timestamp", "--on-error", "delete"],
    ] {
        let (o, st) = same(queue_with(&jobs), |s| {
            let mut a = extra.to_vec();
            a.push("./no-such-command");
            process(s, &a)
        });
        assert_eq!(o.code, Some(1), "{extra:?}");
        assert_eq!(st.nextseq.as_deref(), Some("1\n"), "{extra:?}");
        assert_eq!(st.job_names(), names(&[1, 2]), "{extra:?}");
    }
    // A command that is not executable: the same.
    let (o, st) = same(
        |s| {
            queue_with(&jobs)(s);
            s.write("notexec", b"#!/bin/sh\n");
        },
        |s| process(s, &["--on-error", "delete", "./notexec"]),
    );
    assert_eq!(o.code, Some(1));
    assert_eq!(st.job_names(), names(&[1, 2]));
}

#[test]
fn a_command_killed_by_a_signal_is_a_failure() {
    let jobs = vec![job(1, b"1\n"), job(2, b"2\n")];
    for sig in ["KILL", "TERM", "SEGV"] {
        let script = format!("read l; echo $l; kill -{sig} $$");
        let (o, st) = same(queue_with(&jobs), |s| {
            process(s, &["sh", "--", "-c", &script])
        });
        assert_eq!(o.code, Some(1), "{sig}");
        assert_eq!(o.stdout, "1\n");
        assert_eq!(st.nextseq.as_deref(), Some("1\n"));
        assert_eq!(st.job_names(), names(&[1, 2]));
        let (o, st) = same(queue_with(&jobs), |s| {
            process(s, &["--on-error", "leave", "sh", "--", "-c", &script])
        });
        assert_eq!(o.code, Some(0), "{sig}");
        assert_eq!(o.stdout, "1\n2\n");
        assert_eq!(st.nextseq.as_deref(), Some("3\n"));
        assert_eq!(st.job_names(), names(&[1, 2]));
    }
}

#[test]
fn a_locked_queue_is_refused_at_once() {
    let jobs = vec![job(1, b"1\n")];
    let (o, st) = same(queue_with(&jobs), |s| {
        let lock = std::fs::File::open(s.path("q/nextseq.lock")).unwrap();
        lock.try_lock().unwrap();
        let r = (
            process(s, &["cat"]).0,
            seen(&s.run(["queue-get-next", "-q", "q"])).code,
            seen(&s.run(["queue-set-next", "-q", "q", "5"])).code,
            // Readers take no lock.
            seen(&s.run(["queue-payload", "-q", "q", "-j", "1"])),
        );
        drop(lock);
        (r, s.state("q"))
    });
    assert_eq!(o.0.code, Some(1));
    assert_eq!(o.0.stdout, "");
    assert_eq!((o.1, o.2), (Some(1), Some(1)));
    assert_eq!(o.3.stdout, "1\n");
    assert_eq!(st.nextseq.as_deref(), Some("1\n"));
    assert_eq!(st.job_names(), names(&[1]));
}

#[test]
fn job_environment_and_stdin_in_queue_process() {
    let jobs = vec![make_job(
        Impl::Ref,
        1,
        &[b"p 1"],
        &[("EMPTY", b""), ("X", b"y")],
        Some(b"data\n"),
    )];
    let script = r#"echo "$FSPL_JOB_QUEUEDIR|$FSPL_JOB_FILENAME|$FSPL_JOB_FULLPATH|$FSPL_SEQ|$FSPL_PARAM_1|${FSPL_SET_EMPTY-unset}|$FSPL_SET_X"; test -f "$FSPL_JOB_FULLPATH" && echo present; cat"#;
    for q in ["q", "./q", "q/"] {
        let o = same(queue_with(&jobs), |s| {
            seen(&s.run(["queue-process", "-q", q, "sh", "--", "-c", script]))
        });
        let n = job_name(1);
        assert_eq!(
            o.stdout,
            format!("{q}|{n}|{q}/jobs/{n}|1|p 1||y\npresent\ndata\n"),
            "-q {q}"
        );
    }
}

type StdinCase = (Vec<u8>, Vec<&'static str>, Option<i32>, &'static str);

#[test]
fn stdin_process_exit_status_and_options() {
    // (job, arguments, exit status, stdout)
    let cases: Vec<StdinCase> = vec![
        (job(1, b"in\n"), vec!["cat"], Some(0), "in\n"),
        (job(1, b"in\n"), vec!["false"], Some(1), ""),
        (
            job(1, b"in\n"),
            vec!["sh", "--", "-c", "exit 7"],
            Some(1),
            "",
        ),
        (
            job(1, b"in\n"),
            vec!["sh", "--", "-c", "kill -TERM $$"],
            Some(1),
            "",
        ),
        (job(1, b"in\n"), vec!["./no-such-command"], Some(1), ""),
        (
            job(1, b"in\n"),
            // The command inherits stdin, which holds the payload.
            vec!["--ignore-payload", "wc", "--", "-c"],
            Some(0),
            "3\n",
        ),
        (
            job(1, b"in\n"),
            vec!["--timeout", "1", "sleep", "--", "60"],
            Some(1),
            "",
        ),
        (
            job(1, b"in\n"),
            vec!["--timeout", "30", "cat"],
            Some(0),
            "in\n",
        ),
        (nop(1), vec!["false"], Some(0), ""),
        (fail(1), vec!["true"], Some(1), ""),
        (
            param_job(1, &[b"a b"]),
            vec!["--allow-job-params", "echo", "--", "x"],
            Some(0),
            "x a b\n",
        ),
        (
            param_job(1, &[b"a b"]),
            vec!["echo", "--", "x"],
            Some(0),
            "x\n",
        ),
        (
            make_job(Impl::Ref, 4, &[b"p"], &[("E", b"")], None),
            vec![
                "sh",
                "--",
                "-c",
                r#"echo "$FSPL_SEQ ${FSPL_SET_E-unset} ${FSPL_JOB_FILENAME-unset}""#,
            ],
            Some(0),
            "4  unset\n",
        ),
    ];
    for (jobbytes, args, code, stdout) in &cases {
        let mut results = Vec::new();
        for imp in BOTH {
            let mut a = vec!["stdin-process"];
            a.extend_from_slice(args);
            let o = run_with_input(imp.cmd(&a), jobbytes);
            if imp == Impl::Ours && !o.status.success() {
                let err = String::from_utf8_lossy(&o.stderr);
                let errs: Vec<&str> = err
                    .lines()
                    .filter(|l| l.starts_with("fspl: error: "))
                    .collect();
                assert_eq!(errs.len(), 1, "{args:?}: {err}");
            }
            results.push(seen(&o));
        }
        assert_eq!(results[0], results[1], "{args:?}");
        assert_eq!(results[0].code, *code, "{args:?}");
        assert_eq!(results[0].stdout, *stdout, "{args:?}");
    }
}

/// Regression: a job whose env entry name contains '=' (no `prepare` makes
/// one, but the format allows it) failed as "cannot be run"; Filespooler
/// runs it, the child seeing FSPL_SET_A with value "B=val".
#[test]
fn env_name_with_equals_sign_made_the_job_fail() {
    let base = make_job(Impl::Ref, 1, &[], &[("AXB", b"val")], Some(b"x"));
    // The name is stored as the byte array [0x41, 0x58, 0x42].
    let job = patch_meta(&base, b"\x93\x41\x58\x42", b"\x93\x41\x3d\x42");
    let script = r#"echo "[$FSPL_SET_A]""#;
    let r: Vec<Seen> = BOTH
        .iter()
        .map(|i| {
            seen(&run_with_input(
                i.cmd(["stdin-process", "sh", "--", "-c", script]),
                &job,
            ))
        })
        .collect();
    assert_eq!(r[0], r[1]);
    assert_eq!(r[0].code, Some(0));
    assert_eq!(r[0].stdout, "[B=val]\n");
    let (o, st) = same(queue_with(std::slice::from_ref(&job)), |s| {
        process(s, &["sh", "--", "-c", script])
    });
    assert_eq!(o.stdout, "[B=val]\n");
    assert_eq!(st.nextseq.as_deref(), Some("2\n"));
}

/// A NUL byte in a param or env value cannot be passed to a process. Both
/// binaries refuse such a job under the default --on-error retry (exit 1,
/// job and nextseq kept). (With delete/leave we treat it as a failed job
/// and move on, where the reference stops: not compared.)
#[test]
fn a_nul_byte_in_a_param_or_env_value_fails_the_job() {
    let with_param = patch_meta(
        &make_job(Impl::Ref, 1, &[b"aXb"], &[], None),
        b"\x93\x61\x58\x62",
        b"\x93\x61\x00\x62",
    );
    let with_env = patch_meta(
        &make_job(Impl::Ref, 1, &[], &[("E", b"aXb")], None),
        b"\x93\x61\x58\x62",
        b"\x93\x61\x00\x62",
    );
    for (what, job) in [("param", &with_param), ("env value", &with_env)] {
        for args in [&["true"][..], &["--allow-job-params", "true"]] {
            let mut a = vec!["stdin-process"];
            a.extend_from_slice(args);
            let theirs = run_with_input(Impl::Ref.cmd(&a), job);
            assert_eq!(theirs.status.code(), Some(1), "{what}");
            let o = run_with_input(Impl::Ours.cmd(&a), job);
            assert_eq!(o.status.code(), Some(1), "{what}");
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err.lines().last().unwrap_or("");
            assert!(
                line.starts_with("fspl: error: ") && line.contains("NUL"),
                "{what}: {err}"
            );
        }
        let (o, st) = same(queue_with(std::slice::from_ref(job)), |s| {
            process(s, &["true"])
        });
        assert_eq!(o.code, Some(1), "{what}");
        assert_eq!(st.nextseq.as_deref(), Some("1\n"));
        assert_eq!(st.job_names(), names(&[1]));
    }
}

/// FSPL_* variables already in fspl's own environment reach the command
/// unless the job sets them, in both binaries (stdin-process sets no
/// FSPL_JOB_*, so an inherited one shows through).
#[test]
fn inherited_fspl_variables_pass_through_like_the_reference() {
    let job = make_job(Impl::Ref, 1, &[b"p"], &[("MINE", b"job")], Some(b""));
    let script = "env | grep '^FSPL_' | grep -v CTIME | sort";
    let r: Vec<Seen> = BOTH
        .iter()
        .map(|i| {
            let mut c = i.cmd(["stdin-process", "sh", "--", "-c", script]);
            c.env("FSPL_PARAM_5", "stale")
                .env("FSPL_JOB_FILENAME", "stale")
                .env("FSPL_SEQ", "99")
                .env("FSPL_SET_MINE", "parent")
                .env("FSPL_SET_OTHER", "parent");
            seen(&run_with_input(c, &job))
        })
        .collect();
    assert_eq!(r[0], r[1]);
    assert_eq!(
        r[0].stdout,
        "FSPL_JOB_FILENAME=stale\nFSPL_PARAM_1=p\nFSPL_PARAM_5=stale\nFSPL_SEQ=1\n\
         FSPL_SET_MINE=job\nFSPL_SET_OTHER=parent\n"
    );
}

/// Regression: a job with seq 18446744073709551615 (u64::MAX, which the
/// reference's prepare can emit) ran, then nextseq could not be advanced,
/// so the job stayed at nextseq and ran again on every queue-process. Now
/// it is refused before it runs. (The reference runs it once and wraps
/// nextseq to 0.)
#[test]
fn job_with_the_largest_seq_ran_again_on_every_run() {
    let max = u64::MAX.to_string();
    let job = make_job(Impl::Ref, u64::MAX - 1, &[], &[], Some(b"x"));
    // make_job checks the sequence file advanced; this one is MAX - 1 -> MAX.
    let job = patch_meta(
        &job,
        &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
        &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    let info = ok(run_with_input(Impl::Ref.cmd(["stdin-info"]), &job));
    assert!(info.starts_with(format!("FSPL_SEQ={max}\n").as_bytes()));
    let script = "cat >/dev/null; echo ran >> ran.log";
    for imp in BOTH {
        let s = Side::new(imp);
        queue_with(std::slice::from_ref(&job))(&s);
        ok(s.run(["queue-set-next", "-q", "q", &max]));
        for _ in 0..2 {
            let o = s.run(["queue-process", "-q", "q", "sh", "--", "-c", script]);
            if imp == Impl::Ours {
                let line = one_line_error(o);
                assert!(line.contains(&max), "{line}");
            }
        }
        let ran = std::fs::read_to_string(s.path("ran.log")).unwrap_or_default();
        match imp {
            Impl::Ours => {
                assert_eq!(ran, "", "never run");
                assert_eq!(s.nextseq("q"), Some(format!("{max}\n")));
                assert_eq!(s.state("q").job_names(), names(&[1]));
            }
            Impl::Ref => {
                assert_eq!(ran, "ran\n", "the reference runs it once");
                assert_eq!(s.nextseq("q").as_deref(), Some("0\n"));
            }
        }
    }
}

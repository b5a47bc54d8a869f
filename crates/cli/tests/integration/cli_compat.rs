//! Command-line parity with Filespooler 1.2.4: what is a usage error (exit
//! 2), how `--` and enum values are read, log levels, generated names,
//! help/version, and what happens when stdout is a closed pipe.

use std::process::{Command, Output, Stdio};

use crate::both::*;
use crate::helper::*;

/// Run with both binaries in one sandbox holding a queue `q` with one job.
fn with_queue() -> Side {
    let s = Side::new(Impl::Ours);
    s.init("q");
    s.put_job(
        "q",
        &job_name(1),
        &make_job(Impl::Ref, 1, &[], &[], Some(b"hi\n")),
    );
    s
}

fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn usage_errors_exit_2_with_the_reference_wording() {
    let s = with_queue();
    let cases: &[&[&str]] = &[
        &["queue-ls"],
        &["queue-process", "cat"],
        &["queue-process", "-q", "q"],
        &["queue-process", "-q", "q", "--on-error", "bogus", "cat"],
        &["queue-process", "-q", "q", "--order-by", "seq", "cat"],
        &["queue-process", "-q", "q", "--output-to", "save", "cat"],
        &["queue-process", "-q", "q", "--on-error", "", "cat"],
        &["queue-process", "-q", "q", "--timeout", "0.5", "cat"],
        &["queue-process", "-q", "q", "--timeout", "-1", "cat"],
        &["queue-process", "-q", "q", "-n", "x", "cat"],
        &["queue-process", "-q", "q", "sh", "-c", "x"],
        &["queue-process", "-q", "q", "echo", "x"],
        &["queue-process", "-q", "q", "--", "echo", "x"],
        &[
            "queue-process",
            "-q",
            "q",
            "--never-delete",
            "--never-delete",
            "true",
        ],
        &["queue-info", "-q", "q", "-j", "abc"],
        &["queue-info", "-q", "q", "-j", " 1"],
        &["queue-info", "-q", "q", "-j", "0x1"],
        &["queue-info", "-q", "q"],
        &["queue-payload", "-q", "q", "-j", "-1"],
        &["queue-set-next", "-q", "q", "18446744073709551616"],
        &["queue-set-next", "-q", "q", "-1"],
        &["queue-set-next", "-q", "q"],
        &["queue-ls", "-q", "q", "-q", "q"],
        &["queue-ls", "-q", "q", "-d"],
        &["queue-ls", "-l", "debug", "-q", "q"],
        &["prepare", "-s", "-", "x"],
        &["prepare", "-s", "-", "-i"],
        &["prepare-nop"],
        &["prepare-nop", "-s", "-", "--", "x"],
        &["prepare-set-next", "-s", "sf"],
        &["prepare-set-next", "-s", "sf", "abc"],
        &["stdin-process"],
        &["stdin-process", "--timeout", "1.5", "true"],
        &["stdin-info", "extra"],
        &["gen-uuid", "extra"],
        &["gen-uuid", "-V"],
        &["frobnicate"],
        &["help", "nosuch"],
        &["-l", "6", "gen-uuid"],
        &["-l", "warning", "gen-uuid"],
        &["-l"],
        &["-l", "info"],
        &[],
    ];
    for args in cases {
        let ours = run(s.cmd_of(Impl::Ours, *args));
        let theirs = run(s.cmd_of(Impl::Ref, *args));
        assert_eq!(theirs.status.code(), Some(2), "reference, {args:?}");
        assert_eq!(ours.status.code(), Some(2), "ours, {args:?}");
        assert!(ours.stdout.is_empty(), "{args:?}");
        // Same first line (clap's message, same option and value names),
        // except with no subcommand, where the first line is the about text.
        if !args.is_empty() {
            assert_eq!(
                first_line(&ours.stderr),
                first_line(&theirs.stderr),
                "{args:?}"
            );
        }
    }
    // Nothing was touched.
    assert_eq!(s.state("q").job_names(), vec![job_name(1)]);
    assert_eq!(s.nextseq("q").as_deref(), Some("1\n"));
    assert!(!s.path("sf").exists());
}

/// Regression: Filespooler reads `--on-error`, `--order-by` and
/// `--output-to` values with surrounding whitespace removed (`' Delete'`);
/// we rejected them as usage errors.
#[test]
fn enum_values_with_surrounding_whitespace_are_accepted() {
    for (opt, val) in [
        ("--on-error", " Delete"),
        ("--on-error", "LEAVE\n"),
        ("--on-error", "\tretry "),
        ("--order-by", " TimeStamp "),
        ("--order-by", "sequence\u{a0}"),
        ("--output-to", " SaveBoth"),
        ("--output-to", "passboth "),
    ] {
        let (out, _state) = same(
            |s| {
                s.init("q");
                s.put_job(
                    "q",
                    &job_name(1),
                    &make_special(Impl::Ref, "prepare-fail", 1),
                );
                s.put_job(
                    "q",
                    &job_name(2),
                    &make_job(Impl::Ref, 2, &[], &[], Some(b"x")),
                );
            },
            |s| {
                let o = s.run(["queue-process", "-q", "q", opt, val, "cat"]);
                (seen(&o), s.state("q"))
            },
        );
        assert_ne!(out.code, Some(2), "{opt} {val:?} is accepted");
    }
}

#[test]
fn enum_values_are_case_insensitive() {
    let (out, state) = same(
        |s| {
            s.init("q");
            s.put_job(
                "q",
                &job_name(1),
                &make_special(Impl::Ref, "prepare-fail", 1),
            );
            s.put_job(
                "q",
                &job_name(2),
                &make_job(Impl::Ref, 2, &[], &[], Some(b"2\n")),
            );
        },
        |s| {
            let o = s.run([
                "queue-process",
                "-q",
                "q",
                "--on-error",
                "dElEtE",
                "--order-by",
                "SEQUENCE",
                "--output-to",
                "SaveBOTH",
                "cat",
            ]);
            (seen(&o), s.state("q"))
        },
    );
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout, "", "SaveBoth: nothing on our stdout");
    assert_eq!(
        state.job_names(),
        Vec::<&str>::new(),
        "Delete removed the Fail job"
    );
    assert_eq!(
        state.files[&format!("{}.out", job_name(2))].as_deref(),
        Some("2\n")
    );
    assert_eq!(state.nextseq.as_deref(), Some("3\n"));
}

#[test]
fn everything_after_the_first_double_dash_is_passed_through() {
    let (out, _) = same(
        |s| {
            s.init("q");
            s.put_job("q", &job_name(1), &make_job(Impl::Ref, 1, &[], &[], None));
        },
        |s| {
            let o = s.run([
                "queue-process",
                "-q",
                "q",
                "--never-delete",
                "echo",
                "--",
                "-n",
                "--",
                "x",
                "-q",
            ]);
            (seen(&o), s.state("q"))
        },
    );
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout, "-- x -q", "echo got -n -- x -q");

    // prepare stores them all as params.
    for imp in BOTH {
        let job = ok(run(
            imp.cmd(["prepare", "-s", "-", "--", "-n", "--", "x", "-s"])
        ));
        for reader in BOTH {
            let info = ok(run_with_input(reader.cmd(["stdin-info"]), &job));
            let info = String::from_utf8(info).unwrap();
            assert!(
                info.ends_with(
                    "FSPL_PARAM_1=-n\nFSPL_PARAM_2=--\nFSPL_PARAM_3=x\nFSPL_PARAM_4=-s\n"
                ),
                "{imp:?} made, {reader:?} read: {info}"
            );
        }
    }
    // stdin-process too.
    let job = make_job(Impl::Ref, 1, &[], &[], None);
    let r: Vec<Seen> = BOTH
        .iter()
        .map(|i| {
            seen(&run_with_input(
                i.cmd(["stdin-process", "echo", "--", "a", "--", "-e"]),
                &job,
            ))
        })
        .collect();
    assert_eq!(r[0], r[1]);
    assert_eq!(r[0].stdout, "a -- -e\n");
}

#[test]
fn options_take_long_and_short_forms() {
    let s = with_queue();
    for args in [
        &["queue-ls", "--queuedir=q"][..],
        &["queue-ls", "-qq"],
        &["queue-ls", "-q=q"],
        &["queue-ls", "--queuedir", "q", "--decoder=cat"],
        &["queue-info", "-q", "q", "--job=1"],
        &["queue-info", "-q", "q", "-j", "+1"],
        &["queue-info", "-q", "q", "-j", "001"],
        &[
            "queue-payload",
            "--queuedir",
            "q",
            "--job",
            "1",
            "-d",
            "cat",
        ],
    ] {
        let a = seen(&run(s.cmd_of(Impl::Ours, args)));
        let b = seen(&run(s.cmd_of(Impl::Ref, args)));
        assert_eq!(a, b, "{args:?}");
        assert_eq!(a.code, Some(0), "{args:?}");
    }
}

#[test]
fn log_levels_any_case_or_1_to_5() {
    for (level, accepted) in [
        ("trace", true),
        ("DEBUG", true),
        ("Info", true),
        ("wArN", true),
        ("error", true),
        ("1", true),
        ("5", true),
        ("03", true),
        ("+3", true),
        ("0", false),
        ("6", false),
        ("warning", false),
        (" debug", false),
        ("info ", false),
        ("", false),
    ] {
        for imp in BOTH {
            let o = run(imp.cmd(["-l", level, "gen-uuid"]));
            let want = if accepted { Some(0) } else { Some(2) };
            assert_eq!(o.status.code(), want, "{imp:?} -l {level:?}");
            let o = run(imp.cmd([&format!("--log-level={level}"), "gen-uuid"]));
            assert_eq!(o.status.code(), want, "{imp:?} --log-level={level:?}");
        }
    }
}

#[test]
fn log_level_error_silences_our_warnings() {
    // A job with params, run without --allow-job-params, warns at WARN.
    let job = make_job(Impl::Ref, 1, &[b"p"], &[], None);
    for (level, warns) in [("warn", true), ("ERROR", false), ("2", true), ("1", false)] {
        let o = run_with_input(ours(["-l", level, "stdin-process", "true"]), &job);
        assert!(o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.contains("warning"), warns, "-l {level}: {err}");
    }
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .filter(|(i, _)| ![8, 13, 18, 23].contains(i))
            .all(|(_, c)| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

#[test]
fn gen_uuid_and_gen_filename_have_the_reference_format() {
    for imp in BOTH {
        let mut seen_ids = std::collections::HashSet::new();
        for _ in 0..3 {
            let u = String::from_utf8(ok(run(imp.cmd(["gen-uuid"])))).unwrap();
            let u = u.strip_suffix('\n').expect("one line");
            assert!(is_uuid_v4(u), "{imp:?}: {u:?}");
            assert!(seen_ids.insert(u.to_string()));
            let f = String::from_utf8(ok(run(imp.cmd(["gen-filename"])))).unwrap();
            let f = f.strip_suffix('\n').expect("one line");
            let inner = f
                .strip_prefix("fspl-")
                .and_then(|r| r.strip_suffix(".fspl"))
                .unwrap_or_else(|| panic!("{imp:?}: {f:?}"));
            assert!(is_uuid_v4(inner), "{imp:?}: {f:?}");
            assert!(seen_ids.insert(inner.to_string()));
        }
    }
}

#[test]
fn show_license_prints_our_mit_license() {
    let ours_text = String::from_utf8(ok(run(ours(["show-license"])))).unwrap();
    assert!(ours_text.contains("MIT License"), "{ours_text}");
    assert!(ours_text.contains("Permission is hereby granted"));
    assert!(!ours_text.contains("GNU"), "{ours_text}");
    let license = std::fs::read_to_string(root().join("LICENSE")).unwrap();
    assert!(ours_text.contains(&license));
    // (The reference prints its GPL notice: we are not it.)
    let theirs = String::from_utf8(ok(run(theirs(["show-license"])))).unwrap();
    assert!(theirs.contains("GNU"));
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for args in [
        &["-h"][..],
        &["--help"],
        &["help"],
        &["help", "queue-process"],
        &["queue-ls", "--help"],
        &["queue-process", "-h"],
        &["-V"],
        &["--version"],
        &["-V", "gen-uuid"],
    ] {
        for imp in BOTH {
            let o = run(imp.cmd(args));
            assert_eq!(o.status.code(), Some(0), "{imp:?} {args:?}");
            assert!(!o.stdout.is_empty(), "{imp:?} {args:?}");
            assert!(o.stderr.is_empty(), "{imp:?} {args:?}");
        }
    }
    // -V: the version alone; --version: also the features compiled in.
    let v = String::from_utf8(ok(run(ours(["-V"])))).unwrap();
    assert_eq!(v, format!("fspl {}\n", env!("CARGO_PKG_VERSION")));
    let v = String::from_utf8(ok(run(ours(["--version"])))).unwrap();
    let features: Vec<&str> = [
        // In every build.
        ("daemon", true),
        ("s3", cfg!(feature = "s3")),
        ("nats", cfg!(feature = "nats")),
        ("failpoints", cfg!(feature = "failpoints")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let list = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(", ")
    };
    assert_eq!(
        v,
        format!("fspl {} (features: {list})\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Spawn with stdout connected to a pipe whose read end is already closed.
fn run_into_closed_pipe(mut c: Command, stdin: Option<&std::path::Path>) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    c.stdout(writer).stderr(Stdio::piped());
    match stdin {
        Some(p) => c.stdin(std::fs::File::open(p).unwrap()),
        None => c.stdin(Stdio::null()),
    };
    c.output().unwrap()
}

#[test]
fn read_only_commands_exit_quietly_on_a_closed_stdout() {
    let s = Side::new(Impl::Ours);
    s.init("q");
    let big = make_job(Impl::Ref, 1, &[b"p"], &[], Some(&vec![b'x'; 300_000]));
    s.put_job("q", &job_name(1), &big);
    s.write("job.fspl", &big);
    let job = s.path("job.fspl");
    let cases: &[(&[&str], bool)] = &[
        (&["queue-ls", "-q", "q"], false),
        (&["queue-ls", "-q", "q", "--json"], false),
        (&["queue-info", "-q", "q", "-j", "1"], false),
        (&["queue-payload", "-q", "q", "-j", "1"], false),
        (&["queue-payload", "-q", "q", "-j", "1", "-d", "cat"], false),
        (&["queue-get-next", "-q", "q"], false),
        (&["stdin-info"], true),
        (&["stdin-payload"], true),
        (&["gen-uuid"], false),
        (&["gen-filename"], false),
        (&["show-license"], false),
        (&["prepare-get-next", "-s", "seq"], false),
        (&["--help"], false),
        (&["--version"], false),
    ];
    for (args, needs_stdin) in cases {
        let o = run_into_closed_pipe(s.cmd_of(Impl::Ours, *args), needs_stdin.then_some(&*job));
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The reference reports an error (a deliberate difference).
    let o = run_into_closed_pipe(
        s.cmd_of(Impl::Ref, ["queue-payload", "-q", "q", "-j", "1"]),
        None,
    );
    assert!(!o.status.success());
    // Nothing changed in the queue.
    assert_eq!(s.state("q").job_names(), vec![job_name(1)]);
}

#[test]
fn prepare_into_a_closed_pipe_fails_and_keeps_the_sequence_number() {
    for kind in [
        &["prepare", "-s", "seq"][..],
        &["prepare", "-s", "seq", "-i", "payload", "--", "a"],
        &["prepare-nop", "-s", "seq"],
        &["prepare-fail", "-s", "seq"],
    ] {
        for imp in BOTH {
            let s = Side::new(imp);
            s.write("seq", b"5\n");
            s.write("payload", &vec![b'p'; 200_000]);
            let o = run_into_closed_pipe(s.cmd(kind), None);
            let after = String::from_utf8(s.read("seq")).unwrap();
            match imp {
                Impl::Ours => {
                    assert_eq!(o.status.code(), Some(1), "{kind:?}");
                    let line = one_line_error(o);
                    assert!(line.contains("job 5"), "{line}");
                    assert_eq!(after, "5\n", "ours: the number is not used up");
                }
                // Filespooler uses the number up, so the receiver waits for
                // a job 5 that never comes (and when the job is small it
                // even exits 0: its buffered write fails unnoticed).
                Impl::Ref => assert_eq!(after, "6\n", "reference, {kind:?}"),
            }
        }
    }
}

/// The reader goes away in the middle of the payload: the header (and thus
/// the number) went out, so the number is used and the error says how to
/// fill the gap.
#[test]
fn prepare_whose_reader_leaves_mid_payload_names_the_gap() {
    use std::io::Read;
    let s = Side::new(Impl::Ours);
    s.write("seq", b"7\n");
    s.write("payload", &vec![b'p'; 2_000_000]);
    let mut c = s.cmd(["prepare", "-s", "seq", "-i", "payload"]);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 30];
    stdout.read_exact(&mut head).unwrap();
    assert_eq!(&head[..12], b"*FILESPOOLER");
    drop(stdout);
    let o = child.wait_with_output().unwrap();
    let line = one_line_error(o);
    assert!(line.contains("job 7"), "{line}");
    assert!(line.contains("prepare-nop --seq 7"), "{line}");
    assert_eq!(s.read("seq"), b"8\n");
}

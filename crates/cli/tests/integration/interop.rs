//! Interoperability with Filespooler 1.2.4: jobs made by either binary are
//! read and run identically by both, prepared files are byte-identical
//! (apart from the creation time), and a queue can change hands between the
//! two binaries in the middle of its life.

use crate::both::*;
use crate::helper::*;

/// A kind of job, made the same way by either binary.
struct Variant {
    name: &'static str,
    args: Vec<Vec<u8>>,
    env: Vec<(&'static str, Vec<u8>)>,
    payload: Option<Vec<u8>>,
    /// "prepare-nop" or "prepare-fail" instead of `prepare`.
    special: Option<&'static str>,
}

impl Variant {
    fn make(&self, imp: Impl, seq: u64) -> Vec<u8> {
        match self.special {
            Some(kind) => make_special(imp, kind, seq),
            None => {
                let args: Vec<&[u8]> = self.args.iter().map(|a| a.as_slice()).collect();
                let env: Vec<(&str, &[u8])> =
                    self.env.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                make_job(imp, seq, &args, &env, self.payload.as_deref())
            }
        }
    }

    /// The payload a reader must get back.
    fn expected_payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or(b"")
    }
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "plain",
            args: vec![b"hello".to_vec()],
            env: vec![],
            payload: Some(b"Hi\n".to_vec()),
            special: None,
        },
        Variant {
            name: "awkward params",
            args: vec![
                b"two words".to_vec(),
                b"line\nbreak".to_vec(),
                b"\xff\xfe\x80 not utf-8".to_vec(),
                b"".to_vec(),
                b"--".to_vec(),
                b"-n".to_vec(),
                b"=".to_vec(),
            ],
            env: vec![],
            payload: Some(b"payload with\0NUL\n".to_vec()),
            special: None,
        },
        Variant {
            name: "env",
            args: vec![],
            env: vec![
                ("EMPTY", b"".to_vec()),
                ("FOO", b"bar baz".to_vec()),
                ("MULTI", b"l1\nl2".to_vec()),
                ("BIN", b"\xff\x01".to_vec()),
            ],
            payload: Some(b"x".to_vec()),
            special: None,
        },
        Variant {
            name: "empty payload",
            args: vec![b"only a param".to_vec()],
            env: vec![],
            payload: None,
            special: None,
        },
        Variant {
            name: "NOP",
            args: vec![],
            env: vec![],
            payload: None,
            special: Some("prepare-nop"),
        },
        Variant {
            name: "Fail",
            args: vec![],
            env: vec![],
            payload: None,
            special: Some("prepare-fail"),
        },
        Variant {
            name: "1 MB payload",
            args: vec![b"big".to_vec()],
            env: vec![("K", b"v".to_vec())],
            payload: Some(noise(1 << 20, 7)),
            special: None,
        },
    ]
}

#[test]
fn jobs_made_by_either_binary_read_the_same_with_both() {
    for (i, v) in variants().iter().enumerate() {
        let seq = 10 + i as u64;
        for maker in BOTH {
            let job = v.make(maker, seq);
            let mut infos = Vec::new();
            for reader in BOTH {
                let info = ok(run_with_input(reader.cmd(["stdin-info"]), &job));
                let payload = ok(run_with_input(reader.cmd(["stdin-payload"]), &job));
                assert!(
                    payload == v.expected_payload(),
                    "{}: made by {maker:?}, {reader:?} stdin-payload returned {} bytes, expected {}",
                    v.name,
                    payload.len(),
                    v.expected_payload().len()
                );
                infos.push(info);
            }
            assert_eq!(
                String::from_utf8_lossy(&infos[0]),
                String::from_utf8_lossy(&infos[1]),
                "{}: made by {maker:?}: stdin-info of ours (left) and the reference differ",
                v.name
            );
            assert_eq!(infos[0], infos[1], "{}: raw bytes differ", v.name);
            // What the contract says must be there.
            let info = &infos[0];
            assert!(info.starts_with(format!("FSPL_SEQ={seq}\n").as_bytes()));
            for (n, a) in v.args.iter().enumerate() {
                let mut line = format!("FSPL_PARAM_{}=", n + 1).into_bytes();
                line.extend_from_slice(a);
                line.push(b'\n');
                assert!(
                    info.windows(line.len()).any(|w| w == line),
                    "{}: {:?} missing",
                    v.name,
                    String::from_utf8_lossy(&line)
                );
            }
            for (k, val) in &v.env {
                let mut line = format!("FSPL_SET_{k}=").into_bytes();
                line.extend_from_slice(val);
                line.push(b'\n');
                assert!(info.windows(line.len()).any(|w| w == line), "{}", v.name);
            }
        }
    }
}

#[test]
fn prepared_files_are_byte_identical_apart_from_ctime() {
    for (i, v) in variants().iter().enumerate() {
        let seq = 1 + i as u64 * 1000;
        let ours = v.make(Impl::Ours, seq);
        let theirs = v.make(Impl::Ref, seq);
        let (a, b) = (without_ctime(&ours), without_ctime(&theirs));
        assert!(
            a == b,
            "{}: job files differ beyond ctime:\nours: {:02x?}\nref:  {:02x?}",
            v.name,
            &a[..header_len(&a).min(a.len())],
            &b[..header_len(&b).min(b.len())]
        );
        // The payload starts right after the header in both.
        assert_eq!(&ours[header_len(&ours)..], v.expected_payload());
        assert_eq!(&theirs[header_len(&theirs)..], v.expected_payload());
        // The same facts through the decoders, without our byte surgery.
        let ia = ok(run_with_input(Impl::Ref.cmd(["stdin-info"]), &ours));
        let ib = ok(run_with_input(Impl::Ref.cmd(["stdin-info"]), &theirs));
        assert_eq!(
            info_without_ctime(&ia),
            info_without_ctime(&ib),
            "{}",
            v.name
        );
        // The normalised file is still a valid job for both (our CRC and
        // length fix-up is right), with ctime 0.
        for reader in BOTH {
            let info = ok(run_with_input(reader.cmd(["stdin-info"]), &a));
            let info = String::from_utf8_lossy(&info);
            assert!(
                info.contains("FSPL_CTIME_SECS=0\nFSPL_CTIME_NANOS=0\n"),
                "{info}"
            );
            assert!(info.contains("FSPL_CTIME_RFC3339_UTC=1970-01-01T00:00:00Z\n"));
        }
    }
}

/// A queue in one directory, jobs made and stored by both binaries; every
/// read-only command gives the same stdout from both.
#[test]
fn a_mixed_queue_lists_and_looks_up_identically() {
    let side = Side::new(Impl::Ref);
    side.init("q");
    let vs = variants();
    for (i, v) in vs.iter().enumerate() {
        let maker = if i % 2 == 0 { Impl::Ours } else { Impl::Ref };
        let writer = if i % 3 == 0 { Impl::Ours } else { Impl::Ref };
        side.queue_write(writer, "q", &v.make(maker, i as u64 + 1));
    }
    // (No duplicate seqs: the reference then fails every -j lookup, a
    // deliberate difference.) A non-job file is ignored by both.
    side.write("q/jobs/notes.txt", b"not a job");

    let compare = |args: &[&str]| -> Seen {
        let a = seen(&run(side.cmd_of(Impl::Ours, args)));
        let b = seen(&run(side.cmd_of(Impl::Ref, args)));
        assert_eq!(a, b, "{args:?}: ours (left) and reference differ");
        a
    };
    let ls = compare(&["queue-ls", "-q", "q"]);
    assert_eq!(ls.code, Some(0));
    assert_eq!(ls.stdout.lines().count(), 1 + vs.len(), "{}", ls.stdout);
    assert_eq!(compare(&["queue-ls", "-q", "q", "-d", "cat"]), ls);
    for seq in 1..=vs.len() as u64 {
        let j = seq.to_string();
        let info = compare(&["queue-info", "-q", "q", "-j", &j]);
        assert_eq!(info.code, Some(0));
        assert!(info.stdout.contains("FSPL_JOB_QUEUEDIR=q\n"));
        assert_eq!(
            compare(&["queue-info", "-q", "q", "-j", &j, "-d", "cat"]),
            info
        );
        let p = compare(&["queue-payload", "-q", "q", "-j", &j]);
        assert_eq!(p.code, Some(0));
        // queue-payload output is bytes; compare raw as well.
        let raw = |imp: Impl| ok(run(side.cmd_of(imp, ["queue-payload", "-q", "q", "-j", &j])));
        assert_eq!(raw(Impl::Ours), raw(Impl::Ref));
        assert_eq!(raw(Impl::Ours), vs[seq as usize - 1].expected_payload());
    }
    // Absent job: both fail.
    let missing = compare(&["queue-info", "-q", "q", "-j", "99"]);
    assert_eq!(missing.code, Some(1));
    one_line_error(run(
        side.cmd_of(Impl::Ours, ["queue-info", "-q", "q", "-j", "99"])
    ));
}

/// The script every processing test runs: prints the job's FSPL_*
/// variables (sorted), its arguments and a checksum of its stdin.
pub const DUMP: &str =
    r#"env -0 | grep -z '^FSPL_' | sort -z | tr '\0' '\n'; printf '[%s]' "$@"; echo; cksum"#;

fn mixed_template(side: &Side, queue: &str) -> Vec<Variant> {
    side.init(queue);
    let vs = variants();
    for (i, v) in vs.iter().enumerate() {
        let maker = if i % 2 == 0 { Impl::Ref } else { Impl::Ours };
        let seq = i as u64 + 1;
        side.put_job(queue, &job_name(seq), &v.make(maker, seq));
    }
    vs
}

#[test]
fn jobs_run_identically_by_both() {
    // Made once, copied into both sandboxes, so names and ctimes match.
    let tpl = Side::new(Impl::Ours);
    let vs = mixed_template(&tpl, "q");
    let jobs: Vec<(String, Vec<u8>)> = (1..=vs.len() as u64)
        .map(|s| (job_name(s), tpl.read(&format!("q/jobs/{}", job_name(s)))))
        .collect();
    let setup = |s: &Side| {
        s.init("q");
        for (n, b) in &jobs {
            s.put_job("q", n, b);
        }
    };
    let (out, state) = same(setup, |s| {
        let o = s.run([
            "queue-process",
            "-q",
            "q",
            "--on-error",
            "leave",
            "--allow-job-params",
            "--output-to",
            "saveboth",
            "sh",
            "--",
            "-c",
            DUMP,
            "dump",
            "fixed arg",
        ]);
        (seen(&o), s.state("q"))
    });
    assert_eq!(out.code, Some(0));
    assert_eq!(state.nextseq.as_deref(), Some("8\n"));
    // Successful jobs deleted, Fail job left (Leave), every job has output.
    assert_eq!(state.job_names(), vec![job_name(6)]);
    let outfile = |n: u64| {
        state.files[&format!("{}.out", job_name(n))]
            .clone()
            .unwrap()
    };
    assert!(outfile(1).contains("FSPL_PARAM_1=hello\n"));
    assert!(outfile(1).contains("[fixed arg][hello]\n"));
    assert!(outfile(3).contains("FSPL_SET_MULTI=l1\nl2\n"));
    assert!(outfile(3).contains("FSPL_SET_EMPTY=\n"));
    assert!(outfile(2).contains("[fixed arg][two words][line\nbreak]"));
    assert_eq!(outfile(5), "", "NOP job: empty output");
    assert_eq!(outfile(6), "", "Fail job: empty output");
    assert!(outfile(7).contains(&format!("FSPL_JOB_FULLPATH=q/jobs/{}\n", job_name(7))));

    // stdin-process of each job gives the same stdout and status with both.
    for (n, bytes) in &jobs {
        let r: Vec<Seen> = BOTH
            .iter()
            .map(|imp| {
                seen(&run_with_input(
                    imp.cmd([
                        "stdin-process",
                        "--allow-job-params",
                        "sh",
                        "--",
                        "-c",
                        DUMP,
                        "x",
                    ]),
                    bytes,
                ))
            })
            .collect();
        assert_eq!(r[0], r[1], "stdin-process of {n}");
        assert!(
            !r[0].stdout.contains("FSPL_JOB_"),
            "stdin-process sets no FSPL_JOB_*"
        );
    }
}

/// A queue processed partly by one binary and then by the other, with new
/// jobs arriving in between, ends exactly as if
/// one binary had done it all.
#[test]
fn a_queue_changes_hands_between_binaries() {
    let mut jobs = Vec::new();
    for seq in 1..=8u64 {
        let maker = if seq % 2 == 0 { Impl::Ours } else { Impl::Ref };
        let job = match seq {
            4 => make_special(maker, "prepare-nop", seq),
            _ => make_job(
                maker,
                seq,
                &[format!("p{seq}").as_bytes()],
                &[("N", seq.to_string().as_bytes())],
                Some(format!("payload {seq}\n").as_bytes()),
            ),
        };
        jobs.push((job_name(seq), job));
    }
    let process = |s: &Side, imp: Impl, extra: &[&str]| {
        let mut args = vec![
            "queue-process",
            "-q",
            "q",
            "--output-to",
            "saveboth",
            "--allow-job-params",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["sh", "--", "-c", DUMP, "x"]);
        seen(&run(s.cmd_of(imp, args)))
    };
    let mut finals = Vec::new();
    for (first, second) in [
        (Impl::Ref, Impl::Ours),
        (Impl::Ours, Impl::Ref),
        (Impl::Ours, Impl::Ours),
    ] {
        let s = Side::new(first);
        ok(run(s.cmd_of(second, ["queue-init", "-q", "q"])));
        for (n, b) in &jobs[..5] {
            s.put_job("q", n, b);
        }
        // The first binary runs 3 jobs...
        assert_eq!(process(&s, first, &["-n", "3"]).code, Some(0));
        let st = s.state("q");
        assert_eq!(st.nextseq.as_deref(), Some("4\n"), "{first:?}");
        assert_eq!(st.job_names(), vec![job_name(4), job_name(5)]);
        // ... the second finds nextseq where the first left it ...
        let g = seen(&run(s.cmd_of(second, ["queue-get-next", "-q", "q"])));
        assert_eq!(g.stdout, "4\n");
        assert_eq!(process(&s, second, &[]).code, Some(0));
        assert_eq!(s.nextseq("q").as_deref(), Some("6\n"));
        // ... jobs 7 and 8 arrive before 6 (fixed names, so that the end
        // states can be compared; queue-write is covered below) ...
        s.put_job("q", &jobs[6].0, &jobs[6].1);
        s.put_job("q", &jobs[7].0, &jobs[7].1);
        assert_eq!(process(&s, first, &[]).code, Some(0));
        assert_eq!(s.nextseq("q").as_deref(), Some("6\n"), "stopped at the gap");
        s.put_job("q", &jobs[5].0, &jobs[5].1);
        assert_eq!(process(&s, second, &[]).code, Some(0));
        let st = s.state("q");
        assert_eq!(st.nextseq.as_deref(), Some("9\n"));
        assert!(st.job_names().is_empty(), "{st:?}");
        assert_eq!(st.files.len(), 8, "one .out per job");
        finals.push(st);
    }
    assert_eq!(finals[0], finals[2], "ref then ours == ours only");
    assert_eq!(finals[1], finals[2], "ours then ref == ours only");
    let out1 = finals[0].files[&format!("{}.out", job_name(1))]
        .clone()
        .unwrap();
    assert!(
        out1.contains("FSPL_SET_N=1\n") && out1.contains("[p1]"),
        "{out1}"
    );
}

/// Jobs stored through each binary's `queue-write` are processed by the
/// other.
#[test]
fn queue_write_of_one_binary_feeds_the_other() {
    for writer in BOTH {
        let reader = writer.other();
        let s = Side::new(writer);
        ok(run(s.cmd_of(reader, ["queue-init", "-q", "q"])));
        for seq in [2u64, 1, 3] {
            let job = make_job(writer, seq, &[], &[], Some(format!("{seq}\n").as_bytes()));
            s.queue_write(writer, "q", &job);
        }
        // Names are fspl-<uuid>.fspl and nothing else is left behind.
        let names: Vec<String> = std::fs::read_dir(s.path("q/jobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for n in &names {
            assert!(
                n.starts_with("fspl-") && n.ends_with(".fspl") && n.len() == 46,
                "{n}"
            );
        }
        let o = ok(run(s.cmd_of(reader, ["queue-process", "-q", "q", "cat"])));
        assert_eq!(o, b"1\n2\n3\n", "{writer:?} wrote, {reader:?} processed");
        assert_eq!(s.nextseq("q").as_deref(), Some("4\n"));
    }
}

/// queue-get-next/queue-set-next and prepare-get-next/prepare-set-next read
/// what the other binary wrote.
#[test]
fn next_numbers_set_by_one_binary_are_read_by_the_other() {
    for setter in BOTH {
        let getter = setter.other();
        let s = Side::new(setter);
        ok(run(s.cmd_of(getter, ["queue-init", "-q", "q"])));
        for n in ["1", "9", "10", "12345678901234"] {
            ok(run(s.cmd_of(setter, ["queue-set-next", "-q", "q", n])));
            let got = ok(run(s.cmd_of(getter, ["queue-get-next", "-q", "q"])));
            assert_eq!(String::from_utf8(got).unwrap(), format!("{n}\n"));
            ok(run(s.cmd_of(setter, ["prepare-set-next", "-s", "seq", n])));
            let got = ok(run(s.cmd_of(getter, ["prepare-get-next", "-s", "seq"])));
            assert_eq!(String::from_utf8(got).unwrap(), format!("{n}\n"));
        }
        // The getter's prepare continues from there, and the setter's
        // queue-process honours a nextseq the getter set.
        ok(run(s.cmd_of(setter, ["prepare-set-next", "-s", "seq", "5"])));
        let job = ok(run(s.cmd_of(getter, ["prepare-nop", "-s", "seq"])));
        let info = ok(run_with_input(s.cmd_of(setter, ["stdin-info"]), &job));
        assert!(info.starts_with(b"FSPL_SEQ=5\n"));
        let got = ok(run(s.cmd_of(setter, ["prepare-get-next", "-s", "seq"])));
        assert_eq!(got, b"6\n");
        s.queue_write(setter, "q", &job);
        ok(run(s.cmd_of(getter, ["queue-set-next", "-q", "q", "5"])));
        ok(run(s.cmd_of(setter, ["queue-process", "-q", "q", "false"])));
        assert_eq!(s.nextseq("q").as_deref(), Some("6\n"));
        assert!(s.state("q").job_names().is_empty());
    }
}

/// Creation times far from now, in several time zones: both binaries print
/// the same environment. (Not compared: the last day of year 9999 and
/// later, which the reference prints as +10000-... and we as raw seconds,
/// and values where the reference panics.)
#[test]
fn unusual_creation_times_print_the_same_in_any_time_zone() {
    let base = make_job(Impl::Ref, 1, &[b"p"], &[], Some(b"x"));
    let times: &[(i64, u32)] = &[
        (0, 0),
        (-1, 999_999_999),
        (-2_208_988_800, 5),  // 1900
        (-5_000_000_000, 0),  // 1811
        (-62_135_596_800, 0), // year 1
        (-62_135_596_801, 0), // year 0
        (1_700_000_000, 999_999_999),
        (4_102_444_800, 0), // 2100
        (253_402_000_000, 1),
    ];
    for &(secs, nanos) in times {
        let job = with_ctime(&base, secs, nanos);
        for tz in [
            "UTC",
            "Europe/Amsterdam",
            "America/St_Johns",
            "Asia/Kolkata",
            "Europe/Dublin",
            "Pacific/Honolulu",
            "Australia/Lord_Howe",
            ":America/New_York",
            "EST5EDT",
            "<+0530>-5:30",
            "CET-1CEST,M3.5.0,M10.5.0/3",
        ] {
            let got: Vec<Vec<u8>> = BOTH
                .iter()
                .map(|imp| {
                    let mut c = imp.cmd(["stdin-info"]);
                    c.env("TZ", tz);
                    ok(run_with_input(c, &job))
                })
                .collect();
            assert_eq!(
                String::from_utf8_lossy(&got[0]),
                String::from_utf8_lossy(&got[1]),
                "ctime {secs}.{nanos} TZ={tz}"
            );
        }
    }
}

/// Regression: a historic UTC offset with seconds (local mean time before
/// about 1900, e.g. Amsterdam +00:19:32) was printed with its seconds,
/// which RFC 3339 does not allow; Filespooler rounds it to +00:20.
#[test]
fn local_time_offset_with_seconds_was_not_rounded_to_minutes() {
    let job = with_ctime(
        &make_special(Impl::Ref, "prepare-nop", 1),
        -62_135_596_800,
        0,
    );
    for (tz, want) in [
        ("Europe/Amsterdam", "0001-01-01T00:19:32+00:20"),
        ("America/St_Johns", "0000-12-31T20:29:08-03:31"),
    ] {
        let mut c = ours(["stdin-info"]);
        c.env("TZ", tz);
        let info = String::from_utf8(ok(run_with_input(c, &job))).unwrap();
        let mut c = theirs(["stdin-info"]);
        c.env("TZ", tz);
        let reference = String::from_utf8(ok(run_with_input(c, &job))).unwrap();
        let line = format!("FSPL_CTIME_RFC3339_LOCAL={want}\n");
        assert!(reference.contains(&line), "reference: {reference}");
        assert!(info.contains(&line), "{tz}: {info}");
    }
}

/// Sender sequence files and `nextseq` in odd but readable shapes (and
/// unreadable ones) are taken the same way by both binaries.
#[test]
fn odd_sequence_files_are_read_the_same_way() {
    for content in [
        &b"007\n"[..],
        b"  7  \n",
        b"+7\n",
        b"7\r\n",
        b"7\nrest",
        b"7",
        b"\n7\n",
        b"7 8\n",
        b"x\n",
        b"",
    ] {
        let r = same(
            |s| {
                s.write("seq", content);
                s.init("q");
                s.write("q/nextseq", content);
            },
            |s| {
                let job = s.run(["prepare-nop", "-s", "seq"]);
                let info = if job.status.success() {
                    let i = ok(run_with_input(s.cmd(["stdin-info"]), &job.stdout));
                    String::from_utf8_lossy(&i)
                        .lines()
                        .next()
                        .unwrap()
                        .to_string()
                } else {
                    String::new()
                };
                (
                    job.status.code(),
                    info,
                    s.read("seq"),
                    seen(&s.run(["queue-get-next", "-q", "q"])),
                    seen(&s.run(["prepare-get-next", "-s", "seq"])),
                )
            },
        );
        let readable = r.0 == Some(0);
        assert_eq!(
            readable,
            !matches!(content, b"\n7\n" | b"7 8\n" | b"x\n" | b""),
            "{:?}",
            String::from_utf8_lossy(content)
        );
        if readable {
            assert_eq!(r.1, "FSPL_SEQ=7");
            assert_eq!(r.2, b"8\n");
            assert_eq!(r.3.stdout, "7\n");
        }
    }
}

/// `prepare -i FILE`: ours adds a payload digest extension by default
/// (x-fspl, ignored by the reference, which reads the job exactly like its
/// own); with --no-digest the file is byte-identical to the reference's.
#[test]
fn jobs_prepared_from_a_file_match_the_reference() {
    let sb = Sandbox::new();
    for (name, data) in [
        ("small", b"Hi\n".to_vec()),
        ("empty", Vec::new()),
        ("big", noise(1 << 20, 3)),
    ] {
        let input = sb.path(name);
        std::fs::write(&input, &data).unwrap();
        let prep = |imp: Impl, extra: &[&str]| {
            let mut c = imp.cmd(["prepare", "-s", "-", "-i"]);
            c.arg(&input).args(extra).args(["--", "p 1"]);
            c.env("FSPL_SET_K", "v");
            ok(run(c))
        };
        let theirs = prep(Impl::Ref, &[]);
        let plain = prep(Impl::Ours, &["--no-digest"]);
        assert!(
            without_ctime(&plain) == without_ctime(&theirs),
            "{name}: --no-digest output differs from the reference's beyond ctime"
        );
        let with_digest = prep(Impl::Ours, &[]);
        for reader in BOTH {
            let a = ok(run_with_input(reader.cmd(["stdin-info"]), &with_digest));
            let b = ok(run_with_input(reader.cmd(["stdin-info"]), &theirs));
            assert_eq!(
                info_without_ctime(&a),
                info_without_ctime(&b),
                "{name} {reader:?}"
            );
            let p = ok(run_with_input(reader.cmd(["stdin-payload"]), &with_digest));
            assert!(p == data, "{name}: {reader:?} payload");
            let c = ok(run_with_input(
                reader.cmd(["stdin-process", "cat"]),
                &with_digest,
            ));
            assert!(c == data, "{name}: {reader:?} stdin-process");
        }
    }
}

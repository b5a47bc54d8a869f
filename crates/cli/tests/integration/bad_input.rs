//! Corrupt job files, broken queues and failed prepares: listings skip what
//! cannot be read (like the reference), processing stops at the gap it
//! leaves, and every error is one line naming the file or directory.

use crate::both::*;
use crate::helper::*;

/// Deterministic pseudo-random bytes (never starting with a compression
/// magic number: the first byte is forced to 0x01).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut v = fspl_testkit::jobs::noise(len, seed);
    if let Some(b) = v.first_mut() {
        *b = 0x01;
    }
    v
}

/// A prefix with valid CRCs announcing `len` metadata bytes, followed by
/// `meta`.
fn prefix_claiming(len: u64, meta: &[u8]) -> Vec<u8> {
    let mut v = b"*FILESPOOLER".to_vec();
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&crc32(meta).to_be_bytes());
    let c = crc32(&v);
    v.extend_from_slice(&c.to_be_bytes());
    v.extend_from_slice(meta);
    v
}

/// Corrupt files, with a word that our error about each must contain.
/// Excludes files that make the reference abort (see `huge_metadata_lengths`).
fn corrupt_files() -> Vec<(String, Vec<u8>, &'static str)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(vectors()).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(stem) = n.strip_prefix("bad-").and_then(|s| s.strip_suffix(".fspl")) {
            let word = match stem {
                "empty" => "empty",
                "meta-body" | "meta-crc" => "CRC-32 mismatch on metadata",
                "prefix-crc" => "CRC-32 mismatch on file prefix",
                "tag" => "magic",
                "truncated-meta" | "truncated-prefix" => "truncated",
                "version" => "version 2",
                other => panic!("unknown bad vector {other}: add it here"),
            };
            v.push((n.clone(), std::fs::read(&p).unwrap(), word));
        }
    }
    assert_eq!(v.len(), 8);
    v.push(("random".into(), noise(4096, 1), "magic"));
    v.push(("random-short".into(), noise(7, 2), "magic"));
    // A good job cut inside its header, at several offsets.
    let good = make_job(Impl::Ref, 1, &[b"param"], &[("E", b"v")], Some(b"payload"));
    let hl = header_len(&good);
    for cut in [1, 12, 13, 22, 29, 30, 31, hl / 2, hl - 1] {
        v.push((format!("cut-{cut}"), good[..cut].to_vec(), "truncated"));
    }
    // Version 0 and 65535, with otherwise valid CRCs.
    for ver in [0u16, 0xffff] {
        let mut b = good.clone();
        b[12..14].copy_from_slice(&ver.to_be_bytes());
        let c = crc32(&b[..26]);
        b[26..30].copy_from_slice(&c.to_be_bytes());
        v.push((format!("version-{ver}"), b, "version"));
    }
    // Valid CRCs, metadata that is not a job.
    v.push(("meta-int".into(), prefix_claiming(1, b"\x01"), "metadata"));
    v.push(("meta-none".into(), prefix_claiming(0, b""), "metadata"));
    v.push((
        "meta-short-claim".into(),
        prefix_claiming(100, b"\x80"),
        "truncated",
    ));
    v
}

fn bad_queue(s: &Side) -> Vec<(String, Vec<u8>, &'static str)> {
    s.init("q");
    for seq in 1..=3u64 {
        let job = make_job(
            Impl::Ref,
            seq,
            &[],
            &[],
            Some(format!("{seq}\n").as_bytes()),
        );
        s.put_job("q", &job_name(seq), &job);
    }
    let bad = corrupt_files();
    for (name, bytes, _) in &bad {
        s.put_job("q", &format!("fspl-{name}.fspl"), bytes);
    }
    bad
}

#[test]
fn listings_skip_corrupt_files_like_the_reference() {
    let s = Side::new(Impl::Ours);
    let bad = bad_queue(&s);
    let cmp = |args: &[&str]| {
        let a = seen(&run(s.cmd_of(Impl::Ours, args)));
        let b = seen(&run(s.cmd_of(Impl::Ref, args)));
        assert_eq!(a, b, "{args:?}");
        a
    };
    let ls = cmp(&["queue-ls", "-q", "q"]);
    assert_eq!(ls.code, Some(0));
    let ids: Vec<&str> = ls
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2", "3"], "only the good jobs: {}", ls.stdout);
    assert_eq!(cmp(&["queue-ls", "-q", "q", "-d", "cat"]), ls);
    for j in ["1", "2", "3"] {
        let info = cmp(&["queue-info", "-q", "q", "-j", j]);
        assert_eq!(info.code, Some(0));
        assert!(info.stdout.starts_with(&format!("FSPL_SEQ={j}\n")));
        let p = cmp(&["queue-payload", "-q", "q", "-j", j]);
        assert_eq!(p.stdout, format!("{j}\n"));
    }
    // Ours says why each file was skipped, in --json and at debug level.
    let json = String::from_utf8(ok(run(
        s.cmd_of(Impl::Ours, ["queue-ls", "-q", "q", "--json"])
    )))
    .unwrap();
    for (name, _, _) in &bad {
        assert!(
            json.contains(&format!("fspl-{name}.fspl")),
            "{name} not reported"
        );
    }
    let o = run(s.cmd_of(Impl::Ours, ["-l", "debug", "queue-ls", "-q", "q"]));
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fspl-bad-tag.fspl"), "{err}");
}

#[test]
fn stdin_info_on_a_corrupt_file_is_one_error_line_saying_what_is_wrong() {
    for (name, bytes, word) in corrupt_files() {
        for cmd in ["stdin-info", "stdin-payload"] {
            let theirs = run_with_input(theirs([cmd]), &bytes);
            assert_eq!(theirs.status.code(), Some(1), "reference {cmd} {name}");
            let o = run_with_input(ours([cmd]), &bytes);
            assert_eq!(o.status.code(), Some(1), "{cmd} {name}");
            assert!(o.stdout.is_empty(), "{cmd} {name}");
            let line = one_line_error(o);
            assert!(line.contains("job on stdin"), "{name}: {line}");
            assert!(line.contains(word), "{name}: expected {word:?} in {line}");
        }
        let o = run_with_input(ours(["stdin-process", "true"]), &bytes);
        let line = one_line_error(o);
        assert!(line.contains(word), "{name}: {line}");
    }
}

#[test]
fn huge_metadata_lengths_are_refused_without_allocating() {
    // The reference tries to allocate what the prefix claims (and aborts on
    // 1 TiB); we refuse above a sane limit and name the length.
    for len in [1u64 << 40, u64::MAX, 100 << 20] {
        let mut bytes = prefix_claiming(len, b"");
        bytes.extend_from_slice(&[0x80; 64]);
        let line = one_line_error(run_with_input(ours(["stdin-info"]), &bytes));
        assert!(line.contains(&format!("metadata length {len}")), "{line}");
        // In a queue: skipped, the good job still listed and run.
        let s = Side::new(Impl::Ours);
        s.init("q");
        s.put_job("q", "fspl-huge.fspl", &bytes);
        s.put_job(
            "q",
            &job_name(1),
            &make_job(Impl::Ref, 1, &[], &[], Some(b"ok\n")),
        );
        let ls = String::from_utf8(ok(s.run(["queue-ls", "-q", "q"]))).unwrap();
        assert_eq!(ls.lines().count(), 2, "{ls}");
        assert_eq!(ok(s.run(["queue-process", "-q", "q", "cat"])), b"ok\n");
        assert_eq!(s.state("q").job_names(), ["fspl-huge.fspl"]);
    }
}

#[test]
fn a_corrupt_job_at_nextseq_is_a_gap() {
    let good1 = make_job(Impl::Ref, 1, &[], &[], Some(b"1\n"));
    let hl = header_len(&good1);
    let mut crc_broken = good1.clone();
    crc_broken[30] ^= 0x01;
    for (what, corrupt) in [
        ("truncated header", good1[..hl - 1].to_vec()),
        ("metadata CRC", crc_broken),
    ] {
        let jobs: Vec<(String, Vec<u8>)> = vec![
            (job_name(2), make_job(Impl::Ref, 2, &[], &[], Some(b"2\n"))),
            (job_name(3), make_job(Impl::Ref, 3, &[], &[], Some(b"3\n"))),
        ];
        let setup = |s: &Side| {
            s.init("q");
            s.put_job("q", &job_name(1), &corrupt);
            for (n, b) in &jobs {
                s.put_job("q", n, b);
            }
        };
        let r = same(setup, |s| {
            let first = seen(&s.run(["queue-process", "-q", "q", "cat"]));
            let after_first = s.state("q");
            // The real job 1 arrives (the corrupt file is replaced).
            s.put_job("q", &job_name(1), &good1);
            let second = seen(&s.run(["queue-process", "-q", "q", "cat"]));
            (first, after_first, second, s.state("q"))
        });
        assert_eq!(r.0.code, Some(0), "{what}: a gap is not an error");
        assert_eq!(r.0.stdout, "", "{what}: nothing ran");
        assert_eq!(r.1.nextseq.as_deref(), Some("1\n"));
        assert_eq!(r.1.job_names().len(), 3, "{what}: nothing deleted");
        assert_eq!(r.2.stdout, "1\n2\n3\n");
        assert_eq!(r.3.nextseq.as_deref(), Some("4\n"));
        assert!(r.3.job_names().is_empty());
    }
}

#[test]
fn queue_errors_are_one_line_naming_the_directory() {
    let s = Side::new(Impl::Ours);
    s.init("q");
    ok(s.run(["queue-init", "-q", "appendonly", "--append-only"]));
    std::fs::create_dir(s.path("plain")).unwrap();
    s.write("file", b"not a directory");
    let job = make_job(Impl::Ref, 1, &[], &[], Some(b"x"));
    let commands: Vec<Vec<&str>> = vec![
        vec!["queue-ls", "-q"],
        vec!["queue-info", "-j", "1", "-q"],
        vec!["queue-payload", "-j", "1", "-q"],
        vec!["queue-process", "true", "-q"],
        vec!["queue-get-next", "-q"],
        vec!["queue-set-next", "5", "-q"],
        vec!["queue-write", "-q"],
    ];
    for dir in ["missing", "plain", "file", "appendonly"] {
        for c in &commands {
            let mut args = c.clone();
            args.push(dir);
            let theirs = run_with_input(s.cmd_of(Impl::Ref, &args), &job);
            let o = run_with_input(s.cmd_of(Impl::Ours, &args), &job);
            assert_eq!(
                o.status.code(),
                theirs.status.code(),
                "{args:?}: ours vs reference"
            );
            if o.status.success() {
                // An append-only queue can be written and listed.
                assert_eq!(dir, "appendonly", "{args:?}");
                assert!(matches!(c[0], "queue-ls" | "queue-write"), "{args:?}");
                continue;
            }
            let line = one_line_error(o);
            assert!(line.contains(dir), "{args:?}: {line}");
            if dir == "appendonly" && !matches!(c[0], "queue-info" | "queue-payload") {
                assert!(line.contains("append-only"), "{args:?}: {line}");
            }
        }
    }
    // Nothing was created anywhere.
    assert!(!s.path("missing").exists());
    assert_eq!(std::fs::read_dir(s.path("plain")).unwrap().count(), 0);
    assert!(!s.path("appendonly/nextseq").exists());
    // queue-info of an absent job in a good queue: one line, the seq and queue.
    let line = one_line_error(s.run(["queue-info", "-q", "q", "-j", "7"]));
    assert!(line.contains('7') && line.contains('q'), "{line}");
}

#[test]
fn a_failed_prepare_uses_no_sequence_number_unlike_the_reference() {
    for (what, input) in [("missing file", "missing"), ("directory", "dir")] {
        for imp in BOTH {
            let s = Side::new(imp);
            std::fs::create_dir(s.path("dir")).unwrap();
            s.write("seq", b"5\n");
            let o = s.run(["prepare", "-s", "seq", "-i", input, "--", "p"]);
            let after = String::from_utf8(s.read("seq")).unwrap();
            match imp {
                Impl::Ours => {
                    assert_eq!(o.status.code(), Some(1), "{what}");
                    assert!(o.stdout.is_empty(), "{what}: no partial job on stdout");
                    let line = one_line_error(o);
                    assert!(line.contains(input), "{what}: {line}");
                    assert_eq!(after, "5\n", "{what}: ours keeps the number");
                }
                Impl::Ref => {
                    assert!(!o.status.success(), "{what}");
                    // Filespooler used number 5 up: the receiver will wait
                    // for a job 5 that never comes.
                    assert_eq!(after, "6\n", "{what}: the reference uses it up");
                }
            }
        }
    }
    // Without a sequence file at all: ours does not create one.
    let s = Side::new(Impl::Ours);
    one_line_error(s.run(["prepare", "-s", "seq", "-i", "missing"]));
    assert!(!s.path("seq").exists());
}

#[test]
fn prepare_with_seq_fills_the_gap_left_by_the_reference() {
    // The reference burnt number 2 on a failed prepare; the receiver waits
    // for it; `fspl prepare-nop --seq 2` (or `prepare --seq 2`) fills it.
    let s = Side::new(Impl::Ours);
    s.init("q");
    let send = |args: &[&str], stdin: &[u8]| {
        let o = run_with_input(s.cmd_of(Impl::Ref, args), stdin);
        if o.status.success() {
            s.queue_write(Impl::Ref, "q", &o.stdout);
        }
        o.status.success()
    };
    assert!(send(&["prepare", "-s", "seq", "-i", "-"], b"one\n"));
    assert!(!send(&["prepare", "-s", "seq", "-i", "missing"], b""));
    assert!(send(&["prepare", "-s", "seq", "-i", "-"], b"three\n"));
    assert_eq!(s.read("seq"), b"4\n");
    assert_eq!(ok(s.run(["queue-process", "-q", "q", "cat"])), b"one\n");
    assert_eq!(s.nextseq("q").as_deref(), Some("2\n"), "stuck at the gap");

    for (fill, expect) in [
        (vec!["prepare-nop", "--seq", "2"], &b"three\n"[..]),
        (vec!["prepare", "--seq", "2", "-i", "-"], b"two\nthree\n"),
    ] {
        let s2 = Side::new(Impl::Ours);
        ok(s2.run(["queue-init", "-q", "q"]));
        for f in std::fs::read_dir(s.path("q/jobs")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), s2.path("q/jobs").join(f.file_name())).unwrap();
        }
        ok(s2.run(["queue-set-next", "-q", "q", "2"]));
        let job = ok(run_with_input(s2.cmd(&fill), b"two\n"));
        assert!(!s2.path("seq").exists(), "--seq touches no sequence file");
        // The reference reads the filler and runs it in place.
        let info = ok(run_with_input(s2.cmd_of(Impl::Ref, ["stdin-info"]), &job));
        assert!(info.starts_with(b"FSPL_SEQ=2\n"));
        s2.queue_write(Impl::Ours, "q", &job);
        let out = ok(run(
            s2.cmd_of(Impl::Ref, ["queue-process", "-q", "q", "cat"])
        ));
        assert_eq!(out, expect, "{fill:?}");
        assert_eq!(s2.nextseq("q").as_deref(), Some("4\n"));
    }
    // --seq is ours only: the reference rejects it as a usage error.
    assert_eq!(
        run(theirs(["prepare-nop", "--seq", "2"])).status.code(),
        Some(2)
    );
}

/// A sync tool that delivers a file twice: ours runs the job once (all
/// copies are deleted); the reference refuses the whole queue.
#[test]
fn identical_copies_of_a_job_run_once_unlike_the_reference() {
    let one = make_job(Impl::Ref, 1, &[], &[], Some(b"1\n"));
    let two = make_job(Impl::Ref, 2, &[], &[], Some(b"2\n"));
    let setup = |s: &Side| {
        s.init("q");
        s.put_job("q", &job_name(1), &one);
        s.put_job("q", &job_name(11), &one);
        s.put_job("q", &job_name(2), &two);
    };
    let ours_side = Side::new(Impl::Ours);
    setup(&ours_side);
    assert_eq!(
        ok(ours_side.run(["queue-process", "-q", "q", "cat"])),
        b"1\n2\n"
    );
    assert!(ours_side.state("q").job_names().is_empty());
    let theirs_side = Side::new(Impl::Ref);
    setup(&theirs_side);
    let o = theirs_side.run(["queue-process", "-q", "q", "cat"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    // Copies that differ are an error for ours too, naming both files.
    let other_one = make_job(Impl::Ref, 1, &[], &[], Some(b"other\n"));
    let s = Side::new(Impl::Ours);
    setup(&s);
    s.put_job("q", &job_name(11), &other_one);
    let line = one_line_error(s.run(["queue-process", "-q", "q", "cat"]));
    assert!(
        line.contains(&job_name(1)) && line.contains(&job_name(11)),
        "{line}"
    );
    assert_eq!(s.nextseq("q").as_deref(), Some("1\n"));
}

/// Regression: a cause that the message before it already ends with was
/// printed twice ("invalid metadata: IO error while reading marker: failed
/// to fill whole buffer: failed to fill whole buffer").
#[test]
fn error_line_repeated_its_cause() {
    for (name, bytes, _) in corrupt_files() {
        let line = one_line_error(run_with_input(ours(["stdin-info"]), &bytes));
        let parts: Vec<&str> = line.split(": ").collect();
        for w in parts.windows(2) {
            assert_ne!(w[0], w[1], "{name}: {line}");
        }
    }
    // In --json listings too.
    let s = Side::new(Impl::Ours);
    s.init("q");
    s.put_job("q", "fspl-x.fspl", &prefix_claiming(0, b""));
    let json = String::from_utf8(ok(s.run(["queue-ls", "-q", "q", "--json"]))).unwrap();
    assert!(json.contains("failed to fill whole buffer"), "{json}");
    assert!(
        !json.contains("failed to fill whole buffer: failed to fill whole buffer"),
        "{json}"
    );
}

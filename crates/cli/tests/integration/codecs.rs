//! Built-in codecs: compressed job files are read without `-d` by every
//! reader, `-d` still wins, `prepare --compress` output is read by the
//! reference with the matching `-d`, and a truncated or corrupt compressed
//! payload never counts as a success.

use std::path::{Path, PathBuf};

use crate::helper::*;

fn codec_dir() -> PathBuf {
    root().join("testdata/codec")
}

const FORMATS: [(&str, &str); 4] = [
    ("zst", "zstdcat"),
    ("gz", "zcat"),
    ("xz", "xzcat"),
    ("lz4", "lz4cat"),
];

/// A queue holding copies of these files.
fn queue_of(s: &Sandbox, name: &str, files: &[PathBuf]) -> PathBuf {
    let q = s.queue(name);
    for f in files {
        ok(run_with_file(
            ours([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]),
            f,
        ));
    }
    q
}

use std::ffi::OsStr;

fn q_args<'a>(cmd: &'a str, q: &'a Path, rest: &[&'a str]) -> Vec<&'a OsStr> {
    let mut v = vec![OsStr::new(cmd), OsStr::new("-q"), q.as_os_str()];
    v.extend(rest.iter().map(|r| OsStr::new(*r)));
    v
}

#[test]
fn every_compressed_vector_reads_like_its_plain_original_without_a_decoder() {
    for stem in ["02-params-env", "07-payload-200k"] {
        let plain = vectors().join(format!("{stem}.fspl"));
        let info = ok(run_with_file(ours(["stdin-info"]), &plain));
        let payload = ok(run_with_file(ours(["stdin-payload"]), &plain));
        for (ext, _) in FORMATS {
            let f = codec_dir().join(format!("{stem}.fspl.{ext}"));
            assert_eq!(
                ok(run_with_file(ours(["stdin-info"]), &f)),
                info,
                "{}",
                f.display()
            );
            assert_eq!(
                ok(run_with_file(ours(["stdin-payload"]), &f)),
                payload,
                "{}",
                f.display()
            );
        }
    }
}

#[test]
fn queue_readers_detect_each_codec_and_agree_with_the_reference_using_its_decoder() {
    let s = Sandbox::new();
    for (ext, tool) in FORMATS {
        let f = codec_dir().join(format!("07-payload-200k.fspl.{ext}"));
        let q = queue_of(&s, &format!("q-{ext}"), std::slice::from_ref(&f));
        let ours_ls = ok(run(ours(q_args("queue-ls", &q, &[]))));
        let ref_ls = ok(run(theirs(q_args("queue-ls", &q, &["-d", tool]))));
        assert_eq!(
            String::from_utf8_lossy(&ours_ls),
            String::from_utf8_lossy(&ref_ls),
            "{ext}"
        );
        assert_eq!(
            ours_ls.iter().filter(|&&b| b == b'\n').count(),
            2,
            "{ext}: one job listed"
        );
        let ours_info = ok(run(ours(q_args("queue-info", &q, &["-j", "7"]))));
        let ref_info = ok(run(theirs(q_args(
            "queue-info",
            &q,
            &["-j", "7", "-d", tool],
        ))));
        assert_eq!(ours_info, ref_info, "{ext}");
        let ours_pl = ok(run(ours(q_args("queue-payload", &q, &["-j", "7"]))));
        let ref_pl = ok(run(theirs(q_args(
            "queue-payload",
            &q,
            &["-j", "7", "-d", tool],
        ))));
        assert_eq!(ours_pl.len(), 200_000, "{ext}");
        assert_eq!(ours_pl, ref_pl, "{ext}");
        let st = run(ours(q_args("queue-status", &q, &["--json"])));
        let text = String::from_utf8_lossy(&st.stdout);
        assert!(text.contains("\"jobs\": 1"), "{ext}: {text}");
    }
}

#[test]
fn prepare_compress_output_is_read_by_the_reference_with_the_matching_decoder() {
    let s = Sandbox::new();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let input = s.path("payload");
    std::fs::write(&input, &payload).unwrap();
    for (spec, tool) in [
        ("zstd", "zstdcat"),
        ("zstd:19", "zstdcat"),
        ("gzip", "zcat"),
        ("xz", "xzcat"),
        ("lz4", "lz4cat"),
    ] {
        let mut cmd = ours(["prepare", "-s", "-", "--compress", spec, "-i"]);
        cmd.arg(&input)
            .args(["--", "param one"])
            .env("FSPL_SET_K", "v");
        let job = ok(run(cmd));
        let kind = fspl_codec_magic(&job);
        assert_eq!(kind, spec.split(':').next().unwrap(), "{spec}: wrong magic");
        let f = s.path(format!("job.{spec}"));
        std::fs::write(&f, &job).unwrap();
        // The reference reads it through the standard tool.
        let mut decode = std::process::Command::new("sh");
        decode
            .args(["-c", &format!("{tool} | \"$0\" stdin-info")])
            .arg(reference_bin())
            .env("TZ", "UTC");
        let theirs_info = String::from_utf8(ok(run_with_file(decode, &f))).unwrap();
        assert!(
            theirs_info.contains("FSPL_PARAM_1=param one\n"),
            "{spec}: {theirs_info}"
        );
        assert!(
            theirs_info.contains("FSPL_SET_K=v\n"),
            "{spec}: {theirs_info}"
        );
        let ours_info = String::from_utf8(ok(run_with_file(ours(["stdin-info"]), &f))).unwrap();
        assert_eq!(ours_info, theirs_info, "{spec}");
        assert_eq!(
            ok(run_with_file(ours(["stdin-payload"]), &f)),
            payload,
            "{spec}"
        );
    }
}

/// Which codec a file starts with, by magic.
fn fspl_codec_magic(b: &[u8]) -> &'static str {
    match b {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x1f, 0x8b, ..] => "gzip",
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
        [0x04, 0x22, 0x4d, 0x18, ..] => "lz4",
        _ => "none",
    }
}

#[test]
fn an_explicit_decoder_wins_over_detection() {
    let s = Sandbox::new();
    let f = codec_dir().join("02-params-env.fspl.gz");
    let q = queue_of(&s, "q", &[f]);
    // A decoder that yields nothing: with -d, the gzip magic must not be
    // looked at, so the job is unreadable and the listing empty.
    let ls = String::from_utf8(ok(run(ours(q_args(
        "queue-ls",
        &q,
        &["-d", "cat >/dev/null"],
    )))))
    .unwrap();
    assert_eq!(ls.lines().count(), 1, "{ls}");
    let ls = String::from_utf8(ok(run(ours(q_args("queue-ls", &q, &["-d", "zcat"]))))).unwrap();
    assert_eq!(ls.lines().count(), 2, "{ls}");
    let ls = String::from_utf8(ok(run(ours(q_args("queue-ls", &q, &[]))))).unwrap();
    assert_eq!(ls.lines().count(), 2, "{ls}");
}

#[test]
fn a_truncated_or_corrupt_compressed_job_fails_and_is_never_a_success() {
    for kind in ["truncated", "corrupt"] {
        for (ext, _) in FORMATS {
            let s = Sandbox::new();
            let f = codec_dir().join(format!("bad-{kind}-07-payload-200k.fspl.{ext}"));
            // queue-write refuses it (nothing stored); delivered by other
            // means, it still never counts as a success.
            let q = s.queue("q");
            deliver(&q, &std::fs::read(&f).unwrap());
            ok(run(ours(q_args("queue-set-next", &q, &["7"]))));
            // The header is intact (it is at the start), so the job lists...
            let ls = String::from_utf8(ok(run(ours(q_args("queue-ls", &q, &[]))))).unwrap();
            assert_eq!(ls.lines().count(), 2, "{kind} {ext}: {ls}");
            // ...but running it fails even though the command itself succeeds.
            let marker = s.path("ran");
            let script = format!("cat >/dev/null; touch {}", marker.display());
            let out = run(ours(q_args(
                "queue-process",
                &q,
                &["sh", "--", "-c", &script],
            )));
            let line = one_line_error(out);
            assert!(line.contains("payload incomplete"), "{kind} {ext}: {line}");
            assert!(
                line.contains("fspl-"),
                "{kind} {ext}: error names the file: {line}"
            );
            assert_eq!(
                s.job_files(&q).len(),
                1,
                "{kind} {ext}: the job stays queued under retry"
            );
            assert_eq!(
                std::fs::read_to_string(q.join("nextseq")).unwrap(),
                "7\n",
                "{kind} {ext}"
            );
            // The command ran to the end and succeeded; the job still failed.
            assert!(marker.exists(), "{kind} {ext}: the command did not run");
            // Under --on-error delete it counts as a failed job: removed, queue moves on.
            let out = run(ours(q_args(
                "queue-process",
                &q,
                &["--on-error", "delete", "sh", "--", "-c", "cat >/dev/null"],
            )));
            assert!(out.status.success(), "{kind} {ext}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("job failed"),
                "{kind} {ext}"
            );
            assert!(s.job_files(&q).is_empty(), "{kind} {ext}");
            // stdin-payload reports the damage with one line and exit 1.
            let line = one_line_error(run_with_file(ours(["stdin-payload"]), &f));
            assert!(
                line.contains(if ext == "zst" {
                    "zstd"
                } else if ext == "gz" {
                    "gzip"
                } else {
                    ext
                }),
                "{line}"
            );
            // stdin-process: the command succeeds, the job does not.
            one_line_error(run_with_file(
                ours(["stdin-process", "sh", "--", "-c", "cat >/dev/null"]),
                &f,
            ));
        }
    }
}

#[test]
fn a_command_that_stops_reading_early_still_gets_the_payload_verified() {
    let good = codec_dir().join("07-payload-200k.fspl.zst");
    let bad = codec_dir().join("bad-corrupt-07-payload-200k.fspl.zst");
    // head -c 10 stops reading at once; the good job is a success, the
    // corrupt one a failure, because the rest is still decoded and checked.
    ok(run_with_file(
        ours(["stdin-process", "sh", "--", "-c", "head -c 10 >/dev/null"]),
        &good,
    ));
    one_line_error(run_with_file(
        ours(["stdin-process", "sh", "--", "-c", "head -c 10 >/dev/null"]),
        &bad,
    ));
}

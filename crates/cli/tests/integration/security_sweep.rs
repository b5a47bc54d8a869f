//! Byte-flip and truncation sweeps over signed jobs: every variant is put
//! in a queue named for the job and processed by a real `queue-process
//! --trust`; each must be refused (moved to `rejected/` with a reason)
//! without the command running and without nextseq moving. After each
//! sweep the untouched job runs in the same queue, so the harness itself
//! refuses nothing by accident.
//!
//! - every header offset, one bit flipped (CRCs then no longer match);
//! - every metadata offset, flipped with two masks, with both CRCs fixed
//!   up afterwards (what a deliberate forger does): only the signature or
//!   the decoder can catch these;
//! - sampled payload offsets of a 4 KiB payload;
//! - truncation at every length of a small signed job.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::helper::*;
use crate::security::*;

/// Worker threads (each with its own queue and marker directory).
const WORKERS: usize = 4;

/// One labelled variant of a job file.
struct Variant {
    label: String,
    bytes: Vec<u8>,
}

/// A queue for one worker, and where its command leaves markers.
struct Lane {
    q: PathBuf,
    marks: PathBuf,
}

fn lanes(t: &Setup, prefix: &str) -> Vec<Lane> {
    (0..WORKERS)
        .map(|i| {
            let q = t.queue(&format!("{prefix}-q{i}"), Some(QUEUE_NAME));
            let marks = t.s.path(format!("{prefix}-marks{i}"));
            std::fs::create_dir(&marks).unwrap();
            Lane { q, marks }
        })
        .collect()
}

fn process(lane: &Lane, trust: &Path) -> std::process::Output {
    let mut c = fs([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        lane.q.as_os_str(),
        OsStr::new("--trust"),
        trust.as_os_str(),
        OsStr::new("--allow-job-params"),
        OsStr::new("sh"),
        OsStr::new("--"),
        OsStr::new("-c"),
        OsStr::new(SCRIPT),
    ]);
    c.arg(&lane.marks);
    run(c)
}

fn set_next(q: &Path, n: u64) {
    std::fs::write(q.join("nextseq"), format!("{n}\n")).unwrap();
}

/// Process one variant in `lane`: the reason it was refused, or how it was
/// not.
fn check(lane: &Lane, trust: &Path, v: &Variant) -> Result<String, String> {
    let name = format!("fspl-{}.fspl", v.label);
    std::fs::write(lane.q.join("jobs").join(&name), &v.bytes).unwrap();
    // A header that still decodes but now says another seq is looked at
    // only when nextseq reaches that seq: go there.
    let seq = fspl_format::decode(&v.bytes).ok().map(|d| d.header.seq);
    let moved_to = seq.filter(|&s| s != 1);
    if let Some(s) = moved_to {
        set_next(&lane.q, s);
    }
    let out = process(lane, trust);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let ran: Vec<String> = std::fs::read_dir(&lane.marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let rejected = lane.q.join("rejected").join(&name);
    let reason = lane.q.join("rejected").join(format!("{name}.reason"));
    let result = if !ran.is_empty() {
        Err(format!("the command ran ({ran:?}); stderr: {err}"))
    } else if !out.status.success() {
        Err(format!("queue-process failed instead of refusing: {err}"))
    } else if !rejected.is_file() || !reason.is_file() {
        Err(format!(
            "not moved to rejected/ with a reason; stderr: {err}"
        ))
    } else if lane.q.join("jobs").join(&name).exists() {
        Err("still in jobs/".into())
    } else if std::fs::read_to_string(lane.q.join("nextseq")).unwrap()
        != format!("{}\n", moved_to.unwrap_or(1))
    {
        Err("nextseq moved".into())
    } else {
        Ok(std::fs::read_to_string(&reason).unwrap())
    };
    // Clean up for the next variant, whatever happened.
    for f in [&rejected, &reason, &lane.q.join("jobs").join(&name)] {
        let _ = std::fs::remove_file(f);
    }
    for m in ran {
        let _ = std::fs::remove_file(lane.marks.join(m));
    }
    set_next(&lane.q, 1);
    result
}

/// Run every variant, spread over the lanes; then the genuine job must
/// run in each lane. Returns each variant's label and refusal reason.
fn sweep(t: &Setup, prefix: &str, genuine: &[u8], variants: Vec<Variant>) -> Vec<(String, String)> {
    let n = variants.len();
    let lanes = lanes(t, prefix);
    let results: Vec<(String, Result<String, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .enumerate()
            .map(|(i, lane)| {
                let mine: Vec<&Variant> = variants.iter().skip(i).step_by(WORKERS).collect();
                let trust = &t.trust;
                scope.spawn(move || {
                    mine.into_iter()
                        .map(|v| (v.label.clone(), check(lane, trust, v)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(l, r)| r.as_ref().err().map(|e| format!("{l}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} variants were not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for lane in &lanes {
        std::fs::write(lane.q.join("jobs").join("fspl-genuine.fspl"), genuine).unwrap();
        ok(process(lane, &t.trust));
        assert!(
            lane.marks.join("ran-1").is_file(),
            "the untouched job did not run in {}",
            lane.q.display()
        );
    }
    results.into_iter().map(|(l, r)| (l, r.unwrap())).collect()
}

/// How many of the results whose label starts with `prefix` were refused
/// for a reason containing `why`.
fn count(results: &[(String, String)], prefix: &str, why: &str) -> usize {
    results
        .iter()
        .filter(|(l, r)| l.starts_with(prefix) && r.contains(why))
        .count()
}

/// Fix both CRCs of a job whose metadata was changed in place.
fn fix_crcs(job: &mut [u8]) {
    let meta_len = u64::from_be_bytes(job[14..22].try_into().unwrap()) as usize;
    let meta_end = fspl_format::PREFIX_LEN + meta_len;
    let meta_crc = crc32(&job[fspl_format::PREFIX_LEN..meta_end]);
    job[22..26].copy_from_slice(&meta_crc.to_be_bytes());
    let prefix_crc = crc32(&job[..26]);
    job[26..30].copy_from_slice(&prefix_crc.to_be_bytes());
}

fn header_len(job: &[u8]) -> usize {
    fspl_format::decode(job).unwrap().header_len as usize
}

/// A signed job, to QUEUE_NAME, with params and an env entry, carrying
/// `payload`.
fn signed_job(t: &Setup, payload: &[u8]) -> Vec<u8> {
    std::fs::write(&t.payload, payload).unwrap();
    let mut c = fs(["prepare", "--seq", "1", "--to", QUEUE_NAME, "--sign"]);
    c.arg(&t.laptop.secret)
        .arg("-i")
        .arg(&t.payload)
        .args(["--", "backup", "db"])
        .env("FSPL_SET_WHAT", "nightly");
    must(c)
}

#[test]
fn flipping_any_header_byte_or_a_sampled_payload_byte_is_refused() {
    let t = Setup::new();
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let job = signed_job(&t, &payload);
    let hl = header_len(&job);
    assert!(hl > 200, "a signed header is a few hundred bytes ({hl})");
    let mut variants = Vec::new();
    // Every header byte, CRCs left as they are.
    for off in 0..hl {
        let mut b = job.clone();
        b[off] ^= 0x01;
        variants.push(Variant {
            label: format!("raw-{off:05}"),
            bytes: b,
        });
    }
    // Every metadata byte, CRCs fixed up.
    for off in fspl_format::PREFIX_LEN..hl {
        for mask in [0x01u8, 0xff] {
            let mut b = job.clone();
            b[off] ^= mask;
            fix_crcs(&mut b);
            variants.push(Variant {
                label: format!("crc-{off:05}-{mask:02x}"),
                bytes: b,
            });
        }
    }
    let header_variants = variants.len();
    // Sampled payload bytes: the first, the last, and every 61st.
    let mut offsets: Vec<usize> = (0..payload.len()).step_by(61).collect();
    offsets.push(payload.len() - 1);
    for off in offsets {
        let mut b = job.clone();
        b[hl + off] ^= 0x80;
        variants.push(Variant {
            label: format!("payload-{off:05}"),
            bytes: b,
        });
    }
    let payload_variants = variants.len() - header_variants;
    let results = sweep(&t, "flip", &job, variants);
    assert_eq!(
        results.len(),
        hl + 2 * (hl - fspl_format::PREFIX_LEN) + payload_variants
    );
    assert!(payload_variants >= 60, "{payload_variants}");
    // The sweep reaches each check: CRCs for plain flips, the signature
    // (and the decoder) for forged ones, the digest for payload flips.
    assert_eq!(count(&results, "raw-", "unreadable job file"), hl);
    let forged = 2 * (hl - fspl_format::PREFIX_LEN);
    let by_signature = count(&results, "crc-", "bad signature");
    assert!(
        by_signature * 4 >= forged,
        "only {by_signature} of {forged} forged headers were refused for their signature"
    );
    assert_eq!(
        count(&results, "payload-", "does not match the header's"),
        payload_variants
    );
}

#[test]
fn truncating_a_small_signed_job_at_any_length_is_refused() {
    let t = Setup::new();
    let job = signed_job(&t, b"sixteen bytes!!\n");
    let variants: Vec<Variant> = (0..job.len())
        .map(|len| Variant {
            label: format!("cut-{len:05}"),
            bytes: job[..len].to_vec(),
        })
        .collect();
    let n = variants.len();
    assert!(n > 250, "{n}");
    let results = sweep(&t, "cut", &job, variants);
    let hl = header_len(&job);
    assert_eq!(count(&results, "cut-", "unreadable job file"), hl);
    assert_eq!(count(&results, "cut-", "the header says"), n - hl);
}

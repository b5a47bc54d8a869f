//! The golden vectors made by Filespooler 1.2.4: every good one decodes and
//! re-encodes to the identical bytes; every bad one is refused.

use std::path::PathBuf;

use fspl_format::{HeaderError, decode, format_env, read_header};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

fn good() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(vectors()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".fspl") && !name.starts_with("bad-") {
            out.push((name, std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    assert!(
        out.len() >= 8,
        "expected the 8 golden vectors, found {}",
        out.len()
    );
    out
}

#[test]
fn every_good_vector_reencodes_byte_identically() {
    for (name, bytes) in good() {
        let d = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = d.header.encode().unwrap();
        assert_eq!(
            again,
            bytes[..d.header_len as usize],
            "{name}: re-encoding differs"
        );
    }
}

#[test]
fn stream_and_slice_decoding_agree_and_stop_at_the_payload() {
    for (name, bytes) in good() {
        let d = decode(&bytes).unwrap();
        let mut r = &bytes[..];
        let s = read_header(&mut r).unwrap();
        assert_eq!(d, s, "{name}");
        assert_eq!(
            r.len() as u64,
            bytes.len() as u64 - d.header_len,
            "{name}: stream over-read"
        );
        let stem = name.trim_end_matches(".fspl");
        let want_len: u64 = std::fs::read_to_string(vectors().join(format!("{stem}.payload.len")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(r.len() as u64, want_len, "{name}: payload length");
    }
}

#[test]
fn info_output_matches_the_reference_in_utc() {
    // SAFETY: set before any thread reads the environment in this process's
    // test binary; every test here wants UTC.
    unsafe { std::env::set_var("TZ", "UTC") };
    for (name, bytes) in good() {
        let d = decode(&bytes).unwrap();
        let stem = name.trim_end_matches(".fspl");
        let want = std::fs::read(vectors().join(format!("{stem}.info"))).unwrap();
        let got = format_env(&d.header.environment(None));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{name}"
        );
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn every_bad_vector_is_refused_with_the_right_reason() {
    type Check = fn(&HeaderError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("bad-empty.fspl", |e| matches!(e, HeaderError::Empty)),
        ("bad-tag.fspl", |e| matches!(e, HeaderError::BadMagic)),
        ("bad-version.fspl", |e| {
            matches!(e, HeaderError::UnsupportedVersion(2))
        }),
        ("bad-prefix-crc.fspl", |e| {
            matches!(e, HeaderError::PrefixCrc { .. })
        }),
        ("bad-meta-crc.fspl", |e| {
            matches!(e, HeaderError::MetadataCrc { .. })
        }),
        ("bad-meta-body.fspl", |e| {
            matches!(e, HeaderError::MetadataCrc { .. })
        }),
        ("bad-truncated-prefix.fspl", |e| {
            matches!(e, HeaderError::TruncatedPrefix { got: 20 })
        }),
        ("bad-truncated-meta.fspl", |e| {
            matches!(
                e,
                HeaderError::TruncatedMetadata {
                    got: 10,
                    expected: 55
                }
            )
        }),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(vectors()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("bad-") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let (_, check) = cases
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no expectation for new vector {name}"));
        let e1 = decode(&bytes).expect_err(&name);
        assert!(check(&e1), "{name}: slice decoder said {e1}");
        let e2 = read_header(&mut &bytes[..]).expect_err(&name);
        assert!(check(&e2), "{name}: stream decoder said {e2}");
        seen += 1;
    }
    assert_eq!(seen, cases.len());
}

#[test]
fn the_extension_round_trips_and_every_field_is_covered_by_the_signed_bytes() {
    use fspl_format::{CmdType, Command, Ctime, Digest, DigestAlg, Extension, JobHeader};
    let h = JobHeader {
        seq: 9,
        ctime: Ctime {
            secs: 1_800_000_000,
            nanos: 5,
        },
        cmd_type: CmdType::Command(Command {
            params: vec![b"a".to_vec()],
            env: vec![(b"K".to_vec(), b"v".to_vec())],
        }),
    };
    let ext = Extension {
        payload_len: Some(3),
        digest: Some(Digest {
            alg: DigestAlg::Blake3,
            bytes: [7; 32],
        }),
        to: Some("backups".into()),
        signer: Some([1; 32]),
        signature: Some([2; 64]),
    };
    let bytes = h.encode_with(&ext).unwrap();
    let d = decode(&bytes).unwrap();
    assert_eq!(d.header, h);
    assert_eq!(d.ext, ext);
    // Without an extension the bytes are Filespooler's exactly.
    assert_eq!(
        decode(&h.encode().unwrap()).unwrap().ext,
        Extension::default()
    );
    // The signature is not part of what it signs; everything else is.
    let base = h.signed_bytes(&ext).unwrap();
    let mut no_sig = ext.clone();
    no_sig.signature = None;
    assert_eq!(h.signed_bytes(&no_sig).unwrap(), base);
    let mut variants: Vec<(JobHeader, Extension)> = Vec::new();
    let mut h2 = h.clone();
    h2.seq = 10;
    variants.push((h2, ext.clone()));
    let mut h2 = h.clone();
    h2.ctime.nanos = 6;
    variants.push((h2, ext.clone()));
    let mut h2 = h.clone();
    h2.cmd_type = CmdType::Nop;
    variants.push((h2, ext.clone()));
    let mut h2 = h.clone();
    if let CmdType::Command(c) = &mut h2.cmd_type {
        c.params[0] = b"b".to_vec();
    }
    variants.push((h2, ext.clone()));
    let mut h2 = h.clone();
    if let CmdType::Command(c) = &mut h2.cmd_type {
        c.env[0].1 = b"w".to_vec();
    }
    variants.push((h2, ext.clone()));
    let mut e2 = ext.clone();
    e2.payload_len = Some(4);
    variants.push((h.clone(), e2));
    let mut e2 = ext.clone();
    e2.digest = Some(Digest {
        alg: DigestAlg::Blake3,
        bytes: [8; 32],
    });
    variants.push((h.clone(), e2));
    let mut e2 = ext.clone();
    e2.to = Some("other".into());
    variants.push((h.clone(), e2));
    let mut e2 = ext.clone();
    e2.signer = Some([3; 32]);
    variants.push((h.clone(), e2));
    for (i, (hv, ev)) in variants.iter().enumerate() {
        assert_ne!(hv.signed_bytes(ev).unwrap(), base, "change {i} not covered");
    }
}

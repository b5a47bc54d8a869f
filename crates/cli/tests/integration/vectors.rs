//! The golden vectors through the binary: `stdin-info` prints exactly the
//! `.info` file, `stdin-payload` the payload; every `bad-*` vector is refused
//! with one error line.

use crate::helper::*;

fn good_vectors() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(vectors())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".fspl") && !n.starts_with("bad-")
        })
        .collect();
    v.sort();
    assert!(v.len() >= 8);
    v
}

#[test]
fn stdin_info_is_byte_identical_to_every_info_file() {
    for f in good_vectors() {
        let info = f.with_extension("info");
        let got = ok(run_with_file(ours(["stdin-info"]), &f));
        let want = std::fs::read(&info).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{}",
            f.display()
        );
        assert_eq!(got, want, "{}", f.display());
    }
}

#[test]
fn stdin_payload_matches_recorded_digest_and_length() {
    for f in good_vectors() {
        let got = ok(run_with_file(ours(["stdin-payload"]), &f));
        let stem = f.with_extension("");
        let len: usize = std::fs::read_to_string(format!("{}.payload.len", stem.display()))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let sha = std::fs::read_to_string(format!("{}.payload.sha256", stem.display())).unwrap();
        assert_eq!(got.len(), len, "{}", f.display());
        assert_eq!(sha256_hex(&got), sha.trim(), "{}", f.display());
    }
}

#[test]
fn every_bad_vector_is_refused_with_one_error_line() {
    let mut n = 0;
    for e in std::fs::read_dir(vectors()).unwrap() {
        let p = e.unwrap().path();
        if !p.file_name().unwrap().to_string_lossy().starts_with("bad-") {
            continue;
        }
        for cmd in ["stdin-info", "stdin-payload"] {
            let line = one_line_error(run_with_file(ours([cmd]), &p));
            assert!(line.contains("job on stdin"), "{line}");
        }
        n += 1;
    }
    assert_eq!(n, 8);
}

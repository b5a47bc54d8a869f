//! The synchronous client against a real s3s-fs server (fspl_testkit::s3).

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;
use fspl_s3::{Client, PutOutcome, S3Config, S3Error, UploadOptions};
use fspl_testkit::s3::{REGION, S3Server};

const BUCKET: &str = "bucket1";

fn config(s3: &S3Server) -> S3Config {
    let env: HashMap<String, String> = s3
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain([("HOME".to_string(), "/nonexistent".to_string())])
        .collect();
    let mut c = S3Config {
        bucket: BUCKET.into(),
        env_override: Some(env),
        ..S3Config::default()
    };
    c.fill_from_env().unwrap();
    assert_eq!(c.region(), REGION);
    c
}

fn server() -> (tempfile::TempDir, S3Server) {
    let d = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&d.path().join("s3"));
    s3.create_bucket(BUCKET);
    (d, s3)
}

/// A reader of `len` pseudo-random bytes that never holds them all.
struct Gen {
    left: u64,
    x: u64,
    hasher: blake3::Hasher,
}

impl Read for Gen {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (out.len() as u64).min(self.left) as usize;
        for b in &mut out[..n] {
            self.x = self.x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (self.x >> 56) as u8;
        }
        self.hasher.update(&out[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn put_if_absent_list_get_head_delete() {
    let (_d, s3) = server();
    let c = Client::new(&config(&s3)).unwrap();
    assert_eq!(
        c.put_if_absent("p/a", Bytes::from_static(b"one")).unwrap(),
        PutOutcome::Created { etag: c.head("p/a").unwrap().unwrap().etag }
    );
    assert_eq!(
        c.put_if_absent("p/a", Bytes::from_static(b"two")).unwrap(),
        PutOutcome::Exists,
        "a conditional create never overwrites"
    );
    assert_eq!(c.get("p/a", 100).unwrap().unwrap(), b"one");
    c.put("p/b", Bytes::from_static(b"bee")).unwrap();
    c.put("q/c", Bytes::from_static(b"sea")).unwrap();
    let keys: Vec<String> = c.list("p").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["p/a", "p/b"]);
    assert_eq!(c.list("").unwrap().len(), 3);
    assert_eq!(c.head("p/b").unwrap().unwrap().size, 3);
    assert!(c.head("p/zz").unwrap().is_none());
    assert!(c.get("p/zz", 10).unwrap().is_none());
    assert!(c.reader("p/zz").unwrap().is_none());
    let e = c.get("p/a", 2).unwrap_err();
    assert!(e.to_string().contains("larger than 2 bytes"), "{e}");
    c.delete("p/a").unwrap();
    c.delete("p/a").unwrap();
    c.delete_many(&["p/b".into(), "q/c".into(), "nothing".into()]).unwrap();
    assert!(c.list("").unwrap().is_empty());
}

#[test]
fn multipart_upload_streams_and_what_lands_is_what_was_read() {
    let (_d, s3) = server();
    let c = Client::new(&config(&s3)).unwrap();
    let opts = UploadOptions {
        part_size: 5 << 20,
        concurrency: 2,
    };
    // Three full parts and a short one.
    let len = (3 * (5 << 20) + 12345) as u64;
    let mut g = Gen {
        left: len,
        x: 7,
        hasher: blake3::Hasher::new(),
    };
    let up = c.upload("big/file", &mut g, &opts).unwrap();
    assert_eq!(up.bytes, len);
    assert_eq!(up.parts, 4);
    let mut r = c.reader("big/file").unwrap().unwrap();
    assert_eq!(r.size(), len);
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut r, &mut h).unwrap();
    assert_eq!(n, len);
    assert_eq!(h.finalize(), g.hasher.finalize());
    // A small stream goes up in one PUT.
    let up = c.upload("small", &mut &b"tiny"[..], &opts).unwrap();
    assert_eq!((up.bytes, up.parts), (4, 0));
    assert_eq!(c.get("small", 10).unwrap().unwrap(), b"tiny");
}

/// A stream that fails after two parts: the upload is aborted, and no
/// object appears under the key.
#[test]
fn a_failed_multipart_upload_leaves_no_object() {
    let (_d, s3) = server();
    let c = Client::new(&config(&s3)).unwrap();
    struct Failing(u64);
    impl Read for Failing {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = (out.len() as u64).min(self.0) as usize;
            out[..n].fill(1);
            self.0 -= n as u64;
            Ok(n)
        }
    }
    let e = c
        .upload("x", &mut Failing(11 << 20), &UploadOptions::default())
        .unwrap_err();
    assert!(matches!(e, S3Error::Read { .. }), "{e:?}");
    assert!(fspl_queue::display_chain(&e).contains("disk on fire"));
    assert!(c.head("x").unwrap().is_none());
    assert!(c.list("").unwrap().is_empty());
}

#[test]
fn errors_say_what_and_whether_to_retry() {
    let (_d, mut s3) = server();
    let mut cfg = config(&s3);
    cfg.secret_access_key = Some("wrong".into());
    let bad = Client::new(&cfg).unwrap();
    let e = bad.list("").unwrap_err();
    assert!(matches!(e, S3Error::BadCredentials { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert!(!e.to_string().contains("wrong"), "never the secret: {e}");

    let mut cfg = config(&s3);
    cfg.bucket = "missing".into();
    let e = Client::new(&cfg).unwrap().list("").unwrap_err();
    assert!(matches!(e, S3Error::NoSuchBucket { .. }), "{e:?}");
    assert!(!e.is_transient());

    let mut cfg = config(&s3);
    cfg.max_retries = Some(1);
    let c = Client::new(&cfg).unwrap();
    s3.stop();
    let e = c.put("k", Bytes::from_static(b"v")).unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(!fspl_queue::display_chain(&e).contains('\n'));
    s3.restart();
    c.put("k", Bytes::from_static(b"v")).unwrap();
    assert_eq!(c.get("k", 10).unwrap().unwrap(), b"v");
}

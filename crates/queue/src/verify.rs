//! Deciding whether a job may run: signature, signer, destination, clock,
//! params (with a trust file), and payload length and digest (whenever the
//! job carries them). All of it happens before the command is started, so
//! a tampered job never feeds a single byte to it.
//!
//! A refused job is moved to `DIR/rejected/` with a one-line reason beside
//! it (never deleted); nextseq does not move, so the genuine job with that
//! seq still runs when it arrives.

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;

use fspl_format::{Digest, Extension, JobHeader, rfc3339_utc};
use fspl_trust::digest::hex;
use fspl_trust::{PublicKey, TrustFile};

use crate::error::{QueueError, Result};
use crate::queue::Queue;

/// Where refused jobs go, inside the queue directory.
pub const REJECTED_DIR: &str = "rejected";

/// Why a job was refused, and by whom it claimed to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The trust file's name for the signer, when the key is known.
    pub sender: Option<String>,
}

impl Refusal {
    pub(crate) fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            sender: None,
        }
    }
}

/// What a job passed: who signed it (with a trust file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vetted {
    pub sender: Option<String>,
}

/// The last signature that verified: `queue-process` vets a job's header
/// up to three times (when choosing among candidates for a seq, after
/// opening the file, and on the header of the file it actually reads the
/// payload from), and an ed25519 verification is most of the cost of
/// vetting. The memo holds the exact bytes (key, signature, signed
/// message), so a hit means the very same check already passed; anything
/// that differs in a single byte is verified afresh.
#[derive(Debug, Default)]
pub struct SignatureMemo(std::cell::RefCell<Option<Verified>>);

/// Key, signature and signed bytes of a check that passed.
type Verified = ([u8; 32], [u8; 64], Vec<u8>);

impl SignatureMemo {
    fn verify(&self, pk: &PublicKey, key: &[u8; 32], signed: &[u8], sig: &[u8; 64]) -> bool {
        if let Some((k, s, m)) = &*self.0.borrow()
            && k == key
            && s == sig
            && m.as_slice() == signed
        {
            return true;
        }
        let ok = pk.verify(signed, sig);
        if ok {
            *self.0.borrow_mut() = Some((*key, *sig, signed.to_vec()));
        }
        ok
    }
}

/// Checks on the header alone (cheap; done before the payload is read).
/// Without a trust file nothing is required of the header.
pub fn check_header(
    header: &JobHeader,
    ext: &Extension,
    trust: Option<&TrustFile>,
    queue_name: Option<&str>,
    allow_job_params: bool,
    now_secs: i64,
) -> std::result::Result<Vetted, Refusal> {
    check_header_memo(
        header,
        ext,
        trust,
        queue_name,
        allow_job_params,
        now_secs,
        &SignatureMemo::default(),
    )
}

/// [`check_header`], skipping the signature verification when `memo`
/// holds the same key, signature and signed bytes from an earlier pass.
pub fn check_header_memo(
    header: &JobHeader,
    ext: &Extension,
    trust: Option<&TrustFile>,
    queue_name: Option<&str>,
    allow_job_params: bool,
    now_secs: i64,
    memo: &SignatureMemo,
) -> std::result::Result<Vetted, Refusal> {
    let Some(trust) = trust else {
        return Ok(Vetted::default());
    };
    let (Some(key), Some(sig)) = (ext.signer, ext.signature) else {
        return Err(Refusal::new(
            "unsigned job, and a trust file requires every job to be signed",
        ));
    };
    let pk = PublicKey::from_bytes(&key).map_err(|e| match e {
        fspl_trust::KeyError::WeakPublic => Refusal::new(
            "signer key is a weak (small-order) ed25519 key, for which signatures can be forged",
        ),
        _ => Refusal::new("signer key is not a valid ed25519 key"),
    })?;
    let Some(sender) = trust.sender(&key) else {
        return Err(Refusal::new(format!(
            "signed by a key that is not in the trust file ({})",
            pk.fingerprint()
        )));
    };
    let refuse = |reason: String| Refusal {
        reason,
        sender: Some(sender.name.clone()),
    };
    let signed = header
        .signed_bytes(ext)
        .map_err(|e| refuse(format!("cannot encode the signed fields: {e}")))?;
    if !memo.verify(&pk, &key, &signed, &sig) {
        return Err(refuse(
            "bad signature: the header or payload digest was changed after signing".into(),
        ));
    }
    if ext.digest.is_none() || ext.payload_len.is_none() {
        return Err(refuse(
            "signed job carries no payload length and digest".into(),
        ));
    }
    match (queue_name, ext.to.as_deref()) {
        (Some(q), Some(to)) if q == to => {
            if !sender.allows_queue(q) {
                return Err(refuse(format!(
                    "sender {:?} may not address queue {q:?}",
                    sender.name
                )));
            }
        }
        (Some(q), Some(to)) => {
            return Err(refuse(format!(
                "addressed to queue {to:?}, but this queue is {q:?}"
            )));
        }
        (Some(q), None) => {
            return Err(refuse(format!(
                "not addressed to a queue, but this queue is {q:?} and takes only jobs prepared with --to {q}"
            )));
        }
        (None, Some(to)) => {
            return Err(refuse(format!(
                "addressed to queue {to:?}, but this queue has no name (see queue-init --name)"
            )));
        }
        // No queue name and no destination: an unnamed queue, or
        // `stdin-process` with a job not sent --to anywhere. A sender
        // limited to some queues may only reach those, by name.
        (None, None) => {
            if let Some(allowed) = sender.queue_patterns() {
                return Err(refuse(format!(
                    "sender {:?} may only address the queues it is allowed ({allowed:?}), but this job is not addressed to one (prepare it with --to NAME)",
                    sender.name
                )));
            }
        }
    }
    let skew = i64::try_from(trust.max_future_skew).unwrap_or(i64::MAX);
    if header.ctime.secs > now_secs.saturating_add(skew) {
        return Err(refuse(format!(
            "created {} UTC, more than {}s in the future",
            rfc3339_utc(header.ctime),
            trust.max_future_skew
        )));
    }
    if allow_job_params && !sender.allows_params(header.params()) {
        let shown: Vec<String> = header
            .params()
            .iter()
            .map(|p| format!("{:?}", String::from_utf8_lossy(p)))
            .collect();
        return Err(refuse(format!(
            "params [{}] are not allowed for sender {:?}",
            shown.join(", "),
            sender.name
        )));
    }
    Ok(Vetted {
        sender: Some(sender.name.clone()),
    })
}

/// Compare the payload as read with what the header promised.
pub fn check_payload(
    ext: &Extension,
    len: u64,
    digest: &Digest,
) -> std::result::Result<(), Refusal> {
    if let Some(want) = ext.payload_len
        && want != len
    {
        return Err(Refusal::new(format!(
            "payload is {len} bytes, the header says {want} (cut short or altered)"
        )));
    }
    if let Some(want) = &ext.digest
        && (want.alg != digest.alg || want.bytes != digest.bytes)
    {
        return Err(Refusal::new(format!(
            "payload {} digest {} does not match the header's {}",
            want.alg.name(),
            hex(&digest.bytes),
            hex(&want.bytes)
        )));
    }
    Ok(())
}

/// Move a refused job to `DIR/rejected/` with its reason in `NAME.reason`
/// (one line; control characters escaped). A name already taken there
/// gets a suffix (`fspl-ID.1.fspl`): nothing in `rejected/` is ever
/// replaced, and a `rejected/` that is not a real directory (a symbolic
/// link) is refused. Returns where the job went.
pub fn reject(queue: &Queue, name: &OsStr, seq: Option<u64>, refusal: &Refusal) -> Result<PathBuf> {
    let mut line = String::new();
    if let Some(s) = seq {
        line.push_str(&format!("seq {s}: "));
    }
    if let Some(s) = &refusal.sender {
        line.push_str(&format!("sender {s:?}: "));
    }
    line.push_str(&refusal.reason);
    let to =
        crate::quarantine::quarantine(queue, crate::quarantine::Quarantine::Rejected, name, &line)?
            .ok_or_else(|| QueueError::Io {
                action: "move refused job",
                path: queue.job_path(name),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            })?;
    let _ = std::io::stderr().flush();
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fspl_format::{CmdType, Command, Ctime, DigestAlg};
    use fspl_trust::SecretKey;

    fn signed(
        k: &SecretKey,
        to: Option<&str>,
        params: &[&str],
        secs: i64,
    ) -> (JobHeader, Extension) {
        let h = JobHeader {
            seq: 3,
            ctime: Ctime { secs, nanos: 0 },
            cmd_type: CmdType::Command(Command {
                params: params.iter().map(|p| p.as_bytes().to_vec()).collect(),
                env: vec![],
            }),
        };
        let mut e = Extension {
            payload_len: Some(0),
            digest: Some(Digest {
                alg: DigestAlg::Blake3,
                bytes: *blake3_empty(),
            }),
            to: to.map(str::to_string),
            signer: Some(k.public().bytes()),
            signature: None,
        };
        e.signature = Some(k.sign(&h.signed_bytes(&e).unwrap()));
        (h, e)
    }

    fn blake3_empty() -> &'static [u8; 32] {
        static E: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        E.get_or_init(|| {
            fspl_trust::digest::hash_reader(DigestAlg::Blake3, &mut &b""[..])
                .unwrap()
                .1
                .bytes
        })
    }

    fn trust(k: &SecretKey, extra: &str) -> TrustFile {
        TrustFile::parse(
            std::path::Path::new("t"),
            &format!(
                "[[sender]]\nname = \"s\"\nkey = \"{}\"\n{extra}\n",
                k.public().to_openssh("")
            ),
        )
        .unwrap()
    }

    #[test]
    fn each_header_refusal_has_its_reason() {
        let k = SecretKey::generate("");
        let t = trust(&k, "queues = [\"q1\"]\nparams = [[\"ok\"]]");
        let now = 1_800_000_000;
        let (h, e) = signed(&k, Some("q1"), &["ok"], now);
        assert_eq!(
            check_header(&h, &e, Some(&t), Some("q1"), true, now)
                .unwrap()
                .sender
                .as_deref(),
            Some("s")
        );
        let r = |h: &JobHeader, e: &Extension, q: Option<&str>| {
            check_header(h, e, Some(&t), q, true, now)
                .unwrap_err()
                .reason
        };
        // unsigned
        let mut u = e.clone();
        u.signature = None;
        assert!(r(&h, &u, Some("q1")).contains("unsigned"));
        // unknown key
        let stranger = SecretKey::generate("");
        let (h2, e2) = signed(&stranger, Some("q1"), &["ok"], now);
        assert!(r(&h2, &e2, Some("q1")).contains("not in the trust file"));
        // any changed field
        let mut h3 = h.clone();
        h3.seq = 4;
        assert!(r(&h3, &e, Some("q1")).contains("bad signature"));
        let mut e3 = e.clone();
        e3.payload_len = Some(1);
        assert!(r(&h, &e3, Some("q1")).contains("bad signature"));
        // destination
        assert!(r(&h, &e, Some("q2")).contains("this queue is \"q2\""));
        assert!(r(&h, &e, None).contains("has no name"));
        let (h4, e4) = signed(&k, None, &["ok"], now);
        assert!(r(&h4, &e4, Some("q1")).contains("not addressed"));
        let (h5, e5) = signed(&k, Some("q9"), &["ok"], now);
        assert!(r(&h5, &e5, Some("q9")).contains("may not address"));
        // A sender limited to some queues reaches no unnamed queue (or
        // stdin-process) without `to`; one without a list does.
        assert!(r(&h4, &e4, None).contains("may only address the queues it is allowed"));
        let free = trust(&k, "");
        assert!(check_header(&h4, &e4, Some(&free), None, false, now).is_ok());
        // A weak signer key is named as such.
        let mut weak = e.clone();
        let mut id = [0u8; 32];
        id[0] = 1;
        weak.signer = Some(id);
        assert!(r(&h, &weak, Some("q1")).contains("weak (small-order)"));
        // clock
        let (h6, e6) = signed(&k, Some("q1"), &["ok"], now + 3600);
        assert!(r(&h6, &e6, Some("q1")).contains("in the future"));
        // params, only when they would be used
        let (h7, e7) = signed(&k, Some("q1"), &["rm", "-rf"], now);
        assert!(r(&h7, &e7, Some("q1")).contains("not allowed"));
        assert!(check_header(&h7, &e7, Some(&t), Some("q1"), false, now).is_ok());
    }

    #[test]
    fn signature_memo_only_skips_the_identical_check() {
        let k = SecretKey::generate("");
        let t = trust(&k, "queues = [\"q1\"]");
        let now = 1_800_000_000;
        let memo = SignatureMemo::default();
        let check = |h: &JobHeader, e: &Extension| {
            check_header_memo(h, e, Some(&t), Some("q1"), false, now, &memo)
        };
        let (h, e) = signed(&k, Some("q1"), &[], now);
        assert!(check(&h, &e).is_ok());
        assert!(
            memo.0.borrow().is_some(),
            "a verified signature is remembered"
        );
        assert!(check(&h, &e).is_ok());
        // After a hit for the genuine header, a changed field, a changed
        // signature or another key's signature over it still fails.
        let mut h2 = h.clone();
        h2.seq += 1;
        assert!(check(&h2, &e).unwrap_err().reason.contains("bad signature"));
        let mut e2 = e.clone();
        let mut sig = e2.signature.unwrap();
        sig[63] ^= 1;
        e2.signature = Some(sig);
        assert!(check(&h, &e2).unwrap_err().reason.contains("bad signature"));
        let mut e3 = e.clone();
        e3.payload_len = Some(7);
        assert!(check(&h, &e3).unwrap_err().reason.contains("bad signature"));
        // Policy is checked every time, memo or not.
        assert!(
            check_header_memo(&h, &e, Some(&t), Some("q2"), false, now, &memo)
                .unwrap_err()
                .reason
                .contains("this queue is \"q2\"")
        );
    }

    #[test]
    fn payload_length_and_digest_are_compared() {
        let d = |b: &[u8]| fspl_trust::digest::hash_reader(DigestAlg::Blake3, &mut &b[..]).unwrap();
        let (n, dg) = d(b"hello");
        let e = Extension {
            payload_len: Some(n),
            digest: Some(dg),
            ..Extension::default()
        };
        assert!(check_payload(&e, n, &dg).is_ok());
        let (n2, dg2) = d(b"hell");
        assert!(
            check_payload(&e, n2, &dg2)
                .unwrap_err()
                .reason
                .contains("5")
        );
        let (n3, dg3) = d(b"jello");
        assert!(
            check_payload(&e, n3, &dg3)
                .unwrap_err()
                .reason
                .contains("does not match")
        );
    }
}

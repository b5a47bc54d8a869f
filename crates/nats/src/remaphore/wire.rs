//! remaphore's message, byte for byte (docs/nats.md, PROTOCOL.md):
//!
//! ```text
//! pubkey,sig,destination,time,uuid,verb,rr,payload
//! ```
//!
//! `pubkey` and `sig` are base58 (Bitcoin alphabet); `sig` is ed25519 over
//! fields 3-8 joined by `,`; `time` is Unix nanoseconds in lowercase hex;
//! `uuid` lowercase hex; `rr` is `Q` for a request, `_` otherwise; only the
//! payload may contain commas.
//!
//! The original verifies the signature over its own re-encoding of the
//! parsed fields, so several raw messages (`+1a` or `1A` for a time, upper
//! case uuid hex, any `rr` other than `Q`) carry the same valid signature:
//! each would have a different hash and slip past a replay window keyed by
//! hash. We accept only the canonical encoding, which is the only one an
//! honest sender (ours or the original) ever emits.

use sha2::{Digest, Sha256};

use fspl_trust::{PublicKey, SecretKey};

/// Length of a uuid made from a `-u` string or at random.
pub const UUID_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message has {0} comma-separated fields before the payload, not 7")]
    Fields(usize),
    #[error("sender key is not base58 of 32 bytes")]
    SenderKey,
    #[error("sender key: {0}")]
    WeakOrBadKey(String),
    #[error("signature is not base58 of 64 bytes")]
    SignatureEncoding,
    #[error("time {0:?} is not a hexadecimal nanosecond count")]
    Time(String),
    #[error("uuid {0:?} is not hexadecimal")]
    Uuid(String),
    #[error("destination or verb is not UTF-8")]
    Utf8,
    #[error("message is not in canonical form (its signed fields re-encode differently)")]
    NotCanonical,
    #[error("bad signature")]
    Signature,
    #[error("{what} {value:?} contains a comma")]
    Comma { what: &'static str, value: String },
}

/// A parsed (and, by [`Message::decode`], signature-checked) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub sender: PublicKey,
    pub signature: [u8; 64],
    pub destination: String,
    pub time_nanos: i64,
    pub uuid: Vec<u8>,
    pub verb: String,
    pub request_reply: bool,
    pub payload: Vec<u8>,
    /// SHA-256 of the whole raw message (the reply subject of a request).
    pub hash: [u8; 32],
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Go's `strconv.FormatInt(t, 16)`.
pub fn format_time(t: i64) -> String {
    if t < 0 {
        format!("-{:x}", t.unsigned_abs())
    } else {
        format!("{t:x}")
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The uuid remaphore derives from a `-u` string: empty → 12 random bytes;
/// up to 12 bytes → the bytes themselves; longer → the first 12 bytes of
/// its SHA-256.
pub fn uuid_from(s: &[u8]) -> Vec<u8> {
    if s.is_empty() {
        let mut b = vec![0u8; UUID_LEN];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        b
    } else if s.len() <= UUID_LEN {
        s.to_vec()
    } else {
        sha256(s)[..UUID_LEN].to_vec()
    }
}

/// Fields 3-8, the signed part.
fn signed_part(
    destination: &str,
    time_nanos: i64,
    uuid: &[u8],
    verb: &str,
    request_reply: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(destination.len() + verb.len() + payload.len() + 64);
    v.extend_from_slice(destination.as_bytes());
    v.push(b',');
    v.extend_from_slice(format_time(time_nanos).as_bytes());
    v.push(b',');
    v.extend_from_slice(hex(uuid).as_bytes());
    v.push(b',');
    v.extend_from_slice(verb.as_bytes());
    v.push(b',');
    v.push(if request_reply { b'Q' } else { b'_' });
    v.push(b',');
    v.extend_from_slice(payload);
    v
}

/// What to send; [`Outgoing::encode`] signs it.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub destination: &'a str,
    pub time_nanos: i64,
    pub uuid: &'a [u8],
    pub verb: &'a str,
    pub request_reply: bool,
    pub payload: &'a [u8],
}

impl Outgoing<'_> {
    /// The raw message, signed with `key`, and its hash.
    pub fn encode(&self, key: &SecretKey) -> Result<(Vec<u8>, [u8; 32]), WireError> {
        for (what, value) in [("destination", self.destination), ("verb", self.verb)] {
            if value.contains(',') {
                return Err(WireError::Comma {
                    what,
                    value: value.to_string(),
                });
            }
        }
        let signed = signed_part(
            self.destination,
            self.time_nanos,
            self.uuid,
            self.verb,
            self.request_reply,
            self.payload,
        );
        let sig = key.sign(&signed);
        let mut raw = Vec::with_capacity(signed.len() + 140);
        raw.extend_from_slice(key.public().to_base58().as_bytes());
        raw.push(b',');
        raw.extend_from_slice(bs58::encode(sig).into_string().as_bytes());
        raw.push(b',');
        raw.extend_from_slice(&signed);
        let hash = sha256(&raw);
        Ok((raw, hash))
    }
}

fn split_n(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == b',').collect()
}

impl Message {
    /// Parse and verify a raw message: canonical form, a sender key that is
    /// a valid, non-weak ed25519 point, and a signature that verifies
    /// (strictly) over fields 3-8. Who the sender is allowed to be is the
    /// caller's business ([`crate::remaphore::config::Config`]).
    pub fn decode(raw: &[u8]) -> Result<Message, WireError> {
        let head = split_n(raw, 3);
        if head.len() != 3 {
            return Err(WireError::Fields(head.len().saturating_sub(1)));
        }
        let rest = split_n(head[2], 6);
        if rest.len() != 6 {
            return Err(WireError::Fields(rest.len() + 1));
        }
        let key_bytes: [u8; 32] = bs58::decode(head[0])
            .into_vec()
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(WireError::SenderKey)?;
        let sender = PublicKey::from_bytes(&key_bytes)
            .map_err(|e| WireError::WeakOrBadKey(e.to_string()))?;
        let signature: [u8; 64] = bs58::decode(head[1])
            .into_vec()
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(WireError::SignatureEncoding)?;
        let destination = std::str::from_utf8(rest[0]).map_err(|_| WireError::Utf8)?;
        let time_text = String::from_utf8_lossy(rest[1]).into_owned();
        let time_nanos =
            i64::from_str_radix(&time_text, 16).map_err(|_| WireError::Time(time_text.clone()))?;
        let uuid_text = String::from_utf8_lossy(rest[2]).into_owned();
        let uuid = unhex(&uuid_text).ok_or(WireError::Uuid(uuid_text))?;
        let verb = std::str::from_utf8(rest[3]).map_err(|_| WireError::Utf8)?;
        let request_reply = rest[4] == b"Q";
        let payload = rest[5];
        let signed = signed_part(destination, time_nanos, &uuid, verb, request_reply, payload);
        // Canonical: the raw message is exactly what an honest sender emits.
        let canonical_len = head[0].len() + head[1].len() + 2 + signed.len();
        if raw.len() != canonical_len
            || &raw[head[0].len() + head[1].len() + 2..] != signed.as_slice()
            || bs58::encode(key_bytes).into_string().as_bytes() != head[0]
            || bs58::encode(signature).into_string().as_bytes() != head[1]
        {
            return Err(WireError::NotCanonical);
        }
        if !sender.verify(&signed, &signature) {
            return Err(WireError::Signature);
        }
        Ok(Message {
            sender,
            signature,
            destination: destination.to_string(),
            time_nanos,
            uuid,
            verb: verb.to_string(),
            request_reply,
            payload: payload.to_vec(),
            hash: sha256(raw),
        })
    }

    /// The raw message again (identical to what was decoded).
    pub fn encode(&self) -> Vec<u8> {
        let signed = signed_part(
            &self.destination,
            self.time_nanos,
            &self.uuid,
            &self.verb,
            self.request_reply,
            &self.payload,
        );
        let mut raw = Vec::with_capacity(signed.len() + 140);
        raw.extend_from_slice(self.sender.to_base58().as_bytes());
        raw.push(b',');
        raw.extend_from_slice(bs58::encode(self.signature).into_string().as_bytes());
        raw.push(b',');
        raw.extend_from_slice(&signed);
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn vectors() -> Vec<(String, Vec<u8>)> {
        // Copied from shared/remaphore/vectors (test keys, protect nothing).
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/remaphore-vectors/messages.jsonl"
        ))
        .expect("the captured remaphore vectors");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["subject"].as_str().unwrap().to_string(),
                    v["data"].as_str().unwrap().as_bytes().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn captured_vectors_verify_and_reencode_byte_identically() {
        let v = vectors();
        assert_eq!(v.len(), 4);
        for (_, raw) in &v {
            let m = Message::decode(raw)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(raw)));
            assert_eq!(&m.encode(), raw);
            assert_eq!(m.hash, sha256(raw));
        }
        let m1 = Message::decode(&v[1].1).unwrap();
        assert_eq!(m1.uuid, b"job-42");
        assert_eq!(m1.payload, b"payload, with, commas");
        assert_eq!(m1.destination, "**");
        let req = Message::decode(&v[2].1).unwrap();
        assert!(req.request_reply);
        assert_eq!(v[3].0, format!("remaphore.{}", hex(&req.hash)));
        let reply = Message::decode(&v[3].1).unwrap();
        assert_eq!(reply.verb, "reply");
        assert_eq!(reply.destination, "");
        assert_eq!(reply.payload, b"0,reply to question\nsecond line\n");
    }

    #[test]
    fn a_tampered_vector_fails_verification() {
        for (_, raw) in vectors() {
            let mut t = raw.clone();
            let last = t.len() - 1;
            t[last] ^= 1;
            assert_eq!(Message::decode(&t), Err(WireError::Signature));
        }
    }

    #[test]
    fn non_canonical_spellings_of_a_signed_message_are_refused() {
        // Each of these carries a signature the original accepts (it
        // verifies its re-encoding), but hashes differently: a replay
        // window keyed by hash would let them through.
        let raw = String::from_utf8(vectors()[0].1.clone()).unwrap();
        let f: Vec<&str> = raw.splitn(8, ',').collect();
        let variants = [
            format!(
                "{},{},{},+{},{},{},{},{}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
            ),
            format!(
                "{},{},{},0{},{},{},{},{}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
            ),
            format!(
                "{},{},{},{},{},{},{},{}",
                f[0],
                f[1],
                f[2],
                f[3].to_uppercase(),
                f[4],
                f[5],
                f[6],
                f[7]
            ),
            format!(
                "{},{},{},{},{},{},{},{}",
                f[0],
                f[1],
                f[2],
                f[3],
                f[4].to_uppercase(),
                f[5],
                f[6],
                f[7]
            ),
            format!(
                "{},{},{},{},{},{},x,{}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[7]
            ),
            format!(
                "1{},{},{},{},{},{},{},{}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
            ),
        ];
        for v in variants {
            let e = Message::decode(v.as_bytes()).unwrap_err();
            assert!(
                matches!(e, WireError::NotCanonical | WireError::SenderKey),
                "{v}: {e:?}"
            );
        }
    }

    #[test]
    fn what_we_encode_decodes_and_verifies() {
        let k = SecretKey::generate("");
        let (raw, hash) = Outgoing {
            destination: "com.*.x",
            time_nanos: -5,
            uuid: b"abc",
            verb: "ping",
            request_reply: true,
            payload: b"a,b\nc\xff",
        }
        .encode(&k)
        .unwrap();
        let m = Message::decode(&raw).unwrap();
        assert_eq!(m.hash, hash);
        assert_eq!(m.time_nanos, -5);
        assert_eq!(m.sender, k.public());
        assert!(m.request_reply);
        assert_eq!(m.payload, b"a,b\nc\xff");
        assert_eq!(m.encode(), raw);
        let e = Outgoing {
            destination: "a,b",
            time_nanos: 0,
            uuid: b"",
            verb: "ping",
            request_reply: false,
            payload: b"",
        }
        .encode(&k)
        .unwrap_err();
        assert!(matches!(e, WireError::Comma { .. }));
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            ",",
            ",,,,,,,",
            "a,b,c,d,e,f,g,h",
            "\u{ff}\u{fe},,,,,,,",
            "11111111111111111111111111111111,1,a,zz,xx,v,Q,p",
        ] {
            assert!(Message::decode(s.as_bytes()).is_err(), "{s}");
        }
        let k = SecretKey::generate("");
        let pk = k.public().to_base58();
        for s in [
            format!("{pk},1,a,ffffffffffffffffff,00,v,Q,p"),
            format!("{pk},1,a,1,0,v,Q,p"),
            format!("{pk},1,a,1,00,v,Q,p"),
        ] {
            assert!(Message::decode(s.as_bytes()).is_err(), "{s}");
        }
    }

    #[test]
    fn uuid_rule_matches_remaphore() {
        assert_eq!(uuid_from(b"job-42"), b"job-42");
        assert_eq!(uuid_from(b"123456789012"), b"123456789012");
        assert_eq!(
            uuid_from(b"1234567890123"),
            sha256(b"1234567890123")[..12].to_vec()
        );
        assert_eq!(uuid_from(b"").len(), 12);
        assert_ne!(uuid_from(b""), uuid_from(b""));
    }
}

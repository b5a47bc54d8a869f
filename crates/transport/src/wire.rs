//! The stream between `fspl push ssh://...` and `fspl serve-stdin`.
//!
//! Both sides start by sending a [`Msg::Hello`] with the range of protocol
//! versions they speak, without waiting for the other's (no round trip);
//! each then checks the other's. A server that agrees answers
//! [`Msg::Ready`] with its limits, or [`Msg::Fatal`] (with the reason and
//! whether trying again later may help) and ends the session.
//!
//! Every message is a frame: one type byte, the body's length (u32, big
//! endian) and the body. Each type has a small maximum body size
//! ([`max_body`]); a frame that declares more is a protocol error before a
//! byte of its body is read or allocated. Integers are big endian, strings
//! are a u16 length and that many bytes (UTF-8 for messages, read lossily).
//!
//! A job is a [`Msg::Job`] frame (id, length, name) followed by exactly
//! that many bytes of the job file and then the 32-byte BLAKE3 digest of
//! those bytes (a trailer, so that the sender hashes the file as it sends
//! it, in one pass). The receiver checks the length against its limit
//! before reading, and the digest after; it answers each job with
//! [`Msg::Ack`] once the job is durable in the queue, or with
//! [`Msg::Refused`]. [`Msg::End`] says no job follows; the receiver then
//! commits what it has, acknowledges it, sends [`Msg::Bye`] and exits.

use std::io::{self, Read, Write};

/// Identifies the protocol in the hello, so that anything else on the
/// other end (a shell printing a banner, another program) is told apart
/// from a version mismatch.
pub const MAGIC: [u8; 8] = *b"fspl-ssh";
/// The protocol versions this build speaks.
pub const VERSION_MIN: u16 = 1;
pub const VERSION_MAX: u16 = 1;

/// The longest job name accepted (a file name).
pub const MAX_NAME: usize = 255;
/// The longest refusal reason or fatal message sent (longer ones are cut).
pub const MAX_TEXT: usize = 4096;
/// Length of the digest trailer after a job's bytes.
pub const DIGEST_LEN: usize = 32;

/// What a `FSPL_SSH`-style command asks the forced command for: the only
/// request this version knows (`fspl-push QUEUE`).
pub const PUSH_VERB: &str = "fspl-push";

const T_HELLO: u8 = 0x01;
const T_READY: u8 = 0x02;
const T_JOB: u8 = 0x10;
const T_END: u8 = 0x11;
const T_ACK: u8 = 0x20;
const T_REFUSED: u8 = 0x21;
const T_FATAL: u8 = 0x2e;
const T_BYE: u8 = 0x2f;

/// Whether a fatal error may go away by itself (see
/// [`crate::TransportErrorKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatalKind {
    Transient,
    Permanent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The versions the sender of the hello speaks.
    Hello { min: u16, max: u16 },
    /// Server to client: go ahead; jobs larger than `max_job_len` are not
    /// taken (the client refuses them without sending them).
    Ready { version: u16, max_job_len: u64 },
    /// Client to server: a job of `len` bytes follows, then its digest.
    Job { id: u64, len: u64, name: Vec<u8> },
    /// Client to server: no more jobs.
    End,
    /// Server to client: job `id` is durable in the queue.
    Ack { id: u64 },
    /// Server to client: job `id` will not be taken; sending it again
    /// will not help.
    Refused { id: u64, reason: String },
    /// Either way: the session ends, for this reason.
    Fatal { kind: FatalKind, message: String },
    /// Server to client: everything is acknowledged; the session ends.
    Bye,
}

/// What can go wrong reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream ended cleanly between two frames.
    #[error("the connection was closed")]
    Closed,
    #[error("the connection was closed in the middle of a message")]
    Truncated,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The largest body a frame of this type may declare; `None` for an
/// unknown type.
pub fn max_body(t: u8) -> Option<usize> {
    Some(match t {
        T_HELLO => MAGIC.len() + 4,
        T_READY => 2 + 8,
        T_JOB => 8 + 8 + 2 + MAX_NAME,
        T_END | T_BYE => 0,
        T_ACK => 8,
        T_REFUSED => 8 + 2 + MAX_TEXT,
        T_FATAL => 1 + 2 + MAX_TEXT,
        _ => return None,
    })
}

impl Msg {
    /// One whole job as it goes on the wire: its `Job` frame, its bytes,
    /// their digest (the client streams these; tests write them whole).
    pub fn job_frame(id: u64, name: &[u8], bytes: &[u8]) -> Vec<u8> {
        let mut f = Msg::Job {
            id,
            len: bytes.len() as u64,
            name: name.to_vec(),
        }
        .encode();
        f.extend_from_slice(bytes);
        f.extend_from_slice(blake3::hash(bytes).as_bytes());
        f
    }

    /// The frame, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        let t = match self {
            Msg::Hello { min, max } => {
                b.extend_from_slice(&MAGIC);
                b.extend_from_slice(&min.to_be_bytes());
                b.extend_from_slice(&max.to_be_bytes());
                T_HELLO
            }
            Msg::Ready {
                version,
                max_job_len,
            } => {
                b.extend_from_slice(&version.to_be_bytes());
                b.extend_from_slice(&max_job_len.to_be_bytes());
                T_READY
            }
            Msg::Job { id, len, name } => {
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                put_bytes(&mut b, &name[..name.len().min(MAX_NAME)]);
                T_JOB
            }
            Msg::End => T_END,
            Msg::Ack { id } => {
                b.extend_from_slice(&id.to_be_bytes());
                T_ACK
            }
            Msg::Refused { id, reason } => {
                b.extend_from_slice(&id.to_be_bytes());
                put_bytes(&mut b, cut(reason).as_bytes());
                T_REFUSED
            }
            Msg::Fatal { kind, message } => {
                b.push(match kind {
                    FatalKind::Transient => 0,
                    FatalKind::Permanent => 1,
                });
                put_bytes(&mut b, cut(message).as_bytes());
                T_FATAL
            }
            Msg::Bye => T_BYE,
        };
        let mut frame = Vec::with_capacity(5 + b.len());
        frame.push(t);
        frame.extend_from_slice(&(b.len() as u32).to_be_bytes());
        frame.extend_from_slice(&b);
        frame
    }

    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }

    /// Read one frame. A clean end of stream before its first byte is
    /// [`WireError::Closed`]; anything malformed is a protocol error. No
    /// more than [`max_body`] of the frame's type is ever allocated,
    /// whatever length the frame declares.
    pub fn read_from(r: &mut dyn Read) -> Result<Msg, WireError> {
        let mut head = [0u8; 5];
        let n = read_full(r, &mut head)?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        if n < head.len() {
            return Err(WireError::Truncated);
        }
        Msg::decode_body(head, r)
    }

    fn decode_body(head: [u8; 5], r: &mut dyn Read) -> Result<Msg, WireError> {
        let t = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let Some(max) = max_body(t) else {
            return Err(WireError::Protocol(format!(
                "unknown message type 0x{t:02x}"
            )));
        };
        if len > max {
            return Err(WireError::Protocol(format!(
                "message of type 0x{t:02x} declares {len} bytes, more than its limit of {max}"
            )));
        }
        let mut body = vec![0u8; len];
        if read_full(r, &mut body)? < len {
            return Err(WireError::Truncated);
        }
        let mut c = Cursor(&body);
        let msg = match t {
            T_HELLO => {
                if c.take(MAGIC.len())? != MAGIC {
                    return Err(WireError::Protocol(
                        "the hello does not start with fspl's magic bytes".into(),
                    ));
                }
                Msg::Hello {
                    min: c.u16()?,
                    max: c.u16()?,
                }
            }
            T_READY => Msg::Ready {
                version: c.u16()?,
                max_job_len: c.u64()?,
            },
            T_JOB => Msg::Job {
                id: c.u64()?,
                len: c.u64()?,
                name: c.bytes()?.to_vec(),
            },
            T_END => Msg::End,
            T_ACK => Msg::Ack { id: c.u64()? },
            T_REFUSED => Msg::Refused {
                id: c.u64()?,
                reason: String::from_utf8_lossy(c.bytes()?).into_owned(),
            },
            T_FATAL => {
                let kind = match c.u8()? {
                    0 => FatalKind::Transient,
                    1 => FatalKind::Permanent,
                    k => return Err(WireError::Protocol(format!("unknown error kind {k}"))),
                };
                Msg::Fatal {
                    kind,
                    message: String::from_utf8_lossy(c.bytes()?).into_owned(),
                }
            }
            T_BYE => Msg::Bye,
            _ => unreachable!("max_body knows every type"),
        };
        if !c.0.is_empty() {
            return Err(WireError::Protocol(format!(
                "{} unexpected bytes after a message of type 0x{t:02x}",
                c.0.len()
            )));
        }
        Ok(msg)
    }
}

/// The highest version both ranges share, if any.
pub fn agree(ours: (u16, u16), theirs: (u16, u16)) -> Option<u16> {
    let v = ours.1.min(theirs.1);
    (v >= ours.0 && v >= theirs.0).then_some(v)
}

/// The one-line message for versions that do not overlap.
pub fn version_mismatch(who: &str, theirs: (u16, u16)) -> String {
    let show = |(a, b): (u16, u16)| {
        if a == b {
            format!("version {a}")
        } else {
            format!("versions {a} to {b}")
        }
    };
    format!(
        "protocol version mismatch: the {who} speaks {}, this fspl speaks {}; install the same fspl version on both hosts",
        show(theirs),
        show((VERSION_MIN, VERSION_MAX))
    )
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(u16::MAX as usize)];
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s);
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Protocol(
                "a message is shorter than its fields".into(),
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// Read until `buf` is full or the stream ends; how many bytes were read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The request a client makes through `SSH_ORIGINAL_COMMAND`, as the
/// client builds it: `fspl-push QUEUE`, the name quoted as a POSIX shell
/// word when it needs to be.
pub fn push_request(queue: &str) -> String {
    let q = shlex::try_quote(queue).map(|c| c.into_owned());
    format!("{PUSH_VERB} {}", q.unwrap_or_else(|_| queue.to_string()))
}

/// Parse what the client asked for (`SSH_ORIGINAL_COMMAND`). It is data:
/// split like a POSIX shell would split it (quotes only, nothing is
/// expanded or run) and accepted only as `fspl-push QUEUE`. Returns the
/// queue name, or why the request is refused (one line).
pub fn parse_request(original: Option<&str>) -> Result<String, String> {
    let Some(cmd) = original else {
        return Err(
            "this key only accepts `fspl push`; the client asked for an interactive session".into(),
        );
    };
    let shown = || {
        let mut s: String = cmd.chars().take(80).collect();
        if s.len() < cmd.len() {
            s.push('…');
        }
        fspl_queue::escape_controls(&s).into_owned()
    };
    let refuse = || {
        format!(
            "this key only accepts `fspl push` ({PUSH_VERB} QUEUE); the client asked for {:?}",
            shown()
        )
    };
    if cmd.len() > 4096 {
        return Err(refuse());
    }
    let words = shlex::split(cmd).ok_or_else(refuse)?;
    match words.as_slice() {
        [verb, queue] if verb == PUSH_VERB => Ok(queue.clone()),
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Hello { min: 1, max: 3 },
            Msg::Ready {
                version: 1,
                max_job_len: u64::MAX,
            },
            Msg::Job {
                id: 7,
                len: 1 << 40,
                name: b"fspl-x.fspl".to_vec(),
            },
            Msg::End,
            Msg::Ack { id: u64::MAX },
            Msg::Refused {
                id: 0,
                reason: "unsigned ü".into(),
            },
            Msg::Fatal {
                kind: FatalKind::Permanent,
                message: "no".into(),
            },
            Msg::Fatal {
                kind: FatalKind::Transient,
                message: String::new(),
            },
            Msg::Bye,
        ]
    }

    #[test]
    fn every_message_round_trips_and_fits_its_limit() {
        for m in all() {
            let f = m.encode();
            assert!(f.len() - 5 <= max_body(f[0]).unwrap(), "{m:?}");
            assert_eq!(Msg::read_from(&mut &f[..]).unwrap(), m);
        }
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let m = Msg::Refused {
            id: 1,
            reason: "é".repeat(MAX_TEXT),
        };
        let Msg::Refused { reason, .. } = Msg::read_from(&mut &m.encode()[..]).unwrap() else {
            panic!()
        };
        assert!(reason.len() <= MAX_TEXT && reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_huge_declared_length_is_refused_before_reading_or_allocating() {
        // A reader that would fail if the body were read.
        struct Head(Vec<u8>);
        impl Read for Head {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    panic!("the body must not be read");
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        for t in [T_HELLO, T_JOB, T_REFUSED, T_FATAL, T_ACK] {
            let mut h = vec![t];
            h.extend_from_slice(&u32::MAX.to_be_bytes());
            let e = Msg::read_from(&mut Head(h)).unwrap_err();
            assert!(e.to_string().contains("more than its limit"), "{e}");
        }
    }

    #[test]
    fn endings_and_garbage_are_told_apart() {
        assert!(matches!(
            Msg::read_from(&mut &b""[..]),
            Err(WireError::Closed)
        ));
        assert!(matches!(
            Msg::read_from(&mut &b"\x01\x00"[..]),
            Err(WireError::Truncated)
        ));
        let f = Msg::Ack { id: 1 }.encode();
        assert!(matches!(
            Msg::read_from(&mut &f[..f.len() - 1]),
            Err(WireError::Truncated)
        ));
        let e = Msg::read_from(&mut &b"SSH-2.0-OpenSSH\r\n"[..]).unwrap_err();
        assert!(e.to_string().contains("unknown message type"), "{e}");
        let mut bad = Msg::Hello { min: 1, max: 1 }.encode();
        bad[5] = b'X';
        let e = Msg::read_from(&mut &bad[..]).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        // Bytes left over inside a frame.
        let mut f = vec![T_JOB, 0, 0, 0, 19];
        f.extend_from_slice(&[0; 18]);
        f.push(b'x');
        let e = Msg::read_from(&mut &f[..]).unwrap_err();
        assert!(e.to_string().contains("1 unexpected bytes"), "{e}");
        // A string longer than its frame.
        let mut g = vec![T_JOB, 0, 0, 0, 18];
        g.extend_from_slice(&[0; 16]);
        g.extend_from_slice(&[0, 5]);
        let e = Msg::read_from(&mut &g[..]).unwrap_err();
        assert!(e.to_string().contains("shorter than its fields"), "{e}");
    }

    #[test]
    fn versions_agree_on_the_highest_shared_one() {
        assert_eq!(agree((1, 1), (1, 1)), Some(1));
        assert_eq!(agree((1, 3), (2, 5)), Some(3));
        assert_eq!(agree((1, 1), (2, 2)), None);
        assert_eq!(agree((3, 4), (1, 2)), None);
        let m = version_mismatch("server", (2, 3));
        assert!(m.contains("speaks versions 2 to 3"), "{m}");
        assert!(m.contains("this fspl speaks version 1"), "{m}");
    }

    #[test]
    fn requests_are_data_split_like_shell_words_never_run() {
        assert_eq!(parse_request(Some("fspl-push backups")).unwrap(), "backups");
        assert_eq!(
            parse_request(Some(&push_request("my queue"))).unwrap(),
            "my queue"
        );
        assert_eq!(
            parse_request(Some(&push_request("a'b;$(x)"))).unwrap(),
            "a'b;$(x)"
        );
        for bad in [
            "",
            "ls",
            "fspl-push",
            "fspl-push a b",
            "fspl-push 'unclosed",
            "sh -c 'fspl-push q'",
            "fspl serve-stdin other",
        ] {
            let e = parse_request(Some(bad)).unwrap_err();
            assert!(e.contains("only accepts `fspl push`"), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = parse_request(Some("rm -rf /\n\x1b[2J")).unwrap_err();
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e}");
        assert!(
            parse_request(None)
                .unwrap_err()
                .contains("interactive session")
        );
    }

    fn arb_msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u16>(), any::<u16>()).prop_map(|(min, max)| Msg::Hello { min, max }),
            (any::<u16>(), any::<u64>()).prop_map(|(version, max_job_len)| Msg::Ready {
                version,
                max_job_len
            }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_NAME)
            )
                .prop_map(|(id, len, name)| Msg::Job { id, len, name }),
            Just(Msg::End),
            any::<u64>().prop_map(|id| Msg::Ack { id }),
            (any::<u64>(), ".{0,200}").prop_map(|(id, reason)| Msg::Refused { id, reason }),
            (any::<bool>(), ".{0,200}").prop_map(|(p, message)| Msg::Fatal {
                kind: if p {
                    FatalKind::Permanent
                } else {
                    FatalKind::Transient
                },
                message
            }),
            Just(Msg::Bye),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        #[test]
        fn the_decoder_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut r = &bytes[..];
            // Read frames until the input is used up or refused.
            for _ in 0..bytes.len() + 1 {
                if Msg::read_from(&mut r).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn frames_with_a_valid_type_and_random_bodies_never_panic(
            t in prop::sample::select(vec![T_HELLO, T_READY, T_JOB, T_END, T_ACK, T_REFUSED, T_FATAL, T_BYE]),
            len in 0u32..5000,
            body in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let mut f = vec![t];
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&body);
            let _ = Msg::read_from(&mut &f[..]);
        }

        #[test]
        fn messages_round_trip(m in arb_msg()) {
            let f = m.encode();
            prop_assert_eq!(Msg::read_from(&mut &f[..]).unwrap(), m);
        }

        #[test]
        fn requests_never_panic(s in ".{0,300}") {
            let _ = parse_request(Some(&s));
        }
    }
}

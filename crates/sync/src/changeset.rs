//! A change set: the payload of a sync job. A POSIX tar stream (pax
//! format, readable by any tar): first a manifest (who sent it, to whom,
//! its seq, the sender's clock), then one entry per changed path, each
//! with two pax records of ours: `FSPL.base` (the version the sender last
//! had, so the receiver can tell a conflict) and `FSPL.new` (what the path
//! becomes: a file with its size, mtime in ns and mode, a directory, a
//! link, or a tombstone). Regular files carry their bytes.
//!
//! Reading accepts only what writing makes: every header's checksum is
//! checked, every entry must carry our records and a path inside the tree
//! (`..`, absolute paths, empty components are refused), pax headers are
//! at most 64 KiB, and nothing is ever followed or unpacked by the tar
//! library. Memory stays flat in the size of the change set.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use serde::{Deserialize, Serialize};
use tar::{EntryType, Header};

use crate::meta::{Meta, Version, valid_rel};

/// The largest pax header accepted.
const MAX_PAX: u64 = 64 * 1024;

/// The first entry of a change set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The sender's name.
    pub from: String,
    /// The receiver's name (the sender's `peer`).
    pub to: String,
    pub seq: u64,
    /// The sender's clock when it made the change set (ns since the epoch).
    pub created_ns: i64,
}

/// One change, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub path: Vec<u8>,
    pub base: Version,
    pub new: Version,
}

/// Where a change set's bytes go: a private temporary file, or a zstd
/// encoder writing the job file itself (see [`crate::job::start`]).
pub enum Out {
    File(File),
    Zstd(Box<zstd::stream::write::Encoder<'static, File>>),
}

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Out::File(f) => f.write(b),
            Out::Zstd(e) => e.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::File(f) => f.flush(),
            Out::Zstd(e) => e.flush(),
        }
    }
}

/// Writes a change set, entry by entry, hashing it as it goes (the job's
/// header carries the digest). Nothing written is ever taken back: a file
/// that changed while it was read is followed by a retraction
/// ([`Writer::retract`]), and the receiver skips it.
pub struct Writer {
    out: BufWriter<Hashed>,
    pos: u64,
}

/// Hashes what goes by (under the buffer: in large pieces, which BLAKE3
/// hashes several chunks at a time).
struct Hashed {
    out: Out,
    hasher: fspl_trust::digest::Hasher,
}

impl Write for Hashed {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.out.write(b)?;
        self.hasher.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "LEN KEY=VALUE\n", LEN counting itself.
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn header(typ: EntryType, size: u64, mode: u32, mtime_ns: i64, name: &str) -> Header {
    let mut h = Header::new_ustar();
    let _ = h.set_path(name);
    h.set_entry_type(typ);
    h.set_size(size);
    h.set_mode(mode & 0o7777);
    h.set_mtime(mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

impl Writer {
    /// A change set written into `file`.
    pub fn new(file: File) -> Writer {
        Writer::to(Out::File(file))
    }

    pub fn to(out: Out) -> Writer {
        let hashed = Hashed {
            out,
            hasher: fspl_trust::digest::Hasher::new(fspl_format::DigestAlg::Blake3),
        };
        Writer {
            out: BufWriter::with_capacity(256 * 1024, hashed),
            pos: 0,
        }
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> io::Result<()> {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(pax_record(k, v));
        }
        let h = header(EntryType::XHeader, body.len() as u64, 0o644, 0, "PaxHeader");
        self.write(h.as_bytes())?;
        self.write(&body)?;
        self.write(&vec![0u8; padding(body.len() as u64)])
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    pub fn manifest(&mut self, m: &Manifest) -> io::Result<()> {
        let json = serde_json::to_vec(m).map_err(io::Error::other)?;
        self.pax(&[("FSPL.manifest", b"1")])?;
        let h = header(
            EntryType::Regular,
            json.len() as u64,
            0o644,
            m.created_ns,
            ".fspl-sync-changeset.json",
        );
        self.write(h.as_bytes())?;
        self.write(&json)?;
        self.write(&vec![0u8; padding(json.len() as u64)])
    }

    /// An entry without data (a directory, a link, a tombstone).
    pub fn entry(&mut self, path: &[u8], base: &Version, new: &Version) -> io::Result<()> {
        let (typ, mode, mtime, link) = match new {
            Version::Present(Meta::Dir { mode }) => (EntryType::Directory, *mode, 0, None),
            Version::Present(Meta::Link { target, mtime }) => {
                (EntryType::Symlink, 0o777, *mtime, Some(target.as_slice()))
            }
            Version::Present(Meta::File { .. }) => {
                return Err(io::Error::other("a file entry needs its data"));
            }
            Version::Deleted { at } => (EntryType::Regular, 0, *at, None),
            Version::Absent => return Err(io::Error::other("nothing to send")),
        };
        let (b, n) = (base.encode(), new.encode());
        let mut recs: Vec<(&str, &[u8])> = vec![
            ("path", path),
            ("FSPL.base", b.as_bytes()),
            ("FSPL.new", n.as_bytes()),
        ];
        if let Some(l) = link {
            recs.push(("linkpath", l));
        }
        self.pax(&recs)?;
        let h = header(typ, 0, mode, mtime, "fspl-entry");
        self.write(h.as_bytes())
    }

    /// A regular file's entry with `size` bytes from `src`. When `src`
    /// has fewer, the entry is filled up with zeros (a torn file: the
    /// caller retracts it) and false is returned.
    pub fn file(
        &mut self,
        path: &[u8],
        base: &Version,
        new: &Meta,
        src: &mut dyn Read,
    ) -> io::Result<bool> {
        let Meta::File { size, mtime, mode } = *new else {
            return Err(io::Error::other("not a file"));
        };
        let (b, n) = (base.encode(), Version::Present(new.clone()).encode());
        self.pax(&[
            ("path", path),
            ("FSPL.base", b.as_bytes()),
            ("FSPL.new", n.as_bytes()),
        ])?;
        let h = header(EntryType::Regular, size, mode, mtime, "fspl-entry");
        self.write(h.as_bytes())?;
        let mut buf = vec![0u8; size.clamp(1, 256 * 1024) as usize];
        let mut left = size;
        let mut whole = true;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = if whole {
                match src.read(&mut buf[..want]) {
                    Ok(0) => {
                        whole = false;
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            } else {
                buf[..want].fill(0);
                want
            };
            self.write(&buf[..n])?;
            left -= n as u64;
        }
        self.write(&vec![0u8; padding(size)])?;
        Ok(whole)
    }

    /// Take back the entry just written for `path` (a file that changed
    /// while it was read): the receiver skips both.
    pub fn retract(&mut self, path: &[u8]) -> io::Result<()> {
        self.pax(&[("path", path), ("FSPL.retract", b"1")])?;
        let h = header(EntryType::Regular, 0, 0, 0, "fspl-retract");
        self.write(h.as_bytes())
    }

    /// End the archive; where it went, its length and its digest.
    pub fn finish(mut self) -> io::Result<(Out, u64, fspl_format::Digest)> {
        self.write(&[0u8; 1024])?;
        let hashed = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok((hashed.out, self.pos, hashed.hasher.finish()))
    }
}

/// Why a change set is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the change set: {0}")]
    Io(#[from] io::Error),
    #[error("hostile or damaged change set: {0}")]
    Bad(String),
}

fn bad(s: impl Into<String>) -> ReadError {
    ReadError::Bad(s.into())
}

fn parse_pax(body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| bad("a pax record without its length"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("a pax record with a bad length"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("a pax record with a bad length"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| bad("a pax record without '='"))?;
        let key =
            String::from_utf8(rec[..eq].to_vec()).map_err(|_| bad("a pax key not in UTF-8"))?;
        out.push((key, rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// One entry as the reader sees it.
pub enum Item<'a> {
    Manifest(Manifest),
    /// A change; for a file, its bytes (exactly its size).
    Change(Change, &'a mut dyn Read),
    /// The change just before is taken back (its file changed while the
    /// sender read it): it is not applied.
    Retract,
}

/// Read a change set from the start of `file`, calling `each` for the
/// manifest (first) and every change, in order. `each` may leave a file's
/// bytes unread. Nothing is applied by this function.
pub fn read(
    mut r: &mut dyn Read,
    mut each: impl FnMut(Item<'_>) -> Result<(), crate::SyncError>,
) -> Result<(), crate::SyncError> {
    let mut pax: Option<Vec<(String, Vec<u8>)>> = None;
    let mut first = true;
    // The path of the last change (what a retraction may take back).
    let mut last: Option<Vec<u8>> = None;
    let h = |e: ReadError| crate::SyncError::Hostile { seq: 0, source: e };
    loop {
        let mut block = [0u8; 512];
        r.read_exact(&mut block).map_err(|e| {
            h(if e.kind() == io::ErrorKind::UnexpectedEof {
                bad("the change set ends without its end marker")
            } else {
                ReadError::Io(e)
            })
        })?;
        if block.iter().all(|&b| b == 0) {
            if pax.is_some() {
                return Err(h(bad("a pax header without its entry")));
            }
            if first {
                return Err(h(bad("no manifest")));
            }
            return Ok(());
        }
        let hd = Header::from_byte_slice(&block);
        let stored = hd
            .cksum()
            .map_err(|_| h(bad("a header with a bad checksum field")))?;
        let sum: u32 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    b' ' as u32
                } else {
                    b as u32
                }
            })
            .sum();
        if stored != sum {
            return Err(h(bad("a header whose checksum does not match")));
        }
        let size = hd.size().map_err(|_| h(bad("a header with a bad size")))?;
        let typ = hd.entry_type();
        if typ == EntryType::XHeader {
            if pax.is_some() {
                return Err(h(bad("two pax headers for one entry")));
            }
            if size > MAX_PAX {
                return Err(h(bad(format!(
                    "a pax header of {size} bytes (at most {MAX_PAX})"
                ))));
            }
            let mut body = vec![0u8; size as usize];
            r.read_exact(&mut body).map_err(|e| h(ReadError::Io(e)))?;
            skip(&mut r, padding(size) as u64).map_err(h)?;
            pax = Some(parse_pax(&body).map_err(h)?);
            continue;
        }
        let recs = pax.take().ok_or_else(|| {
            h(bad(
                "an entry without our pax records (not made by fspl sync)",
            ))
        })?;
        let get = |k: &str| {
            recs.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_slice())
        };
        if recs.iter().any(|(k, _)| k == "size") {
            return Err(h(bad("a pax size record (not made by fspl sync)")));
        }
        if first {
            if get("FSPL.manifest").is_none() || typ != EntryType::Regular || size > MAX_PAX {
                return Err(h(bad("the first entry is not a manifest")));
            }
            let mut body = vec![0u8; size as usize];
            r.read_exact(&mut body).map_err(|e| h(ReadError::Io(e)))?;
            skip(&mut r, padding(size) as u64).map_err(h)?;
            let m: Manifest =
                serde_json::from_slice(&body).map_err(|e| h(bad(format!("the manifest: {e}"))))?;
            first = false;
            each(Item::Manifest(m))?;
            continue;
        }
        let path = get("path").ok_or_else(|| h(bad("an entry without a path")))?;
        if get("FSPL.retract").is_some() {
            // Takes back the entry just before it, of the same path.
            if typ != EntryType::Regular || size != 0 || last.as_deref() != Some(path) {
                return Err(h(bad(format!(
                    "a retraction of {:?} that does not follow its entry",
                    String::from_utf8_lossy(path)
                ))));
            }
            last = None;
            each(Item::Retract)?;
            continue;
        }
        if !valid_rel(path) {
            return Err(h(bad(format!(
                "path {:?} is not inside the tree (absolute, `..`, or empty components)",
                String::from_utf8_lossy(path)
            ))));
        }
        let dec = |k: &str| {
            get(k)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(Version::decode)
                .ok_or_else(|| {
                    h(bad(format!(
                        "entry {:?}: no valid {k} record",
                        String::from_utf8_lossy(path)
                    )))
                })
        };
        let (base, new) = (dec("FSPL.base")?, dec("FSPL.new")?);
        let consistent = match (&new, typ) {
            (Version::Present(Meta::File { size: s, .. }), EntryType::Regular) => *s == size,
            (Version::Present(Meta::Dir { .. }), EntryType::Directory) => size == 0,
            (Version::Present(Meta::Link { .. }), EntryType::Symlink) => size == 0,
            (Version::Deleted { .. }, EntryType::Regular) => size == 0,
            _ => false,
        };
        if !consistent {
            return Err(h(bad(format!(
                "entry {:?}: its tar type or size does not match what it says it is",
                String::from_utf8_lossy(path)
            ))));
        }
        last = Some(path.to_vec());
        let change = Change {
            path: path.to_vec(),
            base,
            new,
        };
        let mut data = (&mut r).take(size);
        each(Item::Change(change, &mut data))?;
        let left = data.limit();
        skip(&mut r, left + padding(size) as u64).map_err(h)?;
    }
}

fn skip(r: &mut dyn Read, n: u64) -> Result<(), ReadError> {
    let got = io::copy(&mut r.take(n), &mut io::sink())?;
    if got != n {
        return Err(bad("the change set ends in the middle of an entry"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for v in [&b""[..], b"x", &[b'a'; 95], &[b'a'; 996]] {
            let r = pax_record("path", v);
            let (len, _) = r.split_at(r.iter().position(|&c| c == b' ').unwrap());
            assert_eq!(
                std::str::from_utf8(len).unwrap().parse::<usize>().unwrap(),
                r.len()
            );
        }
    }
}

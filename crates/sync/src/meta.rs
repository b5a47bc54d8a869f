//! What the sync knows about one path: its type and the attributes that
//! are synced (size, modification time with full precision, mode; a
//! symbolic link's target), and tree-relative paths.

use serde::{Deserialize, Serialize};

/// One entry of a tree, as scanned (never following a symbolic link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Meta {
    /// A regular file: size, mtime in nanoseconds since the epoch, mode
    /// (permission bits).
    File { size: u64, mtime: i64, mode: u32 },
    /// A directory: only its mode is synced (its mtime changes with every
    /// entry in it, and would make every round a change).
    Dir { mode: u32 },
    /// A symbolic link: its target (never followed) and its own mtime.
    Link { target: Vec<u8>, mtime: i64 },
}

impl Meta {
    /// The same version: what a round compares (files by size, mtime and
    /// mode, as rsync's quick check; directories by mode; links by
    /// target).
    pub fn same(&self, other: &Meta) -> bool {
        match (self, other) {
            (
                Meta::File { size, mtime, mode },
                Meta::File {
                    size: s2,
                    mtime: m2,
                    mode: p2,
                },
            ) => size == s2 && mtime == m2 && mode == p2,
            (Meta::Dir { mode }, Meta::Dir { mode: m2 }) => mode == m2,
            (Meta::Link { target, .. }, Meta::Link { target: t2, .. }) => target == t2,
            _ => false,
        }
    }

    /// The time a conflict compares (0 for a directory).
    pub fn time(&self) -> i64 {
        match self {
            Meta::File { mtime, .. } | Meta::Link { mtime, .. } => *mtime,
            Meta::Dir { .. } => 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Meta::Dir { .. })
    }

    /// The compact text form carried in a change set.
    pub fn encode(&self) -> String {
        match self {
            Meta::File { size, mtime, mode } => format!("f {size} {mtime} {mode:o}"),
            Meta::Dir { mode } => format!("d {mode:o}"),
            Meta::Link { target, mtime } => format!("l {mtime} {}", hex(target)),
        }
    }

    /// [`Meta::encode`]'s text back; None when it is not one.
    pub fn decode(s: &str) -> Option<Meta> {
        let mut it = s.split(' ');
        let m = match it.next()? {
            "f" => Meta::File {
                size: it.next()?.parse().ok()?,
                mtime: it.next()?.parse().ok()?,
                mode: u32::from_str_radix(it.next()?, 8).ok()? & 0o7777,
            },
            "d" => Meta::Dir {
                mode: u32::from_str_radix(it.next()?, 8).ok()? & 0o7777,
            },
            "l" => Meta::Link {
                mtime: it.next()?.parse().ok()?,
                target: unhex(it.next()?)?,
            },
            _ => return None,
        };
        it.next().is_none().then_some(m)
    }
}

/// What a change set says a path becomes (or was, as its base).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Present(Meta),
    /// Deleted, noticed at this time (ns since the epoch): a tombstone.
    Deleted {
        at: i64,
    },
    /// Not there, and never known (a base for a new path).
    Absent,
}

impl Version {
    pub fn encode(&self) -> String {
        match self {
            Version::Present(m) => m.encode(),
            Version::Deleted { at } => format!("x {at}"),
            Version::Absent => "-".into(),
        }
    }

    pub fn decode(s: &str) -> Option<Version> {
        if s == "-" {
            return Some(Version::Absent);
        }
        if let Some(at) = s.strip_prefix("x ") {
            return at.parse().ok().map(|at| Version::Deleted { at });
        }
        Meta::decode(s).map(Version::Present)
    }

    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Version::Present(m) => Some(m),
            _ => None,
        }
    }

    /// Two versions that leave the same thing on disk.
    pub fn same(&self, other: &Version) -> bool {
        match (self.meta(), other.meta()) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A tree-relative path is acceptable: not empty, not absolute, no empty,
/// `.` or `..` component, no NUL byte, and not too long.
pub fn valid_rel(p: &[u8]) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && p[0] != b'/'
        && !p.contains(&0)
        && p.split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// The parent of a relative path (None at the top).
pub fn parent(p: &[u8]) -> Option<&[u8]> {
    p.iter().rposition(|&c| c == b'/').map(|i| &p[..i])
}

/// `p` is `dir` or inside it.
pub fn within(p: &[u8], dir: &[u8]) -> bool {
    p == dir || (p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_escaping_the_tree_are_not_valid() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"a/./b",
            b"a/",
            b".",
            b"a\0b",
        ] {
            assert!(!valid_rel(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        for good in [&b"a"[..], b"a/b", b"..a/b..", b".hidden/x"] {
            assert!(valid_rel(good));
        }
    }

    #[test]
    fn within_and_parent() {
        assert!(within(b"a/b", b"a"));
        assert!(within(b"a", b"a"));
        assert!(!within(b"ab", b"a"));
        assert_eq!(parent(b"a/b/c"), Some(&b"a/b"[..]));
        assert_eq!(parent(b"a"), None);
    }

    proptest! {
        #[test]
        fn versions_round_trip(kind in 0u8..4, size: u64, mtime: i64, mode in 0u32..0o7777, target: Vec<u8>) {
            let v = match kind {
                0 => Version::Present(Meta::File { size, mtime, mode }),
                1 => Version::Present(Meta::Dir { mode }),
                2 => Version::Present(Meta::Link { target, mtime }),
                _ => Version::Deleted { at: mtime },
            };
            prop_assert_eq!(Version::decode(&v.encode()), Some(v));
        }

        #[test]
        fn decoding_garbage_never_panics(s in ".{0,40}") {
            let _ = Version::decode(&s);
        }
    }
}

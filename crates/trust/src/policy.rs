//! Trust files: which senders' keys a receiver accepts, which job params
//! each may send and which queues each may address.
//!
//! ```toml
//! # Jobs whose ctime lies further in the future than this are refused
//! # (seconds; default 300).
//! max_future_skew = 300
//!
//! [[sender]]
//! name = "laptop"
//! key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... me@laptop"
//! # Param vectors it may send (checked when --allow-job-params appends
//! # them): each element is a glob; a final "**" matches any further params.
//! params = [["backup", "*"], ["restore", "**"]]
//! # Queue names it may address (globs; default: any).
//! queues = ["backups", "db-*"]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;

use crate::keys::{KeyError, PublicKey};

pub const DEFAULT_MAX_FUTURE_SKEW: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    #[error("cannot read trust file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trust file {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("trust file {}: sender {name:?}: key", path.display())]
    Key {
        path: PathBuf,
        name: String,
        #[source]
        source: KeyError,
    },
    #[error("trust file {}: sender {name:?}: invalid pattern {pattern:?}", path.display())]
    Pattern {
        path: PathBuf,
        name: String,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("trust file {}: senders {first:?} and {second:?} have the same key", path.display())]
    DuplicateKey {
        path: PathBuf,
        first: String,
        second: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    max_future_skew: Option<u64>,
    #[serde(default)]
    sender: Vec<RawSender>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSender {
    name: String,
    key: String,
    #[serde(default)]
    params: Vec<Vec<String>>,
    queues: Option<Vec<String>>,
}

/// One argument-vector pattern.
#[derive(Debug, Clone)]
struct ParamPattern {
    elems: Vec<GlobMatcher>,
    rest: bool,
    text: String,
}

/// A trusted sender.
#[derive(Debug, Clone)]
pub struct Sender {
    pub name: String,
    pub key: PublicKey,
    params: Vec<ParamPattern>,
    /// `None`: any queue.
    queues: Option<Vec<(String, GlobMatcher)>>,
}

/// A parsed trust file.
#[derive(Debug, Clone)]
pub struct TrustFile {
    pub path: PathBuf,
    pub max_future_skew: u64,
    senders: Vec<Sender>,
    by_key: HashMap<[u8; 32], usize>,
}

fn glob(path: &Path, name: &str, pattern: &str) -> Result<GlobMatcher, TrustFileError> {
    // `*` also matches `/`: params are not paths.
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map(|g: Glob| g.compile_matcher())
        .map_err(|source| TrustFileError::Pattern {
            path: path.to_path_buf(),
            name: name.to_string(),
            pattern: pattern.to_string(),
            source,
        })
}

impl TrustFile {
    pub fn load(path: &Path) -> Result<TrustFile, TrustFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrustFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        TrustFile::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<TrustFile, TrustFileError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| TrustFileError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let mut senders = Vec::new();
        let mut by_key = HashMap::new();
        for s in raw.sender {
            let key = PublicKey::parse(&s.key).map_err(|source| TrustFileError::Key {
                path: path.to_path_buf(),
                name: s.name.clone(),
                source,
            })?;
            let mut params = Vec::new();
            for p in &s.params {
                let (body, rest) = match p.split_last() {
                    Some((last, body)) if last == "**" => (body, true),
                    _ => (&p[..], false),
                };
                let elems = body
                    .iter()
                    .map(|e| glob(path, &s.name, e))
                    .collect::<Result<Vec<_>, _>>()?;
                params.push(ParamPattern {
                    elems,
                    rest,
                    text: format!("{p:?}"),
                });
            }
            let queues = match &s.queues {
                None => None,
                Some(list) => Some(
                    list.iter()
                        .map(|q| glob(path, &s.name, q).map(|m| (q.clone(), m)))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            if let Some(&i) = by_key.get(&key.bytes()) {
                let first: &Sender = &senders[i];
                return Err(TrustFileError::DuplicateKey {
                    path: path.to_path_buf(),
                    first: first.name.clone(),
                    second: s.name.clone(),
                });
            }
            by_key.insert(key.bytes(), senders.len());
            senders.push(Sender {
                name: s.name,
                key,
                params,
                queues,
            });
        }
        Ok(TrustFile {
            path: path.to_path_buf(),
            max_future_skew: raw.max_future_skew.unwrap_or(DEFAULT_MAX_FUTURE_SKEW),
            senders,
            by_key,
        })
    }

    pub fn sender(&self, key: &[u8; 32]) -> Option<&Sender> {
        self.by_key.get(key).map(|&i| &self.senders[i])
    }

    pub fn senders(&self) -> &[Sender] {
        &self.senders
    }
}

impl Sender {
    /// May this sender have these params appended to the command line?
    pub fn allows_params(&self, params: &[Vec<u8>]) -> bool {
        if params.is_empty() {
            return true;
        }
        self.params.iter().any(|p| {
            let len_ok = if p.rest {
                params.len() >= p.elems.len()
            } else {
                params.len() == p.elems.len()
            };
            len_ok
                && p.elems.iter().zip(params).all(|(g, v)| {
                    use std::os::unix::ffi::OsStrExt;
                    g.is_match(std::ffi::OsStr::from_bytes(v))
                })
        })
    }

    /// The patterns, for messages.
    pub fn param_patterns(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.text.as_str()).collect()
    }

    /// The queue names (globs) this sender may address; `None`: any.
    pub fn queue_patterns(&self) -> Option<Vec<&str>> {
        self.queues
            .as_ref()
            .map(|list| list.iter().map(|(q, _)| q.as_str()).collect())
    }

    /// May this sender address a queue with this name?
    pub fn allows_queue(&self, name: &str) -> bool {
        match &self.queues {
            None => true,
            Some(list) => list.iter().any(|(_, g)| g.is_match(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn file(extra: &str) -> (TrustFile, SecretKey) {
        let k = SecretKey::generate("");
        let text = format!(
            "max_future_skew = 60\n[[sender]]\nname = \"laptop\"\nkey = \"{}\"\n{extra}\n",
            k.public().to_openssh("c")
        );
        (TrustFile::parse(Path::new("t.toml"), &text).unwrap(), k)
    }

    fn v(p: &[&str]) -> Vec<Vec<u8>> {
        p.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn param_patterns_match_whole_vectors_with_globs_and_a_rest_marker() {
        let (t, k) = file(r#"params = [["backup", "*"], ["restore", "**"], ["x/*.txt"]]"#);
        let s = t.sender(&k.public().bytes()).unwrap();
        assert!(s.allows_params(&v(&[])));
        assert!(s.allows_params(&v(&["backup", "db"])));
        assert!(s.allows_params(&v(&["backup", "a/b c"])));
        assert!(!s.allows_params(&v(&["backup"])));
        assert!(!s.allows_params(&v(&["backup", "db", "extra"])));
        assert!(s.allows_params(&v(&["restore"])));
        assert!(s.allows_params(&v(&["restore", "1", "2", "3"])));
        assert!(s.allows_params(&v(&["x/a.txt"])));
        assert!(!s.allows_params(&v(&["rm", "-rf", "/"])));
        // Params are bytes: a glob matches non-UTF-8 values too.
        assert!(s.allows_params(&[b"backup".to_vec(), vec![0xff, 0xfe]]));
        assert_eq!(t.max_future_skew, 60);
    }

    #[test]
    fn no_params_listed_means_none_allowed_and_no_queues_listed_means_any() {
        let (t, k) = file("");
        let s = t.sender(&k.public().bytes()).unwrap();
        assert!(s.allows_params(&v(&[])));
        assert!(!s.allows_params(&v(&["anything"])));
        assert!(s.allows_queue("whatever"));
        assert_eq!(s.queue_patterns(), None);
        let (t, k) = file(r#"queues = ["backups", "db-*"]"#);
        let s = t.sender(&k.public().bytes()).unwrap();
        assert!(s.allows_queue("backups") && s.allows_queue("db-main"));
        assert!(!s.allows_queue("other"));
        assert_eq!(s.queue_patterns(), Some(vec!["backups", "db-*"]));
    }

    #[test]
    fn unknown_keys_and_bad_keys_are_errors_naming_the_file() {
        let e = TrustFile::parse(Path::new("t.toml"), "[[sender]]\nname=\"a\"\nkey=\"x\"\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("t.toml") && e.to_string().contains("\"a\""),
            "{e}"
        );
        // A weak (small-order) key: the identity point, as a base58 key.
        let e = TrustFile::parse(
            Path::new("t.toml"),
            "[[sender]]\nname=\"evil\"\nkey=\"4uQeVj5tqViQh7yWWGStvkEG1Zmhx6uasJtWCJziofM\"\n",
        )
        .unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            chain.starts_with("trust file t.toml: sender \"evil\": key: weak ed25519 key"),
            "{chain}"
        );
        let e = TrustFile::parse(Path::new("t.toml"), "typo = 1\n").unwrap_err();
        assert!(matches!(e, TrustFileError::Syntax { .. }), "{e}");
    }
}

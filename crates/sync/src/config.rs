//! A sync's settings: from a TOML file (`fspl sync once -c FILE`: the keys
//! at the top level, or a daemon configuration's `[[job]]` of type
//! `sync`), from flags, or from the daemon's own parser.

use std::path::{Path, PathBuf};

use crate::SyncError;

/// How change sets are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Lz4,
    None,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "zstd" => Some(Compression::Zstd),
            "lz4" => Some(Compression::Lz4),
            "none" => Some(Compression::None),
            _ => None,
        }
    }

    pub fn spec(self) -> Option<fspl_codec::CompressSpec> {
        match self {
            Compression::Zstd => Some(fspl_codec::CompressSpec {
                kind: fspl_codec::Compression::Zstd,
                level: None,
            }),
            Compression::Lz4 => Some(fspl_codec::CompressSpec {
                kind: fspl_codec::Compression::Lz4,
                level: None,
            }),
            Compression::None => None,
        }
    }
}

/// One side of a sync.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncConfig {
    /// This side's name (the peer's `peer`); default: the host name.
    pub name: String,
    /// The tree.
    pub dir: PathBuf,
    /// The other side's name.
    pub peer: String,
    /// The queue this side's change sets go into.
    pub outbox: PathBuf,
    /// The queue the peer's change sets arrive in.
    pub inbox: PathBuf,
    /// The sync's private directory (state, pending change sets); default
    /// DIR/.fspl-sync.
    pub state: Option<PathBuf>,
    /// gitignore-style patterns.
    pub exclude: Vec<String>,
    pub compression: Compression,
    pub sign: Option<PathBuf>,
    pub trust: Option<PathBuf>,
    pub encrypt_to: Vec<String>,
    pub identity: Vec<PathBuf>,
    pub interval_min: u64,
    pub interval_max: u64,
    /// The largest share of the tree (0..=1) one change set may delete.
    pub max_delete: f64,
    /// Clocks further apart than this (seconds) are reported.
    pub max_skew: u64,
}

/// The keys of a sync's table.
pub const KEYS: &[&str] = &[
    "name",
    "local_name",
    "dir",
    "peer",
    "outbox",
    "inbox",
    "state",
    "exclude",
    "compression",
    "sign",
    "trust",
    "encrypt_to",
    "identity",
    "interval_min",
    "interval_max",
    "max_delete",
    "max_skew",
];

/// The host's name, for `name`'s default.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

impl SyncConfig {
    /// A configuration with the defaults.
    pub fn new(dir: PathBuf, peer: String, outbox: PathBuf, inbox: PathBuf) -> SyncConfig {
        SyncConfig {
            name: hostname(),
            dir,
            peer,
            outbox,
            inbox,
            state: None,
            exclude: Vec::new(),
            compression: Compression::Zstd,
            sign: None,
            trust: None,
            encrypt_to: Vec::new(),
            identity: Vec::new(),
            interval_min: 10,
            interval_max: 30,
            max_delete: 0.5,
            max_skew: 10,
        }
    }

    /// The sync's private directory.
    pub fn private_dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| self.dir.join(crate::scan::PRIVATE_DIR))
    }

    /// What is wrong with the settings (beyond types), one message.
    pub fn validate(&self) -> Result<(), SyncError> {
        let bad = |m: String| Err(SyncError::Config { message: m });
        for (k, v) in [("name", &self.name), ("peer", &self.peer)] {
            if v.is_empty()
                || v.chars()
                    .any(|c| c == '/' || c.is_whitespace() || c.is_control())
            {
                return bad(format!(
                    "{k} {v:?} must be non-empty, without '/', spaces or control characters"
                ));
            }
        }
        if self.name == self.peer {
            return bad(format!(
                "name and peer are both {:?}: each side needs its own name",
                self.name
            ));
        }
        if !(0.0..=1.0).contains(&self.max_delete) {
            return bad(format!(
                "max_delete {} must be between 0 and 1",
                self.max_delete
            ));
        }
        if self.interval_min == 0 || self.interval_max < self.interval_min {
            return bad(format!(
                "interval_min ({}) must be at least 1 and at most interval_max ({})",
                self.interval_min, self.interval_max
            ));
        }
        if self.inbox == self.outbox {
            return bad("inbox and outbox must be different queues".into());
        }
        Ok(())
    }

    /// Read a configuration file: the keys at the top level, or the one
    /// `[[job]]` of type `sync` (the one named `job` when given) of a
    /// daemon configuration. Relative paths are taken from the file's
    /// directory.
    pub fn load(path: &Path, job: Option<&str>) -> Result<SyncConfig, SyncError> {
        let text = std::fs::read_to_string(path).map_err(|e| SyncError::io("read", path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let bad = |m: String| SyncError::Config {
            message: format!("{}: {m}", path.display()),
        };
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        let table = match doc.get("job") {
            Some(toml::Value::Array(jobs)) => {
                let syncs: Vec<&toml::Table> = jobs
                    .iter()
                    .filter_map(|j| j.as_table())
                    .filter(|t| t.get("type").and_then(|v| v.as_str()) == Some("sync"))
                    .filter(|t| match job {
                        Some(n) => t.get("name").and_then(|v| v.as_str()) == Some(n),
                        None => true,
                    })
                    .collect();
                match syncs.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(bad(match job {
                            Some(n) => format!("no [[job]] of type \"sync\" named {n:?}"),
                            None => "no [[job]] of type \"sync\"".into(),
                        }));
                    }
                    _ => {
                        return Err(bad(
                            "several [[job]]s of type \"sync\": name one with --job NAME".into(),
                        ));
                    }
                }
            }
            _ => doc,
        };
        let job_keys = table.contains_key("type");
        Self::from_table(&table, base, job_keys).map_err(|e| match e {
            SyncError::Config { message } => bad(message),
            e => e,
        })
    }

    /// The settings of one table (`job_keys`: `type`, `enabled` and the
    /// daemon's supervision keys are allowed too).
    pub fn from_table(
        t: &toml::Table,
        base: &Path,
        job_keys: bool,
    ) -> Result<SyncConfig, SyncError> {
        let bad = |m: String| SyncError::Config { message: m };
        const JOB: &[&str] = &[
            "type",
            "enabled",
            "poll",
            "poll_min",
            "poll_max",
            "max_failures",
            "job",
        ];
        for k in t.keys() {
            let known = KEYS.contains(&k.as_str()) || (job_keys && JOB.contains(&k.as_str()));
            if !known {
                return Err(bad(format!(
                    "unknown key {k:?} (known: {})",
                    KEYS.join(", ")
                )));
            }
        }
        let s = |k: &str| -> Result<Option<String>, SyncError> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("{k}: expected a string"))),
            }
        };
        let path = |k: &str| -> Result<Option<PathBuf>, SyncError> {
            Ok(s(k)?.map(|p| base.join(expand_home(&p))))
        };
        let need = |k: &str, v: Option<PathBuf>| v.ok_or_else(|| bad(format!("missing {k}")));
        let list = |k: &str| -> Result<Vec<String>, SyncError> {
            match t.get(k) {
                None => Ok(vec![]),
                Some(toml::Value::String(s)) => Ok(vec![s.clone()]),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(String::from)
                            .ok_or_else(|| bad(format!("{k}: expected strings")))
                    })
                    .collect(),
                Some(_) => Err(bad(format!("{k}: expected a list of strings"))),
            }
        };
        let int = |k: &str, d: u64| -> Result<u64, SyncError> {
            match t.get(k) {
                None => Ok(d),
                Some(toml::Value::Integer(i)) if *i >= 0 => Ok(*i as u64),
                Some(_) => Err(bad(format!("{k}: expected a number of seconds"))),
            }
        };
        let mut c = SyncConfig::new(
            need("dir", path("dir")?)?,
            s("peer")?.ok_or_else(|| bad("missing peer".into()))?,
            need("outbox", path("outbox")?)?,
            need("inbox", path("inbox")?)?,
        );
        // In a daemon's [[job]], `name` is the job's: this side's name is
        // `local_name` there (accepted at the top level too).
        if !job_keys && let Some(n) = s("name")? {
            c.name = n;
        }
        if let Some(n) = s("local_name")? {
            c.name = n;
        }
        c.state = path("state")?;
        c.exclude = list("exclude")?;
        if let Some(x) = s("compression")? {
            c.compression = Compression::parse(&x)
                .ok_or_else(|| bad(format!("compression {x:?}: expected zstd, lz4 or none")))?;
        }
        c.sign = path("sign")?;
        c.trust = path("trust")?;
        c.encrypt_to = list("encrypt_to")?;
        c.identity = list("identity")?
            .into_iter()
            .map(|p| base.join(expand_home(&p)))
            .collect();
        c.interval_min = int("interval_min", 10)?;
        c.interval_max = int("interval_max", 30.max(c.interval_min))?;
        c.max_skew = int("max_skew", 10)?;
        c.max_delete = match t.get("max_delete") {
            None => 0.5,
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(_) => return Err(bad("max_delete: expected a share between 0 and 1".into())),
        };
        c.validate()?;
        Ok(c)
    }
}

/// `~/x` with the home directory.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_configuration_names_its_side_with_local_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.toml");
        std::fs::write(
            &p,
            "[[job]]\nname = \"q\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"true\"]\n\n\
             [[job]]\nname = \"work\"\ntype = \"sync\"\ndir = \"tree\"\nlocal_name = \"laptop\"\npeer = \"server\"\n\
             outbox = \"out\"\ninbox = \"in\"\ninterval_min = 5\nexclude = [\"*.tmp\"]\nmax_delete = 0.25\n",
        )
        .unwrap();
        let c = SyncConfig::load(&p, None).unwrap();
        assert_eq!((c.name.as_str(), c.peer.as_str()), ("laptop", "server"));
        assert_eq!(c.dir, d.path().join("tree"));
        assert_eq!(
            (c.interval_min, c.interval_max, c.max_delete),
            (5, 30, 0.25)
        );
        assert_eq!(c.exclude, ["*.tmp"]);
        assert!(SyncConfig::load(&p, Some("nope")).is_err());
        // The top-level form, with `name`.
        let p2 = d.path().join("sync.toml");
        std::fs::write(
            &p2,
            "name = \"a\"\npeer = \"b\"\ndir = \"t\"\noutbox = \"o\"\ninbox = \"i\"\n",
        )
        .unwrap();
        assert_eq!(SyncConfig::load(&p2, None).unwrap().name, "a");
        std::fs::write(
            &p2,
            "name = \"a\"\npeer = \"a\"\ndir = \"t\"\noutbox = \"o\"\ninbox = \"i\"\n",
        )
        .unwrap();
        assert!(SyncConfig::load(&p2, None).is_err(), "name = peer");
        std::fs::write(
            &p2,
            "peer = \"b\"\ndir = \"t\"\noutbox = \"o\"\ninbox = \"i\"\ntypo = 1\n",
        )
        .unwrap();
        let e = SyncConfig::load(&p2, None).unwrap_err().to_string();
        assert!(e.contains("unknown key \"typo\""), "{e}");
    }
}

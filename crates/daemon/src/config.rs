//! The daemon's configuration file (TOML). Every problem is reported, not
//! just the first: each names the file, the line and the key.
//!
//! ```toml
//! [daemon]
//! log_format = "logfmt"          # human | logfmt | json
//! log_level = "info"
//! metrics = "127.0.0.1:9464"     # Prometheus endpoint (optional)
//! socket = "/run/fspl/daemon.sock"
//! max_parallel = 4               # queues processed at once
//! shutdown_grace = 30            # seconds to let running commands finish
//!
//! [[job]]
//! name = "backups"
//! type = "process"
//! queue = "/srv/fspl/backups"
//! command = ["/usr/local/bin/handle-backup", "--verbose"]
//! allow_job_params = true
//! on_error = "retry"
//! ```
//!
//! The file is read with `toml`'s span-keeping parser ([`DeTable`]) and
//! every key is checked on its own, so that a value of the wrong type is
//! reported at its own line with its key, and one problem never hides
//! another.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::kinds;

pub use crate::kinds::process::ProcessJob;
pub use crate::kinds::pull::PullJob;
pub use crate::kinds::push::PushJob;
pub use crate::supervisor::Supervision;

/// The longest duration a key takes, in seconds (ten years): anything
/// longer is a mistake, and would overflow the clock arithmetic.
pub const MAX_SECS: u64 = 10 * 365 * 24 * 3600;
/// The most queues `max_parallel` lets run at once (each one is a thread).
pub const MAX_PARALLEL: u64 = 1024;

/// One problem with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{message}", path.display(), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct Problem {
    pub path: PathBuf,
    /// The line (1-based) of the key, when the problem is about one.
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in the order of the file.
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { problems: Vec<Problem> },
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Logfmt,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "human" => Ok(LogFormat::Human),
            "logfmt" => Ok(LogFormat::Logfmt),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "unknown log format {s:?} (expected human, logfmt or json)"
            )),
        }
    }
}

/// Global settings.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSettings {
    pub log_format: Option<LogFormat>,
    pub log_level: tracing::Level,
    pub metrics: Option<std::net::SocketAddr>,
    pub socket: PathBuf,
    pub max_parallel: usize,
    pub shutdown_grace: Duration,
    pub rescan_interval: Duration,
}

/// What a configured job does: one variant per `type`, each parsed by its
/// own module under `kinds/`.
#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    /// `type = "process"`: run a queue, like `queue-process`.
    Process(ProcessJob),
    /// `type = "push"`: send an outbox's jobs to a destination URL.
    Push(PushJob),
    /// `type = "pull"`: take jobs from a source URL into a queue.
    Pull(PullJob),
    /// `type = "prune"`: apply keep rules to directories fspl fills.
    Prune(crate::kinds::prune::PruneJob),
    /// `type = "sync"`: two-way tree sync through an outbox and an inbox.
    Sync(crate::kinds::sync::SyncJob),
    /// `type = "s3-upload"`: upload a spool directory's files to S3.
    #[cfg(feature = "s3")]
    S3Upload(crate::kinds::s3_upload::S3UploadJob),
    /// `type = "nats-wait"`: run a command per matching remaphore message.
    #[cfg(feature = "nats")]
    NatsWait(crate::kinds::nats_wait::NatsWaitJob),
}

/// One `[[job]]`: the keys every kind has (`name`, `type`, `enabled`), the
/// supervisor's (`poll`, `poll_min`, `poll_max`, `max_failures`), and the
/// kind's own.
#[derive(Clone, Debug, PartialEq)]
pub struct JobConfig {
    pub name: String,
    pub enabled: bool,
    /// How the job is supervised: polling, backoff, error state.
    pub supervision: Supervision,
    /// Where each key is in the file (for `daemon --check`).
    pub lines: KeyLines,
    pub kind: JobKind,
}

/// Where each key of a job is in the file, for messages about it (e.g.
/// from `daemon --check`). Not part of what the job means: two jobs that
/// differ only in where their keys are compare equal (a reload does not
/// restart a job whose table merely moved).
#[derive(Clone, Debug, Default)]
pub struct KeyLines {
    /// The line of the `[[job]]` header.
    pub table: usize,
    pub keys: BTreeMap<String, usize>,
}

impl KeyLines {
    /// The line of `key`, else of the table header.
    pub fn of(&self, key: &str) -> usize {
        self.keys.get(key).copied().unwrap_or(self.table)
    }
}

impl PartialEq for KeyLines {
    fn eq(&self, _: &KeyLines) -> bool {
        true
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonSettings,
    pub jobs: Vec<JobConfig>,
}

/// The default control socket: `daemon.sock` in `$XDG_RUNTIME_DIR/fspl/`,
/// else `/run/fspl/` for root, else `/tmp/fspl-UID/` (see
/// [`crate::sockpath`]).
pub fn default_socket() -> PathBuf {
    crate::sockpath::default_socket()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The keys of a `[daemon]` table.
const DAEMON_KEYS: &[&str] = &[
    "log_format",
    "log_level",
    "metrics",
    "socket",
    "max_parallel",
    "shutdown_grace",
    "rescan_interval",
];

/// The keys every job has, whatever its kind: `name` and `type` first,
/// `enabled` last (after the kind's and the supervisor's keys, in
/// messages).
const JOB_KEYS_FIRST: &[&str] = &["name", "type"];
const JOB_KEYS_LAST: &[&str] = &["enabled"];

/// What a value is, for messages: "a string", "an integer"...
pub(crate) fn kind_of(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A value's problem: where, and what (without the key).
pub(crate) type Bad = (Range<usize>, String);

/// The keys of a table, by name: the span of the key, and its value.
pub(crate) type Keys<'t, 'i> = HashMap<String, (Range<usize>, &'t Spanned<DeValue<'i>>)>;

pub(crate) fn string(v: &Spanned<DeValue<'_>>) -> Result<String, Bad> {
    match v.get_ref() {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err((
            v.span(),
            format!("must be a string, not {}", kind_of(other)),
        )),
    }
}

pub(crate) fn boolean(v: &Spanned<DeValue<'_>>) -> Result<bool, Bad> {
    match v.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        other => Err((
            v.span(),
            format!("must be true or false, not {}", kind_of(other)),
        )),
    }
}

/// A whole number in `min..=max`.
pub(crate) fn number(v: &Spanned<DeValue<'_>>, min: u64, max: u64, what: &str) -> Result<u64, Bad> {
    let n = match v.get_ref() {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
        other => {
            return Err((
                v.span(),
                format!("must be a whole number{what}, not {}", kind_of(other)),
            ));
        }
    };
    match n {
        Some(n) if n < min as i128 => Err((v.span(), format!("must be at least {min}, not {n}"))),
        Some(n) if n > max as i128 => {
            Err((v.span(), format!("must be at most {max}{what}, not {n}")))
        }
        Some(n) => Ok(n as u64),
        None => Err((v.span(), "is not a valid integer".into())),
    }
}

/// Whole seconds in `min..=MAX_SECS`.
pub(crate) fn secs(v: &Spanned<DeValue<'_>>, min: u64) -> Result<Duration, Bad> {
    number(v, min, MAX_SECS, " of seconds").map(Duration::from_secs)
}

pub(crate) fn strings(v: &Spanned<DeValue<'_>>, example: &str) -> Result<Vec<String>, Bad> {
    let DeValue::Array(a) = v.get_ref() else {
        return Err((
            v.span(),
            format!(
                "must be an array of strings, like {example}, not {}",
                kind_of(v.get_ref())
            ),
        ));
    };
    a.iter()
        .map(|e| match e.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            other => Err((
                e.span(),
                format!(
                    "must be an array of strings, like {example}; one element is {}",
                    kind_of(other)
                ),
            )),
        })
        .collect()
}

pub(crate) fn one_of(v: &Spanned<DeValue<'_>>, allowed: &[&str]) -> Result<String, Bad> {
    let s = string(v)?;
    let low = s.trim().to_ascii_lowercase();
    if allowed.contains(&low.as_str()) {
        Ok(low)
    } else {
        Err((
            v.span(),
            format!("{s:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// Collects the problems of one file.
pub(crate) struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    pub(crate) fn at(&mut self, span: &Range<usize>, message: String) {
        self.problems.push(Problem {
            path: self.path.to_path_buf(),
            line: Some(self.line(span)),
            message,
        });
    }

    /// The keys of `table`: known ones by name (with their key's span), an
    /// error for each unknown one.
    fn keys<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        known: &[&str],
        label: &str,
    ) -> Keys<'t, 'i> {
        let mut out = HashMap::new();
        for (k, v) in table.iter() {
            let name = k.get_ref().as_ref();
            if known.contains(&name) {
                out.insert(name.to_string(), (k.span(), v));
            } else {
                self.at(
                    &k.span(),
                    format!(
                        "{label}unknown key `{}` (the keys here are: {})",
                        fspl_queue::escape_controls(name),
                        known.join(", ")
                    ),
                );
            }
        }
        out
    }

    /// The value of `key` made by `f`, or None (absent, or a problem,
    /// recorded with the key's line and name).
    pub(crate) fn get<T>(
        &mut self,
        keys: &Keys<'_, '_>,
        key: &str,
        label: &str,
        f: impl FnOnce(&Spanned<DeValue<'_>>) -> Result<T, Bad>,
    ) -> Option<T> {
        let (_, v) = keys.get(key)?;
        match f(v) {
            Ok(t) => Some(t),
            Err((span, why)) => {
                self.at(&span, format!("{label}{key}: {why}"));
                None
            }
        }
    }

    /// Record a problem at the job's header when `key` is missing.
    pub(crate) fn require(
        &mut self,
        keys: &Keys<'_, '_>,
        table: &Range<usize>,
        label: &str,
        key: &str,
        example: &str,
    ) {
        if !keys.contains_key(key) {
            self.at(
                table,
                format!("{label}missing {key} (e.g. {key} = {example})"),
            );
        }
    }

    /// A problem at the line of `key` (else of the job's header).
    pub(crate) fn at_key(&mut self, lines: &KeyLines, key: &str, message: String) {
        self.problems.push(Problem {
            path: self.path.to_path_buf(),
            line: Some(lines.of(key)),
            message,
        });
    }
}

/// A non-empty path.
pub(crate) fn path_value(v: &Spanned<DeValue<'_>>) -> Result<PathBuf, Bad> {
    let s = string(v)?;
    if s.is_empty() {
        return Err((v.span(), "must not be empty".into()));
    }
    Ok(PathBuf::from(s))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// The configuration, or every problem in it.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        match Config::parse_all(path, text) {
            (Some(c), problems) if problems.is_empty() => Ok(c),
            (_, problems) => Err(ConfigError::Invalid { problems }),
        }
    }

    /// Every problem of the file, and the configuration as far as it can
    /// be made (with defaults in place of bad values; None when the file
    /// is not TOML), for `daemon --check` to look further into its jobs.
    pub fn parse_all(path: &Path, text: &str) -> (Option<Config>, Vec<Problem>) {
        let mut c = Checker {
            path,
            text,
            problems: Vec::new(),
        };
        let doc = match DeTable::parse(text) {
            Ok(d) => d,
            Err(e) => {
                let problem = Problem {
                    path: path.to_path_buf(),
                    line: Some(e.span().map(|s| line_of(text, s.start)).unwrap_or(1)),
                    message: e.message().trim().replace('\n', " "),
                };
                return (None, vec![problem]);
            }
        };
        let top = c.keys(doc.get_ref(), &["daemon", "job"], "");
        let daemon = match top.get("daemon") {
            Some((_, v)) => match v.get_ref() {
                DeValue::Table(t) => c.daemon(t),
                other => {
                    c.at(
                        &v.span(),
                        format!("daemon: must be a [daemon] table, not {}", kind_of(other)),
                    );
                    c.daemon(&DeTable::new())
                }
            },
            None => c.daemon(&DeTable::new()),
        };
        let mut jobs = Vec::new();
        if let Some((_, v)) = top.get("job") {
            match v.get_ref() {
                DeValue::Array(a) => {
                    let mut names = HashMap::new();
                    let mut claims = HashMap::new();
                    for t in a.iter() {
                        match t.get_ref() {
                            DeValue::Table(table) => {
                                if let Some(j) = c.job(t.span(), table, &mut names, &mut claims) {
                                    jobs.push(j);
                                }
                            }
                            other => c.at(
                                &t.span(),
                                format!("job: each job must be a table, not {}", kind_of(other)),
                            ),
                        }
                    }
                }
                other => c.at(
                    &v.span(),
                    format!(
                        "job: jobs are [[job]] tables (an array of tables), not {}",
                        kind_of(other)
                    ),
                ),
            }
        }
        let mut problems = c.problems;
        problems.sort_by_key(|p| p.line);
        (
            Some(Config {
                path: path.to_path_buf(),
                daemon,
                jobs,
            }),
            problems,
        )
    }
}

impl Checker<'_> {
    fn daemon(&mut self, t: &DeTable<'_>) -> DaemonSettings {
        let l = "[daemon] ";
        let k = self.keys(t, DAEMON_KEYS, l);
        let log_format = self.get(&k, "log_format", l, |v| {
            let s = string(v)?;
            s.parse::<LogFormat>().map_err(|e| (v.span(), e))
        });
        let log_level = self
            .get(&k, "log_level", l, |v| {
                let s = string(v)?;
                s.parse::<tracing::Level>().map_err(|_| {
                    (
                        v.span(),
                        format!("unknown level {s:?} (expected trace, debug, info, warn or error)"),
                    )
                })
            })
            .unwrap_or(tracing::Level::INFO);
        let metrics = self.get(&k, "metrics", l, |v| {
            let s = string(v)?;
            s.parse::<std::net::SocketAddr>().map_err(|_| {
                (
                    v.span(),
                    format!("{s:?} is not an address like 127.0.0.1:9464"),
                )
            })
        });
        let socket = self
            .get(&k, "socket", l, |v| {
                let s = string(v)?;
                if s.is_empty() {
                    return Err((v.span(), "must not be empty".into()));
                }
                Ok(PathBuf::from(s))
            })
            .unwrap_or_else(default_socket);
        let max_parallel = self
            .get(&k, "max_parallel", l, |v| number(v, 1, MAX_PARALLEL, ""))
            .unwrap_or(4) as usize;
        let shutdown_grace = self
            .get(&k, "shutdown_grace", l, |v| secs(v, 0))
            .unwrap_or(Duration::from_secs(30));
        let rescan_interval = self
            .get(&k, "rescan_interval", l, |v| secs(v, 1))
            .unwrap_or(Duration::from_secs(60));
        DaemonSettings {
            log_format,
            log_level,
            metrics,
            socket,
            max_parallel,
            shutdown_grace,
            rescan_interval,
        }
    }

    /// One `[[job]]` table: the job (None when it cannot even be made:
    /// an unknown type), its problems recorded. The keys every kind has
    /// are read here; the kind's own by its module ([`kinds::parse`]), the
    /// supervisor's by [`Supervision::parse`]. `claims`: what each job so
    /// far holds for itself (a queue's lock, a source), by canonical path,
    /// with the job's name and kind.
    fn job(
        &mut self,
        span: Range<usize>,
        table: &DeTable<'_>,
        names: &mut HashMap<String, usize>,
        claims: &mut HashMap<PathBuf, (String, &'static str)>,
    ) -> Option<JobConfig> {
        let header = self.line(&span);
        // The job's name, for every message about it.
        let raw_name = table
            .iter()
            .find(|(k, _)| k.get_ref() == "name")
            .and_then(|(_, v)| match v.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                _ => None,
            });
        let label = match &raw_name {
            Some(n) => format!("job {:?}: ", n),
            None => "job: ".to_string(),
        };
        let type_entry = table.iter().find(|(k, _)| k.get_ref() == "type");
        let kind = match type_entry {
            None => {
                self.at(
                    &span,
                    format!("{label}missing type (e.g. type = \"process\")"),
                );
                // Check the rest as the kind its keys suggest.
                let has = |key: &str| table.iter().any(|(k, _)| k.get_ref() == key);
                kinds::guess(has)
            }
            Some((_, v)) => match string(v) {
                Ok(t) => match kinds::KINDS.iter().find(|k| **k == t) {
                    Some(k) => *k,
                    None => {
                        self.at(
                            &v.span(),
                            format!(
                                "{label}unknown job type {t:?} (this fspl knows: {})",
                                kinds::KINDS.join(", ")
                            ),
                        );
                        return None;
                    }
                },
                Err((s, why)) => {
                    self.at(&s, format!("{label}type: {why}"));
                    return None;
                }
            },
        };
        let known: Vec<&str> = JOB_KEYS_FIRST
            .iter()
            .chain(kinds::keys(kind))
            .chain(crate::supervisor::SUPERVISION_KEYS)
            .chain(JOB_KEYS_LAST)
            .copied()
            .collect();
        let k = self.keys(table, &known, &label);
        let lines = KeyLines {
            table: header,
            keys: k
                .iter()
                .map(|(name, (s, _))| (name.clone(), line_of(self.text, s.start)))
                .collect(),
        };
        let l = label.as_str();
        self.require(&k, &span, l, "name", "\"backups\"");
        let parsed = kinds::parse(kind, self, &k, &span, l);
        let name = self
            .get(&k, "name", l, |v| {
                let s = string(v)?;
                if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err((
                        v.span(),
                        format!("{s:?} must be non-empty, without spaces or control characters"),
                    ));
                }
                Ok(s)
            })
            .unwrap_or_default();
        let mut twice = false;
        if !name.is_empty() {
            let line = lines.of("name");
            if let Some(first) = names.insert(name.clone(), line) {
                twice = true;
                self.problems.push(Problem {
                    path: self.path.to_path_buf(),
                    line: Some(line),
                    message: format!("job name {name:?} is used twice (first on line {first})"),
                });
            }
        }
        // What the job holds for itself: two jobs holding one thing would
        // fight over it. (A job whose name is used twice is most likely a
        // copy: one problem is enough.)
        if !twice && let Some(r) = parsed.resource() {
            let canon = r.path.canonicalize().unwrap_or_else(|_| r.path.clone());
            match claims.get(&canon) {
                Some((other, other_kind)) => {
                    let other_type = if *other_kind == kind {
                        String::new()
                    } else {
                        format!(" (type {other_kind})")
                    };
                    self.at_key(
                        &lines,
                        r.key,
                        format!(
                            "{l}{} {} is already {} by job {other:?}{other_type}; two jobs on one {} would fight over {}",
                            r.key,
                            r.shown,
                            kinds::verb(other_kind),
                            r.noun,
                            r.what
                        ),
                    );
                }
                None => {
                    claims.insert(canon, (name.clone(), kind));
                }
            }
        }
        let flag =
            |c: &mut Self, key: &str, default: bool| c.get(&k, key, l, boolean).unwrap_or(default);
        let enabled = flag(self, "enabled", true);
        let supervision = Supervision::parse(self, &k, l, &lines);
        Some(JobConfig {
            name,
            enabled,
            supervision,
            lines,
            kind: parsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fspl_queue::process::OnError;
    use std::ffi::OsString;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("d.toml"), t)
    }

    fn problems(t: &str) -> Vec<String> {
        Config::parse_all(Path::new("d.toml"), t)
            .1
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_full_job_parses_with_defaults() {
        let c = parse(
            "[daemon]\nmax_parallel = 2\nmetrics = \"127.0.0.1:9464\"\n\n[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"/bin/cat\", \"-u\"]\non_error = \"Delete\"\n",
        )
        .unwrap();
        assert_eq!(c.daemon.max_parallel, 2);
        assert_eq!(c.jobs.len(), 1);
        let JobKind::Process(p) = &c.jobs[0].kind else {
            panic!("{:?}", c.jobs[0].kind)
        };
        assert_eq!(p.command, "/bin/cat");
        assert_eq!(p.args, vec![OsString::from("-u")]);
        assert_eq!(p.on_error, OnError::Delete);
        let s = &c.jobs[0].supervision;
        assert_eq!(s.max_failures, 3);
        assert_eq!(s.poll_min, Duration::from_secs(10));
        assert_eq!(s.poll_max, Duration::from_secs(30));
        assert_eq!(c.jobs[0].lines.of("on_error"), 10);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"x\"]\ntypo = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("d.toml: line 6: "), "{e}");
        assert!(e.contains("typo"), "{e}");
        let e = parse("[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"x\"]\non_error = \"sometimes\"\n").unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("on_error"), "{e}");
        let e = parse("[[job]]\nname = \"a\"\ntype = \"nats\"\nqueue = \"/q\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nats"), "{e}");
        let e = parse("[[job]]\nname=\"a\"\ntype=\"process\"\nqueue=\"/q\"\ncommand=[\"x\"]\n[[job]]\nname=\"a\"\ntype=\"process\"\nqueue=\"/r\"\ncommand=[\"x\"]\n").unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("twice"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse("[[job]]\nname=\"a\"\ntype=\"process\"\nqueue=\"/q\"\ncommand=[\"x\"]\n[[job]]\nname=\"b\"\ntype=\"process\"\nqueue=\"/q\"\ncommand=[\"x\"]\n").unwrap_err().to_string();
        assert!(
            e.contains("line 9") && e.contains("already run by job \"a\""),
            "{e}"
        );
    }

    /// Regression: `command = "ls"` on line 5 was reported at line 2 (the
    /// `name` line) without naming `command`: a type error inside a job
    /// table lost its position.
    #[test]
    fn a_type_error_names_its_key_and_its_line() {
        let p = problems(
            "[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = \"ls\"\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("d.toml: line 5: job \"a\": command: must be an array of strings"),
            "{p:?}"
        );
        // In [daemon] too, and in an array element on its own line.
        let p = problems(
            "[daemon]\n\nmax_parallel = \"4\"\n[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\n  \"/bin/x\",\n  7,\n]\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("d.toml: line 3: [daemon] max_parallel: must be a whole number"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("d.toml: line 10: job \"a\": command:"),
            "{p:?}"
        );
    }

    /// Regression: the first problem hid every other one.
    #[test]
    fn every_problem_is_reported_in_file_order() {
        let p = problems(
            "[daemon]\nmax_parallel = 0\nshutdown_grace = -1\n\n[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = []\npoll_min = 0\nmax_failures = 0\nbogus = true\n\n[[job]]\nname = \"b b\"\ntype = \"process\"\nqueue = \"/r\"\ncommand = [\"x\"]\npoll_min = 20\npoll_max = 10\ntimeout = 0\n",
        );
        let lines: Vec<&str> = p.iter().map(|s| s.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            lines,
            [
                "line 2", "line 3", "line 9", "line 10", "line 11", "line 12", "line 15",
                "line 20", "line 21"
            ],
            "{p:#?}"
        );
        assert!(
            p[6].contains("\"b b\" must be non-empty, without spaces"),
            "{p:?}"
        );
        assert!(
            p[7].contains("poll_max: must be at least poll_min (20), not 10"),
            "{p:?}"
        );
    }

    /// Regression: values that make no sense were quietly changed
    /// (poll_min = 0 to 1, max_failures = 0 to 1, poll_max below poll_min
    /// raised to it), and durations too long for the clock were accepted
    /// (adding them to the time of day panicked in the job's task).
    #[test]
    fn nonsensical_values_are_refused() {
        let job = |extra: &str| {
            format!(
                "[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"x\"]\n{extra}\n"
            )
        };
        for (extra, key) in [
            ("poll_min = 0", "poll_min"),
            ("poll_max = 0", "poll_max"),
            ("max_failures = 0", "max_failures"),
            ("timeout = 0", "timeout"),
            ("timeout = 9223372036854775807", "timeout"),
            ("poll_max = 400000000", "poll_max"),
            ("max_failures = 4294967296", "max_failures"),
        ] {
            let p = problems(&job(extra));
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert!(
                p[0].contains(&format!("line 6: job \"a\": {key}: must be")),
                "{p:?}"
            );
        }
        for (daemon, key) in [
            ("max_parallel = 100000", "max_parallel"),
            ("rescan_interval = 0", "rescan_interval"),
            ("shutdown_grace = 9223372036854775807", "shutdown_grace"),
        ] {
            let p = problems(&format!("[daemon]\n{daemon}\n"));
            assert_eq!(p.len(), 1, "{daemon}: {p:?}");
            assert!(
                p[0].contains(&format!("line 2: [daemon] {key}: must be")),
                "{p:?}"
            );
        }
        // One bound alone moves the other default out of its way.
        let c = parse(&job("poll_min = 60")).unwrap();
        let p = &c.jobs[0].supervision;
        assert_eq!((p.poll_min.as_secs(), p.poll_max.as_secs()), (60, 60));
        let c = parse(&job("poll_max = 5")).unwrap();
        let p = &c.jobs[0].supervision;
        assert_eq!((p.poll_min.as_secs(), p.poll_max.as_secs()), (5, 5));
    }

    #[test]
    fn a_relative_command_path_is_refused() {
        let p = problems(
            "[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"bin/handler\"]\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("line 5: job \"a\": command: \"bin/handler\" is a relative path"),
            "{p:?}"
        );
        assert!(parse("[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"handler\"]\n").is_ok());
    }

    #[test]
    fn moving_a_job_table_does_not_change_the_job() {
        let a =
            parse("[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"x\"]\n")
                .unwrap();
        let b = parse("# a comment\n\n[[job]]\ncommand = [\"x\"]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\n").unwrap();
        assert_eq!(a.jobs, b.jobs);
    }

    /// The one-job-per-queue rule is per kind: each job names what it
    /// holds. A pull and a process job on one queue is the normal set-up;
    /// two process jobs on one queue, two push jobs on one outbox, a push
    /// and a process job on one directory (both take its lock), two pull
    /// jobs from one source are refused, each at the line of its key.
    #[test]
    fn each_kind_names_what_it_holds_and_two_jobs_never_hold_one_thing() {
        let process = |n: &str, q: &str| {
            format!(
                "[[job]]\nname = \"{n}\"\ntype = \"process\"\nqueue = \"{q}\"\ncommand = [\"x\"]\n"
            )
        };
        let push = |n: &str, o: &str, to: &str| {
            format!("[[job]]\nname = \"{n}\"\ntype = \"push\"\noutbox = \"{o}\"\nto = \"{to}\"\n")
        };
        let pull = |n: &str, from: &str, q: &str| {
            format!(
                "[[job]]\nname = \"{n}\"\ntype = \"pull\"\nfrom = \"{from}\"\nqueue = \"{q}\"\n"
            )
        };
        // Accepted: pull into a processed queue; a relay (pull into an
        // outbox that is pushed); two pulls into one queue.
        let c = parse(&format!(
            "{}{}{}{}",
            pull("in", "dir:/sync/in", "/q"),
            process("run", "/q"),
            pull("in2", "/sync/other", "/q"),
            push("out", "/q2", "dir:/sync/out"),
        ))
        .unwrap();
        let kinds: Vec<&str> = c.jobs.iter().map(|j| j.kind.name()).collect();
        assert_eq!(kinds, ["pull", "process", "pull", "push"]);
        let JobKind::Push(p) = &c.jobs[3].kind else {
            panic!()
        };
        assert_eq!(p.to, fspl_transport::Location::Dir("/sync/out".into()));
        assert!(!p.keep);
        let JobKind::Pull(p) = &c.jobs[0].kind else {
            panic!()
        };
        assert_eq!(p.from_url, "dir:/sync/in");
        for (text, line, want) in [
            (
                format!("{}{}", process("a", "/q"), process("b", "/q")),
                9,
                "job \"b\": queue /q is already run by job \"a\"; two jobs on one queue would fight over its lock",
            ),
            (
                format!("{}{}", push("a", "/o", "dir:/x"), push("b", "/o", "dir:/y")),
                9,
                "job \"b\": outbox /o is already pushed by job \"a\"; two jobs on one outbox would fight over its lock",
            ),
            (
                format!("{}{}", process("a", "/o"), push("b", "/o", "dir:/y")),
                9,
                "job \"b\": outbox /o is already run by job \"a\" (type process); two jobs on one outbox would fight over its lock",
            ),
            (
                format!("{}{}", pull("a", "/s", "/q"), pull("b", "dir:/s", "/r")),
                9,
                "job \"b\": from dir:/s is already pulled from by job \"a\"; two jobs on one source would fight over it",
            ),
        ] {
            let p = problems(&text);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0], format!("d.toml: line {line}: {want}"));
        }
    }

    /// push and pull keys are checked like the others: a bad URL (an
    /// unknown scheme, ssh:// as a source) is a problem at its line, as are
    /// missing keys.
    #[test]
    fn transport_urls_are_checked_when_the_file_is_read() {
        let p = problems(
            "[[job]]\nname = \"a\"\ntype = \"push\"\noutbox = \"/o\"\nto = \"ftp://h/q\"\n\n[[job]]\nname = \"b\"\ntype = \"pull\"\nfrom = \"ssh://h/q\"\nqueue = \"/q\"\nremove = true\n\n[[job]]\nname = \"c\"\ntype = \"pull\"\n",
        );
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(
            p[0].starts_with(
                "d.toml: line 5: job \"a\": to: \"ftp://h/q\": unknown scheme \"ftp\"; known: "
            ),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("d.toml: line 10: job \"b\": from: \"ssh://h/q\": only a directory"),
            "{p:?}"
        );
        assert!(
            p[2].starts_with("d.toml: line 12: job \"b\": unknown key `remove` (the keys here are: name, type, from, queue, keep, poll, poll_min, poll_max, max_failures, stale_after, on_success, on_failure, on_error_state, on_refused, hook_timeout, enabled)"),
            "{p:?}"
        );
        assert_eq!(
            p[3..],
            [
                "d.toml: line 14: job \"c\": missing from (e.g. from = \"dir:/mnt/sync/fspl\")",
                "d.toml: line 14: job \"c\": missing queue (e.g. queue = \"/srv/fspl/backups\")"
            ]
        );
        // Without a type, the keys tell which kind to check it as.
        let p = problems("[[job]]\nname = \"a\"\noutbox = \"/o\"\n");
        assert_eq!(
            p,
            [
                "d.toml: line 1: job \"a\": missing type (e.g. type = \"process\")",
                "d.toml: line 1: job \"a\": missing to (e.g. to = \"dir:/mnt/sync/fspl\")"
            ]
        );
    }
}

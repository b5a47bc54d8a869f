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
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fspl_queue::process::{OnError, OrderBy, OutputTo};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

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

/// One configured job. Later transports add further kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    Process(ProcessJob),
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobConfig {
    pub name: String,
    pub enabled: bool,
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

/// `type = "process"`: run a queue, like `queue-process`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessJob {
    pub queue: PathBuf,
    /// The program: an absolute path, or a bare name looked up in PATH.
    pub command: OsString,
    pub args: Vec<OsString>,
    pub decoder: Option<OsString>,
    pub order_by: OrderBy,
    pub on_error: OnError,
    pub never_delete: bool,
    pub output_to: OutputTo,
    pub allow_job_params: bool,
    pub ignore_payload: bool,
    pub timeout: Option<Duration>,
    pub trust: Option<PathBuf>,
    pub identity: Vec<PathBuf>,
    /// Poll instead of relying on filesystem events.
    pub poll: bool,
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Consecutive failed runs before the job enters its error state.
    pub max_failures: u32,
    pub lines: KeyLines,
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

/// The keys of a `type = "process"` job.
const PROCESS_KEYS: &[&str] = &[
    "name",
    "type",
    "queue",
    "command",
    "decoder",
    "order_by",
    "on_error",
    "never_delete",
    "output_to",
    "allow_job_params",
    "ignore_payload",
    "timeout",
    "trust",
    "identity",
    "poll",
    "poll_min",
    "poll_max",
    "max_failures",
    "enabled",
];

/// What a value is, for messages: "a string", "an integer"...
fn kind_of(v: &DeValue<'_>) -> &'static str {
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
type Bad = (Range<usize>, String);

fn string(v: &Spanned<DeValue<'_>>) -> Result<String, Bad> {
    match v.get_ref() {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err((
            v.span(),
            format!("must be a string, not {}", kind_of(other)),
        )),
    }
}

fn boolean(v: &Spanned<DeValue<'_>>) -> Result<bool, Bad> {
    match v.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        other => Err((
            v.span(),
            format!("must be true or false, not {}", kind_of(other)),
        )),
    }
}

/// A whole number in `min..=max`.
fn number(v: &Spanned<DeValue<'_>>, min: u64, max: u64, what: &str) -> Result<u64, Bad> {
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
fn secs(v: &Spanned<DeValue<'_>>, min: u64) -> Result<Duration, Bad> {
    number(v, min, MAX_SECS, " of seconds").map(Duration::from_secs)
}

fn strings(v: &Spanned<DeValue<'_>>, example: &str) -> Result<Vec<String>, Bad> {
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

fn one_of(v: &Spanned<DeValue<'_>>, allowed: &[&str]) -> Result<String, Bad> {
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
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    fn at(&mut self, span: &Range<usize>, message: String) {
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
    ) -> HashMap<String, (Range<usize>, &'t Spanned<DeValue<'i>>)> {
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
    fn get<T>(
        &mut self,
        keys: &HashMap<String, (Range<usize>, &Spanned<DeValue<'_>>)>,
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
                    let mut queues = HashMap::new();
                    for t in a.iter() {
                        match t.get_ref() {
                            DeValue::Table(table) => {
                                if let Some(j) = c.job(t.span(), table, &mut names, &mut queues) {
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
    /// an unknown type), its problems recorded.
    fn job(
        &mut self,
        span: Range<usize>,
        table: &DeTable<'_>,
        names: &mut HashMap<String, usize>,
        queues: &mut HashMap<PathBuf, String>,
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
        let kind = table.iter().find(|(k, _)| k.get_ref() == "type");
        match kind {
            None => self.at(
                &span,
                format!("{label}missing type (e.g. type = \"process\")"),
            ),
            Some((_, v)) => match string(v) {
                Ok(t) if t == "process" => {}
                Ok(other) => {
                    self.at(
                        &v.span(),
                        format!("{label}unknown job type {other:?} (this fspl knows: process)"),
                    );
                    return None;
                }
                Err((s, why)) => {
                    self.at(&s, format!("{label}type: {why}"));
                    return None;
                }
            },
        }
        let k = self.keys(table, PROCESS_KEYS, &label);
        let lines = KeyLines {
            table: header,
            keys: k
                .iter()
                .map(|(name, (s, _))| (name.clone(), line_of(self.text, s.start)))
                .collect(),
        };
        let l = label.as_str();
        let missing = |c: &mut Self, key: &str, example: &str| {
            if !k.contains_key(key) {
                c.at(&span, format!("{l}missing {key} (e.g. {key} = {example})"));
            }
        };
        missing(self, "name", "\"backups\"");
        missing(self, "queue", "\"/srv/fspl/backups\"");
        missing(self, "command", "[\"/usr/local/bin/handler\"]");
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
        let queue = self
            .get(&k, "queue", l, |v| {
                let s = string(v)?;
                if s.is_empty() {
                    return Err((v.span(), "must not be empty".into()));
                }
                Ok(PathBuf::from(s))
            })
            .unwrap_or_default();
        // (A job whose name is used twice is most likely a copy: one
        // problem is enough.)
        if !queue.as_os_str().is_empty() && !twice {
            let canon = queue.canonicalize().unwrap_or_else(|_| queue.clone());
            if let Some(other) = queues.insert(canon, name.clone()) {
                self.problems.push(Problem {
                    path: self.path.to_path_buf(),
                    line: Some(lines.of("queue")),
                    message: format!(
                        "{l}queue {} is already run by job {other:?}; two jobs on one queue would fight over its lock",
                        queue.display()
                    ),
                });
            }
        }
        let argv = self
            .get(&k, "command", l, |v| {
                let argv = strings(v, "[\"/usr/local/bin/handler\", \"--flag\"]")?;
                let Some(program) = argv.first() else {
                    return Err((v.span(), "must name a program".into()));
                };
                if program.is_empty() {
                    return Err((v.span(), "must name a program (the first element is empty)".into()));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err((v.span(), "contains a NUL character".into()));
                }
                if program.contains('/') && !program.starts_with('/') {
                    return Err((
                        v.span(),
                        format!(
                            "{program:?} is a relative path: give an absolute path, or a bare name to look up in PATH (a relative path would depend on the directory the daemon happens to be started in)"
                        ),
                    ));
                }
                Ok(argv)
            })
            .unwrap_or_default();
        let decoder = self.get(&k, "decoder", l, |v| {
            let s = string(v)?;
            if s.trim().is_empty() {
                return Err((v.span(), "must not be empty (leave it out for none)".into()));
            }
            Ok(OsString::from(s))
        });
        let order_by = match self
            .get(&k, "order_by", l, |v| one_of(v, &["sequence", "timestamp"]))
            .as_deref()
        {
            Some("timestamp") => OrderBy::Timestamp,
            _ => OrderBy::Sequence,
        };
        let on_error = match self
            .get(&k, "on_error", l, |v| {
                one_of(v, &["retry", "delete", "leave"])
            })
            .as_deref()
        {
            Some("delete") => OnError::Delete,
            Some("leave") => OnError::Leave,
            _ => OnError::Retry,
        };
        let output_to = match self
            .get(&k, "output_to", l, |v| one_of(v, &["passboth", "saveboth"]))
            .as_deref()
        {
            Some("saveboth") => OutputTo::SaveBoth,
            _ => OutputTo::PassBoth,
        };
        let flag =
            |c: &mut Self, key: &str, default: bool| c.get(&k, key, l, boolean).unwrap_or(default);
        let never_delete = flag(self, "never_delete", false);
        let allow_job_params = flag(self, "allow_job_params", false);
        let ignore_payload = flag(self, "ignore_payload", false);
        let poll = flag(self, "poll", false);
        let enabled = flag(self, "enabled", true);
        let timeout = self.get(&k, "timeout", l, |v| secs(v, 1));
        let path_value = |v: &Spanned<DeValue<'_>>| {
            let s = string(v)?;
            if s.is_empty() {
                return Err((v.span(), "must not be empty".into()));
            }
            Ok(PathBuf::from(s))
        };
        let trust = self.get(&k, "trust", l, path_value);
        let identity = self
            .get(&k, "identity", l, |v| {
                Ok(strings(v, "[\"/etc/fspl/host.key\"]")?
                    .into_iter()
                    .map(PathBuf::from)
                    .collect())
            })
            .unwrap_or_default();
        let poll_min = self.get(&k, "poll_min", l, |v| secs(v, 1));
        let poll_max = self.get(&k, "poll_max", l, |v| secs(v, 1));
        let (poll_min, poll_max) = match (poll_min, poll_max) {
            (Some(a), Some(b)) if a > b => {
                self.problems.push(Problem {
                    path: self.path.to_path_buf(),
                    line: Some(lines.of("poll_max")),
                    message: format!(
                        "{l}poll_max: must be at least poll_min ({}), not {}",
                        a.as_secs(),
                        b.as_secs()
                    ),
                });
                (a, a)
            }
            // A bound given alone moves the other default out of its way.
            (a, b) => {
                let min = a.unwrap_or(Duration::from_secs(10).min(b.unwrap_or(Duration::MAX)));
                let max = b.unwrap_or(Duration::from_secs(30).max(min));
                (min, max)
            }
        };
        let max_failures = self
            .get(&k, "max_failures", l, |v| number(v, 1, u32::MAX as u64, ""))
            .unwrap_or(3) as u32;
        let (command, args) = match argv.split_first() {
            Some((c, rest)) => (OsString::from(c), rest.iter().map(OsString::from).collect()),
            None => (OsString::new(), Vec::new()),
        };
        Some(JobConfig {
            name,
            enabled,
            kind: JobKind::Process(ProcessJob {
                queue,
                command,
                args,
                decoder,
                order_by,
                on_error,
                never_delete,
                output_to,
                allow_job_params,
                ignore_payload,
                timeout,
                trust,
                identity,
                poll,
                poll_min,
                poll_max,
                max_failures,
                lines,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let JobKind::Process(p) = &c.jobs[0].kind;
        assert_eq!(p.command, "/bin/cat");
        assert_eq!(p.args, vec![OsString::from("-u")]);
        assert_eq!(p.on_error, OnError::Delete);
        assert_eq!(p.max_failures, 3);
        assert_eq!(p.poll_min, Duration::from_secs(10));
        assert_eq!(p.poll_max, Duration::from_secs(30));
        assert_eq!(p.lines.of("on_error"), 10);
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
        let JobKind::Process(p) = &c.jobs[0].kind;
        assert_eq!((p.poll_min.as_secs(), p.poll_max.as_secs()), (60, 60));
        let c = parse(&job("poll_max = 5")).unwrap();
        let JobKind::Process(p) = &c.jobs[0].kind;
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
}

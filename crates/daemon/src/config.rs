//! The daemon's configuration file (TOML). Errors name the file, the line
//! and the key.
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

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fspl_queue::process::{OnError, OrderBy, OutputTo};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}: {message}", path.display())]
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    job: Vec<Spanned<toml::Table>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    log_format: Option<LogFormat>,
    log_level: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    socket: Option<PathBuf>,
    max_parallel: Option<Spanned<usize>>,
    shutdown_grace: Option<u64>,
    rescan_interval: Option<u64>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    name: String,
    queue: PathBuf,
    command: Vec<String>,
    decoder: Option<String>,
    order_by: Option<String>,
    on_error: Option<String>,
    #[serde(default)]
    never_delete: bool,
    output_to: Option<String>,
    #[serde(default)]
    allow_job_params: bool,
    #[serde(default)]
    ignore_payload: bool,
    timeout: Option<u64>,
    trust: Option<PathBuf>,
    #[serde(default)]
    identity: Vec<PathBuf>,
    #[serde(default)]
    poll: bool,
    poll_min: Option<u64>,
    poll_max: Option<u64>,
    max_failures: Option<u32>,
    #[serde(default = "default_true")]
    enabled: bool,
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

/// `type = "process"`: run a queue, like `queue-process`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessJob {
    pub queue: PathBuf,
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
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| ConfigError::At {
            path: path.to_path_buf(),
            line: line_of(text, span.start),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::At {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().trim().replace('\n', " "),
        })?;
        let d = raw.daemon;
        let log_level = match d.log_level {
            None => tracing::Level::INFO,
            Some(l) => l.get_ref().parse().map_err(|_| {
                at(
                    l.span(),
                    format!("log_level: unknown level {:?}", l.get_ref()),
                )
            })?,
        };
        let metrics = match d.metrics {
            None => None,
            Some(m) => Some(m.get_ref().parse().map_err(|_| {
                at(
                    m.span(),
                    format!(
                        "metrics: {:?} is not an address like 127.0.0.1:9464",
                        m.get_ref()
                    ),
                )
            })?),
        };
        let max_parallel = match d.max_parallel {
            None => 4,
            Some(n) if *n.get_ref() == 0 => {
                return Err(at(n.span(), "max_parallel must be at least 1".into()));
            }
            Some(n) => *n.get_ref(),
        };
        let daemon = DaemonSettings {
            log_format: d.log_format,
            log_level,
            metrics,
            socket: d.socket.unwrap_or_else(default_socket),
            max_parallel,
            shutdown_grace: Duration::from_secs(d.shutdown_grace.unwrap_or(30)),
            rescan_interval: Duration::from_secs(d.rescan_interval.unwrap_or(60).max(1)),
        };
        let mut names = HashSet::new();
        let mut queues: std::collections::HashMap<PathBuf, String> =
            std::collections::HashMap::new();
        let mut jobs = Vec::new();
        for sj in raw.job {
            let span = sj.span();
            // The line of `key = ...` inside this [[job]] table.
            // The span covers only the `[[job]]` header: the body runs to the
            // next table header.
            let start = span.start.min(text.len());
            let after = span.end.min(text.len());
            let end = text[after..]
                .find("\n[")
                .map(|i| after + i + 1)
                .unwrap_or(text.len());
            let key_line = |key: &str| -> usize {
                let first = line_of(text, span.start);
                text[start..end]
                    .lines()
                    .position(|l| {
                        l.trim_start()
                            .strip_prefix(key)
                            .is_some_and(|rest| rest.trim_start().starts_with('='))
                    })
                    .map(|i| first + i)
                    .unwrap_or(first)
            };
            let err = |key: &str, message: String| ConfigError::At {
                path: path.to_path_buf(),
                line: key_line(key),
                message,
            };
            let mut table = sj.into_inner();
            let label = table
                .get("name")
                .and_then(|v| v.as_str())
                .map(|n| format!("job {n:?}"))
                .unwrap_or_else(|| "job".into());
            let kind = match table.remove("type") {
                Some(toml::Value::String(k)) => k,
                Some(_) => return Err(err("type", format!("{label}: type must be a string"))),
                None => {
                    return Err(err(
                        "name",
                        format!("{label}: missing type (e.g. type = \"process\")"),
                    ));
                }
            };
            match kind.as_str() {
                "process" => {
                    let p: RawProcess =
                        toml::Value::Table(table)
                            .try_into()
                            .map_err(|e: toml::de::Error| {
                                let msg = e.message().trim().replace('\n', " ");
                                // Point at the offending key when the message names one.
                                let key = msg.split('`').nth(1).unwrap_or("name").to_string();
                                err(&key, format!("{label}: {msg}"))
                            })?;
                    let name = p.name.trim().to_string();
                    if name.is_empty() || name.contains(char::is_whitespace) {
                        return Err(err(
                            "name",
                            format!("job name {:?} must be non-empty without spaces", p.name),
                        ));
                    }
                    if !names.insert(name.clone()) {
                        return Err(err("name", format!("job name {name:?} is used twice")));
                    }
                    let q = p.queue.canonicalize().unwrap_or_else(|_| p.queue.clone());
                    if let Some(other) = queues.insert(q, name.clone()) {
                        return Err(err(
                            "queue",
                            format!(
                                "{label}: queue {} is already run by job {other:?}; two jobs on one queue would fight over its lock",
                                p.queue.display()
                            ),
                        ));
                    }
                    if p.command.is_empty() || p.command[0].is_empty() {
                        return Err(err(
                            "command",
                            format!("{label}: command must name a program"),
                        ));
                    }
                    let enum_val = |v: &Option<String>,
                                    key: &str,
                                    allowed: &[&str]|
                     -> Result<Option<String>, ConfigError> {
                        match v {
                            None => Ok(None),
                            Some(s) => {
                                let low = s.trim().to_ascii_lowercase();
                                if allowed.contains(&low.as_str()) {
                                    Ok(Some(low))
                                } else {
                                    Err(err(
                                        key,
                                        format!(
                                            "{label}: {key}: {s:?} is not one of {}",
                                            allowed.join(", ")
                                        ),
                                    ))
                                }
                            }
                        }
                    };
                    let order_by =
                        match enum_val(&p.order_by, "order_by", &["sequence", "timestamp"])?
                            .as_deref()
                        {
                            Some("timestamp") => OrderBy::Timestamp,
                            _ => OrderBy::Sequence,
                        };
                    let on_error =
                        match enum_val(&p.on_error, "on_error", &["retry", "delete", "leave"])?
                            .as_deref()
                        {
                            Some("delete") => OnError::Delete,
                            Some("leave") => OnError::Leave,
                            _ => OnError::Retry,
                        };
                    let output_to =
                        match enum_val(&p.output_to, "output_to", &["passboth", "saveboth"])?
                            .as_deref()
                        {
                            Some("saveboth") => OutputTo::SaveBoth,
                            _ => OutputTo::PassBoth,
                        };
                    let poll_min = Duration::from_secs(p.poll_min.unwrap_or(10).max(1));
                    let poll_max = Duration::from_secs(p.poll_max.unwrap_or(30)).max(poll_min);
                    jobs.push(JobConfig {
                        name,
                        enabled: p.enabled,
                        kind: JobKind::Process(ProcessJob {
                            queue: p.queue,
                            command: OsString::from(&p.command[0]),
                            args: p.command[1..].iter().map(OsString::from).collect(),
                            decoder: p.decoder.map(OsString::from),
                            order_by,
                            on_error,
                            never_delete: p.never_delete,
                            output_to,
                            allow_job_params: p.allow_job_params,
                            ignore_payload: p.ignore_payload,
                            timeout: p.timeout.map(Duration::from_secs),
                            trust: p.trust,
                            identity: p.identity,
                            poll: p.poll,
                            poll_min,
                            poll_max,
                            max_failures: p.max_failures.unwrap_or(3).max(1),
                        }),
                    });
                }
                other => {
                    return Err(err(
                        "type",
                        format!("{label}: unknown job type {other:?} (this fspl knows: process)"),
                    ));
                }
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            daemon,
            jobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("d.toml"), t)
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
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[[job]]\nname = \"a\"\ntype = \"process\"\nqueue = \"/q\"\ncommand = [\"x\"]\ntypo = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("d.toml: line "), "{e}");
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
}

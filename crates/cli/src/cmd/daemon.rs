//! `daemon` and `status`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fspl_daemon::control::{Request, Response, request};
use fspl_daemon::state::JobStatus;
use fspl_daemon::{Config, ConfigError, LogFormat};

use crate::output::write_stdout;

/// Print each problem as one `fspl: error:` line.
fn print_problems(problems: &[fspl_daemon::Problem]) {
    for p in problems {
        eprintln!(
            "fspl: error: {}",
            fspl_queue::escape_controls(&p.to_string())
        );
    }
}

/// `fspl daemon`. Exit status: 0 after a clean shutdown (or, with
/// `--check`, for a configuration without problems); 1 when the
/// configuration has problems (each printed on a line of its own) or the
/// daemon cannot start; clap's 2 for a usage error.
pub fn daemon(
    config: &Path,
    check: bool,
    log_format: Option<LogFormat>,
    level: tracing::Level,
) -> anyhow::Result<ExitCode> {
    if check {
        let text = std::fs::read_to_string(config).map_err(|source| ConfigError::Io {
            path: config.to_path_buf(),
            source,
        })?;
        let (cfg, mut problems) = Config::parse_all(config, &text);
        if let Some(cfg) = &cfg {
            problems.extend(fspl_daemon::check(cfg));
        }
        // In the order of the file (stable: a key's own problems first).
        problems.sort_by_key(|p| p.line);
        if !problems.is_empty() {
            print_problems(&problems);
            return Ok(ExitCode::from(1));
        }
        let n = cfg.map(|c| c.jobs.len()).unwrap_or(0);
        write_stdout(
            format!(
                "{}: OK, {n} job{}\n",
                config.display(),
                if n == 1 { "" } else { "s" }
            )
            .as_bytes(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(ConfigError::Invalid { problems }) => {
            print_problems(&problems);
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let format =
        log_format
            .or(cfg.daemon.log_format)
            .unwrap_or(if std::io::stderr().is_terminal() {
                LogFormat::Human
            } else {
                LogFormat::Logfmt
            });
    let level = if level == tracing::Level::INFO {
        cfg.daemon.log_level
    } else {
        level
    };
    fspl_daemon::init_logging(format, level);
    fspl_daemon::run_blocking(cfg)?;
    Ok(ExitCode::SUCCESS)
}

/// Where `fspl status` looks for the daemon, and why there.
enum Source {
    /// `--socket PATH`
    Flag,
    /// The `socket` key of `-c CONFIG` (or its default).
    Config(PathBuf),
    /// Neither given: the default socket.
    Default,
}

fn socket_of(config: Option<&Path>, socket: Option<&Path>) -> anyhow::Result<(PathBuf, Source)> {
    Ok(match (config, socket) {
        (_, Some(s)) => (s.to_path_buf(), Source::Flag),
        (Some(c), None) => (
            Config::load(c)?.daemon.socket,
            Source::Config(c.to_path_buf()),
        ),
        (None, None) => (fspl_daemon::config::default_socket(), Source::Default),
    })
}

/// Ask the daemon; when nothing answers, say which socket was tried, why
/// that one, and how to point at another.
fn ask(path: &Path, source: &Source, req: &Request) -> anyhow::Result<Response> {
    use fspl_daemon::control::ControlError;
    let e = match request(path, req) {
        Ok(r) => return Ok(r),
        Err(e @ ControlError::Unreachable { .. }) => e,
        Err(e) => return Err(e.into()),
    };
    let mut hint = match source {
        Source::Default => "this is the default socket; for a daemon with a socket of its own, give -c CONFIG (its configuration) or --socket PATH".to_string(),
        Source::Config(c) => format!(
            "this is the socket {} configures; give -c CONFIG with the configuration the daemon was started with, or --socket PATH",
            c.display()
        ),
        Source::Flag => "give --socket PATH with the daemon's socket (the `socket` key of its configuration), or -c CONFIG with its configuration".to_string(),
    };
    // A daemon's socket in one of the usual places (another user's
    // default, root's, the systemd unit's): name it.
    let others: Vec<String> = fspl_daemon::sockpath::usual_sockets()
        .into_iter()
        .filter(|s| s != path)
        .filter(|s| {
            use std::os::unix::fs::FileTypeExt;
            std::fs::symlink_metadata(s).is_ok_and(|m| m.file_type().is_socket())
        })
        .map(|s| s.display().to_string())
        .collect();
    if !others.is_empty() {
        hint.push_str(&format!(
            " (there is a socket at {}: --socket {})",
            others.join(" and at "),
            others[0]
        ));
    }
    Err(anyhow::anyhow!("{e}; {hint}"))
}

pub fn status(
    config: Option<&Path>,
    socket: Option<&Path>,
    json: bool,
    clear: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (path, source) = socket_of(config, socket)?;
    if let Some(job) = clear {
        return match ask(
            &path,
            &source,
            &Request::Clear {
                job: job.to_string(),
            },
        )? {
            Response::Cleared { job } => {
                write_stdout(format!("cleared {job}\n").as_bytes())?;
                Ok(ExitCode::SUCCESS)
            }
            Response::Error { message } => anyhow::bail!("{message}"),
            Response::Status { .. } => anyhow::bail!("unexpected answer from the daemon"),
        };
    }
    let jobs = match ask(&path, &source, &Request::Status)? {
        Response::Status { jobs } => jobs,
        Response::Error { message } => anyhow::bail!("{message}"),
        Response::Cleared { .. } => anyhow::bail!("unexpected answer from the daemon"),
    };
    let out = if json {
        let mut s = serde_json::to_string_pretty(&jobs)?;
        s.push('\n');
        s
    } else {
        table(&jobs)
    };
    write_stdout(out.as_bytes())?;
    // Like queue-status: 1 when some job is in its error state.
    let erring = jobs
        .iter()
        .any(|j| matches!(j.state, fspl_daemon::state::JobState::Error { .. }));
    Ok(ExitCode::from(if erring { 1 } else { 0 }))
}

/// The status table. OK, FAILED and REFUSED count jobs (`jobs_succeeded`,
/// `jobs_failed`, `jobs_refused`); failed runs show in STATE.
fn table(jobs: &[JobStatus]) -> String {
    const HEADER: [&str; 8] = [
        "NAME",
        "NEXT",
        "QUEUED",
        "LAST SUCCESS",
        "OK",
        "FAILED",
        "REFUSED",
        "STATE",
    ];
    let opt = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let mut rows = vec![HEADER.map(String::from)];
    for j in jobs {
        rows.push([
            j.name.clone(),
            opt(j.next_seq),
            opt(j.queued),
            j.last_success.clone().unwrap_or_else(|| "-".into()),
            j.jobs_succeeded.to_string(),
            j.jobs_failed.to_string(),
            j.jobs_refused.to_string(),
            // STATE last: it can be long (an error message).
            j.state.describe(),
        ]);
    }
    let last = HEADER.len() - 1;
    let mut widths = [0usize; 8];
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(last) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < last {
                out.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            } else {
                out.push_str(c);
            }
        }
        out.push('\n');
    }
    out
}

//! `daemon` and `status`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fspl_daemon::control::{Request, Response, request};
use fspl_daemon::state::JobStatus;
use fspl_daemon::{Config, LogFormat};

use crate::output::write_stdout;

pub fn daemon(
    config: &Path,
    check: bool,
    log_format: Option<LogFormat>,
    level: tracing::Level,
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    if check {
        let problems = fspl_daemon::check(&cfg);
        if let Some(first) = problems.first() {
            for p in &problems[1..] {
                eprintln!("fspl: error: {}", fspl_queue::escape_controls(p));
            }
            anyhow::bail!("{first}");
        }
        write_stdout(format!("{}: OK, {} jobs\n", config.display(), cfg.jobs.len()).as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
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

fn socket_of(config: Option<&Path>, socket: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match (config, socket) {
        (_, Some(s)) => s.to_path_buf(),
        (Some(c), None) => Config::load(c)?.daemon.socket,
        (None, None) => fspl_daemon::config::default_socket(),
    })
}

pub fn status(
    config: Option<&Path>,
    socket: Option<&Path>,
    json: bool,
    clear: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let path = socket_of(config, socket)?;
    if let Some(job) = clear {
        return match request(
            &path,
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
    let jobs = match request(&path, &Request::Status)? {
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

fn table(jobs: &[JobStatus]) -> String {
    // STATE last: it can be long (an error message).
    let mut rows = vec![[
        "NAME".to_string(),
        "NEXT".into(),
        "QUEUED".into(),
        "LAST SUCCESS".into(),
        "FAILURES".into(),
        "STATE".into(),
    ]];
    for j in jobs {
        rows.push([
            j.name.clone(),
            j.next_seq
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            j.queued
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            j.last_success.clone().unwrap_or_else(|| "-".into()),
            j.consecutive_failures.to_string(),
            j.state.describe(),
        ]);
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(5) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < 5 {
                out.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            } else {
                out.push_str(c);
            }
        }
        out.push('\n');
    }
    out
}

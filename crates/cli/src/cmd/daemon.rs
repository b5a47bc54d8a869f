//! `daemon` and `status`. `status` talks to the daemon through
//! `fspl-control` only (blocking I/O, no async runtime); the daemon's
//! crate is used for nothing but reading `-c CONFIG`'s `socket`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fspl_control::{JobStatus, PROTOCOL_VERSION, Reply, Request, Response, request_reply};
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
        (None, None) => (fspl_control::sockpath::default_socket(), Source::Default),
    })
}

/// Ask the daemon; when nothing answers, say which socket was tried, why
/// that one, and how to point at another.
fn ask(path: &Path, source: &Source, req: &Request) -> anyhow::Result<Response> {
    use fspl_control::ControlError;
    let e = match request_reply(path, req) {
        Ok(Reply {
            response: Response::Error { message },
            version,
        }) if version < PROTOCOL_VERSION && message.starts_with("bad request") => {
            // An older daemon may not know what we asked.
            anyhow::bail!(
                "{message} (the daemon speaks control protocol version {version}, this fspl version {PROTOCOL_VERSION}: restart it with this fspl)"
            )
        }
        Ok(Reply {
            response: Response::Unknown { result },
            version,
        }) => anyhow::bail!(
            "bad answer from the fspl daemon at {}: an answer of a kind this fspl does not know ({result:?}; the daemon speaks control protocol version {version}, this fspl version {PROTOCOL_VERSION})",
            path.display()
        ),
        Ok(r) => return Ok(r.response),
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
    let others: Vec<String> = fspl_control::sockpath::usual_sockets()
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
    watch: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let (path, source) = socket_of(config, socket)?;
    if let Some(secs) = watch {
        return watch_status(&path, &source, secs);
    }
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
            _ => anyhow::bail!("unexpected answer from the daemon"),
        };
    }
    let jobs = match ask(&path, &source, &Request::Status)? {
        Response::Status { jobs } => jobs,
        Response::Error { message } => anyhow::bail!("{message}"),
        _ => anyhow::bail!("unexpected answer from the daemon"),
    };
    let out = if json {
        let mut s = serde_json::to_string_pretty(&jobs)?;
        s.push('\n');
        s
    } else {
        table(&jobs)
    };
    write_stdout(out.as_bytes())?;
    // Like queue-status: 1 when some job is in its error state, or stale.
    let erring = jobs.iter().any(|j| j.is_error() || j.lag.stale);
    Ok(ExitCode::from(if erring { 1 } else { 0 }))
}

/// Set by SIGINT/SIGTERM while watching.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// `fspl status --watch`: the table every `secs` seconds until Ctrl-C
/// (exit 0). On a terminal the table is redrawn in place (cursor home,
/// each line cleared to its end, the rest of the screen cleared: no blank
/// frame, no flicker); otherwise each table follows the last, after a
/// blank line. An unreachable daemon is shown as a line and tried again.
fn watch_status(path: &Path, source: &Source, secs: f64) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if !(secs.is_finite() && (0.1..=86_400.0).contains(&secs)) {
        anyhow::bail!("--interval must be between 0.1 and 86400 seconds, not {secs}");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let tty = std::io::stdout().is_terminal();
    let mut first = true;
    while !INTERRUPTED.load(Ordering::SeqCst) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let stamp = fspl_format::rfc3339_utc(fspl_format::Ctime {
            secs: now,
            nanos: 0,
        });
        let body = match ask(path, source, &Request::Status) {
            Ok(Response::Status { jobs }) => table(&jobs),
            Ok(Response::Error { message }) => format!("error: {message}\n"),
            Ok(_) => "unexpected answer from the daemon\n".into(),
            Err(e) => format!("{}\n", fspl_queue::escape_controls(&format!("{e:#}"))),
        };
        let text = format!("every {secs}s: fspl status (Ctrl-C ends)    {stamp}\n\n{body}");
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[H");
            for line in text.lines() {
                out.push_str(line);
                out.push_str("\x1b[K\n");
            }
            out.push_str("\x1b[J");
        } else {
            if !first {
                out.push('\n');
            }
            out.push_str(&text);
        }
        first = false;
        {
            let mut so = std::io::stdout().lock();
            if so
                .write_all(out.as_bytes())
                .and_then(|_| so.flush())
                .is_err()
            {
                // The reader went away (a closed pipe): done.
                return Ok(ExitCode::SUCCESS);
            }
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
        while !INTERRUPTED.load(Ordering::SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Seconds as `5s`, `3m20s`, `2h05m`, `3d04h`.
fn ago(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The status table. OK, FAILED and REFUSED count jobs (`jobs_succeeded`,
/// `jobs_failed`, `jobs_refused`: for push and pull jobs, OK counts the
/// jobs sent or taken); failed runs show in STATE. A TYPE column (the
/// job's kind) follows NAME when some job is not a `process` job.
fn table(jobs: &[JobStatus]) -> String {
    let with_type = jobs.iter().any(|j| j.kind != "process");
    let mut header = vec!["NAME"];
    if with_type {
        header.push("TYPE");
    }
    header.extend([
        "NEXT",
        "QUEUED",
        "LAST SUCCESS",
        "OK",
        "FAILED",
        "REFUSED",
        "STATE",
    ]);
    let opt = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for j in jobs {
        let mut row = vec![j.name.clone()];
        if with_type {
            row.push(j.kind.clone());
        }
        row.extend([
            opt(j.next_seq),
            opt(j.queued),
            j.last_success.clone().unwrap_or_else(|| "-".into()),
            j.jobs_succeeded.to_string(),
            j.jobs_failed.to_string(),
            j.jobs_refused.to_string(),
            // STATE last: it can be long (an error message). The lag
            // joins it while jobs wait (the columns stay those scripts
            // know).
            {
                let mut state = j.describe();
                if j.lag.stale {
                    state = format!(
                        "stale (no success for {}+ while jobs wait): {state}",
                        ago(j.lag.stale_after_s.unwrap_or(0))
                    );
                }
                if let Some(a) = j.lag.oldest_queued_age_s {
                    state.push_str(&format!("; oldest waiting {}", ago(a)));
                    if let Some(b) = j.lag.bytes_queued {
                        state.push_str(&format!(", {b} bytes"));
                    }
                }
                // Transports, uploads and syncs: what they moved, and
                // how fast (the last measure).
                if let Some(b) = j.bytes.filter(|b| *b > 0) {
                    state.push_str(&format!("; moved {b} bytes"));
                    if let Some(t) = j.lag.throughput_bps {
                        state.push_str(&format!(", {t} B/s"));
                    }
                }
                state
            },
        ]);
        rows.push(row);
    }
    let last = header.len() - 1;
    let mut widths = vec![0usize; header.len()];
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

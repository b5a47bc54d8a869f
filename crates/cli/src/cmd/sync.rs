//! `fspl sync once` and `fspl sync status` (fspl extension): two-way tree
//! sync as ordered change-set jobs. The work is in fspl-sync.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use fspl_sync::{Compression, Keys, Options, SyncConfig};

use crate::output::write_stdout;

#[derive(Subcommand, Debug)]
pub enum SyncCmd {
    /// Run one round: send the local changes as one change set into the
    /// outbox, then apply the peer's change sets waiting in the inbox
    #[command(after_help = "Examples:\n  \
        fspl sync once -c ~/.config/fspl/sync.toml\n  \
        fspl sync once --dir ~/work --name laptop --peer server --outbox ~/fspl/to-server --inbox ~/fspl/from-server\n  \
        fspl sync once -c sync.toml --force    # after checking a safety refusal")]
    Once {
        #[command(flatten)]
        s: SyncArgs,
        /// Go on despite a safety refusal (a root without its marker, an
        /// emptied root, a change set deleting more than max_delete)
        #[arg(long)]
        force: bool,
        /// Print the round's report as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Show what is pending on each side, conflict copies present, and the
    /// last round
    #[command(after_help = "Examples:\n  fspl sync status -c ~/.config/fspl/sync.toml --json")]
    Status {
        #[command(flatten)]
        s: SyncArgs,
        /// Print as JSON on stdout
        #[arg(long)]
        json: bool,
    },
}

/// The sync's settings: a file (`-c`), flags, or both (flags win).
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// A TOML file with the sync's keys at the top level, or a daemon
    /// configuration with a [[job]] of type "sync"
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    pub config: Option<PathBuf>,
    /// With a daemon configuration holding several sync jobs: which one
    #[arg(long = "job", value_name = "NAME")]
    pub job: Option<String>,
    /// The tree
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// This side's name (default: the host name)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The other side's name
    #[arg(long, value_name = "NAME")]
    pub peer: Option<String>,
    /// The queue this side's change sets go into
    #[arg(long, value_name = "QUEUE")]
    pub outbox: Option<PathBuf>,
    /// The queue the peer's change sets arrive in
    #[arg(long, value_name = "QUEUE")]
    pub inbox: Option<PathBuf>,
    /// The sync's private directory (default DIR/.fspl-sync)
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// A gitignore-style pattern not to sync (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// zstd (default), lz4 or none
    #[arg(long, value_name = "HOW")]
    pub compression: Option<String>,
    /// Sign change sets with this key
    #[arg(long, value_name = "KEYFILE")]
    pub sign: Option<PathBuf>,
    /// Apply only change sets signed by a key of this trust file
    #[arg(long, value_name = "FILE")]
    pub trust: Option<PathBuf>,
    /// Encrypt change sets to this age or SSH recipient, or @FILE (repeatable)
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// Decrypt change sets with this identity file (repeatable)
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// The largest share of the tree one change set may delete (0 to 1;
    /// default 0.5)
    #[arg(long = "max-delete", value_name = "SHARE")]
    pub max_delete: Option<f64>,
}

impl SyncArgs {
    pub fn config(&self) -> anyhow::Result<SyncConfig> {
        let mut c = match &self.config {
            Some(p) => SyncConfig::load(p, self.job.as_deref())?,
            None => {
                let need = |what: &str| anyhow::anyhow!("either -c CONFIG or --{what} is needed");
                SyncConfig::new(
                    self.dir.clone().ok_or_else(|| need("dir"))?,
                    self.peer.clone().ok_or_else(|| need("peer"))?,
                    self.outbox.clone().ok_or_else(|| need("outbox"))?,
                    self.inbox.clone().ok_or_else(|| need("inbox"))?,
                )
            }
        };
        if let Some(v) = &self.dir {
            c.dir = v.clone();
        }
        if let Some(v) = &self.name {
            c.name = v.clone();
        }
        if let Some(v) = &self.peer {
            c.peer = v.clone();
        }
        if let Some(v) = &self.outbox {
            c.outbox = v.clone();
        }
        if let Some(v) = &self.inbox {
            c.inbox = v.clone();
        }
        if let Some(v) = &self.state {
            c.state = Some(v.clone());
        }
        c.exclude.extend(self.exclude.iter().cloned());
        if let Some(v) = &self.compression {
            c.compression = Compression::parse(v)
                .with_context(|| format!("--compression {v:?}: expected zstd, lz4 or none"))?;
        }
        if let Some(v) = &self.sign {
            c.sign = Some(v.clone());
        }
        if let Some(v) = &self.trust {
            c.trust = Some(v.clone());
        }
        c.encrypt_to.extend(self.encrypt_to.iter().cloned());
        c.identity.extend(self.identity.iter().cloned());
        if let Some(v) = self.max_delete {
            c.max_delete = v;
        }
        c.validate()?;
        Ok(c)
    }
}

pub fn run(cmd: SyncCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SyncCmd::Once { s, force, json } => {
            let cfg = s.config()?;
            let keys = Keys::load(&cfg)?;
            let progress = |phase: &str, pct: u8| tracing::debug!("{phase} ({pct}%)");
            let r = fspl_sync::round(&cfg, &keys, &Options { force }, &progress)?;
            if let Some(s) = &r.skew {
                tracing::warn!("{s}");
            }
            if json {
                let mut out = serde_json::to_vec_pretty(&r)?;
                out.push(b'\n');
                write_stdout(&out)?;
            } else {
                let mut line = format!(
                    "sync {} <-> {}: sent {} change set(s) ({} files, {} deletions, {} bytes); applied {} ({} files, {} deleted, {} conflicts, {} bytes)",
                    cfg.name,
                    cfg.peer,
                    r.sets_sent,
                    r.files_sent,
                    r.deletes_sent,
                    r.bytes_sent,
                    r.sets_received,
                    r.files_received,
                    r.deleted,
                    r.conflicts,
                    r.bytes_received
                );
                if let Some(w) = r.waiting_for {
                    line.push_str(&format!("; the inbox waits for seq {w}"));
                }
                line.push('\n');
                write_stdout(line.as_bytes())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Status { s, json } => {
            let cfg = s.config()?;
            let st = fspl_sync::status::status(&cfg)?;
            if json {
                let mut out = serde_json::to_vec_pretty(&st)?;
                out.push(b'\n');
                write_stdout(&out)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = format!(
                "sync {} <-> {} of {}\n  local changes not yet sent: {}\n  change sets pending: {} (not yet in the outbox), {} in the outbox\n  change sets from {} waiting in the inbox: {}{}\n  next change set: seq {}\n",
                st.name,
                st.peer,
                st.dir,
                st.local_changes,
                st.pending,
                st.outbox,
                st.peer,
                st.inbox,
                st.inbox_next_seq
                    .map(|n| format!(" (next: seq {n})"))
                    .unwrap_or_default(),
                st.next_seq
            );
            t.push_str(&format!("  conflict copies: {}\n", st.conflicts.len()));
            for c in &st.conflicts {
                t.push_str(&format!("    {}\n", fspl_queue::escape_controls(c)));
            }
            match &st.last_round {
                None => t.push_str("  last round: none yet\n"),
                Some(r) => {
                    t.push_str(&format!(
                        "  last round: {} ({} ms): sent {} files, {} deletions; received {} files, {} deleted, {} conflicts\n",
                        r.started, r.elapsed_ms, r.files_sent, r.deletes_sent, r.files_received, r.deleted, r.conflicts
                    ));
                    if let Some(e) = &r.error {
                        t.push_str(&format!("    failed: {}\n", fspl_queue::escape_controls(e)));
                    }
                }
            }
            write_stdout(t.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

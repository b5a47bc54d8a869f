//! `queue-init`, `queue-write`, `queue-ls`, `queue-info`, `queue-payload`,
//! `queue-get-next`, `queue-set-next`.

use std::ffi::OsStr;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use fspl_format::{JobLocation, format_env, rfc3339_local};
use fspl_queue::decoder::Decoder;
use fspl_queue::nextseq::NextSeq;
use fspl_queue::scan::{self, find_job};
use fspl_queue::{CopyError, Queue, copy_stream, seqnum};
use serde::Serialize;

use fspl_trust::TrustFile;

use crate::cli::{IdentityArgs, KeyArgs};
use crate::output::{StdoutError, raw_stdin, raw_stdout, write_stdout};

pub fn decoder(d: Option<&OsStr>) -> Option<Decoder> {
    d.map(Decoder::new)
}

pub fn init(dir: &OsStr, append_only: bool, name: Option<&str>) -> anyhow::Result<ExitCode> {
    if let Some(n) = name
        && (n.is_empty() || n.contains(['\n', '/']) || n.trim() != n)
    {
        anyhow::bail!(
            "invalid queue name {n:?}: use a non-empty name without slashes, newlines or surrounding spaces"
        );
    }
    let q = Queue::init(dir, append_only)?;
    if let Some(n) = name {
        q.set_name(n)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A queue handle for reading with the given identities.
fn open(dir: &OsStr, ids: &IdentityArgs) -> anyhow::Result<Queue> {
    Ok(Queue::new(dir).with_identities(super::keys::identities(ids)?))
}

/// Whom a job is from, or why it would be refused (with --trust).
fn vet(q: &Queue, trust: &TrustFile, d: &fspl_format::Decoded) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs() as i64)
        .unwrap_or(0);
    let name = q.name().ok().flatten();
    match fspl_queue::verify::check_header(
        &d.header,
        &d.ext,
        Some(trust),
        name.as_deref(),
        false,
        now,
    ) {
        Ok(v) => Ok(v.sender.unwrap_or_default()),
        Err(r) => Err(r.reason),
    }
}

/// An age-encrypted file that we have no identity for, or none that fits:
/// listed as "(encrypted)", not silently left out.
fn is_encrypted(e: &fspl_queue::QueueError) -> bool {
    matches!(
        e,
        fspl_queue::QueueError::BadJob {
            source: fspl_format::HeaderError::Encrypted | fspl_format::HeaderError::Decrypt(_),
            ..
        }
    )
}

pub fn write(dir: &OsStr, ids: &IdentityArgs) -> anyhow::Result<ExitCode> {
    let q = open(dir, ids)?;
    let name = q.write_job(&mut *raw_stdin())?;
    tracing::debug!(file = %q.job_path(&name).display(), "job stored");
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct LsJson<'a> {
    queue: String,
    jobs: Vec<LsJob<'a>>,
    /// Jobs that could not be decrypted (no matching --identity).
    encrypted: Vec<String>,
    unreadable: Vec<Unreadable>,
}

#[derive(Serialize)]
struct LsJob<'a> {
    seq: u64,
    filename: String,
    ctime: String,
    ctime_secs: i64,
    ctime_nanos: u32,
    #[serde(rename = "type")]
    cmd_type: &'a str,
    /// With --trust: the sender's name, or why the job would be refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    /// With --trust: always false. The listing checks headers only (the
    /// signature covers the payload's length and digest, but the payload
    /// itself is not read); `queue-info --trust` and `queue-check` read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_checked: Option<bool>,
}

#[derive(Serialize)]
pub struct Unreadable {
    pub filename: String,
    pub error: String,
}

pub fn ls(dir: &OsStr, d: Option<&OsStr>, json: bool, keys: &KeyArgs) -> anyhow::Result<ExitCode> {
    let q = open(dir, &keys.ids)?;
    let trust = super::keys::trust(keys)?;
    let dec = decoder(d);
    // Each header is checked while the scan has it in memory; the scan
    // keeps only what the listing shows.
    let queue_name = q.name().ok().flatten();
    let vetting = trust
        .as_deref()
        .map(|t| scan::Vetting::new(t, queue_name.as_deref()));
    let mut s = scan::scan_vetted(&q, dec.as_ref(), None, vetting.as_ref())?;
    let (encrypted, skipped): (Vec<_>, Vec<_>) =
        s.skipped.drain(..).partition(|sk| is_encrypted(&sk.error));
    s.skipped = skipped;
    // Stable: copies of one seq stay in directory order, as in Filespooler.
    s.jobs.sort_by_key(|j| j.seq);
    let vetting: Vec<Option<Result<String, String>>> = s
        .jobs
        .iter_mut()
        .map(|j| {
            j.vetted.take().map(|v| match *v {
                Ok(v) => Ok(v.sender.unwrap_or_default()),
                Err(r) => Err(r.reason),
            })
        })
        .collect();
    // Streamed: a listing of 100,000 jobs is not built in memory first.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, Stdout);
    if json {
        let doc = LsJson {
            queue: dir.to_string_lossy().into_owned(),
            jobs: s
                .jobs
                .iter()
                .zip(&vetting)
                .map(|(j, v)| LsJob {
                    seq: j.seq,
                    filename: j.name.to_string_lossy().into_owned(),
                    ctime: rfc3339_local(j.ctime),
                    ctime_secs: j.ctime.secs,
                    ctime_nanos: j.ctime.nanos,
                    cmd_type: j.kind,
                    signer: v.as_ref().and_then(|r| r.as_ref().ok().cloned()),
                    refused: v.as_ref().and_then(|r| r.as_ref().err().cloned()),
                    payload_checked: v.as_ref().map(|_| false),
                })
                .collect(),
            encrypted: encrypted
                .iter()
                .map(|e| e.name.to_string_lossy().into_owned())
                .collect(),
            unreadable: s
                .skipped
                .iter()
                .map(|sk| Unreadable {
                    filename: sk.name.to_string_lossy().into_owned(),
                    error: fspl_queue::display_chain(&sk.error),
                })
                .collect(),
        };
        serde_json::to_writer_pretty(&mut out, &doc)?;
        out.write_all(b"\n")?;
    } else {
        if trust.is_some() {
            writeln!(
                out,
                "{:<20} {:<27} {:<46} signer",
                "ID", "creation timestamp", "filename"
            )?;
        } else {
            writeln!(out, "{:<20} {:<27} filename", "ID", "creation timestamp")?;
        }
        for (j, v) in s.jobs.iter().zip(&vetting) {
            write!(out, "{:<20} {:<27} ", j.seq, rfc3339_local(j.ctime))?;
            let name = std::os::unix::ffi::OsStrExt::as_bytes(j.name.as_os_str());
            out.write_all(name)?;
            match v {
                None => {}
                Some(r) => {
                    out.write_all(&vec![b' '; 46usize.saturating_sub(name.len()) + 1])?;
                    match r {
                        // The header passed; the payload was not read.
                        Ok(sender) => write!(out, "{sender} (payload unchecked)")?,
                        Err(why) => write!(out, "REFUSED: {why}")?,
                    }
                }
            }
            out.write_all(b"\n")?;
        }
        // Jobs we cannot decrypt are shown, not silently skipped.
        for e in &encrypted {
            write!(out, "{:<20} {:<27} ", "?", "(encrypted)")?;
            out.write_all(std::os::unix::ffi::OsStrExt::as_bytes(e.name.as_os_str()))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct InfoJson {
    seq: u64,
    filename: String,
    #[serde(rename = "type")]
    cmd_type: &'static str,
    ctime_secs: i64,
    ctime_nanos: u32,
    params: Vec<String>,
    /// `[name, value]` pairs in order (lossy UTF-8).
    env: Vec<[String; 2]>,
    /// With --trust: the sender, and that the payload was read and matches
    /// the signed length and digest (always true: a job that does not pass
    /// is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_checked: Option<bool>,
}

pub fn info(
    dir: &OsStr,
    d: Option<&OsStr>,
    seq: u64,
    json: bool,
    keys: &KeyArgs,
) -> anyhow::Result<ExitCode> {
    let q = open(dir, &keys.ids)?;
    let trust = super::keys::trust(keys)?;
    let dec = decoder(d);
    let queue_name = q.name().ok().flatten();
    let vetting = trust
        .as_deref()
        .map(|t| scan::Vetting::new(t, queue_name.as_deref()));
    let entry = find_job(&q, seq, dec.as_ref(), vetting.as_ref())?;
    // The one file found, read again in full.
    let job = q.read_job_header(&entry.name, dec.as_ref())?;
    // With a trust file, the job shown is one queue-process would run:
    // header and signature, then its payload against the signed length
    // and digest (one job: cheap).
    let signer = match trust.as_deref() {
        None => None,
        Some(t) => {
            let refused = |why: String| {
                anyhow::anyhow!(
                    "job {seq} ({}) would be refused: {why}",
                    q.job_path(&entry.name).display()
                )
            };
            let sender = vet(&q, t, &job).map_err(refused)?;
            if let Some(why) = scan::payload_refusal(&q, dec.as_ref(), &entry.name)? {
                return Err(refused(why));
            }
            Some(sender)
        }
    };
    let (name, header) = (entry.name, job.header);
    let env = header.environment(Some(JobLocation {
        queuedir: dir,
        filename: &name,
    }));
    if json {
        let params = match &header.cmd_type {
            fspl_format::CmdType::Command(c) => c
                .params
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
            _ => vec![],
        };
        let doc = InfoJson {
            seq: header.seq,
            filename: name.to_string_lossy().into_owned(),
            cmd_type: header.cmd_type.name(),
            ctime_secs: header.ctime.secs,
            ctime_nanos: header.ctime.nanos,
            params,
            env: env
                .iter()
                .map(|(k, v)| {
                    [
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ]
                })
                .collect(),
            payload_checked: signer.as_ref().map(|_| true),
            signer,
        };
        let mut out = serde_json::to_vec_pretty(&doc)?;
        out.push(b'\n');
        write_stdout(&out)?;
    } else {
        write_stdout(&format_env(&env))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn payload(
    dir: &OsStr,
    d: Option<&OsStr>,
    seq: u64,
    ids: &IdentityArgs,
) -> anyhow::Result<ExitCode> {
    let q = open(dir, ids)?;
    let dec = decoder(d);
    let entry = find_job(&q, seq, dec.as_ref(), None)?;
    let mut job = q.open_job(&entry.name, dec.as_ref())?;
    // No further than one byte past the length the header says.
    let result = copy_stream(&mut job.payload_reader(), &mut *raw_stdout());
    job.payload.close();
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(CopyError::Write(e)) => Err(StdoutError(e).into()),
        Err(CopyError::Read(e)) => Err(anyhow::Error::new(e).context(format!(
            "cannot read payload of {}",
            q.job_path(&entry.name).display()
        ))),
    }
}

pub fn get_next(dir: &OsStr) -> anyhow::Result<ExitCode> {
    let q = Queue::new(dir);
    let _lock = q.lock()?;
    let n = NextSeq::open(&q.nextseq_path())?.value();
    write_stdout(format!("{n}\n").as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub fn set_next(dir: &OsStr, id: u64) -> anyhow::Result<ExitCode> {
    let q = Queue::new(dir);
    let _lock = q.lock()?;
    seqnum::write(&q.nextseq_path(), id)
        .with_context(|| format!("cannot set the next seq of {}", q.dir().display()))?;
    let _ = std::io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}

/// Unbuffered stdout (fd 1) as a writer, for a BufWriter in front of it.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        raw_stdout().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

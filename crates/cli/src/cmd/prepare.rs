//! `prepare`, `prepare-nop`, `prepare-fail`, `prepare-get-next`,
//! `prepare-set-next`.
//!
//! Unlike Filespooler 1.2.4, a failed `prepare` never silently burns a
//! sequence number: the input is opened before a number is taken, and the
//! sequence file is advanced only after the header reached stdout. When the
//! payload fails later, the error names the number that is now missing and
//! how to fill the gap.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use std::sync::{Arc, Mutex};

use fspl_format::DigestAlg;
use fspl_format::{CmdType, Command, Ctime, Extension, JobHeader, SET_PREFIX};
use fspl_queue::failpoint;
use fspl_queue::seqfile::SenderSeq;
use fspl_queue::{CopyError, copy_stream};
use fspl_trust::SecretKey;
use fspl_trust::crypt::{Encrypting, encrypt, parse_recipient};
use fspl_trust::digest::{hash_file, hash_reader};

use crate::cli::SeqArgs;
use crate::output::{print_error, raw_stdin, raw_stdout};

pub enum Kind {
    Command(Vec<OsString>),
    Nop,
    Fail,
}

pub fn prepare(seq: &SeqArgs, input: Option<&OsStr>, kind: Kind) -> anyhow::Result<ExitCode> {
    if std::io::stdout().is_terminal() {
        // A binary job on a terminal is garbage on the screen and a
        // sequence number the receiver waits for in vain.
        print_error(&anyhow!(
            "refusing to write a binary job to a terminal: redirect stdout to a file or a pipe \
             (`fspl prepare ... > job.fspl`, `... | base64`); no sequence number was used"
        ));
        return Ok(ExitCode::from(crate::EXIT_USAGE));
    }
    let no_payload = input.is_none() && matches!(kind, Kind::Command(_));
    // Errors are printed here, not in main: even a closed stdout is worth
    // reporting, because the job did not get through.
    match prepare_inner(seq, input, kind) {
        Ok(()) => {
            if no_payload && stdin_has_data() {
                tracing::warn!(
                    "stdin has data, but no -i was given: the job's payload is empty \
                     (`-i -` sends stdin)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::from(crate::EXIT_FAILURE))
        }
    }
}

/// True when stdin is a regular file with bytes after its offset, or a
/// pipe or socket with bytes waiting to be read (checked without reading
/// or waiting: data a writer has not produced yet goes unnoticed).
fn stdin_has_data() -> bool {
    let stdin = raw_stdin();
    let Ok(meta) = stdin.metadata() else {
        return false;
    };
    let ft = meta.file_type();
    if ft.is_file() {
        // SAFETY: lseek on fd 0 with SEEK_CUR only reads the offset.
        let pos = unsafe { libc::lseek(0, 0, libc::SEEK_CUR) };
        return pos >= 0 && meta.len() > pos as u64;
    }
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() || ft.is_socket() {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD stores the number of readable bytes in `n`.
        let rc = unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
        return rc == 0 && n > 0;
    }
    false
}

enum Input {
    Empty,
    Stdin,
    /// A regular file (can be read twice).
    File(File, OsString),
    /// A pipe or device named with -i (read once).
    Stream(File, OsString),
}

/// Size and modification time of a file when it was digested.
struct Unchanged(u64, Option<std::time::SystemTime>);

impl Unchanged {
    fn of(f: &File) -> Option<Unchanged> {
        f.metadata()
            .ok()
            .map(|m| Unchanged(m.len(), m.modified().ok()))
    }

    fn unchanged(&self, f: &File) -> bool {
        Unchanged::of(f).is_some_and(|now| now.0 == self.0 && now.1 == self.1)
    }
}

impl Input {
    fn open(input: Option<&OsStr>) -> anyhow::Result<Input> {
        Ok(match input {
            None => Input::Empty,
            Some(s) if s == "-" => Input::Stdin,
            Some(p) => {
                let f = File::open(p).with_context(|| {
                    format!(
                        "cannot open input file {} (no sequence number was used)",
                        p.to_string_lossy()
                    )
                })?;
                let meta = f
                    .metadata()
                    .with_context(|| format!("cannot stat input file {}", p.to_string_lossy()))?;
                if meta.is_dir() {
                    bail!(
                        "input {} is a directory (no sequence number was used)",
                        p.to_string_lossy()
                    );
                }
                if !meta.is_file() {
                    // A pipe or device: it can be read once, like stdin.
                    return Ok(Input::Stream(f, p.to_os_string()));
                }
                Input::File(f, p.to_os_string())
            }
        })
    }

    /// Replace stdin (or empty input) by an unlinked temporary copy, so it
    /// can be read twice (digest first, then payload).
    fn spool(self) -> anyhow::Result<Input> {
        match self {
            Input::File(..) => Ok(self),
            Input::Empty => {
                let f = tempfile::tempfile()?;
                Ok(Input::File(f, "nothing".into()))
            }
            Input::Stdin => {
                let mut f = tempfile::tempfile()?;
                std::io::copy(&mut *raw_stdin(), &mut f).context("cannot read stdin")?;
                f.seek(SeekFrom::Start(0))?;
                Ok(Input::File(f, "stdin".into()))
            }
            Input::Stream(mut src, name) => {
                let mut f = tempfile::tempfile()?;
                std::io::copy(&mut src, &mut f)
                    .with_context(|| format!("cannot read {}", name.to_string_lossy()))?;
                f.seek(SeekFrom::Start(0))?;
                Ok(Input::File(f, name))
            }
        }
    }

    /// Length and digest of the whole input (read with positional reads,
    /// so the file offset stays at the start; a large file is hashed on
    /// two threads); for a regular file also a guard that tells whether it
    /// changed since.
    fn digest(&mut self) -> anyhow::Result<(u64, fspl_format::Digest, Option<Unchanged>)> {
        match self {
            Input::Empty => {
                let (n, d) = hash_reader(DigestAlg::Blake3, &mut std::io::empty())?;
                Ok((n, d, None))
            }
            Input::Stdin | Input::Stream(..) => bail!("a pipe cannot be read twice"),
            Input::File(f, _) => {
                let guard = Unchanged::of(f);
                let n = f.metadata()?.len();
                let d = hash_file(DigestAlg::Blake3, f, n)?;
                Ok((n, d, guard))
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Input::Empty => "nothing".into(),
            Input::Stdin => "stdin".into(),
            Input::File(_, p) | Input::Stream(_, p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// Every `FSPL_SET_*` variable, in environment order, prefix removed.
fn captured_env() -> Vec<(Vec<u8>, Vec<u8>)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_vec();
            k.strip_prefix(SET_PREFIX.as_bytes())
                .map(|name| (name.to_vec(), v.into_vec()))
        })
        .collect()
}

fn prepare_inner(seq: &SeqArgs, input: Option<&OsStr>, kind: Kind) -> anyhow::Result<()> {
    // Everything that can fail without the receiver noticing comes before a
    // number is taken: input, key, recipients, the payload digest.
    let mut input = Input::open(input)?;
    let signer = match &seq.sign {
        None => None,
        Some(p) => Some(SecretKey::load(p).context("no sequence number was used")?),
    };
    let recipients = recipients(&seq.encrypt_to).context("no sequence number was used")?;
    let mut ext = Extension {
        to: seq.to.clone(),
        ..Extension::default()
    };
    if signer.is_some() && !matches!(input, Input::File(..)) {
        // The digest must be in the header, before the payload: keep a copy.
        input = input
            .spool()
            .context("cannot keep a copy of the input for signing (no sequence number was used)")?;
    }
    let wants_digest = signer.is_some() || (!seq.no_digest && matches!(input, Input::File(..)));
    let mut guard = None;
    if wants_digest {
        let (len, digest, g) = input
            .digest()
            .context("cannot read the input to digest it (no sequence number was used)")?;
        ext.payload_len = Some(len);
        ext.digest = Some(digest);
        guard = g;
    }
    let cmd_type = match kind {
        Kind::Nop => CmdType::Nop,
        Kind::Fail => CmdType::Fail,
        Kind::Command(params) => CmdType::Command(Command {
            params: params.into_iter().map(OsStringExt::into_vec).collect(),
            env: captured_env(),
        }),
    };

    // Take a number (holding the sequence file's lock until it is committed).
    let mut sender = match (&seq.seq, &seq.seqfile) {
        (Some(_), _) => None,
        (None, Some(f)) if f == "-" => None,
        (None, Some(f)) => Some(SenderSeq::lock(f.as_ref())?),
        (None, None) => bail!("either -s/--seqfile or --seq is needed"),
    };
    let number = match (&seq.seq, &mut sender) {
        (Some(n), _) => *n,
        (None, Some(s)) => s.read_next()?,
        (None, None) => 1,
    };
    failpoint::hit("prepare:after-lock").context("cannot take a sequence number")?;
    let header = JobHeader {
        seq: number,
        ctime: Ctime::now(),
        cmd_type,
    };
    if let Some(k) = &signer {
        ext.signer = Some(k.public().bytes());
        let signed = header
            .signed_bytes(&ext)
            .context("cannot encode the signed fields")?;
        ext.signature = Some(k.sign(&signed));
    }
    let bytes = header
        .encode_with(&ext)
        .context("cannot encode the job header")?;
    let mut out = output_chain(seq.compress.as_ref(), &recipients)?;
    // Flushed, so that with --compress too the header has reached stdout
    // before the number is committed.
    out.write_all(&bytes).and_then(|()| out.flush()).map_err(|e| {
        anyhow!(e).context(format!(
            "cannot write job {number} to stdout (no sequence number was used; the next is still {number})"
        ))
    })?;
    failpoint::hit("prepare:after-header").context("cannot commit the sequence number")?;
    if let Some(s) = &mut sender
        && let Err(e) = s.commit(number)
    {
        // The write (in place, or the rename) comes before the sync: when
        // only the sync failed, the file already says number + 1 and the
        // number is used.
        let used = number
            .checked_add(1)
            .is_some_and(|n| s.read_next().ok() == Some(n));
        let msg = if used {
            format!(
                "job {number} was written to stdout without its payload, and the sequence file {} \
                 already says {} but could not be made durable; seq {number} is now missing for the \
                 receiver: resend the job with `fspl prepare --seq {number} ...` (or fill the gap \
                 with `fspl prepare-nop --seq {number}`)",
                s.path().display(),
                number + 1
            )
        } else {
            format!(
                "job {number} was written to stdout but the sequence file {} could not be advanced; \
                 discard that job, or the next prepare will use seq {number} again",
                s.path().display()
            )
        };
        return Err(anyhow::Error::new(e).context(msg));
    }
    drop(sender);
    failpoint::hit("prepare:after-commit").with_context(|| {
        format!(
            "cannot send the payload of job {number}; seq {number} is now missing for the receiver: \
             resend the job with `fspl prepare --seq {number} ...` (or fill the gap with \
             `fspl prepare-nop --seq {number}`)"
        )
    })?;

    let mut stdin = raw_stdin();
    let copied = match &mut input {
        // A regular file straight to stdout: the kernel copies it
        // (copy_file_range, sendfile), no pass through our memory.
        Input::File(f, _) if out.is_plain() => send_file(f, ext.payload_len),
        Input::Empty => Ok(0),
        Input::Stdin => copy_with_failpoint(&mut *stdin, &mut out),
        Input::File(f, _) | Input::Stream(f, _) => copy_with_failpoint(f, &mut out),
    }
    .and_then(|n| {
        if let (Some(g), Input::File(f, _)) = (&guard, &input)
            && !g.unchanged(f)
        {
            return Err(CopyError::Read(std::io::Error::other(
                "the file changed while it was being sent, so its digest no longer matches",
            )));
        }
        out.finish().map(|()| n).map_err(CopyError::Write)
    });
    if let Err(e) = copied {
        let cause = match e {
            CopyError::Read(e) => anyhow!(e).context(format!("reading {} failed", input.name())),
            CopyError::Write(e) => anyhow!(e).context("writing to stdout failed"),
        };
        return Err(cause.context(format!(
            "job {number} is incomplete and seq {number} is now missing for the receiver; \
             fill the gap with `fspl prepare-nop --seq {number}` (or resend the job with \
             `fspl prepare --seq {number} ...`)"
        )));
    }
    Ok(())
}

/// Copy the payload; the `prepare:mid-payload` failpoint sits after the
/// first block.
fn copy_with_failpoint(r: &mut dyn Read, out: &mut dyn Write) -> Result<u64, CopyError> {
    let mut head = [0u8; 4096];
    let n = fspl_format::read_full(r, &mut head).map_err(CopyError::Read)?;
    out.write_all(&head[..n]).map_err(CopyError::Write)?;
    failpoint::hit("prepare:mid-payload").map_err(CopyError::Read)?;
    Ok(n as u64 + copy_stream(r, out)?)
}

/// Send a regular file from its start to stdout: `len` bytes (all of it
/// when `None`). The kernel copies (copy_file_range, else sendfile); where
/// it cannot (stdout opened for appending, ...), or when a kernel copy
/// fails, the rest goes through a buffer, which also tells a read error
/// from a write error. The `prepare:mid-payload` failpoint sits after the
/// first block.
fn send_file(f: &File, len: Option<u64>) -> Result<u64, CopyError> {
    use std::os::fd::AsRawFd;
    #[derive(PartialEq)]
    enum Way {
        CopyFileRange,
        Sendfile,
        Buffer,
    }
    let end = len.unwrap_or(u64::MAX);
    let mut at = 0u64;
    let mut way = Way::CopyFileRange;
    let mut failpoint_done = false;
    while at < end && way != Way::Buffer {
        // The first block alone, then the failpoint.
        let cap = if failpoint_done { 1 << 30 } else { 4096 };
        let want = usize::try_from((end - at).min(cap)).unwrap_or(4096);
        let mut off = at as libc::off64_t;
        // SAFETY: both descriptors are open for the duration of the call;
        // `off` is a valid pointer to the input offset (the file's own
        // offset is not used or moved), NULL means stdout's own offset.
        let r = unsafe {
            match way {
                Way::CopyFileRange => {
                    libc::copy_file_range(f.as_raw_fd(), &mut off, 1, std::ptr::null_mut(), want, 0)
                }
                _ => libc::sendfile64(1, f.as_raw_fd(), &mut off, want),
            }
        };
        match r {
            n if n > 0 => at += n as u64,
            0 if len.is_none() => {
                // The end of the file (or a kernel path that copies
                // nothing: the buffer will tell).
                way = match way {
                    Way::CopyFileRange => Way::Sendfile,
                    _ => Way::Buffer,
                };
                continue;
            }
            0 => way = Way::Buffer,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Not supported for these files, or an error whose side the
                // buffered copy will name.
                way = match (way, e.raw_os_error()) {
                    (
                        Way::CopyFileRange,
                        Some(
                            libc::EXDEV
                            | libc::EINVAL
                            | libc::EOPNOTSUPP
                            | libc::ENOSYS
                            | libc::EBADF
                            | libc::EPERM,
                        ),
                    ) => Way::Sendfile,
                    _ => Way::Buffer,
                };
                continue;
            }
        }
        if !failpoint_done {
            failpoint_done = true;
            failpoint::hit("prepare:mid-payload").map_err(CopyError::Read)?;
        }
    }
    if at >= end {
        if !failpoint_done {
            failpoint::hit("prepare:mid-payload").map_err(CopyError::Read)?;
        }
        return Ok(at);
    }
    // The rest through a buffer, with positional reads.
    use std::os::unix::fs::FileExt;
    let mut out = raw_stdout();
    let mut buf = vec![0u8; 128 * 1024];
    while at < end {
        let block = if failpoint_done { buf.len() } else { 4096 };
        let want = usize::try_from((end - at).min(block as u64)).unwrap_or(block);
        let n = match f.read_at(&mut buf[..want], at) {
            Ok(0) if len.is_none() => break,
            Ok(0) => {
                return Err(CopyError::Read(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended early (it changed while it was being sent)",
                )));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        at += n as u64;
        if !failpoint_done {
            failpoint_done = true;
            failpoint::hit("prepare:mid-payload").map_err(CopyError::Read)?;
        }
    }
    if !failpoint_done {
        failpoint::hit("prepare:mid-payload").map_err(CopyError::Read)?;
    }
    Ok(at)
}

/// `--encrypt-to` values: a recipient, or `@FILE` with one per line.
fn recipients(specs: &[String]) -> anyhow::Result<Vec<Box<dyn age::Recipient + Send>>> {
    let mut out = Vec::new();
    for spec in specs {
        if let Some(path) = spec.strip_prefix('@') {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read recipients file {path}"))?;
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                out.push(parse_recipient(line)?);
            }
        } else {
            out.push(parse_recipient(spec)?);
        }
    }
    Ok(out)
}

/// stdout, wrapped in the encryptor (outside) and compressor (inside).
fn output_chain(
    compress: Option<&fspl_codec::CompressSpec>,
    recipients: &[Box<dyn age::Recipient + Send>],
) -> anyhow::Result<Box<dyn Output>> {
    let sink = if recipients.is_empty() {
        Sink::Plain(Plain(raw_stdout()))
    } else {
        Sink::Encrypted(encrypt(recipients, Plain(raw_stdout()))?)
    };
    Ok(match compress {
        None => Box::new(Shared::new(sink)),
        Some(spec) => {
            let shared = Shared::new(sink);
            let enc = spec
                .encoder(shared.clone())
                .context("cannot start the compressor")?;
            Box::new(Compressed(Some(enc), shared))
        }
    })
}

pub fn get_next(seqfile: &OsStr) -> anyhow::Result<ExitCode> {
    let n = if seqfile == "-" {
        1
    } else {
        SenderSeq::lock(seqfile.as_ref())?.next_creating()?
    };
    crate::output::write_stdout(format!("{n}\n").as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub fn set_next(seqfile: &OsStr, id: u64) -> anyhow::Result<ExitCode> {
    if seqfile == "-" {
        bail!("-s - means no sequence file, so there is nothing to set");
    }
    SenderSeq::lock(seqfile.as_ref())?.set(id)?;
    Ok(ExitCode::SUCCESS)
}

/// Where a job goes: stdout as is, or through a compressor and/or an
/// encryptor whose trailers (checksum, last chunk) are written at the end.
trait Output: Write {
    fn finish(&mut self) -> std::io::Result<()>;
    /// True when what is written goes to stdout unchanged (no compressor,
    /// no encryptor), so the kernel may copy a file there directly.
    fn is_plain(&self) -> bool {
        false
    }
}

struct Plain(std::mem::ManuallyDrop<File>);

impl Write for Plain {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// stdout, or an encryptor in front of it.
enum Sink {
    Plain(Plain),
    Encrypted(Encrypting<Plain>),
}

/// The sink, shared between us and the compressor in front of it, so that
/// after the compressor is done we can still finish the encryptor.
#[derive(Clone)]
struct Shared(Arc<Mutex<Option<Sink>>>);

impl Shared {
    fn new(sink: Sink) -> Shared {
        Shared(Arc::new(Mutex::new(Some(sink))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Sink) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut guard = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("output lock poisoned"))?;
        match guard.as_mut() {
            Some(s) => f(s),
            None => Err(std::io::Error::other("output already finished")),
        }
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.with(|s| match s {
            Sink::Plain(p) => p.write(buf),
            Sink::Encrypted(e) => e.write(buf),
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.with(|s| match s {
            Sink::Plain(p) => p.flush(),
            Sink::Encrypted(e) => e.flush(),
        })
    }
}

impl Output for Shared {
    fn is_plain(&self) -> bool {
        self.0
            .lock()
            .is_ok_and(|g| matches!(g.as_ref(), Some(Sink::Plain(_))))
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let sink = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("output lock poisoned"))?
            .take();
        match sink {
            Some(Sink::Encrypted(e)) => e.finish().map(|_| ()),
            Some(Sink::Plain(_)) | None => Ok(()),
        }
    }
}

struct Compressed(Option<Box<dyn fspl_codec::FinishWrite>>, Shared);

impl Write for Compressed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("compressor already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Output for Compressed {
    fn finish(&mut self) -> std::io::Result<()> {
        if let Some(w) = self.0.take() {
            w.finish()?;
        }
        self.1.finish()
    }
}

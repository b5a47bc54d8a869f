//! `ssh://[USER@]HOST[:PORT]/QUEUE`: jobs go through the system's `ssh`
//! (so the user's ssh config, agent, known_hosts and ProxyJump all apply)
//! to `fspl serve-stdin` on the other side, the forced command of the key
//! ssh logs in with.
//!
//! One connection carries every job: frames are written as fast as ssh
//! takes them while a thread reads the acknowledgements the server sends
//! as it commits (pipelined; no round trip per job).
//!
//! `FSPL_SSH` replaces the `ssh` command, split like a shell word list
//! (`FSPL_SSH='ssh -F ~/.ssh/fspl_config'`), as `GIT_SSH_COMMAND` does for
//! git.

use std::collections::HashSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fspl_queue::escape_controls;

use crate::error::{TransportError, TransportErrorKind};
use crate::fdio::{TimedWriter, grow_pipe, set_nonblocking};
use crate::wire::{self, FatalKind, Msg, WireError};
use crate::{Ack, AckSink, OutgoingJob, Sink, hand_over};

/// The environment variable that replaces the `ssh` command.
pub const SSH_ENV: &str = "FSPL_SSH";
/// The environment variable that sets how long a silent server is waited
/// for (seconds), when the caller does not say.
pub const TIMEOUT_ENV: &str = "FSPL_SSH_TIMEOUT";
/// How long a silent server is waited for by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub queue: String,
}

impl SshTarget {
    /// From a parsed `ssh://` location.
    pub fn from_location(loc: &crate::Location) -> Option<SshTarget> {
        match loc {
            crate::Location::Ssh {
                user,
                host,
                port,
                queue,
            } => Some(SshTarget {
                user: user.clone(),
                host: host.clone(),
                port: *port,
                queue: queue.clone(),
            }),
            _ => None,
        }
    }

    /// `ssh://...` as the user would write it, for messages.
    pub fn url(&self) -> String {
        let mut s = String::from("ssh://");
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        if self.host.contains(':') {
            s.push_str(&format!("[{}]", self.host));
        } else {
            s.push_str(&self.host);
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s.push('/');
        s.push_str(&self.queue);
        s
    }
}

#[derive(Clone, Debug)]
pub struct SshOptions {
    /// How long to wait for the server to say anything (the hello, an
    /// acknowledgement) or to take more bytes, before giving up.
    pub timeout: Duration,
    /// The ssh command and its first arguments (default: `$FSPL_SSH`
    /// split into words, or `ssh`).
    pub command: Option<Vec<String>>,
}

impl Default for SshOptions {
    fn default() -> SshOptions {
        let timeout = std::env::var(TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(DEFAULT_TIMEOUT);
        SshOptions {
            timeout,
            command: None,
        }
    }
}

/// The command that runs ssh for `target`: `command`, `$FSPL_SSH` or
/// `ssh`, then `-T [-p PORT] [-l USER] -- HOST 'fspl-push QUEUE'`.
pub fn ssh_command(
    target: &SshTarget,
    command: Option<&[String]>,
) -> Result<Command, TransportError> {
    let bad = |message: String| TransportError::Backend {
        message,
        kind: TransportErrorKind::Permanent,
    };
    let words = match command.filter(|c| !c.is_empty()) {
        Some(c) => c.to_vec(),
        None => match std::env::var(SSH_ENV) {
            Ok(s) if !s.trim().is_empty() => shlex::split(&s)
                .filter(|w| !w.is_empty())
                .ok_or_else(|| bad(format!("{SSH_ENV}={s:?} cannot be split into words")))?,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(bad(format!("{SSH_ENV} is not valid UTF-8")));
            }
            _ => vec!["ssh".to_string()],
        },
    };
    let mut c = Command::new(&words[0]);
    c.args(&words[1..]).arg("-T");
    if let Some(p) = target.port {
        c.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &target.user {
        c.arg("-l").arg(u);
    }
    c.arg("--")
        .arg(&target.host)
        .arg(wire::push_request(&target.queue));
    Ok(c)
}

enum Event {
    Msg(Msg),
    /// The server's output ended (cleanly between frames, or not).
    Closed,
    Broken(String),
}

/// The last few KiB ssh wrote to its stderr.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    const MAX: usize = 16 * 1024;
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > Self::MAX {
            let cut = self.0.len() - Self::MAX;
            self.0.drain(..cut);
        }
    }
    /// The last non-empty line, escaped.
    fn last_line(&self) -> Option<String> {
        String::from_utf8_lossy(&self.0)
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map(|l| escape_controls(l).into_owned())
    }
}

/// An `ssh://` destination. It connects when told jobs are coming
/// ([`Sink::prepare`], before the outbox's headers are read, so ssh's
/// log-in overlaps with that) or on the first job; an empty outbox needs
/// no connection.
pub struct SshSink {
    target: SshTarget,
    opts: SshOptions,
    conn: Option<Conn>,
    /// Set once the session has failed; returned by every later call.
    failed: Option<(String, TransportErrorKind)>,
    /// Acknowledgements not yet returned, including refusals made here
    /// (jobs above the server's limit, never sent).
    acks: Vec<Ack>,
    /// Every job sent was answered and the session ended (or none was
    /// ever sent).
    done: bool,
    /// A job was sent (or refused here) on this sink.
    sent_any: bool,
}

/// One ssh session speaking the protocol.
struct Conn {
    timeout: Duration,
    child: Child,
    out: Option<TimedWriter>,
    /// When the oldest bytes still in `out`'s buffer were put there.
    buffered_since: Option<Instant>,
    events: Receiver<Event>,
    stderr: Arc<Mutex<Tail>>,
    threads: Vec<JoinHandle<()>>,
    max_job_len: u64,
    /// Sent and not yet acknowledged.
    outstanding: HashSet<u64>,
    /// The server said it was ready.
    ready: bool,
    bye: bool,
    buf: Vec<u8>,
}

/// Written-but-unflushed frames go out when `poll` finds them this old,
/// so a caller that sends a few jobs and then polls for their
/// acknowledgements gets them, while back-to-back jobs share writes.
const FLUSH_AFTER: Duration = Duration::from_millis(2);

impl SshSink {
    /// A sink for `target`; nothing happens until the first job.
    pub fn new(target: SshTarget, opts: SshOptions) -> SshSink {
        SshSink {
            target,
            opts,
            conn: None,
            failed: None,
            acks: Vec::new(),
            done: false,
            sent_any: false,
        }
    }

    /// Start ssh and agree on the protocol with `serve-stdin` now.
    pub fn connect(target: &SshTarget, opts: &SshOptions) -> Result<SshSink, TransportError> {
        let mut s = SshSink::new(target.clone(), opts.clone());
        s.conn()?;
        Ok(s)
    }

    fn conn(&mut self) -> Result<&mut Conn, TransportError> {
        if let Some(e) = self.failed_error() {
            return Err(e);
        }
        if self.conn.is_none() {
            match Conn::start(&self.target, &self.opts) {
                Ok(c) => self.conn = Some(c),
                Err((message, kind)) => return Err(self.fail(message, kind)),
            }
        }
        let conn = self.conn.as_mut().expect("just started");
        if !conn.ready
            && let Err((message, kind)) = conn.handshake()
        {
            conn.kill();
            return Err(self.fail(message, kind));
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    /// Record a failure (every later call returns it) and end the session.
    fn fail(&mut self, message: String, kind: TransportErrorKind) -> TransportError {
        if self.failed.is_none() {
            let message = format!("{}: {message}", escape_controls(&self.target.url()));
            self.failed = Some((message, kind));
        }
        if let Some(c) = &mut self.conn {
            let _ = c.child.kill();
        }
        self.failed_error().expect("just set")
    }

    fn failed_error(&self) -> Option<TransportError> {
        self.failed
            .as_ref()
            .map(|(message, kind)| TransportError::Backend {
                message: message.clone(),
                kind: *kind,
            })
    }

    /// Run `f` on the connection; a failure it reports ends the session.
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut Conn, &mut Vec<Ack>) -> Result<T, Failure>,
    ) -> Result<T, TransportError> {
        self.conn()?;
        let conn = self.conn.as_mut().expect("connected");
        match f(conn, &mut self.acks) {
            Ok(v) => Ok(v),
            Err((message, kind)) => Err(self.fail(message, kind)),
        }
    }
}

/// Why a session failed, and whether trying again may help.
type Failure = (String, TransportErrorKind);

impl Conn {
    /// Start ssh and send our hello; [`Conn::handshake`] waits for the
    /// server's answer.
    fn start(target: &SshTarget, opts: &SshOptions) -> Result<Conn, Failure> {
        let mut cmd = ssh_command(target, opts.command.as_deref())
            .map_err(|e| (e.to_string(), TransportErrorKind::Permanent))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd.spawn().map_err(|e| {
            (
                format!(
                    "cannot run {program:?}: {}",
                    fspl_queue::strip_os_errors(&e.to_string())
                ),
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::InvalidInput
                ) {
                    TransportErrorKind::Permanent
                } else {
                    TransportErrorKind::Transient
                },
            )
        })?;
        let stdin = File::from(OwnedFd::from(child.stdin.take().expect("piped")));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let _ = set_nonblocking(&stdin);
        grow_pipe(&stdin, 1 << 20);
        let (tx, events) = channel();
        let tail = Arc::new(Mutex::new(Tail::default()));
        let mut threads = Vec::new();
        threads.push(std::thread::spawn(move || {
            let mut r = std::io::BufReader::with_capacity(64 * 1024, stdout);
            loop {
                let ev = match Msg::read_from(&mut r) {
                    Ok(m) => {
                        let last = matches!(m, Msg::Bye | Msg::Fatal { .. });
                        if tx.send(Event::Msg(m)).is_err() || last {
                            return;
                        }
                        continue;
                    }
                    Err(WireError::Closed) => Event::Closed,
                    Err(e) => Event::Broken(e.to_string()),
                };
                let _ = tx.send(ev);
                return;
            }
        }));
        let t = tail.clone();
        threads.push(std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut b = [0u8; 4096];
            loop {
                match stderr.read(&mut b) {
                    Ok(0) => return,
                    Ok(n) => {
                        if let Ok(mut t) = t.lock() {
                            t.push(&b[..n]);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        }));
        let mut conn = Conn {
            timeout: opts.timeout,
            child,
            out: Some(TimedWriter::new(stdin, opts.timeout)),
            buffered_since: None,
            events,
            stderr: tail,
            threads,
            max_job_len: 0,
            outstanding: HashSet::new(),
            ready: false,
            bye: false,
            buf: vec![0u8; 256 * 1024],
        };
        let hello = Msg::Hello {
            min: wire::VERSION_MIN,
            max: wire::VERSION_MAX,
        };
        // A server that is gone already shows in its answer (or its
        // absence) in `handshake`, with ssh's reason.
        let _ = conn.writer().put(&hello.encode());
        let _ = conn.writer().flush_buf();
        Ok(conn)
    }

    /// Wait for the server's hello and its go-ahead.
    fn handshake(&mut self) -> Result<(), Failure> {
        let theirs = match self.next_msg()? {
            Msg::Hello { min, max } => (min, max),
            other => {
                return Err((
                    format!("the server began with {other:?} instead of its hello"),
                    TransportErrorKind::Permanent,
                ));
            }
        };
        if wire::agree((wire::VERSION_MIN, wire::VERSION_MAX), theirs).is_none() {
            return Err((
                wire::version_mismatch("server", theirs),
                TransportErrorKind::Permanent,
            ));
        }
        match self.next_msg()? {
            Msg::Ready { max_job_len, .. } => {
                self.max_job_len = max_job_len;
                self.ready = true;
                Ok(())
            }
            other => Err((
                format!("protocol error: the server sent {other:?} instead of going ahead"),
                TransportErrorKind::Permanent,
            )),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    fn writer(&mut self) -> &mut TimedWriter {
        self.out.as_mut().expect("open until the end is sent")
    }

    /// The next message from the server, waiting at most the timeout. A
    /// fatal message, the end of the connection or the timeout fail.
    fn next_msg(&mut self) -> Result<Msg, Failure> {
        match self.events.recv_timeout(self.timeout) {
            Ok(Event::Msg(Msg::Fatal { kind, message })) => Err(fatal(kind, &message)),
            Ok(Event::Msg(m)) => Ok(m),
            Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => Err(self.ssh_ended(None)),
            Ok(Event::Broken(why)) => Err(self.ssh_ended(Some(why))),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err((
                    format!(
                        "no answer from the server for {} s; gave up",
                        self.timeout.as_secs()
                    ),
                    TransportErrorKind::Transient,
                ))
            }
        }
    }

    /// The connection ended early: say why, from ssh's exit status and the
    /// last line it printed.
    fn ssh_ended(&mut self, broken: Option<String>) -> Failure {
        // Its exit status and last words are a moment away.
        let status = wait_timeout(&mut self.child, Duration::from_secs(5));
        let tail = self.stderr_line();
        let (message, mut kind) = describe_exit(status, tail.as_deref(), broken.as_deref());
        if self.ready {
            // It had been going well: a connection or a process lost.
            kind = TransportErrorKind::Transient;
        }
        (message, kind)
    }

    fn stderr_line(&self) -> Option<String> {
        // Give the stderr thread a moment to collect ssh's last words.
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.threads.len() > 1 && !self.threads[1].is_finished() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stderr.lock().ok().and_then(|t| t.last_line())
    }

    /// Take the acknowledgements that arrived, without waiting.
    fn drain(&mut self, acks: &mut Vec<Ack>) -> Result<(), Failure> {
        loop {
            match self.events.try_recv() {
                Ok(Event::Msg(m)) => self.note(m, acks)?,
                Ok(Event::Closed) => return Err(self.ssh_ended(None)),
                Ok(Event::Broken(why)) => return Err(self.ssh_ended(Some(why))),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(self.ssh_ended(None)),
            }
        }
    }

    fn note(&mut self, m: Msg, acks: &mut Vec<Ack>) -> Result<(), Failure> {
        match m {
            Msg::Ack { id } if self.outstanding.remove(&id) => acks.push(Ack::Durable(id)),
            Msg::Refused { id, reason } if self.outstanding.remove(&id) => {
                acks.push(Ack::Refused {
                    id,
                    reason: escape_controls(&reason).into_owned(),
                })
            }
            Msg::Fatal { kind, message } => return Err(fatal(kind, &message)),
            Msg::Bye => self.bye = true,
            other => {
                return Err((
                    format!("protocol error: the server sent {other:?}"),
                    TransportErrorKind::Permanent,
                ));
            }
        }
        Ok(())
    }

    /// A write failed: the server most likely said why before it went.
    fn write_failed(&mut self, e: std::io::Error, acks: &mut Vec<Ack>) -> Failure {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(Event::Msg(m)) => {
                    if let Err(f) = self.note(m, acks) {
                        return f;
                    }
                }
                Ok(Event::Closed | Event::Broken(_)) | Err(RecvTimeoutError::Disconnected) => {
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        if e.kind() == ErrorKind::TimedOut {
            self.kill();
            return (
                format!(
                    "the server took nothing for {} s; gave up",
                    self.timeout.as_secs()
                ),
                TransportErrorKind::Transient,
            );
        }
        self.ssh_ended(Some(format!(
            "cannot send: {}",
            fspl_queue::strip_os_errors(&e.to_string())
        )))
    }

    fn put(&mut self, bytes: &[u8], acks: &mut Vec<Ack>) -> Result<(), Failure> {
        let before = self.writer().buffered();
        match self.writer().put(bytes) {
            Ok(()) => {
                let w = self.writer();
                if w.buffered() == 0 {
                    self.buffered_since = None;
                } else if before == 0 || w.buffered() < before {
                    self.buffered_since = Some(Instant::now());
                }
                Ok(())
            }
            Err(e) => Err(self.write_failed(e, acks)),
        }
    }

    fn flush(&mut self, acks: &mut Vec<Ack>) -> Result<(), Failure> {
        self.buffered_since = None;
        match self.writer().flush_buf() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_failed(e, acks)),
        }
    }

    fn send_job(
        &mut self,
        id: u64,
        job: &mut OutgoingJob<'_>,
        acks: &mut Vec<Ack>,
    ) -> Result<(), Failure> {
        let name = std::os::unix::ffi::OsStrExt::as_bytes(job.name).to_vec();
        let frame = Msg::Job {
            id,
            len: job.len,
            name,
        }
        .encode();
        self.outstanding.insert(id);
        self.put(&frame, acks)?;
        let mut hasher = blake3::Hasher::new();
        let mut left = job.len;
        let mut buf = std::mem::take(&mut self.buf);
        let shown = || escape_controls(&job.name.to_string_lossy()).into_owned();
        let r = (|| {
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = match job.reader.read(&mut buf[..want]) {
                    Ok(0) => return Err(Local::Changed),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Local::Read(e)),
                };
                hasher.update(&buf[..n]);
                self.put(&buf[..n], acks).map_err(Local::Sent)?;
                left -= n as u64;
            }
            // A file that grew after its length was taken is not sent cut.
            loop {
                match job.reader.read(&mut buf[..1]) {
                    Ok(0) => break,
                    Ok(_) => return Err(Local::Changed),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(Local::Read(e)),
                }
            }
            self.put(hasher.finalize().as_bytes(), acks)
                .map_err(Local::Sent)
        })();
        self.buf = buf;
        match r {
            Ok(()) => Ok(()),
            Err(Local::Sent(f)) => Err(f),
            // The frame promised bytes that cannot be sent: the stream is
            // out of step and this session is over (the jobs sent before
            // stay unacknowledged and are sent again next time).
            Err(Local::Read(e)) => Err((
                format!(
                    "cannot read job {}: {}",
                    shown(),
                    fspl_queue::strip_os_errors(&e.to_string())
                ),
                TransportErrorKind::Transient,
            )),
            Err(Local::Changed) => Err((
                format!(
                    "job {} changed while it was sent (it is not {} bytes long any more)",
                    shown(),
                    job.len
                ),
                TransportErrorKind::Transient,
            )),
        }
    }

    /// Say no more jobs come.
    fn end(&mut self, acks: &mut Vec<Ack>) -> Result<(), Failure> {
        if self.out.is_some() {
            self.put(&Msg::End.encode(), acks)?;
            self.flush(acks)?;
            // Our end closed: the server sees the end of its input too.
            drop(self.out.take());
        }
        Ok(())
    }

    /// Wait for the server's next message and take it: whether it was
    /// its goodbye.
    fn answer(&mut self, acks: &mut Vec<Ack>) -> Result<bool, Failure> {
        if !self.bye {
            let m = self.next_msg()?;
            self.note(m, acks)?;
        }
        Ok(self.bye)
    }

    /// After the server's goodbye: every job answered, and ssh gone.
    fn close(&mut self) -> Result<(), Failure> {
        if !self.outstanding.is_empty() {
            return Err((
                format!(
                    "the server ended the session with {} jobs unacknowledged",
                    self.outstanding.len()
                ),
                TransportErrorKind::Transient,
            ));
        }
        if wait_timeout(&mut self.child, self.timeout).is_none() {
            self.kill();
        }
        Ok(())
    }
}

fn fatal(kind: FatalKind, message: &str) -> Failure {
    (
        format!("serve-stdin: {}", escape_controls(message)),
        match kind {
            FatalKind::Transient => TransportErrorKind::Transient,
            FatalKind::Permanent => TransportErrorKind::Permanent,
        },
    )
}

enum Local {
    Read(std::io::Error),
    Sent(Failure),
    Changed,
}

impl Sink for SshSink {
    fn prepare(&mut self) {
        if self.conn.is_none()
            && self.failed.is_none()
            && let Ok(c) = Conn::start(&self.target, &self.opts)
        {
            // A failure to start is reported by the first job, which
            // tries again.
            self.conn = Some(c);
        }
    }

    fn send(&mut self, id: u64, job: &mut OutgoingJob<'_>) -> Result<(), TransportError> {
        self.sent_any = true;
        let max = self.conn()?.max_job_len;
        if job.len > max {
            self.acks.push(Ack::Refused {
                id,
                reason: format!(
                    "{} bytes, more than the {max} the server takes (its max_job_size)",
                    job.len
                ),
            });
            return Ok(());
        }
        self.with_conn(|c, acks| c.send_job(id, job, acks))
    }

    fn poll(&mut self) -> Result<Vec<Ack>, TransportError> {
        if self.failed.is_none() && self.conn.is_some() {
            let r = self.with_conn(|c, acks| {
                if c.buffered_since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
                    c.flush(acks)?;
                }
                c.drain(acks)
            });
            // Acknowledgements that came before a failure are returned
            // first; the failure on the next call.
            if let Err(e) = r
                && self.acks.is_empty()
            {
                return Err(e);
            }
        }
        if self.acks.is_empty()
            && let Some(e) = self.failed_error()
        {
            return Err(e);
        }
        Ok(std::mem::take(&mut self.acks))
    }

    fn finish(&mut self, acked: &mut AckSink<'_>) -> Result<(), TransportError> {
        if let Some(e) = self.failed_error() {
            return Err(e);
        }
        if !self.sent_any {
            // Prepared for jobs that never came (each was unreadable, or
            // gone): nothing is at stake in ending this session.
            self.conn = None;
        }
        if self.conn.is_some() && !self.done {
            self.with_conn(|c, acks| c.end(acks))?;
            loop {
                let bye = self.with_conn(|c, acks| c.answer(acks));
                hand_over(&mut self.acks, acked)?;
                if bye? {
                    break;
                }
            }
            self.with_conn(|c, _| c.close())?;
        }
        self.done = true;
        hand_over(&mut self.acks, acked)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        drop(self.out.take());
        let grace = if self.bye { 2000 } else { 0 };
        if wait_timeout(&mut self.child, Duration::from_millis(grace)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Wait for the child at most `limit`.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// Why ssh ended a session, and whether trying again may help. ssh exits
/// 255 for its own errors (connecting, authenticating); anything else is
/// the remote command's status (a refusal by `serve-stdin`, or a command
/// that is not there).
fn describe_exit(
    status: Option<ExitStatus>,
    last_line: Option<&str>,
    broken: Option<&str>,
) -> (String, TransportErrorKind) {
    let code = status.and_then(|s| s.code());
    let line = last_line
        .map(str::to_string)
        .or_else(|| broken.map(str::to_string));
    let mut message = match &line {
        Some(l) => l.clone(),
        None => "the connection was closed".to_string(),
    };
    match status {
        Some(s) => match s.code() {
            Some(c) => message.push_str(&format!(" (ssh exited with status {c})")),
            None => message.push_str(&format!(" (ssh was killed: {s})")),
        },
        None => message.push_str(" (ssh is still running)"),
    }
    let text = line.unwrap_or_default();
    let permanent_ssh = [
        "Permission denied",
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "Bad configuration option",
        "Unsupported option",
        "Bad owner or permissions",
        "Too many authentication failures",
        "no argument after keyword",
        "Bad port",
        "garbage at end of line",
    ];
    let kind = match code {
        Some(255) if permanent_ssh.iter().any(|p| text.contains(p)) => {
            TransportErrorKind::Permanent
        }
        Some(255) | None => TransportErrorKind::Transient,
        // The remote command ran and refused (or is not there, or is not
        // serve-stdin): the server's set-up has to change.
        Some(_) => TransportErrorKind::Permanent,
    };
    (message, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> Option<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        Some(ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn ssh_failures_are_classified() {
        let cases = [
            (
                exit(255),
                "ssh: connect to host h port 22: Connection refused",
                TransportErrorKind::Transient,
            ),
            (
                exit(255),
                "ssh: connect to host h port 22: Connection timed out",
                TransportErrorKind::Transient,
            ),
            (
                exit(255),
                "ssh: Could not resolve hostname h: Temporary failure in name resolution",
                TransportErrorKind::Transient,
            ),
            (
                exit(255),
                "me@h: Permission denied (publickey).",
                TransportErrorKind::Permanent,
            ),
            (
                exit(255),
                "Host key verification failed.",
                TransportErrorKind::Permanent,
            ),
            (
                exit(1),
                "fspl: error: this key only accepts `fspl push`",
                TransportErrorKind::Permanent,
            ),
            (
                exit(127),
                "sh: 1: fspl: not found",
                TransportErrorKind::Permanent,
            ),
            (None, "", TransportErrorKind::Transient),
        ];
        for (st, line, kind) in cases {
            let (m, k) = describe_exit(st, Some(line).filter(|l| !l.is_empty()), None);
            assert_eq!(k, kind, "{line}");
            assert!(m.contains(line), "{m}");
            assert!(!m.contains('\n'));
        }
    }

    #[test]
    fn the_command_is_ssh_or_fspl_ssh_with_the_request_as_one_word() {
        let t = SshTarget {
            user: Some("me".into()),
            host: "example.org".into(),
            port: Some(2222),
            queue: "my queue".into(),
        };
        let c = ssh_command(&t, None).unwrap();
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(c.get_program(), "ssh");
        assert_eq!(
            args,
            [
                "-T",
                "-p",
                "2222",
                "-l",
                "me",
                "--",
                "example.org",
                "fspl-push 'my queue'"
            ]
        );
        assert_eq!(t.url(), "ssh://me@example.org:2222/my queue");
        let c = ssh_command(&t, Some(&["ssh".into(), "-F".into(), "cfg".into()])).unwrap();
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..3], ["-F", "cfg", "-T"]);
    }
}

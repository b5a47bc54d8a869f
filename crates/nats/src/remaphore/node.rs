//! send, wait and request over NATS (core NATS as remaphore does, or
//! JetStream with `durable`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream;
use futures::StreamExt;
use tokio::time::Instant;

use fspl_queue::exec::KillHandle;
use fspl_trust::PublicKey;

use super::config::{Config, ConfigError};
use super::durable;
use super::pattern;
use super::seen::Seen;
use super::wire::{self, Message, Outgoing, WireError};
use crate::connect::ConnectConfig;
use crate::error::{NatsError, one_line};

/// Exit statuses, as remaphore's.
pub const EXIT_RECEIVED: u8 = 0;
pub const EXIT_NOTHING: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_RUNTIME: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RemaphoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("no known receivers: no [ Peers ] destination matches {0:?}")]
    NoReceivers(String),
    #[error("no identity {key} with permission to send verb {verb:?}")]
    NoSigner { key: String, verb: String },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("{0}")]
    Runtime(String),
    /// The observer refused a script's outcome (the daemon's `nats-wait`
    /// job: its command failed).
    #[error("{0}")]
    Command(String),
    /// The connection to the server was lost (only with an observer that
    /// asks to give up then).
    #[error("lost the connection to the NATS server {0}")]
    Disconnected(String),
}

impl RemaphoreError {
    /// remaphore's exit statuses: 2 for arguments and configuration, 3 for
    /// everything that goes wrong at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            RemaphoreError::Config(_) | RemaphoreError::Usage(_) => EXIT_USAGE,
            _ => EXIT_RUNTIME,
        }
    }
}

fn rt(what: &str, e: impl std::error::Error + 'static) -> RemaphoreError {
    RemaphoreError::Runtime(format!("{what}: {}", one_line(&e)))
}

/// What every mode shares.
pub struct Common {
    pub config: Config,
    /// `-S`: the subject suffix (default `all`).
    pub subject: Option<String>,
    /// JetStream instead of core NATS.
    pub durable: bool,
    /// Durable mode: the handled-id record (default: `durable_state:` or
    /// under the XDG state directory).
    pub state: Option<PathBuf>,
}

impl Common {
    fn subject(&self) -> String {
        self.config.message_subject(self.subject.as_deref())
    }

    async fn connect(&self) -> Result<Client, RemaphoreError> {
        let servers = self
            .config
            .servers
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let cc = ConnectConfig {
            servers,
            creds: self.config.credentials.clone(),
            name: "fspl-nats".into(),
            ..ConnectConfig::default()
        };
        Ok(cc.connect().await?)
    }
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// What to send (send and request).
pub struct SendArgs {
    /// `-D`: the destination pattern (default `**`).
    pub destination: Option<String>,
    /// `-p`: the identity to sign with (default: the default identity).
    pub sender: Option<PublicKey>,
    /// `-u`: the uuid string (empty: random).
    pub uuid: Vec<u8>,
    /// `-v`: the verb (default `ping`).
    pub verb: String,
    pub payload: Vec<u8>,
}

impl SendArgs {
    fn encode(&self, cfg: &Config, request: bool) -> Result<(Vec<u8>, Message), RemaphoreError> {
        // Verbs are sent lowercase: remaphore lowercases the verbs of its
        // config, so any other spelling would be refused by its peers.
        let verb = self.verb.to_ascii_lowercase();
        let key = cfg
            .signer(self.sender.as_ref(), Some(&verb))
            .ok_or_else(|| RemaphoreError::NoSigner {
                key: self.sender.unwrap_or(cfg.default_identity).to_base58(),
                verb: verb.clone(),
            })?;
        let dest = match self.destination.as_deref() {
            None | Some("") => "**",
            Some(d) => d,
        };
        let uuid = wire::uuid_from(&self.uuid);
        let (raw, _) = Outgoing {
            destination: dest,
            time_nanos: now_nanos(),
            uuid: &uuid,
            verb: &verb,
            request_reply: request,
            payload: &self.payload,
        }
        .encode(key)?;
        let msg = Message::decode(&raw)?;
        Ok((raw, msg))
    }
}

async fn publish(
    common: &Common,
    client: &Client,
    subject: String,
    raw: Vec<u8>,
    msg: &Message,
) -> Result<(), RemaphoreError> {
    if common.durable {
        let js = jetstream::new(client.clone());
        durable::ensure_stream(&js, &common.config, &subject).await?;
        let ack = js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(raw.into())
                    .message_id(wire::hex(&msg.hash)),
            )
            .await
            .map_err(|e| rt("JetStream publish", e))?;
        ack.await
            .map_err(|e| rt("JetStream publish acknowledgement", e))?;
    } else {
        client
            .publish(subject, raw.into())
            .await
            .map_err(|e| rt("publish", e))?;
        client.flush().await.map_err(|e| rt("flush", e))?;
    }
    Ok(())
}

/// remaphore `-s`: send one message.
pub async fn send(common: &Common, args: &SendArgs) -> Result<(), RemaphoreError> {
    // Check what can be checked before connecting; sign after, so that
    // the message's time is its publish time (as remaphore's).
    args.encode(&common.config, false)?;
    let client = common.connect().await?;
    let (raw, msg) = args.encode(&common.config, false)?;
    publish(common, &client, common.subject(), raw, &msg).await?;
    client.flush().await.map_err(|e| rt("flush", e))?;
    Ok(())
}

/// remaphore `-r`: send a request and print each expected responder's
/// reply through `out` (one call per reply, already framed). Returns
/// whether any reply came.
pub async fn request(
    common: &Common,
    args: &SendArgs,
    timeout: Option<Duration>,
    mut out: impl FnMut(&[u8]),
) -> Result<bool, RemaphoreError> {
    let cfg = &common.config;
    let dest = match args.destination.as_deref() {
        None | Some("") => "**".to_string(),
        Some(d) => d.to_string(),
    };
    let mut expected: HashMap<PublicKey, String> = cfg
        .potential_receivers(&dest)
        .into_iter()
        .map(|p| (p.key, p.destination.clone()))
        .collect();
    if expected.is_empty() {
        return Err(RemaphoreError::NoReceivers(dest));
    }
    let deadline = timeout.filter(|t| !t.is_zero()).map(|t| Instant::now() + t);
    let client = common.connect().await?;
    let (raw, msg) = args.encode(cfg, true)?;
    let mut replies = client
        .subscribe(cfg.reply_subject(&msg.hash))
        .await
        .map_err(|e| rt("subscribe", e))?;
    client.flush().await.map_err(|e| rt("flush", e))?;
    publish(common, &client, common.subject(), raw, &msg).await?;
    let mut sep_bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut sep_bytes);
    let sep = wire::hex(&sep_bytes);
    let skew = cfg.allow_skew.as_nanos() as i64;
    let mut any = false;
    while !expected.is_empty() {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, replies.next()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => replies.next().await,
        };
        let Some(m) = next else {
            return Err(RemaphoreError::Runtime(
                "the reply subscription ended".into(),
            ));
        };
        let reply = match Message::decode(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("dropped reply: {e}");
                continue;
            }
        };
        // Only an expected responder of this request, once; a reply made
        // before the request was (give or take the skew) is a replay.
        let Some(dest) = expected.get(&reply.sender).cloned() else {
            tracing::warn!(
                "dropped reply from {}: not an expected responder of this request",
                reply.sender.to_base58()
            );
            continue;
        };
        let now = now_nanos();
        if reply.request_reply {
            tracing::warn!("dropped reply from {dest}: it is a request, not a reply");
            continue;
        }
        if (now - reply.time_nanos).abs() > skew
            || reply.time_nanos < msg.time_nanos.saturating_sub(skew)
        {
            tracing::warn!(
                "dropped reply from {dest}: made at {} (ns), outside the time window (now {now}, request {})",
                reply.time_nanos,
                msg.time_nanos
            );
            continue;
        }
        expected.remove(&reply.sender);
        any = true;
        let payload = trim_space(&reply.payload);
        let mut line = Vec::with_capacity(payload.len() + dest.len() + 90);
        if payload.contains(&b'\n') {
            line.extend_from_slice(format!("--> {sep}\n{dest},").as_bytes());
            line.extend_from_slice(payload);
            line.extend_from_slice(format!("\n--< {sep}\n").as_bytes());
        } else {
            line.extend_from_slice(format!("{dest},").as_bytes());
            line.extend_from_slice(payload);
            line.push(b'\n');
        }
        out(&line);
    }
    Ok(any)
}

/// Go's `strings.TrimFunc(s, unicode.IsSpace)`.
fn trim_space(b: &[u8]) -> &[u8] {
    match std::str::from_utf8(b) {
        Ok(s) => s.trim().as_bytes(),
        Err(_) => b.trim_ascii(),
    }
}

/// How a waiter matches destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestFilter {
    /// The local destination must match the message's pattern.
    Local,
    /// `-D X`: the message's pattern must be X.
    Exact(String),
    /// `-d`: any.
    Any,
}

pub struct WaitArgs {
    pub dest: DestFilter,
    /// `-o`: return after one matching message (the CLI sets it for `-u`
    /// too; a `uuid` alone only filters).
    pub once: bool,
    pub sender: Option<PublicKey>,
    /// `-u`: the uuid string.
    pub uuid: Option<Vec<u8>>,
    /// `-v`: verbs to accept (empty: any).
    pub verbs: Vec<String>,
    pub timeout: Option<Duration>,
    /// Kill each script after this long (besides `timeout`, the wait's).
    pub script_timeout: Option<Duration>,
    /// The script and its arguments (empty: none; replies `NO_DATA`).
    pub script: Vec<OsString>,
}

impl WaitArgs {
    pub fn matches(&self, cfg: &Config, m: &Message) -> bool {
        if let Some(u) = &self.uuid
            && wire::uuid_from(u) != m.uuid
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v.eq_ignore_ascii_case(&m.verb)) {
            return false;
        }
        if let Some(k) = &self.sender
            && *k != m.sender
        {
            return false;
        }
        match &self.dest {
            DestFilter::Local => pattern::matches(&cfg.destination, &m.destination),
            DestFilter::Exact(d) => m.destination == *d,
            DestFilter::Any => true,
        }
    }
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("sender {0} is not a known peer")]
    UnknownPeer(String),
    #[error("sender {peer} may not send verb {verb:?}")]
    Verb { peer: String, verb: String },
    #[error("sender {0} may not address this destination (authorize:)")]
    NotAuthorized(String),
    #[error("message time is outside the allowed window")]
    Time,
    #[error("replayed message (already seen)")]
    Replay,
}

/// What a waiter tells, and asks, as it goes. `fspl nats wait` needs
/// nothing of it ([`Quiet`]); the daemon's `nats-wait` job keeps its
/// status, metrics and running command up to date through it, and ends
/// the wait when a command fails or the server goes away (so that the
/// daemon's backoff and error state apply).
pub trait Observer {
    /// Subscribed (or the durable consumer ready): what is sent from now
    /// on is received.
    fn ready(&mut self, _subject: &str) {}
    /// A message dropped by the checks on receipt.
    fn dropped(&mut self, _why: &Reject) {}
    /// A message passed the checks and the filters; its script starts.
    fn started(&mut self, _m: &Message) {}
    /// The script is running: killable through `h` until it is reaped.
    fn spawned(&mut self, _h: &KillHandle) {}
    /// The script has ended: its exit status (-1: it could not start, was
    /// killed, or died by a signal), how long it ran. An error ends the
    /// wait ([`RemaphoreError::Command`]); in durable mode the message is
    /// then neither recorded nor acknowledged (it comes again).
    fn finished(&mut self, _m: &Message, _code: i32, _ran: Duration) -> Result<(), String> {
        Ok(())
    }
    /// End the wait ([`RemaphoreError::Disconnected`]) when the connection
    /// to the server is lost, instead of waiting for the client to
    /// reconnect by itself (as remaphore does).
    fn fail_on_disconnect(&self) -> bool {
        false
    }
}

/// The observer of `fspl nats wait`: nothing to tell.
pub struct Quiet;

impl Observer for Quiet {}

/// The checks on receipt that do not depend on time: a canonical,
/// correctly signed message from a known peer allowed its verb and (with
/// `authorize:`) allowed to address us.
pub fn check(cfg: &Config, raw: &[u8]) -> Result<Message, Reject> {
    let m = Message::decode(raw)?;
    let Some(peer) = cfg.peer(&m.sender) else {
        return Err(Reject::UnknownPeer(m.sender.to_base58()));
    };
    if !peer.verbs.allows(&m.verb) {
        return Err(Reject::Verb {
            peer: peer.destination.clone(),
            verb: m.verb.clone(),
        });
    }
    if !cfg.authorized_for_us(&m.sender) {
        return Err(Reject::NotAuthorized(peer.destination.clone()));
    }
    Ok(m)
}

/// Run `script... VERB PAYLOAD` with exactly the REMAPHORE_* environment:
/// its exit status (-1 when it could not start, was killed or died by a
/// signal) and combined output. Killed at the deadline.
pub async fn run_script(
    cfg: &Config,
    script: &[OsString],
    m: &Message,
    deadline: Option<Instant>,
    obs: &mut dyn Observer,
) -> (i32, Vec<u8>) {
    // Found through our PATH here, as remaphore (Go's exec.Command) finds
    // it: the script's own environment has no PATH. A program given by
    // its path also lets the C library start it without copying this
    // process (posix_spawn; std forks when a cleared environment would
    // have to be searched), which is most of a responder's time.
    let program = fspl_queue::program::find(&script[0], std::env::var_os("PATH").as_deref())
        .map_or_else(|_| script[0].clone(), OsString::from);
    let mut cmd = std::process::Command::new(&program);
    cmd.arg0(&script[0])
        .args(&script[1..])
        .arg(&m.verb)
        .arg(OsString::from_vec(m.payload.clone()))
        .env_clear()
        .env("REMAPHORE_SENDER", m.sender.to_base58())
        .env("REMAPHORE_VERB", &m.verb)
        .env("REMAPHORE_TIME", (m.time_nanos / 1_000_000_000).to_string())
        .env("REMAPHORE_UUID", wire::hex(&m.uuid))
        .env("REMAPHORE_MSG", OsString::from_vec(m.payload.clone()))
        .stdin(std::process::Stdio::null());
    if pattern::matches(&cfg.destination, &m.destination) {
        cmd.env("REMAPHORE_DESTMATCH", &cfg.destination);
    }
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot make a pipe for the script: {e}");
            return (-1, Vec::new());
        }
    };
    let w2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot make a pipe for the script: {e}");
            return (-1, Vec::new());
        }
    };
    cmd.stdout(writer).stderr(w2);
    let child = match fspl_queue::exec::spawn(&mut cmd, None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot run {:?}: {e}", script[0]);
            return (-1, Vec::new());
        }
    };
    // Our ends of the pipe go, so that reading ends when the script's do.
    drop(cmd);
    let kill = child.handle();
    obs.spawned(&kill);
    let task = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut reader = reader;
        let _ = reader.read_to_end(&mut out);
        let status = child.wait();
        (out, status)
    });
    let joined = match deadline {
        Some(d) => match tokio::time::timeout_at(d, task).await {
            Ok(j) => j,
            Err(_) => {
                // The wait's timeout: kill it, as remaphore does (only
                // the script itself, never a process that reused its pid).
                kill.kill();
                tracing::warn!("timeout: killed the script (pid {})", kill.pid());
                return (-1, Vec::new());
            }
        },
        None => task.await,
    };
    let (out, status) = match joined {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("script runner failed: {e}");
            return (-1, Vec::new());
        }
    };
    let code = match status {
        Ok(fspl_queue::exec::Outcome::Success) => 0,
        Ok(fspl_queue::exec::Outcome::Exited(s)) => s.code().unwrap_or(-1),
        Ok(_) | Err(_) => -1,
    };
    tracing::info!("script exited {code}");
    (code, out)
}

async fn reply(
    client: &Client,
    cfg: &Config,
    request: &Message,
    payload: &[u8],
) -> Result<(), RemaphoreError> {
    let key = cfg
        .signer(None, None)
        .ok_or_else(|| RemaphoreError::NoSigner {
            key: cfg.default_identity.to_base58(),
            verb: "reply".into(),
        })?;
    let uuid = wire::uuid_from(b"");
    let (raw, _) = Outgoing {
        destination: "",
        time_nanos: now_nanos(),
        uuid: &uuid,
        verb: "reply",
        request_reply: false,
        payload,
    }
    .encode(key)?;
    client
        .publish(cfg.reply_subject(&request.hash), raw.into())
        .await
        .map_err(|e| rt("publish reply", e))?;
    client.flush().await.map_err(|e| rt("flush", e))?;
    Ok(())
}

/// Handle one accepted message: the script (or `NO_DATA`), the reply,
/// and what the observer makes of the script's outcome.
pub(crate) async fn handle(
    client: &Client,
    cfg: &Config,
    args: &WaitArgs,
    m: &Message,
    deadline: Option<Instant>,
    obs: &mut dyn Observer,
) -> Result<(), RemaphoreError> {
    tracing::info!(
        "message from {} verb {:?} to {:?}",
        m.sender.to_base58(),
        m.verb,
        m.destination
    );
    obs.started(m);
    let t0 = Instant::now();
    let (code, out) = if args.script.is_empty() {
        (0, b"NO_DATA".to_vec())
    } else {
        let deadline = match (deadline, args.script_timeout) {
            (d, None) => d,
            (None, Some(t)) => Some(t0 + t),
            (Some(d), Some(t)) => Some(d.min(t0 + t)),
        };
        let (code, out) = run_script(cfg, &args.script, m, deadline, obs).await;
        let mut r = format!("{code},").into_bytes();
        r.extend_from_slice(&out);
        (code, r)
    };
    if m.request_reply
        && let Err(e) = reply(client, cfg, m, &out).await
    {
        tracing::error!("reply: {e}");
    }
    obs.finished(m, code, t0.elapsed())
        .map_err(RemaphoreError::Command)
}

/// Wait for `f`, until `deadline` if any: None when it passed first.
pub(crate) async fn until<F: Future>(deadline: Option<Instant>, f: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

/// Resolves when the client has lost its connection (checked now, then
/// twice a second), if `watch`; else never.
pub(crate) async fn lost(client: &Client, watch: bool) {
    if !watch {
        return std::future::pending().await;
    }
    loop {
        if client.connection_state() != State::Connected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) fn servers_text(cfg: &Config) -> String {
    cfg.servers.join(",")
}

/// remaphore's receive mode. Returns whether a message matched.
pub async fn wait(common: &Common, args: &WaitArgs) -> Result<bool, RemaphoreError> {
    wait_observed(common, args, &mut Quiet, std::future::pending::<()>()).await
}

/// [`wait`], telling `obs` what happens, until `stop` resolves (checked
/// while waiting for a message, never during a script) or the observer
/// ends it. Returns whether a message matched.
pub async fn wait_observed(
    common: &Common,
    args: &WaitArgs,
    obs: &mut dyn Observer,
    stop: impl Future<Output = ()>,
) -> Result<bool, RemaphoreError> {
    if let Some(s) = &args.script.first()
        && s.is_empty()
    {
        return Err(RemaphoreError::Usage("empty script name".into()));
    }
    let deadline = args
        .timeout
        .filter(|t| !t.is_zero())
        .map(|t| Instant::now() + t);
    tokio::pin!(stop);
    let client = tokio::select! {
        c = common.connect() => c?,
        _ = &mut stop => return Ok(false),
    };
    if common.durable {
        return durable::wait(common, args, &client, deadline, obs, stop).await;
    }
    let cfg = &common.config;
    let subject = common.subject();
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| rt("subscribe", e))?;
    client.flush().await.map_err(|e| rt("flush", e))?;
    tracing::info!("ready: waiting on {subject}");
    obs.ready(&subject);
    let watch = obs.fail_on_disconnect();
    let mut seen = Seen::new();
    let skew = cfg.allow_skew.as_nanos() as i64;
    let mut received = false;
    loop {
        let next = tokio::select! {
            n = until(deadline, sub.next()) => match n {
                Some(n) => n,
                None => break,
            },
            _ = &mut stop => break,
            _ = lost(&client, watch) => {
                return Err(RemaphoreError::Disconnected(servers_text(cfg)));
            }
        };
        let Some(nm) = next else {
            return Err(RemaphoreError::Runtime("the subscription ended".into()));
        };
        let m = match check(cfg, &nm.payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("dropped message: {e}");
                obs.dropped(&e);
                continue;
            }
        };
        let now = now_nanos();
        if (now - m.time_nanos).abs() > skew {
            tracing::warn!("dropped message: {}", Reject::Time);
            obs.dropped(&Reject::Time);
            continue;
        }
        if !seen.insert(m.hash, m.time_nanos.saturating_add(skew), now) {
            tracing::warn!("dropped message: {}", Reject::Replay);
            obs.dropped(&Reject::Replay);
            continue;
        }
        if !args.matches(cfg, &m) {
            tracing::debug!("message does not match the filters");
            continue;
        }
        received = true;
        handle(&client, cfg, args, &m, deadline, obs).await?;
        if args.once {
            break;
        }
    }
    Ok(received)
}

pub(crate) fn handled_default(common: &Common, stream: &str, consumer: &str) -> PathBuf {
    if let Some(p) = &common.state {
        return p.clone();
    }
    if let Some(p) = &common.config.durable_state {
        return p.clone();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("fspl/nats")
        .join(format!("{stream}.{consumer}.handled"))
}

//! `fspl nats`: a remaphore-compatible remote semaphore, and the
//! `remaphore` compatibility entry point (argv[0]). The protocol lives in
//! fspl_nats::remaphore; this file parses arguments, runs the mode on the
//! NATS runtime and turns the outcome into remaphore's exit statuses:
//! 0 a message was sent or received, 1 nothing before the timeout, 2 usage
//! or configuration, 3 run time.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use fspl_nats::remaphore::config::{self, Config};
use fspl_nats::remaphore::node::{
    self, Common, DestFilter, EXIT_NOTHING, EXIT_RECEIVED, EXIT_USAGE, RemaphoreError, SendArgs,
    WaitArgs,
};
use fspl_nats::remaphore::{durable, duration};
use fspl_trust::PublicKey;

pub const AFTER_HELP: &str = "Exit statuses: 0 a message was sent or received; 1 nothing \
received before the timeout; 2 usage or configuration error; 3 run-time error \
(no known receivers, NATS unreachable). Called as `remaphore` (a symlink), fspl \
takes remaphore's own flags. See docs/nats.md.\n\nExamples:\n  \
fspl nats wait -o -t 1h -v deploy -- ./deploy.sh\n  \
fspl nats send -D 'com.example.*' -v deploy release-42";

#[derive(Args, Debug)]
pub struct NatsArgs {
    /// The remaphore configuration file
    #[arg(
        short = 'c',
        long = "config",
        value_name = "CONFIG",
        global = true,
        default_value = config::DEFAULT_PATH
    )]
    config: PathBuf,
    /// The subject suffix to communicate on (default "all": <subject>.all)
    #[arg(short = 'S', long = "subject", value_name = "SUBJECT", global = true)]
    subject: Option<String>,
    #[command(subcommand)]
    cmd: NatsCmd,
}

#[derive(Args, Debug)]
struct Durable {
    /// Through a JetStream stream and a durable consumer per destination:
    /// a waiter that was offline gets what was sent meanwhile, once
    #[arg(long)]
    durable: bool,
}

#[derive(Args, Debug)]
struct Outgoing {
    /// The destination pattern (default "**": every node)
    #[arg(short = 'D', long = "destination", value_name = "PATTERN")]
    destination: Option<String>,
    /// The identity to sign with (a base58 public key of [ Identities ];
    /// default: default_identity)
    #[arg(short = 'p', long = "pubkey", value_name = "PUBKEY")]
    pubkey: Option<String>,
    /// The uuid (up to 12 bytes are sent as they are, longer ones hashed;
    /// default: random)
    #[arg(short = 'u', long = "uuid", value_name = "UUID")]
    uuid: Option<String>,
    /// The verb (sent lowercase; default "ping")
    #[arg(short = 'v', long = "verb", value_name = "VERB")]
    verb: Option<String>,
    #[command(flatten)]
    durable: Durable,
    /// The message (words are joined with spaces)
    #[arg(
        value_name = "MESSAGE",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    message: Vec<OsString>,
}

#[derive(Subcommand, Debug)]
enum NatsCmd {
    /// Send a message and return (remaphore -s)
    #[command(after_help = "Examples:\n  \
        fspl nats send -D 'com.example.*' -v deploy release-42\n  \
        fspl nats send --durable -D com.example.b backup-done")]
    Send(Outgoing),
    /// Send a request and print each expected responder's reply (remaphore -r)
    ///
    /// One line per reply, `destination,exit-code,output`; a reply with
    /// several lines is framed by `--> SEP` and `--< SEP` lines. Returns
    /// when every [ Peers ] destination matching the pattern has replied,
    /// or at the timeout.
    #[command(after_help = "Examples:\n  \
        fspl nats request -D 'com.example.**' -t 10s status")]
    Request {
        #[command(flatten)]
        out: Outgoing,
        /// How long to wait for the replies (Go duration: 10s, 1m30s;
        /// default: until all have replied)
        #[arg(short = 't', long = "timeout", value_name = "DURATION", value_parser = go_duration)]
        timeout: Option<Duration>,
    },
    /// Wait for messages and run SCRIPT... VERB PAYLOAD for each (remaphore
    /// without -s/-r)
    ///
    /// The script gets exactly REMAPHORE_SENDER, REMAPHORE_VERB,
    /// REMAPHORE_TIME, REMAPHORE_UUID, REMAPHORE_MSG and (when the
    /// destination matched) REMAPHORE_DESTMATCH in its environment; its
    /// exit code and output are the reply to a request.
    #[command(after_help = "Examples:\n  \
        fspl nats wait -o -t 1h -v deploy -- ./deploy.sh\n  \
        fspl nats wait --durable -- ./on-message.sh")]
    Wait {
        /// Match the message's destination pattern against this string
        /// exactly, instead of matching our destination against it
        #[arg(
            short = 'D',
            long = "destination",
            value_name = "DEST",
            conflicts_with = "any_destination"
        )]
        destination: Option<String>,
        /// Do not match the destination
        #[arg(short = 'd', long = "any-destination")]
        any_destination: bool,
        /// Exit after one matching message
        #[arg(short = 'o', long = "once")]
        once: bool,
        /// Only messages from this sender (base58 public key)
        #[arg(short = 'p', long = "pubkey", value_name = "PUBKEY")]
        pubkey: Option<String>,
        /// Give up after this long (Go duration); exit 1 if nothing came
        #[arg(short = 't', long = "timeout", value_name = "DURATION", value_parser = go_duration)]
        timeout: Option<Duration>,
        /// Only the message with this uuid (implies -o)
        #[arg(short = 'u', long = "uuid", value_name = "UUID")]
        uuid: Option<String>,
        /// Only these verbs (comma-separated)
        #[arg(short = 'v', long = "verb", value_name = "VERB[,VERB...]")]
        verb: Option<String>,
        #[command(flatten)]
        durable: Durable,
        /// Durable mode: the file recording the messages already handled
        /// (default: durable_state: in the config, else
        /// $XDG_STATE_HOME/fspl/nats/STREAM.CONSUMER.handled)
        #[arg(long = "state", value_name = "FILE", requires = "durable")]
        state: Option<PathBuf>,
        /// The script and its arguments
        #[arg(
            value_name = "SCRIPT",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        script: Vec<OsString>,
    },
    /// Print an example configuration with a fresh key pair (remaphore -C)
    #[command(after_help = "Examples:\n  fspl nats example-config > /etc/remaphore/remaphore.conf")]
    ExampleConfig,
    /// What the durable streams and consumers hold: messages, and per
    /// destination the messages not yet delivered and not yet acknowledged
    #[command(
        alias = "status",
        after_help = "Examples:\n  fspl nats -c /etc/remaphore/remaphore.conf streams"
    )]
    Streams,
}

fn go_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| e.to_string())
}

fn fail(e: RemaphoreError) -> ExitCode {
    let code = e.exit_code();
    crate::output::print_error(&anyhow::Error::new(e));
    ExitCode::from(code)
}

fn pubkey(s: Option<&str>) -> Result<Option<PublicKey>, RemaphoreError> {
    s.map(|s| {
        PublicKey::parse(s).map_err(|e| {
            RemaphoreError::Usage(format!("given public key {s:?} does not parse: {e}"))
        })
    })
    .transpose()
}

fn join(words: &[OsString]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            v.push(b' ');
        }
        v.extend_from_slice(w.as_bytes());
    }
    v
}

fn load(path: &Path) -> Result<Config, RemaphoreError> {
    Ok(Config::load(path)?)
}

/// What a mode, parsed, asks for.
enum Mode {
    Send(SendArgs),
    Request(SendArgs, Option<Duration>),
    Wait(WaitArgs, Option<PathBuf>),
    Streams,
}

fn execute(config: &Path, subject: Option<String>, durable: bool, mode: Mode) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let state = match &mode {
        Mode::Wait(_, s) => s.clone(),
        _ => None,
    };
    let common = Common {
        config,
        subject,
        durable,
        state,
    };
    let fut = async {
        match &mode {
            Mode::Send(a) => node::send(&common, a).await.map(|()| true),
            Mode::Request(a, t) => {
                node::request(&common, a, *t, |bytes| {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(bytes);
                    let _ = out.flush();
                })
                .await
            }
            Mode::Wait(a, _) => node::wait(&common, a).await,
            Mode::Streams => {
                let client = fspl_nats::ConnectConfig {
                    servers: common.config.servers.clone(),
                    creds: common.config.credentials.clone(),
                    ..Default::default()
                }
                .connect()
                .await?;
                let lines = durable::streams(&client).await?;
                let mut out = std::io::stdout().lock();
                if lines.is_empty() {
                    let _ = writeln!(out, "no remaphore streams");
                }
                for l in lines {
                    let _ = writeln!(out, "{l}");
                }
                Ok(true)
            }
        }
    };
    let result = match fspl_nats::runtime::block_on(fut) {
        Ok(r) => r,
        Err(e) => Err(RemaphoreError::Nats(e)),
    };
    match result {
        Ok(true) => ExitCode::from(EXIT_RECEIVED),
        Ok(false) => ExitCode::from(EXIT_NOTHING),
        Err(e) => fail(e),
    }
}

fn send_args(o: &Outgoing) -> Result<SendArgs, RemaphoreError> {
    Ok(SendArgs {
        destination: o.destination.clone(),
        sender: pubkey(o.pubkey.as_deref())?,
        uuid: o.uuid.clone().unwrap_or_default().into_bytes(),
        verb: o
            .verb
            .as_deref()
            .and_then(first_verb)
            .unwrap_or_else(|| "ping".into()),
        payload: join(&o.message),
    })
}

/// remaphore sends the first of `-v a,b`.
fn first_verb(v: &str) -> Option<String> {
    verbs(v).into_iter().next()
}

fn verbs(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn run(a: NatsArgs) -> ExitCode {
    let mode = match a.cmd {
        NatsCmd::ExampleConfig => {
            let _ = crate::output::write_stdout(config::example_config().as_bytes());
            return ExitCode::SUCCESS;
        }
        NatsCmd::Streams => Ok((Mode::Streams, false)),
        NatsCmd::Send(o) => send_args(&o).map(|s| (Mode::Send(s), o.durable.durable)),
        NatsCmd::Request { out, timeout } => {
            send_args(&out).map(|s| (Mode::Request(s, timeout), out.durable.durable))
        }
        NatsCmd::Wait {
            destination,
            any_destination,
            once,
            pubkey: p,
            timeout,
            uuid,
            verb,
            durable,
            state,
            script,
        } => pubkey(p.as_deref()).map(|sender| {
            let dest = match (destination, any_destination) {
                (_, true) => DestFilter::Any,
                (Some(d), false) if !d.is_empty() => DestFilter::Exact(d),
                _ => DestFilter::Local,
            };
            let uuid = uuid.filter(|u| !u.is_empty()).map(String::into_bytes);
            (
                Mode::Wait(
                    WaitArgs {
                        dest,
                        once: once || uuid.is_some(),
                        sender,
                        uuid,
                        verbs: verb.as_deref().map(verbs).unwrap_or_default(),
                        timeout,
                        script_timeout: None,
                        script,
                    },
                    state,
                ),
                durable.durable,
            )
        }),
    };
    match mode {
        Ok((mode, durable)) => execute(&a.config, a.subject, durable, mode),
        Err(e) => fail(e),
    }
}

// ---------------------------------------------------------------------------
// argv[0] = remaphore: remaphore's own flags, parsed as Go's flag package
// does (-flag, --flag, -flag=value, -flag value; flags end at the first
// non-flag argument or "--").

const REMAPHORE_USAGE: &str = "Usage of remaphore:
  -C\tPrint example config file
  -D string\n    \tSpecify destination to match
  -S string\n    \tSubject to communicate on
  -c string\n    \tPath to config file (default \"/etc/remaphore/remaphore.conf\")
  -d\tDo not match for destination
  -o\tExit after one matching message received
  -p string\n    \tUse public key for sending or match for it
  -r\tRequest reply to message
  -s\tSend and forget
  -t duration\n    \tTimeout for operation
  -u string\n    \tUUID to send/filter for
  -v string\n    \t-v <verb>[,verb...]: Verb to send or match filter for
";

#[derive(Default)]
struct GoFlags {
    gen_config: bool,
    config: Option<String>,
    subject: Option<String>,
    verb: String,
    once: bool,
    uuid: String,
    timeout: Option<Duration>,
    request: bool,
    send: bool,
    pubkey: String,
    no_dest: bool,
    dest: String,
    durable: bool,
    rest: Vec<OsString>,
}

fn usage_exit(msg: &str) -> ExitCode {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{msg}");
    let _ = e.write_all(REMAPHORE_USAGE.as_bytes());
    ExitCode::from(EXIT_USAGE)
}

fn remaphore_error(code: u8, msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "remaphore: {msg}");
    ExitCode::from(code)
}

fn parse_go_flags(args: Vec<OsString>) -> Result<GoFlags, ExitCode> {
    let mut f = GoFlags::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let bytes = arg.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            f.rest.push(arg);
            f.rest.extend(it);
            break;
        }
        let mut name = &bytes[1..];
        if name[0] == b'-' {
            name = &name[1..];
            if name.is_empty() {
                // "--": the end of the flags.
                f.rest.extend(it);
                break;
            }
        }
        if name.is_empty() || name[0] == b'-' || name[0] == b'=' {
            return Err(usage_exit(&format!(
                "bad flag syntax: {}",
                String::from_utf8_lossy(bytes)
            )));
        }
        let (name, value): (String, Option<OsString>) = match name.iter().position(|&b| b == b'=') {
            Some(p) => (
                String::from_utf8_lossy(&name[..p]).into_owned(),
                Some(OsString::from(std::ffi::OsStr::from_bytes(&name[p + 1..]))),
            ),
            None => (String::from_utf8_lossy(name).into_owned(), None),
        };
        let boolean = |v: &Option<OsString>| -> Result<bool, ExitCode> {
            match v.as_ref().map(|v| v.to_string_lossy().into_owned()) {
                None => Ok(true),
                Some(s) => match s.as_str() {
                    "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
                    "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
                    _ => Err(usage_exit(&format!(
                        "invalid boolean value {s:?} for -{name}: parse error"
                    ))),
                },
            }
        };
        match name.as_str() {
            "h" | "help" => {
                let _ = std::io::stderr().write_all(REMAPHORE_USAGE.as_bytes());
                return Err(ExitCode::SUCCESS);
            }
            "C" => f.gen_config = boolean(&value)?,
            "o" => f.once = boolean(&value)?,
            "r" => f.request = boolean(&value)?,
            "s" => f.send = boolean(&value)?,
            "d" => f.no_dest = boolean(&value)?,
            // fspl extension (remaphore has no such flag).
            "durable" => f.durable = boolean(&value)?,
            "c" | "S" | "v" | "u" | "t" | "p" | "D" => {
                let v = match value {
                    Some(v) => v,
                    None => match it.next() {
                        Some(v) => v,
                        None => {
                            return Err(usage_exit(&format!("flag needs an argument: -{name}")));
                        }
                    },
                };
                let s = v.to_string_lossy().into_owned();
                match name.as_str() {
                    "c" => f.config = Some(s),
                    "S" => f.subject = Some(s),
                    "v" => f.verb = s,
                    "u" => f.uuid = s,
                    "p" => f.pubkey = s,
                    "D" => f.dest = s,
                    _ => match duration::parse(&s) {
                        Ok(d) => f.timeout = Some(d),
                        Err(_) => {
                            return Err(usage_exit(&format!(
                                "invalid value {s:?} for flag -t: parse error"
                            )));
                        }
                    },
                }
            }
            _ => {
                return Err(usage_exit(&format!(
                    "flag provided but not defined: -{name}"
                )));
            }
        }
    }
    Ok(f)
}

/// When fspl runs as `remaphore` (a symlink or copy of that name), behave
/// as remaphore: its flags, its default config path, its exit statuses.
pub fn remaphore_main(args: Vec<OsString>) -> ExitCode {
    let f = match parse_go_flags(args) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if f.gen_config {
        let _ = crate::output::write_stdout(config::example_config().as_bytes());
        return ExitCode::SUCCESS;
    }
    if f.request && f.send {
        return remaphore_error(EXIT_USAGE, "-r and -s are mutually exclusive");
    }
    if f.no_dest && !f.dest.is_empty() {
        return remaphore_error(EXIT_USAGE, "-d and -D are mutually exclusive");
    }
    let sender = if f.pubkey.is_empty() {
        None
    } else {
        match PublicKey::parse(&f.pubkey) {
            Ok(k) => Some(k),
            Err(e) => {
                return remaphore_error(
                    EXIT_USAGE,
                    &format!("ERROR: Given public key does not parse: {e}"),
                );
            }
        }
    };
    let config = PathBuf::from(f.config.as_deref().unwrap_or(config::DEFAULT_PATH));
    let vs = verbs(&f.verb);
    let mode = if f.send || f.request {
        let args = SendArgs {
            destination: Some(f.dest).filter(|d| !d.is_empty()),
            sender,
            uuid: f.uuid.into_bytes(),
            verb: vs.first().cloned().unwrap_or_else(|| "ping".into()),
            payload: join(&f.rest),
        };
        if f.send {
            Mode::Send(args)
        } else {
            Mode::Request(args, f.timeout)
        }
    } else {
        let uuid = Some(f.uuid)
            .filter(|u| !u.is_empty())
            .map(String::into_bytes);
        Mode::Wait(
            WaitArgs {
                dest: if f.no_dest {
                    DestFilter::Any
                } else if f.dest.is_empty() {
                    DestFilter::Local
                } else {
                    DestFilter::Exact(f.dest)
                },
                once: f.once || uuid.is_some(),
                sender,
                uuid,
                verbs: vs,
                timeout: f.timeout,
                script_timeout: None,
                script: f.rest,
            },
            None,
        )
    };
    execute(&config, f.subject, f.durable, mode)
}

//! What travels over the control socket: one JSON request line from the
//! client, one JSON answer line from the daemon, each carrying the
//! protocol version of its sender.
//!
//! ```text
//! > {"version":2,"cmd":"status"}
//! < {"version":2,"result":"status","jobs":[{"name":"backups","type":"process","queue":"/srv/q","state":"idle","description":"idle",...}]}
//! > {"version":2,"cmd":"clear","job":"backups"}
//! < {"version":2,"result":"cleared","job":"backups"}
//! ```
//!
//! Version 1 is the protocol of fspl before versions were exchanged: the
//! same lines without `version` (and without `description`). A request
//! without `version` is a version-1 request, an answer without it a
//! version-1 answer; both sides read the other's lines either way.
//!
//! The daemon answers every version with its own. A client reads a newer
//! daemon's answer tolerantly: fields it does not know are ignored, a job
//! state it does not know is kept by name ([`JobState::Unknown`]) and shown
//! with the `description` the daemon sent, an answer of a kind it does not
//! know is [`Response::Unknown`].

use serde::{Deserialize, Serialize};

/// The control protocol version this build speaks.
///
/// - 1: no `version` field (fspl before issue 13);
/// - 2: `version` in every request and answer; each job's status has
///   `description` (its state in words), and `to`/`from` for the transport
///   kinds; the `busy` state.
pub const PROTOCOL_VERSION: u32 = 2;

/// The version of a line without a `version` field.
fn version_1() -> u32 {
    1
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Every job's status.
    Status,
    /// End job `job`'s error state (or cut its backoff short).
    Clear { job: String },
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status {
        jobs: Vec<JobStatus>,
    },
    Cleared {
        job: String,
    },
    Error {
        message: String,
    },
    /// An answer of a kind this build does not know (from a newer
    /// daemon): its `result`. Never sent.
    #[serde(skip)]
    Unknown {
        result: String,
    },
}

/// A line on the wire: the sender's protocol version and the message.
#[derive(Serialize, Deserialize)]
struct Line<T> {
    #[serde(default = "version_1")]
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// An answer and the protocol version of the daemon that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub version: u32,
    pub response: Response,
}

/// A job's state, as `fspl status` shows it.
///
/// On the wire the `state` field names it, beside its own fields:
/// `{"state":"retrying","message":"...","failures":2,"retry_at":"..."}`.
/// A state this build does not know (a newer daemon's) is read as
/// [`JobState::Unknown`], never as an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum JobState {
    /// Nothing to do; waiting for jobs to arrive.
    Idle,
    /// A command is running.
    Running { seq: u64, since: String },
    /// A transfer (a push or a pull) is under way: `doing` says what, in
    /// words ("pushing to dir:/srv/x").
    Busy { doing: String, since: String },
    /// Sequence order: the next seq is missing; `detail` says what is here.
    Waiting { seq: u64, detail: String },
    /// Failed; retried at `retry_at` (backing off).
    Retrying {
        message: String,
        failures: u32,
        retry_at: String,
    },
    /// Stopped after repeated failures, or a failure retrying cannot mend,
    /// until `fspl status --clear` or a reload.
    Error { message: String },
    /// Another process (e.g. a manual queue-process) holds the queue lock.
    Locked { pid: Option<u32> },
    /// `enabled = false` in the configuration.
    Disabled,
    /// A state this build does not know (sent by a newer daemon), by its
    /// name; [`JobStatus::describe`] shows the daemon's description of it.
    /// Also what a known state with fields this build cannot read becomes.
    #[serde(untagged)]
    Unknown { state: String },
}

impl JobState {
    /// The state in words.
    pub fn describe(&self) -> String {
        match self {
            JobState::Idle => "idle".into(),
            JobState::Running { seq, since } => format!("running seq {seq} since {since}"),
            JobState::Busy { doing, since } => format!("{doing} since {since}"),
            // The detail (from queue-status) usually says it all already:
            // "waiting for seq 5; seqs 6–9 present".
            JobState::Waiting { detail, .. } if detail.starts_with("waiting for seq") => {
                detail.clone()
            }
            JobState::Waiting { seq, detail } if detail.is_empty() => {
                format!("waiting for seq {seq}")
            }
            JobState::Waiting { seq, detail } => format!("waiting for seq {seq} ({detail})"),
            JobState::Retrying {
                message,
                failures,
                retry_at,
            } => format!("failed {failures}x, retrying at {retry_at}: {message}"),
            JobState::Error { message } => format!("error: {message}"),
            JobState::Locked { pid: Some(p) } => format!("locked by pid {p}"),
            JobState::Locked { pid: None } => "locked by another process".into(),
            JobState::Disabled => "disabled".into(),
            JobState::Unknown { state } => state.clone(),
        }
    }

    /// The name of the state, as on the wire (`idle`, `retrying`...).
    pub fn name(&self) -> &str {
        match self {
            JobState::Idle => "idle",
            JobState::Running { .. } => "running",
            JobState::Busy { .. } => "busy",
            JobState::Waiting { .. } => "waiting",
            JobState::Retrying { .. } => "retrying",
            JobState::Error { .. } => "error",
            JobState::Locked { .. } => "locked",
            JobState::Disabled => "disabled",
            JobState::Unknown { state } => state,
        }
    }
}

/// One row of `fspl status`.
///
/// The counters count, since the daemon started (a reload keeps them, as
/// it keeps the metrics): `jobs_succeeded` and `jobs_failed` every attempt
/// to run a job (a job retried three times is three), by its result, those
/// that failed before their command could start included; for `push` and
/// `pull` jobs, `jobs_succeeded` counts the jobs sent or taken.
/// `jobs_refused` counts the jobs refused without running (moved to
/// `rejected/`), or refused by the destination (push) or by the queue
/// (pull). `runs` counts every run (one `queue-process` pass, one push or
/// pull, or an attempt that could not start one), `runs_failed` those that
/// failed. `consecutive_failures` is the number of failed runs in a row,
/// since the last run that did not fail (or a `--clear`, a reload, the
/// watched directory coming back).
///
/// Every field but `name` and `type` has a default, so that an answer
/// without it (from an older or a newer daemon) is read all the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    /// The job's kind: `process`, `push`, `pull`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The queue the job works on: the queue it runs (process), the outbox
    /// it sends (push), the queue it fills (pull).
    #[serde(default)]
    pub queue: String,
    /// push: where jobs are sent (a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// pull: where jobs are taken from (a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(flatten)]
    pub state: JobState,
    /// The state in words, as the daemon describes it (protocol 2): what a
    /// client shows for a state it does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub next_seq: Option<u64>,
    #[serde(default)]
    pub queued: Option<u64>,
    #[serde(default)]
    pub last_success: Option<String>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub jobs_succeeded: u64,
    #[serde(default)]
    pub jobs_failed: u64,
    #[serde(default)]
    pub jobs_refused: u64,
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub runs_failed: u64,
    /// push and pull: bytes sent or taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Lag and health (issue 17): fields a daemon without them leaves out.
    #[serde(flatten)]
    pub lag: Lag,
}

impl JobStatus {
    /// A job that has not run yet: idle, every count zero, nothing known.
    /// Kinds fill in what they know besides (`to`, `from`, `bytes`...).
    pub fn idle(name: &str, kind: &str, queue: String) -> JobStatus {
        JobStatus {
            name: name.to_string(),
            kind: kind.to_string(),
            queue,
            to: None,
            from: None,
            state: JobState::Idle,
            description: None,
            next_seq: None,
            queued: None,
            last_success: None,
            consecutive_failures: 0,
            jobs_succeeded: 0,
            jobs_failed: 0,
            jobs_refused: 0,
            runs: 0,
            runs_failed: 0,
            bytes: None,
            lag: Lag::default(),
        }
    }
}

/// How far behind a job is, as of the answer (`fspl status`, the
/// metrics). Every field is left out when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// Seconds since the oldest job waiting was made (its ctime): in the
    /// queue at or after nextseq (process), in the outbox (push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_queued_age_s: Option<u64>,
    /// The oldest waiting job's ctime, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_queued_ctime: Option<i64>,
    /// Bytes of the job files waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_queued: Option<u64>,
    /// Seconds since the last success (a job run, a job sent or taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_success_s: Option<u64>,
    /// The last success, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_unix: Option<i64>,
    /// Bytes per second moved: push, pull and sync, of the last run that
    /// moved any; s3-upload, of the uploads completed since the last
    /// measure over the time uploads were under way meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<u64>,
    /// The job's `stale_after`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_s: Option<u64>,
    /// No success for `stale_after` while jobs wait.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// When the job's task started (the reference for `stale` before any
    /// success), seconds since the epoch. Not sent.
    #[serde(skip)]
    pub started_unix: Option<i64>,
}

impl Lag {
    /// Fill the ages and `stale` as of `now` (seconds since the epoch),
    /// given the jobs waiting.
    pub fn refresh(&mut self, now: i64, queued: Option<u64>) {
        let age = |t: i64| u64::try_from(now.saturating_sub(t)).unwrap_or(0);
        let waiting = queued.unwrap_or(0) > 0;
        self.oldest_queued_age_s = self.oldest_queued_ctime.filter(|_| waiting).map(age);
        self.since_success_s = self.last_success_unix.map(age);
        self.stale = match self.stale_after_s {
            Some(limit) if waiting => self
                .last_success_unix
                .or(self.started_unix)
                .is_some_and(|t| age(t) >= limit),
            _ => false,
        };
    }
}

impl JobStatus {
    /// The state in words: this build's words for a state it knows, the
    /// daemon's description (else the state's name) for one it does not.
    pub fn describe(&self) -> String {
        match &self.state {
            JobState::Unknown { state } => self
                .description
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| state.clone()),
            s => s.describe(),
        }
    }

    /// Whether the job is in its error state (also when a newer daemon
    /// sent it with fields this build cannot read).
    pub fn is_error(&self) -> bool {
        self.state.name() == "error"
    }
}

/// A request line (with the newline) as this build sends it.
pub fn encode_request(req: &Request) -> String {
    encode(req)
}

/// An answer line (with the newline) as this build sends it.
pub fn encode_response(resp: &Response) -> String {
    encode(resp)
}

fn encode<T: Serialize>(body: &T) -> String {
    let line = Line {
        version: PROTOCOL_VERSION,
        body,
    };
    // Our own types always serialize (string keys, no maps with other
    // keys); an answer that cannot is an error answer instead.
    let mut s = serde_json::to_string(&line).unwrap_or_else(|e| {
        format!(
            "{{\"version\":{PROTOCOL_VERSION},\"result\":\"error\",\"message\":{}}}",
            serde_json::Value::String(format!("cannot encode the answer: {e}"))
        )
    });
    s.push('\n');
    s
}

/// Read a request line (for the daemon): the client's version and its
/// request, or the message of the error answer to send back.
pub fn decode_request(line: &[u8]) -> Result<(u32, Request), String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
    let version = version_of(&v);
    let cmd = v
        .get("cmd")
        .map(|c| c.as_str().map(str::to_string).ok_or(c.to_string()));
    match cmd {
        Some(Ok(c)) if !["status", "clear"].contains(&c.as_str()) => {
            let newer = if version > PROTOCOL_VERSION {
                format!(
                    " (the client speaks version {version}: restart the daemon with the same fspl as the client)"
                )
            } else {
                String::new()
            };
            Err(format!(
                "bad request: unknown request {c:?}; this daemon speaks control protocol version {PROTOCOL_VERSION}{newer}"
            ))
        }
        _ => serde_json::from_value::<Line<Request>>(v)
            .map(|l| (version, l.body))
            .map_err(|e| format!("bad request: {e}")),
    }
}

/// Read an answer line (for the client): the daemon's version and its
/// answer. Unknown fields are ignored, unknown job states kept by name;
/// an answer of an unknown kind is [`Response::Unknown`].
pub fn decode_response(line: &[u8]) -> Result<Reply, String> {
    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let version = version_of(&v);
    let result = match v.get("result") {
        Some(serde_json::Value::String(r)) => r.clone(),
        Some(other) => return Err(format!("`result` is not a string: {other}")),
        None => return Err("no `result` in the answer".into()),
    };
    let response = if ["status", "cleared", "error"].contains(&result.as_str()) {
        serde_json::from_value::<Line<Response>>(v)
            .map_err(|e| e.to_string())?
            .body
    } else {
        Response::Unknown { result }
    };
    Ok(Reply { version, response })
}

/// The `version` of a line; 1 when it has none (or a nonsensical one).
fn version_of(v: &serde_json::Value) -> u32 {
    match v.get("version") {
        None => 1,
        Some(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: JobState) -> JobStatus {
        JobStatus {
            name: "a".into(),
            kind: "process".into(),
            queue: "/q".into(),
            to: None,
            from: None,
            description: Some(state.describe()),
            state,
            next_seq: Some(3),
            queued: Some(0),
            last_success: None,
            consecutive_failures: 0,
            jobs_succeeded: 2,
            jobs_failed: 0,
            jobs_refused: 0,
            runs: 2,
            runs_failed: 0,
            bytes: None,
            lag: Default::default(),
        }
    }

    #[test]
    fn requests_and_answers_carry_the_version_and_round_trip() {
        let line = encode_request(&Request::Clear { job: "b".into() });
        assert_eq!(line, "{\"version\":2,\"cmd\":\"clear\",\"job\":\"b\"}\n");
        assert_eq!(
            decode_request(line.trim_end().as_bytes()),
            Ok((2, Request::Clear { job: "b".into() }))
        );
        for state in [
            JobState::Idle,
            JobState::Running {
                seq: 4,
                since: "t".into(),
            },
            JobState::Busy {
                doing: "pushing to dir:/x".into(),
                since: "t".into(),
            },
            JobState::Retrying {
                message: "m".into(),
                failures: 2,
                retry_at: "t".into(),
            },
            JobState::Locked { pid: None },
            JobState::Disabled,
        ] {
            let resp = Response::Status {
                jobs: vec![status(state)],
            };
            let line = encode_response(&resp);
            assert!(
                line.starts_with("{\"version\":2,\"result\":\"status\""),
                "{line}"
            );
            let r = decode_response(line.as_bytes()).unwrap();
            assert_eq!(r.version, PROTOCOL_VERSION);
            assert_eq!(r.response, resp);
        }
    }

    /// The lines of fspl before versions (protocol 1) are read as
    /// version 1, both ways.
    #[test]
    fn version_1_lines_are_read() {
        assert_eq!(
            decode_request(b"{\"cmd\":\"status\"}"),
            Ok((1, Request::Status))
        );
        let old = br#"{"result":"status","jobs":[{"name":"a","type":"process","queue":"/q","state":"waiting","seq":5,"detail":"waiting for seq 5; seqs 6-9 present","next_seq":5,"queued":4,"last_success":null,"consecutive_failures":0,"jobs_succeeded":4,"jobs_failed":0,"jobs_refused":0,"runs":3,"runs_failed":0}]}"#;
        let r = decode_response(old).unwrap();
        assert_eq!(r.version, 1);
        let Response::Status { jobs } = r.response else {
            panic!("{:?}", r.response)
        };
        assert_eq!(jobs[0].describe(), "waiting for seq 5; seqs 6-9 present");
        assert_eq!(jobs[0].description, None);
    }

    /// A daemon of protocol 1 reads this build's requests: its request
    /// type (a copy of it here) ignores the `version` field.
    #[test]
    fn a_version_1_daemon_reads_our_requests() {
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(tag = "cmd", rename_all = "kebab-case")]
        enum V1Request {
            Status,
            Clear { job: String },
        }
        let r: V1Request =
            serde_json::from_str(encode_request(&Request::Status).trim_end()).unwrap();
        assert_eq!(r, V1Request::Status);
        let r: V1Request =
            serde_json::from_str(encode_request(&Request::Clear { job: "x".into() }).trim_end())
                .unwrap();
        assert_eq!(r, V1Request::Clear { job: "x".into() });
    }

    /// The answer of a daemon newer than this build, with a state, fields
    /// and a kind of job this build does not know: read all the same; the
    /// unknown state is shown with the daemon's description (or its name),
    /// the unknown fields are ignored, the known ones are read.
    #[test]
    fn a_newer_daemons_answer_is_read_tolerantly() {
        let future = br#"{"version":7,"result":"status","sparkles":true,"jobs":[
            {"name":"m","type":"mirror","queue":"/srv/m","state":"paused-by-operator","until":"2031-01-01T00:00:00Z","operator":{"name":"alice"},"description":"paused by alice until 2031-01-01","next_seq":null,"queued":null,"last_success":"2030-12-31T23:00:00Z","consecutive_failures":0,"jobs_succeeded":12,"jobs_failed":1,"jobs_refused":0,"runs":5,"runs_failed":1,"bytes":4096,"bytes_per_second":10.5},
            {"name":"n","type":"nats","state":"draining"},
            {"name":"p","type":"process","queue":"/q","state":"running","seq":"seven","since":"t","description":"running the seventh"},
            {"name":"q","type":"process","queue":"/q","state":"retrying","message":"m","failures":2,"retry_at":"t","retry_reason":"transient","next_seq":3}
        ]}"#;
        let r = decode_response(future).unwrap();
        assert_eq!(r.version, 7);
        let Response::Status { jobs } = r.response else {
            panic!("{:?}", r.response)
        };
        assert_eq!(jobs.len(), 4);
        let m = &jobs[0];
        assert_eq!(
            m.state,
            JobState::Unknown {
                state: "paused-by-operator".into()
            }
        );
        assert_eq!(m.describe(), "paused by alice until 2031-01-01");
        assert_eq!((m.kind.as_str(), m.queue.as_str()), ("mirror", "/srv/m"));
        assert_eq!(
            (m.jobs_succeeded, m.jobs_failed, m.runs, m.bytes),
            (12, 1, 5, Some(4096))
        );
        assert!(!m.is_error());
        let odd: JobStatus =
            serde_json::from_str(r#"{"name":"e","type":"push","state":"error","reason":7}"#)
                .unwrap();
        assert!(odd.is_error(), "{odd:?}");
        // No description, no other field: the state's name, defaults.
        let n = &jobs[1];
        assert_eq!(n.describe(), "draining");
        assert_eq!((n.queue.as_str(), n.runs, n.next_seq), ("", 0, None));
        // A known state whose fields changed: kept by name, described by
        // the daemon.
        assert_eq!(jobs[2].state.name(), "running");
        assert_eq!(jobs[2].describe(), "running the seventh");
        // A known state with a field more: read as usual.
        assert_eq!(
            jobs[3].state,
            JobState::Retrying {
                message: "m".into(),
                failures: 2,
                retry_at: "t".into()
            }
        );
        assert_eq!(jobs[3].next_seq, Some(3));
        // Shown again (fspl status --json), the unknown state keeps its
        // name.
        let again = serde_json::to_value(m).unwrap();
        assert_eq!(again["state"], "paused-by-operator");
        assert_eq!(again["description"], "paused by alice until 2031-01-01");
    }

    #[test]
    fn an_answer_of_an_unknown_kind_is_not_an_error() {
        let r = decode_response(br#"{"version":9,"result":"subscribed","topic":"x"}"#).unwrap();
        assert_eq!(
            r.response,
            Response::Unknown {
                result: "subscribed".into()
            }
        );
        assert!(decode_response(b"{\"version\":2}").is_err());
        assert!(decode_response(b"not json").is_err());
    }

    #[test]
    fn an_unknown_request_names_the_daemons_version() {
        let e = decode_request(br#"{"version":9,"cmd":"subscribe","topic":"x"}"#).unwrap_err();
        assert!(
            e.starts_with("bad request: unknown request \"subscribe\"; this daemon speaks control protocol version 2")
                && e.contains("the client speaks version 9"),
            "{e}"
        );
        let e = decode_request(b"{\"cmd\":\"sta").unwrap_err();
        assert!(e.starts_with("bad request: "), "{e}");
        let e = decode_request(b"{\"cmd\":\"clear\"}").unwrap_err();
        assert!(e.contains("job"), "{e}");
    }
}

//! The environment a job runs with, which `*-info` also prints.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::header::{CmdType, Ctime, JobHeader};

/// Where a job file lives, for the `FSPL_JOB_*` variables of queue commands.
#[derive(Clone, Copy, Debug)]
pub struct JobLocation<'a> {
    /// The `-q` argument exactly as given.
    pub queuedir: &'a OsStr,
    /// The file name inside `jobs/`.
    pub filename: &'a OsStr,
}

/// One `NAME=value` pair, raw bytes.
pub type EnvVar = (Vec<u8>, Vec<u8>);

/// The prefix under which job env entries are captured and set again.
pub const SET_PREFIX: &str = "FSPL_SET_";

impl JobHeader {
    /// The variables given to the job's command, in the documented order.
    pub fn environment(&self, location: Option<JobLocation<'_>>) -> Vec<EnvVar> {
        let mut env: Vec<EnvVar> = Vec::with_capacity(10);
        let mut put = |k: &str, v: Vec<u8>| env.push((k.as_bytes().to_vec(), v));
        put("FSPL_SEQ", self.seq.to_string().into_bytes());
        put("FSPL_CTIME_SECS", self.ctime.secs.to_string().into_bytes());
        put(
            "FSPL_CTIME_NANOS",
            self.ctime.nanos.to_string().into_bytes(),
        );
        put(
            "FSPL_CTIME_RFC3339_UTC",
            rfc3339_utc(self.ctime).into_bytes(),
        );
        put(
            "FSPL_CTIME_RFC3339_LOCAL",
            rfc3339_local(self.ctime).into_bytes(),
        );
        if let Some(loc) = location {
            put("FSPL_JOB_FILENAME", loc.filename.as_bytes().to_vec());
            put("FSPL_JOB_QUEUEDIR", loc.queuedir.as_bytes().to_vec());
            let mut full = loc.queuedir.as_bytes().to_vec();
            full.extend_from_slice(b"/jobs/");
            full.extend_from_slice(loc.filename.as_bytes());
            put("FSPL_JOB_FULLPATH", full);
        }
        if let CmdType::Command(cmd) = &self.cmd_type {
            for (i, p) in cmd.params.iter().enumerate() {
                env.push((format!("FSPL_PARAM_{}", i + 1).into_bytes(), p.clone()));
            }
            for (k, v) in &cmd.env {
                let mut name = SET_PREFIX.as_bytes().to_vec();
                name.extend_from_slice(k);
                env.push((name, v.clone()));
            }
        }
        env
    }
}

/// `NAME=value\n` for every variable: what `stdin-info` and `queue-info` print.
pub fn format_env(env: &[EnvVar]) -> Vec<u8> {
    let mut out = Vec::with_capacity(env.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (k, v) in env {
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn timestamp(ctime: Ctime) -> Option<Timestamp> {
    Timestamp::from_second(ctime.secs).ok()
}

/// `2022-05-17T01:29:32Z` (whole seconds). Times outside the range a calendar
/// can show (years beyond ±9999) print as the raw seconds value.
pub fn rfc3339_utc(ctime: Ctime) -> String {
    match timestamp(ctime) {
        Some(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => ctime.secs.to_string(),
    }
}

/// `2022-05-16T20:29:32-05:00` in the local time zone (`TZ`, else
/// /etc/localtime), whole seconds, numeric offset.
pub fn rfc3339_local(ctime: Ctime) -> String {
    match timestamp(ctime) {
        Some(ts) => {
            let z = ts.to_zoned(local_zone());
            // RFC 3339 offsets are whole minutes. Historic offsets with
            // seconds (local mean time, before about 1900) are rounded to
            // the nearest minute, as Filespooler does (+00:19:32 -> +00:20).
            let off = z.offset().seconds();
            let mins = (off.unsigned_abs() + 30) / 60;
            let sign = if off < 0 { '-' } else { '+' };
            format!(
                "{}{sign}{:02}:{:02}",
                z.strftime("%Y-%m-%dT%H:%M:%S"),
                mins / 60,
                mins % 60
            )
        }
        None => ctime.secs.to_string(),
    }
}

fn local_zone() -> TimeZone {
    // jiff caches the system zone after the first lookup.
    TimeZone::try_system().unwrap_or(TimeZone::UTC)
}

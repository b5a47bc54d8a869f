//! Running the same scenario with our binary and with the reference, in two
//! sandboxes with the same relative layout, and comparing what can be
//! observed: exit status, stdout, files in the queue, `nextseq`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::helper::*;

/// Which implementation runs a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ours,
    Ref,
}

pub const BOTH: [Impl; 2] = [Impl::Ours, Impl::Ref];

impl Impl {
    pub fn bin(self) -> PathBuf {
        match self {
            Impl::Ours => fspl_bin(),
            Impl::Ref => reference_bin(),
        }
    }

    /// The other implementation.
    pub fn other(self) -> Impl {
        match self {
            Impl::Ours => Impl::Ref,
            Impl::Ref => Impl::Ours,
        }
    }

    /// A command for this implementation, TZ=UTC, no inherited FSPL_SET_*
    /// variables (they would end up in prepared jobs).
    pub fn cmd<I, S>(self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = match self {
            Impl::Ours => fspl(),
            Impl::Ref => reference(),
        };
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FSPL_") {
                c.env_remove(k);
            }
        }
        c.args(args);
        c
    }
}

/// One implementation's sandbox. Commands run inside it, so relative queue
/// paths (and thus FSPL_JOB_QUEUEDIR / FSPL_JOB_FULLPATH) are the same for
/// both implementations.
pub struct Side {
    pub imp: Impl,
    pub sb: Sandbox,
}

impl Side {
    pub fn new(imp: Impl) -> Side {
        Side {
            imp,
            sb: Sandbox::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.sb.dir.path()
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.sb.path(rel)
    }

    /// A command of this side's implementation, run in the sandbox.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd_of(self.imp, args)
    }

    /// A command of either implementation, run in this sandbox.
    pub fn cmd_of<I, S>(&self, imp: Impl, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = imp.cmd(args);
        c.current_dir(self.dir());
        c
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.cmd(args))
    }

    pub fn run_in<I, S>(&self, args: I, stdin: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_with_input(self.cmd(args), stdin)
    }

    /// A shell command line run in the sandbox with `$FSPL` naming this
    /// side's binary (and `$OURS`, `$REF` both binaries).
    pub fn sh(&self, script: &str) -> Output {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(script)
            .current_dir(self.dir())
            .env("FSPL", self.imp.bin())
            .env("OURS", fspl_bin())
            .env("REF", reference_bin())
            .env("TZ", "UTC")
            .stdin(Stdio::null());
        c.output().expect("run sh")
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(p, bytes).unwrap();
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// `queue-init -q rel` with this side's binary.
    pub fn init(&self, rel: &str) {
        ok(self.run(["queue-init", "-q", rel]));
    }

    /// Store a job under a chosen name (so both sides hold the same names).
    pub fn put_job(&self, queue: &str, name: &str, bytes: &[u8]) {
        self.write(&format!("{queue}/jobs/{name}"), bytes);
    }

    /// `queue-write` with the given implementation.
    pub fn queue_write(&self, imp: Impl, queue: &str, bytes: &[u8]) {
        ok(run_with_input(
            self.cmd_of(imp, ["queue-write", "-q", queue]),
            bytes,
        ));
    }

    pub fn nextseq(&self, queue: &str) -> Option<String> {
        std::fs::read_to_string(self.path(format!("{queue}/nextseq"))).ok()
    }

    /// Everything observable about a queue directory.
    pub fn state(&self, queue: &str) -> QueueState {
        let mut files = BTreeMap::new();
        let jobs = self.path(format!("{queue}/jobs"));
        if let Ok(rd) = std::fs::read_dir(&jobs) {
            for e in rd {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let content = if name.ends_with(".out") {
                    Some(String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned())
                } else {
                    None
                };
                files.insert(name, content);
            }
        }
        QueueState {
            nextseq: self.nextseq(queue),
            files,
        }
    }
}

/// A queue's `nextseq` and the files in `jobs/` (with the contents of
/// `.out` files; job files are only named, since nothing rewrites them).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct QueueState {
    pub nextseq: Option<String>,
    pub files: BTreeMap<String, Option<String>>,
}

impl QueueState {
    pub fn job_names(&self) -> Vec<&str> {
        self.files
            .keys()
            .filter(|n| n.starts_with("fspl-") && n.ends_with(".fspl"))
            .map(|s| s.as_str())
            .collect()
    }
}

/// Exit code and stdout of one command, for comparisons.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Seen {
    pub code: Option<i32>,
    pub stdout: String,
}

pub fn seen(o: &Output) -> Seen {
    Seen {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
    }
}

/// Run `scenario` on a fresh side for each implementation (after the same
/// `setup`) and assert both give the same result; returns our result.
#[track_caller]
pub fn same<T: PartialEq + std::fmt::Debug>(
    setup: impl Fn(&Side),
    scenario: impl Fn(&Side) -> T,
) -> T {
    let ours = Side::new(Impl::Ours);
    let theirs = Side::new(Impl::Ref);
    setup(&ours);
    setup(&theirs);
    let a = scenario(&ours);
    let b = scenario(&theirs);
    assert_eq!(a, b, "ours (left) and the reference (right) differ");
    a
}

/// Make a job with the given implementation: `prepare` with a sequence file
/// holding `seq`, the given extra arguments, `FSPL_SET_*` variables and
/// payload on stdin (`-i -` is added when `stdin` is Some).
pub fn make_job(
    imp: Impl,
    seq: u64,
    args: &[&[u8]],
    env: &[(&str, &[u8])],
    stdin: Option<&[u8]>,
) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new();
    let seqfile = sb.path("seq");
    std::fs::write(&seqfile, format!("{seq}\n")).unwrap();
    let mut c = imp.cmd(["prepare", "-s"]);
    c.arg(&seqfile);
    if stdin.is_some() {
        c.args(["-i", "-"]);
    }
    if !args.is_empty() {
        c.arg("--");
        c.args(args.iter().map(|a| OsStr::from_bytes(a)));
    }
    for (k, v) in env {
        c.env(format!("FSPL_SET_{k}"), OsStr::from_bytes(v));
    }
    let out = run_with_input(c, stdin.unwrap_or(b""));
    let bytes = ok(out);
    assert_eq!(
        std::fs::read_to_string(&seqfile).unwrap().trim(),
        (seq + 1).to_string(),
        "{imp:?} prepare did not advance the sequence file"
    );
    bytes
}

/// A NOP (`kind` = "prepare-nop") or Fail ("prepare-fail") job.
pub fn make_special(imp: Impl, kind: &str, seq: u64) -> Vec<u8> {
    let sb = Sandbox::new();
    let seqfile = sb.path("seq");
    std::fs::write(&seqfile, format!("{seq}\n")).unwrap();
    let mut c = imp.cmd([kind, "-s"]);
    c.arg(&seqfile);
    ok(run(c))
}

/// A fixed, valid job file name for job `n` (both sides use the same names).
pub fn job_name(n: u64) -> String {
    format!("fspl-00000000-0000-4000-8000-{n:012}.fspl")
}

// ---- job file bytes ----

/// Length of the MessagePack integer starting at `b[0]`.
fn mp_int_len(b: &[u8]) -> usize {
    match b[0] {
        0x00..=0x7f | 0xe0..=0xff => 1,
        0xcc | 0xd0 => 2,
        0xcd | 0xd1 => 3,
        0xce | 0xd2 => 5,
        0xcf | 0xd3 => 9,
        x => panic!("not a MessagePack integer: {x:#04x}"),
    }
}

/// Metadata length stored in a job file's prefix.
pub fn meta_len(job: &[u8]) -> usize {
    u64::from_be_bytes(job[14..22].try_into().unwrap()) as usize
}

/// Header length (prefix + metadata): where the payload starts.
pub fn header_len(job: &[u8]) -> usize {
    30 + meta_len(job)
}

/// The job file with its `ctime` replaced by `[0, 0]`, and the metadata
/// length and both CRCs recomputed, so that files prepared at different
/// moments can be compared byte for byte.
pub fn without_ctime(job: &[u8]) -> Vec<u8> {
    with_ctime(job, 0, 0)
}

/// MessagePack encoding of an integer, most compact form.
fn mp_int(v: i64) -> Vec<u8> {
    match v {
        0..=127 => vec![v as u8],
        -32..=-1 => vec![v as i8 as u8],
        128..=255 => vec![0xcc, v as u8],
        256..=65535 => [&[0xcd][..], &(v as u16).to_be_bytes()].concat(),
        65536..=0xffff_ffff => [&[0xce][..], &(v as u32).to_be_bytes()].concat(),
        0x1_0000_0000.. => [&[0xcf][..], &(v as u64).to_be_bytes()].concat(),
        -128..=-33 => vec![0xd0, v as i8 as u8],
        -32768..=-129 => [&[0xd1][..], &(v as i16).to_be_bytes()].concat(),
        -2_147_483_648..=-32769 => [&[0xd2][..], &(v as i32).to_be_bytes()].concat(),
        _ => [&[0xd3][..], &v.to_be_bytes()].concat(),
    }
}

/// The job file with its `ctime` set to `[secs, nanos]` (length and CRCs
/// recomputed).
pub fn with_ctime(job: &[u8], secs: i64, nanos: u32) -> Vec<u8> {
    assert_eq!(&job[..12], b"*FILESPOOLER");
    let n = meta_len(job);
    let meta = &job[30..30 + n];
    let key = b"\xa5ctime";
    let at = meta
        .windows(key.len())
        .position(|w| w == key)
        .expect("ctime key in metadata");
    let arr = at + key.len();
    assert_eq!(meta[arr], 0x92, "ctime is a 2-element array");
    let secs_at = arr + 1;
    let nanos_at = secs_at + mp_int_len(&meta[secs_at..]);
    let end = nanos_at + mp_int_len(&meta[nanos_at..]);
    let mut new_meta = meta[..arr].to_vec();
    new_meta.push(0x92);
    new_meta.extend_from_slice(&mp_int(secs));
    new_meta.extend_from_slice(&mp_int(nanos as i64));
    new_meta.extend_from_slice(&meta[end..]);
    let mut out = job[..14].to_vec();
    out.extend_from_slice(&(new_meta.len() as u64).to_be_bytes());
    out.extend_from_slice(&crc32(&new_meta).to_be_bytes());
    let prefix_crc = crc32(&out[..26]);
    out.extend_from_slice(&prefix_crc.to_be_bytes());
    out.extend_from_slice(&new_meta);
    out.extend_from_slice(&job[30 + n..]);
    out
}

/// The job file with `from` replaced by `to` (once, in the metadata), and
/// the metadata length and both CRCs recomputed: a job no `prepare` can make.
pub fn patch_meta(job: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let n = meta_len(job);
    let meta = &job[30..30 + n];
    let at = meta
        .windows(from.len())
        .position(|w| w == from)
        .expect("bytes to patch in the metadata");
    let mut new_meta = meta[..at].to_vec();
    new_meta.extend_from_slice(to);
    new_meta.extend_from_slice(&meta[at + from.len()..]);
    let mut out = job[..14].to_vec();
    out.extend_from_slice(&(new_meta.len() as u64).to_be_bytes());
    out.extend_from_slice(&crc32(&new_meta).to_be_bytes());
    let prefix_crc = crc32(&out[..26]);
    out.extend_from_slice(&prefix_crc.to_be_bytes());
    out.extend_from_slice(&new_meta);
    out.extend_from_slice(&job[30 + n..]);
    out
}

/// `stdin-info` output without the lines that depend on the creation time.
pub fn info_without_ctime(info: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Values may contain newlines; a CTIME line is one that starts a
    // variable, and the variables after it start with FSPL_ too.
    for line in info.split_inclusive(|&b| b == b'\n') {
        if !line.starts_with(b"FSPL_CTIME_") {
            out.extend_from_slice(line);
        }
    }
    out
}

//! Reliability suite (issue 7): the order of durable writes, checked on a
//! real system call trace (`strace -f -y`) of every command that writes
//! state, by parsing the trace (docs/durability.md says what must hold):
//!
//! - every rename into `jobs/` and every replacement of `nextseq`, a
//!   sequence file or a `.reason` file (the replace protocol, `X.tmp` ->
//!   `X`) is preceded by an fsync/fdatasync of the file after its last
//!   write, and followed by an fsync of the destination directory before
//!   the process exits (`exit_group`: success is reported only then);
//! - every other rename (a refused job to `rejected/`, a bad one to
//!   `corrupt/`) is followed by fsyncs of both directories before exit;
//! - every in-place advance of nextseq (`pwrite64` at offset 0) is
//!   fdatasync'ed before anything else happens: before the next job's
//!   command is spawned (clone/clone3/vfork/fork, or any execve), before
//!   a job file is unlinked, before nextseq is written again, before exit;
//! - a job file is unlinked only after such a synced advance;
//! - transports (push, pull; docs/transports.md): a `syncfs` of the file
//!   system counts as the sync of every file written before it (a batch's
//!   one flush); a job delivered into a folder (`.fspl-tmp-*` renamed to
//!   `fspl-*.fspl`) follows the rules of a rename into `jobs/`; an
//!   outbox's job file linked as it is into another directory (a push on
//!   one file system) must be flushed (its fsync, or a syncfs) before the
//!   link, and the destination fsynced after it; a job
//!   file removed from an outbox or a source (unlinked, or moved to
//!   `sent/`) must first have a copy under its name in another directory,
//!   renamed there and that directory fsynced, and its own directory is
//!   fsynced after the removal, before exit.
//! - every in-place advance of a sender's sequence file (`prepare -s`,
//!   `pwrite64` at offset 0 of the file named `SEQFILE_NAME`) is
//!   fdatasync'ed before the payload goes out (any write to another file,
//!   stdout included), before the file is written again, before exit.
//!
//! A sync counts only if it returned 0. The checker itself is tested first
//! on hand-written traces that lack each sync, so it cannot pass vacuously;
//! and each traced run must contain the events it is about (renames,
//! advances, spawns), so a parsing slip fails instead of passing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use crate::helper::*;
use crate::reliability_common::*;

/// The name of the sender's sequence file in the traced runs (the checker
/// recognises its in-place advances by it).
const SEQFILE_NAME: &str = "seq";

fn is_seqfile(p: &str) -> bool {
    Path::new(p).file_name().is_some_and(|n| n == SEQFILE_NAME)
}

/// The system calls traced (`?`: may not exist on this architecture).
const SYSCALLS: &str = "trace=write,pwrite64,writev,pwritev,pwritev2,copy_file_range,\
sendfile,splice,ftruncate,fallocate,fsync,fdatasync,syncfs,?rename,renameat,renameat2,linkat,\
?clone,clone3,?vfork,?fork,execve,exit_group,?unlink,unlinkat";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// fsync/fdatasync of a file or directory.
    Sync {
        path: String,
        ok: bool,
    },
    /// syncfs: every file of the file system (the tests use one).
    SyncFs {
        ok: bool,
    },
    /// A call that writes through one of these descriptors (every
    /// descriptor named in its arguments, to be safe).
    Write {
        paths: Vec<String>,
        /// `pwrite64(fd<path>, ..., 0)`: an in-place write at offset 0.
        at_zero: Option<String>,
    },
    Rename {
        from: String,
        to: String,
        ok: bool,
        /// A `linkat`: `from` keeps its name.
        link: bool,
    },
    Unlink {
        path: String,
    },
    /// A new process (not a thread) made by fspl.
    Spawn,
    /// execve by any process but fspl's first.
    Exec,
    Exit,
}

#[derive(Clone, Debug)]
struct Event {
    /// Line of the trace where the call started / returned.
    start: usize,
    end: usize,
    kind: Kind,
    text: String,
}

/// Split the arguments of a call at top-level commas (not inside quotes,
/// braces, brackets or `<...>` paths).
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut in_str = false;
    let mut esc = false;
    for c in s.chars() {
        if in_str {
            cur.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                cur.push(c);
            }
            '{' | '[' | '<' | '(' => {
                depth += 1;
                cur.push(c);
            }
            '}' | ']' | '>' | ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Paths of every `N</path>` descriptor in `s` (outside quoted data).
fn fd_paths(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'<' if !in_str
                && i > 0
                && (b[i - 1].is_ascii_digit() || s[..i].ends_with("AT_FDCWD")) =>
            {
                if let Some(len) = s[i + 1..].find('>') {
                    out.push(s[i + 1..i + 1 + len].to_string());
                    i += len + 2;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// `(N, path)` for every `N<path>` descriptor in `s` (outside quoted data).
fn fd_numbers_and_paths(s: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'<' if !in_str && i > 0 && b[i - 1].is_ascii_digit() => {
                let digits = s[..i].bytes().rev().take_while(u8::is_ascii_digit).count();
                let n = s[i - digits..i].parse().ok();
                if let (Some(n), Some(len)) = (n, s[i + 1..].find('>')) {
                    out.push((n, s[i + 1..i + 1 + len].to_string()));
                    i += len + 2;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The string of a quoted argument (escapes `\"` and `\\` undone).
fn unquote(a: &str) -> Option<String> {
    let inner = a.strip_prefix('"')?;
    let inner = inner.strip_suffix("\"...").or(inner.strip_suffix('"'))?;
    Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// Resolve `path` (as passed) against a directory descriptor argument.
fn resolve(dirfd: Option<&str>, path: &str, cwd: &Path) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let base = dirfd
        .and_then(|d| fd_paths(d).into_iter().next())
        .unwrap_or_else(|| cwd.display().to_string());
    format!("{base}/{path}")
}

fn parent(p: &str) -> String {
    Path::new(p)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

/// Split `ARGS) = RET` (strace pads before ` = `) into ARGS and RET.
fn split_ret(tail: &str) -> Option<(&str, &str)> {
    let idx = tail.rfind(" = ")?;
    let args = tail[..idx].trim_end().strip_suffix(')')?;
    Some((args, tail[idx + 3..].trim()))
}

/// Parse an `strace -f -y` trace into fspl's own events (its first process
/// and that process's threads) plus the spawns and execs it caused.
fn parse(trace: &str, cwd: &Path) -> Result<Vec<Event>, String> {
    // pid -> (call name, arguments so far, start line) of unfinished calls.
    let mut pending: HashMap<u32, (String, String, usize)> = HashMap::new();
    let mut root: Option<u32> = None;
    let mut ours: BTreeSet<u32> = BTreeSet::new();
    let mut events = Vec::new();
    for (lineno, line) in trace.lines().enumerate() {
        let line = line.trim_end();
        let Some((pid, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return Err(format!("line {}: no pid: {line}", lineno + 1));
        };
        let rest = rest.trim_start();
        if root.is_none() {
            root = Some(pid);
            ours.insert(pid);
        }
        if rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        // Assemble one complete call: name, args, return value, start line.
        let (name, args, ret, start) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                return Err(format!("line {}: odd resume: {line}", lineno + 1));
            };
            let Some((n0, a0, s0)) = pending.remove(&pid) else {
                return Err(format!("line {}: resume without start: {line}", lineno + 1));
            };
            if n0 != name {
                return Err(format!("line {}: resumed {name}, started {n0}", lineno + 1));
            }
            let Some((a1, ret)) = split_ret(tail) else {
                // e.g. exit_group's "= ?" after a resume, or still unfinished
                if let Some(a1) = tail.strip_suffix(" <unfinished ...>") {
                    pending.insert(pid, (n0, a0 + a1, s0));
                    continue;
                }
                let (a1, ret) = tail.rsplit_once(") ").unwrap_or((tail, ""));
                events.push((n0, a0 + a1, ret.to_string(), s0, lineno, pid));
                continue;
            };
            (n0, a0 + a1, ret.to_string(), s0)
        } else {
            let Some((name, tail)) = rest.split_once('(') else {
                continue;
            };
            if let Some(a) = tail.strip_suffix(" <unfinished ...>") {
                pending.insert(pid, (name.to_string(), a.to_string(), lineno));
                continue;
            }
            match split_ret(tail) {
                Some((a, ret)) => (
                    name.to_string(),
                    a.to_string(),
                    ret.trim().to_string(),
                    lineno,
                ),
                None => {
                    // "exit_group(0) = ?" has the form too; anything else
                    // without " = " is an interrupted call: keep it.
                    let a = tail.rsplit_once(')').map(|x| x.0).unwrap_or(tail);
                    (name.to_string(), a.to_string(), String::new(), lineno)
                }
            }
        };
        events.push((name, args, ret, start, lineno, pid));
    }
    let root = root.ok_or("empty trace")?;

    // Classify, following fspl's threads. `fds`: the last path seen for
    // each descriptor number (a `linkat` of `/proc/self/fd/N` links the
    // file open as N: an unnamed temporary of a batch).
    let mut out = Vec::new();
    let mut fds: HashMap<u32, String> = HashMap::new();
    for (name, args, ret, start, end, pid) in events {
        let ret = ret.trim().to_string();
        for (fd, path) in fd_numbers_and_paths(&args)
            .into_iter()
            .chain(fd_numbers_and_paths(&ret))
        {
            fds.insert(fd, path);
        }
        let ok0 = ret == "0" || ret.starts_with("0 ");
        let text = format!("{pid} {name}({args}) = {ret}");
        if matches!(name.as_str(), "clone" | "clone3" | "vfork" | "fork") && ours.contains(&pid) {
            let child: Option<u32> = ret.split_whitespace().next().and_then(|r| r.parse().ok());
            if args.contains("CLONE_THREAD") {
                if let Some(c) = child {
                    ours.insert(c);
                }
                continue;
            }
            out.push(Event {
                start,
                end,
                kind: Kind::Spawn,
                text,
            });
            continue;
        }
        if name == "execve" {
            if pid != root {
                out.push(Event {
                    start,
                    end,
                    kind: Kind::Exec,
                    text,
                });
            }
            continue;
        }
        if !ours.contains(&pid) {
            continue;
        }
        let a = split_args(&args);
        let kind = match name.as_str() {
            "fsync" | "fdatasync" => {
                let Some(path) = fd_paths(&args).into_iter().next() else {
                    return Err(format!("line {}: sync without a path: {text}", start + 1));
                };
                Kind::Sync { path, ok: ok0 }
            }
            "syncfs" => Kind::SyncFs { ok: ok0 },
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" | "copy_file_range"
            | "sendfile" | "splice" | "ftruncate" | "fallocate" => {
                let paths = fd_paths(&args);
                let at_zero = (name == "pwrite64" && a.last().map(String::as_str) == Some("0"))
                    .then(|| paths.first().cloned())
                    .flatten();
                Kind::Write { paths, at_zero }
            }
            "rename" | "renameat" | "renameat2" => {
                let (from, to) = if name == "rename" {
                    (
                        resolve(None, &unquote(&a[0]).unwrap_or_default(), cwd),
                        resolve(None, &unquote(&a[1]).unwrap_or_default(), cwd),
                    )
                } else {
                    (
                        resolve(Some(&a[0]), &unquote(&a[1]).unwrap_or_default(), cwd),
                        resolve(Some(&a[2]), &unquote(&a[3]).unwrap_or_default(), cwd),
                    )
                };
                Kind::Rename {
                    from,
                    to,
                    ok: ok0,
                    link: false,
                }
            }
            "linkat" => {
                // linkat(AT_FDCWD, "/proc/self/fd/N", DIR, NAME, AT_SYMLINK_FOLLOW),
                // or linkat(N, "", DIR, NAME, AT_EMPTY_PATH): the file open
                // as N gets the name; a link never replaces, like a rename
                // without replacing.
                let src = unquote(&a[1]).unwrap_or_default();
                let from = if let Some(n) = src.strip_prefix("/proc/self/fd/") {
                    n.parse().ok().and_then(|n: u32| fds.get(&n).cloned())
                } else if src.is_empty() {
                    fd_paths(&a[0]).into_iter().next()
                } else {
                    Some(resolve(Some(&a[0]), &src, cwd))
                };
                Kind::Rename {
                    from: from.unwrap_or(src),
                    to: resolve(Some(&a[2]), &unquote(&a[3]).unwrap_or_default(), cwd),
                    ok: ok0,
                    link: true,
                }
            }
            "unlink" => Kind::Unlink {
                path: resolve(None, &unquote(&a[0]).unwrap_or_default(), cwd),
            },
            "unlinkat" => Kind::Unlink {
                path: resolve(Some(&a[0]), &unquote(&a[1]).unwrap_or_default(), cwd),
            },
            "exit_group" if pid == root => Kind::Exit,
            _ => continue,
        };
        out.push(Event {
            start,
            end,
            kind,
            text,
        });
    }
    out.sort_by_key(|e| e.start);
    Ok(out)
}

/// What a trace contained and what was wrong with it.
#[derive(Default, Debug)]
struct Verdict {
    renames_into_jobs: u64,
    replaces: u64,
    other_renames: u64,
    advances: u64,
    seqfile_advances: u64,
    unlinks: u64,
    /// Job files removed from an outbox or source by a transport.
    removals: u64,
    spawns: u64,
    problems: Vec<String>,
}

fn is_job_name(p: &str) -> bool {
    let name = Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("fspl-") && name.ends_with(".fspl")
}

fn in_jobs_dir(p: &str) -> bool {
    Path::new(p)
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "jobs")
}

/// Apply the rules of the module doc to a parsed trace.
fn verify(ev: &[Event]) -> Verdict {
    let mut v = Verdict::default();
    let exit = ev.iter().find(|e| e.kind == Kind::Exit).map(|e| e.start);
    let Some(exit) = exit else {
        v.problems.push("no exit_group in the trace".into());
        return v;
    };
    let synced_between = |path: &str, after: usize, before: usize| {
        ev.iter().any(|e| {
            e.start > after
                && e.end < before
                && matches!(&e.kind, Kind::Sync { path: p, ok: true } if p == path)
        })
    };
    let file_synced_between = |path: &str, after: usize, before: usize| {
        synced_between(path, after, before)
            || ev.iter().any(|e| {
                e.start > after && e.end < before && matches!(&e.kind, Kind::SyncFs { ok: true })
            })
    };
    // A transport removed the job file `path` (event `i`) only after a copy
    // under its name in another directory was renamed there and that
    // directory fsynced; its own directory is fsynced before exit.
    let removal_rule = |v: &mut Verdict, i: usize, path: &str, text: &str| {
        let name = Path::new(path).file_name();
        let copy = ev[..i].iter().rposition(|r| {
            matches!(&r.kind, Kind::Rename { to, ok: true, .. }
                if Path::new(to).file_name() == name && parent(to) != parent(path))
        });
        match copy {
            Some(r) => {
                let Kind::Rename { to, .. } = &ev[r].kind else {
                    unreachable!()
                };
                if !synced_between(&parent(to), ev[r].end, ev[i].start) {
                    v.problems.push(format!(
                        "{text}: removed before the directory of its copy `{}` was synced",
                        ev[r].text
                    ));
                }
            }
            None => v.problems.push(format!(
                "{text}: a job file removed without a durable copy elsewhere"
            )),
        }
        if !synced_between(&parent(path), ev[i].end, exit) {
            v.problems.push(format!(
                "{text}: no fsync of {} after the removal and before exit",
                parent(path)
            ));
        }
    };
    for (i, e) in ev.iter().enumerate() {
        match &e.kind {
            Kind::Rename { from, to, ok, link } => {
                if !ok {
                    continue;
                }
                // An outbox's job file linked as it is into another
                // directory under its name (a push on one file system).
                let linked_job =
                    *link && is_job_name(from) && is_job_name(to) && parent(from) != parent(to);
                // A temporary given its job name: a named one
                // (`.fspl-tmp-*`), or an unnamed one (`O_TMPFILE`, shown
                // by strace as `DIR/#INODE (deleted)`).
                let delivered = linked_job
                    || is_job_name(to)
                        && Path::new(from).file_name().is_some_and(|n| {
                            let n = n.to_string_lossy();
                            n.starts_with(".fspl-tmp-") || n.starts_with('#')
                        });
                let into_jobs = (in_jobs_dir(to) && is_job_name(to)) || delivered;
                if is_job_name(from)
                    && Path::new(to)
                        .parent()
                        .and_then(Path::file_name)
                        .is_some_and(|n| n == "sent")
                {
                    v.removals += 1;
                    removal_rule(&mut v, i, from, &e.text);
                }
                let replace = *from == format!("{to}.tmp");
                if into_jobs {
                    v.renames_into_jobs += 1;
                } else if replace {
                    v.replaces += 1;
                } else {
                    v.other_renames += 1;
                }
                // The file: synced after its last write, before the rename.
                let last_write = ev[..i]
                    .iter()
                    .rev()
                    .find(|w| matches!(&w.kind, Kind::Write { paths, .. } if paths.contains(from)))
                    .map(|w| w.end);
                match last_write {
                    Some(w) if !file_synced_between(from, w, e.start) => {
                        v.problems.push(format!(
                            "{}: renamed without an fsync of {from} after its last write",
                            e.text
                        ));
                    }
                    Some(_) => {}
                    // Written by another process (queue-write): flushed
                    // here before it got its new name all the same.
                    None if linked_job => {
                        let flushed = ev[..i].iter().any(|x| match &x.kind {
                            Kind::SyncFs { ok } => *ok,
                            Kind::Sync { path, ok } => *ok && path == from,
                            _ => false,
                        });
                        if !flushed {
                            v.problems.push(format!(
                                "{}: linked without an fsync of {from} (or a syncfs) before",
                                e.text
                            ));
                        }
                    }
                    None if into_jobs || replace => v.problems.push(format!(
                        "{}: {from} was never written by this process (trace incomplete?)",
                        e.text
                    )),
                    None => {}
                }
                // The directories: synced after the rename, before exit.
                let mut dirs = vec![parent(to)];
                if parent(from) != parent(to) && !*link {
                    dirs.push(parent(from));
                }
                for d in dirs {
                    if !synced_between(&d, e.end, exit) {
                        v.problems.push(format!(
                            "{}: no fsync of the directory {d} after the rename and before exit",
                            e.text
                        ));
                    }
                }
            }
            Kind::Write {
                at_zero: Some(path),
                ..
            } if path.ends_with("/nextseq") => {
                v.advances += 1;
                // The first later event that must wait for the sync.
                let barrier = ev[i + 1..]
                    .iter()
                    .find(|x| match &x.kind {
                        Kind::Spawn | Kind::Exec | Kind::Exit => true,
                        Kind::Unlink { path } => is_job_name(path),
                        Kind::Write { paths, .. } => paths.contains(path),
                        Kind::Sync { path: p, ok: true } => p == path,
                        _ => false,
                    })
                    .cloned();
                match barrier {
                    Some(Event {
                        kind: Kind::Sync { .. },
                        ..
                    }) => {}
                    Some(b) => v
                        .problems
                        .push(format!("{}: not fdatasync'ed before `{}`", e.text, b.text)),
                    None => v.problems.push(format!("{}: never synced", e.text)),
                }
            }
            Kind::Unlink { path }
                if is_job_name(path)
                    && ev[..i].iter().any(|r| {
                        matches!(&r.kind, Kind::Rename { to, ok: true, .. }
                            if Path::new(to).file_name() == Path::new(path).file_name()
                                && parent(to) != parent(path))
                    }) =>
            {
                v.removals += 1;
                removal_rule(&mut v, i, path, &e.text);
            }
            Kind::Unlink { path } if is_job_name(path) && !in_jobs_dir(path) => {
                v.removals += 1;
                removal_rule(&mut v, i, path, &e.text);
            }
            Kind::Write {
                at_zero: Some(path),
                ..
            } if is_seqfile(path) => {
                v.seqfile_advances += 1;
                // The first later event that must wait for the sync: the
                // payload going out (a write to anything else), another
                // write of the file, a new process, exit.
                let barrier = ev[i + 1..]
                    .iter()
                    .find(|x| match &x.kind {
                        Kind::Spawn | Kind::Exec | Kind::Exit => true,
                        Kind::Write { .. } => true,
                        Kind::Sync { path: p, ok: true } => p == path,
                        _ => false,
                    })
                    .cloned();
                match barrier {
                    Some(Event {
                        kind: Kind::Sync { .. },
                        ..
                    }) => {}
                    Some(b) => v
                        .problems
                        .push(format!("{}: not fdatasync'ed before `{}`", e.text, b.text)),
                    None => v.problems.push(format!("{}: never synced", e.text)),
                }
            }
            Kind::Unlink { path } if is_job_name(path) && in_jobs_dir(path) => {
                v.unlinks += 1;
                // The latest advance before it, and its sync, precede it.
                let advance = ev[..i].iter().rposition(|w| {
                    matches!(&w.kind, Kind::Write { at_zero: Some(p), .. } if p.ends_with("/nextseq"))
                });
                match advance {
                    None => v.problems.push(format!(
                        "{}: a job file deleted with no nextseq advance before it",
                        e.text
                    )),
                    Some(a) => {
                        let Kind::Write {
                            at_zero: Some(p), ..
                        } = &ev[a].kind
                        else {
                            unreachable!()
                        };
                        if !synced_between(p, ev[a].end, e.start) {
                            v.problems.push(format!(
                                "{}: deleted before the advance `{}` was synced",
                                e.text, ev[a].text
                            ));
                        }
                    }
                }
            }
            Kind::Spawn => v.spawns += 1,
            _ => {}
        }
    }
    v
}

/// Run `cmd` under strace; its output, the parsed verdict.
fn traced(
    sb: &Sandbox,
    label: &str,
    cmd: Command,
    input: Option<&[u8]>,
) -> (std::process::Output, Verdict) {
    let trace = sb.path(format!("trace-{label}"));
    let mut st = Command::new("strace");
    st.args(["-f", "-y", "-s", "48", "-e", SYSCALLS, "-o"])
        .arg(&trace)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .current_dir(sb.dir.path());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => st.env(k, v),
            None => st.env_remove(k),
        };
    }
    let out = match input {
        Some(i) => run_with_input(st, i),
        None => run(st),
    };
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let verdict = match parse(&text, sb.dir.path()) {
        Ok(ev) => verify(&ev),
        Err(e) => Verdict {
            problems: vec![format!("cannot parse the trace {}: {e}", trace.display())],
            ..Verdict::default()
        },
    };
    (out, verdict)
}

/// The real trace `label`, with every line of a kind of sync removed, must
/// be flagged: the checker reads the real format, not just our examples.
fn mutants_flagged(sb: &Sandbox, label: &str, calls: &[&str], tally: &mut Tally) {
    let text = std::fs::read_to_string(sb.path(format!("trace-{label}"))).unwrap_or_default();
    for call in calls {
        tally.states += 1;
        tally.faults += 1;
        let needle = format!(" {call}(");
        let mutant: String = text
            .lines()
            .filter(|l| !l.contains(&needle))
            .map(|l| format!("{l}\n"))
            .collect();
        if mutant.len() == text.len() {
            tally
                .failures
                .push(format!("trace {label} has no {call} call to remove"));
            continue;
        }
        let flagged =
            parse(&mutant, sb.dir.path()).map_or(true, |ev| !verify(&ev).problems.is_empty());
        if !flagged {
            tally.failures.push(format!(
                "checker self-test: trace {label} without its {call} calls passed"
            ));
        }
    }
}

fn require_strace() {
    let found = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`strace` is not installed; the durability-order test needs it: apt-get install -y strace \
         (scripts/test installs it)"
    );
}

/// The checker must flag each missing sync in hand-written traces.
fn self_test(tally: &mut Tally) {
    let cwd = Path::new("/w");
    let ok_write = "\
1 write(3</w/q/jobs/.fspl-tmp-a>, \"x\", 1) = 1
1 fsync(3</w/q/jobs/.fspl-tmp-a>) = 0
1 rename(\"/w/q/jobs/.fspl-tmp-a\", \"/w/q/jobs/fspl-a.fspl\") = 0
1 fsync(4</w/q/jobs>) = 0
1 exit_group(0) = ?
";
    let ok_process = "\
1 clone3({flags=CLONE_VM|CLONE_VFORK, exit_signal=SIGCHLD}, 88 <unfinished ...>
2 execve(\"/bin/sh\", [\"sh\"], 0x1 /* 1 vars */ <unfinished ...>
1 <... clone3 resumed>) = 2
2 <... execve resumed>) = 0
2 exit_group(0) = ?
1 pwrite64(4</w/q/nextseq>, \"2\\n\", 2, 0) = 2
1 fdatasync(4</w/q/nextseq>) = 0
1 unlink(\"/w/q/jobs/fspl-a.fspl\") = 0
1 clone3({flags=CLONE_VM|CLONE_VFORK, exit_signal=SIGCHLD}, 88) = 3
1 pwrite64(4</w/q/nextseq>, \"3\\n\", 2, 0) = 2
1 fdatasync(4</w/q/nextseq>) = 0
1 exit_group(0) = ?
";
    // A push of two jobs: one syncfs, two renames, the destination's
    // fsync, then the outbox's unlinks and its fsync.
    let ok_push = "\
1 write(5</w/d/jobs/.fspl-tmp-a>, \"x\", 1) = 1
1 write(6</w/d/jobs/.fspl-tmp-b>, \"y\", 1) = 1
1 syncfs(3</w/d/jobs>) = 0
1 renameat2(3</w/d/jobs>, \".fspl-tmp-a\", 3</w/d/jobs>, \"fspl-a.fspl\", RENAME_NOREPLACE) = 0
1 renameat2(3</w/d/jobs>, \".fspl-tmp-b\", 3</w/d/jobs>, \"fspl-b.fspl\", RENAME_NOREPLACE) = 0
1 fsync(3</w/d/jobs>) = 0
1 unlinkat(4</w/o/jobs>, \"fspl-a.fspl\", 0) = 0
1 unlinkat(4</w/o/jobs>, \"fspl-b.fspl\", 0) = 0
1 fsync(4</w/o/jobs>) = 0
1 exit_group(0) = ?
";
    // The same with unnamed temporaries (O_TMPFILE), linked by their
    // /proc/self/fd path, as strace -y shows them.
    let ok_push_unnamed = "\
1 write(7</w/d/jobs/#101>(deleted), \"x\", 1) = 1
1 write(8</w/d/jobs/#102>(deleted), \"y\", 1) = 1
1 syncfs(3</w/d/jobs>) = 0
1 linkat(AT_FDCWD</w>, \"/proc/self/fd/7\", 3</w/d/jobs>, \"fspl-a.fspl\", AT_SYMLINK_FOLLOW) = 0
1 linkat(AT_FDCWD</w>, \"/proc/self/fd/8\", 3</w/d/jobs>, \"fspl-b.fspl\", AT_SYMLINK_FOLLOW) = 0
1 fsync(3</w/d/jobs>) = 0
1 unlinkat(4</w/o/jobs>, \"fspl-a.fspl\", 0) = 0
1 unlinkat(4</w/o/jobs>, \"fspl-b.fspl\", 0) = 0
1 fsync(4</w/o/jobs>) = 0
1 exit_group(0) = ?
";
    // A job file of the outbox (on the same file system) linked into the
    // destination as it is, by its descriptor.
    let ok_push_linked = "\
1 syncfs(3</w/d/jobs>) = 0
1 linkat(9</w/o/jobs/fspl-a.fspl>, \"\", 3</w/d/jobs>, \"fspl-a.fspl\", AT_EMPTY_PATH) = 0
1 fsync(3</w/d/jobs>) = 0
1 unlinkat(4</w/o/jobs>, \"fspl-a.fspl\", 0) = 0
1 fsync(4</w/o/jobs>) = 0
1 exit_group(0) = ?
";
    let ok_prepare = "\
1 write(1<pipe:[77]>, \"*FILESPOOLER\\0\\1\", 60) = 60
1 pwrite64(3</w/seq>, \"8\\n\", 2, 0) = 2
1 fdatasync(3</w/seq>) = 0
1 sendfile(1<pipe:[77]>, 4</w/p>, NULL, 300) = 300
1 exit_group(0) = ?
";
    let cases: Vec<(&str, String, bool)> = vec![
        ("a correct queue-write", ok_write.to_string(), true),
        ("a correct push", ok_push.to_string(), true),
        ("a correct push of unnamed files", ok_push_unnamed.to_string(), true),
        ("a correct push of a linked job file", ok_push_linked.to_string(), true),
        (
            "push: a job file linked without a flush",
            ok_push_linked.replace("1 syncfs(3</w/d/jobs>) = 0\n", ""),
            false,
        ),
        (
            "push: outbox unlinked before the link's directory fsync",
            ok_push_linked.replace("1 fsync(3</w/d/jobs>) = 0\n", ""),
            false,
        ),
        (
            "push: unnamed files linked without the batch's flush",
            ok_push_unnamed.replace("1 syncfs(3</w/d/jobs>) = 0\n", ""),
            false,
        ),
        (
            "push: outbox unlinked before the links' directory fsync",
            ok_push_unnamed.replace("1 fsync(3</w/d/jobs>) = 0\n", ""),
            false,
        ),
        (
            "push: renames without the batch's flush",
            ok_push.replace("1 syncfs(3</w/d/jobs>) = 0\n", ""),
            false,
        ),
        (
            "push: a job written after the flush",
            ok_push.replace(
                "1 renameat2(3</w/d/jobs>, \".fspl-tmp-b",
                "1 write(6</w/d/jobs/.fspl-tmp-b>, \"z\", 1) = 1\n1 renameat2(3</w/d/jobs>, \".fspl-tmp-b",
            ),
            false,
        ),
        ("a correct prepare", ok_prepare.to_string(), true),
        (
            "sequence file advance never synced",
            ok_prepare.replace("1 fdatasync(3</w/seq>) = 0\n", ""),
            false,
        ),
        (
            "payload sent before the sequence file advance is synced",
            ok_prepare.replace(
                "1 fdatasync(3</w/seq>) = 0\n1 sendfile(1<pipe:[77]>, 4</w/p>, NULL, 300) = 300\n",
                "1 sendfile(1<pipe:[77]>, 4</w/p>, NULL, 300) = 300\n1 fdatasync(3</w/seq>) = 0\n",
            ),
            false,
        ),
        (
            "push: outbox unlinked before the destination's fsync",
            ok_push.replace("1 fsync(3</w/d/jobs>) = 0\n", "").replace(
                "1 fsync(4</w/o/jobs>) = 0\n",
                "1 fsync(4</w/o/jobs>) = 0\n1 fsync(3</w/d/jobs>) = 0\n",
            ),
            false,
        ),
        (
            "push: a job unlinked that was never delivered",
            ok_push.replace(
                "1 fsync(4</w/o/jobs>) = 0\n",
                "1 unlinkat(4</w/o/jobs>, \"fspl-c.fspl\", 0) = 0\n1 fsync(4</w/o/jobs>) = 0\n",
            ),
            false,
        ),
        (
            "push: the outbox's removals never synced",
            ok_push.replace("1 fsync(4</w/o/jobs>) = 0\n", ""),
            false,
        ),
        (
            "a failed sequence file sync",
            ok_prepare.replace("fdatasync(3</w/seq>) = 0", "fdatasync(3</w/seq>) = -1 EIO (Input/output error)"),
            false,
        ),
        ("a correct queue-process", ok_process.to_string(), true),
        (
            "rename without fsync of the file",
            ok_write.replace("1 fsync(3</w/q/jobs/.fspl-tmp-a>) = 0\n", ""),
            false,
        ),
        (
            "fsync of the file before its last write",
            ok_write.replace(
                "1 rename(",
                "1 write(3</w/q/jobs/.fspl-tmp-a>, \"y\", 1) = 1\n1 rename(",
            ),
            false,
        ),
        (
            "a failed fsync",
            ok_write.replace("fsync(3</w/q/jobs/.fspl-tmp-a>) = 0", "fsync(3</w/q/jobs/.fspl-tmp-a>) = -1 EIO (Input/output error)"),
            false,
        ),
        (
            "no directory fsync",
            ok_write.replace("1 fsync(4</w/q/jobs>) = 0\n", ""),
            false,
        ),
        (
            "directory fsync after exit",
            ok_write.replace("1 fsync(4</w/q/jobs>) = 0\n1 exit_group(0) = ?\n", "1 exit_group(0) = ?\n1 fsync(4</w/q/jobs>) = 0\n"),
            false,
        ),
        (
            "advance not synced before the next spawn",
            ok_process.replace(
                "1 fdatasync(4</w/q/nextseq>) = 0\n1 unlink(\"/w/q/jobs/fspl-a.fspl\") = 0\n1 clone3({flags=CLONE_VM|CLONE_VFORK, exit_signal=SIGCHLD}, 88) = 3\n",
                "1 clone3({flags=CLONE_VM|CLONE_VFORK, exit_signal=SIGCHLD}, 88) = 3\n1 fdatasync(4</w/q/nextseq>) = 0\n",
            ),
            false,
        ),
        (
            "job deleted before the advance is synced",
            ok_process.replace(
                "1 fdatasync(4</w/q/nextseq>) = 0\n1 unlink(\"/w/q/jobs/fspl-a.fspl\") = 0\n",
                "1 unlink(\"/w/q/jobs/fspl-a.fspl\") = 0\n1 fdatasync(4</w/q/nextseq>) = 0\n",
            ),
            false,
        ),
        (
            "last advance never synced",
            ok_process.replace("1 fdatasync(4</w/q/nextseq>) = 0\n1 exit_group", "1 exit_group"),
            false,
        ),
    ];
    for (label, trace, good) in cases {
        tally.states += 1;
        tally.faults += u64::from(!good);
        let v = parse(&trace, cwd).map(|ev| verify(&ev));
        let passed = v.as_ref().is_ok_and(|v| v.problems.is_empty());
        if passed != good {
            tally.failures.push(format!(
                "checker self-test \"{label}\": expected {}, got {v:?}",
                if good { "no problem" } else { "a problem" }
            ));
        }
        if good {
            let v = v.unwrap();
            if v.renames_into_jobs + v.advances + v.seqfile_advances == 0 {
                tally
                    .failures
                    .push(format!("checker self-test \"{label}\": saw nothing"));
            }
        }
    }
}

/// Minimum counts a traced run must show, so a parse slip cannot pass.
#[derive(Default)]
struct Expect {
    renames_into_jobs: u64,
    replaces: u64,
    other_renames: u64,
    advances: u64,
    seqfile_advances: u64,
    unlinks: u64,
    removals: u64,
    spawns: u64,
}

fn record(
    tally: &mut Tally,
    label: &str,
    out: &std::process::Output,
    v: Verdict,
    want: Expect,
    totals: &mut BTreeMap<&'static str, u64>,
) {
    tally.runs += 1;
    tally.states += v.renames_into_jobs
        + v.replaces
        + v.other_renames
        + v.advances
        + v.seqfile_advances
        + v.unlinks
        + v.removals;
    *totals.entry("renames into jobs/").or_default() += v.renames_into_jobs;
    *totals.entry("replacements").or_default() += v.replaces;
    *totals.entry("other renames").or_default() += v.other_renames;
    *totals.entry("in-place advances").or_default() += v.advances;
    *totals.entry("sequence file advances").or_default() += v.seqfile_advances;
    *totals.entry("job unlinks").or_default() += v.unlinks;
    *totals.entry("transport removals").or_default() += v.removals;
    if !out.status.success() {
        tally.failures.push(format!(
            "{label}: the traced command failed ({}): {}",
            out.status,
            text(&out.stderr).trim()
        ));
    }
    let short = [
        (
            "renames into jobs/",
            v.renames_into_jobs,
            want.renames_into_jobs,
        ),
        ("replacements", v.replaces, want.replaces),
        ("other renames", v.other_renames, want.other_renames),
        ("in-place advances", v.advances, want.advances),
        (
            "sequence file advances",
            v.seqfile_advances,
            want.seqfile_advances,
        ),
        ("job unlinks", v.unlinks, want.unlinks),
        ("transport removals", v.removals, want.removals),
        ("spawns", v.spawns, want.spawns),
    ];
    for (what, got, min) in short {
        if got < min {
            tally.failures.push(format!(
                "{label}: the trace shows {got} {what}, expected at least {min} (parse error?)"
            ));
        }
    }
    for p in v.problems {
        tally.failures.push(format!("{label}: {p}"));
    }
}

#[test]
fn reliability_durability_order_under_strace() {
    require_strace();
    let mut tally = Tally::new("strace-order");
    self_test(&mut tally);
    let mut totals = BTreeMap::new();
    let jobs: u64 = if long_mode() { 40 } else { 12 };

    // queue-init, prepare, queue-write, queue-process, set-next.
    let sb = Sandbox::new();
    let q = sb.path("q");
    let seq = sb.path(SEQFILE_NAME);
    let lab_dir = sb.path("lab");
    std::fs::create_dir(&lab_dir).unwrap();
    let (out, v) = traced(
        &sb,
        "queue-init",
        clean_fspl([OsStr::new("queue-init"), OsStr::new("-q"), q.as_os_str()]),
        None,
    );
    let want = Expect {
        replaces: 1,
        ..Expect::default()
    };
    record(&mut tally, "queue-init", &out, v, want, &mut totals);
    mutants_flagged(&sb, "queue-init", &["fsync"], &mut tally);
    for n in 1..=jobs {
        let p = lab_dir.join(format!("p{n}"));
        let len = [0usize, 300, 5_000, 70_000][(n % 4) as usize];
        std::fs::write(&p, payload(n, 7, len)).unwrap();
        let mut c = clean_fspl([OsStr::new("prepare"), OsStr::new("-s"), seq.as_os_str()]);
        c.arg("-i").arg(&p);
        let (out, v) = traced(&sb, &format!("prepare-{n}"), c, None);
        // The first prepare creates the sequence file (replace protocol);
        // the others advance it in place.
        let want = if n == 1 {
            Expect {
                replaces: 1,
                ..Expect::default()
            }
        } else {
            Expect {
                seqfile_advances: 1,
                ..Expect::default()
            }
        };
        record(
            &mut tally,
            &format!("prepare (seq {n})"),
            &out,
            v,
            want,
            &mut totals,
        );
        let job = out.stdout;
        let (out, v) = traced(
            &sb,
            &format!("write-{n}"),
            clean_fspl([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]),
            Some(&job),
        );
        let want = Expect {
            renames_into_jobs: 1,
            ..Expect::default()
        };
        if n == 1 {
            mutants_flagged(&sb, "write-1", &["fsync"], &mut tally);
            mutants_flagged(&sb, "prepare-1", &["fsync"], &mut tally);
        }
        if n == 2 {
            mutants_flagged(&sb, "prepare-2", &["fdatasync"], &mut tally);
        }
        record(
            &mut tally,
            &format!("queue-write (seq {n})"),
            &out,
            v,
            want,
            &mut totals,
        );
    }
    let mut c = clean_fspl([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
    c.args(["sh", "--", "-c", SCRIPT]).arg(&lab_dir);
    let (out, v) = traced(&sb, "process", c, None);
    let want = Expect {
        advances: jobs,
        unlinks: jobs,
        spawns: jobs,
        ..Expect::default()
    };
    record(&mut tally, "queue-process", &out, v, want, &mut totals);
    mutants_flagged(&sb, "process", &["fdatasync"], &mut tally);
    let log = std::fs::read_to_string(lab_dir.join("log")).unwrap_or_default();
    let expected: String = (1..=jobs).map(|n| format!("{n} ok\n")).collect();
    if log != expected {
        tally
            .failures
            .push(format!("queue-process ran {log:?}, expected {expected:?}"));
    }
    for (label, args) in [
        ("queue-set-next", vec!["queue-set-next", "-q"]),
        ("prepare-set-next", vec!["prepare-set-next", "-s"]),
    ] {
        let mut c = clean_fspl(&args);
        c.arg(if label == "queue-set-next" { &q } else { &seq })
            .arg("3");
        let (out, v) = traced(&sb, label, c, None);
        let want = Expect {
            replaces: 1,
            ..Expect::default()
        };
        record(&mut tally, label, &out, v, want, &mut totals);
    }

    // A refusing queue-process --trust: reason file, move to rejected/.
    let mut lab = Lab::new(true, 3, vec![100, 5_000]);
    lab.send();
    lab.send_hostile(2);
    let (out, v) = traced(&lab.sb, "refuse", lab.process_cmd(), None);
    let want = Expect {
        replaces: 1,
        other_renames: 1,
        advances: 1,
        unlinks: 1,
        spawns: 1,
        ..Expect::default()
    };
    record(
        &mut tally,
        "queue-process --trust (refusing)",
        &out,
        v,
        want,
        &mut totals,
    );
    let mut p = lab.check(&mut tally);
    if lab.nextseq() != Some(2) {
        p.push(format!(
            "nextseq is {:?} after the refusal, expected 2",
            lab.nextseq()
        ));
    }
    tally.problems("queue-process --trust (refusing)", p);

    // queue-check --repair: a bad file moved to corrupt/.
    std::fs::write(lab.q.join("jobs/fspl-bad.fspl"), b"*FILESPOOLER\0garbage").unwrap();
    let mut c = clean_fspl([
        OsStr::new("queue-check"),
        OsStr::new("--repair"),
        OsStr::new("-q"),
    ]);
    c.arg(&lab.q);
    let (mut out, v) = traced(&lab.sb, "repair", c, None);
    // queue-check exits 1 when it found problems (it did, and repaired them).
    if out.status.code() == Some(1) {
        out.status = std::process::ExitStatus::default();
    }
    let want = Expect {
        replaces: 1,
        other_renames: 1,
        ..Expect::default()
    };
    record(
        &mut tally,
        "queue-check --repair",
        &out,
        v,
        want,
        &mut totals,
    );

    eprintln!(
        "strace-order: {}",
        totals
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tally.finish();
}

/// push (into a queue, into a folder with --keep, a single job), pull
/// from the folder, then queue-process of everything: the transport rules
/// of the module doc on real traces.
#[test]
fn reliability_transport_durability_order_under_strace() {
    require_strace();
    let mut tally = Tally::new("strace-order-transport");
    let mut totals = BTreeMap::new();
    let sb = Sandbox::new();
    let make = |name: &str, seqs: std::ops::RangeInclusive<u64>| {
        let ob = sb.path(name);
        ok(run(clean_fspl([
            OsStr::new("queue-init"),
            OsStr::new("-q"),
            ob.as_os_str(),
        ])));
        for n in seqs {
            let p = sb.path(format!("p{n}"));
            std::fs::write(
                &p,
                payload(n, 9, [0usize, 300, 5_000, 70_000][(n % 4) as usize]),
            )
            .unwrap();
            let mut c = clean_fspl(["prepare", "--seq", &n.to_string(), "-i"]);
            c.arg(&p);
            let job = ok(run(c));
            ok(run_with_input(
                clean_fspl([OsStr::new("queue-write"), OsStr::new("-q"), ob.as_os_str()]),
                &job,
            ));
        }
        ob
    };
    let a = make("a", 1..=5);
    let b = make("b", 6..=8);
    let c = make("c", 9..=9);
    let q = sb.path("q");
    ok(run(clean_fspl([
        OsStr::new("queue-init"),
        OsStr::new("-q"),
        q.as_os_str(),
    ])));
    let folder = sb.path("folder");
    std::fs::create_dir(&folder).unwrap();
    let push = |ob: &Path, dest: &Path, keep: bool| {
        let mut c = clean_fspl([OsStr::new("push"), OsStr::new("-q"), ob.as_os_str()]);
        c.arg(dest);
        if keep {
            c.arg("--keep");
        }
        c
    };
    let runs: Vec<(&str, Command, Expect)> = vec![
        (
            "push",
            push(&a, &q, false),
            Expect {
                renames_into_jobs: 5,
                removals: 5,
                ..Expect::default()
            },
        ),
        (
            "push-keep",
            push(&b, &folder, true),
            Expect {
                renames_into_jobs: 3,
                other_renames: 3,
                removals: 3,
                ..Expect::default()
            },
        ),
        (
            "push-one",
            push(&c, &q, false),
            Expect {
                renames_into_jobs: 1,
                removals: 1,
                ..Expect::default()
            },
        ),
        (
            "pull",
            {
                let mut c = clean_fspl([OsStr::new("pull")]);
                c.arg(&folder).arg("-q").arg(&q);
                c
            },
            Expect {
                renames_into_jobs: 3,
                removals: 3,
                ..Expect::default()
            },
        ),
    ];
    for (label, cmd, want) in runs {
        let (out, v) = traced(&sb, label, cmd, None);
        record(&mut tally, label, &out, v, want, &mut totals);
    }
    mutants_flagged(&sb, "push", &["syncfs", "fsync"], &mut tally);
    mutants_flagged(&sb, "push-keep", &["syncfs", "fsync"], &mut tally);
    mutants_flagged(&sb, "push-one", &["fsync"], &mut tally);
    mutants_flagged(&sb, "pull", &["syncfs", "fsync"], &mut tally);
    let lab = sb.path("lab");
    std::fs::create_dir(&lab).unwrap();
    for n in 1..=9 {
        std::fs::copy(sb.path(format!("p{n}")), lab.join(format!("p{n}"))).unwrap();
    }
    let mut c = clean_fspl([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
    c.args(["sh", "--", "-c", SCRIPT]).arg(&lab);
    ok(run(c));
    let log = std::fs::read_to_string(lab.join("log")).unwrap_or_default();
    let expected: String = (1..=9).map(|n| format!("{n} ok\n")).collect();
    if log != expected {
        tally
            .failures
            .push(format!("queue-process ran {log:?}, expected {expected:?}"));
    }
    eprintln!(
        "strace-order-transport: {}",
        totals
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tally.finish();
}

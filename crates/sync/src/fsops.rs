//! Changing the tree safely: every operation starts from the root's
//! directory descriptor and walks down one component at a time with
//! `O_NOFOLLOW`, so that a symbolic link inside the tree (or one a
//! change set created) can never lead a write out of it. Files land
//! atomically: written under a temporary name beside their target,
//! fsynced, renamed over it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::Timespec;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};

use crate::meta::{Meta, parent};

/// Temporary files of an apply start with this (never synced; removed
/// by the next round when a kill left them).
pub const TEMP_PREFIX: &str = ".fspl-sync-tmp.";

/// The tree's root, opened once.
pub struct Root {
    fd: OwnedFd,
    /// The root's file system (`st_dev`): one `syncfs` covers whatever of
    /// the tree lies on it; a directory mounted inside the tree does not.
    dev: u64,
    pub path: PathBuf,
    /// Directories whose entries changed and are not yet synced (by
    /// [`Root::sync_dirs`], before the state that records them is saved).
    dirty: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>>,
    /// While an apply runs ([`Root::cache_dirs`]): the directory walked to
    /// last, by its path, reused for the next path in it (a change set
    /// lists a directory's files together) instead of walking from the
    /// root again. Dropped by anything that removes or renames.
    last_dir: std::sync::Mutex<Option<(Vec<u8>, Arc<Dir>)>>,
    caching: std::sync::atomic::AtomicBool,
    /// Temporaries are named `TEMP_PREFIX` + this + a counter (no random
    /// number drawn per file).
    tag: String,
    temps: std::sync::atomic::AtomicU64,
}

/// A directory of the tree, open.
struct Dir {
    fd: OwnedFd,
    /// Whether it is on the root's file system, once asked.
    on_root: std::sync::OnceLock<bool>,
}

impl Dir {
    fn new(fd: OwnedFd) -> Arc<Dir> {
        Arc::new(Dir {
            fd,
            on_root: std::sync::OnceLock::new(),
        })
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// While alive, [`Root`] reuses the directory it walked to last; see
/// [`Root::cache_dirs`].
pub struct DirCache<'a>(&'a Root);

/// A file written under a temporary name ([`Root::write_temp`]), with the
/// directory it is in, held open until it is put in place.
pub struct Temp {
    dir: Arc<Dir>,
    name: String,
}

impl Temp {
    /// Whether `other` is in the same directory (the same one held open).
    pub fn same_dir(&self, other: &Temp) -> bool {
        Arc::ptr_eq(&self.dir, &other.dir)
    }
}

impl Drop for DirCache<'_> {
    fn drop(&mut self) {
        self.0
            .caching
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.0.forget_dirs();
    }
}

fn os(p: &[u8]) -> &OsStr {
    OsStr::from_bytes(p)
}

fn ts(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

fn name_of(rel: &[u8]) -> &[u8] {
    match parent(rel) {
        Some(p) => &rel[p.len() + 1..],
        None => rel,
    }
}

/// An error about a path of the tree, naming it.
fn at(rel: &[u8], what: &str, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    let why = if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
        format!("{e} (a symbolic link or a file is in the way; symbolic links are never followed)")
    } else {
        e.to_string()
    };
    io::Error::new(
        e.kind(),
        format!("cannot {what} {}: {why}", String::from_utf8_lossy(rel)),
    )
}

/// Files up to this size are written with one `write`; larger ones in
/// pieces this size.
const ONE_WRITE: u64 = 256 * 1024;

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let dev = rustix::fs::fstat(&fd)?.st_dev;
        Ok(Root {
            fd,
            dev,
            path: path.to_path_buf(),
            dirty: Default::default(),
            last_dir: Default::default(),
            caching: Default::default(),
            tag: uuid::Uuid::new_v4().simple().to_string(),
            temps: Default::default(),
        })
    }

    /// Until the guard is dropped, reuse the directory walked to last
    /// for the next path in the same directory (an apply, which alone
    /// changes the tree's directories meanwhile and drops the cache when
    /// it removes or renames anything). A directory someone else renames
    /// meanwhile is still written into where it went, as an open
    /// descriptor would be; never a path outside the tree through a link.
    pub fn cache_dirs(&self) -> DirCache<'_> {
        self.caching
            .store(true, std::sync::atomic::Ordering::Relaxed);
        DirCache(self)
    }

    fn forget_dirs(&self) {
        if let Ok(mut c) = self.last_dir.lock() {
            *c = None;
        }
    }

    /// The directory holding `rel`, walked to without following links;
    /// missing directories are created when `create` (mode 0755, as
    /// their own entries set it later). None when it is missing.
    fn dir_of(&self, rel: &[u8], create: bool) -> io::Result<Option<Arc<Dir>>> {
        let Some(p) = parent(rel) else {
            return Ok(Some(Dir::new(rustix::io::dup(&self.fd)?)));
        };
        let caching = self.caching.load(std::sync::atomic::Ordering::Relaxed);
        if caching
            && let Ok(c) = self.last_dir.lock()
            && let Some((path, fd)) = c.as_ref()
            && path.as_slice() == p
        {
            return Ok(Some(fd.clone()));
        }
        let found = self.walk(rel, p, create)?.map(Dir::new);
        if caching
            && let Some(fd) = &found
            && let Ok(mut c) = self.last_dir.lock()
        {
            *c = Some((p.to_vec(), fd.clone()));
        }
        Ok(found)
    }

    /// [`Root::dir_of`] the long way: from the root, a component at a
    /// time.
    fn walk(&self, rel: &[u8], p: &[u8], create: bool) -> io::Result<Option<OwnedFd>> {
        let mut cur = rustix::io::dup(&self.fd)?;
        let mut walked = 0usize;
        for comp in p.split(|&c| c == b'/') {
            let upto = &p[..walked + comp.len()];
            walked += comp.len() + 1;
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&cur, os(comp), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, os(comp), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(at(rel, "create the directories of", e)),
                    }
                    self.mark_dirty(upto);
                    rustix::fs::openat(&cur, os(comp), flags, Mode::empty())
                        .map_err(|e| at(rel, "open the directory of", e))?
                }
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(at(rel, "open the directory of", e)),
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    /// What is at `rel` now (lstat); None when nothing is, or the
    /// directory it would be in is not there. A special file (FIFO,
    /// socket, device) is reported as an error.
    pub fn lstat(&self, rel: &[u8]) -> io::Result<Option<Meta>> {
        let dir = match self.dir_of(rel, false) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = match rustix::fs::statat(&dir, os(name_of(rel)), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(at(rel, "look at", e)),
        };
        let mtime = st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64;
        let mode = st.st_mode as u32 & 0o7777;
        Ok(Some(match FileType::from_raw_mode(st.st_mode as _) {
            FileType::RegularFile => Meta::File {
                size: st.st_size as u64,
                mtime,
                mode,
            },
            FileType::Directory => Meta::Dir { mode },
            FileType::Symlink => {
                let t = rustix::fs::readlinkat(&dir, os(name_of(rel)), Vec::new())
                    .map_err(|e| at(rel, "read the link", e))?;
                Meta::Link {
                    target: t.into_bytes(),
                    mtime,
                }
            }
            _ => {
                return Err(io::Error::other(format!(
                    "{} is a special file (FIFO, socket or device), which is not synced",
                    String::from_utf8_lossy(rel)
                )));
            }
        }))
    }

    /// A new temporary file beside `rel` (its directory created).
    fn temp(&self, rel: &[u8]) -> io::Result<(Arc<Dir>, String, File)> {
        let dir = self
            .dir_of(rel, true)?
            .ok_or_else(|| at(rel, "create", io::Error::from(io::ErrorKind::NotFound)))?;
        let name = self.temp_name();
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| at(rel, "create a temporary file for", e))?;
        Ok((dir, name, File::from(fd)))
    }

    /// Put a temporary in place of `rel`; what is there is replaced (an
    /// empty directory too; a directory with entries is an error).
    /// A name for a new temporary, unique to this process's root.
    fn temp_name(&self) -> String {
        let n = self
            .temps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{TEMP_PREFIX}{}.{n}", self.tag)
    }

    fn install(&self, dir: &Dir, tmp: &str, rel: &[u8]) -> io::Result<()> {
        let name = os(name_of(rel));
        let r = rustix::fs::renameat(dir, tmp, dir, name);
        let r = match r {
            Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::NOTEMPTY) => {
                // A directory is there: only an empty one is replaced.
                self.forget_dirs();
                rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
                    .and_then(|()| rustix::fs::renameat(dir, tmp, dir, name))
            }
            r => r,
        };
        if let Err(e) = r {
            let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
            return Err(at(rel, "put in place", e));
        }
        self.mark_dirty(rel);
        Ok(())
    }

    fn mark_dirty(&self, rel: &[u8]) {
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(parent(rel).unwrap_or(b"").to_vec());
        }
    }

    /// Make every directory whose entries changed since the last call
    /// durable: one `syncfs` for those on the root's file system (a single
    /// journal commit, where one `fsync` per directory would make one
    /// each), an `fsync` for any on a file system mounted inside the tree.
    pub fn sync_dirs(&self) -> io::Result<()> {
        let dirs = std::mem::take(
            &mut *self
                .dirty
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?,
        );
        let mut ours = false;
        for d in dirs {
            if d.is_empty() {
                ours = true;
                continue;
            }
            // Which file system it is on needs no descriptor; only one on
            // another file system is opened, to be fsynced itself.
            match rustix::fs::statat(&self.fd, os(&d), AtFlags::empty()) {
                Ok(st) if st.st_dev == self.dev => {
                    ours = true;
                    continue;
                }
                Ok(_) => {}
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(at(&d, "look at", e)),
            }
            let fd = match rustix::fs::openat(
                &self.fd,
                os(&d),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(at(&d, "open", e)),
            };
            rustix::fs::fsync(&fd).map_err(|e| at(&d, "sync the directory", e))?;
        }
        if ours {
            self.syncfs()?;
        }
        Ok(())
    }

    /// Whether a directory (and so what is made in it) is on the root's
    /// file system (an error counts as not); asked once per open
    /// directory.
    fn on_root_fs(&self, dir: &Dir) -> bool {
        *dir.on_root
            .get_or_init(|| matches!(rustix::fs::fstat(dir), Ok(st) if st.st_dev == self.dev))
    }

    /// Write a regular file from `src` (exactly `size` bytes), with its
    /// mode and mtime, atomically and durably.
    pub fn write_file(
        &self,
        rel: &[u8],
        src: &mut dyn Read,
        size: u64,
        mode: u32,
        mtime: i64,
    ) -> io::Result<()> {
        let tmp = self.write_temp(rel, src, size, mode, mtime, true)?;
        self.put_in_place(rel, &tmp)
    }

    /// Write the content of `rel` under a temporary name beside it (its
    /// directory created); fsynced when `sync`, else the caller syncs the
    /// file system ([`Root::syncfs`]) before [`Root::put_in_place`].
    pub fn write_temp(
        &self,
        rel: &[u8],
        src: &mut dyn Read,
        size: u64,
        mode: u32,
        mtime: i64,
        sync: bool,
    ) -> io::Result<Temp> {
        let (dir, tmp, mut f) = self.temp(rel)?;
        let result = (|| {
            // Through a buffer as large as the file (at most ONE_WRITE):
            // a small file in one write, a large one in pieces that size
            // (a plain copy loop's are 8 KiB).
            let mut w = io::BufWriter::with_capacity(size.clamp(1, ONE_WRITE) as usize, &mut f);
            let n = io::copy(&mut src.take(size), &mut w).map_err(|e| at(rel, "write", e))?;
            if n != size {
                return Err(at(
                    rel,
                    "write",
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the change set ended early"),
                ));
            }
            w.flush().map_err(|e| at(rel, "write", e))?;
            drop(w);
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| at(rel, "set the mode of", e))?;
            rustix::fs::futimens(
                &f,
                &Timestamps {
                    last_access: ts(mtime),
                    last_modification: ts(mtime),
                },
            )
            .map_err(|e| at(rel, "set the time of", e))?;
            // A temporary on another file system (mounted inside the
            // tree) is not covered by the root's `syncfs`: flush it here.
            if sync || !self.on_root_fs(&dir) {
                f.sync_all().map_err(|e| at(rel, "sync", e))?;
            }
            Ok(())
        })();
        drop(f);
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        Ok(Temp { dir, name: tmp })
    }

    /// Rename the temporary `tmp` (made by [`Root::write_temp`]) over
    /// `rel`, in the directory it was made in (kept open with it: no walk,
    /// and another thread may do this while the caller writes on).
    pub fn put_in_place(&self, rel: &[u8], tmp: &Temp) -> io::Result<()> {
        self.install(&tmp.dir, &tmp.name, rel)
    }

    /// Flush everything written to the tree's file system (one flush for
    /// a whole batch of temporary files, instead of one fsync each).
    pub fn syncfs(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(Into::into)
    }

    /// Make `rel` a symbolic link to `target` (never followed).
    pub fn symlink(&self, rel: &[u8], target: &[u8], mtime: i64) -> io::Result<()> {
        let dir = self
            .dir_of(rel, true)?
            .ok_or_else(|| at(rel, "create", io::Error::from(io::ErrorKind::NotFound)))?;
        let tmp = self.temp_name();
        rustix::fs::symlinkat(os(target), &dir, tmp.as_str())
            .map_err(|e| at(rel, "create the link", e))?;
        let _ = rustix::fs::utimensat(
            &dir,
            tmp.as_str(),
            &Timestamps {
                last_access: ts(mtime),
                last_modification: ts(mtime),
            },
            AtFlags::SYMLINK_NOFOLLOW,
        );
        self.install(&dir, &tmp, rel)
    }

    /// Make `rel` a directory with `mode` (what else is there, when not a
    /// directory, is replaced by the caller's decision: it must be gone).
    pub fn mkdir(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        let dir = self
            .dir_of(rel, true)?
            .ok_or_else(|| at(rel, "create", io::Error::from(io::ErrorKind::NotFound)))?;
        let name = os(name_of(rel));
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & 0o7777)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(at(rel, "create the directory", e)),
        }
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| at(rel, "open the directory", e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| at(rel, "set the mode of", e))?;
        self.mark_dirty(rel);
        Ok(())
    }

    /// Remove `rel`: a file or link, or a directory when empty. False
    /// when a directory still has entries (it stays).
    pub fn remove(&self, rel: &[u8]) -> io::Result<bool> {
        let Some(dir) = self.dir_of(rel, false)? else {
            return Ok(true);
        };
        // It may be a directory walked to before.
        self.forget_dirs();
        let name = os(name_of(rel));
        let r = match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {
                match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
                    Err(rustix::io::Errno::NOTEMPTY) | Err(rustix::io::Errno::EXIST) => {
                        return Ok(false);
                    }
                    r => r,
                }
            }
            r => r,
        };
        match r {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(at(rel, "remove", e)),
        }
        self.mark_dirty(rel);
        Ok(true)
    }

    /// Rename `from` to `to` (both in the tree; `to`'s directory created;
    /// `to` must not exist).
    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let fd = self
            .dir_of(from, false)?
            .ok_or_else(|| at(from, "rename", io::Error::from(io::ErrorKind::NotFound)))?;
        let td = self
            .dir_of(to, true)?
            .ok_or_else(|| at(to, "create", io::Error::from(io::ErrorKind::NotFound)))?;
        self.forget_dirs();
        rustix::fs::renameat(&fd, os(name_of(from)), &td, os(name_of(to)))
            .map_err(|e| at(from, "rename", e))?;
        self.mark_dirty(to);
        self.mark_dirty(from);
        Ok(())
    }

    /// Open a regular file of the tree for reading, without following a
    /// link.
    pub fn open_file(&self, rel: &[u8]) -> io::Result<Option<File>> {
        let Some(dir) = self.dir_of(rel, false)? else {
            return Ok(None);
        };
        match rustix::fs::openat(
            &dir,
            os(name_of(rel)),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(at(rel, "open", e)),
        }
    }

    pub fn fd(&self) -> impl AsFd + '_ {
        self.fd.as_fd()
    }
}

/// The metadata of an open file (as [`Root::lstat`] reads it): size,
/// mtime, mode, and whether it is a regular file.
pub fn fstat_meta(f: &File) -> io::Result<(u64, i64, u32, bool)> {
    let st = rustix::fs::fstat(f)?;
    Ok((
        st.st_size as u64,
        st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
        st.st_mode as u32 & 0o7777,
        FileType::from_raw_mode(st.st_mode as _) == FileType::RegularFile,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Root, rel: &str, body: &[u8]) {
        root.write_file(rel.as_bytes(), &mut &body[..], body.len() as u64, 0o644, 0)
            .unwrap();
    }

    fn read(dir: &Path, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(dir.join(rel)).ok()
    }

    /// The directory reused by an apply is let go when the apply renames
    /// or removes anything: a later file lands where its path now leads.
    #[test]
    fn a_reused_directory_is_let_go_after_a_rename_or_a_removal() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::open(d.path()).unwrap();
        let _cached = root.cache_dirs();
        put(&root, "a/x", b"1");
        root.rename(b"a", b"b").unwrap();
        put(&root, "a/y", b"2");
        assert_eq!(read(d.path(), "a/y").as_deref(), Some(&b"2"[..]));
        assert_eq!(
            read(d.path(), "b/y"),
            None,
            "not into the renamed directory"
        );
        put(&root, "c/d/x", b"3");
        assert!(root.remove(b"c/d/x").unwrap());
        assert!(root.remove(b"c/d").unwrap());
        root.mkdir(b"c/d", 0o755).unwrap();
        put(&root, "c/d/z", b"4");
        assert_eq!(read(d.path(), "c/d/z").as_deref(), Some(&b"4"[..]));
    }

    /// A directory swapped for a link to elsewhere while it is reused:
    /// the write goes on into the directory itself (wherever it was
    /// moved), never through the link.
    #[test]
    fn a_reused_directory_swapped_for_a_link_never_leads_out_of_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let root = Root::open(&tree).unwrap();
        let cached = root.cache_dirs();
        put(&root, "s/x", b"1");
        std::fs::rename(tree.join("s"), tree.join("s2")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("s")).unwrap();
        put(&root, "s/y", b"2");
        assert_eq!(read(&outside, "y"), None);
        assert_eq!(read(&tree, "s2/y").as_deref(), Some(&b"2"[..]));
        // Without the cache, the walk refuses the link.
        drop(cached);
        let e = root
            .write_file(b"s/z", &mut &b"3"[..], 1, 0o644, 0)
            .unwrap_err();
        assert!(
            e.to_string().contains("symbolic links are never followed"),
            "{e}"
        );
        assert_eq!(read(&outside, "z"), None);
    }
}

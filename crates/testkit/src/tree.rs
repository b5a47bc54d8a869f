//! What a directory tree holds, to compare two trees (the sync tests).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Relative path -> what is there: type and mode; for files their mtime
/// (ns) and BLAKE3 content hash, streamed (a 1 GiB file is not read into
/// memory); for links their target. Paths starting with `skip` (the
/// sync's own state directory) are left out, with what is under them.
pub fn manifest(root: &Path, skip: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with(skip) {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            let v = if md.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", md.mode() & 0o7777)
            } else {
                let mut h = blake3::Hasher::new();
                h.update_reader(fs::File::open(&p).unwrap()).unwrap();
                format!(
                    "file {:o} {} {}",
                    md.mode() & 0o7777,
                    md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    h.finalize().to_hex()
                )
            };
            m.insert(rel, v);
        }
    }
    m
}

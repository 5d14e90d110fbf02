//! Small files that must survive a power cut, and the directory entries that name them.
//!
//! A file's fsync makes its contents durable, not its name: that takes an fsync of the
//! directory holding it (POSIX leaves it there; most journaling filesystems happen to do
//! more, but not all, and not always). node/tests/powercut.rs checks this on a filesystem
//! that does exactly what POSIX promises.

use std::fs::File;
use std::io;
use std::io::Write;
use std::path::Path;

/// fsync a directory: the entries created, renamed or removed in it become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write `path` so that after a crash it holds either its old contents (or is absent) or
/// all of `bytes`, never a part: a temporary file, fsynced, renamed over `path`, and the
/// directory fsynced.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// `create_dir_all`, with every directory it made named durably (each parent fsynced).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for made in missing.iter().rev() {
        if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_dirs_are_made() {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        let root =
            std::env::temp_dir().join(format!("tribune-durable-{:016x}", u64::from_le_bytes(b)));
        create_dir_all(&root.join("a/b")).unwrap();
        let f = root.join("a/b/id");
        write_file(&f, b"one").unwrap();
        write_file(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!root.join("a/b/id.tmp").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! The data_dir lock: one agent per data_dir, held for the agent's lifetime.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::StartError;
use crate::config::Config;

/// Lock the config's data_dir, if it has one; the lock lasts as long as the file returned.
pub fn lock(cfg: &Config) -> Result<Option<File>, StartError> {
    cfg.data_dir.as_deref().map(lock_data_dir).transpose()
}

/// Hold an exclusive flock on `<data_dir>/tribune.lock` for the agent's lifetime.
fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    crate::durable::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("tribune.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::LockFile {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a valid, open file descriptor.
    #[allow(unsafe_code)] // flock: std's File::try_lock needs a newer toolchain than 1.85
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StartError::DataDirInUse {
            dir: dir.to_path_buf(),
            lock: path,
            source: std::io::Error::last_os_error(),
        });
    }
    let mut f = &file;
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_data_dir_fails() {
        let d = std::env::temp_dir().join(format!("tribune-lock-{}", std::process::id()));
        let first = lock_data_dir(&d).unwrap();
        let err = lock_data_dir(&d).unwrap_err().to_string();
        assert!(err.contains("in use by another agent"), "{err}");
        drop(first);
        lock_data_dir(&d).unwrap();
    }
}

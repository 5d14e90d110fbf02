//! What the agent asks of its process: a pid file, if told to write one, and as many open
//! files as the system allows.

use std::path::Path;

use super::error::StartError;

/// Write this process's id to `-pid-file`'s path.
pub fn write_pid_file(path: Option<&Path>) -> Result<(), StartError> {
    let Some(path) = path else {
        return Ok(());
    };
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
        StartError::PidFile {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Raise the soft limit on open files to the hard limit.
#[allow(unsafe_code)] // getrlimit/setrlimit: std has no wrapper
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

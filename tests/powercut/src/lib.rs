//! A disk that can lose power: a FUSE filesystem, in memory, that keeps what was fsynced
//! apart from what was only written, and on [`Disk::cut`] throws away everything that was
//! not (the durability model is in [`model`]).
//!
//! A process killed with `kill -9` loses nothing that it wrote: the kernel's page cache
//! keeps it. A test of a missing fsync needs the page cache itself to go, which is what
//! this filesystem's visible state stands for. The intended sequence:
//!
//! ```text
//! let disk = Disk::new();
//! let mount = disk.mount(dir)?;   // processes under test use `dir`
//! ...
//! disk.freeze();                  // the moment of the cut: no fsync succeeds from here
//! // kill -9 every process using the mount, and reap it
//! mount.unmount()?;               // drops the kernel's caches too
//! let report = disk.cut();        // only the durable state is left
//! let mount = disk.mount(dir)?;   // and the processes start again on it
//! ```
//!
//! Mounting needs `/dev/fuse` and either root (the `mount` syscall, as here) or the
//! `fusermount3` helper (Debian's `fuse3`). [`available_or_skip`] tells a test whether it
//! can run here.

use std::ffi::CString;
use std::io;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

mod fuse;
pub mod model;

pub use model::CutReport;
pub use model::Stats;

use crate::model::Fs;

/// Set to `1` where FUSE must work: a test that cannot mount fails instead of skipping.
pub const REQUIRE_ENV: &str = "TRIBUNE_REQUIRE_FUSE";

/// A power-cuttable disk (see the crate docs). Clones share the disk.
#[derive(Clone, Default)]
pub struct Disk {
    fs: Arc<Mutex<Fs>>,
    mounted: Arc<AtomicBool>,
}

impl Disk {
    pub fn new() -> Disk {
        Disk::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fs> {
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mount the disk on the directory `at` (one mount at a time).
    pub fn mount(&self, at: &Path) -> io::Result<Mount> {
        if self.mounted.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other("this disk is mounted already"));
        }
        let path = match at.canonicalize() {
            Ok(p) => p,
            Err(e) => {
                self.mounted.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("tribune-powercut".into()),
            fuser::MountOption::NoAtime,
        ];
        let session = match fuser::spawn_mount(
            fuse::PowerFs {
                fs: self.fs.clone(),
            },
            &path,
            &config,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.mounted.store(false, Ordering::SeqCst);
                return Err(io::Error::new(
                    e.kind(),
                    format!("mount a FUSE filesystem on {}: {e}", at.display()),
                ));
            }
        };
        // The kernel names the connection (in /sys/fs/fuse/connections) by the device number.
        let conn = std::fs::metadata(&path).ok().map(|m| libc::minor(m.dev()));
        Ok(Mount {
            path,
            session: Some(session),
            conn,
            mounted: self.mounted.clone(),
        })
    }

    /// The moment of the power cut: from now on every fsync fails (`EIO`), so nothing more
    /// becomes durable and no process is told it did. Writes still land in the visible
    /// state, to be discarded by [`Disk::cut`].
    pub fn freeze(&self) {
        self.lock().freeze();
    }

    /// Freeze (see [`Disk::freeze`]) right after the next write to a file whose name ends
    /// with `suffix`: the cut falls between that write and its fsync.
    pub fn freeze_after_write_to(&self, suffix: &str) {
        self.lock().freeze_after_write_to(suffix);
    }

    pub fn frozen(&self) -> bool {
        self.lock().frozen()
    }

    /// Discard everything that is not durable (see [`model`]). The disk must be unmounted:
    /// the kernel's caches of it go with the unmount.
    pub fn cut(&self) -> CutReport {
        assert!(
            !self.mounted.load(Ordering::SeqCst),
            "cut() needs the disk unmounted"
        );
        self.lock().cut()
    }

    /// The visible tree and what of it is durable (see [`Fs::listing`]), for diagnostics.
    pub fn listing(&self) -> String {
        self.lock().listing()
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }
}

/// A mounted [`Disk`]; unmounted when dropped (also while a panic unwinds).
pub struct Mount {
    path: PathBuf,
    session: Option<fuser::BackgroundSession>,
    conn: Option<u32>,
    mounted: Arc<AtomicBool>,
}

/// Time to wait for the last open file on the mount to close (a killed process closes its
/// files while it is reaped).
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

impl Mount {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmount, and wait for the filesystem's thread to end. Gives up (with an error, the
    /// mount detached and its connection aborted) if the mount stays busy.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_now()
    }

    fn abort_connection(&self) {
        if let Some(conn) = self.conn {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), b"1");
        }
    }

    #[allow(unsafe_code)] // umount2: std has no unmount
    fn unmount_now(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let c = CString::new(self.path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let start = Instant::now();
        let mut result = Ok(());
        loop {
            // SAFETY: umount2 with a NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EBUSY) if start.elapsed() < UNMOUNT_WAIT => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                // not mounted (any more)
                Some(libc::EINVAL) | Some(libc::ENOENT) => break,
                // not root: the setuid helper unmounts
                Some(libc::EPERM) => {
                    let out = Command::new("fusermount3")
                        .arg("-u")
                        .arg(&self.path)
                        .output();
                    if !out.as_ref().is_ok_and(|o| o.status.success()) {
                        result = Err(io::Error::other(format!(
                            "fusermount3 -u {}: {out:?}",
                            self.path.display()
                        )));
                    }
                    break;
                }
                _ => {
                    // SAFETY: as above.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                    self.abort_connection();
                    result = Err(io::Error::other(format!(
                        "unmount {}: {err} (detached and aborted instead)",
                        self.path.display()
                    )));
                    break;
                }
            }
        }
        // The filesystem's thread ends when the kernel closes the connection.
        let wait = |limit: Duration| {
            let t = Instant::now();
            while !session.guard.is_finished() && t.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(10));
            }
            session.guard.is_finished()
        };
        if !wait(Duration::from_secs(5)) {
            self.abort_connection();
            if !wait(Duration::from_secs(5)) {
                // Leave the thread (and the disk marked mounted): the disk is not safe to cut.
                return Err(io::Error::other(format!(
                    "the FUSE session on {} does not end",
                    self.path.display()
                )));
            }
        }
        let joined = session.join();
        self.mounted.store(false, Ordering::SeqCst);
        result.and(joined)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            eprintln!("tribune-powercut: {e}");
        }
    }
}

/// Whether a FUSE filesystem can be mounted here: mounts one on a fresh directory under
/// the temp dir, writes a file through it and unmounts it.
pub fn probe() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist (no FUSE in this kernel or container)".into());
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tribune-powercut-probe-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let disk = Disk::new();
    let result = disk.mount(&dir).map_err(|e| e.to_string()).and_then(|m| {
        let wrote = std::fs::write(dir.join("probe"), b"x")
            .map_err(|e| format!("write through the mount: {e}"));
        let unmounted = m.unmount().map_err(|e| e.to_string());
        wrote.and(unmounted)
    });
    let _ = std::fs::remove_dir(&dir);
    result
}

/// For a test that needs FUSE: true if it can run here. If it cannot, prints a loud
/// `SKIPPED:` line and returns false, or panics where `TRIBUNE_REQUIRE_FUSE=1`.
pub fn available_or_skip(test: &str) -> bool {
    match probe() {
        Ok(()) => true,
        Err(why) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: FUSE is required here ({REQUIRE_ENV}=1) but cannot be mounted: {why}"
                );
            }
            // Straight to stderr, past the test harness's capture: a skip must show.
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED: {test}: cannot mount a FUSE filesystem here: {why}\n"
            );
            false
        }
    }
}

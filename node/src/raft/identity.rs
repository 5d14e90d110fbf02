//! This server's Raft id, kept in `data_dir/raft-id` so a restart is the same server.
//!
//! The id is written once, on the first start, before the Raft store is opened: the id
//! goes to `raft-id.tmp`, which is fsynced and renamed over `raft-id`, then the directory
//! is fsynced so the rename is durable too. After a crash or power loss at any point,
//! `raft-id` is either absent (the start never returned an id, so nothing was stored under
//! one: the next start picks one again) or whole. A temp file left behind is overwritten
//! by the next write and otherwise ignored.
//!
//! A `raft-id` that is empty or does not hold a number is an error naming the file: a
//! server must not quietly become another Raft member over its old data.

use std::fs::File;
use std::io;
use std::io::Write;
use std::path::Path;

const FILE: &str = "raft-id";
const TEMP: &str = "raft-id.tmp";

/// This server's Raft id: the one in `data_dir/raft-id`, or on first start one made from
/// `random` (a fresh random number) and durably written there before it is returned.
pub fn node_id(data_dir: &Path, random: u64) -> io::Result<u64> {
    let path = data_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => parse(&path, &bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Never 0, and within i64 for tools that read it as a signed number.
            let id = random >> 1 | 1;
            write_durably(data_dir, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        )),
    }
}

fn parse(path: &Path, bytes: &[u8]) -> io::Result<u64> {
    let corrupt = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} {why}; this server's Raft id is lost: restore the file, or remove the data \
                 directory to start as a new server",
                path.display()
            ),
        )
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| corrupt("is not text".into()))?
        .trim();
    if text.is_empty() {
        return Err(corrupt("is empty".into()));
    }
    text.parse()
        .map_err(|_| corrupt(format!("holds {text:?}, not a Raft id")))
}

/// Put `contents` in `dir/raft-id` so that a crash at any point leaves either no file or
/// the whole of it, and once this returns it survives power loss.
fn write_durably(dir: &Path, contents: &[u8]) -> io::Result<()> {
    let (temp, path) = (dir.join(TEMP), dir.join(FILE));
    let mut f = File::create(&temp).map_err(at("creating", &temp))?;
    crash_point("created")?;
    f.write_all(contents).map_err(at("writing", &temp))?;
    crash_point("written")?;
    f.sync_all().map_err(at("syncing", &temp))?;
    drop(f);
    crash_point("synced")?;
    std::fs::rename(&temp, &path).map_err(at("renaming into place", &path))?;
    crash_point("renamed")?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at("syncing directory", dir))
}

/// An error that says what was being done to which file.
fn at<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(not(test))]
fn crash_point(_: &str) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
thread_local! {
    static CRASH_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// In tests: stop the write here, as a crash would, when asked to.
#[cfg(test)]
fn crash_point(step: &'static str) -> io::Result<()> {
    if CRASH_AT.get() == Some(step) {
        return Err(io::Error::other(format!("crashed after {step}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).unwrap();
            let dir = std::env::temp_dir().join(format!(
                "tribune-identity-{:016x}",
                u64::from_le_bytes(bytes)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    #[test]
    fn a_first_write_cut_short_anywhere_never_blocks_the_next_start() {
        for step in ["created", "written", "synced", "renamed"] {
            let dir = TempDir::new();
            CRASH_AT.set(Some(step));
            let crashed = node_id(&dir.0, 40);
            CRASH_AT.set(None);
            // The first start crashed before it returned an id, so nothing was stored under
            // it: the next start may choose again, but must start.
            assert!(crashed.is_err(), "after {step}");
            match node_id(&dir.0, 80) {
                // 21 (from 40) if the crashed write got into place, else 41 (from 80)
                Ok(id) => assert!(id == 21 || id == 41, "after {step}: {id}"),
                Err(e) => panic!("a crash after {step} left a raft-id the next start refuses: {e}"),
            }
            assert_eq!(
                node_id(&dir.0, 120).unwrap(),
                node_id(&dir.0, 160).unwrap(),
                "after {step}: stable from then on"
            );
        }
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new();
        let id = node_id(&dir.0, 0xdead_beef_0000_0002).unwrap();
        assert_eq!(id, 0xdead_beef_0000_0002 >> 1 | 1);
        assert_eq!(
            node_id(&dir.0, 7).unwrap(),
            id,
            "a restart keeps the id, whatever the new random number"
        );
        assert_eq!(
            std::fs::read_to_string(dir.0.join(FILE)).unwrap(),
            format!("{id}\n")
        );
        assert!(
            !dir.0.join(TEMP).exists(),
            "the temp file was renamed into place"
        );
        assert_ne!(node_id(&TempDir::new().0, 0).unwrap(), 0, "never 0");
    }

    #[test]
    fn an_empty_or_corrupt_file_is_an_error_naming_it() {
        for (contents, why) in [
            (&b""[..], "is empty"),
            (b" \n", "is empty"),
            (b"12ab", "not a Raft id"),
            (b"\xff\xfe", "not text"),
        ] {
            let dir = TempDir::new();
            std::fs::write(dir.0.join(FILE), contents).unwrap();
            let err = node_id(&dir.0, 40).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let msg = err.to_string();
            assert!(
                msg.contains(&dir.0.join(FILE).display().to_string()) && msg.contains(why),
                "{contents:?}: {msg}"
            );
            assert_eq!(
                std::fs::read(dir.0.join(FILE)).unwrap(),
                contents,
                "the file is left as it was"
            );
        }
    }

    #[test]
    fn a_leftover_temp_file_changes_nothing() {
        // a crash before the rename left a temp file, longer than an id
        let dir = TempDir::new();
        std::fs::write(dir.0.join(TEMP), "99999999999999999999999999 garbage").unwrap();
        assert_eq!(node_id(&dir.0, 40).unwrap(), 21);
        assert_eq!(
            std::fs::read_to_string(dir.0.join(FILE)).unwrap(),
            "21\n",
            "overwritten, not appended to"
        );
        assert!(!dir.0.join(TEMP).exists());
        // with raft-id in place, a temp file is ignored
        std::fs::write(dir.0.join(TEMP), "7").unwrap();
        assert_eq!(node_id(&dir.0, 80).unwrap(), 21);
    }
}

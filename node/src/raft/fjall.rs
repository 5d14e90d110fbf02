//! The fjall [`Backend`]: the agent's durable store for the Raft log, vote and snapshots.
//!
//! One fjall database in `data_dir/raft`, one keyspace per [`Space`]. A batch is one fjall
//! batch (atomic across keyspaces). Durable batches are acknowledged only after `fdatasync`;
//! concurrent durable writers share one sync (group commit): a writer whose batch was
//! already covered by another writer's sync returns without syncing again.
//!
//! Log appends and snapshots do not wait for their sync: the core's stores write them with
//! [`Backend::write_then`], which commits the batch (readable at once, so the leader
//! replicates entries while its own sync runs), and a sync thread calls the completion
//! callback once a sync covers it: the same stores, over the simulator's disk, run under
//! every seed. Callbacks fire in write order, and every synchronous durable write (vote,
//! truncation, installed snapshot) fires the ones its sync covered before it returns, so no
//! later write completes before an earlier one. A purge is not synced by itself.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::Weak;

use fjall::Database;
use fjall::Keyspace;
use fjall::KeyspaceCreateOptions;
use fjall::PersistMode;
use tribune_core::raft::backend::OnDurable;
use tribune_core::raft::backend::Op;
use tribune_core::raft::Backend;
use tribune_core::raft::Space;

/// fjall's block cache.
pub const BLOCK_CACHE_BYTES: u64 = 4 << 20;
/// Each keyspace's memtable is written out to disk at this size.
pub const MEMTABLE_BYTES: u64 = 8 << 20;

pub struct FjallBackend {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    /// Number of batches committed (to fjall's journal, not necessarily synced).
    written: AtomicU64,
    /// The `written` count the last sync covered, and the journal file; the lock serializes
    /// syncs and the callbacks they release.
    synced: Mutex<Synced>,
    /// Appends waiting for a sync, shared with the sync thread.
    queue: Arc<Queue>,
    syncer: OnceLock<()>,
    /// The database directory, where fjall keeps its journals.
    dir: PathBuf,
}

struct Synced {
    upto: u64,
    /// The journal the last sync found newest, kept open; `None` before one was found.
    journal: Option<Journal>,
    /// The last sync could not find the newest journal (so warn once, not every sync).
    lost: bool,
}

/// One of fjall's journal files (`<dir>/<id>.jnl`), opened again here so that its
/// fdatasync runs without fjall's journal lock: `Database::persist(SyncData)` holds that
/// lock for the whole fsync, which would stall every write (the next append included)
/// behind it.
///
/// This relies on fjall's journal layout (fjall is pinned to an exact version for it,
/// and `syncs_reach_fjall_s_newest_journal_across_rotations` checks it): journals are
/// `<id>.jnl` in the database directory and fjall writes to the highest id. A rotation
/// (in a flush, once the journal holds 64 MB) syncs the old journal completely, then
/// creates `<id + 1>.jnl`; a sealed journal is deleted once its data is flushed, so
/// between two syncs several rotations may happen and the journals in between may be
/// gone. So every sync looks for the newest journal again (one small directory read):
/// after fjall's buffer is flushed to the file, syncing the journal that is newest
/// *after* that flush makes every batch committed before it durable, because each older
/// journal was synced when it was sealed.
struct Journal {
    id: u64,
    file: File,
}

impl Journal {
    fn path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("{id}.jnl"))
    }

    /// The highest journal id in `dir`, if there is a journal.
    fn newest_id(dir: &Path) -> io::Result<Option<u64>> {
        let mut newest = None;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jnl"))
                .and_then(|n| n.parse::<u64>().ok());
            newest = newest.max(id);
        }
        Ok(newest)
    }

    /// fdatasync the newest journal in `dir` (opening it if it is not `cached`): true once
    /// synced, false if the newest journal could not be found or opened (the caller then
    /// syncs through fjall). Only a failed fdatasync is an error.
    fn sync_newest(cached: &mut Option<Journal>, dir: &Path) -> io::Result<bool> {
        let Ok(Some(id)) = Self::newest_id(dir) else {
            return Ok(false);
        };
        if cached.as_ref().is_none_or(|j| j.id != id) {
            // The old descriptor goes either way: a stale journal is never synced again.
            *cached = File::open(Self::path(dir, id))
                .ok()
                .map(|file| Journal { id, file });
        }
        let Some(journal) = cached else {
            return Ok(false);
        };
        journal.file.sync_data()?;
        Ok(true)
    }
}

#[derive(Default)]
struct Queue {
    waiting: Mutex<Waiting>,
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    /// In `written` order.
    batches: VecDeque<(u64, OnDurable)>,
    closed: bool,
}

fn io_err(e: fjall::Error) -> io::Error {
    io::Error::other(e)
}

impl FjallBackend {
    pub fn open(dir: &Path) -> io::Result<Self> {
        // The hot data (the log tail, the vote) is small and read back rarely: a small block
        // cache keeps an idle server's memory low (fjall's default is 32 MiB).
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(BLOCK_CACHE_BYTES)
            .open()
            .map_err(io_err)?;
        // Small memtables: the log is written once and read back while it is recent (by
        // replication), so a big memtable only holds memory (fjall's default is 64 MiB per
        // keyspace: over 100 MB resident after a few hundred thousand writes).
        let opts = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let log = db.keyspace("raft_log", opts).map_err(io_err)?;
        let meta = db.keyspace("raft_meta", opts).map_err(io_err)?;
        Ok(Self {
            db,
            log,
            meta,
            written: AtomicU64::new(0),
            synced: Mutex::new(Synced {
                upto: 0,
                journal: None,
                lost: false,
            }),
            queue: Arc::default(),
            syncer: OnceLock::new(),
            dir: dir.to_path_buf(),
        })
    }

    fn space(&self, s: Space) -> &Keyspace {
        match s {
            Space::Log => &self.log,
            Space::Meta => &self.meta,
        }
    }

    /// Commit `ops` as one batch (readable at once, not yet durable); its `written` number.
    fn commit(&self, ops: Vec<Op>) -> io::Result<u64> {
        let mut batch = self.db.batch();
        for (space, key, value) in ops {
            match value {
                Some(v) => batch.insert(self.space(space), key, v),
                None => batch.remove(self.space(space), key),
            }
        }
        batch.commit().map_err(io_err)?;
        Ok(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Make every committed batch up to `upto` durable, sharing the sync with concurrent
    /// callers, then release the waiting appends it covered.
    fn sync(&self, upto: u64) {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if synced.upto < upto {
            let covered = self.written.load(Ordering::SeqCst);
            // fjall's buffer into the file (under fjall's lock, brief), then the fsync of
            // the newest journal outside it; through fjall if that journal is not found.
            // Test only: into the file, no fsync (see `skip_fsync_for_tests`).
            let result = self
                .db
                .persist(PersistMode::Buffer)
                .map_err(io_err)
                .and_then(|()| {
                    if skip_fsync_for_tests() {
                        return Ok(());
                    }
                    let s = &mut *synced;
                    match Journal::sync_newest(&mut s.journal, &self.dir)? {
                        true => s.lost = false,
                        false => {
                            if !std::mem::replace(&mut s.lost, true) {
                                tracing::warn!(
                                    dir = %self.dir.display(),
                                    "raft store: fjall's newest journal not found; syncing through \
                                    fjall (holds its journal lock)",
                                );
                            }
                            self.db.persist(PersistMode::SyncData).map_err(io_err)?;
                        }
                    }
                    Ok(())
                });
            if let Err(e) = result {
                // A failed fsync leaves the journal in an unknown state; continuing could
                // acknowledge writes that are not on disk.
                eprintln!("tribune: fsync of the raft store failed: {e}; exiting");
                std::process::exit(70);
            }
            synced.upto = covered;
        }
        let covered = synced.upto;
        let mut released = Vec::new();
        {
            let mut w = self.queue.waiting.lock().unwrap_or_else(|e| e.into_inner());
            while w.batches.front().is_some_and(|(n, _)| *n <= covered) {
                released.extend(w.batches.pop_front().map(|(_, done)| done));
            }
        }
        // Still under `synced`: callbacks fire in order across the sync thread and
        // synchronous writers.
        for done in released {
            done(Ok(()));
        }
    }
}

/// `TRIBUNE_TEST_SKIP_FSYNC=1`, for tests only: durable batches still reach the journal
/// file (a kill -9 loses nothing) but are never fsynced, so a power cut loses acknowledged
/// writes. node/tests/powercut.rs runs the agent this way to show that its power-cut test
/// catches a missing fsync. Never set it on a real server.
fn skip_fsync_for_tests() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| {
        let skip = std::env::var_os("TRIBUNE_TEST_SKIP_FSYNC").is_some_and(|v| v == "1");
        if skip {
            eprintln!(
                "tribune: TRIBUNE_TEST_SKIP_FSYNC=1: the raft store does not fsync (a test \
                setting: writes are not durable)",
            );
        }
        skip
    })
}

/// The sync thread: syncs whenever appends wait, as many per sync as have arrived. It
/// holds the backend only while syncing, so dropping the backend ends it.
fn spawn_syncer(queue: Arc<Queue>, backend: Weak<FjallBackend>) {
    std::thread::Builder::new()
        .name("raft-sync".into())
        .spawn(move || loop {
            let upto = {
                let mut w = queue.waiting.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if w.closed {
                        return;
                    }
                    if let Some((n, _)) = w.batches.back() {
                        break *n;
                    }
                    w = queue.wake.wait(w).unwrap_or_else(|e| e.into_inner());
                }
            };
            let Some(b) = backend.upgrade() else { return };
            b.sync(upto);
        })
        .expect("spawn the raft sync thread");
}

impl Drop for FjallBackend {
    fn drop(&mut self) {
        self.queue
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.queue.wake.notify_all();
    }
}

impl Backend for FjallBackend {
    fn write(&self, ops: Vec<Op>, durable: bool) -> io::Result<()> {
        let mine = self.commit(ops)?;
        if durable {
            self.sync(mine);
        }
        Ok(())
    }

    /// Commit `ops` now and call `done` once a sync covers them (from the sync thread, or
    /// from a later synchronous durable write).
    fn write_then(self: &Arc<Self>, ops: Vec<Op>, done: OnDurable) -> io::Result<()> {
        self.syncer
            .get_or_init(|| spawn_syncer(self.queue.clone(), Arc::downgrade(self)));
        let mut w = self.queue.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mine = self.commit(ops)?;
        w.batches.push_back((mine, done));
        drop(w);
        self.queue.wake.notify_one();
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .space(space)
            .get(key)
            .map_err(io_err)?
            .map(|v| v.to_vec()))
    }

    fn range(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for guard in self.space(space).range(from..to).take(limit) {
            let (k, v) = guard.into_inner().map_err(io_err)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, space: Space) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self.space(space).last_key_value() {
            Some(guard) => {
                let (k, v) = guard.into_inner().map_err(io_err)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(space: Space, k: &[u8], v: &[u8]) -> Op {
        (space, k.to_vec(), Some(v.to_vec()))
    }

    #[test]
    fn survives_reopen_and_keeps_spaces_apart() {
        let dir = tempdir();
        {
            let b = FjallBackend::open(&dir).unwrap();
            b.write(
                vec![
                    put(Space::Log, &1u64.to_be_bytes(), b"one"),
                    put(Space::Meta, b"vote", b"v"),
                ],
                true,
            )
            .unwrap();
            b.write(vec![put(Space::Log, &2u64.to_be_bytes(), b"two")], true)
                .unwrap();
            b.write(vec![(Space::Log, 1u64.to_be_bytes().to_vec(), None)], true)
                .unwrap();
        }
        let b = FjallBackend::open(&dir).unwrap();
        assert_eq!(b.get(Space::Meta, b"vote").unwrap(), Some(b"v".to_vec()));
        assert_eq!(b.get(Space::Log, b"vote").unwrap(), None);
        let rows = b
            .range(Space::Log, &0u64.to_be_bytes(), &u64::MAX.to_be_bytes(), 10)
            .unwrap();
        assert_eq!(rows, vec![(2u64.to_be_bytes().to_vec(), b"two".to_vec())]);
        assert_eq!(b.last(Space::Log).unwrap().unwrap().1, b"two".to_vec());
        assert_eq!(b.last(Space::Meta).unwrap().unwrap().0, b"vote".to_vec());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn concurrent_durable_writers_share_syncs() {
        let dir = tempdir();
        let b = std::sync::Arc::new(FjallBackend::open(&dir).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        b.write(
                            vec![put(Space::Log, &(t * 1000 + i).to_be_bytes(), b"x")],
                            true,
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(
            b.range(Space::Log, &[], &u64::MAX.to_be_bytes(), 1000)
                .unwrap()
                .len(),
            400
        );
        assert!(
            b.synced.lock().unwrap().upto >= 400,
            "every durable batch is covered by a sync"
        );
        assert!(
            b.synced.lock().unwrap().journal.is_some(),
            "fjall's journal file is found"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn appends_complete_in_order_and_before_a_later_durable_write_returns() {
        let dir = tempdir();
        let b = Arc::new(FjallBackend::open(&dir).unwrap());
        let done = Arc::new(Mutex::new(Vec::new()));
        for i in 0..200u64 {
            let d = done.clone();
            b.write_then(
                vec![put(Space::Log, &i.to_be_bytes(), b"e")],
                Box::new(move |r| {
                    r.unwrap();
                    d.lock().unwrap().push(i);
                }),
            )
            .unwrap();
            // readable before it is durable
            assert_eq!(
                b.get(Space::Log, &i.to_be_bytes()).unwrap(),
                Some(b"e".to_vec())
            );
        }
        b.write(vec![put(Space::Meta, b"vote", b"v")], true)
            .unwrap();
        assert_eq!(
            *done.lock().unwrap(),
            (0..200).collect::<Vec<_>>(),
            "all released, in order"
        );
        let d = done.clone();
        b.write_then(
            vec![put(Space::Log, &500u64.to_be_bytes(), b"e")],
            Box::new(move |_| d.lock().unwrap().push(500)),
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        while done.lock().unwrap().len() < 201 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "the sync thread releases it"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(b);
        // the sync thread lets go of the backend (at most when its current sync ends): the
        // directory can be opened again
        let t0 = std::time::Instant::now();
        let b = loop {
            match FjallBackend::open(&dir) {
                Ok(b) => break b,
                Err(e) if t0.elapsed() > std::time::Duration::from_secs(5) => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        };
        assert_eq!(
            b.range(Space::Log, &[], &u64::MAX.to_be_bytes(), 1000)
                .unwrap()
                .len(),
            201
        );
        drop(b);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The `<id>.jnl` files in `dir`, by id.
    fn journal_ids(dir: &Path) -> Vec<u64> {
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                e.unwrap()
                    .file_name()
                    .to_str()?
                    .strip_suffix(".jnl")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort();
        ids
    }

    /// The sync relies on fjall's journal layout (pinned in Cargo.toml): journals are
    /// `<id>.jnl` in the database directory, a rotation starts `<id + 1>.jnl` after syncing
    /// the old one, a flushed sealed journal is deleted, and writes go to the highest id.
    /// This forces two rotations between syncs, with the journal in between deleted, and
    /// checks that a sync then reaches the journal the last write is in.
    #[test]
    fn syncs_reach_fjall_s_newest_journal_across_rotations() {
        let dir = tempdir();
        let b = Arc::new(FjallBackend::open(&dir).unwrap());
        let first = *journal_ids(&dir)
            .last()
            .expect("fjall starts with a journal");
        // fjall starts a new journal when a memtable flush runs (in its worker threads)
        // while the current one holds over 64 MB; then deletes the sealed ones once
        // flushed. Only not-durable writes here: no sync between the rotations.
        let value = vec![7u8; 1 << 20];
        let t0 = std::time::Instant::now();
        let mut i = 0u64;
        loop {
            b.write(
                vec![(Space::Log, i.to_be_bytes().to_vec(), Some(value.clone()))],
                false,
            )
            .unwrap();
            i += 1;
            let ids = journal_ids(&dir);
            if *ids.last().unwrap() >= first + 2 && !ids.contains(&(first + 1)) {
                break;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(120),
                "fjall rotated its journal only to {ids:?}"
            );
        }
        // A durable write, with a marker to find in the journal. (A flush still running
        // may rotate once more: then the next durable write must follow.)
        for attempt in 0u64.. {
            let marker = format!(
                "durable-marker-{attempt}-{:016x}",
                super::super::random_u64()
            );
            let newest = *journal_ids(&dir).last().unwrap();
            b.write(vec![put(Space::Meta, b"marker", marker.as_bytes())], true)
                .unwrap();
            if *journal_ids(&dir).last().unwrap() != newest {
                assert!(attempt < 5, "fjall keeps rotating");
                continue;
            }
            let synced = b.synced.lock().unwrap().journal.as_ref().map(|j| j.id);
            assert_eq!(
                synced,
                Some(newest),
                "the sync reached the newest journal, {newest}.jnl"
            );
            let bytes = std::fs::read(Journal::path(&dir, newest)).unwrap();
            assert!(
                bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "fjall wrote the last batch into {newest}.jnl, the highest-numbered journal"
            );
            break;
        }
        drop(b);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_newest_journal_is_the_highest_id_and_a_missing_one_falls_back_to_fjall() {
        let dir = tempdir();
        let mut cached = None;
        assert!(
            !Journal::sync_newest(&mut cached, &dir).unwrap(),
            "no journal: not synced here"
        );
        for name in ["3.jnl", "12.jnl", "9.jnl", "40.jnl.tmp", "x.jnl", "7"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(Journal::newest_id(&dir).unwrap(), Some(12));
        assert!(Journal::sync_newest(&mut cached, &dir).unwrap());
        assert_eq!(cached.as_ref().map(|j| j.id), Some(12));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            !Journal::sync_newest(&mut cached, &dir).unwrap(),
            "unreadable directory: not synced here"
        );

        // The backend then syncs through fjall, and the write still succeeds.
        let dir = tempdir();
        let mut b = FjallBackend::open(&dir).unwrap();
        b.dir = dir.join("elsewhere");
        b.write(vec![put(Space::Meta, b"vote", b"v")], true)
            .unwrap();
        assert!(
            b.synced.lock().unwrap().lost,
            "fell back to fjall's own sync"
        );
        assert_eq!(b.synced.lock().unwrap().upto, 1);
        b.dir = dir.clone();
        b.write(vec![put(Space::Meta, b"vote", b"w")], true)
            .unwrap();
        assert!(!b.synced.lock().unwrap().lost, "found again");
        drop(b);
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempdir() -> std::path::PathBuf {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let dir =
            std::env::temp_dir().join(format!("tribune-fjall-{:016x}", u64::from_le_bytes(bytes)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! The fjall [`Backend`]: the agent's durable store for the Raft log, vote and snapshots.
//!
//! One fjall database in `data_dir/raft`, one keyspace per [`Space`]. A batch is one fjall
//! batch (atomic across keyspaces). Durable batches are acknowledged only after `fdatasync`;
//! concurrent durable writers share one sync (group commit): a writer whose batch was
//! already covered by another writer's sync returns without syncing again.
//!
//! Log appends do not wait for their sync: [`FjallLog::append`] writes the entries (readable
//! at once, so the leader replicates them while its own sync runs) and a sync thread calls
//! openraft's completion callback once a sync covers them. Callbacks fire in append order,
//! and every synchronous durable write (vote, truncation, purge, snapshot) fires the ones
//! its sync covered before it returns, so no later write completes before an earlier one.

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
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::OptionalSend;
use tribune_core::raft::backend::Op;
use tribune_core::raft::Backend;
use tribune_core::raft::LogEntry;
use tribune_core::raft::LogId;
use tribune_core::raft::LogStore;
use tribune_core::raft::Space;
use tribune_core::raft::Vote;

use super::Types;

/// fjall's block cache.
pub const BLOCK_CACHE_BYTES: u64 = 4 << 20;
/// Each keyspace's memtable is written out to disk at this size.
pub const MEMTABLE_BYTES: u64 = 8 << 20;

/// What to call once a batch is durable (or the sync failed).
pub type OnDurable = Box<dyn FnOnce(io::Result<()>) + Send>;

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
}

struct Synced {
    upto: u64,
    /// `None` if fjall's journal file was not found: sync through fjall instead.
    journal: Option<Journal>,
}

/// fjall's active journal file (`<dir>/<id>.jnl`), opened again here so that its fdatasync
/// runs without fjall's journal lock: `Database::persist(SyncData)` holds that lock for the
/// whole fsync, which would stall every write (the next append included) behind it. fjall
/// syncs a journal completely before it starts the next one, so after fjall's buffer is
/// flushed to the file, syncing the newest journal makes every committed batch durable.
struct Journal {
    dir: PathBuf,
    id: u64,
    file: File,
}

impl Journal {
    fn path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("{id}.jnl"))
    }

    /// The newest journal in `dir`, if there is one.
    fn find(dir: &Path) -> io::Result<Option<Journal>> {
        let mut newest = None;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let id = name.to_str().and_then(|n| n.strip_suffix(".jnl")).and_then(|n| n.parse::<u64>().ok());
            newest = newest.max(id);
        }
        let Some(id) = newest else { return Ok(None) };
        Ok(Some(Journal { dir: dir.to_path_buf(), id, file: File::open(Self::path(dir, id))? }))
    }

    /// Move to the newest journal (fjall rotated since the last sync), then fdatasync it.
    fn sync(&mut self) -> io::Result<()> {
        loop {
            match File::open(Self::path(&self.dir, self.id + 1)) {
                Ok(f) => {
                    self.id += 1;
                    self.file = f;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        self.file.sync_data()
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
        let journal = Journal::find(dir)?;
        if journal.is_none() {
            tracing::warn!(dir = %dir.display(), "raft store: no journal file found; syncs hold the journal lock");
        }
        Ok(Self {
            db,
            log,
            meta,
            written: AtomicU64::new(0),
            synced: Mutex::new(Synced { upto: 0, journal }),
            queue: Arc::default(),
            syncer: OnceLock::new(),
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
            let result = match &mut synced.journal {
                // Test only: into the file, no fsync (see `skip_fsync_for_tests`).
                _ if skip_fsync_for_tests() => self.db.persist(PersistMode::Buffer).map_err(io_err),
                // fjall's buffer into the file (under fjall's lock, brief), then the fsync
                Some(journal) => self.db.persist(PersistMode::Buffer).map_err(io_err).and_then(|()| journal.sync()),
                _ => self.db.persist(PersistMode::SyncData).map_err(io_err),
            };
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

    /// Commit `ops` now and call `done` once a sync covers them (from the sync thread, or
    /// from a later synchronous durable write).
    pub fn write_then(self: &Arc<Self>, ops: Vec<Op>, done: OnDurable) -> io::Result<()> {
        self.syncer.get_or_init(|| spawn_syncer(self.queue.clone(), Arc::downgrade(self)));
        let mut w = self.queue.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mine = self.commit(ops)?;
        w.batches.push_back((mine, done));
        drop(w);
        self.queue.wake.notify_one();
        Ok(())
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
            eprintln!("tribune: TRIBUNE_TEST_SKIP_FSYNC=1: the raft store does not fsync (a test setting: writes are not durable)");
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
        self.queue.waiting.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
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

    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.space(space).get(key).map_err(io_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, space: Space, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
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

/// The Raft log store the agent runs: the core's [`LogStore`] over fjall, except that an
/// append returns before its sync (see the module docs).
#[derive(Clone)]
pub struct FjallLog {
    inner: LogStore<Types, FjallBackend>,
    backend: Arc<FjallBackend>,
}

impl FjallLog {
    pub fn new(backend: Arc<FjallBackend>) -> Self {
        Self { inner: LogStore::new(backend.clone()), backend }
    }
}

impl RaftLogStorage<Types> for FjallLog {
    type LogReader = LogStore<Types, FjallBackend>;

    async fn get_log_state(&mut self) -> Result<LogState<Types>, io::Error> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.inner.save_vote(vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.inner.read_committed().await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Types>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The core's log layout: big-endian index -> postcard(entry).
        let mut ops: Vec<Op> = Vec::new();
        for e in entries {
            let bytes = postcard::to_allocvec(&e).map_err(io::Error::other)?;
            ops.push((Space::Log, e.index().to_be_bytes().to_vec(), Some(bytes)));
        }
        self.backend.write_then(ops, Box::new(move |r| callback.io_completed(r)))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.inner.truncate_after(last_log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.inner.purge(log_id).await
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
            b.write(vec![put(Space::Log, &1u64.to_be_bytes(), b"one"), put(Space::Meta, b"vote", b"v")], true).unwrap();
            b.write(vec![put(Space::Log, &2u64.to_be_bytes(), b"two")], true).unwrap();
            b.write(vec![(Space::Log, 1u64.to_be_bytes().to_vec(), None)], true).unwrap();
        }
        let b = FjallBackend::open(&dir).unwrap();
        assert_eq!(b.get(Space::Meta, b"vote").unwrap(), Some(b"v".to_vec()));
        assert_eq!(b.get(Space::Log, b"vote").unwrap(), None);
        let rows = b.range(Space::Log, &0u64.to_be_bytes(), &u64::MAX.to_be_bytes(), 10).unwrap();
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
                        b.write(vec![put(Space::Log, &(t * 1000 + i).to_be_bytes(), b"x")], true).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(b.range(Space::Log, &[], &u64::MAX.to_be_bytes(), 1000).unwrap().len(), 400);
        assert!(b.synced.lock().unwrap().upto >= 400, "every durable batch is covered by a sync");
        assert!(b.synced.lock().unwrap().journal.is_some(), "fjall's journal file is found");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn appends_complete_in_order_and_before_a_later_durable_write_returns() {
        let dir = tempdir();
        let b = Arc::new(FjallBackend::open(&dir).unwrap());
        let done = Arc::new(Mutex::new(Vec::new()));
        for i in 0..200u64 {
            let d = done.clone();
            b.write_then(vec![put(Space::Log, &i.to_be_bytes(), b"e")], Box::new(move |r| {
                r.unwrap();
                d.lock().unwrap().push(i);
            }))
            .unwrap();
            // readable before it is durable
            assert_eq!(b.get(Space::Log, &i.to_be_bytes()).unwrap(), Some(b"e".to_vec()));
        }
        b.write(vec![put(Space::Meta, b"vote", b"v")], true).unwrap();
        assert_eq!(*done.lock().unwrap(), (0..200).collect::<Vec<_>>(), "all released, in order");
        let d = done.clone();
        b.write_then(vec![put(Space::Log, &500u64.to_be_bytes(), b"e")], Box::new(move |_| d.lock().unwrap().push(500)))
            .unwrap();
        let t0 = std::time::Instant::now();
        while done.lock().unwrap().len() < 201 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the sync thread releases it");
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
        assert_eq!(b.range(Space::Log, &[], &u64::MAX.to_be_bytes(), 1000).unwrap().len(), 201);
        drop(b);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn syncs_follow_fjall_to_its_newest_journal() {
        let dir = tempdir();
        let b = Arc::new(FjallBackend::open(&dir).unwrap());
        let first = b.synced.lock().unwrap().journal.as_ref().unwrap().id;
        // fjall starts a new journal once the current one holds 64 MB and a memtable flush
        // runs (in its worker threads)
        let value = vec![7u8; 1 << 20];
        let t0 = std::time::Instant::now();
        let mut i = 0u64;
        let newest = loop {
            b.write(vec![(Space::Log, i.to_be_bytes().to_vec(), Some(value.clone()))], i.is_multiple_of(16)).unwrap();
            i += 1;
            let newest = Journal::find(&dir).unwrap().unwrap().id;
            if newest > first {
                break newest;
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(60), "fjall never rotated its journal");
        };
        b.write(vec![put(Space::Meta, b"vote", b"v")], true).unwrap();
        assert_eq!(b.synced.lock().unwrap().journal.as_ref().unwrap().id, newest, "the sync follows it");
        drop(b);
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempdir() -> std::path::PathBuf {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let dir = std::env::temp_dir().join(format!("tribune-fjall-{:016x}", u64::from_le_bytes(bytes)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

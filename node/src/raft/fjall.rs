//! The fjall [`Backend`]: the agent's durable store for the Raft log, vote and snapshots.
//!
//! One fjall database in `data_dir/raft`, one keyspace per [`Space`]. A batch is one fjall
//! batch (atomic across keyspaces). Durable batches are acknowledged only after `fdatasync`;
//! concurrent durable writers share one sync (group commit): a writer whose batch was
//! already covered by another writer's sync returns without syncing again.

use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use fjall::Database;
use fjall::Keyspace;
use fjall::KeyspaceCreateOptions;
use fjall::PersistMode;
use tribune_core::raft::backend::Op;
use tribune_core::raft::Backend;
use tribune_core::raft::Space;

/// fjall's block cache.
pub const BLOCK_CACHE_BYTES: u64 = 4 << 20;

pub struct FjallBackend {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    /// Number of batches committed (to fjall's journal, not necessarily synced).
    written: AtomicU64,
    /// The `written` count the last sync covered; the lock serializes syncs.
    synced: Mutex<u64>,
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
        let log = db.keyspace("raft_log", KeyspaceCreateOptions::default).map_err(io_err)?;
        let meta = db.keyspace("raft_meta", KeyspaceCreateOptions::default).map_err(io_err)?;
        Ok(Self { db, log, meta, written: AtomicU64::new(0), synced: Mutex::new(0) })
    }

    fn space(&self, s: Space) -> &Keyspace {
        match s {
            Space::Log => &self.log,
            Space::Meta => &self.meta,
        }
    }

    /// Make every committed batch durable, sharing the sync with concurrent callers.
    fn sync(&self, upto: u64) -> io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= upto {
            return Ok(()); // another writer's sync covered this batch
        }
        let covered = self.written.load(Ordering::SeqCst);
        if let Err(e) = self.db.persist(PersistMode::SyncData) {
            // A failed fsync leaves the journal in an unknown state; continuing could
            // acknowledge writes that are not on disk.
            eprintln!("tribune: fsync of the raft store failed: {e}; exiting");
            std::process::exit(70);
        }
        *synced = covered;
        Ok(())
    }
}

impl Backend for FjallBackend {
    fn write(&self, ops: Vec<Op>, durable: bool) -> io::Result<()> {
        let mut batch = self.db.batch();
        for (space, key, value) in ops {
            match value {
                Some(v) => batch.insert(self.space(space), key, v),
                None => batch.remove(self.space(space), key),
            }
        }
        batch.commit().map_err(io_err)?;
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        if durable {
            self.sync(mine)?;
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
        assert!(*b.synced.lock().unwrap() >= 400, "every durable batch is covered by a sync");
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

//! The storage backend trait the Raft stores are written over, and an in-memory,
//! crash-consistent implementation for tests and the simulator.
//!
//! A backend is an ordered key/value store with a few keyspaces and atomic batches. A batch
//! written with `durable = true` must survive a crash once `write` returns (fsync); one
//! written with `durable = false` may be lost by a crash, entirely or not at all (never a
//! part of one batch). A batch written with [`Backend::write_then`] is readable at once and
//! reported durable later, through its callback: that is how log appends are written, by the
//! agent's fjall backend (a sync thread) and by the simulator's (a simulated disk).
//!
//! Batches become durable in the order they were written. A crash keeps a prefix of the
//! unsynced ones, each whole (a torn last batch is discarded when the store is opened again,
//! as a journal's checksums discard it), and loses the rest.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

/// The keyspaces of a node's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// Raft log: big-endian index → encoded entry.
    Log,
    /// Raft metadata: vote, committed, purged; state-machine snapshot.
    Meta,
}

/// One change in a batch: `Some(value)` writes, `None` deletes.
pub type Op = (Space, Vec<u8>, Option<Vec<u8>>);

/// What to call once a batch is durable, or with the error that kept it from being so.
pub type OnDurable = Box<dyn FnOnce(io::Result<()>) + Send>;

pub trait Backend: Send + Sync + 'static {
    /// Apply `ops` atomically; with `durable`, return only after they are on stable storage
    /// (and every batch written before them is too).
    fn write(&self, ops: Vec<Op>, durable: bool) -> io::Result<()>;
    /// Apply `ops` atomically and readably now, and call `done` once they are on stable
    /// storage (or the sync failed). The `done`s of successive batches run in write order,
    /// and a later `write(.., true)` runs those of the batches it made durable before it
    /// returns. A crash before the sync drops `done` uncalled.
    fn write_then(self: &Arc<Self>, ops: Vec<Op>, done: OnDurable) -> io::Result<()>
    where
        Self: Sized;
    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Entries with `from <= key < to`, in key order, at most `limit` of them.
    fn range(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The entry with the highest key in `space`.
    fn last(&self, space: Space) -> io::Result<Option<(Vec<u8>, Vec<u8>)>>;
}

type Map = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

/// A batch not yet synced, and whom to tell once it is.
type Pending = (Vec<Op>, Option<OnDurable>);

#[derive(Default)]
struct MemState {
    /// What a crash keeps.
    durable: Map,
    /// Batches written without a sync, in order.
    pending: Vec<Pending>,
    /// `durable` with `pending` applied: what reads see.
    visible: Map,
    /// Called (outside the lock) when a batch waits for a sync: the simulated disk's wake-up.
    on_pending: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The next sync fails (a disk fault the simulator injects).
    fail_next_sync: bool,
}

/// In-memory backend that models what a crash loses: unsynced batches.
///
/// The harness owns it across a simulated kill and restart and calls [`MemBackend::crash`]
/// in between. Batches written with [`Backend::write_then`] wait for [`MemBackend::sync`],
/// which the simulator's disk task calls after a simulated fsync latency.
#[derive(Default)]
pub struct MemBackend {
    state: Mutex<MemState>,
}

impl std::fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("MemBackend")
            .field("durable", &s.durable.len())
            .field("pending", &s.pending.len())
            .finish()
    }
}

/// Run the callbacks of batches that became durable (or failed to), in order, outside the
/// backend's lock.
fn release(done: Vec<OnDurable>, result: &io::Result<()>) {
    for d in done {
        d(match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget every batch that was not synced (kill -9 / power loss).
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// A crash after the first `kept` unsynced batches reached the disk on their own (the
    /// OS wrote them back) and the next one, if any, was torn: it and all after it are
    /// lost. Their callbacks are dropped uncalled.
    pub fn crash_keeping(&self, kept: usize) {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.pending);
        for (batch, _) in pending.into_iter().take(kept) {
            apply(&mut s.durable, batch);
        }
        s.visible = s.durable.clone();
        // The fault was the process's: it starts again on a disk that syncs.
        s.fail_next_sync = false;
    }

    /// Make every pending batch durable (an fsync of everything written so far), then tell
    /// their writers; how many batches it covered. After [`MemBackend::fail_next_sync`] it
    /// fails instead: the pending batches never reach the disk, though reads still see them
    /// (the page cache) until a crash, and their writers are told of the error. The syncs
    /// after that one succeed again, as a real disk's do.
    pub fn sync(&self) -> usize {
        let (done, n, failed) = {
            let mut s = self.lock();
            let failed = std::mem::take(&mut s.fail_next_sync);
            let n = s.pending.len();
            (s.drain_pending(!failed), n, failed)
        };
        let result = match failed {
            true => Err(io::Error::other("simulated fsync error")),
            false => Ok(()),
        };
        release(done, &result);
        n
    }

    /// Make the next sync fail (see [`MemBackend::sync`]).
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Call `wake` whenever a batch starts waiting for a sync (the simulated disk's signal).
    pub fn on_pending(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        self.lock().on_pending = Some(wake);
    }

    /// Number of batches written with [`Backend::write_then`] that wait for a sync.
    pub fn waiting_batches(&self) -> usize {
        self.lock()
            .pending
            .iter()
            .filter(|(_, d)| d.is_some())
            .count()
    }

    /// Number of batches a crash would lose now.
    pub fn unsynced_batches(&self) -> usize {
        self.lock().pending.len()
    }
}

impl MemState {
    /// Take every pending batch, making it durable if `synced` (a failed sync loses it),
    /// and return the callbacks to run, in write order.
    fn drain_pending(&mut self, synced: bool) -> Vec<OnDurable> {
        let mut done = Vec::new();
        for (batch, d) in std::mem::take(&mut self.pending) {
            if synced {
                apply(&mut self.durable, batch);
            }
            done.extend(d);
        }
        done
    }
}

fn apply(map: &mut Map, ops: Vec<Op>) {
    for (space, key, value) in ops {
        match value {
            Some(v) => {
                map.insert((space, key), v);
            }
            None => {
                map.remove(&(space, key));
            }
        }
    }
}

impl Backend for MemBackend {
    fn write(&self, ops: Vec<Op>, durable: bool) -> io::Result<()> {
        let done = {
            let mut s = self.lock();
            apply(&mut s.visible, ops.clone());
            if durable {
                // A sync writes everything before it too.
                let done = s.drain_pending(true);
                apply(&mut s.durable, ops);
                done
            } else {
                s.pending.push((ops, None));
                Vec::new()
            }
        };
        release(done, &Ok(()));
        Ok(())
    }

    fn write_then(self: &Arc<Self>, ops: Vec<Op>, done: OnDurable) -> io::Result<()> {
        let wake = {
            let mut s = self.lock();
            apply(&mut s.visible, ops.clone());
            s.pending.push((ops, Some(done)));
            s.on_pending.clone()
        };
        if let Some(wake) = wake {
            wake();
        }
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock().visible.get(&(space, key.to_vec())).cloned())
    }

    fn range(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let s = self.lock();
        Ok(s.visible
            .range((space, from.to_vec())..(space, to.to_vec()))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, space: Space) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let s = self.lock();
        let next = match space {
            Space::Log => Space::Meta,
            Space::Meta => {
                return Ok(s
                    .visible
                    .range((space, Vec::new())..)
                    .next_back()
                    .map(|((_, k), v)| (k.clone(), v.clone())))
            }
        };
        Ok(s.visible
            .range((space, Vec::new())..(next, Vec::new()))
            .next_back()
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        (
            Space::Meta,
            k.as_bytes().to_vec(),
            Some(v.as_bytes().to_vec()),
        )
    }

    #[test]
    fn crash_loses_only_unsynced_batches() {
        let b = MemBackend::new();
        b.write(vec![put("a", "1")], true).unwrap();
        b.write(vec![put("b", "2"), put("c", "3")], false).unwrap();
        assert_eq!(b.get(Space::Meta, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(b.unsynced_batches(), 1);
        b.crash();
        assert_eq!(b.get(Space::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.get(Space::Meta, b"b").unwrap(), None);
        assert_eq!(
            b.get(Space::Meta, b"c").unwrap(),
            None,
            "a batch is lost whole"
        );
    }

    /// Which batches were reported durable (`true`) or failed, in the order reported.
    type Reports = Arc<Mutex<Vec<(u32, bool)>>>;

    fn recorder() -> (Reports, impl Fn(u32) -> OnDurable) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let make = move |n: u32| -> OnDurable {
            let l = l.clone();
            Box::new(move |r: io::Result<()>| l.lock().unwrap().push((n, r.is_ok())))
        };
        (log, make)
    }

    #[test]
    fn write_then_is_readable_at_once_and_durable_only_after_a_sync() {
        let b = Arc::new(MemBackend::new());
        let (log, done) = recorder();
        b.write_then(vec![put("a", "1")], done(1)).unwrap();
        b.write_then(vec![put("b", "2")], done(2)).unwrap();
        assert_eq!(b.get(Space::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert!(
            log.lock().unwrap().is_empty(),
            "nothing is durable before a sync"
        );
        assert_eq!(b.sync(), 2);
        assert_eq!(*log.lock().unwrap(), vec![(1, true), (2, true)]);
        b.crash();
        assert_eq!(b.get(Space::Meta, b"b").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn a_durable_write_completes_the_appends_before_it_in_order() {
        let b = Arc::new(MemBackend::new());
        let (log, done) = recorder();
        b.write_then(vec![put("a", "1")], done(1)).unwrap();
        b.write_then(vec![put("b", "2")], done(2)).unwrap();
        b.write(vec![put("vote", "x")], true).unwrap();
        assert_eq!(*log.lock().unwrap(), vec![(1, true), (2, true)]);
        assert_eq!(b.unsynced_batches(), 0);
    }

    #[test]
    fn a_crash_keeps_a_whole_prefix_and_drops_the_rest_uncalled() {
        let b = Arc::new(MemBackend::new());
        let (log, done) = recorder();
        b.write_then(vec![put("a", "1")], done(1)).unwrap();
        b.write_then(vec![put("b", "2"), put("c", "3")], done(2))
            .unwrap();
        b.write_then(vec![put("d", "4")], done(3)).unwrap();
        b.crash_keeping(1);
        assert_eq!(b.get(Space::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.get(Space::Meta, b"b").unwrap(), None);
        assert_eq!(
            b.get(Space::Meta, b"c").unwrap(),
            None,
            "a torn batch is lost whole"
        );
        assert_eq!(b.get(Space::Meta, b"d").unwrap(), None);
        assert!(
            log.lock().unwrap().is_empty(),
            "a crash acknowledges nothing"
        );
    }

    #[test]
    fn a_failed_sync_reports_the_error_and_its_batches_die_with_the_next_crash() {
        let b = Arc::new(MemBackend::new());
        let (log, done) = recorder();
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        b.on_pending(Arc::new(move || {
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        b.write_then(vec![put("a", "1")], done(1)).unwrap();
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
        b.fail_next_sync();
        assert_eq!(b.sync(), 1);
        assert_eq!(*log.lock().unwrap(), vec![(1, false)]);
        assert_eq!(
            b.get(Space::Meta, b"a").unwrap(),
            Some(b"1".to_vec()),
            "page cache"
        );
        b.write_then(vec![put("b", "2")], done(2)).unwrap();
        b.sync();
        b.crash();
        assert_eq!(b.get(Space::Meta, b"a").unwrap(), None);
        assert_eq!(b.get(Space::Meta, b"b").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn a_durable_write_syncs_what_came_before() {
        let b = MemBackend::new();
        b.write(vec![put("a", "1")], false).unwrap();
        b.write(vec![put("b", "2")], true).unwrap();
        b.crash();
        assert_eq!(b.get(Space::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        let all = b.range(Space::Meta, b"", b"\xff", 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            b.range(Space::Log, b"", b"\xff", 10).unwrap().len(),
            0,
            "spaces are apart"
        );
    }
}

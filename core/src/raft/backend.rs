//! The storage backend trait the Raft stores are written over, and an in-memory,
//! crash-consistent implementation for tests and the simulator.
//!
//! A backend is an ordered key/value store with a few keyspaces and atomic batches. A batch
//! written with `durable = true` must survive a crash once `write` returns (fsync); one
//! written with `durable = false` may be lost by a crash, entirely or not at all (never a
//! part of one batch).

use std::collections::BTreeMap;
use std::io;
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

pub trait Backend: Send + Sync + 'static {
    /// Apply `ops` atomically; with `durable`, return only after they are on stable storage.
    fn write(&self, ops: Vec<Op>, durable: bool) -> io::Result<()>;
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

#[derive(Debug, Default)]
struct MemState {
    /// What a crash keeps.
    durable: Map,
    /// Batches written without `durable`, in order, not yet synced.
    pending: Vec<Vec<Op>>,
    /// `durable` with `pending` applied: what reads see.
    visible: Map,
}

/// In-memory backend that models what a crash loses: unsynced batches.
///
/// The harness owns it across a simulated kill and restart and calls [`MemBackend::crash`]
/// in between.
#[derive(Debug, Default)]
pub struct MemBackend {
    state: Mutex<MemState>,
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
        let mut s = self.lock();
        s.pending.clear();
        s.visible = s.durable.clone();
    }

    /// Make every pending batch durable (an fsync of everything written so far).
    pub fn sync(&self) {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.pending);
        for batch in pending {
            apply(&mut s.durable, batch);
        }
    }

    /// Number of batches a crash would lose now.
    pub fn unsynced_batches(&self) -> usize {
        self.lock().pending.len()
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
        let mut s = self.lock();
        apply(&mut s.visible, ops.clone());
        if durable {
            // A sync writes everything before it too.
            let pending = std::mem::take(&mut s.pending);
            for batch in pending {
                apply(&mut s.durable, batch);
            }
            apply(&mut s.durable, ops);
        } else {
            s.pending.push(ops);
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

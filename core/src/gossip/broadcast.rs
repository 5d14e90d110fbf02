//! The piggyback broadcast queue (memberlist's transmit-limited queue).
//!
//! Every state change a node learns (alive / suspect / dead / user event) is queued as an
//! encoded message part and piggybacked on outgoing probes, acks and gossip rounds. Each
//! part is sent at most `retransmit_mult * ceil(log10(n + 1))` times; parts sent the fewest
//! times go first (newest first among equals). A newer message about the same member
//! replaces the queued one. The queue is bounded: when full, the most-sent part is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::codec::varint_len;

/// Parts skipped for size before [`BroadcastQueue::take`] gives up filling a packet.
const MISFITS_MAX: usize = 8;

/// What a broadcast is about; a newer broadcast with the same key replaces the older.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BroadcastKey {
    /// Member state (alive / suspect / dead).
    Member(String),
    /// A user event `(ltime, name, payload-digest)`.
    Event(u64, String, u64),
}

/// `(transmits, u64::MAX - id)`: position of a part in the send order.
type Slot = (u32, u64);

/// Bounded queue of encoded broadcast parts.
#[derive(Debug, Clone, Default)]
pub struct BroadcastQueue {
    /// `(transmits, MAX - id)` → part: iteration order is "fewest sends, newest first".
    order: BTreeMap<Slot, (BroadcastKey, Arc<[u8]>)>,
    /// Id of each key's part.
    index: BTreeMap<BroadcastKey, u64>,
    /// Transmits of each part, by id (so `take` needs no key lookups).
    transmits: BTreeMap<u64, u32>,
    next_id: u64,
    max: usize,
    dropped: u64,
}

/// Transmit limit for a cluster of `n` members.
pub fn retransmit_limit(retransmit_mult: u32, n: usize) -> u32 {
    let scale = ((n as f64) + 1.0).log10().ceil().max(1.0) as u32;
    retransmit_mult.saturating_mul(scale).max(1)
}

impl BroadcastQueue {
    /// An empty queue holding at most `max` parts.
    pub fn new(max: usize) -> BroadcastQueue {
        BroadcastQueue {
            max: max.max(1),
            ..Default::default()
        }
    }

    /// Queued parts.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Parts dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queue `part` (an encoded message without version byte), replacing any part with the
    /// same key.
    pub fn push(&mut self, key: BroadcastKey, part: Vec<u8>) {
        self.remove(&key);
        self.next_id += 1;
        let id = self.next_id;
        self.index.insert(key.clone(), id);
        self.transmits.insert(id, 0);
        self.order.insert((0, u64::MAX - id), (key, part.into()));
        while self.order.len() > self.max {
            if let Some(((_, inv), (key, _))) = self.order.pop_last() {
                self.index.remove(&key);
                self.transmits.remove(&(u64::MAX - inv));
                self.dropped += 1;
            }
        }
    }

    /// Drop the part queued under `key`, if any.
    pub fn remove(&mut self, key: &BroadcastKey) {
        if let Some(id) = self.index.remove(key) {
            if let Some(t) = self.transmits.remove(&id) {
                self.order.remove(&(t, u64::MAX - id));
            }
        }
    }

    /// Take parts fitting in `space` bytes (each costs its length plus a length varint),
    /// counting one transmission each and retiring parts that reach `limit`.
    pub fn take(&mut self, mut space: usize, limit: u32) -> Vec<Arc<[u8]>> {
        let mut chosen = Vec::new();
        let mut misfits = 0;
        for (slot, (_, part)) in self.order.iter() {
            // Stop when full, or after a run of parts too big for the space left (the
            // queue can be long; scanning all of it for a small part is not worth it).
            if space < 2 || misfits >= MISFITS_MAX {
                break;
            }
            let cost = part.len() + varint_len(part.len());
            if cost <= space {
                space -= cost;
                chosen.push(*slot);
            } else {
                misfits += 1;
            }
        }
        let mut out = Vec::with_capacity(chosen.len());
        for slot in chosen {
            let Some((key, part)) = self.order.remove(&slot) else {
                continue;
            };
            let transmits = slot.0 + 1;
            let id = u64::MAX - slot.1;
            if transmits >= limit {
                self.index.remove(&key);
                self.transmits.remove(&id);
                out.push(part);
            } else {
                out.push(part.clone());
                self.transmits.insert(id, transmits);
                self.order.insert((transmits, slot.1), (key, part));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> BroadcastKey {
        BroadcastKey::Member(s.into())
    }

    #[test]
    fn limits_replaces_and_bounds() {
        assert_eq!(retransmit_limit(4, 1000), 16);
        assert_eq!(retransmit_limit(4, 9), 4);
        let mut q = BroadcastQueue::new(2);
        q.push(k("a"), vec![1; 10]);
        q.push(k("a"), vec![2; 10]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.take(100, 2), vec![Arc::from(vec![2u8; 10])]);
        q.push(k("b"), vec![3; 10]);
        q.push(k("c"), vec![4; 10]);
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped(), 1);
        // Only one fits.
        assert_eq!(q.take(12, 2).len(), 1);
        let _ = q.take(100, 2);
        let _ = q.take(100, 2);
        assert!(q.is_empty());
    }
}

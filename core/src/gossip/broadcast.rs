//! The piggyback broadcast queue (memberlist's transmit-limited queue).
//!
//! Every state change a node learns (alive / suspect / dead / user event) is queued as an
//! encoded message part and piggybacked on outgoing probes, acks and gossip rounds. Each
//! part is sent at most `retransmit_mult * ceil(log10(n + 1))` times; parts sent the fewest
//! times go first (newest first among equals). A newer message about the same member
//! replaces the queued one. The queue is bounded: when full, the most-sent part is dropped.

use std::collections::{BTreeMap, BTreeSet};

use super::codec::varint_len;

/// What a broadcast is about; a newer broadcast with the same key replaces the older.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BroadcastKey {
    /// Member state (alive / suspect / dead).
    Member(String),
    /// A user event `(ltime, name, payload-digest)`.
    Event(u64, String, u64),
}

#[derive(Debug, Clone)]
struct Item {
    part: Vec<u8>,
    transmits: u32,
    id: u64,
}

/// Bounded queue of encoded broadcast parts.
#[derive(Debug, Clone, Default)]
pub struct BroadcastQueue {
    items: BTreeMap<BroadcastKey, Item>,
    order: BTreeSet<(u32, u64, BroadcastKey)>, // (transmits, MAX - id, key)
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
        self.items.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
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
        self.order.insert((0, u64::MAX - id, key.clone()));
        self.items.insert(
            key,
            Item {
                part,
                transmits: 0,
                id,
            },
        );
        while self.items.len() > self.max {
            if let Some(last) = self.order.iter().next_back().cloned() {
                self.order.remove(&last);
                self.items.remove(&last.2);
                self.dropped += 1;
            }
        }
    }

    /// Drop the part queued under `key`, if any.
    pub fn remove(&mut self, key: &BroadcastKey) {
        if let Some(old) = self.items.remove(key) {
            self.order
                .remove(&(old.transmits, u64::MAX - old.id, key.clone()));
        }
    }

    /// Take parts fitting in `space` bytes (each costs its length plus a length varint),
    /// counting one transmission each and retiring parts that reach `limit`.
    pub fn take(&mut self, mut space: usize, limit: u32) -> Vec<Vec<u8>> {
        let mut chosen = Vec::new();
        for (t, inv, key) in self.order.iter() {
            if space < 2 {
                break;
            }
            if let Some(item) = self.items.get(key) {
                let cost = item.part.len() + varint_len(item.part.len());
                if cost <= space {
                    space -= cost;
                    chosen.push((*t, *inv, key.clone()));
                }
            }
        }
        let mut out = Vec::with_capacity(chosen.len());
        for (t, inv, key) in chosen {
            self.order.remove(&(t, inv, key.clone()));
            let Some(item) = self.items.get_mut(&key) else {
                continue;
            };
            out.push(item.part.clone());
            item.transmits += 1;
            if item.transmits >= limit {
                self.items.remove(&key);
            } else {
                self.order.insert((item.transmits, inv, key));
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
        assert_eq!(q.take(100, 2), vec![vec![2; 10]]);
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

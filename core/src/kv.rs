//! The KV index: Consul's key/value table with its index rules.
//!
//! Every index is the Raft index of the write that caused it (Consul's KV index rules):
//! - `CreateIndex` is set when a key is created and kept by every later update;
//! - `ModifyIndex` is the index of the last write that changed the entry; a write that
//!   changes nothing (same value, flags and session) is not a write and leaves it alone;
//! - deletes leave a tombstone `(key, index)` so that the index of a key or a prefix never
//!   goes backwards; tombstones are reaped by a replicated command, and the highest reaped
//!   index becomes a floor under every "not found" index.
//!
//! The index of a read is what a blocking query waits on, and it is computed from exactly
//! what the read covers: a single key's index moves only when that key (or a tombstone
//! reap) changes, so a watcher of a missing key is not woken by writes elsewhere.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Deserialize;
use serde::Serialize;

/// One stored entry, as Consul shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    /// The session holding the lock on this key, if any.
    pub session: Option<String>,
}

/// A write to the KV table. Each variant is applied at one Raft log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Create or update; keeps CreateIndex, LockIndex and the lock holder.
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    /// Check-and-set: `index == 0` creates only if absent; otherwise the key must exist with
    /// `ModifyIndex == index`.
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    /// Delete one key; a missing key is not an error.
    Delete { key: String },
    /// Delete one key only if its ModifyIndex equals `index`. `index == 0` never deletes;
    /// a missing key succeeds (as Consul does).
    DeleteCas { key: String, index: u64 },
    /// Delete every key that starts with `prefix` (byte-wise; the empty prefix is all).
    DeleteTree { prefix: String },
    /// Forget tombstones whose index is at most `up_to`.
    ReapTombstones { up_to: u64 },
}

impl KvOp {
    /// The key (or prefix) this operation touches, for waking blocking queries.
    pub fn touched(&self) -> Option<&str> {
        match self {
            KvOp::Set { key, .. } | KvOp::Cas { key, .. } => Some(key),
            KvOp::Delete { key } | KvOp::DeleteCas { key, .. } => Some(key),
            KvOp::DeleteTree { prefix } => Some(prefix),
            KvOp::ReapTombstones { .. } => None,
        }
    }
}

/// The outcome of a [`KvOp`]: whether its condition held (Consul's `true`/`false`), and
/// whether it changed the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvOutcome {
    pub ok: bool,
    pub changed: bool,
}

/// The KV table with its tombstones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    entries: BTreeMap<String, Entry>,
    /// Deleted keys and the index of their deletion.
    tombstones: BTreeMap<String, u64>,
    /// The highest index among reaped tombstones: a floor under every index a read reports
    /// for something it did not find, so that reaping never moves an index backwards.
    reaped_floor: u64,
    /// Highest index that changed the table (entries, tombstones or reaping).
    table_index: u64,
    /// Sabotage for the simulator: treat identical writes as changes.
    #[cfg(feature = "sabotage")]
    #[serde(skip)]
    noop_bumps_index: bool,
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply `op` at Raft log index `index`. `index` must exceed every index applied
    /// before; the state machine guarantees that.
    pub fn apply(&mut self, index: u64, op: &KvOp) -> KvOutcome {
        debug_assert!(
            index > self.table_index,
            "index {index} not above table index {}",
            self.table_index
        );
        let outcome = match op {
            KvOp::Set { key, value, flags } => self.put(index, key, value, *flags),
            KvOp::Cas {
                key,
                value,
                flags,
                index: expect,
            } => {
                let holds = match self.entries.get(key) {
                    None => *expect == 0,
                    Some(e) => *expect != 0 && e.modify_index == *expect,
                };
                if holds {
                    self.put(index, key, value, *flags)
                } else {
                    KvOutcome {
                        ok: false,
                        changed: false,
                    }
                }
            }
            KvOp::Delete { key } => {
                let changed = self.remove(index, key);
                KvOutcome { ok: true, changed }
            }
            KvOp::DeleteCas { key, index: expect } => match self.entries.get(key) {
                None => KvOutcome {
                    ok: true,
                    changed: false,
                },
                Some(e) if *expect != 0 && e.modify_index == *expect => {
                    let changed = self.remove(index, key);
                    KvOutcome { ok: true, changed }
                }
                Some(_) => KvOutcome {
                    ok: false,
                    changed: false,
                },
            },
            KvOp::DeleteTree { prefix } => {
                let doomed: Vec<String> =
                    self.prefix_range(prefix).map(|(k, _)| k.clone()).collect();
                for key in &doomed {
                    self.remove(index, key);
                }
                KvOutcome {
                    ok: true,
                    changed: !doomed.is_empty(),
                }
            }
            KvOp::ReapTombstones { up_to } => {
                let before = self.tombstones.len();
                let mut floor = self.reaped_floor;
                self.tombstones.retain(|_, at| {
                    if *at <= *up_to {
                        floor = floor.max(*at);
                        false
                    } else {
                        true
                    }
                });
                let changed = self.tombstones.len() != before;
                if changed {
                    self.reaped_floor = floor;
                }
                KvOutcome { ok: true, changed }
            }
        };
        if outcome.changed {
            self.table_index = index;
        }
        outcome
    }

    fn put(&mut self, index: u64, key: &str, value: &[u8], flags: u64) -> KvOutcome {
        let sabotaged = self.sabotaged_noop();
        if let Some(e) = self.entries.get_mut(key) {
            if e.value == value && e.flags == flags && !sabotaged {
                return KvOutcome {
                    ok: true,
                    changed: false,
                };
            }
            e.value = value.to_vec();
            e.flags = flags;
            e.modify_index = index;
        } else {
            self.tombstones.remove(key);
            self.entries.insert(
                key.to_string(),
                Entry {
                    key: key.to_string(),
                    value: value.to_vec(),
                    flags,
                    create_index: index,
                    modify_index: index,
                    lock_index: 0,
                    session: None,
                },
            );
        }
        KvOutcome {
            ok: true,
            changed: true,
        }
    }

    fn remove(&mut self, index: u64, key: &str) -> bool {
        if self.entries.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), index);
            true
        } else {
            false
        }
    }

    fn prefix_range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    fn tombstone_max(&self, prefix: &str) -> u64 {
        self.tombstones
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(0)
    }

    #[cfg(feature = "sabotage")]
    pub fn set_sabotage_noop_bumps_index(&mut self, on: bool) {
        self.noop_bumps_index = on;
    }

    #[cfg(feature = "sabotage")]
    fn sabotaged_noop(&self) -> bool {
        self.noop_bumps_index
    }

    #[cfg(not(feature = "sabotage"))]
    fn sabotaged_noop(&self) -> bool {
        false
    }

    /// One key.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// The index of a read of one key: its ModifyIndex if present, else the index of its
    /// deletion (or the reap floor). Never decreases.
    pub fn key_index(&self, key: &str) -> u64 {
        match self.entries.get(key) {
            Some(e) => e.modify_index,
            None => self
                .tombstones
                .get(key)
                .copied()
                .unwrap_or(0)
                .max(self.reaped_floor),
        }
    }

    /// Every entry under `prefix`, sorted by key, and the index of that read: the highest
    /// ModifyIndex or tombstone under the prefix. Never decreases.
    pub fn list<'a>(&'a self, prefix: &'a str) -> (Vec<&'a Entry>, u64) {
        let entries: Vec<&Entry> = self.prefix_range(prefix).map(|(_, e)| e).collect();
        let index = self.prefix_index_of(prefix, entries.iter().map(|e| e.modify_index));
        (entries, index)
    }

    /// Keys under `prefix`; with a separator, each key is cut after the first separator
    /// that follows the prefix and duplicates are dropped (Consul's `?keys&separator=`).
    pub fn keys(&self, prefix: &str, separator: Option<&str>) -> (Vec<String>, u64) {
        let mut out: Vec<String> = Vec::new();
        let mut max = 0;
        for (k, e) in self.prefix_range(prefix) {
            max = max.max(e.modify_index);
            let cut = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match k[prefix.len()..].find(sep) {
                    Some(at) => &k[..prefix.len() + at + sep.len()],
                    None => k.as_str(),
                },
                None => k.as_str(),
            };
            if out.last().map(String::as_str) != Some(cut) {
                out.push(cut.to_string());
            }
        }
        (out, self.prefix_index_of(prefix, std::iter::once(max)))
    }

    /// The index of a read of `prefix` alone (as a blocking query on it would report).
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        self.prefix_index_of(
            prefix,
            self.prefix_range(prefix).map(|(_, e)| e.modify_index),
        )
    }

    fn prefix_index_of(&self, prefix: &str, modify: impl Iterator<Item = u64>) -> u64 {
        modify
            .max()
            .unwrap_or(0)
            .max(self.tombstone_max(prefix))
            .max(self.reaped_floor)
    }

    /// Highest index that changed anything in the table.
    pub fn table_index(&self) -> u64 {
        self.table_index
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Check the index rules over the whole table; returns the first violation.
    pub fn check_invariants(&self, applied: u64) -> Result<(), String> {
        for (k, e) in &self.entries {
            if &e.key != k {
                return Err(format!("entry under {k:?} names {:?}", e.key));
            }
            if e.create_index > e.modify_index {
                return Err(format!(
                    "{k}: CreateIndex {} > ModifyIndex {}",
                    e.create_index, e.modify_index
                ));
            }
            if e.modify_index > self.table_index {
                return Err(format!(
                    "{k}: ModifyIndex {} > table index {}",
                    e.modify_index, self.table_index
                ));
            }
            if self.tombstones.contains_key(k) {
                return Err(format!("{k}: both live and tombstoned"));
            }
        }
        if let Some((k, at)) = self
            .tombstones
            .iter()
            .find(|(_, at)| **at > self.table_index)
        {
            return Err(format!(
                "tombstone {k} at {at} > table index {}",
                self.table_index
            ));
        }
        if self.table_index > applied {
            return Err(format!(
                "table index {} > applied {applied}",
                self.table_index
            ));
        }
        Ok(())
    }
}

/// Check one applied operation against Consul's index rules, given the entry for
/// its key before and after. Deletes and tree operations are checked by the table
/// invariants instead.
pub fn check_transition(
    index: u64,
    op: &KvOp,
    before: Option<&Entry>,
    after: Option<&Entry>,
) -> Result<(), String> {
    let (key, value, flags) = match op {
        KvOp::Set { key, value, flags }
        | KvOp::Cas {
            key, value, flags, ..
        } => (key, value, *flags),
        KvOp::Delete { key } => {
            return match after {
                Some(_) => Err(format!("{key}: still present after delete at {index}")),
                None => Ok(()),
            };
        }
        _ => return Ok(()),
    };
    let Some(a) = after else {
        return match before {
            Some(_) => Err(format!("{key}: vanished on a write at {index}")),
            None => Ok(()), // a failed cas on a missing key
        };
    };
    if a.create_index > a.modify_index || a.modify_index > index {
        return Err(format!(
            "{key}: CreateIndex {} ModifyIndex {} at write {index}",
            a.create_index, a.modify_index
        ));
    }
    match before {
        None if a.create_index != index || a.modify_index != index => Err(format!(
            "{key}: created at {index} with CreateIndex {} ModifyIndex {}",
            a.create_index, a.modify_index
        )),
        None => Ok(()),
        Some(b) if a.create_index != b.create_index => Err(format!(
            "{key}: CreateIndex moved from {} to {} at {index}",
            b.create_index, a.create_index
        )),
        Some(b) if b.value == *value && b.flags == flags && a != b => Err(format!(
            "{key}: identical write at {index} changed the entry (ModifyIndex {} -> {})",
            b.modify_index, a.modify_index
        )),
        Some(b) if a != b && a.modify_index != index => Err(format!(
            "{key}: changed at {index} but ModifyIndex is {}",
            a.modify_index
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
#[path = "kv_test.rs"]
mod kv_test;

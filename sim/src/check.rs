//! Invariants observed while the cluster runs, and the trace hash.
//!
//! - Election safety (Raft §5.2): at most one leader per term.
//! - State machine safety (Raft §5.4.3): no two servers apply different entries at one index.
//! - Leader completeness for clients: every acknowledged write is the entry at its index.
//! - KV index rules (Consul's KV docs, spec §3.5): checked on every applied write.
//! - At the end: every server's applied state is identical at equal index.

use std::collections::BTreeMap;

use openraft::EntryPayload;
use tribune_core::raft::store::Applied;
use tribune_core::raft::NodeId;

/// FNV-1a, 64 bits: a stable hash for traces and digests.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Default)]
pub struct Recorder {
    /// index → (digest of the entry, digest of its command, first server that applied it)
    committed: BTreeMap<u64, (u64, Option<u64>, NodeId)>,
    /// term → leader
    leaders: BTreeMap<u64, NodeId>,
    pub violations: Vec<String>,
    pub applied_entries: u64,
    /// Distinct membership entries committed (the initial one and every change).
    pub membership_entries: u64,
    /// A running hash of what servers applied, in order (part of the trace).
    pub trace: Fnv,
}

impl Recorder {
    pub fn applied(&mut self, node: NodeId, a: &Applied<'_>) {
        let digest = digest_payload(&a.entry.payload);
        self.applied_entries += 1;
        self.trace.u64(node).u64(a.index).u64(digest);
        if let Some(v) = &a.violation {
            self.violate(format!(
                "index rule broken on server {node} at {}: {v}",
                a.index
            ));
        }
        match self.committed.get(&a.index) {
            Some((d, _, first)) if *d != digest => {
                let msg = format!(
                    "state machine safety: servers {first} and {node} applied different entries \
                    at index {}",
                    a.index,
                );
                self.violate(msg);
            }
            Some(_) => {}
            None => {
                let command = match &a.entry.payload {
                    EntryPayload::Normal(r) => Some(digest_command(&r.cmd)),
                    _ => None,
                };
                self.committed.insert(a.index, (digest, command, node));
                if matches!(a.entry.payload, EntryPayload::Membership(_)) {
                    self.membership_entries += 1;
                }
            }
        }
    }

    pub fn leader(&mut self, term: u64, node: NodeId) {
        match self.leaders.get(&term) {
            Some(other) if *other != node => self.violate(format!(
                "election safety: servers {other} and {node} both led term {term}"
            )),
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
    }

    /// An acknowledged write must be the entry applied at its index.
    pub fn acked(&mut self, index: u64, command: &tribune_core::fsm::Command) {
        let digest = digest_command(command);
        match self.committed.get(&index) {
            Some((_, Some(d), _)) if *d == digest => {}
            Some(_) => self.violate(format!(
                "acknowledged write lost: index {index} holds another entry"
            )),
            None => self.violate(format!(
                "acknowledged write lost: no server applied index {index}"
            )),
        }
    }

    pub fn violate(&mut self, msg: String) {
        if self.violations.len() < 16 && !self.violations.contains(&msg) {
            self.violations.push(msg);
        }
    }

    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }
}

pub fn digest_command(c: &tribune_core::fsm::Command) -> u64 {
    Fnv::default().bytes(&crate::net::encode(c)).finish()
}

pub fn digest_payload(p: &tribune_core::raft::Payload) -> u64 {
    let mut h = Fnv::default();
    match p {
        EntryPayload::Blank => h.bytes(b"blank"),
        EntryPayload::Normal(r) => h.bytes(&crate::net::encode(r)),
        EntryPayload::Membership(m) => h.bytes(format!("{m:?}").as_bytes()),
    };
    h.finish()
}

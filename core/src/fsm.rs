//! The replicated state machine: `apply(log_index, Request) -> Response`.
//!
//! Deterministic: the same requests at the same indexes give the same state and the same
//! responses on every server. It is the only writer of indexes.
//!
//! Each write carries a client id and a per-client sequence number. A client that timed
//! out does not know whether its write committed; when it retries with the same
//! `(client, seq)`, the state machine answers from its record of the first application
//! instead of applying the write twice. The record keeps the latest sequence number per
//! client, for at most [`DEDUP_CLIENTS_MAX`] clients (the least recently seen is evicted).
//! A client's first write has `seq == 1`; a write with a higher sequence number from a
//! client the table does not know comes from an evicted client and is refused with
//! [`Response::Expired`], never re-applied.
//!
//! A retry of a client's very first write after that client was evicted looks like a new
//! client's first write. Each request therefore carries `opened_at`, the index its server
//! had applied when it opened the client id (always below the index the first write gets),
//! and the table keeps the eviction horizon: the highest index any evicted client last
//! wrote at. A first write opened below the horizon may be such a retry and is refused with
//! `Expired` (its submitter opens a fresh id and tries again, since a first attempt refused
//! was not applied).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::catalog::Catalog;
use crate::catalog::CatalogChange;
use crate::catalog::CatalogError;
use crate::catalog::CatalogOp;
use crate::kv::KvOp;
use crate::kv::KvOutcome;
use crate::kv::KvStore;

/// How many clients' last sequence numbers the dedup table holds.
pub const DEDUP_CLIENTS_MAX: usize = 16_384;

/// A write submitted to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Who sent it; 0 means "no dedup" (internal commands).
    pub client: u64,
    /// Per-client sequence number, increasing with every new write of that client.
    pub seq: u64,
    /// The index the submitting server had applied when it opened this client id.
    pub opened_at: u64,
    pub cmd: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Kv(KvOp),
    Catalog(CatalogOp),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The result of a KV write, and the index it was applied at.
    Kv { outcome: KvOutcome, index: u64 },
    /// A retry of a request older than the client's last one, or of an evicted client:
    /// it was not applied now, and its first outcome is unknown here.
    Expired,
    /// A log entry that carries no command (blank or membership).
    Empty,
    /// The result of a catalog write (what it changed, or why it was refused), and the
    /// index it was applied at. Last, so that snapshots of version 1 (whose dedup records
    /// hold responses) still decode.
    Catalog {
        result: Result<CatalogChange, CatalogError>,
        index: u64,
    },
}

/// Deliberately wrong behaviour, compiled in only for the simulator, so that its checks
/// can prove they catch real bugs.
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sabotage {
    /// Bump ModifyIndex on writes that change nothing.
    pub noop_bumps_index: bool,
    /// Forget the dedup table: retried writes are applied again.
    pub no_dedup: bool,
    /// Take every unknown client's first write as new, ignoring the eviction horizon: a
    /// retried first write of an evicted client is applied again.
    pub no_eviction_horizon: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    seq: u64,
    response: Response,
    /// Log index of the last request from this client (eviction order).
    last_index: u64,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    kv: KvStore,
    last_applied: u64,
    clients: BTreeMap<u64, ClientRecord>,
    /// Eviction order of `clients`: last_index -> client.
    clients_by_index: BTreeMap<u64, u64>,
    /// The highest index an evicted client last wrote at (see the module docs).
    evicted_upto: u64,
    catalog: Catalog,
    #[cfg(feature = "sabotage")]
    #[serde(skip)]
    pub sabotage: Sabotage,
    /// The dedup table's size if not [`DEDUP_CLIENTS_MAX`]: the simulator's few clients
    /// reach eviction only with a small one. Every server of a cluster must use the same.
    #[serde(skip)]
    pub dedup_clients_max: Option<usize>,
}

impl StateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// Record a log entry that carries no command.
    pub fn apply_empty(&mut self, index: u64) {
        assert!(
            index > self.last_applied,
            "entry {index} applied after {}",
            self.last_applied
        );
        self.last_applied = index;
    }

    /// Apply one request at `index`, which must be above every index applied before.
    pub fn apply(&mut self, index: u64, req: &Request) -> Response {
        assert!(
            index > self.last_applied,
            "entry {index} applied after {}",
            self.last_applied
        );
        self.last_applied = index;
        if req.client != 0 && !self.dedup_disabled() {
            if let Some(rec) = self.clients.get(&req.client) {
                if req.seq == rec.seq {
                    return rec.response.clone();
                }
                if req.seq < rec.seq {
                    return Response::Expired;
                }
            } else if req.seq > 1 || req.opened_at < self.eviction_horizon() {
                return Response::Expired;
            }
        }
        let response = match &req.cmd {
            Command::Kv(op) => {
                let outcome = self.apply_kv(index, op);
                Response::Kv { outcome, index }
            }
            Command::Catalog(op) => Response::Catalog {
                result: self.catalog.apply(index, op),
                index,
            },
        };
        if req.client != 0 {
            self.remember(req.client, req.seq, response.clone(), index);
        }
        response
    }

    /// [`StateMachine::apply`], then check the write against the index rules and the
    /// table invariants; the simulator runs every entry through this.
    pub fn apply_checked(&mut self, index: u64, req: &Request) -> (Response, Result<(), String>) {
        let Command::Kv(op) = &req.cmd else {
            let response = self.apply(index, req);
            return (response, self.check_invariants());
        };
        let key = match op {
            KvOp::Set { key, .. }
            | KvOp::Cas { key, .. }
            | KvOp::Delete { key }
            | KvOp::DeleteCas { key, .. } => Some(key.clone()),
            _ => None,
        };
        let before = key.as_ref().and_then(|k| self.kv.get(k).cloned());
        let response = self.apply(index, req);
        let applied_now = matches!(response, Response::Kv { index: at, .. } if at == index);
        let mut verdict = self.check_invariants();
        if let (Some(k), true, Ok(())) = (&key, applied_now, &verdict) {
            verdict = crate::kv::check_transition(index, op, before.as_ref(), self.kv.get(k));
        }
        (response, verdict)
    }

    fn apply_kv(&mut self, index: u64, op: &KvOp) -> KvOutcome {
        #[cfg(feature = "sabotage")]
        self.kv
            .set_sabotage_noop_bumps_index(self.sabotage.noop_bumps_index);
        self.kv.apply(index, op)
    }

    #[cfg(feature = "sabotage")]
    fn eviction_horizon(&self) -> u64 {
        match self.sabotage.no_eviction_horizon {
            true => 0,
            false => self.evicted_upto,
        }
    }

    #[cfg(not(feature = "sabotage"))]
    fn eviction_horizon(&self) -> u64 {
        self.evicted_upto
    }

    #[cfg(feature = "sabotage")]
    fn dedup_disabled(&self) -> bool {
        self.sabotage.no_dedup
    }

    #[cfg(not(feature = "sabotage"))]
    fn dedup_disabled(&self) -> bool {
        false
    }

    fn remember(&mut self, client: u64, seq: u64, response: Response, index: u64) {
        if let Some(old) = self.clients.insert(
            client,
            ClientRecord {
                seq,
                response,
                last_index: index,
            },
        ) {
            self.clients_by_index.remove(&old.last_index);
        }
        self.clients_by_index.insert(index, client);
        while self.clients.len() > self.dedup_clients_max.unwrap_or(DEDUP_CLIENTS_MAX) {
            let Some((last_index, oldest)) = self.clients_by_index.pop_first() else {
                break;
            };
            self.clients.remove(&oldest);
            self.evicted_upto = self.evicted_upto.max(last_index);
        }
    }

    /// Check every invariant of the state; returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.check_invariants(self.last_applied)?;
        self.catalog.check_invariants(self.last_applied)?;
        if self.clients.len() != self.clients_by_index.len() {
            return Err("dedup table and its eviction order disagree".into());
        }
        Ok(())
    }

    /// Serialize the whole state with a versioned header.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.kv.len() * 64);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        let body = postcard::to_allocvec(self).expect("state machine serializes");
        out.extend_from_slice(&body);
        out
    }

    /// Rebuild a state from [`StateMachine::snapshot`]'s output.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let header = SNAPSHOT_MAGIC.len() + 4;
        if bytes.len() < header || &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let version = u32::from_be_bytes(
            bytes[SNAPSHOT_MAGIC.len()..header]
                .try_into()
                .expect("4 bytes"),
        );
        let body = &bytes[header..];
        let decode = |e: postcard::Error| SnapshotError::Decode(e.to_string());
        let sm: StateMachine = match version {
            SNAPSHOT_VERSION => postcard::from_bytes(body).map_err(decode)?,
            1 => postcard::from_bytes::<StateV1>(body)
                .map_err(decode)?
                .into(),
            v => return Err(SnapshotError::Version(v)),
        };
        sm.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(sm)
    }
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"TRIBSNAP";
/// Version 2 added the catalog; version 1 snapshots are still read.
const SNAPSHOT_VERSION: u32 = 2;

/// A version 1 snapshot's state: everything but the catalog.
#[derive(Deserialize)]
struct StateV1 {
    kv: KvStore,
    last_applied: u64,
    clients: BTreeMap<u64, ClientRecord>,
    clients_by_index: BTreeMap<u64, u64>,
    evicted_upto: u64,
}

impl From<StateV1> for StateMachine {
    fn from(v: StateV1) -> Self {
        StateMachine {
            kv: v.kv,
            last_applied: v.last_applied,
            clients: v.clients,
            clients_by_index: v.clients_by_index,
            evicted_upto: v.evicted_upto,
            ..StateMachine::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Tribune snapshot")]
    NotASnapshot,
    #[error("snapshot format version {0} is not supported")]
    Version(u32),
    #[error("snapshot does not decode: {0}")]
    Decode(String),
    #[error("snapshot state is inconsistent: {0}")]
    Invalid(String),
}

#[cfg(test)]
#[path = "fsm_test.rs"]
mod fsm_test;

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} seq {}: {:?}", self.client, self.seq, self.cmd)
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

//! The storage seam between the HTTP API / watches and replication.
//!
//! [`Store`] is what the API needs from a replicated state machine: apply a write and learn
//! its outcome and index, read the state in a consistency mode, and have blocking queries
//! woken by writes (through the [`Hub`]). [`DevStore`] is the single-node in-memory store
//! behind `tribune agent -dev`; the Raft store implements the same trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::RwLock;

use tribune_core::fsm::Command;
use tribune_core::fsm::Request;
use tribune_core::fsm::Response;
use tribune_core::fsm::StateMachine;

use crate::hub::Hub;
use crate::hub::Touched;
use crate::metrics::Metric;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Consul's read consistency modes (`?consistent`, `?stale`, or neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Default,
    Consistent,
    Stale,
}

impl Consistency {
    /// The `X-Consul-Effective-Consistency` value.
    pub fn header(self) -> &'static str {
        match self {
            Consistency::Default => "leader",
            Consistency::Consistent => "consistent",
            Consistency::Stale => "stale",
        }
    }
}

/// What a read reports besides its result (`X-Consul-KnownLeader`, `X-Consul-LastContact`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMeta {
    pub known_leader: bool,
    pub last_contact_ms: u64,
}

/// Why the store did not do what it was asked, by what the caller can do about it. The
/// HTTP API answers each with a 500 and this text (Consul's, where Consul has one).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No leader is known: nothing was done; retry once one is elected.
    #[error("No cluster leader")]
    NoLeader,
    /// A leader may have applied the write, and this server cannot find out: read the
    /// state before writing it again.
    #[error("the outcome of the write is unknown: {0}")]
    Indeterminate(&'static str),
    /// This server's Raft refused or failed the request (it is shutting down, or its
    /// storage failed); for a write, nothing was applied: try another server.
    #[error("{0}")]
    Raft(String),
    /// No server of the Raft configuration has that id or address: nothing to remove.
    #[error("address {0:?} was not found in the Raft configuration")]
    NoSuchServer(String),
    /// A single-node agent has no Raft configuration to change.
    #[error("no Raft server {0} on a single-node agent")]
    SingleNode(String),
    /// The leader refused a change this server forwarded to it; its text (Consul's) says
    /// why.
    #[error("{0}")]
    Refused(String),
    /// A change could not be forwarded to the leader (it is unreachable, or did not serve
    /// the call): retry, perhaps once a new leader is known.
    #[error("removing {peer}: {source}")]
    Unforwarded {
        peer: String,
        #[source]
        source: std::io::Error,
    },
}

/// One server of the Raft configuration, as `/v1/operator/raft/configuration` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServer {
    /// Its Raft id, if the store knows it.
    pub id: Option<u64>,
    /// Its server RPC address (`ip:port`).
    pub address: String,
    /// A voter, or a learner (non-voter).
    pub voter: bool,
}

/// A replicated (or dev, single-node) state machine as the API sees it. Object safe: the
/// agent holds an `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Apply a command through the log. The store assigns the client id / sequence number
    /// (dedup of its own retries) and the log index; the response carries the index. After
    /// the state machine applied it, the store must `hub().publish(index, &Touched::of(op))`
    /// for every write whose outcome `changed` (on every node that applies it).
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<Response, StoreError>>;

    /// Make a read in `mode` safe to serve from the local state machine (Default: be the
    /// leader or forward; Consistent: confirm leadership / read index and wait for apply;
    /// Stale: nothing), and report the read's metadata. Called before every (re-)read.
    fn read_barrier(&self, mode: Consistency) -> BoxFuture<'_, Result<ReadMeta, StoreError>>;

    /// Run `f` on the local state machine (under its lock; keep `f` short).
    fn with_state(&self, f: &mut dyn FnMut(&StateMachine));

    /// The change hub the store publishes applied writes to.
    fn hub(&self) -> &Hub;

    /// The leader's server RPC address (`ip:port`), if one is known.
    fn leader(&self) -> Option<String>;

    /// The server RPC addresses of the voters.
    fn peers(&self) -> Vec<String>;

    /// Every server of the Raft configuration, voters and learners.
    ///
    /// The default knows only what [`Store::peers`] tells: the voters, by address, their
    /// Raft ids unknown (the API then looks them up in the servers' gossip tags). The Raft
    /// store lists its membership config: every node's Raft id and address, learners too.
    fn raft_servers(&self) -> Vec<RaftServer> {
        let voter = |address| RaftServer {
            id: None,
            address,
            voter: true,
        };
        self.peers().into_iter().map(voter).collect()
    }

    /// `Stats.raft` entries of `/v1/agent/self` beyond the applied index (state, term, ...).
    fn raft_stats(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The store's own metrics (Raft commit latency, leader changes, ...).
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }

    /// Remove a server from the Raft configuration (`DELETE /v1/operator/raft/peer`),
    /// named by its RPC address (`ip:port`) or its Raft id.
    fn remove_peer(&self, peer: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Err(StoreError::SingleNode(peer)) })
    }
}

/// Read the state in `mode`: barrier, then `f` on the state machine.
pub async fn read<R>(
    store: &dyn Store,
    mode: Consistency,
    f: impl FnOnce(&StateMachine) -> R,
) -> Result<(R, ReadMeta), StoreError> {
    let meta = store.read_barrier(mode).await?;
    let mut f = Some(f);
    let mut out = None;
    store.with_state(&mut |sm| {
        if let Some(f) = f.take() {
            out = Some(f(sm));
        }
    });
    Ok((out.expect("with_state ran the closure"), meta))
}

/// Single-node, in-memory store: the leader at once, every write applied directly.
pub struct DevStore {
    sm: RwLock<StateMachine>,
    seq: Mutex<u64>,
    hub: Hub,
    rpc_addr: String,
}

/// The client id the dev store writes under (dedup is moot on one node, but the state
/// machine sees the same shape of requests as under Raft).
const DEV_CLIENT: u64 = 1;

impl DevStore {
    /// `rpc_addr` is what `/v1/status/leader` reports (`127.0.0.1:8300`).
    pub fn new(rpc_addr: String) -> Self {
        let mut sm = StateMachine::new();
        // Index 1 is Consul's raft configuration entry: the first write gets index 2.
        sm.apply_empty(1);
        DevStore {
            sm: RwLock::new(sm),
            seq: Mutex::new(0),
            hub: Hub::new(),
            rpc_addr,
        }
    }

    fn apply(&self, cmd: Command) -> Response {
        let kv_touched = match &cmd {
            Command::Kv(op) => Some(Touched::of(op)),
            Command::Catalog(_) => None,
        };
        let response = {
            let mut seq = self.seq.lock().unwrap_or_else(PoisonError::into_inner);
            let mut sm = self.sm.write().unwrap_or_else(PoisonError::into_inner);
            *seq += 1;
            let index = sm.last_applied() + 1;
            sm.apply(
                index,
                &Request {
                    client: DEV_CLIENT,
                    seq: *seq,
                    opened_at: 0,
                    cmd,
                },
            )
        };
        match (&response, kv_touched) {
            (Response::Kv { outcome, index }, Some(touched)) if outcome.changed => {
                self.hub.publish(*index, &touched);
            }
            (
                Response::Catalog {
                    result: Ok(change),
                    index,
                },
                _,
            ) if change.changed() => {
                self.hub.publish(*index, &Touched::Catalog(change.clone()));
            }
            _ => {}
        }
        response
    }
}

impl Store for DevStore {
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<Response, StoreError>> {
        let r = self.apply(cmd);
        Box::pin(async move { Ok(r) })
    }

    fn read_barrier(&self, _mode: Consistency) -> BoxFuture<'_, Result<ReadMeta, StoreError>> {
        Box::pin(async {
            Ok(ReadMeta {
                known_leader: true,
                last_contact_ms: 0,
            })
        })
    }

    fn with_state(&self, f: &mut dyn FnMut(&StateMachine)) {
        f(&self.sm.read().unwrap_or_else(PoisonError::into_inner));
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn leader(&self) -> Option<String> {
        Some(self.rpc_addr.clone())
    }

    fn peers(&self) -> Vec<String> {
        vec![self.rpc_addr.clone()]
    }

    /// Itself, the only voter; with no Raft underneath it has no Raft id.
    fn raft_servers(&self) -> Vec<RaftServer> {
        vec![RaftServer {
            id: None,
            address: self.rpc_addr.clone(),
            voter: true,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Topic;
    use tribune_core::kv::KvOp;

    fn set(k: &str, v: &str) -> Command {
        Command::Kv(KvOp::Set {
            key: k.into(),
            value: v.as_bytes().to_vec(),
            flags: 0,
        })
    }

    #[tokio::test]
    async fn first_write_is_index_2_and_publishes_changes_only() {
        let s = DevStore::new("127.0.0.1:8300".into());
        let mut sub = s.hub().subscribe(Topic::Key("a".into()));
        let r = s.write(set("a", "1")).await.unwrap();
        let Response::Kv { outcome, index } = r else {
            panic!("{r:?}")
        };
        assert!(outcome.ok && outcome.changed);
        assert_eq!(index, 2);
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_millis(50), sub.changed()).await,
            Ok(2)
        );
        // Identical write: applied at a new index but changes nothing and wakes nobody.
        let r = s.write(set("a", "1")).await.unwrap();
        assert!(matches!(r, Response::Kv { outcome, index: 3 } if !outcome.changed));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), sub.changed())
                .await
                .is_err()
        );
        let (idx, meta) = read(&s, Consistency::Default, |sm| sm.kv().key_index("a"))
            .await
            .unwrap();
        assert_eq!(idx, 2);
        assert!(meta.known_leader);
    }
}

/// Decides when tombstones are old enough to reap (Consul keeps them `tombstone_ttl`, 15
/// minutes, so blocking clients see deletes; then the leader reaps them through the log).
/// Pure: the caller feeds it the time and the applied index.
#[derive(Debug)]
pub struct Reaper {
    ttl: std::time::Duration,
    /// (time, applied index) checkpoints, oldest first.
    marks: std::collections::VecDeque<(std::time::Duration, u64)>,
    reaped: u64,
}

impl Reaper {
    pub fn new(ttl: std::time::Duration) -> Self {
        Reaper {
            ttl,
            marks: Default::default(),
            reaped: 0,
        }
    }

    /// Record that `applied` was the applied index at `now`; returns the index up to which
    /// tombstones may now be reaped, if that moved.
    pub fn tick(&mut self, now: std::time::Duration, applied: u64) -> Option<u64> {
        self.marks.push_back((now, applied));
        let mut up_to = None;
        while let Some(&(t, idx)) = self.marks.front() {
            if now.saturating_sub(t) >= self.ttl {
                up_to = Some(idx);
                self.marks.pop_front();
            } else {
                break;
            }
        }
        match up_to {
            Some(i) if i > self.reaped => {
                self.reaped = i;
                Some(i)
            }
            _ => None,
        }
    }
}

/// Run the reaper against `store` every `every` while this node is the leader at `own_rpc`.
pub async fn reap_tombstones(
    store: std::sync::Arc<dyn Store>,
    own_rpc: String,
    ttl: std::time::Duration,
    every: std::time::Duration,
) {
    let start = tokio::time::Instant::now();
    let mut reaper = Reaper::new(ttl);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let mut applied = 0;
        let mut tombstones = 0;
        store.with_state(&mut |sm| {
            applied = sm.last_applied();
            tombstones = sm.kv().tombstone_count();
        });
        let Some(up_to) = reaper.tick(start.elapsed(), applied) else {
            continue;
        };
        if tombstones == 0 || store.leader().as_deref() != Some(own_rpc.as_str()) {
            continue;
        }
        match store
            .write(Command::Kv(tribune_core::kv::KvOp::ReapTombstones {
                up_to,
            }))
            .await
        {
            Ok(_) => tracing::debug!(up_to, "kv: reaped tombstones"),
            Err(e) => tracing::warn!(error = %e, "kv: tombstone reap failed"),
        }
    }
}

/// The single-node agent's catalog (`-dev`): it is its own leader and has no gossip pool,
/// so it registers itself, as the only member, by the decision a server leader makes for
/// its pool ([`tribune_core::cluster::catalog_sync::catalog_ops`]), every `every`.
pub async fn dev_catalog_sync(
    store: std::sync::Arc<dyn Store>,
    me: tribune_core::gossip::MemberInfo,
    datacenter: String,
    every: std::time::Duration,
) {
    use tribune_core::cluster::catalog_sync;
    let mut tick = tokio::time::interval(every);
    let members = [me];
    loop {
        tick.tick().await;
        let mut ops = Vec::new();
        store.with_state(&mut |sm| {
            ops = catalog_sync::catalog_ops(&members, sm.catalog(), &datacenter);
        });
        for op in ops.into_iter().take(catalog_sync::CATALOG_OPS_PER_ROUND) {
            if let Err(e) = store.write(Command::Catalog(op)).await {
                tracing::warn!(error = %e, "catalog: registering the agent failed");
            }
        }
    }
}

#[cfg(test)]
mod reaper_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reaps_only_what_is_older_than_ttl() {
        let mut r = Reaper::new(Duration::from_secs(900));
        assert_eq!(r.tick(Duration::from_secs(0), 10), None);
        assert_eq!(r.tick(Duration::from_secs(300), 20), None);
        assert_eq!(r.tick(Duration::from_secs(899), 30), None);
        assert_eq!(r.tick(Duration::from_secs(900), 40), Some(10));
        assert_eq!(r.tick(Duration::from_secs(1250), 40), Some(20));
        // Nothing new: no second reap at the same index.
        assert_eq!(r.tick(Duration::from_secs(1260), 40), None);
    }

    #[tokio::test]
    async fn reap_through_the_store_wakes_and_forgets() {
        let s = DevStore::new("a:1".into());
        s.write(Command::Kv(tribune_core::kv::KvOp::Set {
            key: "k".into(),
            value: vec![1],
            flags: 0,
        }))
        .await
        .unwrap();
        s.write(Command::Kv(tribune_core::kv::KvOp::Delete {
            key: "k".into(),
        }))
        .await
        .unwrap();
        let mut n = 0;
        s.with_state(&mut |sm| n = sm.kv().tombstone_count());
        assert_eq!(n, 1);
        let mut sub = s
            .hub()
            .subscribe(crate::hub::Topic::Key("unrelated".into()));
        s.write(Command::Kv(tribune_core::kv::KvOp::ReapTombstones {
            up_to: 3,
        }))
        .await
        .unwrap();
        s.with_state(&mut |sm| n = sm.kv().tombstone_count());
        assert_eq!(n, 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sub.changed())
                .await
                .is_ok(),
            "a reap wakes every watcher"
        );
    }
}

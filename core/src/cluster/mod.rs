//! The cluster engine: what a Tribune server does around openraft, written once and run by
//! both shells (the agent over tokio and TCP, the simulator over madsim).
//!
//! - [`Server::write`]: the client write path. Every write carries a `(client, seq)` id
//!   from a *lane* (one client id whose sequence numbers are used one at a time), so the
//!   state machine applies a retried write at most once; a follower forwards to the leader
//!   and retries the same request until the deadline.
//! - [`Server::read_barrier`]: a linearizable read's barrier: ReadIndex on the leader; on a
//!   follower, ask the leader for the read index and wait until it is applied here.
//! - [`Server::handle`]: requests from other servers ([`PeerRpc`]).
//! - [`Server::form_cluster`], [`Server::reconcile`], [`Server::leave`]: Consul's
//!   `bootstrap_expect`, the leader's coupling of the authenticated LAN gossip pool to the
//!   Raft configuration, and a graceful leave (see `membership.rs`). The same loop keeps
//!   the catalog in step with the pool ([`catalog_sync`]).
//!
//! Generic over openraft's type config (its `AsyncRuntime` gives time, sleep and spawn), a
//! [`PeerTransport`] and a [`Discovery`] (the LAN pool and the join addresses). Nothing here
//! opens a socket or reads a clock of its own.

pub mod bootstrap;
pub mod catalog_sync;
mod membership;
mod write;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftStateMachine;
use openraft::AsyncRuntime;
use openraft::Instant;
use openraft::RaftMetrics;
use openraft::RaftTypeConfig;
use openraft::ReadPolicy;

use crate::gossip::MemberInfo;
use crate::raft::rpc::Hello;
use crate::raft::rpc::PeerReply;
use crate::raft::rpc::PeerRpc;
use crate::raft::rpc::PeerTransport;
use crate::raft::NodeId;
use crate::raft::Types;

pub use membership::is_server_of;
pub use membership::rpc_addr_of;
pub use membership::MembershipError;
pub use write::WriteError;

/// How the engine reads the catalog of its server's state machine (the shell knows where
/// that lives): it calls the function it is given with the catalog, under the state lock.
pub type CatalogReader = Arc<dyn Fn(&mut dyn FnMut(&crate::catalog::Catalog)) + Send + Sync>;

/// What the engine learns of the world around the server.
pub trait Discovery: Send + Sync + 'static {
    /// The members of the LAN gossip pool (they hold the gossip key), or `None` while this
    /// server has no pool (not started yet, or gossip is off).
    fn lan_members(&self) -> Option<Vec<MemberInfo>>;
    /// Server-RPC addresses to say hello to while forming the cluster: the configured join
    /// addresses, resolved now.
    fn join_addrs(&self) -> impl Future<Output = Vec<String>> + Send;
}

/// Deliberately wrong variants of the engine, compiled in only for the simulator, so that
/// its checks can prove they catch real bugs.
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sabotage {
    /// Answer linearizable reads from local state, without a read barrier.
    pub stale_read: bool,
    /// The leader acknowledges a write as soon as it is submitted, before it commits.
    pub ack_before_commit: bool,
    /// Keep using a write lane whose client id the dedup table evicted.
    pub lane_poison: bool,
    /// Answer Raft messages meant for another server id.
    pub ignore_target: bool,
    /// Remove voters without checking that the rest keep a working majority.
    pub unguarded_removal: bool,
    /// Bootstrap without claims: every server that found `expect` servers initializes
    /// Raft with all it found.
    pub no_claim: bool,
    /// The catalog reconcile never marks a registered node alive again: a member that
    /// failed and came back keeps a critical `serfHealth`.
    pub stale_serf_health: bool,
}

/// A server's identity and the engine's timing.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub id: NodeId,
    /// The server-RPC address peers reach this server at (`ip:port`).
    pub rpc_addr: String,
    pub name: String,
    pub datacenter: String,
    /// Whether this server takes part in LAN gossip (then forming waits for the pool).
    pub gossip: bool,
    /// How long a write or a read barrier may take, forwarding and retries included.
    pub request_deadline: Duration,
    /// One forwarded request's wait.
    pub forward_ttl: Duration,
    /// How long to wait for a peer's hello.
    pub hello_ttl: Duration,
    /// The first client id of this server's write lanes. Pick it at random (the shell's
    /// randomness): lanes of different servers and incarnations must not share ids.
    pub first_client: u64,
    #[cfg(feature = "sabotage")]
    pub sabotage: Sabotage,
}

impl ServerConfig {
    /// Production timing: writes and barriers within 10 s, forwarded calls within 3 s.
    pub fn new(
        id: NodeId,
        rpc_addr: String,
        name: String,
        datacenter: String,
        first_client: u64,
    ) -> Self {
        Self {
            id,
            rpc_addr,
            name,
            datacenter,
            gossip: true,
            request_deadline: Duration::from_secs(10),
            forward_ttl: Duration::from_secs(3),
            hello_ttl: Duration::from_secs(2),
            first_client,
            #[cfg(feature = "sabotage")]
            sabotage: Sabotage::default(),
        }
    }
}

/// Whether a snapshot is due: at least `threshold` entries applied since the last one.
pub fn snapshot_due(applied: Option<u64>, snapshot: Option<u64>, threshold: u64) -> bool {
    let since = applied.unwrap_or(0).saturating_sub(snapshot.unwrap_or(0));
    applied.is_some() && since >= threshold
}

/// The reason a linearizable read could not be made safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader confirmed its leadership before the deadline. Nothing was read; the caller
    /// may retry.
    #[error("No cluster leader")]
    NoLeader,
}

pub(crate) type Rt<C> = <C as RaftTypeConfig>::AsyncRuntime;

pub(crate) fn now<C: Types>() -> <Rt<C> as AsyncRuntime>::Instant {
    <<Rt<C> as AsyncRuntime>::Instant as Instant>::now()
}

pub(crate) async fn sleep<C: Types>(d: Duration) {
    Rt::<C>::sleep(d).await
}

/// One server's cluster engine. Shared as `Arc<Server<..>>` by the shell's listeners.
pub struct Server<C: Types, SM: RaftStateMachine<C, SnapshotData = Vec<u8>>, T, D> {
    pub raft: openraft::Raft<C, SM>,
    pub cfg: ServerConfig,
    transport: T,
    discovery: D,
    lanes: Mutex<Vec<write::Lane>>,
    next_client: AtomicU64,
    claims: Box<dyn bootstrap::ClaimStore>,
    /// Serializes grant decisions.
    claim_lock: Mutex<()>,
    /// Jitter for retries (a xorshift state seeded by the shell's randomness).
    jitter: Mutex<u64>,
    snapshot: Mutex<crate::raft::rpc::SnapshotAssembly>,
    /// Set by the shell; until then the leader does not reconcile the catalog.
    catalog: OnceLock<CatalogReader>,
}

impl<C, SM, T, D> Server<C, SM, T, D>
where
    C: Types,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
    T: PeerTransport<C>,
    D: Discovery,
{
    /// `claims` keeps bootstrap grants durably (see [`bootstrap`]).
    pub fn new(
        raft: openraft::Raft<C, SM>,
        cfg: ServerConfig,
        transport: T,
        discovery: D,
        claims: Box<dyn bootstrap::ClaimStore>,
    ) -> Self {
        let next_client = AtomicU64::new(cfg.first_client);
        let jitter = Mutex::new(cfg.first_client | 1);
        Self {
            raft,
            cfg,
            transport,
            discovery,
            lanes: Mutex::new(Vec::new()),
            next_client,
            claims,
            claim_lock: Mutex::new(()),
            jitter,
            snapshot: Mutex::default(),
            catalog: OnceLock::new(),
        }
    }

    /// Give the engine its way to read the catalog, which turns on the leader's catalog
    /// reconcile ([`catalog_sync`]).
    pub fn read_catalog_with(&self, reader: CatalogReader) {
        let _ = self.catalog.set(reader);
    }

    /// A pseudo-random duration in `[0, max)`.
    pub(crate) fn jitter(&self, max: Duration) -> Duration {
        let mut x = self.jitter.lock().unwrap_or_else(|e| e.into_inner());
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(*x % ms)
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn discovery(&self) -> &D {
        &self.discovery
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    #[cfg(feature = "sabotage")]
    fn sabotage(&self) -> Sabotage {
        self.cfg.sabotage
    }

    #[cfg(not(feature = "sabotage"))]
    #[allow(dead_code)]
    fn sabotage(&self) -> NoSabotage {
        NoSabotage::default()
    }

    /// A copy of openraft's metrics.
    pub fn metrics(&self) -> RaftMetrics<C> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether this server belongs to a formed cluster (it has a membership).
    pub fn is_formed(&self) -> bool {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some()
    }

    /// The leader's RPC address, read in place.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Snapshot chunks taken, and snapshots received in more than one chunk.
    pub fn snapshot_chunks(&self) -> (u64, u64) {
        let a = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        (a.chunks, a.multi_chunk_snapshots)
    }

    /// This server's hello.
    pub fn hello(&self) -> Hello {
        Hello {
            id: self.cfg.id,
            name: self.cfg.name.clone(),
            datacenter: self.cfg.datacenter.clone(),
            cluster_formed: self.is_formed(),
        }
    }

    /// Serve one request from another server.
    pub async fn handle(&self, rpc: PeerRpc<C>) -> PeerReply<C> {
        match rpc {
            PeerRpc::Raft { to, rpc } => {
                let check_target = !self.sabotage().ignore_target;
                PeerReply::Raft(
                    crate::raft::rpc::serve(&self.raft, to, rpc, check_target, &self.snapshot)
                        .await,
                )
            }
            PeerRpc::Write(req) => match self.raft.client_write(req).await {
                Ok(r) => PeerReply::Written(r.data),
                Err(e) => match e.forward_to_leader() {
                    Some(f) => PeerReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
                    None => PeerReply::Failed(e.to_string()),
                },
            },
            PeerRpc::ReadIndex => {
                match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                    Ok(read) => PeerReply::ReadIndex(read.log_id().index),
                    Err(e) => match e.forward_to_leader() {
                        Some(f) => {
                            PeerReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
                        }
                        None => PeerReply::Failed(e.to_string()),
                    },
                }
            }
            PeerRpc::Hello => PeerReply::Hello(self.hello()),
            PeerRpc::Claim { by } => PeerReply::Claim {
                granted: self.grant(by),
            },
            PeerRpc::Release { by } => PeerReply::Claim {
                granted: self.release(by),
            },
        }
    }

    /// Consul's snapshot schedule, until Raft stops: every `every` plus up to `every` again
    /// (a random stagger, so servers do not snapshot together), take a snapshot if at least
    /// `threshold` entries were applied since the last one. Under a heavy write load this
    /// bounds snapshots to about one per interval, where a pure entry count would take one
    /// every second or two, each pausing applies while the state is encoded.
    pub async fn snapshots(&self, every: Duration, threshold: u64) {
        loop {
            sleep::<C>(every + self.jitter(every)).await;
            let (applied, snapshot) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow_watched();
                if m.running_state.is_err() {
                    return;
                }
                (
                    m.last_applied.as_ref().map(|l| l.index),
                    m.snapshot.as_ref().map(|l| l.index),
                )
            };
            if snapshot_due(applied, snapshot, threshold)
                && self.raft.trigger().snapshot().await.is_err()
            {
                return;
            }
        }
    }

    /// Make a linearizable read safe to serve from the local state machine: confirm
    /// leadership with a quorum (ReadIndex) and wait for it to be applied; a follower asks
    /// the leader for the read index and waits until it has applied that index itself.
    pub async fn read_barrier(&self) -> Result<(), ReadError> {
        if self.sabotage().stale_read {
            return Ok(());
        }
        let deadline = now::<C>() + self.cfg.request_deadline;
        while now::<C>() < deadline {
            let read_index = match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => return Ok(()),
                Err(e) => match e.forward_to_leader().and_then(|f| f.leader_node.clone()) {
                    Some(leader) => match self
                        .transport
                        .call(&leader.addr, PeerRpc::ReadIndex, self.cfg.forward_ttl)
                        .await
                    {
                        Ok(PeerReply::ReadIndex(i)) => Some(i),
                        _ => None,
                    },
                    None => None,
                },
            };
            match read_index {
                Some(i) => {
                    let wait = self.raft.wait(Some(self.cfg.forward_ttl));
                    if wait
                        .applied_index_at_least(Some(i), "read index")
                        .await
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
                None => sleep::<C>(Duration::from_millis(100)).await,
            }
        }
        Err(ReadError::NoLeader)
    }
}

/// Without the `sabotage` feature every sabotage is off.
#[cfg(not(feature = "sabotage"))]
#[derive(Debug, Clone, Copy, Default)]
#[allow(dead_code)]
struct NoSabotage {
    stale_read: bool,
    ack_before_commit: bool,
    lane_poison: bool,
    ignore_target: bool,
    unguarded_removal: bool,
    no_claim: bool,
    stale_serf_health: bool,
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn a_snapshot_is_due_once_threshold_entries_were_applied_since_the_last() {
        assert!(!snapshot_due(None, None, 1));
        assert!(!snapshot_due(Some(15), None, 16));
        assert!(snapshot_due(Some(16), None, 16));
        assert!(!snapshot_due(Some(40), Some(30), 16));
        assert!(snapshot_due(Some(46), Some(30), 16));
        // A snapshot installed past what is applied here (a follower catching up).
        assert!(!snapshot_due(Some(10), Some(30), 16));
    }
}

//! The replicated store: openraft on tokio over the core's stores, fjall underneath, server
//! RPC on 8300, and Consul's way of forming a cluster (`bootstrap_expect` + join addresses).

pub mod fjall;
mod identity;
pub mod stats;
pub mod transport;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::impls::BasicNode;
use openraft::ChangeMembers;
use openraft::ReadPolicy;
use tribune_core::fsm::Command;
use tribune_core::fsm::Request;
use tribune_core::fsm::Response;
use tribune_core::fsm::StateMachine;
use tribune_core::raft::rpc::Network;
use tribune_core::raft::rpc::RaftRpc;
use tribune_core::raft::rpc::RaftRpcReply;
use tribune_core::raft::rpc::Transport;
use tribune_core::gossip::MemberState;
use tribune_core::raft::SmStore;

use self::fjall::FjallBackend;
use self::stats::RaftStats;
use self::transport::Pool;
use self::transport::Rpc;
use self::transport::RpcReply;
use crate::hub::Hub;
use crate::hub::Touched;
use crate::store::BoxFuture;
use crate::store::Consistency;
use crate::store::ReadMeta;
use crate::store::Store;
use crate::store::StoreError;

tribune_core::declare_types!(pub Types, openraft_rt_tokio::TokioRuntime);

pub type Sm = SmStore<Types, FjallBackend>;
pub type NodeRaft = openraft::Raft<Types, Sm>;

/// How long a write or a read barrier may take, forwarding and retries included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// One forwarded request's wait.
const FORWARD_TTL: Duration = Duration::from_secs(3);

/// openraft's view of one peer: the pooled TCP transport.
pub struct Peer {
    pool: Pool,
    addr: SocketAddr,
}

impl Transport<Types> for Peer {
    async fn call(&mut self, rpc: RaftRpc<Types>, ttl: Duration) -> io::Result<RaftRpcReply<Types>> {
        match self.pool.call(self.addr, &Rpc::Raft(rpc), ttl).await? {
            RpcReply::Raft(r) => Ok(r),
            other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
        }
    }
}

#[derive(Clone)]
pub struct NetFactory {
    pool: Pool,
}

impl openraft::RaftNetworkFactory<Types> for NetFactory {
    type Network = Network<Peer>;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Network<Peer> {
        let addr = node.addr.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8300)));
        Network(Peer { pool: self.pool.clone(), addr })
    }
}

/// A write "lane": one client id whose sequence numbers are used one at a time, so the
/// state machine's dedup (latest sequence number per client) holds for concurrent writes.
#[derive(Debug, Clone, Copy)]
struct Lane {
    client: u64,
    seq: u64,
}

pub struct RaftStore {
    pub raft: NodeRaft,
    sm: Sm,
    hub: Hub,
    pool: Pool,
    pub id: u64,
    pub rpc_addr: String,
    name: String,
    datacenter: String,
    lanes: Mutex<Vec<Lane>>,
    next_client: AtomicU64,
    stats: RaftStats,
    /// The LAN gossip pool, once started: `bootstrap_expect` checks its servers' tags.
    pub lan: std::sync::OnceLock<crate::serf::Pool>,
    /// This server's HTTP API, for requests client agents forward.
    pub http: std::sync::OnceLock<crate::forward::Serve>,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("OS random source");
    u64::from_le_bytes(b)
}

impl RaftStore {
    /// Open the store in `data_dir`, serve server RPC on `bind`, and tell peers `rpc_addr`.
    pub async fn open(
        data_dir: &Path,
        bind: SocketAddr,
        rpc_addr: SocketAddr,
        name: String,
        datacenter: String,
        raft_multiplier: u64,
    ) -> io::Result<Arc<RaftStore>> {
        std::fs::create_dir_all(data_dir)?;
        let id = identity::node_id(data_dir, random_u64())?;
        let backend = Arc::new(FjallBackend::open(&data_dir.join("raft"))?);
        let hub = Hub::new();
        let publish = hub.clone();
        let sm = SmStore::open(backend.clone())?.without_checks().with_observer(Arc::new(move |a| {
            if let (openraft::EntryPayload::Normal(req), Response::Kv { outcome, index }) = (&a.entry.payload, a.response) {
                if outcome.changed {
                    let Command::Kv(op) = &req.cmd;
                    publish.publish(index, &Touched::of(op));
                }
            }
        }));
        let log = self::fjall::FjallLog::new(backend);
        let config = tribune_core::raft::config(raft_multiplier, 10_000).validate().map_err(io::Error::other)?;
        let pool = Pool::default();
        let raft = NodeRaft::new(id, Arc::new(config), NetFactory { pool: pool.clone() }, log, sm.clone())
            .await
            .map_err(io::Error::other)?;
        let store = Arc::new(RaftStore {
            raft,
            sm,
            hub,
            pool,
            id,
            rpc_addr: rpc_addr.to_string(),
            name,
            datacenter,
            lanes: Mutex::new(Vec::new()),
            next_client: AtomicU64::new(random_u64() >> 16),
            stats: RaftStats::default(),
            lan: std::sync::OnceLock::new(),
            http: std::sync::OnceLock::new(),
        });
        tokio::spawn(watch_leadership(Arc::downgrade(&store)));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let server = store.clone();
        tokio::spawn(transport::serve(listener, move |rpc| {
            let server = server.clone();
            async move { server.handle_rpc(rpc).await }
        }));
        Ok(store)
    }

    async fn handle_rpc(&self, rpc: Rpc) -> RpcReply {
        match rpc {
            Rpc::Raft(r) => {
                if matches!(r, RaftRpc::Append(_) | RaftRpc::Snapshot { .. }) {
                    self.stats.contact();
                }
                RpcReply::Raft(tribune_core::raft::rpc::serve(&self.raft, r).await)
            }
            Rpc::Write(req) => match self.raft.client_write(req).await {
                Ok(r) => RpcReply::Written(r.data),
                Err(e) => match e.forward_to_leader() {
                    Some(f) => RpcReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
                    None => RpcReply::Failed(e.to_string()),
                },
            },
            Rpc::Hello => RpcReply::Hello {
                id: self.id,
                name: self.name.clone(),
                datacenter: self.datacenter.clone(),
                cluster_formed: self.is_formed(),
            },
            Rpc::ReadIndex => match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(read) => RpcReply::ReadIndex(read.log_id().index),
                Err(e) => match e.forward_to_leader() {
                    Some(f) => RpcReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
                    None => RpcReply::Failed(e.to_string()),
                },
            },
            Rpc::Join { id, addr } => match self.add_server(id, addr).await {
                Ok(()) => RpcReply::Done,
                Err(e) => RpcReply::Failed(e),
            },
            Rpc::Remove { id } => match self.remove_server(id).await {
                Ok(()) => RpcReply::Done,
                Err(e) => RpcReply::Failed(e),
            },
            Rpc::Http(call) => match self.http.get() {
                Some(serve) => crate::forward::serve(serve, call).await,
                None => RpcReply::Failed("the HTTP API is not up yet".into()),
            },
            Rpc::Mux => RpcReply::Done, // answered by the transport itself
        }
    }

    fn metrics(&self) -> openraft::RaftMetrics<Types> {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether this server belongs to a formed cluster (it has a membership).
    pub fn is_formed(&self) -> bool {
        self.metrics().membership_config.membership().voter_ids().next().is_some()
    }

    /// The leader's RPC address, read in place (no copy of the metrics: writes ask).
    fn leader_addr(&self) -> Option<String> {
        use openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    /// Make a server a voter (on the leader): learner first so it catches up.
    async fn add_server(&self, id: u64, addr: String) -> Result<(), String> {
        let voters: BTreeSet<u64> = self.raft.voter_ids().collect();
        if voters.contains(&id) {
            return Ok(());
        }
        self.raft.add_learner(id, BasicNode { addr }, true).await.map_err(|e| e.to_string())?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Remove a server from the voters (on the leader).
    async fn remove_server(&self, id: u64) -> Result<(), String> {
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Form the cluster as Consul's `bootstrap_expect` does, or join a formed one.
    ///
    /// Each server says hello to the server-RPC port of every join address. Once `expect`
    /// servers of this datacenter (this one included) answer and none of them belongs to a
    /// cluster yet, every one of them initializes Raft with that same set: one of them wins
    /// the first election. A server that already has a membership never bootstraps again;
    /// a new server that finds a formed cluster asks its leader to add it.
    pub async fn form_cluster(self: Arc<Self>, expect: u64, join_hosts: Vec<String>, rpc_port: u16, retry: Duration, gossip: bool) {
        loop {
            if self.is_formed() {
                return;
            }
            // With gossip, servers are counted (and their `expect` checked) on the LAN pool
            // too, as Consul does: wait for it to start.
            if gossip && self.lan.get().is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // Join addresses name hosts (often their gossip port); servers answer RPC on
            // `rpc_port` of the same host. Servers met on the LAN pool (joined any way) count
            // too, at the port their tags give.
            let mut join = crate::serf::resolve_hosts(&join_hosts, rpc_port, false).await;
            for addr in self.lan.get().map(|lan| crate::serf::live_servers(lan, &self.datacenter)).unwrap_or_default() {
                if !join.contains(&addr) {
                    join.push(addr);
                }
            }
            let mut found: BTreeMap<u64, String> = BTreeMap::from([(self.id, self.rpc_addr.clone())]);
            let mut formed_peer = None;
            for addr in &join {
                if addr.to_string() == self.rpc_addr {
                    continue;
                }
                if let Ok(RpcReply::Hello { id, datacenter, cluster_formed, .. }) =
                    self.pool.call(*addr, &Rpc::Hello, Duration::from_secs(2)).await
                {
                    if datacenter != self.datacenter {
                        continue;
                    }
                    if cluster_formed {
                        formed_peer = Some(*addr);
                    }
                    found.insert(id, addr.to_string());
                }
            }
            if let Some(peer) = formed_peer {
                match self.join_via(peer).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "raft: joining the formed cluster failed; retrying"),
                }
            } else if let Some(name) = self.conflicting_expect(expect) {
                tracing::error!(
                    member = %name,
                    "raft: Member {name} has a conflicting expect value. All nodes should expect the same number."
                );
            } else if expect > 0 && found.len() as u64 >= expect && self.lan_servers().is_none_or(|n| n >= expect) {
                let members: BTreeMap<u64, BasicNode> =
                    found.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
                tracing::info!(servers = members.len(), "raft: bootstrap_expect reached; bootstrapping the cluster");
                match self.raft.initialize(members).await {
                    Ok(()) => return,
                    Err(e) => tracing::info!(error = %e, "raft: initialize refused (already formed elsewhere?)"),
                }
            } else {
                tracing::info!(found = found.len(), expect, "raft: waiting for servers to bootstrap");
            }
            // Consul re-checks on every gossip join; a short poll does the same here.
            tokio::time::sleep(retry.min(Duration::from_millis(500))).await;
        }
    }

    /// The leader's side of Consul's serf–Raft coupling: every `every`, alive LAN members
    /// that are servers of this datacenter become voters, and servers that left gracefully
    /// stop being voters. Failed servers stay (an operator removes them, or they come back).
    pub async fn reconcile(self: Arc<Self>, lan: crate::serf::Pool, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if !self.raft.is_leader() {
                continue;
            }
            for member in lan.members() {
                let Some(addr) = crate::serf::rpc_addr(&member).filter(|_| crate::serf::is_server_of(&member, &self.datacenter)) else {
                    continue;
                };
                let voter = self.voter_at(&addr.to_string());
                let result = match member.state {
                    MemberState::Alive if voter.is_none() => match self.pool.call(addr, &Rpc::Hello, Duration::from_secs(2)).await {
                        Ok(RpcReply::Hello { id, datacenter, .. }) if datacenter == self.datacenter && id != self.id => {
                            tracing::info!(server = %member.name, %addr, "raft: adding server");
                            self.add_server(id, addr.to_string()).await
                        }
                        _ => Ok(()),
                    },
                    MemberState::Left => match voter {
                        Some(id) if id != self.id => {
                            tracing::info!(server = %member.name, %addr, "raft: removing server that left");
                            self.remove_server(id).await
                        }
                        _ => Ok(()),
                    },
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(server = %member.name, error = %e, "raft: reconciling the server failed");
                }
            }
        }
    }

    /// The voter whose server-RPC address is `addr`.
    fn voter_at(&self, addr: &str) -> Option<u64> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let found = membership.voter_ids().find(|id| membership.get_node(id).is_some_and(|n| n.addr == addr));
        found
    }

    /// A graceful leave (after the gossip leave, so the leader does not add this server
    /// back): leave the Raft configuration, waiting up to `within` to see it done.
    pub async fn leave(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let voters: Vec<u64> = self.raft.voter_ids().collect();
            if !voters.contains(&self.id) {
                tracing::info!("raft: left the Raft configuration");
                return;
            }
            if voters.len() == 1 {
                tracing::info!("raft: the only server stays in the Raft configuration");
                return;
            }
            let result = if self.raft.is_leader() {
                self.remove_server(self.id).await
            } else {
                match self.leader_addr().and_then(|a| a.parse::<SocketAddr>().ok()) {
                    Some(leader) => match self.pool.call(leader, &Rpc::Remove { id: self.id }, FORWARD_TTL).await {
                        Ok(RpcReply::Done) => Ok(()),
                        Ok(other) => Err(format!("{other:?}")),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err("no leader".to_string()),
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "raft: leaving the configuration; retrying");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!("raft: still in the Raft configuration after {within:?}; the leader removes a server that left");
    }

    /// Live LAN servers of this datacenter (None without gossip).
    fn lan_servers(&self) -> Option<u64> {
        let lan = self.lan.get()?;
        Some(crate::serf::live_servers(lan, &self.datacenter).len() as u64)
    }

    /// A live LAN server of this datacenter that expects a different number of servers
    /// (Consul refuses to bootstrap then).
    fn conflicting_expect(&self, expect: u64) -> Option<String> {
        let lan = self.lan.get().filter(|_| expect > 0)?;
        lan.members()
            .into_iter()
            .filter(|m| m.state.is_live() && crate::serf::is_server_of(m, &self.datacenter))
            .find(|m| m.tags.get("expect").and_then(|e| e.parse::<u64>().ok()).is_some_and(|e| e != 0 && e != expect))
            .map(|m| m.name)
    }

    async fn join_via(&self, mut peer: SocketAddr) -> Result<(), String> {
        for _ in 0..5 {
            let join = Rpc::Join { id: self.id, addr: self.rpc_addr.clone() };
            match self.pool.call(peer, &join, REQUEST_DEADLINE).await.map_err(|e| e.to_string())? {
                RpcReply::Done => return Ok(()),
                RpcReply::NotLeader(Some(l)) => peer = l.parse().map_err(|_| format!("bad leader address {l}"))?,
                RpcReply::NotLeader(None) => tokio::time::sleep(Duration::from_millis(500)).await,
                other => return Err(format!("{other:?}")),
            }
        }
        Err("no leader accepted the join".into())
    }

    fn take_lane(&self) -> Lane {
        let lane = self.lanes.lock().unwrap().pop();
        let mut lane = lane.unwrap_or_else(|| Lane { client: self.next_client.fetch_add(1, Ordering::Relaxed), seq: 0 });
        lane.seq += 1;
        lane
    }

    fn return_lane(&self, lane: Lane) {
        self.lanes.lock().unwrap().push(lane);
    }

    async fn write_request(&self, req: Request) -> Result<Response, StoreError> {
        let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
        // None: try the local Raft node; Some(addr): forward to that server.
        // A follower forwards to a known leader at once.
        let mut target: Option<String> = self.leader_addr().filter(|l| *l != self.rpc_addr);
        while tokio::time::Instant::now() < deadline {
            let leader_hint: Option<String> = match &target {
                None => match self.raft.client_write(req.clone()).await {
                    Ok(r) => return Ok(r.data),
                    Err(e) => match e.forward_to_leader() {
                        Some(f) => f.leader_node.as_ref().map(|n| n.addr.clone()),
                        None => return Err(StoreError::Other(e.to_string())),
                    },
                },
                Some(addr) => match addr.parse::<SocketAddr>() {
                    Ok(a) => match self.pool.call_mux(a, &Rpc::Write(req.clone()), FORWARD_TTL).await {
                        Ok(RpcReply::Written(r)) => return Ok(r),
                        Ok(RpcReply::NotLeader(l)) => l,
                        // Unknown outcome: retry the same request (applied at most once).
                        _ => None,
                    },
                    Err(_) => None,
                },
            };
            match leader_hint {
                Some(leader) if leader == self.rpc_addr => target = None,
                Some(leader) => target = Some(leader),
                None => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    target = self.leader_addr().filter(|l| *l != self.rpc_addr);
                }
            }
        }
        Err(StoreError::NoLeader)
    }

    async fn barrier(&self, mode: Consistency) -> Result<ReadMeta, StoreError> {
        let meta = || {
            let m = self.metrics();
            ReadMeta { known_leader: m.current_leader.is_some(), last_contact_ms: self.stats.last_contact_ms(m.current_leader == Some(self.id)) }
        };
        if mode == Consistency::Stale {
            return Ok(meta());
        }
        // Default and consistent reads both confirm leadership with a quorum (ReadIndex);
        // a follower asks the leader for the read index and waits until it has applied it.
        let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
        while tokio::time::Instant::now() < deadline {
            let read_index = match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => return Ok(meta()),
                Err(e) => match e.forward_to_leader().and_then(|f| f.leader_node.clone()) {
                    Some(leader) => match leader.addr.parse::<SocketAddr>() {
                        Ok(a) => match self.pool.call_mux(a, &Rpc::ReadIndex, FORWARD_TTL).await {
                            Ok(RpcReply::ReadIndex(i)) => Some(i),
                            _ => None,
                        },
                        Err(_) => None,
                    },
                    None => None,
                },
            };
            match read_index {
                Some(i) => {
                    let wait = self.raft.wait(Some(FORWARD_TTL));
                    if wait.applied_index_at_least(Some(i), "read index").await.is_ok() {
                        return Ok(meta());
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Err(StoreError::NoLeader)
    }
}

impl Store for RaftStore {
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<Response, StoreError>> {
        Box::pin(async move {
            let lane = self.take_lane();
            let started = std::time::Instant::now();
            let result = self.write_request(Request { client: lane.client, seq: lane.seq, cmd }).await;
            if result.is_ok() {
                self.stats.commit.record(started.elapsed());
            }
            self.return_lane(lane);
            result
        })
    }

    fn read_barrier(&self, mode: Consistency) -> BoxFuture<'_, Result<ReadMeta, StoreError>> {
        Box::pin(self.barrier(mode))
    }

    fn with_state(&self, f: &mut dyn FnMut(&StateMachine)) {
        f(&self.sm.lock().sm)
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn leader(&self) -> Option<String> {
        self.leader_addr()
    }

    fn remove_peer(&self, peer: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let m = self.metrics();
            let membership = m.membership_config.membership();
            let id = membership
                .voter_ids()
                .find(|id| id.to_string() == peer || membership.get_node(id).is_some_and(|n| n.addr == peer))
                .ok_or_else(|| StoreError::Other(format!("address {peer:?} was not found in the Raft configuration")))?;
            if self.raft.is_leader() {
                return self.remove_server(id).await.map_err(StoreError::Other);
            }
            let leader = self.leader_addr().and_then(|a| a.parse::<SocketAddr>().ok()).ok_or(StoreError::NoLeader)?;
            match self.pool.call(leader, &Rpc::Remove { id }, REQUEST_DEADLINE).await {
                Ok(RpcReply::Done) => Ok(()),
                Ok(other) => Err(StoreError::Other(format!("removing {peer}: {other:?}"))),
                Err(e) => Err(StoreError::Other(format!("removing {peer}: {e}"))),
            }
        })
    }

    fn metrics(&self) -> Vec<crate::store::Metric> {
        self.stats.metrics(self.raft.is_leader())
    }

    fn raft_stats(&self) -> Vec<(&'static str, String)> {
        let m = RaftStore::metrics(self);
        let leader = m.current_leader == Some(self.id);
        vec![
            ("state", format!("{:?}", m.state)),
            ("term", m.current_term.to_string()),
            ("commit_index", m.local_committed.map_or(0, |c| c.index + 1).to_string()),
            ("last_log_index", m.last_log_index.map_or(0, |i| i + 1).to_string()),
            ("last_snapshot_index", m.snapshot.map_or(0, |s| s.index + 1).to_string()),
            ("last_contact", if leader { "0".to_string() } else { format!("{}ms", self.stats.last_contact_ms(false)) }),
            ("protocol_version", "3".to_string()),
        ]
    }

    fn peers(&self) -> Vec<String> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone())).collect()
    }
}

/// Count leader changes and won elections from openraft's metrics stream, until the store
/// is dropped or Raft stops.
async fn watch_leadership(store: std::sync::Weak<RaftStore>) {
    use openraft::async_runtime::watch::WatchReceiver;
    let Some(mut rx) = store.upgrade().map(|s| s.raft.metrics()) else { return };
    let (mut leader, mut leading) = (None, false);
    while rx.changed().await.is_ok() {
        let Some(store) = store.upgrade() else { return };
        let (now_leader, id) = (rx.borrow_watched().current_leader, store.id);
        if now_leader != leader && now_leader.is_some() {
            store.stats.leader_changes.fetch_add(1, Ordering::Relaxed);
            if now_leader == Some(id) && !leading {
                store.stats.became_leader.fetch_add(1, Ordering::Relaxed);
            }
        }
        leading = now_leader == Some(id);
        leader = now_leader;
    }
}

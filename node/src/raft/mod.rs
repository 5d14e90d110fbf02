//! The replicated store: openraft on tokio over the core's stores, fjall underneath, and
//! server RPC on 8300. The cluster logic (write path, read barrier, forming, reconcile,
//! leave) is the core's engine ([`tribune_core::cluster::Server`]), which the simulator
//! runs too; this module wires tokio, TCP and the gossip pool into it.

pub mod fjall;
mod identity;
pub mod stats;
pub mod transport;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::PoisonError;
use std::time::Duration;

use tribune_core::cluster::Discovery;
use tribune_core::cluster::MembershipError;
use tribune_core::cluster::ServerConfig;
use tribune_core::cluster::WriteError;
use tribune_core::fsm::Command;
use tribune_core::fsm::Response;
use tribune_core::fsm::StateMachine;
use tribune_core::gossip::MemberInfo;
use tribune_core::raft::rpc::NetFactory;
use tribune_core::raft::rpc::PeerReply;
use tribune_core::raft::rpc::PeerRpc;
use tribune_core::raft::rpc::PeerTransport;
use tribune_core::raft::rpc::RaftRpc;
use tribune_core::raft::SmStore;

use self::fjall::FjallBackend;
use self::stats::RaftStats;
use self::transport::Pool;
use crate::hub::Hub;
use crate::hub::Touched;
use crate::store::BoxFuture;
use crate::store::Consistency;
use crate::store::ReadMeta;
use crate::store::Store;
use crate::store::StoreError;
use crate::wire::HttpCall;
use crate::wire::Rpc;
use crate::wire::RpcError;
use crate::wire::RpcReply;

pub use crate::wire::Types;

pub type Sm = SmStore<Types, FjallBackend>;
pub type NodeRaft = openraft::Raft<Types, Sm>;
/// The core's cluster engine over TCP and this agent's gossip pool.
pub type Engine = tribune_core::cluster::Server<Types, Sm, Peers, NodeDiscovery>;

/// Server RPC to other servers, as the engine and openraft send it: forwarded writes and
/// read-index requests share one multiplexed connection per peer, the rest use pooled ones.
#[derive(Clone, Default)]
pub struct Peers {
    pool: Pool,
    /// Server addresses that did not parse, each logged once (at most
    /// [`BAD_ADDRS_LOGGED_MAX`] of them).
    bad_addrs: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// Unparsable server addresses remembered so that each is logged once.
const BAD_ADDRS_LOGGED_MAX: usize = 64;

impl PeerTransport<Types> for Peers {
    async fn call(
        &self,
        addr: &str,
        rpc: PeerRpc<Types>,
        ttl: Duration,
    ) -> io::Result<PeerReply<Types>> {
        // An address that does not parse is an error for this call, never some other
        // server's address: nothing is sent.
        let Ok(peer) = addr.parse::<SocketAddr>() else {
            let mut bad = self
                .bad_addrs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if bad.len() < BAD_ADDRS_LOGGED_MAX && bad.insert(addr.to_string()) {
                tracing::warn!(
                    address = addr,
                    "raft: a server's address does not parse; calls to it fail"
                );
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad server address {addr:?}"),
            ));
        };
        let mux = matches!(rpc, PeerRpc::Write(_) | PeerRpc::ReadIndex);
        let rpc = Rpc::Peer(rpc);
        let reply = if mux {
            self.pool.call_mux(peer, &rpc, ttl).await?
        } else {
            self.pool.call(peer, &rpc, ttl).await?
        };
        match reply {
            RpcReply::Peer(r) => Ok(r),
            RpcReply::Failed(e) => Ok(PeerReply::Failed(e.to_string())),
            other => Err(io::Error::other(format!(
                "unexpected reply from {addr}: {other:?}"
            ))),
        }
    }
}

/// What the engine learns from this agent: its LAN gossip pool (once started) and its join
/// addresses (`start_join`/`retry_join`, resolved to the server-RPC port).
pub struct NodeDiscovery {
    pub lan: OnceLock<crate::serf::Pool>,
    join_hosts: Vec<String>,
    rpc_port: u16,
}

impl Discovery for NodeDiscovery {
    fn lan_members(&self) -> Option<Vec<MemberInfo>> {
        self.lan.get().map(|lan| lan.members())
    }

    async fn join_addrs(&self) -> Vec<String> {
        crate::serf::resolve_hosts(&self.join_hosts, self.rpc_port, false)
            .await
            .into_iter()
            .map(|a| a.to_string())
            .collect()
    }
}

/// A forwarded HTTP request served: what server RPC answers an [`Rpc::Http`] with.
pub type ServeHttp = Arc<dyn Fn(HttpCall) -> BoxFuture<'static, RpcReply> + Send + Sync>;

/// Where and as whom a server runs.
pub struct ServerSpec<'a> {
    pub data_dir: &'a Path,
    /// Where server RPC listens.
    pub bind: SocketAddr,
    /// The server-RPC address peers are told.
    pub rpc_addr: SocketAddr,
    pub name: String,
    pub datacenter: String,
    pub raft_multiplier: u64,
    /// Log entries between two snapshots.
    pub snapshot_threshold: u64,
    /// How often to check whether a snapshot is due (Consul's `raft_snapshot_interval`).
    pub snapshot_interval: Duration,
    /// `start_join` and `retry_join` hosts.
    pub join: Vec<String>,
    /// Whether the agent runs LAN gossip.
    pub gossip: bool,
}

pub struct RaftStore {
    pub engine: Arc<Engine>,
    sm: Sm,
    hub: Hub,
    pool: Pool,
    pub id: u64,
    stats: RaftStats,
    /// How this server serves the HTTP requests client agents forward (set once its HTTP
    /// API is up).
    pub http: OnceLock<ServeHttp>,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("OS random source");
    u64::from_le_bytes(b)
}

impl RaftStore {
    /// Open the store in `data_dir`, serve server RPC on `bind`, and tell peers `rpc_addr`.
    pub async fn open(spec: ServerSpec<'_>) -> io::Result<Arc<RaftStore>> {
        crate::durable::create_dir_all(spec.data_dir)?;
        let id = identity::node_id(spec.data_dir, random_u64())?;
        let raft_dir = spec.data_dir.join("raft");
        let backend = Arc::new(FjallBackend::open(&raft_dir)?);
        // fjall fsyncs what it creates inside a directory, but not every new directory's own
        // name: `raft/` in the data_dir, and each keyspace's folder in `raft/keyspaces/`
        // (made after fjall synced that folder). Without these a power cut can take the
        // whole store, on a filesystem that keeps only what POSIX promises.
        crate::durable::sync_dir(&raft_dir.join("keyspaces"))?;
        crate::durable::sync_dir(spec.data_dir)?;
        let hub = Hub::new();
        let (publish, reset) = (hub.clone(), hub.clone());
        let sm = SmStore::open(backend.clone())?
            .without_checks()
            .with_observer(Arc::new(move |a| {
                let openraft::EntryPayload::Normal(req) = &a.entry.payload else {
                    return;
                };
                match (&req.cmd, a.response) {
                    (Command::Kv(op), Response::Kv { outcome, index }) if outcome.changed => {
                        publish.publish(*index, &Touched::of(op));
                    }
                    (
                        Command::Catalog(_),
                        Response::Catalog {
                            result: Ok(c),
                            index,
                        },
                    ) if c.changed() => {
                        publish.publish(*index, &Touched::Catalog(c.clone()));
                    }
                    _ => {}
                }
            }))
            // A snapshot replaces the whole state: every blocking query may have changed.
            .with_install_observer(Arc::new(move |index| reset.publish(index, &Touched::All)));
        let claims = Box::new(tribune_core::cluster::bootstrap::BackendClaims(
            backend.clone(),
        ));
        let log = tribune_core::raft::LogStore::<Types, _>::new(backend);
        let config = tribune_core::raft::config(spec.raft_multiplier, spec.snapshot_threshold)
            .validate()
            .map_err(io::Error::other)?;
        let peers = Peers::default();
        let raft = NodeRaft::new(
            id,
            Arc::new(config),
            NetFactory::new(peers.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        let mut cfg = ServerConfig::new(
            id,
            spec.rpc_addr.to_string(),
            spec.name,
            spec.datacenter,
            random_u64() >> 16,
        );
        cfg.gossip = spec.gossip;
        let discovery = NodeDiscovery {
            lan: OnceLock::new(),
            join_hosts: spec.join,
            rpc_port: spec.rpc_addr.port(),
        };
        let engine = Arc::new(Engine::new(raft, cfg, peers.clone(), discovery, claims));
        let reader = sm.clone();
        engine.read_catalog_with(Arc::new(move |f| reader.read(|s| f(s.catalog()))));
        let store = Arc::new(RaftStore {
            engine,
            sm,
            hub,
            pool: peers.pool,
            id,
            stats: RaftStats::default(),
            http: OnceLock::new(),
        });
        tokio::spawn(watch_leadership(Arc::downgrade(&store)));
        let engine = store.engine.clone();
        let (every, threshold) = (spec.snapshot_interval, spec.snapshot_threshold);
        tokio::spawn(async move { engine.snapshots(every, threshold).await });
        let listener = tokio::net::TcpListener::bind(spec.bind).await?;
        let server = store.clone();
        tokio::spawn(transport::serve(listener, move |rpc| {
            let server = server.clone();
            async move { server.handle_rpc(rpc).await }
        }));
        Ok(store)
    }

    fn raft(&self) -> &NodeRaft {
        &self.engine.raft
    }

    async fn handle_rpc(&self, rpc: Rpc) -> RpcReply {
        match rpc {
            Rpc::Peer(rpc) => {
                if matches!(
                    rpc,
                    PeerRpc::Raft {
                        rpc: RaftRpc::Append(_) | RaftRpc::SnapshotChunk { .. },
                        ..
                    }
                ) {
                    self.stats.contact();
                }
                RpcReply::Peer(self.engine.handle(rpc).await)
            }
            Rpc::Http(call) => match self.http.get() {
                Some(serve) => serve(call).await,
                None => RpcReply::Failed(RpcError::NotReady),
            },
            Rpc::Mux => RpcReply::Done, // answered by the transport itself
        }
    }

    /// Form the cluster (`bootstrap_expect`), or wait to be added to a formed one.
    pub async fn form_cluster(self: Arc<Self>, expect: u64, retry: Duration) {
        self.engine.form_cluster(expect, retry).await
    }

    /// Start the leader's reconcile of the LAN pool into the Raft configuration.
    pub fn start_reconcile(&self, lan: crate::serf::Pool, every: Duration) {
        let _ = self.engine.discovery().lan.set(lan);
        let engine = self.engine.clone();
        tokio::spawn(async move { engine.reconcile(every).await });
    }

    /// A graceful leave (after the gossip leave): see [`Engine::leave`].
    pub async fn leave(&self, within: Duration) {
        self.engine.leave(within).await
    }

    /// Ask the leader, over server RPC, to remove `peer` (the operator endpoint, forwarded
    /// as a client agent would forward it).
    async fn remove_on_leader(&self, leader: Option<String>, peer: &str) -> Result<(), StoreError> {
        let leader: SocketAddr = leader
            .and_then(|l| l.parse().ok())
            .ok_or(StoreError::NoLeader)?;
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("address", peer)
            .finish();
        let call = Rpc::Http(HttpCall {
            method: "DELETE".into(),
            uri: format!("/v1/operator/raft/peer?{query}"),
            headers: Vec::new(),
            body: Vec::new(),
        });
        let unforwarded = |source| StoreError::Unforwarded {
            peer: peer.to_string(),
            source,
        };
        match self.pool.call(leader, &call, Duration::from_secs(10)).await {
            Ok(RpcReply::Http(r)) if r.status == 200 => Ok(()),
            Ok(RpcReply::Http(r)) => Err(StoreError::Refused(
                String::from_utf8_lossy(&r.body).into_owned(),
            )),
            Ok(RpcReply::Failed(e)) => Err(unforwarded(io::Error::other(e))),
            Ok(other) => Err(unforwarded(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
            Err(e) => Err(unforwarded(e)),
        }
    }
}

fn store_error(e: WriteError) -> StoreError {
    match e {
        WriteError::NoLeader => StoreError::NoLeader,
        WriteError::Indeterminate(why) => StoreError::Indeterminate(why),
        WriteError::Raft(e) => StoreError::Raft(e),
    }
}

impl Store for RaftStore {
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<Response, StoreError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.engine.write(cmd).await.map_err(store_error);
            if result.is_ok() {
                self.stats.commit.record(started.elapsed());
            }
            result
        })
    }

    fn read_barrier(&self, mode: Consistency) -> BoxFuture<'_, Result<ReadMeta, StoreError>> {
        Box::pin(async move {
            if mode != Consistency::Stale {
                self.engine
                    .read_barrier()
                    .await
                    .map_err(|_| StoreError::NoLeader)?;
            }
            use openraft::async_runtime::watch::WatchReceiver;
            let leader = self.raft().metrics().borrow_watched().current_leader;
            Ok(ReadMeta {
                known_leader: leader.is_some(),
                last_contact_ms: self.stats.last_contact_ms(leader == Some(self.id)),
            })
        })
    }

    fn with_state(&self, f: &mut dyn FnMut(&StateMachine)) {
        f(&self.sm.lock().sm)
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn leader(&self) -> Option<String> {
        self.engine.leader_addr()
    }

    fn remove_peer(&self, peer: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.engine.remove_peer(&peer).await {
                Ok(()) => Ok(()),
                Err(MembershipError::NotLeader(leader)) => {
                    self.remove_on_leader(leader, &peer).await
                }
                Err(MembershipError::NotFound(peer)) => Err(StoreError::NoSuchServer(peer)),
                Err(MembershipError::Raft(e)) => Err(StoreError::Raft(e)),
            }
        })
    }

    fn metrics(&self) -> Vec<crate::metrics::Metric> {
        self.stats.metrics(self.raft().is_leader())
    }

    fn raft_stats(&self) -> Vec<(&'static str, String)> {
        let m = self.engine.metrics();
        let leader = m.current_leader == Some(self.id);
        vec![
            ("state", format!("{:?}", m.state)),
            ("term", m.current_term.to_string()),
            (
                "commit_index",
                m.local_committed.map_or(0, |c| c.index + 1).to_string(),
            ),
            (
                "last_log_index",
                m.last_log_index.map_or(0, |i| i + 1).to_string(),
            ),
            (
                "last_snapshot_index",
                m.snapshot.map_or(0, |s| s.index + 1).to_string(),
            ),
            (
                "last_contact",
                if leader {
                    "0".to_string()
                } else {
                    format!("{}ms", self.stats.last_contact_ms(false))
                },
            ),
            ("protocol_version", "3".to_string()),
        ]
    }

    fn raft_servers(&self) -> Vec<crate::store::RaftServer> {
        let m = self.engine.metrics();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| crate::store::RaftServer {
                id: Some(*id),
                address: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    fn peers(&self) -> Vec<String> {
        let m = self.engine.metrics();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .collect()
    }
}

/// Count leader changes and won elections from openraft's metrics stream, until the store
/// is dropped or Raft stops.
async fn watch_leadership(store: std::sync::Weak<RaftStore>) {
    use openraft::async_runtime::watch::WatchReceiver;
    let Some(mut rx) = store.upgrade().map(|s| s.raft().metrics()) else {
        return;
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unparsable_server_address_fails_the_call() {
        let peers = Peers::default();
        for _ in 0..2 {
            let r = peers
                .call("no-such-server", PeerRpc::Hello, Duration::from_secs(1))
                .await;
            let e = r.map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
        assert_eq!(
            peers
                .bad_addrs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            1,
            "logged once"
        );
    }
}

//! One simulated Tribune server: the real core stores, openraft and the core's cluster
//! engine (the same write path, read barrier, forming and reconcile the agent runs), over
//! madsim. Only the shell is the simulator's: the network endpoint and the LAN view.
//!
//! madsim's `restart` re-runs the node's init closure, so [`run`] rebuilds everything from
//! the durable state the harness owns ([`ServerCtx::backend`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::ServerState;
use openraft_rt::watch::WatchReceiver as _;
use tribune_core::cluster::Discovery;
use tribune_core::cluster::ServerConfig;
use tribune_core::fsm::Response;
use tribune_core::gossip::Identity;
use tribune_core::gossip::MemberInfo;
use tribune_core::gossip::Tags;
use tribune_core::raft::rpc::NetFactory;
use tribune_core::raft::LogStore;
use tribune_core::raft::MemBackend;
use tribune_core::raft::NodeId;
use tribune_core::raft::SmStore;

use crate::check::Recorder;
use crate::gossip;
use crate::gossip::Pool;
use crate::gossip::GOSSIP_PORT;
use crate::net::ClientMsg;
use crate::net::ClientReply;
use crate::net::Msg;
use crate::net::Net;
use crate::net::Reply;
use crate::net::SimPeers;
use crate::net::PORT;
use crate::Sabotage;
use crate::SimTypes;

pub type Store = SmStore<SimTypes, MemBackend>;
pub type SimRaft = openraft::Raft<SimTypes, Store>;
pub type Engine = tribune_core::cluster::Server<SimTypes, Store, SimPeers, SimDiscovery>;

/// The datacenter every simulated server is in.
pub const DATACENTER: &str = "dc1";
/// The short-log-reads sabotage's cap: reads of more entries than this (a follower catching
/// up, an apply after a commit jump) come back short.
pub const SHORT_READ_ENTRIES: usize = 8;
/// Snapshots go in small chunks here, so that every snapshot the simulator sends is several
/// messages (production's are 1 MiB).
pub const SNAPSHOT_CHUNK_BYTES: usize = 64;
/// A snapshot every this many entries (production: 16,384), so that servers that were
/// down or cut off often catch up from a snapshot.
pub const SNAPSHOT_EVERY: u64 = 50;
/// How often a server checks whether a snapshot is due (production's schedule, Consul's
/// `raft_snapshot_interval`, shortened so that runs of a few seconds take many snapshots).
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);
/// How often the leader reconciles the LAN view into the Raft configuration.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// The simulated disk under a server's store: whenever batches wait for a sync, it syncs
/// them after an fsync's latency (0.1 to 2 ms, and one in 50 a stall of 5 to 40 ms), all
/// that arrived meanwhile with the same sync (group commit, as the agent's sync thread
/// does). An append is durable, and acknowledged to openraft, only then. It runs as a task
/// of the server's node, so a kill stops it and whatever it had not synced is lost.
fn simulated_disk(backend: Arc<MemBackend>) {
    // The wake-up is in place before the server writes anything (a write whose wake-up went
    // to the previous incarnation's disk would wait for good), and a first round syncs what
    // is pending already.
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    backend.on_pending(Arc::new(move || w.notify_one()));
    wake.notify_one();
    madsim::task::spawn(async move {
        loop {
            wake.notified().await;
            let us = match madsim::rand::random::<u32>() % 50 {
                0 => 5_000 + madsim::rand::random::<u64>() % 35_000,
                _ => 100 + madsim::rand::random::<u64>() % 1_900,
            };
            madsim::time::sleep(Duration::from_micros(us)).await;
            backend.sync();
        }
    });
}

/// A server's gossip tags, as the agent sets them.
fn server_tags(raft_id: NodeId, expect: u64) -> Tags {
    [
        ("role", "consul".to_string()),
        ("dc", DATACENTER.to_string()),
        ("port", PORT.to_string()),
        ("raft_id", raft_id.to_string()),
        ("expect", expect.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The engine's view of the world in the simulator: its LAN pool.
pub struct SimDiscovery {
    pool: Pool,
    join: Vec<String>,
}

impl Discovery for SimDiscovery {
    fn lan_members(&self) -> Option<Vec<MemberInfo>> {
        Some(self.pool.members())
    }

    async fn join_addrs(&self) -> Vec<String> {
        self.join.clone()
    }
}

/// What survives a server's crash, owned by the harness. A server keeps its slot (its
/// address and the harness's number for it) for the whole run; its Raft id and its store
/// are new after a wipe.
pub struct ServerCtx {
    /// The slot: the server's first Raft id.
    pub slot: NodeId,
    id: AtomicU64,
    pub addr: SocketAddr,
    /// Every server's address (the join addresses) and the number to bootstrap with.
    pub members: BTreeMap<NodeId, SocketAddr>,
    backend: Mutex<Arc<MemBackend>>,
    pub recorder: Arc<Mutex<Recorder>>,
    pub sabotage: Sabotage,
    /// The running incarnation's LAN pool (the harness makes it leave).
    pub pool: Mutex<Option<Pool>>,
    /// `bootstrap_expect`.
    pub expect: u64,
    /// When the server first starts (it is not running, nor in the LAN pool, before).
    pub start_at: Mutex<Option<madsim::time::Instant>>,
    /// The engine of the running incarnation, for the harness's final checks.
    pub live: Mutex<Option<(Arc<Engine>, Store)>>,
    /// The state machine's dedup table size, if the plan makes it small.
    pub dedup_clients_max: Option<usize>,
    /// The running incarnation's local services and checks (see `local`).
    pub local: Mutex<Option<Arc<crate::local::SimLocal>>>,
    /// Set by the harness when the fault plan ends: the local workload stops changing.
    pub local_quiet: std::sync::atomic::AtomicBool,
    /// The local workload's seed, and the incarnations started (each reseeds it).
    pub local_seed: u64,
    pub restarts: AtomicU64,
}

impl ServerCtx {
    pub fn new(
        id: NodeId,
        addr: SocketAddr,
        members: BTreeMap<NodeId, SocketAddr>,
        recorder: Arc<Mutex<Recorder>>,
        sabotage: Sabotage,
        expect: u64,
        start_at: madsim::time::Instant,
    ) -> Self {
        Self {
            slot: id,
            id: AtomicU64::new(id),
            addr,
            members,
            backend: Mutex::new(Arc::new(MemBackend::new())),
            recorder,
            sabotage,
            pool: Mutex::new(None),
            expect,
            start_at: Mutex::new(Some(start_at)),
            live: Mutex::new(None),
            dedup_clients_max: None,
            local: Mutex::new(None),
            local_quiet: std::sync::atomic::AtomicBool::new(false),
            local_seed: id,
            restarts: AtomicU64::new(0),
        }
    }

    /// The Raft id of the current incarnation.
    pub fn id(&self) -> NodeId {
        self.id.load(Ordering::SeqCst)
    }

    pub fn backend(&self) -> Arc<MemBackend> {
        self.backend.lock().unwrap().clone()
    }

    /// The data dir is wiped (the server must be down): an empty store and a new Raft id.
    pub fn wipe(&self, new_id: NodeId) {
        *self.backend.lock().unwrap() = Arc::new(MemBackend::new());
        self.id.store(new_id, Ordering::SeqCst);
    }

    pub fn live(&self) -> Option<(SimRaft, Store)> {
        self.live
            .lock()
            .unwrap()
            .as_ref()
            .map(|(e, s)| (e.raft.clone(), s.clone()))
    }
}

fn engine_config(ctx: &ServerCtx) -> ServerConfig {
    let mut cfg = ServerConfig::new(
        ctx.id(),
        ctx.addr.to_string(),
        format!("server-{}", ctx.slot),
        DATACENTER.to_string(),
        madsim::rand::random::<u64>() >> 16,
    );
    // Simulated time is short: a client waits 2.5 s for an answer.
    cfg.request_deadline = Duration::from_millis(2_000);
    cfg.forward_ttl = Duration::from_millis(400);
    cfg.hello_ttl = Duration::from_millis(400);
    cfg.sabotage = tribune_core::cluster::Sabotage {
        stale_read: ctx.sabotage == Sabotage::StaleRead,
        ack_before_commit: ctx.sabotage == Sabotage::AckBeforeCommit,
        ignore_target: ctx.sabotage == Sabotage::IgnoreTarget,
        unguarded_removal: ctx.sabotage == Sabotage::UnguardedRemoval,
        no_claim: ctx.sabotage == Sabotage::NoClaim,
        lane_poison: ctx.sabotage == Sabotage::LanePoison,
        stale_serf_health: ctx.sabotage == Sabotage::StaleSerfHealth,
    };
    cfg
}

/// The server's main task: build the node from durable state and serve forever.
pub async fn run(ctx: Arc<ServerCtx>) {
    let first_start = *ctx.start_at.lock().unwrap();
    if let Some(at) = first_start {
        madsim::time::sleep_until(at).await;
        *ctx.start_at.lock().unwrap() = None;
        // (The server joins the LAN pool when it first starts.)
    }
    let net = Net::bind(ctx.addr).await.expect("bind");
    let gossip_at = |addr: &SocketAddr| SocketAddr::new(addr.ip(), GOSSIP_PORT);
    let identity = Identity {
        name: format!("server-{}", ctx.slot),
        addr: gossip_at(&ctx.addr),
        tags: server_tags(ctx.id(), ctx.expect),
    };
    let join = ctx
        .members
        .values()
        .filter(|a| **a != ctx.addr)
        .map(gossip_at)
        .collect();
    let pool = gossip::start(identity, join, ctx.recorder.clone())
        .await
        .expect("gossip bind");
    *ctx.pool.lock().unwrap() = Some(pool.clone());
    let backend = ctx.backend();
    simulated_disk(backend.clone());
    let claims = Box::new(tribune_core::cluster::bootstrap::BackendClaims(
        backend.clone(),
    ));
    let mut log = LogStore::new(backend.clone());
    log.skip_fsync = ctx.sabotage == Sabotage::SkipFsync;
    log.ignore_sync_errors = ctx.sabotage == Sabotage::IgnoreSyncErrors;
    if ctx.sabotage == Sabotage::ShortLogReads {
        log.short_reads = Some(SHORT_READ_ENTRIES);
    }
    let recorder = ctx.recorder.clone();
    let me = ctx.id();
    let mut sm = SmStore::open(backend)
        .expect("open state machine")
        .with_observer(Arc::new(move |a| recorder.lock().unwrap().applied(me, a)));
    sm.dedup_clients_max = ctx.dedup_clients_max;
    sm.sabotage = tribune_core::fsm::Sabotage {
        noop_bumps_index: ctx.sabotage == Sabotage::NoopBumpsIndex,
        no_dedup: ctx.sabotage == Sabotage::NoDedup,
        no_eviction_horizon: ctx.sabotage == Sabotage::NoEvictionHorizon,
    };
    let mut config =
        tribune_core::raft::config(tribune_core::raft::DEFAULT_RAFT_MULTIPLIER, SNAPSHOT_EVERY);
    if ctx.sabotage == Sabotage::LeaderRestore {
        config.enable_leader_restore = Some(true);
    }
    let config = Arc::new(config.validate().expect("raft config"));
    let peers = SimPeers { net: net.clone() };
    let raft = match SimRaft::new(
        me,
        config,
        NetFactory {
            transport: peers.clone(),
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        },
        log,
        sm.clone(),
    )
    .await
    {
        Ok(raft) => raft,
        Err(e) => {
            // A server must always start again from what its store kept.
            ctx.recorder.lock().unwrap().violate(format!(
                "restart: server {} could not start from its store: {e}",
                ctx.slot
            ));
            return;
        }
    };
    let discovery = SimDiscovery {
        pool: pool.clone(),
        join: ctx.members.values().map(|a| a.to_string()).collect(),
    };
    let engine = Arc::new(Engine::new(
        raft.clone(),
        engine_config(&ctx),
        peers,
        discovery,
        claims,
    ));
    let reader = sm.clone();
    engine.read_catalog_with(Arc::new(move |f| reader.read(|s| f(s.catalog()))));
    *ctx.live.lock().unwrap() = Some((engine.clone(), sm.clone()));
    crate::local::start(&ctx, engine.clone(), sm.clone());

    // Production's forming and reconcile loops.
    let expect = ctx.expect;
    let e = engine.clone();
    madsim::task::spawn(async move { e.form_cluster(expect, Duration::from_millis(500)).await });
    let e = engine.clone();
    madsim::task::spawn(async move { e.reconcile(RECONCILE_EVERY).await });
    let e = engine.clone();
    madsim::task::spawn(async move { e.snapshots(SNAPSHOT_INTERVAL, SNAPSHOT_EVERY).await });

    // Record who leads in which term (at most one leader per term).
    let mut metrics = raft.metrics();
    let recorder = ctx.recorder.clone();
    madsim::task::spawn(async move {
        use openraft_rt::watch::WatchReceiver;
        loop {
            {
                let m = metrics.borrow_watched();
                if m.state == ServerState::Leader {
                    recorder.lock().unwrap().leader(m.current_term, me);
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });

    loop {
        let Ok((tag, msg, from)) = net.next_request().await else {
            return;
        };
        let engine = engine.clone();
        let sm = sm.clone();
        let net = net.clone();
        let recorder = ctx.recorder.clone();
        madsim::task::spawn(async move {
            let reply = handle(&engine, &sm, msg, &recorder).await;
            net.reply(from, tag, &reply).await;
        });
    }
}

async fn handle(engine: &Engine, sm: &Store, msg: Msg, recorder: &Mutex<Recorder>) -> Reply {
    match msg {
        Msg::Peer(rpc) => Reply::Peer(engine.handle(rpc).await),
        Msg::Client(ClientMsg::Write(cmd)) => Reply::Client(match engine.write(cmd).await {
            Ok(Response::Expired) => {
                // The dedup table's verdict on a retired lane, which the write path must
                // never pass on: a client would get an error for a write that could go in.
                recorder.lock().unwrap().violate(format!(
                    "expired: server {} answered a write with Expired (its lane's client id \
                     was evicted from the dedup table)",
                    engine.id()
                ));
                ClientReply::Written(Response::Expired)
            }
            Ok(r) => {
                if crate::debug() {
                    eprintln!(
                        "t={:?} write on {} -> {:?}",
                        madsim::time::Instant::now(),
                        engine.id(),
                        r
                    );
                }
                ClientReply::Written(r)
            }
            Err(e) => ClientReply::Unknown(e.to_string()),
        }),
        Msg::Client(ClientMsg::Read { key }) => {
            if let Err(e) = engine.read_barrier().await {
                return Reply::Client(ClientReply::Refused(e.to_string()));
            }
            let entry = sm.read(|s| s.kv().get(&key).cloned());
            if crate::debug() {
                let m = engine.raft.metrics().borrow_watched().clone();
                eprintln!(
                    "t={:?} read {key} on {} state={:?} term={} leader={:?} applied={:?} -> {:?}",
                    madsim::time::Instant::now(),
                    engine.id(),
                    m.state,
                    m.current_term,
                    m.current_leader,
                    sm.read(|s| s.last_applied()),
                    entry.as_ref().map(|e| e.modify_index)
                );
            }
            Reply::Client(ClientReply::Read { entry })
        }
    }
}

//! One simulated Tribune server: the real core stores and openraft, over madsim.
//!
//! madsim's `restart` re-runs the node's init closure, so [`run`] rebuilds everything from
//! the durable state the harness owns ([`ServerCtx::backend`]).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::impls::BasicNode;
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft_rt::watch::WatchReceiver as _;
use tribune_core::fsm::Response;
use tribune_core::kv::KvOutcome;
use tribune_core::raft::LogStore;
use tribune_core::raft::MemBackend;
use tribune_core::raft::NodeId;
use tribune_core::raft::SmStore;

use crate::check::Recorder;
use crate::net::ClientMsg;
use crate::net::ClientReply;
use crate::net::Msg;
use crate::net::Net;
use crate::net::NetFactory;
use crate::net::Reply;
use crate::Sabotage;
use crate::SimTypes;

pub type Store = SmStore<SimTypes, MemBackend>;
pub type SimRaft = openraft::Raft<SimTypes, Store>;

/// What survives a server's crash, owned by the harness.
pub struct ServerCtx {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub members: BTreeMap<NodeId, SocketAddr>,
    pub backend: Arc<MemBackend>,
    pub recorder: Arc<Mutex<Recorder>>,
    pub sabotage: Sabotage,
    /// The Raft handle of the running incarnation, for the harness's final checks.
    pub live: Mutex<Option<(SimRaft, Store)>>,
    booted_once: AtomicBool,
}

impl ServerCtx {
    pub fn new(
        id: NodeId,
        addr: SocketAddr,
        members: BTreeMap<NodeId, SocketAddr>,
        recorder: Arc<Mutex<Recorder>>,
        sabotage: Sabotage,
    ) -> Self {
        Self {
            id,
            addr,
            members,
            backend: Arc::new(MemBackend::new()),
            recorder,
            sabotage,
            live: Mutex::new(None),
            booted_once: AtomicBool::new(false),
        }
    }

    pub fn live(&self) -> Option<(SimRaft, Store)> {
        self.live.lock().unwrap().clone()
    }
}

/// The server's main task: build the node from durable state and serve forever.
pub async fn run(ctx: Arc<ServerCtx>) {
    let net = Net::bind(ctx.addr).await.expect("bind");
    let mut log = LogStore::new(ctx.backend.clone());
    log.skip_fsync = ctx.sabotage == Sabotage::SkipFsync;
    let recorder = ctx.recorder.clone();
    let me = ctx.id;
    let mut sm = SmStore::open(ctx.backend.clone())
        .expect("open state machine")
        .with_observer(Arc::new(move |a| recorder.lock().unwrap().applied(me, a)));
    sm.sabotage = tribune_core::fsm::Sabotage {
        noop_bumps_index: ctx.sabotage == Sabotage::NoopBumpsIndex,
        no_dedup: ctx.sabotage == Sabotage::NoDedup,
    };
    let config = Arc::new(tribune_core::raft::config(tribune_core::raft::DEFAULT_RAFT_MULTIPLIER, 200).validate().expect("raft config"));
    let raft = SimRaft::new(ctx.id, config, NetFactory { net: net.clone() }, log, sm.clone()).await.expect("raft starts");
    if !ctx.booted_once.swap(true, Ordering::SeqCst) {
        let members: BTreeMap<NodeId, BasicNode> =
            ctx.members.iter().map(|(id, a)| (*id, BasicNode { addr: a.to_string() })).collect();
        // Every server initializes the same membership on first boot; all but the first
        // call are refused, which is fine.
        let _ = raft.initialize(members).await;
    }
    *ctx.live.lock().unwrap() = Some((raft.clone(), sm.clone()));

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
        let Ok((tag, msg, from)) = net.next_request().await else { return };
        let raft = raft.clone();
        let sm = sm.clone();
        let net = net.clone();
        let sabotage = ctx.sabotage;
        let members: BTreeSet<NodeId> = ctx.members.keys().copied().collect();
        madsim::task::spawn(async move {
            let reply = handle(&raft, &sm, sabotage, &members, msg).await;
            net.reply(from, tag, &reply).await;
        });
    }
}

async fn handle(raft: &SimRaft, sm: &Store, sabotage: Sabotage, _members: &BTreeSet<NodeId>, msg: Msg) -> Reply {
    match msg {
        Msg::Raft(rpc) => Reply::Raft(tribune_core::raft::rpc::serve(raft, rpc).await),
        Msg::Client(ClientMsg::Write(req)) => {
            if sabotage == Sabotage::AckBeforeCommit && raft.is_leader() {
                // Wrong on purpose: acknowledge before the entry is committed.
                let _ = raft.client_write_ff(req, None).await;
                let outcome = KvOutcome { ok: true, changed: true };
                return Reply::Client(ClientReply::Written(Response::Kv { outcome, index: 0 }));
            }
            Reply::Client(match raft.client_write(req).await {
                Ok(r) => {
                    if crate::debug() {
                        let m = raft.metrics().borrow_watched().clone();
                        eprintln!("t={:?} write on {} term={} log={} -> {:?}", madsim::time::Instant::now(), raft.node_id(), m.current_term, r.log_id, r.data);
                    }
                    ClientReply::Written(r.data)
                }
                Err(e) => match e.forward_to_leader() {
                    Some(f) => ClientReply::NotLeader { leader: f.leader_id },
                    None => ClientReply::Unknown(e.to_string()),
                },
            })
        }
        Msg::Client(ClientMsg::Read { key }) => {
            if sabotage != Sabotage::StaleRead {
                if let Err(e) = raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                    return Reply::Client(match e.forward_to_leader() {
                        Some(f) => ClientReply::NotLeader { leader: f.leader_id },
                        None => ClientReply::Refused(e.to_string()),
                    });
                }
            }
            let entry = sm.read(|s| s.kv().get(&key).cloned());
            if crate::debug() {
                let m = raft.metrics().borrow_watched().clone();
                eprintln!("t={:?} read {key} on {} state={:?} term={} leader={:?} applied={:?} -> {:?}", madsim::time::Instant::now(), raft.node_id(), m.state, m.current_term, m.current_leader, sm.read(|s| s.last_applied()), entry.as_ref().map(|e| e.modify_index));
            }
            Reply::Client(ClientReply::Read { entry })
        }
    }
}

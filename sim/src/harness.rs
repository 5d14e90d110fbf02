//! One seed, end to end: build the cluster, run the workload under the fault plan, heal,
//! demand liveness, and check everything.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::runtime::NodeHandle;
use openraft::ServerState;
use openraft_rt::watch::WatchReceiver;

use crate::check::Fnv;
use crate::check::Recorder;
use crate::faults;
use crate::lin;
use crate::net::PORT;
use crate::plan::Fault;
use crate::plan::Plan;
use crate::server;
use crate::server::ServerCtx;
use crate::workload;
use crate::workload::ClientCfg;
use crate::workload::History;
use crate::Sabotage;

/// Each seed must check at least this many client operations (the busiest fault plans,
/// with two power losses and rejoins through gossip, check about 170).
pub const OPS_MIN: usize = 150;

/// What one seed produced.
#[derive(Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub trace: u64,
    pub ops: usize,
    pub unknown: usize,
    pub inconclusive: usize,
    /// Keys whose history was checked (each is linearizable, a violation, or inconclusive).
    pub keys: usize,
    pub sim_ms: u64,
    pub leader_terms: usize,
    pub membership_changes: u64,
    /// Snapshots the running servers received in more than one chunk.
    pub chunked_snapshots: u64,
    /// Broken properties; empty means the seed passed.
    pub failures: Vec<String>,
}

fn server_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

fn client_ip(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, i as u8))
}

struct Cluster {
    handle: Handle,
    nodes: BTreeMap<u64, NodeHandle>,
    /// By slot (the server's first id).
    ctxs: BTreeMap<u64, Arc<ServerCtx>>,
    /// Slots whose server is down, killed by a fault that will restart it.
    down: Mutex<BTreeSet<u64>>,
    /// Whether a wipe is under way (at most one at a time: two would lose a majority).
    wiping: Mutex<bool>,
    /// The next Raft id a wiped server gets.
    next_id: Mutex<u64>,
}

impl Cluster {
    fn mid(&self, id: u64) -> madsim::task::NodeId {
        self.nodes[&id].id()
    }

    fn cut(&self, a: u64, b: u64, on: bool) {
        let net = NetSim::current();
        let (x, y) = (self.mid(a), self.mid(b));
        if on {
            net.clog_link(x, y);
            net.clog_link(y, x);
        } else {
            net.unclog_link(x, y);
            net.unclog_link(y, x);
        }
    }

    fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for (id, ctx) in &self.ctxs {
            if let Some((raft, _)) = ctx.live() {
                let m = raft.metrics().borrow_watched().clone();
                if m.state == ServerState::Leader && best.is_none_or(|(t, _)| m.current_term > t) {
                    best = Some((m.current_term, *id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Whether the leader's configuration is settled (not joint) with every server, under
    /// its current id, a voter.
    fn all_voters(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let Some((raft, _)) = self.ctxs[&l].live() else {
            return false;
        };
        let m = raft.metrics().borrow_watched().clone();
        let configs = m.membership_config.membership().get_joint_config().clone();
        configs.len() == 1 && self.ctxs.values().all(|c| configs[0].contains(&c.id()))
    }

    /// kill -9 the server in `slot`, unless it is down already; whether it was killed.
    fn kill(&self, slot: u64) -> bool {
        if !self.down.lock().unwrap().insert(slot) {
            return false;
        }
        self.handle.kill(self.mid(slot));
        let ctx = &self.ctxs[&slot];
        *ctx.live.lock().unwrap() = None;
        // kill -9: whatever was not synced is gone, but for the first few unsynced batches,
        // which the OS may have written back (the last one possibly torn, so lost whole).
        let backend = ctx.backend();
        let unsynced = backend.unsynced_batches();
        backend.crash_keeping(madsim::rand::random::<usize>() % (unsynced + 1));
        true
    }

    /// A graceful leave of the server in `slot`, then its exit; whether it was up to leave.
    async fn leave_and_stop(&self, slot: u64) -> bool {
        let ctx = &self.ctxs[&slot];
        let pool = ctx.pool.lock().unwrap().clone();
        let engine = ctx.live.lock().unwrap().as_ref().map(|(e, _)| e.clone());
        let (Some(pool), Some(engine)) = (pool, engine) else {
            return false;
        };
        if self.down.lock().unwrap().contains(&slot) {
            return false;
        }
        pool.leave().await;
        engine.leave(Duration::from_secs(3)).await;
        // A clean exit: the store is synced.
        ctx.backend().sync();
        self.kill(slot)
    }

    fn restart(&self, slot: u64) {
        if self.down.lock().unwrap().remove(&slot) {
            self.handle.restart(self.mid(slot));
        }
    }

    /// The amnesia scenario (see [`Fault::Amnesia`]), over `for_ms`.
    async fn amnesia(&self, for_ms: u64) {
        let ids: Vec<u64> = self.ctxs.keys().copied().collect();
        let Some(leader) = self.leader() else { return };
        let followers: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
        {
            let mut wiping = self.wiping.lock().unwrap();
            if *wiping || !self.all_voters() || !self.down.lock().unwrap().is_empty() {
                return;
            }
            *wiping = true;
        }
        let majority = ids.len() / 2 + 1;
        // The laggards: a minority; the wiped server and the other holders: the rest.
        let laggards: Vec<u64> = followers[..ids.len() - majority].to_vec();
        let wiped = followers[ids.len() - majority];
        let holders: Vec<u64> = followers[ids.len() - majority + 1..].to_vec();
        let step = Duration::from_millis(for_ms.max(1_200) / 3);
        let cut_off = |side: &[u64], on: bool| {
            for a in side {
                for b in ids.iter().filter(|b| !side.contains(b)) {
                    self.cut(*a, *b, on);
                }
            }
        };
        cut_off(&laggards, true);
        madsim::time::sleep(step).await;
        if self.kill(wiped) {
            let new_id = {
                let mut next = self.next_id.lock().unwrap();
                *next += 1;
                *next
            };
            self.ctxs[&wiped].wipe(new_id);
            self.restart(wiped);
        }
        let mut isolated = holders;
        isolated.push(leader);
        cut_off(&laggards, false);
        isolated
            .iter()
            .for_each(|i| NetSim::current().clog_node(self.mid(*i)));
        madsim::time::sleep(step * 2).await;
        isolated
            .iter()
            .for_each(|i| NetSim::current().unclog_node(self.mid(*i)));
        *self.wiping.lock().unwrap() = false;
    }

    /// Apply a fault; returns how to undo it.
    fn apply(&self, fault: &Fault) -> Box<dyn FnOnce(&Cluster) + Send> {
        let ids: Vec<u64> = self.ctxs.keys().copied().collect();
        match fault.clone() {
            Fault::Partition { side } => {
                let pairs: Vec<(u64, u64)> = side
                    .iter()
                    .flat_map(|a| {
                        ids.iter()
                            .filter(|b| !side.contains(b))
                            .map(move |b| (*a, *b))
                    })
                    .collect();
                pairs.iter().for_each(|(a, b)| self.cut(*a, *b, true));
                Box::new(move |c| pairs.iter().for_each(|(a, b)| c.cut(*a, *b, false)))
            }
            Fault::OneWay { from, to } => {
                NetSim::current().clog_link(self.mid(from), self.mid(to));
                Box::new(move |c| NetSim::current().unclog_link(c.mid(from), c.mid(to)))
            }
            Fault::IsolateLeader => match self.leader() {
                Some(l) => {
                    NetSim::current().clog_node(self.mid(l));
                    Box::new(move |c| NetSim::current().unclog_node(c.mid(l)))
                }
                None => Box::new(|_| {}),
            },
            Fault::Bridge { bridge } => {
                let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != bridge).collect();
                let (a, b) = rest.split_at(rest.len() / 2);
                let pairs: Vec<(u64, u64)> = a
                    .iter()
                    .flat_map(|x| b.iter().map(move |y| (*x, *y)))
                    .collect();
                pairs.iter().for_each(|(x, y)| self.cut(*x, *y, true));
                Box::new(move |c| pairs.iter().for_each(|(x, y)| c.cut(*x, *y, false)))
            }
            Fault::Loss(p) => {
                NetSim::current().update_config(|c| c.packet_loss_rate = p);
                Box::new(|_| NetSim::current().update_config(|c| c.packet_loss_rate = 0.0))
            }
            Fault::SlowNet(ms) => {
                NetSim::current().update_config(|c| {
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(ms)
                });
                Box::new(|_| NetSim::current().update_config(|c| c.send_latency = base_latency()))
            }
            Fault::Duplicate(p) => {
                faults::set_dup_rate(p);
                Box::new(|_| faults::set_dup_rate(0.0))
            }
            Fault::Kill(id) => match self.kill(id) {
                true => Box::new(move |c| c.restart(id)),
                false => Box::new(|_| {}),
            },
            Fault::FsyncError(id) => {
                if self.down.lock().unwrap().contains(&id) {
                    return Box::new(|_| {});
                }
                self.ctxs[&id].backend().fail_next_sync();
                Box::new(move |c| {
                    if c.kill(id) {
                        c.restart(id);
                    }
                })
            }
            Fault::Pause(id) => {
                if self.down.lock().unwrap().contains(&id) {
                    return Box::new(|_| {});
                }
                self.handle.pause(self.mid(id));
                Box::new(move |c| c.handle.resume(c.mid(id)))
            }
            Fault::Wipe(id) => {
                // One wipe at a time, and only once the last one healed (the wiped server is a
                // voter again under its new id): wiping a majority loses data for real.
                let mut wiping = self.wiping.lock().unwrap();
                if *wiping || !self.all_voters() || !self.kill(id) {
                    return Box::new(|_| {});
                }
                *wiping = true;
                let new_id = {
                    let mut next = self.next_id.lock().unwrap();
                    *next += 1;
                    *next
                };
                self.ctxs[&id].wipe(new_id);
                Box::new(move |c| {
                    c.restart(id);
                    *c.wiping.lock().unwrap() = false;
                })
            }
            Fault::Reconfigure(_) | Fault::Amnesia => {
                unreachable!("run as a sequence: see simulate")
            }
            Fault::KillAll => {
                let killed: Vec<u64> = ids.into_iter().filter(|id| self.kill(*id)).collect();
                Box::new(move |c| killed.iter().for_each(|id| c.restart(*id)))
            }
        }
    }
}

fn base_latency() -> std::ops::Range<Duration> {
    Duration::from_millis(1)..Duration::from_millis(5)
}

/// Run one seed inside madsim.
pub fn run_seed(seed: u64, sabotage: Sabotage) -> SeedReport {
    faults::set_dup_rate(0.0);
    let mut config = madsim::Config::default();
    config.net.send_latency = base_latency();
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, config);
    rt.block_on(async move {
        match madsim::time::timeout(SEED_SIM_MAX, simulate(seed, sabotage)).await {
            Ok(report) => report,
            // A hang (a task waiting for good) is a verdict with its repro line, not a run
            // that never ends.
            Err(_) => SeedReport {
                seed,
                trace: 0,
                ops: 0,
                unknown: 0,
                inconclusive: 0,
                keys: 0,
                sim_ms: SEED_SIM_MAX.as_millis() as u64,
                leader_terms: 0,
                membership_changes: 0,
                chunked_snapshots: 0,
                failures: vec![format!(
                    "hang: the seed did not finish within {} simulated seconds",
                    SEED_SIM_MAX.as_secs()
                )],
            },
        }
    })
}

/// The simulated time one seed may take (its plans take under a minute).
pub const SEED_SIM_MAX: Duration = Duration::from_secs(600);

async fn simulate(seed: u64, sabotage: Sabotage) -> SeedReport {
    let plan = Plan::from_seed(seed);
    crate::runtime::reset_drifts();
    let handle = Handle::current();
    let start = madsim::time::Instant::now();
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let history = Arc::new(Mutex::new(History::default()));
    let members: BTreeMap<u64, SocketAddr> = (1..=plan.servers)
        .map(|id| (id, SocketAddr::new(server_ip(id), PORT)))
        .collect();

    let mut cluster = Cluster {
        handle: handle.clone(),
        nodes: BTreeMap::new(),
        ctxs: BTreeMap::new(),
        down: Mutex::new(BTreeSet::new()),
        wiping: Mutex::new(false),
        next_id: Mutex::new(100),
    };
    // Servers join the LAN view when they first start.
    for (&id, &addr) in &members {
        let start_at = start + Duration::from_millis(plan.start_ms[id as usize - 1]);
        let mut ctx = ServerCtx::new(
            id,
            addr,
            members.clone(),
            recorder.clone(),
            sabotage,
            plan.expect,
            start_at,
        );
        ctx.dedup_clients_max = plan.dedup_clients_max;
        ctx.local_seed = plan.seed.rotate_left(17) ^ id;
        let ctx = Arc::new(ctx);
        let c = ctx.clone();
        let node = handle
            .create_node()
            .name(format!("server-{id}"))
            .ip(addr.ip())
            .init(move || server::run(c.clone()))
            .build();
        let rate = plan.clock_rate[id as usize - 1];
        if rate != 1.0 {
            crate::runtime::set_drift(node.id(), rate);
        }
        cluster.nodes.insert(id, node);
        cluster.ctxs.insert(id, ctx);
    }
    for i in 1..=plan.clients {
        let cfg = ClientCfg {
            id: 1000 + i,
            addr: SocketAddr::new(client_ip(i), PORT),
            servers: members.clone(),
            keys: plan.keys,
            think_ms: plan.think_ms,
            until_ms: plan.safety_ms,
            history: history.clone(),
        };
        handle
            .create_node()
            .name(format!("client-{i}"))
            .ip(cfg.addr.ip())
            .build()
            .spawn(workload::run_client(cfg, start));
    }

    // Safety phase: the fault plan. Each episode runs on its own, so episodes may overlap.
    let cluster = Arc::new(cluster);
    let mut episodes = Vec::new();
    for ep in plan.episodes.clone() {
        let cluster = cluster.clone();
        episodes.push(madsim::task::spawn(async move {
            madsim::time::sleep_until(start + Duration::from_millis(ep.at_ms)).await;
            if crate::debug() {
                eprintln!(
                    "t={:?} fault {:?} for {} ms (leader {:?})",
                    madsim::time::Instant::now(),
                    ep.fault,
                    ep.for_ms,
                    cluster.leader()
                );
            }
            if let Fault::Reconfigure(id) = ep.fault {
                // The server leaves gracefully, as `tribune leave` makes it: the LAN pool
                // first (the leader's reconcile removes it from the voters), then the Raft
                // configuration, then it stops. It comes back later and rejoins the pool
                // (it is added as a learner, then made a voter).
                if cluster.leave_and_stop(id).await {
                    madsim::time::sleep(Duration::from_millis(ep.for_ms)).await;
                    cluster.restart(id);
                }
                return;
            }
            if ep.fault == Fault::Amnesia {
                cluster.amnesia(ep.for_ms).await;
                return;
            }
            let undo = cluster.apply(&ep.fault);
            madsim::time::sleep(Duration::from_millis(ep.for_ms)).await;
            undo(&cluster);
        }));
    }
    madsim::time::sleep_until(start + Duration::from_millis(plan.safety_ms)).await;
    // Every fault undone before the liveness phase, and the agents' local services left
    // as they are.
    for ep in episodes {
        let _ = ep.await;
    }
    for ctx in cluster.ctxs.values() {
        ctx.local_quiet
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    // Liveness phase: no faults. A write must succeed and every server converge.
    let mut failures = Vec::new();
    let probe_history = Arc::new(Mutex::new(History::default()));
    let probe = ClientCfg {
        id: 999,
        addr: SocketAddr::new(client_ip(200), PORT),
        servers: members.clone(),
        keys: 1,
        think_ms: 0,
        until_ms: 0,
        history: probe_history.clone(),
    };
    let liveness_deadline = madsim::time::Instant::now() + Duration::from_millis(plan.liveness_ms);
    let probe_done = Arc::new(Mutex::new(None::<u64>));
    let pd = probe_done.clone();
    handle
        .create_node()
        .name("probe")
        .ip(probe.addr.ip())
        .build()
        .spawn(async move {
            let index = workload::probe_write(probe).await;
            *pd.lock().unwrap() = index;
        });
    // Every server a voter again (the leader's reconcile does it), then let clients
    // finish their last operations.
    while madsim::time::Instant::now() < liveness_deadline && !cluster.all_voters() {
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    if !cluster.all_voters() {
        dump_servers(&cluster);
        failures.push(
            "liveness: the leader did not make every server a voter again after healing"
                .to_string(),
        );
    }
    madsim::time::sleep(Duration::from_millis(3_000)).await;
    let mut converged = false;
    let mut last_seen = Vec::new();
    let mut catalog = Err("catalog: never read".to_string());
    while madsim::time::Instant::now() < liveness_deadline {
        madsim::time::sleep(Duration::from_millis(100)).await;
        let Some(target) = *probe_done.lock().unwrap() else {
            continue;
        };
        let applied: Vec<Option<u64>> = cluster
            .ctxs
            .values()
            .map(|c| c.live().map(|(_, sm)| sm.read(|s| s.last_applied())))
            .collect();
        let top = applied.iter().flatten().max().copied().unwrap_or(0);
        catalog = catalog_in_step(&cluster)
            .map_err(|e| format!("catalog: {e}"))
            .and_then(|()| local_in_step(&cluster));
        if top >= target && applied.iter().all(|a| *a == Some(top)) && catalog.is_ok() {
            converged = true;
            break;
        }
        last_seen = applied;
    }
    if probe_done.lock().unwrap().is_none() {
        failures.push(format!(
            "liveness: no write succeeded within {} ms after healing",
            plan.liveness_ms
        ));
    } else if let (false, Err(e)) = (converged, &catalog) {
        dump_servers(&cluster);
        failures.push(e.clone());
    } else if !converged {
        dump_servers(&cluster);
        failures.push(format!(
            "liveness: servers did not converge to one applied index after healing \
            (applied, by slot: {last_seen:?})"
        ));
    }

    // Identical state at equal index.
    let mut states: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    for (id, ctx) in &cluster.ctxs {
        if let Some((_, sm)) = ctx.live() {
            let (applied, snap, inv) =
                sm.read(|s| (s.last_applied(), s.snapshot(), s.check_invariants()));
            if let Err(e) = inv {
                failures.push(format!("state invariant on server {id}: {e}"));
            }
            states.push((*id, applied, snap));
        }
    }
    // Every pair, not only neighbours: one server may differ from two that agree.
    for (i, a) in states.iter().enumerate() {
        for b in &states[i + 1..] {
            if a.1 == b.1 && a.2 != b.2 {
                failures.push(format!(
                    "servers {} and {} differ at index {}",
                    a.0, b.0, a.1
                ));
            }
        }
    }

    // Acknowledged writes, then invariants seen along the way.
    let h = history.lock().unwrap();
    {
        let mut r = recorder.lock().unwrap();
        for (index, req) in &h.acked {
            r.acked(*index, req);
        }
        failures.extend(r.violations.iter().cloned());
    }

    // Linearizability, key by key.
    let mut by_key: BTreeMap<&str, Vec<&lin::Op>> = BTreeMap::new();
    for (k, op) in &h.ops {
        by_key.entry(k.as_str()).or_default().push(op);
    }
    let mut inconclusive = 0;
    for (k, ops) in &by_key {
        match lin::check_key(ops) {
            lin::Verdict::Linearizable => {}
            lin::Verdict::Inconclusive => inconclusive += 1,
            lin::Verdict::Violation(v) => {
                if crate::debug() {
                    let mut sorted = ops.clone();
                    sorted.sort_by_key(|o| o.invoke);
                    for o in sorted {
                        eprintln!(
                            "{k} c{} [{} .. {}] {:?} -> {:?}",
                            o.client, o.invoke, o.complete, o.kind, o.outcome
                        );
                    }
                }
                failures.push(format!("linearizability of {k}: {v}"))
            }
        }
    }

    if h.ops.len() < OPS_MIN {
        failures.push(format!(
            "workload: only {} operations checked (at least {OPS_MIN} per seed)",
            h.ops.len()
        ));
    }

    let mut trace = Fnv::default();
    for (k, op) in &h.ops {
        trace
            .bytes(k.as_bytes())
            .u64(op.client)
            .u64(op.invoke)
            .u64(op.complete);
        trace.bytes(format!("{:?}{:?}", op.kind, op.outcome).as_bytes());
    }
    let r = recorder.lock().unwrap();
    trace.u64(r.trace.finish());
    for (_, applied, snap) in &states {
        trace.u64(*applied).bytes(snap);
    }
    SeedReport {
        seed,
        trace: trace.finish(),
        ops: h.ops.len(),
        unknown: h
            .ops
            .iter()
            .filter(|(_, o)| o.outcome == lin::Outcome::Unknown)
            .count(),
        inconclusive,
        keys: by_key.len(),
        sim_ms: start.elapsed().as_millis() as u64,
        leader_terms: r.leader_terms(),
        membership_changes: r.membership_entries.saturating_sub(1),
        chunked_snapshots: cluster
            .ctxs
            .values()
            .filter_map(|c| {
                c.live
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|(e, _)| e.snapshot_chunks().1)
            })
            .sum(),
        failures,
    }
}

/// With TRIBUNE_SIM_DEBUG set, print each live server's Raft metrics and gossip view.
fn dump_servers(cluster: &Cluster) {
    if !crate::debug() {
        return;
    }
    for (slot, ctx) in &cluster.ctxs {
        if let Some((raft, _)) = ctx.live() {
            let m = raft.metrics().borrow_watched().clone();
            eprintln!(
                "server {slot} (id {}, {} unsynced, {} waiting): {:?} term {} leader {:?} \
                last log {:?} applied {:?} replication {:?} membership {:?}",
                ctx.id(),
                ctx.backend().unsynced_batches(),
                ctx.backend().waiting_batches(),
                m.state,
                m.current_term,
                m.current_leader,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.replication.as_ref().map(|r| r
                    .iter()
                    .map(|(k, v)| (*k, v.map(|l| l.index)))
                    .collect::<Vec<_>>()),
                m.membership_config
            );
        }
        if let Some(pool) = ctx.pool.lock().unwrap().as_ref() {
            for m in pool.members() {
                eprintln!(
                    "  sees {} {:?} inc {} raft_id {:?}",
                    m.name,
                    m.state,
                    m.incarnation,
                    m.tags.get("raft_id")
                );
            }
        }
    }
}

/// After healing, every server's agent must have brought its slice of the catalog in step
/// with its local services and checks (anti-entropy). Read from one live server.
fn local_in_step(cluster: &Cluster) -> Result<(), String> {
    let Some((_, sm)) = cluster.ctxs.values().find_map(|c| c.live()) else {
        return Err("anti-entropy: no live server".into());
    };
    for ctx in cluster.ctxs.values() {
        if ctx.live().is_none() {
            continue;
        }
        let Some(agent) = ctx.local.lock().unwrap().clone() else {
            continue;
        };
        let name = format!("server-{}", ctx.slot);
        let remote = sm.read(|s| tribune_core::local::RemoteNode::of(s.catalog(), &name));
        if let Some(e) = agent.read(|l| l.differs_from(&remote)) {
            return Err(format!("anti-entropy: {e}"));
        }
    }
    Ok(())
}

/// After healing, the leader's catalog reconcile must list every server: its node with a
/// passing `serfHealth` check and its `consul` service. Read from one live server (all
/// of them have applied the same entries once the cluster converged).
fn catalog_in_step(cluster: &Cluster) -> Result<(), String> {
    use tribune_core::catalog::Health;
    let Some((_, sm)) = cluster.ctxs.values().find_map(|c| c.live()) else {
        return Err("no live server".into());
    };
    sm.read(|s| {
        let c = s.catalog();
        for (slot, ctx) in &cluster.ctxs {
            if ctx.live().is_none() {
                continue;
            }
            let name = format!("server-{slot}");
            let serf = c
                .node_checks(&name)
                .find(|ch| ch.info.check_id == tribune_core::catalog::SERF_CHECK_ID);
            match serf {
                None => return Err(format!("{name} has no serfHealth check after healing")),
                Some(ch) if ch.info.status != Health::Passing => {
                    return Err(format!(
                        "{name}'s serfHealth is {} after healing",
                        ch.info.status.as_str()
                    ))
                }
                Some(_) => {}
            }
            if !c.node_services(&name).any(|s| s.info.name == "consul") {
                return Err(format!("{name} has no consul service after healing"));
            }
        }
        Ok(())
    })
}

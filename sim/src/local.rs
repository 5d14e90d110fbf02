//! Every simulated server is also an agent with local services and checks: the core's
//! [`LocalAgent`] and [`AntiEntropy`] (production's syncer, on shorter intervals) push them
//! into the catalog through the server's own write path, while a small workload changes
//! them until the fault plan ends. After healing, the harness requires each server's slice
//! of the catalog to equal its local state.
//!
//! A restart starts the local state empty (as an agent whose services come only from the
//! HTTP API does), so the first full sync must deregister what the catalog still holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::RngExt;
use rand::SeedableRng;
use tribune_core::catalog::CatalogOp;
use tribune_core::catalog::CheckInfo;
use tribune_core::catalog::Health;
use tribune_core::catalog::NodeInfo;
use tribune_core::catalog::ServiceInfo;
use tribune_core::fsm::Command;
use tribune_core::fsm::Response;
use tribune_core::local::anti_entropy::AntiEntropy;
use tribune_core::local::anti_entropy::CatalogPort;
use tribune_core::local::anti_entropy::LocalAgent;
use tribune_core::local::anti_entropy::SyncError;
use tribune_core::local::anti_entropy::SyncTimes;
use tribune_core::local::LocalCheck;
use tribune_core::local::RemoteNode;

use crate::runtime::MadsimRuntime;
use crate::server::Engine;
use crate::server::ServerCtx;
use crate::server::Store;

pub type SimLocal = LocalAgent<MadsimRuntime>;

/// The syncer's intervals here: runs last seconds, not hours.
pub const SIM_SYNC_TIMES: SyncTimes = SyncTimes {
    full: Duration::from_secs(3),
    retry: Duration::from_secs(1),
};

/// The catalog as a server's own agent reaches it: its state machine for reads (stale, as
/// Consul's anti-entropy reads), the engine's write path for writes.
struct ServerPort {
    engine: Arc<Engine>,
    sm: Store,
}

impl CatalogPort for ServerPort {
    async fn node_slice(&self, name: &str) -> Result<RemoteNode, SyncError> {
        Ok(self.sm.read(|s| RemoteNode::of(s.catalog(), name)))
    }

    async fn apply(&self, op: CatalogOp) -> Result<(), SyncError> {
        match self.engine.write(Command::Catalog(op)).await {
            Ok(Response::Catalog { result: Ok(_), .. }) => Ok(()),
            Ok(Response::Catalog { result: Err(e), .. }) => Err(SyncError::Refused(e.to_string())),
            Ok(other) => Err(SyncError::Refused(format!("unexpected {other:?}"))),
            Err(e) => Err(SyncError::Unavailable(e.to_string())),
        }
    }
}

/// Start this incarnation's agent: its syncer and its workload.
pub fn start(ctx: &Arc<ServerCtx>, engine: Arc<Engine>, sm: Store) {
    let node = NodeInfo {
        name: format!("server-{}", ctx.slot),
        address: ctx.addr.ip().to_string(),
        datacenter: crate::server::DATACENTER.to_string(),
        ..NodeInfo::default()
    };
    let agent = Arc::new(SimLocal::new(node));
    if ctx.sabotage == crate::Sabotage::KeepStrays {
        agent.change(|s| s.sabotage_keep_strays = true);
    }
    *ctx.local.lock().unwrap() = Some(agent.clone());
    let seed = ctx.local_seed ^ ctx.restarts.fetch_add(1, Ordering::Relaxed);
    let ae =
        AntiEntropy::new(agent.clone(), ServerPort { engine, sm }, seed).with_times(SIM_SYNC_TIMES);
    madsim::task::spawn(async move { ae.run().await });
    let ctx = ctx.clone();
    madsim::task::spawn(async move { workload(ctx, agent, seed).await });
}

/// Change the local services and checks now and then until the harness says stop.
async fn workload(ctx: Arc<ServerCtx>, agent: Arc<SimLocal>, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6c6f_6361_6c21_2121);
    let mut now = Duration::ZERO;
    while !ctx.local_quiet.load(Ordering::Relaxed) {
        let pause = Duration::from_millis(rng.random_range(200..1_200));
        madsim::time::sleep(pause).await;
        now += pause;
        let i = rng.random_range(0..4u32);
        let op = rng.random_range(0..10u32);
        agent.change(|s| {
            let _ = match op {
                0..=2 => {
                    let svc = ServiceInfo {
                        id: format!("s{i}"),
                        name: format!("svc{}", i % 2),
                        port: rng.random_range(1..4u16),
                        ..ServiceInfo::default()
                    };
                    s.add_service(svc, None)
                }
                3 => s.remove_service(&format!("s{i}")),
                4..=5 => {
                    let on = rng.random_range(0..5u32);
                    let service_id = if on < 4 {
                        format!("s{on}")
                    } else {
                        String::new()
                    };
                    let c = LocalCheck::new(CheckInfo {
                        check_id: format!("c{i}"),
                        name: format!("c{i}"),
                        service_id,
                        ..CheckInfo::default()
                    });
                    s.add_check(c, now)
                }
                6 => s.remove_check(&format!("c{i}")),
                _ => {
                    let h = [Health::Passing, Health::Warning, Health::Critical]
                        [rng.random_range(0..3usize)];
                    s.update_check(&format!("c{i}"), h, String::new(), now)
                        .map(|_| ())
                }
            };
        });
    }
}

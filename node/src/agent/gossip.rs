//! Gossip: the LAN pool (and a server's WAN pool), joining the cluster (the config's
//! addresses and the peers remembered in the snapshot), and what a server's leader keeps in
//! step with gossip.

use std::sync::Arc;

use super::error::bad_address;
use super::error::StartError;
use crate::config::Config;
use crate::http;
use crate::http::AgentInfo;
use crate::raft::RaftStore;
use crate::serf::Pool;
use crate::serf::Snapshot;

/// How often the leader reconciles gossip membership into the Raft configuration.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the gossip snapshot records the live peers.
const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Start the LAN gossip pool (and the WAN pool on servers) unless their ports are -1.
/// A node with the wrong `encrypt` key cannot read or write any packet of the pool.
pub async fn start(
    cfg: &Config,
    agent: &AgentInfo,
) -> Result<(Option<Pool>, Option<Pool>), StartError> {
    use tribune_core::gossip;
    let ip: std::net::IpAddr = cfg
        .advertise_ip()
        .parse()
        .map_err(|_| bad_address("advertise address", cfg.advertise_ip()))?;
    let bind_ip: std::net::IpAddr = cfg
        .bind_addr
        .parse()
        .map_err(|_| bad_address("bind_addr", &cfg.bind_addr))?;
    let keys: Vec<String> = cfg.encrypt.iter().cloned().collect();
    let start = |port: i64, wan: bool| {
        let keys = keys.clone();
        async move {
            if port < 0 || (wan && !cfg.server) || cfg.dev {
                return Ok(None);
            }
            let port = u16::try_from(port).map_err(|_| bad_address("gossip port", port))?;
            let mut config = if wan {
                gossip::Config::wan()
            } else {
                gossip::Config::lan()
            };
            config.keys = keys;
            let name = if wan {
                format!("{}.{}", cfg.node_name, cfg.datacenter)
            } else {
                cfg.node_name.clone()
            };
            let identity = gossip::Identity {
                name,
                addr: std::net::SocketAddr::new(ip, port),
                tags: crate::serf::tags_of(&http::member(agent, wan)),
            };
            let label = if wan { "wan" } else { "lan" };
            Pool::start(
                std::net::SocketAddr::new(bind_ip, port),
                config,
                identity,
                label,
            )
            .await
            .map(Some)
            .map_err(|source| StartError::Gossip {
                label,
                ip: bind_ip,
                port,
                source,
            })
        }
    };
    let lan = start(cfg.serf_lan_port, false).await?;
    let wan = start(cfg.serf_wan_port, true).await?;
    Ok((lan, wan))
}

/// Keep the Raft configuration in step with LAN gossip (on a leader), the WAN pool with the
/// LAN's servers, and join the cluster: the config's addresses, and the peers the snapshot
/// in the data_dir remembers (unless this node left and `rejoin_after_leave` is off). The
/// snapshot is returned for a graceful leave to mark.
pub fn join(
    cfg: &Config,
    raft: Option<&Arc<RaftStore>>,
    lan: Option<&Pool>,
    wan: Option<&Pool>,
) -> Option<Arc<Snapshot>> {
    if let (Some(raft), Some(lan)) = (raft, lan) {
        raft.start_reconcile(lan.clone(), RECONCILE_EVERY);
    }

    if let (Some(lan), Some(wan)) = (lan, wan) {
        tokio::spawn(crate::serf::flood_join(
            lan.clone(),
            wan.clone(),
            RECONCILE_EVERY,
        ));
    }
    let snapshot = cfg
        .data_dir
        .as_ref()
        .filter(|_| lan.is_some())
        .map(|d| Arc::new(Snapshot::new(d.join("serf/local.snapshot"))));
    if let Some(lan) = lan {
        let mut join = cfg.start_join.clone();
        join.extend(cfg.retry_join.iter().cloned());
        if let Some(snapshot) = &snapshot {
            match snapshot.load() {
                Some(prev) if prev.left && !cfg.rejoin_after_leave => {
                    tracing::info!(
                        "serf: Ignoring previous nodes: this node left gracefully \
                        (rejoin_after_leave is off)",
                    )
                }
                Some(prev) if !prev.peers.is_empty() => {
                    tracing::info!(
                        peers = prev.peers.len(),
                        "serf: Re-joining previously known nodes"
                    );
                    join.extend(prev.peers.iter().map(|a| a.to_string()));
                }
                _ => {}
            }
            tokio::spawn(snapshot.clone().keep(lan.clone(), SNAPSHOT_EVERY));
        }
        tokio::spawn(crate::serf::retry_join(
            lan.clone(),
            join,
            cfg.serf_lan_port as u16,
            cfg.retry_interval,
        ));
    }
    snapshot
}

/// The `-dev` agent (no gossip pool) registers itself in its catalog, as its own leader.
pub fn register_dev_agent(cfg: &Config, api: &http::Api) {
    let record = http::member(&api.agent, false);
    let Ok(ip) = api.agent.advertise_ip.parse() else {
        return;
    };
    let port = u16::try_from(cfg.serf_lan_port).unwrap_or(8301);
    let me = tribune_core::gossip::MemberInfo {
        name: api.agent.node_name.clone(),
        addr: std::net::SocketAddr::new(ip, port),
        state: tribune_core::gossip::MemberState::Alive,
        status: 1,
        tags: crate::serf::tags_of(&record),
        incarnation: 1,
    };
    tokio::spawn(crate::store::dev_catalog_sync(
        api.store.clone(),
        me,
        cfg.datacenter.clone(),
        RECONCILE_EVERY,
    ));
}

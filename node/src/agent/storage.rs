//! The store behind the API: the dev store, or a server's Raft store (with its RPC
//! listener), and the reaping of old KV tombstones.

use std::sync::Arc;

use super::error::bad_address;
use super::error::StartError;
use crate::config::Config;
use crate::raft::RaftStore;
use crate::store::DevStore;
use crate::store::Store;

/// Consul's `tombstone_ttl` and the granularity of its tombstone GC.
const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const TOMBSTONE_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(30);

/// The store behind the API: `-dev` gets the single-node in-memory [`DevStore`]; a server
/// gets the replicated Raft store in `data_dir` (returned twice: as the API's store and as
/// itself) and starts forming (or joining) its cluster. A client agent forwards what the
/// servers hold (see `forward`), so its store stays empty.
pub async fn open(
    cfg: &Config,
    rpc_addr: &str,
) -> Result<(Arc<dyn Store>, Option<Arc<RaftStore>>), StartError> {
    if cfg.dev {
        return Ok((Arc::new(DevStore::new(rpc_addr.to_string())), None));
    }
    if !cfg.server {
        return Ok((Arc::new(DevStore::new(rpc_addr.to_string())), None));
    }
    let data_dir = cfg.data_dir.clone().ok_or(StartError::NoDataDir)?;
    let port =
        u16::try_from(cfg.server_port).map_err(|_| bad_address("ports.server", cfg.server_port))?;
    let advertise: std::net::SocketAddr = rpc_addr
        .parse()
        .map_err(|_| bad_address("advertise address", rpc_addr))?;
    let bind: std::net::SocketAddr = format!("{}:{port}", cfg.bind_addr)
        .parse()
        .map_err(|_| bad_address("bind_addr", &cfg.bind_addr))?;
    let mut join = cfg.start_join.clone();
    join.extend(cfg.retry_join.iter().cloned());
    let spec = crate::raft::ServerSpec {
        data_dir: &data_dir,
        bind,
        rpc_addr: advertise,
        name: cfg.node_name.clone(),
        datacenter: cfg.datacenter.clone(),
        raft_multiplier: cfg.raft_multiplier,
        snapshot_threshold: cfg.raft_snapshot_threshold,
        snapshot_interval: cfg.raft_snapshot_interval,
        join,
        gossip: cfg.serf_lan_port >= 0,
    };
    let store = RaftStore::open(spec)
        .await
        .map_err(|source| StartError::RaftStore {
            dir: data_dir.clone(),
            source,
        })?;
    let expect = if cfg.bootstrap {
        1
    } else {
        cfg.bootstrap_expect
    };
    tokio::spawn(store.clone().form_cluster(expect, cfg.retry_interval));
    Ok((store.clone(), Some(store)))
}

/// Reap the store's KV tombstones once they are older than Consul's `tombstone_ttl`.
pub fn reap_tombstones(store: &Arc<dyn Store>, rpc_addr: &str) {
    tokio::spawn(crate::store::reap_tombstones(
        store.clone(),
        rpc_addr.to_string(),
        TOMBSTONE_TTL,
        TOMBSTONE_GRANULARITY,
    ));
}

//! The agent's faces: the HTTP API (and, on a server, the API requests forwarded over
//! RPC), its listener, and the DNS interface.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;

use super::error::StartError;
use super::identity;
use crate::config::Config;
use crate::directory::ClientView;
use crate::directory::Directory;
use crate::directory::LanDirectory;
use crate::directory::StoreDirectory;
use crate::forward::Forwarder;
use crate::http;
use crate::http::AgentInfo;
use crate::http::Api;
use crate::http::Control;
use crate::raft::RaftStore;
use crate::serf::Pool;
use crate::store::Store;

/// What the HTTP API serves from: the store, the gossip pools, this agent; a client agent
/// forwards to the servers it finds in LAN gossip. A server also serves the API requests
/// other agents forward to it over RPC.
pub fn api(
    cfg: &Config,
    store: Arc<dyn Store>,
    raft: Option<&Arc<RaftStore>>,
    (lan, wan): (Option<Pool>, Option<Pool>),
    agent: AgentInfo,
    control: UnboundedSender<Control>,
) -> Arc<Api> {
    let local = Arc::new(crate::local::Local::new(
        local_node(cfg, &agent),
        cfg.enable_script_checks,
        cfg.enable_local_script_checks,
    ));
    let api = Arc::new(Api {
        local,
        store,
        lan: lan.clone(),
        wan,
        agent,
        kv_max_value_size: cfg.kv_max_value_size,
        default_query_time: cfg.default_query_time,
        max_query_time: cfg.max_query_time,
        metrics: Arc::default(),
        control,
        forward: lan.as_ref().filter(|_| !cfg.server && !cfg.dev).map(|lan| {
            crate::forward::Forwarder::new(lan.clone(), cfg.datacenter.clone(), cfg.max_query_time)
        }),
    });
    if let Some(raft) = raft {
        let serve = http::serve_forwarded(api.clone());
        let _ = raft.http.set(crate::forward::over_rpc(serve));
    }
    super::catalog_port::wire_aliases(&api);
    api
}

/// This agent's node as its anti-entropy registers it (Consul's: its id, name, advertise
/// address as `lan` and `wan` tagged addresses, and `node_meta`).
fn local_node(cfg: &Config, agent: &AgentInfo) -> tribune_core::catalog::NodeInfo {
    let ip = agent.advertise_ip.clone();
    let v4 = ip.parse::<std::net::Ipv4Addr>().is_ok();
    let mut tagged = std::collections::BTreeMap::new();
    for k in ["lan", "wan"] {
        tagged.insert(k.to_string(), ip.clone());
        if v4 {
            tagged.insert(format!("{k}_ipv4"), ip.clone());
        }
    }
    tribune_core::catalog::NodeInfo {
        id: agent.node_id.clone(),
        name: agent.node_name.clone(),
        address: ip,
        datacenter: cfg.datacenter.clone(),
        tagged_addresses: tagged,
        meta: agent.node_meta.clone(),
    }
}

/// Bind the HTTP API's listener, unless `ports.http` is -1.
pub async fn bind_http(cfg: &Config) -> Result<Option<TcpListener>, StartError> {
    if cfg.http_port < 0 {
        return Ok(None);
    }
    let listen = cfg.http_listen();
    match TcpListener::bind(&listen).await {
        Ok(l) => Ok(Some(l)),
        Err(source) => Err(StartError::HttpListener {
            addr: listen,
            source,
        }),
    }
}

/// Start the DNS interface. A server or `-dev` agent answers from its own catalog; a
/// client agent from its bounded view of the servers' (see `directory`); both know the
/// nodes LAN gossip knows and this one.
pub async fn start_dns(cfg: &Config, api: &Api) -> Result<(), StartError> {
    let own = identity::own_node(&api.agent)?;
    let lan = LanDirectory::new(own, api.lan.clone());
    let client = api.lan.as_ref().filter(|_| api.forward.is_some());
    let directory: Arc<dyn Directory> = match client {
        Some(pool) => {
            let dc = cfg.datacenter.clone();
            let forward = Forwarder::new(pool.clone(), dc, cfg.max_query_time);
            Arc::new(ClientView::new(lan, Arc::new(forward)))
        }
        None => Arc::new(StoreDirectory::new(api.store.clone(), lan)),
    };
    crate::dns::start(cfg, directory, api.metrics.clone()).await?;
    Ok(())
}

/// Serve the HTTP API on its listener, if it has one.
pub fn serve_http(cfg: &Config, listener: Option<TcpListener>, api: &Arc<Api>) {
    if let Some(l) = listener {
        let serve = http::serve_forwarded(api.clone());
        let per_client = cfg.http_max_conns_per_client;
        let conn = http::ConnConfig::for_values(cfg.kv_max_value_size);
        tokio::spawn(http::serve(l, serve, conn, per_client, 65_536));
        tracing::info!(address = %cfg.http_listen(), "agent: Started HTTP server");
    }
}

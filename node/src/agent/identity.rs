//! Who this agent is: its node id (kept in the data_dir), what the API and gossip say
//! about it, and what DNS says about it.

use super::error::bad_address;
use super::error::StartError;
use crate::config::Config;
use crate::directory::Node;
use crate::http;
use crate::http::AgentInfo;

/// A random (version-4-like) UUID, as Consul makes node ids.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The node id: the config's, else the one kept in the data_dir, else a new one (kept
/// there, when there is a data_dir).
pub fn node_id(cfg: &Config) -> Result<String, StartError> {
    if let Some(id) = &cfg.node_id {
        return Ok(id.clone());
    }
    let Some(dir) = &cfg.data_dir else {
        return Ok(random_uuid());
    };
    let path = dir.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    let id = random_uuid();
    crate::durable::write_file(&path, id.as_bytes())
        .map_err(|source| StartError::NodeId { path, source })?;
    Ok(id)
}

/// This agent as the HTTP API and gossip describe it; `raft_id` is the server's id in the
/// Raft store, if it is a server.
pub fn agent_info(cfg: &Config, node_id: &str, raft_id: Option<u64>) -> AgentInfo {
    AgentInfo {
        raft_id,
        node_name: cfg.node_name.clone(),
        node_id: node_id.to_string(),
        datacenter: cfg.datacenter.clone(),
        server: cfg.server,
        bootstrap: cfg.bootstrap,
        bootstrap_expect: cfg.bootstrap_expect,
        advertise_ip: cfg.advertise_ip(),
        serf_lan_port: cfg.serf_lan_port,
        serf_wan_port: cfg.serf_wan_port,
        server_port: cfg.server_port,
        encrypted: cfg.encrypt.is_some(),
        node_meta: http::node_meta(cfg),
        session_ttl_min: http::session_ttl_min(cfg),
        debug_config: http::debug_config(cfg),
    }
}

/// This agent as DNS shows it: its name, its advertise address and, on a server, its RPC
/// port.
pub fn own_node(agent: &AgentInfo) -> Result<Node, StartError> {
    let ip = agent
        .advertise_ip
        .parse()
        .map_err(|_| bad_address("advertise address", &agent.advertise_ip))?;
    let server_port = u16::try_from(agent.server_port)
        .ok()
        .filter(|_| agent.server);
    Ok(Node {
        name: agent.node_name.clone(),
        ip,
        server_port,
    })
}

//! `/v1/agent`: this agent (self, members, join, leave, force-leave, reload), and the member
//! record it announces on gossip.

use axum::http::StatusCode;
use serde_json::json;
use serde_json::Map;
use serde_json::Value;

use super::error::ApiError;
use super::percent_decode;
use super::routes::Ctx;
use super::routes::Reply;
use super::text;
use super::AgentInfo;
use super::Api;
use super::Control;
use super::REVISION;
use super::VERSION;

/// A path segment, URL-decoded (lossily: a name is shown back, not stored).
fn decoded(tail: &str) -> String {
    String::from_utf8_lossy(&percent_decode(tail.as_bytes())).into_owned()
}

/// This agent's member record (the `/v1/agent/members` shape), for the LAN or WAN pool.
pub fn member(a: &AgentInfo, wan: bool) -> Value {
    let mut tags = Map::new();
    let mut put = |k: &str, v: String| {
        tags.insert(k.to_string(), Value::String(v));
    };
    put("role", if a.server { "consul" } else { "node" }.into());
    put("dc", a.datacenter.clone());
    put("segment", String::new());
    put("id", a.node_id.clone());
    put("vsn", "2".into());
    put("vsn_min", "2".into());
    put("vsn_max", "3".into());
    put("build", format!("{VERSION}:{REVISION}"));
    if a.server {
        put("raft_vsn", "3".into());
        if let Some(id) = a.raft_id {
            put("raft_id", id.to_string());
        }
        put("port", a.server_port.to_string());
        put("wan_join_port", a.serf_wan_port.to_string());
        if a.bootstrap {
            put("bootstrap", "1".into());
        }
        if a.bootstrap_expect > 0 {
            put("expect", a.bootstrap_expect.to_string());
        }
    }
    let (name, port) = if wan {
        (format!("{}.{}", a.node_name, a.datacenter), a.serf_wan_port)
    } else {
        (a.node_name.clone(), a.serf_lan_port)
    };
    json!({
        "Name": name, "Addr": a.advertise_ip, "Port": port, "Tags": tags, "Status": 1,
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

/// `GET /v1/agent/self`.
pub async fn agent_self(cx: Ctx) -> Reply {
    Ok(cx.json(&self_json(&cx.api)))
}

fn self_json(api: &Api) -> Value {
    let a = &api.agent;
    let mut applied = 0;
    let mut keys = 0;
    api.store.with_state(&mut |sm| {
        applied = sm.last_applied();
        keys = sm.kv().len();
    });
    let leader = api.store.leader();
    let own_rpc = format!("{}:{}", a.advertise_ip, a.server_port);
    let mut raft = Map::new();
    for (k, v) in [
        ("applied_index", applied.to_string()),
        ("commit_index", applied.to_string()),
        (
            "num_peers",
            api.store.peers().len().saturating_sub(1).to_string(),
        ),
        ("kv_keys", keys.to_string()),
    ]
    .into_iter()
    .chain(api.store.raft_stats())
    {
        raft.insert(k.to_string(), Value::String(v));
    }
    json!({
        "Config": {
            "Datacenter": a.datacenter, "PrimaryDatacenter": a.datacenter,
            "NodeName": a.node_name, "NodeID": a.node_id, "Server": a.server,
            "Revision": REVISION, "Version": VERSION, "BuildDate": "",
        },
        "DebugConfig": a.debug_config,
        "Coord": null,
        "Member": member(a, false),
        "Stats": {
            "agent": {"check_monitors": "0", "check_ttls": "0", "checks": "0", "services": "0"},
            "build": {"prerelease": "", "revision": REVISION, "version": VERSION},
            "consul": {
                "bootstrap": a.bootstrap.to_string(), "known_datacenters": "1",
                "leader": (leader.as_deref() == Some(own_rpc.as_str())).to_string(),
                "leader_addr": leader.unwrap_or_default(), "server": a.server.to_string(),
            },
            "raft": raft,
            "runtime": {
                "arch": std::env::consts::ARCH, "os": std::env::consts::OS, "version": "rust",
            },
            "serf_lan": serf_stats(&api.lan, a.encrypted, 1),
            "serf_wan": serf_stats(&api.wan, a.encrypted, a.server as usize),
        },
        "Meta": {},
    })
}

/// A gossip pool's `Stats` entry (strings, as Consul's): members (`alone` when there is no
/// pool), failed and left ones, encryption.
fn serf_stats(pool: &Option<crate::serf::Pool>, encrypted: bool, alone: usize) -> Value {
    use tribune_core::gossip::MemberState;
    let members = pool.as_ref().map(|p| p.members()).unwrap_or_default();
    let count = |s: MemberState| members.iter().filter(|m| m.state == s).count().to_string();
    json!({
        "members": if pool.is_some() { members.len().to_string() } else { alone.to_string() },
        "failed": count(MemberState::Failed),
        "left": count(MemberState::Left),
        "encrypted": encrypted.to_string(),
    })
}

/// `GET /v1/agent/members[?wan]`.
pub async fn members(cx: Ctx) -> Reply {
    let wan = cx.query.has("wan");
    let pool = if wan { &cx.api.wan } else { &cx.api.lan };
    let members: Vec<Value> = match pool {
        Some(p) => p.members().iter().map(crate::serf::member_json).collect(),
        None => vec![member(&cx.api.agent, wan)],
    };
    Ok(cx.json(&members))
}

/// `PUT /v1/agent/leave`: leave gracefully, then stop.
pub async fn leave(cx: Ctx) -> Reply {
    let _ = cx.api.control.send(Control::Leave);
    Ok(text(StatusCode::OK, ""))
}

/// `PUT /v1/agent/reload`.
pub async fn reload(cx: Ctx) -> Reply {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let down = || ApiError::internal("agent is shutting down");
    cx.api
        .control
        .send(Control::Reload(tx))
        .map_err(|_| down())?;
    match rx.await {
        Ok(Ok(())) => Ok(text(StatusCode::OK, "")),
        Ok(Err(e)) => Err(ApiError::internal(format!("Failed to reload configs: {e}"))),
        Err(_) => Err(down()),
    }
}

/// `PUT /v1/agent/join/<address>[?wan]`.
pub async fn join(cx: Ctx) -> Reply {
    let api = &cx.api;
    let addr = decoded(&cx.tail);
    let wan = cx.query.has("wan");
    let a = &api.agent;
    let own = [
        format!("{}:{}", a.advertise_ip, a.serf_lan_port),
        a.advertise_ip.clone(),
    ];
    let (pool, port) = if wan {
        (&api.wan, a.serf_wan_port)
    } else {
        (&api.lan, a.serf_lan_port)
    };
    let failed = |e: &str| {
        ApiError::internal(format!(
            "1 error occurred:\n\t* Failed to join {addr}: {e}\n\n"
        ))
    };
    if own.contains(&addr) {
        return Ok(text(StatusCode::OK, ""));
    }
    let Some(pool) = pool else {
        return Err(failed("gossip is disabled"));
    };
    let addrs = crate::serf::resolve(std::slice::from_ref(&addr), port as u16).await;
    if addrs.is_empty() {
        return Err(failed(&format!("no address for {addr}")));
    }
    pool.join(addrs).await.map_err(|e| failed(&e))?;
    Ok(text(StatusCode::OK, ""))
}

/// `PUT /v1/agent/force-leave/<node>[?prune]`.
pub async fn force_leave(cx: Ctx) -> Reply {
    let node = decoded(&cx.tail);
    let result = match &cx.api.lan {
        Some(pool) => pool.force_leave(node.clone(), cx.query.has("prune")).await,
        None => Err("unknown member".into()),
    };
    result.map_err(|_| ApiError::internal(format!("agent: No node found with name '{node}'")))?;
    Ok(text(StatusCode::OK, ""))
}

//! `/v1/operator/raft`: the Raft configuration, and removing a server from it.

use serde_json::json;
use serde_json::Value;

use super::error::ApiError;
use super::routes::Ctx;
use super::routes::Reply;
use super::text;

/// `GET /v1/operator/raft/configuration`.
pub async fn raft_configuration(cx: Ctx) -> Reply {
    let api = &cx.api;
    let leader = api.store.leader();
    let own_addr = format!("{}:{}", api.agent.advertise_ip, api.agent.server_port);
    let servers: Vec<Value> = api
        .store
        .peers()
        .into_iter()
        .map(|addr| {
            let own = addr == own_addr;
            json!({
                "ID": if own { api.agent.node_id.clone() } else { addr.clone() },
                "Node": if own { api.agent.node_name.clone() } else { addr.clone() },
                "Address": addr, "Leader": leader.as_deref() == Some(addr.as_str()),
                "Voter": true, "ProtocolVersion": "3",
            })
        })
        .collect();
    let mut applied = 0;
    api.store.with_state(&mut |sm| applied = sm.last_applied());
    Ok(cx.json(&json!({"Servers": servers, "Index": applied.max(1)})))
}

/// `DELETE /v1/operator/raft/peer?id=|address=`.
pub async fn raft_peer(cx: Ctx) -> Reply {
    let q = &cx.query;
    let Some(peer) = q
        .get("address")
        .or_else(|| q.get("id"))
        .filter(|p| !p.is_empty())
    else {
        return Err(ApiError::bad_request(
            "Must specify either ?id with the server's ID or ?address with IP:port of peer to \
             remove",
        ));
    };
    cx.api.store.remove_peer(peer.to_string()).await?;
    Ok(text(axum::http::StatusCode::OK, ""))
}

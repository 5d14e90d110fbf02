//! `/v1/status`: the leader's and the voters' server RPC addresses.

use super::context::Ctx;
use super::context::Reply;

/// `GET /v1/status/leader`: `"ip:port"`, or `""` when no leader is known.
pub async fn leader(cx: Ctx) -> Reply {
    Ok(cx.json(&cx.api.store.leader().unwrap_or_default()))
}

/// `GET /v1/status/peers`: the voters' addresses.
pub async fn peers(cx: Ctx) -> Reply {
    Ok(cx.json(&cx.api.store.peers()))
}

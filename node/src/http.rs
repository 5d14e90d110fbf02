//! The HTTP API, shaped as Consul's agent serves it.
//!
//! Every path is a row of the route table ([`routes::ROUTES`]): its methods and its handler,
//! one module per endpoint group (`kv`, `agent`, `status`, `operator`, `metrics`). Handlers
//! return `Result<Response, ApiError>` ([`error::ApiError`] maps to Consul's statuses and
//! plain-text bodies); reads take their options through one extractor ([`query`]) and serve
//! through one blocking-query helper ([`blocking`]), which sets the `X-Consul-*` headers.
//! Query flags are presence-based and matched case-insensitively.
//!
//! This module holds what the groups share: the [`Api`] state, the entry point (client agents
//! forward what the servers hold before the table sees it), response helpers, and the
//! listener with its connection caps ([`listener`]).

mod agent;
pub mod agent_services;
mod blocking;
mod catalog;
pub(crate) mod conn;
mod context;
mod error;
pub(crate) mod filter;
mod health;
mod kv;
mod listener;
pub mod loose;
mod metrics;
mod operator;
pub(crate) mod query;
mod routes;
mod status;
#[cfg(test)]
mod testing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

pub use self::agent::debug_config;
pub use self::agent::member;
pub use self::agent::node_meta;
pub use self::agent::session_ttl_min;
pub use self::blocking::blocking;
pub use self::blocking::ReadOpts;
pub use self::catalog::registration_of;
pub use self::error::ApiError;

/// A config file's definition, read loosely as a request body is.
pub fn loose(v: &Value) -> Result<self::loose::Loose<'_>, ApiError> {
    self::loose::Loose::top(v)
}
pub use self::conn::ConnConfig;
pub use self::listener::serve;
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::store::BoxFuture;
use crate::store::Store;

/// Tribune's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = "unknown";
/// The Consul release whose HTTP API Tribune implements (`Config.Version` of
/// `/v1/agent/self`, which clients gate features on): the compatibility spec's baseline
/// reaches Consul 1.21.
pub const CONSUL_VERSION: &str = "1.21.0";

/// What the agent tells about itself (members, self, raft configuration).
#[derive(Debug, Clone)]
pub struct AgentInfo {
    /// A server's Raft id (its gossip tag `raft_id`: the leader reconciles by it).
    pub raft_id: Option<u64>,
    pub node_name: String,
    pub node_id: String,
    pub datacenter: String,
    pub server: bool,
    pub bootstrap: bool,
    pub bootstrap_expect: u64,
    pub advertise_ip: String,
    pub serf_lan_port: i64,
    pub serf_wan_port: i64,
    pub server_port: i64,
    /// Whether gossip is encrypted (`encrypt` is set).
    pub encrypted: bool,
    /// `node_meta` (`Meta` of `/v1/agent/self`).
    pub node_meta: BTreeMap<String, String>,
    /// `session_ttl_min`.
    pub session_ttl_min: Duration,
    /// `DebugConfig` of `/v1/agent/self` (see [`debug_config`]).
    pub debug_config: Value,
}

/// Requests the API passes to the agent's main loop.
#[derive(Debug)]
pub enum Control {
    Leave,
    Reload(tokio::sync::oneshot::Sender<Result<(), ConfigError>>),
}

pub struct Api {
    pub store: Arc<dyn Store>,
    /// The LAN gossip pool (and, on servers, the WAN pool), when gossip runs.
    pub lan: Option<crate::serf::Pool>,
    pub wan: Option<crate::serf::Pool>,
    pub agent: AgentInfo,
    pub kv_max_value_size: u64,
    pub default_query_time: Duration,
    pub max_query_time: Duration,
    pub metrics: Arc<Metrics>,
    pub control: mpsc::UnboundedSender<Control>,
    /// On client agents: the way to the servers for what they hold.
    pub forward: Option<crate::forward::Forwarder>,
    /// The services and checks registered with this agent.
    pub local: Arc<crate::local::Local>,
}

/// The API as a function: what the listener serves, and what a server runs requests
/// forwarded by client agents through. The request is routed before its future is made, so
/// that the future holds only the handler's state and the counting below (a blocking query
/// holds it for as long as it waits).
pub fn serve_forwarded(api: Arc<Api>) -> crate::forward::Serve {
    Arc::new(move |req| {
        let api = api.clone();
        let run: BoxFuture<'static, Response> = match &api.forward {
            Some(_) if crate::forward::is_forwarded(req.uri().path()) => {
                let api = api.clone();
                Box::pin(async move {
                    let f = api.forward.as_ref().expect("matched above");
                    f.forward(req).await
                })
            }
            _ => routes::dispatch(api.clone(), req),
        };
        Box::pin(async move {
            let resp = run.await;
            api.metrics.count(resp.status().as_u16());
            resp
        })
    })
}

/// A plain-text response.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (status, msg.into()).into_response();
    let plain = HeaderValue::from_static("text/plain; charset=utf-8");
    r.headers_mut().insert(header::CONTENT_TYPE, plain);
    r
}

/// A 200 with `v` as JSON, indented if `pretty`.
pub fn json_response(v: &impl Serialize, pretty: bool) -> Response {
    let body = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    let mut r = (StatusCode::OK, body.expect("serializable")).into_response();
    let json = HeaderValue::from_static("application/json");
    r.headers_mut().insert(header::CONTENT_TYPE, json);
    r
}

pub fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// Percent-decode a path (names in paths may be URL-escaped).
fn percent_decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%2Fb%20c"), b"a/b c");
        assert_eq!(percent_decode(b"100%"), b"100%");
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4");
    }
}

//! Client agents forward what the servers hold (`/v1/kv`, `/v1/status`, `/v1/operator`) to a
//! server of their datacenter over server RPC (8300), as Consul's clients do; the server runs
//! the request through its own HTTP API and sends the response back whole.
//!
//! Bounds: a forwarded request body is cut at [`BODY_BYTES_MAX`] (the server then refuses
//! it as too large), a response at [`FRAME_BYTES_MAX`]; a forwarded request waits
//! at most the longest blocking query plus [`SLACK`]; a server runs at most
//! [`FORWARDED_MAX`] forwarded requests at once (each holds one of its RPC connections, and
//! Raft needs some too) and answers 429 beyond that.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderName;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;

use crate::raft::transport;
use crate::store::BoxFuture;
use crate::wire::HttpCall;
use crate::wire::HttpReply;
use crate::wire::Rpc;
use crate::wire::RpcError;
use crate::wire::RpcReply;
use crate::wire::FRAME_BYTES_MAX;

/// Largest request body a client agent forwards (a KV value's limit is 512 KiB; Consul's
/// largest request, a transaction, 512 KiB too). A larger body is cut one byte past this.
pub const BODY_BYTES_MAX: usize = 4 << 20;
/// Forwarded requests a server runs at once (blocking queries included).
pub const FORWARDED_MAX: usize = transport::SERVER_CONNS_MAX / 2;
static FORWARDED: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(FORWARDED_MAX);
/// Time a forwarded request may take beyond the longest blocking query (its jitter).
const SLACK: Duration = Duration::from_secs(60);

/// How a server runs a forwarded request through its HTTP API.
pub type Serve = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// Whether a path is served by the servers rather than the agent itself.
pub fn is_forwarded(path: &str) -> bool {
    path == "/v1/kv"
        || [
            "/v1/kv/",
            "/v1/status/",
            "/v1/operator/",
            "/v1/catalog/",
            "/v1/health/",
        ]
        .iter()
        .any(|p| path.starts_with(p))
}

/// Server RPC's way to the HTTP API `serve`: each forwarded call is run through it.
pub fn over_rpc(serve: Serve) -> crate::raft::ServeHttp {
    Arc::new(move |call| {
        let serve = serve.clone();
        Box::pin(async move { run(&serve, call).await })
    })
}

/// Run a forwarded call on this server.
async fn run(serve: &Serve, call: HttpCall) -> RpcReply {
    let Ok(_permit) = FORWARDED.try_acquire() else {
        let body =
            format!("too many forwarded requests (more than {FORWARDED_MAX}) on this server")
                .into_bytes();
        return RpcReply::Http(HttpReply {
            status: 429,
            headers: Vec::new(),
            body,
        });
    };
    let mut req = Request::new(Body::from(call.body));
    *req.method_mut() = match call.method.parse() {
        Ok(m) => m,
        Err(_) => return RpcReply::Failed(RpcError::BadMethod(call.method)),
    };
    *req.uri_mut() = match call.uri.parse::<axum::http::Uri>() {
        // Only what client agents forward: server RPC never serves the agent's own
        // endpoints (`/v1/agent/leave`, ...) to whoever connects.
        Ok(u) if is_forwarded(u.path()) => u,
        Ok(u) => return RpcReply::Failed(RpcError::NotServed(u.path().to_string())),
        Err(_) => return RpcReply::Failed(RpcError::BadUri(call.uri)),
    };
    for (k, v) in call.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(&v),
        ) {
            req.headers_mut().append(k, v);
        }
    }
    let resp = serve(req).await;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    match axum::body::to_bytes(resp.into_body(), FRAME_BYTES_MAX - 4096).await {
        Ok(body) => RpcReply::Http(HttpReply {
            status,
            headers,
            body: body.to_vec(),
        }),
        Err(e) => RpcReply::Failed(RpcError::TooLarge(e.to_string())),
    }
}

/// A client agent's way to the servers: the servers of its datacenter alive on its LAN pool.
pub struct Forwarder {
    pool: transport::Pool,
    lan: crate::serf::Pool,
    datacenter: String,
    max_wait: Duration,
    /// The server in use (an index into the live servers, modulo their number).
    current: AtomicUsize,
}

impl Forwarder {
    pub fn new(lan: crate::serf::Pool, datacenter: String, max_query_time: Duration) -> Forwarder {
        Forwarder {
            pool: transport::Pool::default(),
            lan,
            datacenter,
            max_wait: max_query_time + SLACK,
            current: AtomicUsize::new(0),
        }
    }

    /// Forward `req` to a server and relay its response. Like Consul's clients, an agent
    /// sticks to one server and moves to the next when a call to it fails. Reads are retried
    /// on the next server; a write is tried once (its outcome is then unknown: 500).
    pub async fn forward(&self, req: Request) -> Response {
        let servers = crate::serf::live_servers(&self.lan, &self.datacenter);
        if servers.is_empty() {
            return error("No known Consul servers".into());
        }
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, BODY_BYTES_MAX + 1).await {
            Ok(b) => b.to_vec(),
            Err(_) => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large").into_response()
            }
        };
        let call = Rpc::Http(HttpCall {
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
        });
        let attempts = if parts.method == axum::http::Method::GET
            || parts.method == axum::http::Method::HEAD
        {
            servers.len()
        } else {
            1
        };
        let mut last = String::new();
        for _ in 0..attempts {
            let current = self.current.load(Ordering::Relaxed);
            let server = servers[current % servers.len()];
            match self.pool.call(server, &call, self.max_wait).await {
                Ok(RpcReply::Http(r)) => return relay(r),
                Ok(RpcReply::Failed(e)) => last = format!("rpc error from {server}: {e}"),
                Ok(other) => last = format!("rpc error from {server}: {other:?}"),
                Err(e) => last = format!("rpc error making call to {server}: {e}"),
            }
            let _ = self.current.compare_exchange(
                current,
                current.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        error(last)
    }
}

fn relay(r: HttpReply) -> Response {
    let mut resp = Response::new(Body::from(r.body));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in r.headers {
        if ["connection", "keep-alive", "transfer-encoding"].contains(&k.as_str()) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

fn error(msg: String) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_are_forwarded_agent_paths_are_not() {
        for p in [
            "/v1/kv",
            "/v1/kv/a/b",
            "/v1/status/leader",
            "/v1/operator/raft/configuration",
        ] {
            assert!(is_forwarded(p), "{p}");
        }
        for p in [
            "/v1/kvx",
            "/v1/agent/self",
            "/v1/agent/members",
            "/v1/agent/metrics",
            "/",
        ] {
            assert!(!is_forwarded(p), "{p}");
        }
    }
}

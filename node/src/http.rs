//! The HTTP API: `/v1/kv`, `/v1/status`, `/v1/agent`, `/v1/operator/raft/configuration`.
//!
//! Requests are dispatched by hand (one fallback handler) so that paths, query flags and
//! error texts follow Consul exactly: presence-based, case-insensitive boolean flags,
//! plain-text errors, `X-Consul-*` headers on every read.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Router;
use base64::Engine;
use serde::Serialize;
use serde_json::json;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::Semaphore;
use tribune_core::fsm::Command;
use tribune_core::kv::Entry;
use tribune_core::kv::KvOp;

use crate::hub::Topic;
use crate::store;
use crate::store::Consistency;
use crate::store::ReadMeta;
use crate::store::Store;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = "unknown";

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
    pub debug_config: Value,
}

/// Requests the API passes to the agent's main loop.
#[derive(Debug)]
pub enum Control {
    Leave,
    Reload(tokio::sync::oneshot::Sender<Result<(), String>>),
}

#[derive(Default)]
pub struct Metrics {
    by_status: Mutex<BTreeMap<u16, u64>>,
    pub blocking_open: AtomicI64,
    /// Times a waiting blocking query was woken by a write (whether or not its result moved).
    pub blocking_wakeups: AtomicU64,
    pub watch_fires: AtomicU64,
    pub dns: crate::dns::Counters,
}

impl Metrics {
    fn count(&self, status: u16) {
        *self.by_status.lock().unwrap().entry(status).or_default() += 1;
    }
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
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new().fallback(handle).with_state(api)
}

/// The API as a function, for requests forwarded by client agents.
pub fn serve_forwarded(api: Arc<Api>) -> crate::forward::Serve {
    Arc::new(move |req| {
        let api = api.clone();
        Box::pin(async move { handle(State(api), req).await })
    })
}

/// Parsed query string: lowercased names, decoded values, in order.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
    raw: String,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let raw = q.unwrap_or("").to_string();
        let pairs = form_urlencoded::parse(raw.as_bytes()).map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned())).collect();
        Query { pairs, raw }
    }
    pub fn has(&self, k: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == k)
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (status, msg.into()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(v: &impl Serialize, pretty: bool) -> Response {
    let body = if pretty { serde_json::to_vec_pretty(v) } else { serde_json::to_vec(v) }.expect("serializable");
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_str(allow).unwrap());
    r
}

async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    let resp = match &api.forward {
        Some(f) if crate::forward::is_forwarded(req.uri().path()) => f.forward(req).await,
        _ => route(&api, req).await,
    };
    api.metrics.count(resp.status().as_u16());
    resp
}

/// Percent-decode a path segment (keys may be URL-escaped).
fn decode_path(p: &str) -> Result<String, ()> {
    let bytes: Vec<u8> = percent_decode(p.as_bytes());
    String::from_utf8(bytes).map_err(|_| ())
}

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

async fn route(api: &Arc<Api>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let method = req.method().clone();
    if let Some(rest) = path.strip_prefix("/v1/kv") {
        let key = match rest.strip_prefix('/') {
            Some(k) => k,
            None if rest.is_empty() => "",
            None => return text(StatusCode::NOT_FOUND, "404 page not found"),
        };
        let Ok(mut key) = decode_path(key) else {
            return text(StatusCode::BAD_REQUEST, "Invalid key: not UTF-8");
        };
        if key.contains('\n') {
            return text(StatusCode::BAD_REQUEST, "Invalid key: contains a linefeed");
        }
        while key.contains("//") {
            key = key.replace("//", "/");
        }
        let key = key.trim_start_matches('/').to_string();
        if key.split('/').any(|seg| seg == "..") {
            return text(StatusCode::BAD_REQUEST, "Invalid key: path traversal is not allowed");
        }
        if let Some(r) = check_dc(api, &q) {
            return r;
        }
        return match method {
            Method::GET | Method::HEAD => kv_get(api, &key, &q).await,
            Method::PUT | Method::POST => kv_put(api, &key, &q, req).await,
            Method::DELETE => kv_delete(api, &key, &q).await,
            _ => method_not_allowed("GET, PUT, DELETE"),
        };
    }
    let pretty = q.has("pretty");
    let get_only = |m: &Method| *m == Method::GET || *m == Method::HEAD;
    let put_only = |m: &Method| *m == Method::PUT || *m == Method::POST;
    match path.as_str() {
        "/" => text(StatusCode::OK, "Consul Agent"),
        "/v1/status/leader" if get_only(&method) => json_response(&api.store.leader().unwrap_or_default(), pretty),
        "/v1/status/peers" if get_only(&method) => json_response(&api.store.peers(), pretty),
        "/v1/agent/self" if get_only(&method) => json_response(&agent_self(api), pretty),
        "/v1/agent/members" if get_only(&method) => {
            let pool = if q.has("wan") { &api.wan } else { &api.lan };
            match pool {
                Some(p) => json_response(&p.members().iter().map(crate::serf::member_json).collect::<Vec<_>>(), pretty),
                None => json_response(&vec![member(&api.agent, q.has("wan"))], pretty),
            }
        }
        "/v1/agent/leave" if put_only(&method) => {
            let _ = api.control.send(Control::Leave);
            text(StatusCode::OK, "")
        }
        "/v1/agent/reload" if put_only(&method) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if api.control.send(Control::Reload(tx)).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "agent is shutting down");
            }
            match rx.await {
                Ok(Ok(())) => text(StatusCode::OK, ""),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to reload configs: {e}")),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "agent is shutting down"),
            }
        }
        "/v1/operator/raft/configuration" if get_only(&method) => json_response(&raft_configuration(api), pretty),
        "/v1/operator/raft/peer" if method == Method::DELETE => {
            let Some(peer) = q.get("address").or_else(|| q.get("id")).filter(|p| !p.is_empty()) else {
                return text(StatusCode::BAD_REQUEST, "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove");
            };
            match api.store.remove_peer(peer.to_string()).await {
                Ok(()) => text(StatusCode::OK, ""),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        "/v1/agent/metrics" if get_only(&method) => metrics(api, &q, req.headers()),
        p if p.starts_with("/v1/agent/join/") && put_only(&method) => {
            let addr = decode_path(&p["/v1/agent/join/".len()..]).unwrap_or_default();
            let own = [format!("{}:{}", api.agent.advertise_ip, api.agent.serf_lan_port), api.agent.advertise_ip.clone()];
            let pool = if q.has("wan") { &api.wan } else { &api.lan };
            let port = if q.has("wan") { api.agent.serf_wan_port } else { api.agent.serf_lan_port };
            match pool {
                _ if own.contains(&addr) => text(StatusCode::OK, ""),
                Some(pool) => {
                    let addrs = crate::serf::resolve(std::slice::from_ref(&addr), port as u16).await;
                    let joined = if addrs.is_empty() { Err(format!("no address for {addr}")) } else { pool.join(addrs).await };
                    match joined {
                        Ok(_) => text(StatusCode::OK, ""),
                        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("1 error occurred:\n\t* Failed to join {addr}: {e}\n\n")),
                    }
                }
                None => text(StatusCode::INTERNAL_SERVER_ERROR, format!("1 error occurred:\n\t* Failed to join {addr}: gossip is disabled\n\n")),
            }
        }
        p if p.starts_with("/v1/agent/force-leave/") && put_only(&method) => {
            let node = decode_path(&p["/v1/agent/force-leave/".len()..]).unwrap_or_default();
            let prune = q.has("prune");
            let result = match &api.lan {
                Some(pool) => pool.force_leave(node.clone(), prune).await,
                None => Err("unknown member".into()),
            };
            match result {
                Ok(()) => text(StatusCode::OK, ""),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("agent: No node found with name '{node}'")),
            }
        }
        "/v1/status/leader" | "/v1/status/peers" | "/v1/agent/self" | "/v1/agent/members" | "/v1/agent/metrics" | "/v1/operator/raft/configuration" => {
            method_not_allowed("GET")
        }
        "/v1/agent/leave" | "/v1/agent/reload" => method_not_allowed("PUT"),
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn check_dc(api: &Api, q: &Query) -> Option<Response> {
    match q.get("dc") {
        Some(dc) if !dc.is_empty() && !dc.eq_ignore_ascii_case(&api.agent.datacenter) => {
            Some(text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter"))
        }
        _ => None,
    }
}

/// Consul's KV entry JSON, fields in upstream order.
#[derive(Serialize)]
struct EntryJson<'a> {
    #[serde(rename = "LockIndex")]
    lock_index: u64,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "Flags")]
    flags: u64,
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "Session", skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(rename = "CreateIndex")]
    create_index: u64,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

pub fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn entry_json(e: &Entry) -> EntryJson<'_> {
    EntryJson {
        lock_index: e.lock_index,
        key: &e.key,
        flags: e.flags,
        value: if e.value.is_empty() { None } else { Some(b64(&e.value)) },
        session: e.session.as_deref().filter(|s| !s.is_empty()),
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

/// Read-side query options shared by blocking endpoints.
pub struct ReadOpts {
    pub mode: Consistency,
    pub min_index: u64,
    pub wait: Duration,
}

#[allow(clippy::result_large_err)]
pub fn read_opts(q: &Query, default_wait: Duration, max_wait: Duration) -> Result<ReadOpts, Response> {
    let stale = q.has("stale");
    let consistent = q.has("consistent");
    if stale && consistent {
        return Err(text(StatusCode::BAD_REQUEST, "Cannot specify ?stale with ?consistent, conflicting semantics."));
    }
    if q.has("cached") && consistent {
        return Err(text(StatusCode::BAD_REQUEST, "Cannot specify ?cached with ?consistent, conflicting semantics."));
    }
    let mode = if stale {
        Consistency::Stale
    } else if consistent {
        Consistency::Consistent
    } else {
        Consistency::Default
    };
    let min_index = match q.get("index") {
        None | Some("") => 0,
        Some(v) => v.parse::<u64>().map_err(|_| text(StatusCode::BAD_REQUEST, "Invalid index"))?,
    };
    let wait = match q.get("wait") {
        None | Some("") => default_wait,
        Some(v) => crate::flags::parse_duration(v).ok_or_else(|| text(StatusCode::BAD_REQUEST, "Invalid wait time"))?,
    };
    let wait = if wait.is_zero() { default_wait } else { wait.min(max_wait) };
    Ok(ReadOpts { mode, min_index, wait })
}

/// Add Consul's random jitter of up to wait/16.
pub fn jittered(wait: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let max = (wait.as_nanos() / 16) as u64;
    if max == 0 {
        return wait;
    }
    wait + Duration::from_nanos(u64::from_le_bytes(b) % max)
}

struct OpenGuard<'a>(&'a AtomicI64);
impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Consul's blocking query: run `f` until its index exceeds `opts.min_index` or the wait
/// ends (then the current result is returned). `f` returns (result, index).
pub async fn blocking<R>(
    store: &dyn Store,
    metrics: &Metrics,
    topic: Topic,
    opts: &ReadOpts,
    f: impl Fn(&tribune_core::fsm::StateMachine) -> (R, u64),
) -> Result<(R, u64, ReadMeta), store::StoreError> {
    if opts.min_index == 0 {
        let ((r, idx), meta) = store::read(store, opts.mode, &f).await?;
        return Ok((r, idx, meta));
    }
    metrics.blocking_open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(&metrics.blocking_open);
    let deadline = tokio::time::Instant::now() + jittered(opts.wait);
    loop {
        let mut sub = store.hub().subscribe(topic.clone());
        let ((r, idx), meta) = store::read(store, opts.mode, &f).await?;
        if idx > opts.min_index || tokio::time::Instant::now() >= deadline {
            return Ok((r, idx, meta));
        }
        tokio::select! {
            _ = sub.changed() => { metrics.blocking_wakeups.fetch_add(1, Ordering::Relaxed); }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn with_read_headers(mut r: Response, index: u64, meta: &ReadMeta, mode: Consistency) -> Response {
    let h = r.headers_mut();
    h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static(if meta.known_leader { "true" } else { "false" }));
    h.insert("X-Consul-LastContact", HeaderValue::from(meta.last_contact_ms));
    h.insert("X-Consul-Effective-Consistency", HeaderValue::from_static(mode.header()));
    h.insert("X-Consul-Default-ACL-Policy", HeaderValue::from_static("allow"));
    r
}

enum KvRead {
    One(Option<Entry>),
    List(Vec<Entry>),
    Keys(Vec<String>),
}

async fn kv_get(api: &Api, key: &str, q: &Query) -> Response {
    let keys = q.has("keys");
    let recurse = q.has("recurse");
    if key.is_empty() && !keys && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let opts = match read_opts(q, api.default_query_time, api.max_query_time) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let sep = q.get("separator").or_else(|| q.get("seperator")).map(str::to_string);
    let topic = if keys || recurse { Topic::Prefix(key.to_string()) } else { Topic::Key(key.to_string()) };
    let res = blocking(&*api.store, &api.metrics, topic, &opts, |sm| {
        let kv = sm.kv();
        if keys {
            let (ks, idx) = kv.keys(key, sep.as_deref());
            (KvRead::Keys(ks), idx)
        } else if recurse {
            let (es, idx) = kv.list(key);
            (KvRead::List(es.into_iter().cloned().collect()), idx)
        } else {
            (KvRead::One(kv.get(key).cloned()), kv.key_index(key))
        }
    })
    .await;
    let (result, index, meta) = match res {
        Ok(r) => r,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let pretty = q.has("pretty");
    let not_found = || text(StatusCode::NOT_FOUND, "");
    let r = match result {
        KvRead::Keys(ks) if ks.is_empty() && !key.is_empty() => not_found(),
        KvRead::Keys(ks) => json_response(&ks, pretty),
        KvRead::List(es) if es.is_empty() => not_found(),
        KvRead::List(es) => json_response(&es.iter().map(entry_json).collect::<Vec<_>>(), pretty),
        KvRead::One(None) => not_found(),
        KvRead::One(Some(e)) if q.has("raw") => {
            let mut r = (StatusCode::OK, e.value).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
            h.insert("Content-Security-Policy", HeaderValue::from_static("sandbox"));
            r
        }
        KvRead::One(Some(e)) => json_response(&[entry_json(&e)], pretty),
    };
    with_read_headers(r, index, &meta, opts.mode)
}

/// How far past the value limit a request body is still read before answering 413.
const DRAIN_SLACK: u64 = 64 * 1024;

fn too_large(n: u64, max: u64) -> Response {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({n} bytes) too large, max size: {max} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ),
    )
}

fn write_result(r: Result<tribune_core::fsm::Response, store::StoreError>) -> Response {
    match r {
        Ok(tribune_core::fsm::Response::Kv { outcome, .. }) => json_response(&outcome.ok, false),
        Ok(other) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected write response: {other:?}")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn kv_put(api: &Api, key: &str, q: &Query, req: Request) -> Response {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let exclusive = ["cas", "acquire", "release"].iter().filter(|f| q.has(f)).count();
    if exclusive > 1 {
        return text(StatusCode::BAD_REQUEST, format!("Conflicting flags: {}", q.raw));
    }
    let flags = match q.get("flags") {
        None | Some("") => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(f) => f,
            Err(_) => return text(StatusCode::BAD_REQUEST, format!("Invalid flags: {v:?}")),
        },
    };
    let cas = match q.get("cas") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(c) => Some(c),
            Err(_) => return text(StatusCode::BAD_REQUEST, format!("Invalid cas index: {v:?}")),
        },
    };
    for lock in ["acquire", "release"] {
        if let Some(session) = q.get(lock) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("invalid session {session:?}"));
        }
    }
    let max = api.kv_max_value_size;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > max {
            // Read (and drop) a body that is not much larger, so that the client, still
            // sending, gets the 413 instead of a reset connection. Larger ones are cut off.
            if len <= max + DRAIN_SLACK {
                let _ = axum::body::to_bytes(req.into_body(), len as usize).await;
            }
            return too_large(len, max);
        }
    }
    let value: Bytes = match axum::body::to_bytes(req.into_body(), max as usize + 1).await {
        Ok(b) if b.len() as u64 > max => return too_large(b.len() as u64, max),
        Ok(b) => b,
        Err(_) => return too_large(max + 1, max),
    };
    let op = match cas {
        Some(index) => KvOp::Cas { key: key.to_string(), value: value.to_vec(), flags, index },
        None => KvOp::Set { key: key.to_string(), value: value.to_vec(), flags },
    };
    write_result(api.store.write(Command::Kv(op)).await)
}

async fn kv_delete(api: &Api, key: &str, q: &Query) -> Response {
    let recurse = q.has("recurse");
    if recurse && q.has("cas") {
        return text(StatusCode::BAD_REQUEST, format!("Conflicting flags: {}", q.raw));
    }
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let op = if recurse {
        KvOp::DeleteTree { prefix: key.to_string() }
    } else if let Some(v) = q.get("cas") {
        match v.parse::<u64>() {
            Ok(index) => KvOp::DeleteCas { key: key.to_string(), index },
            Err(_) => return text(StatusCode::BAD_REQUEST, format!("Invalid cas index: {v:?}")),
        }
    } else {
        KvOp::Delete { key: key.to_string() }
    };
    write_result(api.store.write(Command::Kv(op)).await)
}

pub fn member(a: &AgentInfo, wan: bool) -> Value {
    let mut tags = serde_json::Map::new();
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
    let (name, port) = if wan { (format!("{}.{}", a.node_name, a.datacenter), a.serf_wan_port) } else { (a.node_name.clone(), a.serf_lan_port) };
    json!({
        "Name": name, "Addr": a.advertise_ip, "Port": port, "Tags": tags, "Status": 1,
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

fn agent_self(api: &Api) -> Value {
    let a = &api.agent;
    let mut applied = 0;
    let mut keys = 0;
    api.store.with_state(&mut |sm| {
        applied = sm.last_applied();
        keys = sm.kv().len();
    });
    let leader = api.store.leader();
    let mut raft = serde_json::Map::new();
    for (k, v) in [
        ("applied_index", applied.to_string()),
        ("commit_index", applied.to_string()),
        ("num_peers", api.store.peers().len().saturating_sub(1).to_string()),
        ("kv_keys", keys.to_string()),
    ]
    .into_iter()
    .chain(api.store.raft_stats())
    {
        raft.insert(k.to_string(), Value::String(v));
    }
    json!({
        "Config": {
            "Datacenter": a.datacenter, "PrimaryDatacenter": a.datacenter, "NodeName": a.node_name,
            "NodeID": a.node_id, "Server": a.server, "Revision": REVISION, "Version": VERSION,
            "BuildDate": "",
        },
        "DebugConfig": a.debug_config,
        "Coord": null,
        "Member": member(a, false),
        "Stats": {
            "agent": {"check_monitors": "0", "check_ttls": "0", "checks": "0", "services": "0"},
            "build": {"prerelease": "", "revision": REVISION, "version": VERSION},
            "consul": {
                "bootstrap": a.bootstrap.to_string(), "known_datacenters": "1",
                "leader": (leader.as_deref() == Some(&format!("{}:{}", a.advertise_ip, a.server_port))).to_string(),
                "leader_addr": leader.unwrap_or_default(), "server": a.server.to_string(),
            },
            "raft": raft,
            "runtime": {"arch": std::env::consts::ARCH, "os": std::env::consts::OS, "version": "rust"},
            "serf_lan": serf_stats(&api.lan, a.encrypted, 1),
            "serf_wan": serf_stats(&api.wan, a.encrypted, a.server as usize),
        },
        "Meta": {},
    })
}

/// A gossip pool's `Stats` entry (strings, as Consul's): members (`alone` when there is no
/// pool), live members, failed and left ones, encryption.
fn serf_stats(pool: &Option<crate::serf::Pool>, encrypted: bool, alone: usize) -> Value {
    let members = pool.as_ref().map(|p| p.members()).unwrap_or_default();
    let count = |f: &dyn Fn(&tribune_core::gossip::MemberInfo) -> bool| members.iter().filter(|m| f(m)).count().to_string();
    json!({
        "members": if pool.is_some() { members.len().to_string() } else { alone.to_string() },
        "failed": count(&|m| m.state == tribune_core::gossip::MemberState::Failed),
        "left": count(&|m| m.state == tribune_core::gossip::MemberState::Left),
        "encrypted": encrypted.to_string(),
    })
}

fn raft_configuration(api: &Api) -> Value {
    let leader = api.store.leader();
    let servers: Vec<Value> = api
        .store
        .peers()
        .into_iter()
        .map(|addr| {
            let own = addr == format!("{}:{}", api.agent.advertise_ip, api.agent.server_port);
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
    json!({"Servers": servers, "Index": applied.max(1)})
}

fn metrics(api: &Api, q: &Query, headers: &HeaderMap) -> Response {
    let by_status = api.metrics.by_status.lock().unwrap().clone();
    let open = api.metrics.blocking_open.load(Ordering::Relaxed);
    let fires = api.metrics.watch_fires.load(Ordering::Relaxed);
    let wakeups = api.metrics.blocking_wakeups.load(Ordering::Relaxed);
    let mut applied = 0;
    api.store.with_state(&mut |sm| applied = sm.last_applied());
    let (wk, wp) = api.store.hub().topics();
    let prometheus = q.get("format") == Some("prometheus")
        || headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("openmetrics-text"));
    let serf: Vec<store::Metric> =
        [&api.lan, &api.wan].into_iter().flatten().flat_map(|p| p.metrics()).chain(api.metrics.dns.metrics()).chain(api.store.metrics()).collect();
    if prometheus {
        let mut out = String::new();
        for (name, labels, v) in &serf {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
            out.push_str(&format!("consul_{}{labels} {v}\n", name.replace('.', "_")));
        }
        out.push_str("# HELP consul_http_requests_total HTTP requests served, by status.\n# TYPE consul_http_requests_total counter\n");
        for (status, n) in &by_status {
            out.push_str(&format!("consul_http_requests_total{{status=\"{status}\"}} {n}\n"));
        }
        out.push_str(&format!("# HELP consul_http_blocking_queries Blocking queries waiting.\n# TYPE consul_http_blocking_queries gauge\nconsul_http_blocking_queries {open}\n"));
        out.push_str(&format!("# HELP consul_http_blocking_wakeups_total Blocking queries woken by a write.\n# TYPE consul_http_blocking_wakeups_total counter\nconsul_http_blocking_wakeups_total {wakeups}\n"));
        out.push_str(&format!("# HELP consul_raft_applied_index Last applied index.\n# TYPE consul_raft_applied_index gauge\nconsul_raft_applied_index {applied}\n"));
        out.push_str(&format!("# HELP consul_kv_watched_topics Distinct keys and prefixes watched.\n# TYPE consul_kv_watched_topics gauge\nconsul_kv_watched_topics{{kind=\"key\"}} {wk}\nconsul_kv_watched_topics{{kind=\"prefix\"}} {wp}\n"));
        out.push_str(&format!("# HELP consul_watch_fires_total Watch handler invocations.\n# TYPE consul_watch_fires_total counter\nconsul_watch_fires_total {fires}\n"));
        let mut r = (StatusCode::OK, out).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
        return r;
    }
    let gauge = |name: &str, v: f64, labels: Value| json!({"Name": name, "Value": v, "Labels": labels});
    let counters: Vec<Value> = by_status
        .iter()
        .map(|(s, n)| json!({"Name": "consul.http.requests", "Count": n, "Rate": 0, "Sum": n, "Min": 1, "Max": 1, "Mean": 1, "Stddev": 0, "Labels": {"status": s.to_string()}}))
        .collect();
    let serf_gauges: Vec<Value> = serf
        .iter()
        .map(|(name, labels, v)| {
            let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            gauge(&format!("consul.{name}"), *v as f64, Value::Object(labels))
        })
        .collect();
    let body = json!({
        "Timestamp": "",
        "Gauges": serf_gauges.into_iter().chain([
            gauge("consul.http.blocking_queries", open as f64, json!({})),
            gauge("consul.raft.applied_index", applied as f64, json!({})),
            gauge("consul.http.blocking_wakeups", wakeups as f64, json!({})),
            gauge("consul.kv.watched_topics", wk as f64, json!({"kind": "key"})),
            gauge("consul.kv.watched_topics", wp as f64, json!({"kind": "prefix"})),
            gauge("consul.watch.fires", fires as f64, json!({})),
        ]).collect::<Vec<_>>(),
        "Points": [], "Counters": counters, "Samples": [],
    });
    json_response(&body, q.has("pretty"))
}

/// Serve `router` on `listener`: at most `max_per_client` concurrent connections per client
/// IP (more get a 429 and are closed) and `max_total` overall (further accepts wait).
pub async fn serve(listener: TcpListener, router: Router, max_per_client: u64, max_total: usize) {
    let per_client: Arc<Mutex<HashMap<IpAddr, u64>>> = Arc::default();
    let total = Arc::new(Semaphore::new(max_total));
    loop {
        let permit = total.clone().acquire_owned().await.expect("semaphore open");
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = peer.ip();
        let admitted = {
            let mut m = per_client.lock().unwrap();
            let n = m.entry(ip).or_default();
            if *n >= max_per_client {
                false
            } else {
                *n += 1;
                true
            }
        };
        if !admitted {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let msg = "Your IP is issuing too many concurrent connections, please rate limit your calls\n";
                let _ = stream
                    .write_all(format!("HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len()).as_bytes())
                    .await;
                drop(permit);
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        let per_client = per_client.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, svc).await;
            let mut m = per_client.lock().unwrap();
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DevStore;

    fn opts(min_index: u64, wait_ms: u64) -> ReadOpts {
        ReadOpts { mode: Consistency::Default, min_index, wait: Duration::from_millis(wait_ms) }
    }

    async fn put(s: &DevStore, k: &str, v: &str) -> u64 {
        match s.write(Command::Kv(KvOp::Set { key: k.into(), value: v.into(), flags: 0 })).await.unwrap() {
            tribune_core::fsm::Response::Kv { index, .. } => index,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn query_flags_are_presence_based_and_case_insensitive() {
        let q = Query::parse(Some("Recurse&keys=false&separator=%2F&index=5"));
        assert!(q.has("recurse") && q.has("keys"));
        assert_eq!(q.get("separator"), Some("/"));
        assert!(read_opts(&Query::parse(Some("stale&consistent")), Duration::from_secs(300), Duration::from_secs(600)).is_err());
        assert!(read_opts(&Query::parse(Some("index=x")), Duration::from_secs(300), Duration::from_secs(600)).is_err());
        assert!(read_opts(&Query::parse(Some("index=1&wait=abc")), Duration::from_secs(300), Duration::from_secs(600)).is_err());
        let o = read_opts(&Query::parse(Some("index=3&wait=1h")), Duration::from_secs(300), Duration::from_secs(600)).unwrap();
        assert_eq!((o.min_index, o.wait), (3, Duration::from_secs(600)));
        let o = read_opts(&Query::parse(None), Duration::from_secs(300), Duration::from_secs(600)).unwrap();
        assert_eq!((o.min_index, o.wait, o.mode), (0, Duration::from_secs(300), Consistency::Default));
    }

    /// A store with no leader: reads and writes fail the way a Raft store without quorum does.
    struct Leaderless(crate::hub::Hub);

    impl Store for Leaderless {
        fn write(&self, _cmd: Command) -> store::BoxFuture<'_, Result<tribune_core::fsm::Response, store::StoreError>> {
            Box::pin(async { Err(store::StoreError::NoLeader) })
        }
        fn read_barrier(&self, mode: Consistency) -> store::BoxFuture<'_, Result<ReadMeta, store::StoreError>> {
            Box::pin(async move {
                match mode {
                    Consistency::Stale => Ok(ReadMeta { known_leader: false, last_contact_ms: 12_345 }),
                    _ => Err(store::StoreError::NoLeader),
                }
            })
        }
        fn with_state(&self, f: &mut dyn FnMut(&tribune_core::fsm::StateMachine)) {
            f(&tribune_core::fsm::StateMachine::new())
        }
        fn hub(&self) -> &crate::hub::Hub {
            &self.0
        }
        fn leader(&self) -> Option<String> {
            None
        }
        fn peers(&self) -> Vec<String> {
            vec![]
        }
    }

    fn api_over(store: Arc<dyn Store>) -> Arc<Api> {
        let (control, _rx) = mpsc::unbounded_channel();
        Arc::new(Api {
            lan: None,
            wan: None,
            store,
            agent: AgentInfo {
                raft_id: None,
                node_name: "n".into(),
                node_id: "id".into(),
                datacenter: "dc1".into(),
                server: true,
                bootstrap: false,
                bootstrap_expect: 3,
                advertise_ip: "127.0.0.1".into(),
                serf_lan_port: 8301,
                serf_wan_port: 8302,
                server_port: 8300,
                encrypted: false,
                debug_config: json!({}),
            },
            kv_max_value_size: 16,
            default_query_time: Duration::from_secs(300),
            max_query_time: Duration::from_secs(600),
            metrics: Arc::default(),
            control,
            forward: None,
        })
    }

    async fn call(api: &Arc<Api>, method: &str, uri: &str, body: &'static [u8]) -> (u16, HeaderMap, Vec<u8>) {
        let req = axum::http::Request::builder().method(method).uri(uri).body(axum::body::Body::from(body)).unwrap();
        let r = route(api, req).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap().to_vec())
    }

    #[tokio::test]
    async fn without_a_leader_reads_and_writes_fail_but_stale_reads_work() {
        let api = api_over(Arc::new(Leaderless(crate::hub::Hub::new())));
        let (s, _, b) = call(&api, "GET", "/v1/kv/k", b"").await;
        assert_eq!((s, b.as_slice()), (500, &b"No cluster leader"[..]));
        let (s, _, b) = call(&api, "PUT", "/v1/kv/k", b"v").await;
        assert_eq!((s, b.as_slice()), (500, &b"No cluster leader"[..]));
        let (s, h, _) = call(&api, "GET", "/v1/kv/k?stale", b"").await;
        assert_eq!(s, 404);
        assert_eq!(h["X-Consul-KnownLeader"], "false");
        assert_eq!(h["X-Consul-LastContact"], "12345");
        assert_eq!(h["X-Consul-Index"], "1");
        let (s, _, b) = call(&api, "GET", "/v1/status/leader", b"").await;
        assert_eq!((s, b.as_slice()), (200, &b"\"\""[..]));
        let (s, _, b) = call(&api, "GET", "/v1/status/peers", b"").await;
        assert_eq!((s, b.as_slice()), (200, &b"[]"[..]));
    }

    #[tokio::test]
    async fn routes_and_limits_in_process() {
        let api = api_over(Arc::new(DevStore::new("127.0.0.1:8300".into())));
        let (s, _, b) = call(&api, "PUT", "/v1/kv/k", b"0123456789abcdefX").await;
        assert_eq!(s, 413);
        assert!(String::from_utf8(b).unwrap().contains("max size: 16 bytes"));
        assert_eq!(call(&api, "PUT", "/v1/kv/k", b"0123456789abcdef").await.0, 200);
        assert_eq!(call(&api, "DELETE", "/v1/status/leader", b"").await.0, 405);
        assert_eq!(call(&api, "GET", "/v1/nope", b"").await.0, 404);
        let (_, _, b) = call(&api, "GET", "/v1/kv/k?raw", b"").await;
        assert_eq!(b, b"0123456789abcdef");
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(16));
            assert!(j >= Duration::from_secs(16) && j < Duration::from_secs(17));
        }
    }

    #[tokio::test]
    async fn blocking_returns_on_change_of_its_key_only() {
        let s = Arc::new(DevStore::new("127.0.0.1:8300".into()));
        let m = Arc::new(Metrics::default());
        let idx = put(&s, "a/b", "1").await;
        let (s2, m2) = (s.clone(), m.clone());
        let waiter = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = blocking(&*s2, &m2, Topic::Key("a/b".into()), &opts(idx, 3000), |sm| {
                (sm.kv().get("a/b").map(|e| e.value.clone()), sm.kv().key_index("a/b"))
            })
            .await
            .unwrap();
            (r.0, r.1, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(m.blocking_open.load(Ordering::Relaxed), 1);
        put(&s, "c/d", "x").await; // unrelated
        put(&s, "a/b", "1").await; // identical: no change
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        let new = put(&s, "a/b", "2").await;
        let (v, i, took) = waiter.await.unwrap();
        assert_eq!(v, Some(b"2".to_vec()));
        assert_eq!(i, new);
        assert!(took < Duration::from_secs(2));
        assert_eq!(m.blocking_open.load(Ordering::Relaxed), 0);
        assert_eq!(s.hub().topics(), (0, 0));
    }

    #[tokio::test]
    async fn blocking_times_out_with_current_result() {
        let s = DevStore::new("127.0.0.1:8300".into());
        let m = Metrics::default();
        let idx = put(&s, "k", "v").await;
        let started = std::time::Instant::now();
        let (_, i, _) = blocking(&s, &m, Topic::Key("k".into()), &opts(idx, 200), |sm| ((), sm.kv().key_index("k"))).await.unwrap();
        assert_eq!(i, idx);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(1000), "{took:?}");
    }

    #[tokio::test]
    async fn blocking_prefix_woken_by_tree_delete() {
        let s = Arc::new(DevStore::new("127.0.0.1:8300".into()));
        let m = Arc::new(Metrics::default());
        put(&s, "p/a", "1").await;
        let idx = put(&s, "p/b", "1").await;
        let (s2, m2) = (s.clone(), m.clone());
        let waiter = tokio::spawn(async move {
            blocking(&*s2, &m2, Topic::Prefix("p/".into()), &opts(idx, 3000), |sm| {
                let (es, i) = sm.kv().list("p/");
                (es.len(), i)
            })
            .await
            .unwrap()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write(Command::Kv(KvOp::DeleteTree { prefix: "p".into() })).await.unwrap();
        let (n, i, _) = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap();
        assert_eq!(n, 0);
        assert!(i > idx);
    }
}

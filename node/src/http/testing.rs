//! Test support: an API over any store, and requests run through the route table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::json;
use tokio::sync::mpsc;

use super::AgentInfo;
use super::Api;
use crate::store::DevStore;
use crate::store::Store;

pub fn agent_info() -> AgentInfo {
    AgentInfo {
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
        node_meta: BTreeMap::new(),
        session_ttl_min: Duration::from_secs(10),
        debug_config: json!({}),
    }
}

pub fn api_with(store: Arc<dyn Store>, agent: AgentInfo) -> Arc<Api> {
    let (control, _rx) = mpsc::unbounded_channel();
    let api = Arc::new(Api {
        lan: None,
        wan: None,
        store,
        agent,
        kv_max_value_size: 16,
        default_query_time: Duration::from_secs(300),
        max_query_time: Duration::from_secs(600),
        metrics: Arc::default(),
        control,
        forward: None,
        local: Arc::new(crate::local::Local::new(Default::default(), false, false)),
    });
    crate::agent::catalog_port::wire_aliases(&api);
    api
}

pub fn api_over(store: Arc<dyn Store>) -> Arc<Api> {
    api_with(store, agent_info())
}

/// An API over a fresh dev store (values up to 16 bytes).
pub fn dev_api() -> Arc<Api> {
    api_over(Arc::new(DevStore::new("127.0.0.1:8300".into())))
}

/// Run one request through the API; (status, headers, body).
pub async fn call(
    api: &Arc<Api>,
    method: &str,
    uri: &str,
    body: &'static [u8],
) -> (u16, HeaderMap, Vec<u8>) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::from(body))
        .unwrap();
    let r = super::routes::dispatch(api.clone(), req).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (
        status,
        headers,
        axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
}

/// The JSON body of a 200 answer.
pub async fn get_json(api: &Arc<Api>, uri: &str) -> serde_json::Value {
    let (status, _, body) = call(api, "GET", uri, b"").await;
    assert_eq!(status, 200, "{uri}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

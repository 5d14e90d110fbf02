//! The catalog port of this agent's anti-entropy: it reads and writes the catalog through
//! the agent's own store on a server or `-dev` agent, and through the forwarding path to a
//! server on a client agent (as Consul's clients call `Catalog.Register`). Remote alias
//! checks read the catalog the same way ([`ApiHealth`]): a blocking query on the aliased
//! node's checks (`/v1/health/node/:node?stale&index=`), in the store or at the servers.

use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use serde_json::json;
use serde_json::Value;
use tribune_core::catalog::CatalogOp;
use tribune_core::catalog::CheckInfo;
use tribune_core::fsm::Command;
use tribune_core::fsm::Response;
use tribune_core::local::anti_entropy::CatalogPort;
use tribune_core::local::anti_entropy::SyncError;
use tribune_core::local::RemoteNode;

use crate::hub::Topic;
use crate::local::NodeHealth;
use crate::store::BoxFuture;
use crate::store::Consistency;

/// How this agent reaches the catalog: its own store, or the servers through forwarding.
pub struct ApiPort(pub Arc<crate::http::Api>);

fn unavailable(e: impl std::fmt::Display) -> SyncError {
    SyncError::Unavailable(e.to_string())
}

/// A forwarded answer: its status, its `X-Consul-Index` (0 without one) and its body.
struct Forwarded {
    status: u16,
    index: u64,
    body: Vec<u8>,
}

/// A request through the forwarding path.
async fn forwarded(
    fwd: &crate::forward::Forwarder,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> Result<Forwarded, SyncError> {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::from(body))
        .map_err(unavailable)?;
    let resp = fwd.forward(req).await;
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bytes = axum::body::to_bytes(resp.into_body(), crate::wire::FRAME_BYTES_MAX)
        .await
        .map_err(unavailable)?;
    Ok(Forwarded {
        status,
        index,
        body: bytes.to_vec(),
    })
}

/// A forwarded GET that must answer 200 with JSON: the JSON and its index.
async fn forwarded_json(
    fwd: &crate::forward::Forwarder,
    uri: &str,
) -> Result<(Value, u64), SyncError> {
    let r = forwarded(fwd, "GET", uri, Vec::new()).await?;
    if r.status != 200 {
        return Err(SyncError::Unavailable(
            String::from_utf8_lossy(&r.body).into_owned(),
        ));
    }
    let v = serde_json::from_slice(&r.body).map_err(unavailable)?;
    Ok((v, r.index))
}

fn escape(name: &str) -> String {
    crate::client::escape_key(name)
}

impl CatalogPort for ApiPort {
    async fn node_slice(&self, name: &str) -> Result<RemoteNode, SyncError> {
        let api = &self.0;
        if let Some(fwd) = &api.forward {
            let uri = format!("/v1/catalog/node-services/{}?stale", escape(name));
            let (services, _) = forwarded_json(fwd, &uri).await?;
            let uri = format!("/v1/health/node/{}?stale", escape(name));
            let (checks, _) = forwarded_json(fwd, &uri).await?;
            return remote_of_json(&services, &checks)
                .map_err(|e| SyncError::Unavailable(e.to_string()));
        }
        let (slice, _) = crate::store::read(&*api.store, Consistency::Stale, |sm| {
            RemoteNode::of(sm.catalog(), name)
        })
        .await
        .map_err(unavailable)?;
        Ok(slice)
    }

    async fn apply(&self, op: CatalogOp) -> Result<(), SyncError> {
        let api = &self.0;
        if let Some(fwd) = &api.forward {
            let (uri, body) = match &op {
                CatalogOp::Register(r) => ("/v1/catalog/register", registration_json(r)),
                CatalogOp::Deregister {
                    node,
                    service_id,
                    check_id,
                } => (
                    "/v1/catalog/deregister",
                    json!({"Node": node, "ServiceID": service_id, "CheckID": check_id}),
                ),
            };
            let body = serde_json::to_vec(&body).map_err(unavailable)?;
            let r = forwarded(fwd, "PUT", uri, body).await?;
            let text = String::from_utf8_lossy(&r.body).into_owned();
            return match r.status {
                200 => Ok(()),
                400 => Err(SyncError::Refused(text)),
                _ => Err(SyncError::Unavailable(text)),
            };
        }
        match api.store.write(Command::Catalog(op)).await {
            Ok(Response::Catalog { result: Ok(_), .. }) => Ok(()),
            Ok(Response::Catalog { result: Err(e), .. }) => Err(SyncError::Refused(e.to_string())),
            Ok(other) => Err(SyncError::Refused(format!("unexpected response {other:?}"))),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn cluster_size(&self) -> usize {
        self.0.lan.as_ref().map_or(1, |l| l.members().len())
    }
}

/// Consul's `RegisterRequest` JSON for a registration (what `/v1/catalog/register` reads).
pub fn registration_json(r: &tribune_core::catalog::Registration) -> Value {
    let n = &r.node;
    let checks: Vec<Value> = r
        .checks
        .iter()
        .map(|c| {
            json!({
                "Node": c.node, "CheckID": c.check_id, "Name": c.name,
                "Status": c.status.as_str(), "Notes": c.notes, "Output": c.output,
                "ServiceID": c.service_id, "Type": c.kind,
                "Definition": {"Interval": c.interval, "Timeout": c.timeout},
            })
        })
        .collect();
    let service = r
        .service
        .as_ref()
        .map(|s| crate::http::agent_services::agent_service_json(s, &n.datacenter));
    json!({
        "ID": n.id, "Node": n.name, "Address": n.address, "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses, "NodeMeta": n.meta,
        "SkipNodeUpdate": r.skip_node_update,
        "Service": service,
        "Checks": checks,
    })
}

/// A node's slice of the catalog from `/v1/catalog/node-services/:node` and
/// `/v1/health/node/:node`.
fn remote_of_json(services: &Value, checks: &Value) -> Result<RemoteNode, crate::http::ApiError> {
    let node = match services.get("Node") {
        Some(Value::Object(_)) => {
            let n = services.get("Node").cloned().unwrap_or(Value::Null);
            let reg = crate::http::registration_of(&json!({
                "ID": n.get("ID"), "Node": n.get("Node"), "Address": n.get("Address"),
                "Datacenter": n.get("Datacenter"), "TaggedAddresses": n.get("TaggedAddresses"),
                "NodeMeta": n.get("Meta"),
            }))?;
            Some(reg.node)
        }
        _ => None,
    };
    let mut out = RemoteNode {
        node,
        ..RemoteNode::default()
    };
    if let Some(list) = services.get("Services").and_then(Value::as_array) {
        for s in list {
            let reg = crate::http::registration_of(&json!({"Service": s}))?;
            out.services.extend(reg.service);
        }
    }
    out.checks = checks_of_json(checks)?;
    Ok(out)
}

/// The checks of a `/v1/health/node/:node` answer.
fn checks_of_json(checks: &Value) -> Result<Vec<CheckInfo>, crate::http::ApiError> {
    let mut out = Vec::new();
    if let Some(list) = checks.as_array() {
        for c in list {
            let reg = crate::http::registration_of(&json!({"Check": c}))?;
            out.extend(reg.checks);
        }
    }
    Ok(out)
}

/// Where this agent's remote alias checks read the catalog: where its anti-entropy writes.
/// It holds the API weakly (the API holds the local state, which holds this).
pub struct ApiHealth(pub Weak<crate::http::Api>);

impl ApiHealth {
    fn api(&self) -> Result<Arc<crate::http::Api>, String> {
        self.0
            .upgrade()
            .ok_or_else(|| "the agent is stopping".to_string())
    }

    async fn checks(
        &self,
        node: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<CheckInfo>, u64), String> {
        let api = self.api()?;
        if let Some(fwd) = &api.forward {
            let uri = format!(
                "/v1/health/node/{}?stale&index={index}&wait={}s",
                escape(node),
                wait.as_secs().max(1)
            );
            let (v, next) = forwarded_json(fwd, &uri).await.map_err(|e| e.to_string())?;
            return Ok((checks_of_json(&v).map_err(|e| e.to_string())?, next));
        }
        let opts = crate::http::ReadOpts {
            mode: Consistency::Stale,
            min_index: index,
            wait,
        };
        let topic = Topic::Node(node.to_string());
        let read = |sm: &tribune_core::fsm::StateMachine| {
            let c = sm.catalog();
            let checks = c.node_checks(node).map(|ch| ch.info.clone()).collect();
            (checks, c.node_index(node))
        };
        let (checks, next, _) =
            crate::http::blocking(&*api.store, &api.metrics, topic, &opts, read)
                .await
                .map_err(|e| e.to_string())?;
        Ok((checks, next))
    }

    async fn service(&self, node: &str, id: &str) -> Result<bool, String> {
        let api = self.api()?;
        let slice = if let Some(fwd) = &api.forward {
            let uri = format!("/v1/catalog/node-services/{}?stale", escape(node));
            let (v, _) = forwarded_json(fwd, &uri).await.map_err(|e| e.to_string())?;
            remote_of_json(&v, &Value::Null).map_err(|e| e.to_string())?
        } else {
            let read = |sm: &tribune_core::fsm::StateMachine| RemoteNode::of(sm.catalog(), node);
            crate::store::read(&*api.store, Consistency::Stale, read)
                .await
                .map_err(|e| e.to_string())?
                .0
        };
        Ok(slice
            .services
            .iter()
            .any(|s| !id.is_empty() && s.id.eq_ignore_ascii_case(id)))
    }
}

impl NodeHealth for ApiHealth {
    fn node_checks<'a>(
        &'a self,
        node: &'a str,
        index: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<(Vec<CheckInfo>, u64), String>> {
        Box::pin(self.checks(node, index, wait))
    }

    fn has_service<'a>(
        &'a self,
        node: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(self.service(node, id))
    }
}

/// Point the agent's remote alias checks at its catalog.
pub fn wire_aliases(api: &Arc<crate::http::Api>) {
    api.local
        .set_remote(Arc::new(ApiHealth(Arc::downgrade(api))));
}

/// Start this agent's anti-entropy and its check timers (TTL expiry, critical services
/// deregistered), for the life of the process.
pub fn spawn(api: &Arc<crate::http::Api>) {
    let local = api.local.clone();
    let ae = tribune_core::local::anti_entropy::AntiEntropy::new(
        local.agent.clone(),
        ApiPort(api.clone()),
        seed(),
    );
    tokio::spawn(async move { ae.run().await });
    tokio::spawn(local.run_timers());
}

/// A seed for the syncer's stagger, different on every agent.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

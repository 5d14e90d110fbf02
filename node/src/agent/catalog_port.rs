//! The catalog port of this agent's anti-entropy: it reads and writes the catalog through
//! the agent's own store on a server or `-dev` agent, and through the forwarding path to a
//! server on a client agent (as Consul's clients call `Catalog.Register`).

use std::sync::Arc;

use serde_json::json;
use serde_json::Value;
use tribune_core::catalog::CatalogOp;
use tribune_core::fsm::Command;
use tribune_core::fsm::Response;
use tribune_core::local::anti_entropy::CatalogPort;
use tribune_core::local::anti_entropy::SyncError;
use tribune_core::local::RemoteNode;

use crate::store::Consistency;

/// How this agent reaches the catalog: its own store, or the servers through forwarding.
pub struct ApiPort(pub Arc<crate::http::Api>);

fn unavailable(e: impl std::fmt::Display) -> SyncError {
    SyncError::Unavailable(e.to_string())
}

impl ApiPort {
    /// A request through the forwarding path: its status and body.
    async fn forwarded(
        &self,
        fwd: &crate::forward::Forwarder,
        method: &str,
        uri: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), SyncError> {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::from(body))
            .map_err(unavailable)?;
        let resp = fwd.forward(req).await;
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), crate::wire::FRAME_BYTES_MAX)
            .await
            .map_err(unavailable)?;
        Ok((status, bytes.to_vec()))
    }

    async fn forwarded_json(
        &self,
        fwd: &crate::forward::Forwarder,
        uri: &str,
    ) -> Result<Value, SyncError> {
        let (status, body) = self.forwarded(fwd, "GET", uri, Vec::new()).await?;
        if status != 200 {
            return Err(SyncError::Unavailable(
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        serde_json::from_slice(&body).map_err(unavailable)
    }
}

fn escape(name: &str) -> String {
    crate::client::escape_key(name)
}

impl CatalogPort for ApiPort {
    async fn node_slice(&self, name: &str) -> Result<RemoteNode, SyncError> {
        let api = &self.0;
        if let Some(fwd) = &api.forward {
            let services = self
                .forwarded_json(
                    fwd,
                    &format!("/v1/catalog/node-services/{}?stale", escape(name)),
                )
                .await?;
            let checks = self
                .forwarded_json(fwd, &format!("/v1/health/node/{}?stale", escape(name)))
                .await?;
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
            let (status, text) = self.forwarded(fwd, "PUT", uri, body).await?;
            return match status {
                200 => Ok(()),
                400 => Err(SyncError::Refused(
                    String::from_utf8_lossy(&text).into_owned(),
                )),
                _ => Err(SyncError::Unavailable(
                    String::from_utf8_lossy(&text).into_owned(),
                )),
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
    if let Some(list) = checks.as_array() {
        for c in list {
            let reg = crate::http::registration_of(&json!({"Check": c}))?;
            out.checks.extend(reg.checks);
        }
    }
    Ok(out)
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

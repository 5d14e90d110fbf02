//! `/v1/catalog/*`: register and deregister nodes, services and checks, and read them back
//! (`datacenters`, `nodes`, `services`, `service/:name`, `node/:node`,
//! `node-services/:node`), with Consul's JSON shapes. Also the JSON of nodes, services and
//! checks that `/v1/health/*` shares.

use std::collections::BTreeMap;

use serde_json::json;
use serde_json::Value;
use tribune_core::catalog::CatalogOp;
use tribune_core::catalog::Check;
use tribune_core::catalog::CheckInfo;
use tribune_core::catalog::Health;
use tribune_core::catalog::Node;
use tribune_core::catalog::NodeInfo;
use tribune_core::catalog::Registration;
use tribune_core::catalog::Service;
use tribune_core::catalog::ServiceInfo;
use tribune_core::catalog::Table;
use tribune_core::catalog::TaggedAddress;
use tribune_core::catalog::Weights;
use tribune_core::fsm::Command;
use tribune_core::fsm::Response;
use tribune_core::fsm::StateMachine;

use super::blocking;
use super::context::Ctx;
use super::context::Reply;
use super::error::ApiError;
use super::filter::Filter;
use super::json_response;
use super::loose::Loose;
use super::percent_decode;
use super::query::QueryOptions;
use crate::hub::Topic;

/// The largest registration body taken (Consul bounds none; one service with its checks
/// is a few KiB).
pub const REGISTER_BODY_MAX: usize = 512 * 1024;

/// Read a JSON request body of at most [`REGISTER_BODY_MAX`] bytes (`null` if empty).
pub(super) async fn json_body(cx: Ctx) -> Result<(Ctx, Value), ApiError> {
    let Ctx {
        api,
        headers,
        query,
        tail,
        body,
    } = cx;
    let bytes = axum::body::to_bytes(body, REGISTER_BODY_MAX)
        .await
        .map_err(|_| ApiError::bad_request("Request body too large"))?;
    let v = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?
    };
    let cx = Ctx {
        api,
        headers,
        query,
        tail,
        body: axum::body::Body::empty(),
    };
    Ok((cx, v))
}

/// A path segment after the prefix, URL-decoded (a node or service name).
pub fn name_of(cx: &Ctx, what: &str) -> Result<String, ApiError> {
    let name = String::from_utf8(percent_decode(cx.tail.as_bytes()))
        .map_err(|_| ApiError::bad_request(format!("Invalid {what}: not UTF-8")))?;
    if name.is_empty() {
        return Err(ApiError::bad_request(format!("Missing {what} name")));
    }
    Ok(name)
}

/// A body's `Datacenter`, which must be this agent's (there is no WAN forwarding).
fn check_body_dc(cx: &Ctx, l: &Loose<'_>) -> Result<(), ApiError> {
    let dc = l.string("Datacenter")?;
    if !dc.is_empty() && !dc.eq_ignore_ascii_case(&cx.api.agent.datacenter) {
        return Err(ApiError::internal("No path to datacenter"));
    }
    Ok(())
}

pub(super) fn service_of(l: &Loose<'_>) -> Result<ServiceInfo, ApiError> {
    let w = l.object("Weights", "Service.Weights")?;
    let weights = match w {
        Some(w) => Weights {
            passing: w.int("Passing")?,
            warning: w.int("Warning")?,
        },
        None => Weights::default(),
    };
    let tagged = l
        .object_map("TaggedAddresses")?
        .into_iter()
        .map(|(k, v)| {
            Ok((
                k,
                TaggedAddress {
                    address: v.string("Address")?,
                    port: v.int("Port")?,
                },
            ))
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(ServiceInfo {
        id: l.string("ID")?,
        name: l.string("Service")?,
        tags: l.strings("Tags")?,
        address: l.string("Address")?,
        meta: l.string_map("Meta")?,
        port: l.int("Port")?,
        weights,
        enable_tag_override: l.bool("EnableTagOverride")?,
        tagged_addresses: tagged,
    })
}

/// A check in a catalog registration (`Check` or an entry of `Checks`).
fn check_of(l: &Loose<'_>) -> Result<CheckInfo, ApiError> {
    let status = l.string("Status")?;
    let status = match status.as_str() {
        "" => Health::Critical,
        s => Health::parse(s)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid check status: {s:?}")))?,
    };
    let def = l.object("Definition", "Check.Definition")?;
    // In `Definition` as registered, at the top level as read back.
    let either = |name: &str| -> Result<String, ApiError> {
        let inner = match &def {
            Some(d) => d.string(name)?,
            None => String::new(),
        };
        if inner.is_empty() {
            l.string(name)
        } else {
            Ok(inner)
        }
    };
    let (interval, timeout) = (either("Interval")?, either("Timeout")?);
    Ok(CheckInfo {
        node: l.string("Node")?,
        check_id: l.string("CheckID")?,
        name: l.string("Name")?,
        status,
        notes: l.string("Notes")?,
        output: l.string("Output")?,
        service_id: l.string("ServiceID")?,
        kind: l.string("Type")?,
        interval,
        timeout,
        ..CheckInfo::default()
    })
}

/// Consul's `RegisterRequest` body.
pub fn registration_of(v: &Value) -> Result<Registration, ApiError> {
    let l = Loose::top(v)?;
    let node = NodeInfo {
        id: l.string("ID")?,
        name: l.string("Node")?,
        address: l.string("Address")?,
        datacenter: l.string("Datacenter")?,
        tagged_addresses: l.string_map("TaggedAddresses")?,
        meta: l.string_map("NodeMeta")?,
    };
    let service = l
        .object("Service", "Service")?
        .map(|s| service_of(&s))
        .transpose()?;
    let mut checks = Vec::new();
    if let Some(c) = l.object("Check", "Check")? {
        checks.push(check_of(&c)?);
    }
    for c in l.objects("Checks", "Checks")? {
        checks.push(check_of(&c)?);
    }
    Ok(Registration {
        node,
        skip_node_update: l.bool("SkipNodeUpdate")?,
        service,
        checks,
    })
}

/// Submit a catalog write: `true`, or Consul's error text as a 500.
async fn write(api: &super::Api, op: CatalogOp) -> Reply {
    match api.store.write(Command::Catalog(op)).await? {
        Response::Catalog { result: Ok(_), .. } => Ok(json_response(&true, false)),
        Response::Catalog { result: Err(e), .. } => Err(ApiError::internal(e.to_string())),
        other => Err(ApiError::internal(format!(
            "unexpected write response: {other:?}"
        ))),
    }
}

/// `PUT /v1/catalog/register`.
pub async fn register(cx: Ctx) -> Reply {
    cx.check_dc()?;
    let (cx, v) = json_body(cx).await?;
    check_body_dc(&cx, &Loose::top(&v)?)?;
    let mut r = registration_of(&v)?;
    if r.node.datacenter.is_empty() {
        r.node.datacenter = cx.api.agent.datacenter.clone();
    }
    // Refused here with Consul's text, before it costs a Raft entry.
    r.normalize()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    write(&cx.api, CatalogOp::Register(Box::new(r))).await
}

/// `PUT /v1/catalog/deregister`.
pub async fn deregister(cx: Ctx) -> Reply {
    cx.check_dc()?;
    let (cx, v) = json_body(cx).await?;
    let l = Loose::top(&v)?;
    check_body_dc(&cx, &l)?;
    let node = l.string("Node")?;
    if node.is_empty() {
        return Err(ApiError::internal("Must provide node"));
    }
    let op = CatalogOp::Deregister {
        node,
        service_id: Some(l.string("ServiceID")?).filter(|s| !s.is_empty()),
        check_id: Some(l.string("CheckID")?).filter(|s| !s.is_empty()),
    };
    write(&cx.api, op).await
}

/// `GET /v1/catalog/datacenters`: this agent's, as there is no WAN federation yet.
pub async fn datacenters(cx: Ctx) -> Reply {
    Ok(cx.json(&[cx.api.agent.datacenter.as_str()]))
}

// ----- JSON shapes -----------------------------------------------------------------------

fn map_or_null(m: &BTreeMap<String, String>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        json!(m)
    }
}

/// Consul's `Node`.
pub fn node_json(n: &Node) -> Value {
    json!({
        "ID": n.info.id,
        "Node": n.info.name,
        "Address": n.info.address,
        "Datacenter": n.info.datacenter,
        "TaggedAddresses": map_or_null(&n.info.tagged_addresses),
        "Meta": map_or_null(&n.info.meta),
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    })
}

pub(super) fn weights_json(w: Weights) -> Value {
    json!({"Passing": w.passing, "Warning": w.warning})
}

pub(super) fn tagged_json(t: &BTreeMap<String, TaggedAddress>) -> Value {
    let m: serde_json::Map<String, Value> = t
        .iter()
        .map(|(k, a)| (k.clone(), json!({"Address": a.address, "Port": a.port})))
        .collect();
    Value::Object(m)
}

/// Consul's `NodeService` (the service part of health entries and node listings).
pub fn node_service_json(s: &Service) -> Value {
    let i = &s.info;
    let mut v = json!({
        "ID": i.id,
        "Service": i.name,
        "Tags": i.tags,
        "Address": i.address,
        "Meta": i.meta,
        "Port": i.port,
        "Weights": weights_json(i.weights),
        "EnableTagOverride": i.enable_tag_override,
        "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "Connect": {},
        "PeerName": "",
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    });
    if !i.tagged_addresses.is_empty() {
        v["TaggedAddresses"] = tagged_json(&i.tagged_addresses);
    }
    v
}

/// Consul's `ServiceNode` (`/v1/catalog/service/:name`): the node's fields and the
/// service's, prefixed.
fn service_node_json(n: &Node, s: &Service) -> Value {
    let i = &s.info;
    let mut v = json!({
        "ID": n.info.id,
        "Node": n.info.name,
        "Address": n.info.address,
        "Datacenter": n.info.datacenter,
        "TaggedAddresses": map_or_null(&n.info.tagged_addresses),
        "NodeMeta": map_or_null(&n.info.meta),
        "ServiceKind": "",
        "ServiceID": i.id,
        "ServiceName": i.name,
        "ServiceTags": i.tags,
        "ServiceAddress": i.address,
        "ServiceWeights": weights_json(i.weights),
        "ServiceMeta": i.meta,
        "ServicePort": i.port,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": i.enable_tag_override,
        "ServiceProxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "ServiceConnect": {},
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    });
    if !i.tagged_addresses.is_empty() {
        v["ServiceTaggedAddresses"] = tagged_json(&i.tagged_addresses);
    }
    v
}

/// Consul's `HealthCheck`.
pub fn check_json(c: &Check) -> Value {
    let i = &c.info;
    json!({
        "Node": i.node,
        "CheckID": i.check_id,
        "Name": i.name,
        "Status": i.status.as_str(),
        "Notes": i.notes,
        "Output": i.output,
        "ServiceID": i.service_id,
        "ServiceName": i.service_name,
        "ServiceTags": i.service_tags,
        "Type": i.kind,
        "Interval": i.interval,
        "Timeout": i.timeout,
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

// ----- filters -----------------------------------------------------------------------------

/// `?node-meta=key:value` (repeatable): every pair must be in the node's meta.
pub fn node_meta_matches(opts: &QueryOptions, n: &NodeInfo) -> bool {
    opts.node_meta
        .iter()
        .all(|(k, v)| n.meta.get(k).is_some_and(|have| have == v))
}

/// `?tag=` (repeatable): the instance has every tag named (without regard to case).
pub fn has_tags(tags: &[String], want: &[&str]) -> bool {
    want.iter()
        .all(|w| tags.iter().any(|t| t.eq_ignore_ascii_case(w)))
}

/// `?filter`, parsed (an absent or empty one keeps everything), or Consul's 400.
pub fn filter_of(filter: Option<&str>) -> Result<Filter, ApiError> {
    Filter::parse(filter.unwrap_or_default()).map_err(filter_error)
}

fn filter_error(e: super::filter::FilterError) -> ApiError {
    ApiError::bad_request(format!(
        "Failed to create boolean expression evaluator: {e}"
    ))
}

/// The elements of `list` that `filter` keeps.
pub fn retain(filter: &Filter, list: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        if keep(filter, &v)? {
            out.push(v);
        }
    }
    Ok(out)
}

/// Whether `filter` keeps `v` (an evaluation error is Consul's 400).
pub fn keep(filter: &Filter, v: &Value) -> Result<bool, ApiError> {
    filter.matches(v).map_err(filter_error)
}

/// The options of a catalog or health read, once its datacenter is known to be this one,
/// and its `?filter`.
pub fn read_options(cx: &Ctx) -> Result<(QueryOptions, Filter), ApiError> {
    cx.check_dc()?;
    let opts = cx.read_options()?;
    let filter = filter_of(opts.filter.as_deref())?;
    Ok((opts, filter))
}

/// Serve a read as JSON (`?pretty` honoured), blocking on `topic` as `opts` asks; `finish`
/// turns what was read into the answer (filtering it), or into an error.
pub async fn serve<R>(
    api: &super::Api,
    opts: &QueryOptions,
    topic: Topic,
    read: impl Fn(&StateMachine) -> (R, u64),
    finish: impl FnOnce(R) -> Result<Value, ApiError>,
) -> Reply {
    let pretty = opts.pretty;
    let render = |r| match finish(r) {
        Ok(v) => json_response(&v, pretty),
        Err(e) => axum::response::IntoResponse::into_response(e),
    };
    blocking::respond(api, opts, topic, read, render).await
}

/// [`serve`] of a list, filtered.
pub async fn serve_list(
    api: &super::Api,
    opts: &QueryOptions,
    filter: &Filter,
    topic: Topic,
    read: impl Fn(&StateMachine) -> (Vec<Value>, u64),
) -> Reply {
    serve(api, opts, topic, read, |l| {
        retain(filter, l).map(Value::Array)
    })
    .await
}

// ----- reads -------------------------------------------------------------------------------

/// `GET /v1/catalog/nodes`.
pub async fn nodes(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let list: Vec<Value> = c
            .nodes()
            .filter(|n| node_meta_matches(&opts, &n.info))
            .map(node_json)
            .collect();
        (list, c.table_index(Table::Nodes))
    };
    let topic = Topic::Table(Table::Nodes.into());
    serve_list(&cx.api, &opts, &filter, topic, read).await
}

/// `GET /v1/catalog/services`: every service name with its instances' tags (`?filter`
/// applies to the instances, as Consul's does).
pub async fn services(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let mut list = Vec::new();
        for n in c.nodes().filter(|n| node_meta_matches(&opts, &n.info)) {
            list.extend(
                c.node_services(&n.info.name)
                    .map(|s| service_node_json(n, s)),
            );
        }
        (list, c.table_index(Table::Services))
    };
    let finish = |list: Vec<Value>| {
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for v in retain(&filter, list)? {
            let name = v["ServiceName"].as_str().unwrap_or_default().to_string();
            let tags = out.entry(name).or_default();
            for t in v["ServiceTags"].as_array().into_iter().flatten() {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
        }
        Ok(json!(out))
    };
    serve(
        &cx.api,
        &opts,
        Topic::Table(Table::Services.into()),
        read,
        finish,
    )
    .await
}

/// `GET /v1/catalog/service/:name` (`?tag`, repeatable; `?node-meta`).
pub async fn service(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let name = name_of(&cx, "service")?;
    let tags: Vec<String> = cx.query.all("tag").map(str::to_string).collect();
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let want: Vec<&str> = tags.iter().map(String::as_str).collect();
        let list: Vec<Value> = c
            .instances(&name)
            .filter(|s| has_tags(&s.info.tags, &want))
            .filter_map(|s| c.node(&s.node).map(|n| (n, s)))
            .filter(|(n, _)| node_meta_matches(&opts, &n.info))
            .map(|(n, s)| service_node_json(n, s))
            .collect();
        (list, c.service_index(&name))
    };
    serve_list(&cx.api, &opts, &filter, Topic::Service(name.clone()), read).await
}

/// `GET /v1/catalog/node/:node`: the node and its services by id, or `null` (`?filter`
/// applies to the services).
pub async fn node(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let name = name_of(&cx, "node")?;
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let v = c.node(&name).map(|n| {
            let services: Vec<Value> = c.node_services(&name).map(node_service_json).collect();
            (node_json(n), services)
        });
        (v, c.node_index(&name))
    };
    let finish = |v: Option<(Value, Vec<Value>)>| {
        let Some((node, services)) = v else {
            return Ok(Value::Null);
        };
        let by_id: serde_json::Map<String, Value> = retain(&filter, services)?
            .into_iter()
            .map(|s| (s["ID"].as_str().unwrap_or_default().to_string(), s))
            .collect();
        Ok(json!({"Node": node, "Services": by_id}))
    };
    serve(&cx.api, &opts, Topic::Node(name.clone()), read, finish).await
}

/// `GET /v1/catalog/node-services/:node`: the node and a list of its services (`Node`
/// null for an unknown node; `?filter` applies to the services).
pub async fn node_services(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let name = name_of(&cx, "node")?;
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let node = c.node(&name).map(node_json).unwrap_or(Value::Null);
        let services: Vec<Value> = c.node_services(&name).map(node_service_json).collect();
        ((node, services), c.node_index(&name))
    };
    let finish = |(node, services): (Value, Vec<Value>)| {
        Ok(json!({"Node": node, "Services": retain(&filter, services)?}))
    };
    serve(&cx.api, &opts, Topic::Node(name.clone()), read, finish).await
}

#[cfg(test)]
#[path = "catalog_test.rs"]
mod catalog_test;

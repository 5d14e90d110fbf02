//! `/v1/agent/service*`, `/v1/agent/check*`, `/v1/agent/health/service/*` and
//! `/v1/agent/maintenance`: the services and checks registered with this agent, which it
//! owns and keeps the catalog in step with (`tribune_core::local`).
//!
//! Service and check definitions are read as Consul reads them (any case, snake_case), so
//! the same functions read them from config files. A check is a TTL, HTTP, TCP, script or
//! alias check (`AliasService`, `AliasNode`) by the fields it sets.

use std::time::Duration;

use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use openraft::rt::watch::WatchReceiver;
use serde_json::json;
use serde_json::Value;
use tribune_core::catalog::Check;
use tribune_core::catalog::CheckInfo;
use tribune_core::catalog::Health;
use tribune_core::catalog::ServiceInfo;
use tribune_core::local::Alias;
use tribune_core::local::LocalError;

use super::catalog::check_json;
use super::catalog::json_body;
use super::catalog::name_of;
use super::catalog::service_of;
use super::catalog::tagged_json;
use super::catalog::weights_json;
use super::context::Ctx;
use super::context::Reply;
use super::error::ApiError;
use super::json_response;
use super::loose::Loose;
use super::text;
use crate::flags::parse_duration;
use crate::local::CheckDef;
use crate::local::CheckKind;

/// A duration field: a Go duration string, or a number of nanoseconds.
fn duration(l: &Loose<'_>, name: &str) -> Result<Option<Duration>, ApiError> {
    match l.field(name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_duration(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Request decode failed: time: invalid duration {s:?}"
            ))
        }),
        Some(Value::Number(n)) => Ok(n.as_u64().map(Duration::from_nanos)),
        Some(_) => Err(ApiError::bad_request(format!(
            "Request decode failed: json: cannot unmarshal into field {name} of type duration"
        ))),
    }
}

/// The `Header` map of an HTTP check: each name with a list of values.
fn headers(l: &Loose<'_>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    if let Some(Value::Object(m)) = l.field("Header") {
        for (k, v) in m {
            match v {
                Value::Array(vs) => {
                    for v in vs {
                        out.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
                    }
                }
                Value::String(s) => out.push((k.clone(), s.clone())),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Whether a check is given from a config file (script checks then need only
/// `enable_local_script_checks`) or over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    Config,
}

/// A check definition (`/v1/agent/check/register`, the `Check`/`Checks` of a service, or
/// a config file's `check`). `service` is the service it belongs to, if any.
pub fn check_def(
    l: &Loose<'_>,
    service: Option<&ServiceInfo>,
    scripts_allowed: bool,
) -> Result<CheckDef, ApiError> {
    let invalid = |e: &str| ApiError::bad_request(format!("Invalid check: {e}"));
    let mut id = l.string("CheckID")?;
    if id.is_empty() {
        id = l.string("ID")?;
    }
    let status = match l.string("Status")?.as_str() {
        "" => Health::Critical,
        s => Health::parse(s).ok_or_else(|| ApiError::bad_request("Bad check status"))?,
    };
    let ttl = duration(l, "TTL")?.filter(|d| !d.is_zero());
    let interval = duration(l, "Interval")?.filter(|d| !d.is_zero());
    let http = l.string("HTTP")?;
    let tcp = l.string("TCP")?;
    let mut args = l.strings("Args")?;
    if args.is_empty() {
        args = l.strings("ScriptArgs")?;
    }
    let alias = Alias {
        node: l.string("AliasNode")?,
        service: l.string("AliasService")?,
    };
    let is_alias = !alias.node.is_empty() || !alias.service.is_empty();
    let periodic = !http.is_empty() || !tcp.is_empty() || !args.is_empty();
    // Consul's rules, in its order (an alias may carry an interval, which it ignores).
    if interval.is_some() && ttl.is_some() {
        return Err(invalid("Interval and TTL cannot both be specified"));
    }
    if periodic && interval.is_none() {
        return Err(invalid(
            "Interval must be > 0 for Script, HTTP, or TCP checks",
        ));
    }
    if periodic && is_alias {
        return Err(invalid("Interval cannot be set for Alias checks"));
    }
    if is_alias && ttl.is_some() {
        return Err(invalid("TTL must be not be set for Alias checks"));
    }
    if !periodic && !is_alias && ttl.is_none() {
        return Err(invalid("TTL must be > 0 for TTL checks"));
    }
    if !args.is_empty() && !scripts_allowed {
        return Err(ApiError::bad_request(
            "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' \
             or 'enable_local_script_checks' to true",
        ));
    }
    let kind = if let Some(ttl) = ttl {
        CheckKind::Ttl(ttl)
    } else if !http.is_empty() {
        CheckKind::Http {
            url: http,
            method: l.string("Method")?,
            headers: headers(l)?,
            body: l.string("Body")?,
        }
    } else if !tcp.is_empty() {
        CheckKind::Tcp(tcp)
    } else if is_alias {
        CheckKind::Alias(alias)
    } else {
        CheckKind::Script(args)
    };
    let mut service_id = l.string("ServiceID")?;
    if let Some(s) = service {
        service_id = s.id.clone();
    }
    let timeout = duration(l, "Timeout")?.unwrap_or_default();
    let interval = interval.unwrap_or_default();
    let go = |d: Duration| {
        if d.is_zero() {
            String::new()
        } else {
            super::agent::go_duration(d)
        }
    };
    let info = CheckInfo {
        check_id: id,
        name: l.string("Name")?,
        status,
        notes: l.string("Notes")?,
        output: String::new(),
        service_id,
        interval: go(interval),
        timeout: go(timeout),
        ..CheckInfo::default()
    };
    Ok(CheckDef {
        info,
        kind,
        interval,
        timeout,
        success_before_passing: l.int("SuccessBeforePassing")?,
        failures_before_critical: l.int("FailuresBeforeCritical")?,
        deregister_after: duration(l, "DeregisterCriticalServiceAfter")?,
    })
}

/// A service definition and its checks, with Consul's defaults for the checks' ids and
/// names (`service:<id>`, `service:<id>:<n>` when there are several; `Service '<name>'
/// check`).
pub fn service_def(
    l: &Loose<'_>,
    scripts_allowed: bool,
) -> Result<(ServiceInfo, Vec<CheckDef>), ApiError> {
    // The service's name is `Name` here (`Service` in a catalog registration).
    let mut s = service_of(l)?;
    if s.name.is_empty() {
        s.name = l.string("Name")?;
    }
    if s.name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    if s.id.is_empty() {
        s.id = s.name.clone();
    }
    let mut defs = Vec::new();
    if let Some(c) = l.object("Check", "Check")? {
        defs.push(c);
    }
    defs.extend(l.objects("Checks", "Checks")?);
    let n = defs.len();
    let mut checks = Vec::new();
    for (i, c) in defs.iter().enumerate() {
        let mut def = check_def(c, Some(&s), scripts_allowed)?;
        if def.info.check_id.is_empty() {
            def.info.check_id = if n == 1 {
                format!("service:{}", s.id)
            } else {
                format!("service:{}:{}", s.id, i + 1)
            };
        }
        if def.info.name.is_empty() {
            def.info.name = format!("Service '{}' check", s.name);
        }
        checks.push(def);
    }
    Ok((s, checks))
}

fn local_error(e: LocalError) -> ApiError {
    match e {
        LocalError::UnknownService(_) | LocalError::UnknownCheck(_) => {
            ApiError::NotFound(e.to_string())
        }
        LocalError::NotTtl(_) => ApiError::internal(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    }
}

/// Consul's `AgentService` (also the `Service` of a catalog registration, which reads the
/// same fields).
pub fn agent_service_json(s: &ServiceInfo, datacenter: &str) -> Value {
    let mut v = json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
        "Weights": weights_json(s.weights),
        "EnableTagOverride": s.enable_tag_override,
        "Datacenter": datacenter,
    });
    if !s.tagged_addresses.is_empty() {
        v["TaggedAddresses"] = tagged_json(&s.tagged_addresses);
    }
    v
}

fn local_check_json(c: &CheckInfo) -> Value {
    check_json(&Check {
        info: c.clone(),
        create_index: 0,
        modify_index: 0,
    })
}

/// `GET /v1/agent/services`: this agent's services by id.
pub async fn services(cx: Ctx) -> Reply {
    let dc = &cx.api.agent.datacenter;
    let m: serde_json::Map<String, Value> = cx.api.local.agent.read(|s| {
        s.services()
            .map(|svc| (svc.id.clone(), agent_service_json(svc, dc)))
            .collect()
    });
    Ok(cx.json(&filtered(&cx, m)?))
}

/// The entries of an id-keyed map that `?filter` keeps.
fn filtered(cx: &Ctx, m: serde_json::Map<String, Value>) -> Result<Value, ApiError> {
    let filter = super::catalog::filter_of(cx.query.get("filter"))?;
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        if super::catalog::keep(&filter, &v)? {
            out.insert(k, v);
        }
    }
    Ok(Value::Object(out))
}

/// A service's content hash, as `/v1/agent/service/:id` reports and blocks on it.
fn content_hash(v: &Value) -> String {
    // FNV-1a over the JSON: stable for a given definition, cheap, and only compared.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `GET /v1/agent/service/:id`, blocking on `?hash` (up to `?wait`).
pub async fn service(cx: Ctx) -> Reply {
    let id = name_of(&cx, "service ID")?;
    let opts = cx.read_options()?;
    let want = cx.query.get("hash").map(str::to_string);
    let local = cx.api.local.clone();
    let dc = cx.api.agent.datacenter.clone();
    let read = || {
        local.agent.read(|s| {
            s.service(&id).map(|svc| {
                let mut v = agent_service_json(svc, &dc);
                let h = content_hash(&v);
                v["ContentHash"] = Value::String(h.clone());
                (v, h)
            })
        })
    };
    let mut changed = local.agent.subscribe();
    let deadline = tokio::time::Instant::now() + opts.wait;
    loop {
        let Some((v, h)) = read() else {
            return Err(ApiError::NotFound(format!("unknown service ID: {id}")));
        };
        let blocked = want.as_deref().is_some_and(|w| !w.is_empty() && w == h);
        if !blocked || tokio::time::Instant::now() >= deadline {
            let mut r = json_response(&v, opts.pretty);
            if let Ok(hv) = HeaderValue::from_str(&h) {
                r.headers_mut().insert("X-Consul-ContentHash", hv);
            }
            return Ok(r);
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `PUT /v1/agent/service/register` (`?replace-existing-checks`).
pub async fn register_service(cx: Ctx) -> Reply {
    let replace = cx.query.has("replace-existing-checks");
    let (cx, v) = json_body(cx).await?;
    let local = cx.api.local.clone();
    let (svc, checks) = service_def(&Loose::top(&v)?, local.script_checks)?;
    let keep: Vec<String> = checks.iter().map(|c| c.info.check_id.clone()).collect();
    let replaced: Vec<String> = if replace {
        local.agent.read(|s| {
            s.service_checks(&svc.id)
                .map(|c| c.info.check_id.clone())
                .filter(|id| !keep.iter().any(|k| k.eq_ignore_ascii_case(id)))
                .collect()
        })
    } else {
        Vec::new()
    };
    for id in &replaced {
        local.stop_check(id);
    }
    local
        .agent
        .change(|s| s.add_service(svc, replace.then_some(&keep[..])))
        .map_err(local_error)?;
    for c in checks {
        local.add_check(c).map_err(local_error)?;
    }
    Ok(ok())
}

fn ok() -> axum::response::Response {
    StatusCode::OK.into_response()
}

/// `PUT /v1/agent/service/deregister/:id`.
pub async fn deregister_service(cx: Ctx) -> Reply {
    let id = name_of(&cx, "service ID")?;
    cx.api.local.remove_service(&id).map_err(local_error)?;
    Ok(ok())
}

/// `?enable` of the maintenance endpoints: required, a Go bool.
fn enable_of(cx: &Ctx) -> Result<bool, ApiError> {
    let Some(v) = cx.query.get("enable") else {
        return Err(ApiError::bad_request("Missing value for enable"));
    };
    crate::flags::parse_bool(v).ok_or_else(|| ApiError::bad_request("Invalid value for enable"))
}

/// `PUT /v1/agent/service/maintenance/:id?enable=&reason=`.
pub async fn service_maintenance(cx: Ctx) -> Reply {
    let id = name_of(&cx, "service ID")?;
    let enable = enable_of(&cx)?;
    let reason = cx.query.get("reason").unwrap_or_default().to_string();
    let local = &cx.api.local;
    let now = local.now();
    local
        .agent
        .change(|s| s.service_maintenance(&id, enable, &reason, now))
        .map_err(local_error)?;
    Ok(ok())
}

/// `PUT /v1/agent/maintenance?enable=&reason=`.
pub async fn node_maintenance(cx: Ctx) -> Reply {
    let enable = enable_of(&cx)?;
    let reason = cx.query.get("reason").unwrap_or_default().to_string();
    let local = &cx.api.local;
    let now = local.now();
    local
        .agent
        .change(|s| s.node_maintenance(enable, &reason, now));
    Ok(ok())
}

/// `GET /v1/agent/checks`: this agent's checks by id.
pub async fn checks(cx: Ctx) -> Reply {
    let m: serde_json::Map<String, Value> = cx.api.local.agent.read(|s| {
        s.checks()
            .map(|c| (c.info.check_id.clone(), local_check_json(&c.info)))
            .collect()
    });
    Ok(cx.json(&filtered(&cx, m)?))
}

/// `PUT /v1/agent/check/register`.
pub async fn register_check(cx: Ctx) -> Reply {
    let (cx, v) = json_body(cx).await?;
    let local = cx.api.local.clone();
    let l = Loose::top(&v)?;
    let mut def = check_def(&l, None, local.script_checks)?;
    if def.info.name.is_empty() {
        return Err(ApiError::bad_request("Missing check name"));
    }
    if def.info.check_id.is_empty() {
        def.info.check_id = def.info.name.clone();
    }
    local.add_check(def).map_err(local_error)?;
    Ok(ok())
}

/// `PUT /v1/agent/check/deregister/:id`.
pub async fn deregister_check(cx: Ctx) -> Reply {
    let id = name_of(&cx, "check ID")?;
    cx.api.local.remove_check(&id).map_err(local_error)?;
    Ok(ok())
}

/// Set TTL check `id` to `status` with `output` (`pass`, `warn`, `fail`, `update`).
fn set_ttl(cx: &Ctx, id: &str, status: Health, output: String) -> Reply {
    let local = &cx.api.local;
    let now = local.now();
    local
        .agent
        .change(|s| s.update_ttl(id, status, output, now))
        .map_err(local_error)?;
    Ok(ok())
}

async fn ttl_update(cx: Ctx, status: Health) -> Reply {
    let id = name_of(&cx, "check ID")?;
    let note = cx.query.get("note").unwrap_or_default().to_string();
    set_ttl(&cx, &id, status, note)
}

/// `PUT /v1/agent/check/pass/:id?note=`.
pub async fn pass(cx: Ctx) -> Reply {
    ttl_update(cx, Health::Passing).await
}

/// `PUT /v1/agent/check/warn/:id?note=`.
pub async fn warn(cx: Ctx) -> Reply {
    ttl_update(cx, Health::Warning).await
}

/// `PUT /v1/agent/check/fail/:id?note=`.
pub async fn fail(cx: Ctx) -> Reply {
    ttl_update(cx, Health::Critical).await
}

/// `PUT /v1/agent/check/update/:id` with `{"Status": ..., "Output": ...}`.
pub async fn update(cx: Ctx) -> Reply {
    let id = name_of(&cx, "check ID")?;
    let (cx, v) = json_body(cx).await?;
    let l = Loose::top(&v)?;
    let status = l.string("Status")?;
    let status = Health::parse(&status)
        .ok_or_else(|| ApiError::bad_request(format!("Invalid check status: '{status}'")))?;
    set_ttl(&cx, &id, status, l.string("Output")?)
}

/// A service's aggregated status, as Consul computes it: maintenance beats critical beats
/// warning beats passing.
fn aggregate(checks: &[CheckInfo]) -> &'static str {
    let maint = checks.iter().any(|c| {
        c.check_id
            .starts_with(tribune_core::local::SERVICE_MAINT_PREFIX)
            || c.check_id == tribune_core::local::NODE_MAINT_ID
    });
    if maint {
        return "maintenance";
    }
    let worst = checks.iter().map(|c| c.status).max();
    match worst {
        Some(Health::Critical) => "critical",
        Some(Health::Warning) => "warning",
        _ => "passing",
    }
}

fn status_code(aggregated: &str) -> StatusCode {
    match aggregated {
        "passing" => StatusCode::OK,
        "warning" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// One service's health: its aggregated status and the entry Consul returns.
fn service_health(
    s: &tribune_core::local::LocalState,
    svc: &ServiceInfo,
    dc: &str,
) -> (&'static str, Value) {
    let checks: Vec<CheckInfo> = s
        .checks()
        .filter(|c| c.info.service_id.eq_ignore_ascii_case(&svc.id) || c.info.service_id.is_empty())
        .map(|c| c.info.clone())
        .collect();
    let agg = aggregate(&checks);
    let v = json!({
        "AggregatedStatus": agg,
        "Service": agent_service_json(svc, dc),
        "Checks": checks.iter().map(local_check_json).collect::<Vec<_>>(),
    });
    (agg, v)
}

fn health_reply(cx: &Ctx, status: &'static str, body: Value) -> Reply {
    let code = status_code(status);
    if cx.query.get("format") == Some("text") {
        return Ok(text(code, status));
    }
    let mut r = cx.json(&body);
    *r.status_mut() = code;
    Ok(r)
}

/// `GET /v1/agent/health/service/id/:id` (`?format=text`).
pub async fn health_by_id(cx: Ctx) -> Reply {
    let id = name_of(&cx, "service ID")?;
    let dc = cx.api.agent.datacenter.clone();
    let found = cx
        .api
        .local
        .agent
        .read(|s| s.service(&id).map(|svc| service_health(s, svc, &dc)));
    match found {
        Some((agg, v)) => health_reply(&cx, agg, v),
        None => {
            let msg = format!("ServiceId {id} not found");
            Ok(text(StatusCode::NOT_FOUND, msg))
        }
    }
}

/// `GET /v1/agent/health/service/name/:name` (`?format=text`): every instance, with the
/// worst status as the response's.
pub async fn health_by_name(cx: Ctx) -> Reply {
    let name = name_of(&cx, "service name")?;
    let dc = cx.api.agent.datacenter.clone();
    let found: Vec<(&'static str, Value)> = cx.api.local.agent.read(|s| {
        s.services()
            .filter(|svc| svc.name == name)
            .map(|svc| service_health(s, svc, &dc))
            .collect()
    });
    if found.is_empty() {
        let msg = format!("ServiceName {name} Not Found");
        return Ok(text(StatusCode::NOT_FOUND, msg));
    }
    let rank = |a: &str| match a {
        "passing" => 0,
        "warning" => 1,
        "critical" => 2,
        _ => 3,
    };
    let worst = found
        .iter()
        .map(|(a, _)| *a)
        .max_by_key(|a| rank(a))
        .unwrap_or("passing");
    let list: Vec<Value> = found.into_iter().map(|(_, v)| v).collect();
    health_reply(&cx, worst, Value::Array(list))
}

#[cfg(test)]
#[path = "agent_services_test.rs"]
mod agent_services_test;

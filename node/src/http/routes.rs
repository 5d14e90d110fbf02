//! The route table, in the spirit of Consul's endpoint registry: every path the API serves,
//! the methods it takes and the function that serves it. A new endpoint is one row here plus
//! one `async fn(Ctx) -> Result<Response, ApiError>` in its group's module.
//!
//! Dispatch follows Go's `ServeMux`, which Consul serves through: an exact path beats a
//! prefix, a longer prefix beats a shorter one, and a prefix without its trailing slash
//! (`/v1/kv`) is served by that prefix. Paths no row serves fall to Consul's index handler
//! (`/` answers, anything else is a 404 with its text). A known path asked with another
//! method answers 405 with `Allow`, and `OPTIONS` answers 200 with `Allow`. As this agent
//! always has, `HEAD` is served as `GET` and `POST` as `PUT` (`Allow` names Consul's
//! methods only).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;

use super::agent;
use super::agent_services;
use super::catalog;
use super::context::Ctx;
use super::context::Reply;
use super::error::allow_header;
use super::error::ApiError;
use super::health;
use super::kv;
use super::metrics;
use super::operator;
use super::query::Query;
use super::status;
use super::text;
use super::Api;
use crate::store::BoxFuture;

/// A handler, as the table holds it.
pub type Handler = fn(Ctx) -> BoxFuture<'static, Reply>;

/// How a row matches a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// This path only.
    Exact(&'static str),
    /// This path and everything under it (the pattern ends in `/`).
    Prefix(&'static str),
}

use Path::Exact;
use Path::Prefix;

impl Path {
    /// How specifically `self` matches `path`, if it does (higher wins).
    fn rank(self, path: &str) -> Option<usize> {
        match self {
            Exact(p) => (path == p).then_some(usize::MAX),
            Prefix(p) => {
                (path.starts_with(p) || path == p.trim_end_matches('/')).then_some(p.len())
            }
        }
    }
}

/// One row: a path, the methods it takes and who serves them.
pub struct Route {
    pub path: Path,
    pub methods: &'static [Method],
    pub handler: Handler,
}

impl Route {
    /// Whether this row serves `method` (`HEAD` as `GET`, `POST` as `PUT`).
    fn takes(&self, method: &Method) -> bool {
        let served_as = match *method {
            Method::HEAD => Method::GET,
            Method::POST => Method::PUT,
            ref m => m.clone(),
        };
        self.methods.iter().any(|m| m == method || *m == served_as)
    }
}

/// A table row: `row!(path, [METHOD, ...], handler)`.
macro_rules! row {
    ($path:expr, [$($method:ident),+], $handler:path) => {
        Route {
            path: $path,
            methods: &[$(Method::$method),+],
            handler: |cx| Box::pin($handler(cx)),
        }
    };
}

/// Every endpoint of the API.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    // kv
    row!(Prefix("/v1/kv/"),                        [GET],    kv::get),
    row!(Prefix("/v1/kv/"),                        [PUT],    kv::put),
    row!(Prefix("/v1/kv/"),                        [DELETE], kv::delete),
    // catalog
    row!(Exact("/v1/catalog/register"),            [PUT],    catalog::register),
    row!(Exact("/v1/catalog/deregister"),          [PUT],    catalog::deregister),
    row!(Exact("/v1/catalog/datacenters"),         [GET],    catalog::datacenters),
    row!(Exact("/v1/catalog/nodes"),               [GET],    catalog::nodes),
    row!(Exact("/v1/catalog/services"),            [GET],    catalog::services),
    row!(Prefix("/v1/catalog/service/"),           [GET],    catalog::service),
    row!(Prefix("/v1/catalog/node/"),              [GET],    catalog::node),
    row!(Prefix("/v1/catalog/node-services/"),     [GET],    catalog::node_services),
    // health
    row!(Prefix("/v1/health/node/"),               [GET],    health::node),
    row!(Prefix("/v1/health/checks/"),             [GET],    health::checks),
    row!(Prefix("/v1/health/state/"),              [GET],    health::state),
    row!(Prefix("/v1/health/service/"),            [GET],    health::service),
    // status
    row!(Exact("/v1/status/leader"),               [GET],    status::leader),
    row!(Exact("/v1/status/peers"),                [GET],    status::peers),
    // agent
    row!(Exact("/v1/agent/self"),                  [GET],    agent::agent_self),
    row!(Exact("/v1/agent/members"),               [GET],    agent::members),
    row!(Exact("/v1/agent/leave"),                 [PUT],    agent::leave),
    row!(Exact("/v1/agent/reload"),                [PUT],    agent::reload),
    row!(Prefix("/v1/agent/join/"),                [PUT],    agent::join),
    row!(Prefix("/v1/agent/force-leave/"),         [PUT],    agent::force_leave),
    row!(Exact("/v1/agent/services"),              [GET],    agent_services::services),
    row!(Prefix("/v1/agent/service/"),             [GET],    agent_services::service),
    row!(Exact("/v1/agent/service/register"),      [PUT],    agent_services::register_service),
    row!(Prefix("/v1/agent/service/deregister/"),  [PUT],    agent_services::deregister_service),
    row!(Prefix("/v1/agent/service/maintenance/"), [PUT],    agent_services::service_maintenance),
    row!(Exact("/v1/agent/maintenance"),           [PUT],    agent_services::node_maintenance),
    row!(Exact("/v1/agent/checks"),                [GET],    agent_services::checks),
    row!(Exact("/v1/agent/check/register"),        [PUT],    agent_services::register_check),
    row!(Prefix("/v1/agent/check/deregister/"),    [PUT],    agent_services::deregister_check),
    row!(Prefix("/v1/agent/check/pass/"),          [PUT],    agent_services::pass),
    row!(Prefix("/v1/agent/check/warn/"),          [PUT],    agent_services::warn),
    row!(Prefix("/v1/agent/check/fail/"),          [PUT],    agent_services::fail),
    row!(Prefix("/v1/agent/check/update/"),        [PUT],    agent_services::update),
    row!(Prefix("/v1/agent/health/service/id/"),   [GET],    agent_services::health_by_id),
    row!(Prefix("/v1/agent/health/service/name/"), [GET],    agent_services::health_by_name),
    // metrics
    row!(Exact("/v1/agent/metrics"),               [GET],    metrics::agent_metrics),
    // operator
    row!(Exact("/v1/operator/raft/configuration"), [GET],    operator::raft_configuration),
    row!(Exact("/v1/operator/raft/peer"),          [DELETE], operator::raft_peer),
];

/// The rows that serve `path`: those of its most specific pattern.
pub fn lookup(path: &str) -> Vec<&'static Route> {
    let Some(best) = ROUTES.iter().filter_map(|r| r.path.rank(path)).max() else {
        return Vec::new();
    };
    ROUTES
        .iter()
        .filter(|r| r.path.rank(path) == Some(best))
        .collect()
}

/// The methods `rows` take, each once, in table order.
fn allowed(rows: &[&Route]) -> Vec<Method> {
    let mut out: Vec<Method> = Vec::new();
    for m in rows.iter().flat_map(|r| r.methods) {
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    out
}

/// Serve `req` from the table: routed at once, so that the future is the handler's and
/// the ACL header set on its answer.
pub fn dispatch(api: Arc<Api>, req: Request) -> BoxFuture<'static, Response> {
    let run = route(api, req);
    Box::pin(async move { with_policy(run.await.unwrap_or_else(IntoResponse::into_response)) })
}

/// Consul sends the ACL default policy on every API response, ACLs on or off.
fn with_policy(mut resp: Response) -> Response {
    let policy = HeaderValue::from_static("allow");
    resp.headers_mut()
        .insert("X-Consul-Default-ACL-Policy", policy);
    resp
}

/// The handler's run for `req` (or the answer when no row takes it).
fn route(api: Arc<Api>, req: Request) -> BoxFuture<'static, Reply> {
    let answer = |r: Response| -> BoxFuture<'static, Reply> { Box::pin(std::future::ready(Ok(r))) };
    let path = req.uri().path();
    let rows = lookup(path);
    if rows.is_empty() {
        return answer(index(path));
    }
    let method = req.method().clone();
    if method == Method::OPTIONS {
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert(header::ALLOW, allow_header(&allowed(&rows)));
        return answer(r);
    }
    let Some(row) = rows.iter().find(|r| r.takes(&method)) else {
        let e = ApiError::MethodNotAllowed {
            method,
            allow: allowed(&rows),
        };
        return answer(e.into_response());
    };
    let tail = match row.path {
        Prefix(p) => path.get(p.len()..).unwrap_or("").to_string(),
        Exact(_) => String::new(),
    };
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let cx = Ctx {
        api,
        headers: parts.headers,
        query,
        tail,
        body,
    };
    (row.handler)(cx)
}

/// Consul's index handler, which the mux falls back to: `/` names the agent, and any other
/// path is not an endpoint.
fn index(path: &str) -> Response {
    if path == "/" {
        return text(StatusCode::OK, "Consul Agent");
    }
    let msg = if path.contains("/v1/") {
        "Invalid URL path: not a recognized HTTP API endpoint\n"
    } else {
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
    };
    ApiError::NotFound(msg.into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::call;
    use crate::http::testing::dev_api;

    /// A path each row serves: the pattern itself, or something under a prefix.
    fn sample_path(p: Path) -> String {
        match p {
            Exact(p) => p.to_string(),
            Prefix(p) => format!("{p}x"),
        }
    }

    const METHODS: [Method; 6] = [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::PATCH,
    ];

    #[tokio::test]
    async fn every_route_answers_a_wrong_method_with_405_and_allow() {
        let api = dev_api();
        let mut checked = 0;
        for route in ROUTES {
            let path = sample_path(route.path);
            let rows = lookup(&path);
            assert!(
                rows.iter().any(|r| std::ptr::eq(*r, route)),
                "{path} is not served by its row"
            );
            let allow = allowed(&rows);
            let want: Vec<&str> = std::iter::once("OPTIONS")
                .chain(allow.iter().map(Method::as_str))
                .collect();
            for m in METHODS.iter().filter(|m| !rows.iter().any(|r| r.takes(m))) {
                let (status, h, body) = call(&api, m.as_str(), &path, b"").await;
                assert_eq!(status, 405, "{m} {path}");
                assert_eq!(h[header::ALLOW], want.join(","), "{m} {path}");
                assert_eq!(
                    String::from_utf8(body).unwrap(),
                    format!("method {m} not allowed")
                );
                checked += 1;
            }
            let (status, h, _) = call(&api, "OPTIONS", &path, b"").await;
            assert_eq!(
                (status, h[header::ALLOW].to_str().unwrap()),
                (200, want.join(",").as_str())
            );
        }
        // Every row has at least PATCH to refuse.
        assert!(checked >= ROUTES.len());
    }

    #[test]
    fn most_specific_pattern_wins() {
        let kv = lookup("/v1/kv/a/b");
        assert_eq!(kv.len(), 3);
        assert!(kv.iter().all(|r| r.path == Prefix("/v1/kv/")));
        assert_eq!(lookup("/v1/kv").len(), 3, "the bare prefix is served by it");
        assert!(lookup("/v1/kvx").is_empty());
        assert!(lookup("/v1/status/leader/x").is_empty());
        assert_eq!(
            lookup("/v1/agent/join/1.2.3.4")[0].path,
            Prefix("/v1/agent/join/")
        );
    }

    #[test]
    fn patterns_are_unique_per_method() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                let clash = a.path == b.path && a.methods.iter().any(|m| b.methods.contains(m));
                assert!(!clash, "{:?} is served twice", a.path);
            }
        }
    }

    #[tokio::test]
    async fn unknown_paths_answer_as_consul() {
        let api = dev_api();
        let (s, _, b) = call(&api, "GET", "/v1/nope", b"").await;
        assert_eq!(s, 404);
        assert_eq!(b, b"Invalid URL path: not a recognized HTTP API endpoint\n");
        let (s, _, b) = call(&api, "PUT", "/nope", b"").await;
        assert_eq!(s, 404);
        assert!(String::from_utf8(b)
            .unwrap()
            .contains("ensure the path starts with '/v1/'"));
        let (s, _, b) = call(&api, "GET", "/", b"").await;
        assert_eq!((s, b.as_slice()), (200, &b"Consul Agent"[..]));
    }

    #[tokio::test]
    async fn head_is_get_and_post_is_put() {
        let api = dev_api();
        assert_eq!(call(&api, "POST", "/v1/kv/k", b"v").await.0, 200);
        assert_eq!(call(&api, "HEAD", "/v1/kv/k", b"").await.0, 200);
        assert_eq!(call(&api, "HEAD", "/v1/status/leader", b"").await.0, 200);
        assert_eq!(call(&api, "POST", "/v1/status/leader", b"").await.0, 405);
    }
}

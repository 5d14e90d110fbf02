//! `/v1/health/*`: the checks of a node, of a service or in a state, and a service's
//! instances with their node and checks (`?passing`, `?tag`, `?node-meta`).

use serde_json::json;
use serde_json::Value;
use tribune_core::catalog::Catalog;
use tribune_core::catalog::Health;
use tribune_core::catalog::Service;
use tribune_core::catalog::Table;
use tribune_core::fsm::StateMachine;

use super::catalog::check_json;
use super::catalog::has_tags;
use super::catalog::name_of;
use super::catalog::node_json;
use super::catalog::node_meta_matches;
use super::catalog::node_service_json;
use super::catalog::read_options;
use super::catalog::serve_list;
use super::context::Ctx;
use super::context::Reply;
use super::error::ApiError;
use crate::hub::Topic;

/// Go's `strconv.ParseBool`, with an empty value as `true` (Consul's `?passing`).
fn query_bool(cx: &Ctx, key: &str) -> Result<bool, ApiError> {
    match cx.query.get(key) {
        None => Ok(false),
        Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(_) => Err(ApiError::bad_request(format!("Invalid value for ?{key}"))),
    }
}

/// `GET /v1/health/node/:node`: the node's checks.
pub async fn node(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let name = name_of(&cx, "node")?;
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let list: Vec<Value> = c.node_checks(&name).map(check_json).collect();
        (list, c.node_index(&name))
    };
    serve_list(&cx.api, &opts, &filter, Topic::Node(name.clone()), read).await
}

/// `GET /v1/health/checks/:service`: the checks of every instance of a service.
pub async fn checks(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let name = name_of(&cx, "service")?;
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let mut list = Vec::new();
        for s in c.instances(&name) {
            let meta_ok = c
                .node(&s.node)
                .is_some_and(|n| node_meta_matches(&opts, &n.info));
            if !meta_ok {
                continue;
            }
            list.extend(
                c.node_checks(&s.node)
                    .filter(|ch| ch.info.service_id.eq_ignore_ascii_case(&s.info.id))
                    .map(check_json),
            );
        }
        (list, c.service_index(&name))
    };
    serve_list(&cx.api, &opts, &filter, Topic::Service(name.clone()), read).await
}

/// `GET /v1/health/state/:state`: every check in `passing`, `warning` or `critical`
/// (`any`: all of them). Another state matches nothing, as in Consul.
pub async fn state(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let state =
        name_of(&cx, "check state").map_err(|_| ApiError::bad_request("Missing check state"))?;
    let want = Health::parse(&state);
    let any = state == "any";
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let list: Vec<Value> = c
            .checks()
            .filter(|ch| any || Some(ch.info.status) == want)
            .filter(|ch| {
                c.node(&ch.info.node)
                    .is_some_and(|n| node_meta_matches(&opts, &n.info))
            })
            .map(check_json)
            .collect();
        (list, c.table_index(Table::Checks))
    };
    serve_list(
        &cx.api,
        &opts,
        &filter,
        Topic::Table(Table::Checks.into()),
        read,
    )
    .await
}

/// One `/v1/health/service` entry: the node, the instance and the checks that apply to
/// it (its own and its node's).
fn entry(c: &Catalog, s: &Service) -> Option<(Value, bool)> {
    let n = c.node(&s.node)?;
    let checks: Vec<_> = c.instance_checks(&s.node, &s.info.id).collect();
    let passing = checks.iter().all(|ch| ch.info.status == Health::Passing);
    let v = json!({
        "Node": node_json(n),
        "Service": node_service_json(s),
        "Checks": checks.into_iter().map(check_json).collect::<Vec<_>>(),
    });
    Some((v, passing))
}

/// `GET /v1/health/service/:service`.
pub async fn service(cx: Ctx) -> Reply {
    let (opts, filter) = read_options(&cx)?;
    let name = name_of(&cx, "service")?;
    let passing_only = query_bool(&cx, "passing")?;
    let tags: Vec<String> = cx.query.all("tag").map(str::to_string).collect();
    let read = |sm: &StateMachine| {
        let c = sm.catalog();
        let want: Vec<&str> = tags.iter().map(String::as_str).collect();
        let list: Vec<Value> = c
            .instances(&name)
            .filter(|s| has_tags(&s.info.tags, &want))
            .filter(|s| {
                c.node(&s.node)
                    .is_some_and(|n| node_meta_matches(&opts, &n.info))
            })
            .filter_map(|s| entry(c, s))
            .filter(|(_, passing)| *passing || !passing_only)
            .map(|(v, _)| v)
            .collect();
        (list, c.service_index(&name))
    };
    serve_list(&cx.api, &opts, &filter, Topic::Service(name.clone()), read).await
}

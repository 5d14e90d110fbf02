//! Query strings and the options reads share.
//!
//! [`Query`] is the parsed query string: names lowercased (Consul's flags are matched
//! case-insensitively here), values decoded, flags on by presence. [`QueryOptions`] is what
//! every read takes (`dc`, `stale`/`consistent`/`leader`/`cached`, `max_stale`,
//! `index`/`wait`, `pretty`, `token`, `filter`, `near`, `node-meta`), parsed once, with bad
//! values refused as Consul refuses them: 400 and its text.

use std::time::Duration;

use axum::http::HeaderMap;

use super::error::ApiError;
use crate::flags::parse_duration;
use crate::store::Consistency;

/// Parsed query string: lowercased names, decoded values, in order.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
    /// The query string as sent (Consul quotes it in "Conflicting flags").
    pub raw: String,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let raw = q.unwrap_or("").to_string();
        let pairs = form_urlencoded::parse(raw.as_bytes())
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
            .collect();
        Query { pairs, raw }
    }

    /// Whether the flag is present, whatever its value.
    pub fn has(&self, k: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == k)
    }

    /// The first value of `k` (Go's `url.Values.Get`).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `k`, in order.
    pub fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `k` (an empty `?k=` counts as absent, as in Consul).
    fn value(&self, k: &str) -> Option<&str> {
        self.get(k).filter(|v| !v.is_empty())
    }
}

/// The agent's blocking-query bounds: `default_query_time` and `max_query_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryTimes {
    pub default: Duration,
    pub max: Duration,
}

/// The options every read takes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(dead_code)] // token, filter, near and node-meta are read by the endpoints to come
pub struct QueryOptions {
    /// `?dc`, or `None` for the agent's own datacenter.
    pub dc: Option<String>,
    pub consistency: Consistency,
    /// `?max_stale`: a stale read is fine if the server is at most this far behind.
    pub max_stale: Option<Duration>,
    /// `?index`: block until the result's index is past this (0: do not block).
    pub min_index: u64,
    /// `?wait`, defaulted and capped by the agent's query times.
    pub wait: Duration,
    pub pretty: bool,
    /// `?token`, else `X-Consul-Token`, else `Authorization: Bearer`.
    pub token: Option<String>,
    /// `?filter` (a bexpr expression, checked by the endpoint that evaluates it).
    pub filter: Option<String>,
    /// `?near` (`_agent` is this agent's node).
    pub near: Option<String>,
    /// `?node-meta=key:value`, each given.
    pub node_meta: Vec<(String, String)>,
}

impl QueryOptions {
    /// Parse the read options of a request, in the order Consul checks them.
    pub fn parse(
        q: &Query,
        headers: &HeaderMap,
        times: QueryTimes,
        node_name: &str,
    ) -> Result<QueryOptions, ApiError> {
        let (consistency, max_stale) = parse_consistency(q)?;
        let wait = parse_wait(q.value("wait"), times)?;
        let min_index = parse_index(q.value("index"))?;
        let near = q
            .value("near")
            .map(|n| if n == "_agent" { node_name } else { n }.to_string());
        let node_meta = q
            .all("node-meta")
            .map(|p| match p.split_once(':') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect();
        Ok(QueryOptions {
            dc: q.value("dc").map(str::to_string),
            consistency,
            max_stale,
            min_index,
            wait,
            pretty: q.has("pretty"),
            token: token(q, headers),
            filter: q.value("filter").map(str::to_string),
            near,
            node_meta,
        })
    }
}

/// `?stale`, `?consistent`, `?leader`, `?cached` and `?max_stale`.
fn parse_consistency(q: &Query) -> Result<(Consistency, Option<Duration>), ApiError> {
    let mut stale = q.has("stale");
    let consistent = q.has("consistent");
    let max_stale = match q.value("max_stale") {
        None => None,
        Some(v) => {
            let d = parse_duration(v)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid max_stale value {v:?}")))?;
            stale |= !d.is_zero();
            Some(d)
        }
    };
    if stale && consistent {
        return Err(ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    if q.has("cached") && consistent {
        return Err(ApiError::bad_request(
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ));
    }
    let mode = if stale {
        Consistency::Stale
    } else if consistent {
        Consistency::Consistent
    } else {
        Consistency::Default
    };
    Ok((mode, max_stale))
}

/// `?wait` as a Go duration (`10s`, `525s`, `120000ms`, `3.8969s`): absent or zero means
/// `default_query_time`, and it is capped at `max_query_time`.
pub fn parse_wait(v: Option<&str>, times: QueryTimes) -> Result<Duration, ApiError> {
    let wait = match v {
        None => return Ok(times.default),
        Some(v) => parse_duration(v).ok_or_else(|| ApiError::bad_request("Invalid wait time"))?,
    };
    Ok(if wait.is_zero() {
        times.default
    } else {
        wait.min(times.max)
    })
}

/// `?index` as an unsigned 64-bit integer (decimal digits only, as Go's `ParseUint`).
pub fn parse_index(v: Option<&str>) -> Result<u64, ApiError> {
    match v {
        None => Ok(0),
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map_err(|_| ApiError::bad_request("Invalid index")),
        Some(_) => Err(ApiError::bad_request("Invalid index")),
    }
}

/// The request's ACL token: `?token` (deprecated), `X-Consul-Token`, then
/// `Authorization: Bearer <token>`.
fn token(q: &Query, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = q.value("token") {
        return Some(t.to_string());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(t) = header("x-consul-token").filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    let (scheme, rest) = header("authorization")?.split_once(' ')?;
    let t = rest.split_whitespace().next()?;
    scheme.eq_ignore_ascii_case("bearer").then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: QueryTimes = QueryTimes {
        default: Duration::from_secs(300),
        max: Duration::from_secs(600),
    };

    fn opts(q: &str) -> Result<QueryOptions, ApiError> {
        QueryOptions::parse(&Query::parse(Some(q)), &HeaderMap::new(), TIMES, "me")
    }

    fn bad(q: &str) -> String {
        match opts(q) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn query_flags_are_presence_based_and_case_insensitive() {
        let q = Query::parse(Some("Recurse&keys=false&separator=%2F&index=5"));
        assert!(q.has("recurse") && q.has("keys") && !q.has("raw"));
        assert_eq!(q.get("separator"), Some("/"));
        assert_eq!(q.raw, "Recurse&keys=false&separator=%2F&index=5");
    }

    #[test]
    fn wait_takes_go_durations_and_is_capped() {
        let ms = Duration::from_millis;
        for (v, want) in [
            ("10s", ms(10_000)),
            ("525s", ms(525_000)),
            ("120000ms", ms(120_000)),
            ("3.8969s", Duration::from_micros(3_896_900)),
            ("1m30s", ms(90_000)),
            ("600s", ms(600_000)),
            // Longer than max_query_time: capped.
            ("601s", ms(600_000)),
            ("1h", ms(600_000)),
            // Zero: the default.
            ("0", ms(300_000)),
            ("0s", ms(300_000)),
        ] {
            assert_eq!(parse_wait(Some(v), TIMES).unwrap(), want, "{v}");
        }
        assert_eq!(parse_wait(None, TIMES).unwrap(), ms(300_000));
        for v in ["abc", "10", "s", "-5s", "1.2.3s", "10 s", "5d"] {
            match parse_wait(Some(v), TIMES) {
                Err(ApiError::BadRequest(m)) => assert_eq!(m, "Invalid wait time", "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn index_is_a_u64() {
        assert_eq!(parse_index(None).unwrap(), 0);
        assert_eq!(parse_index(Some("42")).unwrap(), 42);
        assert_eq!(parse_index(Some("18446744073709551615")).unwrap(), u64::MAX);
        for v in ["x", "-1", "+1", "1.5", "18446744073709551616", " 1"] {
            assert!(
                matches!(parse_index(Some(v)), Err(ApiError::BadRequest(m)) if m == "Invalid index")
            );
        }
    }

    #[test]
    fn every_malformed_option_is_a_400_with_consuls_text() {
        let conflict = "Cannot specify ?stale with ?consistent, conflicting semantics.";
        assert_eq!(bad("stale&consistent"), conflict);
        assert_eq!(bad("max_stale=5s&consistent"), conflict);
        assert_eq!(
            bad("cached&consistent"),
            "Cannot specify ?cached with ?consistent, conflicting semantics."
        );
        assert_eq!(bad("index=x"), "Invalid index");
        assert_eq!(bad("index=1&wait=abc"), "Invalid wait time");
        assert_eq!(bad("wait=10"), "Invalid wait time");
        assert_eq!(bad("max_stale=soon"), "Invalid max_stale value \"soon\"");
    }

    #[test]
    fn defaults_and_values() {
        let o = opts("").unwrap();
        assert_eq!(
            (o.consistency, o.min_index, o.wait, o.pretty, o.dc),
            (
                Consistency::Default,
                0,
                Duration::from_secs(300),
                false,
                None
            )
        );
        let o = opts("stale&index=3&wait=1h&pretty&dc=dc2&filter=Tag+in+x&near=_agent").unwrap();
        assert_eq!(
            (o.consistency, o.min_index, o.wait),
            (Consistency::Stale, 3, TIMES.max)
        );
        assert!(o.pretty);
        assert_eq!(o.dc.as_deref(), Some("dc2"));
        assert_eq!(o.filter.as_deref(), Some("Tag in x"));
        assert_eq!(o.near.as_deref(), Some("me"));
        assert_eq!(
            opts("consistent").unwrap().consistency,
            Consistency::Consistent
        );
        assert_eq!(opts("leader").unwrap().consistency, Consistency::Default);
        assert_eq!(
            opts("max_stale=0s").unwrap().consistency,
            Consistency::Default
        );
        let o = opts("max_stale=2s").unwrap();
        assert_eq!(
            (o.consistency, o.max_stale),
            (Consistency::Stale, Some(Duration::from_secs(2)))
        );
        let o = opts("node-meta=rack:r1&node-meta=ssd&node-meta=a:b:c").unwrap();
        let pairs: Vec<(&str, &str)> = o
            .node_meta
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, [("rack", "r1"), ("ssd", ""), ("a", "b:c")]);
    }

    #[test]
    fn token_order() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer  from-bearer extra".parse().unwrap(),
        );
        let q = Query::parse(None);
        assert_eq!(token(&q, &h).as_deref(), Some("from-bearer"));
        h.insert("x-consul-token", "from-header".parse().unwrap());
        assert_eq!(token(&q, &h).as_deref(), Some("from-header"));
        assert_eq!(
            token(&Query::parse(Some("token=from-query")), &h).as_deref(),
            Some("from-query")
        );
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(token(&q, &basic), None);
    }
}

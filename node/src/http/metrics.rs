//! `/v1/agent/metrics`: the agent's counters (`crate::metrics`), gossip and store metrics, as
//! go-metrics JSON or (with `?format=prometheus` or an OpenMetrics `Accept`) Prometheus text.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use serde_json::Value;

use super::context::Ctx;
use super::error::ApiError;
use crate::metrics::Metric;

/// `GET /v1/agent/metrics`.
pub async fn agent_metrics(cx: Ctx) -> Result<Response, ApiError> {
    let api = &cx.api;
    let by_status = api.metrics.by_status();
    let open = api.metrics.blocking_open.load(Ordering::Relaxed);
    let fires = api.metrics.watch_fires.load(Ordering::Relaxed);
    let wakeups = api.metrics.blocking_wakeups.load(Ordering::Relaxed);
    let mut applied = 0;
    api.store.with_state(&mut |sm| applied = sm.last_applied());
    let (wk, wp, wc) = api.store.hub().topics();
    let accept = cx.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let prometheus = cx.query.get("format") == Some("prometheus")
        || accept.is_some_and(|a| a.contains("openmetrics-text"));
    let pools = [&api.lan, &api.wan].into_iter().flatten();
    let others: Vec<Metric> = pools
        .flat_map(|p| p.metrics())
        .chain(api.metrics.dns.metrics())
        .chain(api.store.metrics())
        .collect();
    if prometheus {
        let mut out = String::new();
        for (name, labels, v) in &others {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(out, "consul_{}{labels} {v}", name.replace('.', "_"));
        }
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: &dyn ToString| vec![(String::new(), v.to_string())];
        let statuses = by_status
            .iter()
            .map(|(s, n)| (format!("{{status=\"{s}\"}}"), n.to_string()));
        let help = "HTTP requests served, by status.";
        family(
            "consul_http_requests_total",
            "counter",
            help,
            statuses.collect(),
        );
        let help = "Blocking queries waiting.";
        family("consul_http_blocking_queries", "gauge", help, one(&open));
        let help = "Blocking queries woken by a write.";
        family(
            "consul_http_blocking_wakeups_total",
            "counter",
            help,
            one(&wakeups),
        );
        family(
            "consul_raft_applied_index",
            "gauge",
            "Last applied index.",
            one(&applied),
        );
        let topics = vec![
            ("{kind=\"key\"}".to_string(), wk.to_string()),
            ("{kind=\"prefix\"}".to_string(), wp.to_string()),
            ("{kind=\"catalog\"}".to_string(), wc.to_string()),
        ];
        let help = "Distinct keys, prefixes and catalog topics watched.";
        family("consul_kv_watched_topics", "gauge", help, topics);
        family(
            "consul_watch_fires_total",
            "counter",
            "Watch handler invocations.",
            one(&fires),
        );
        let mut r = (StatusCode::OK, out).into_response();
        let prom = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
        r.headers_mut().insert(header::CONTENT_TYPE, prom);
        return Ok(r);
    }
    let gauge =
        |name: &str, v: f64, labels: Value| json!({"Name": name, "Value": v, "Labels": labels});
    let counters: Vec<Value> = by_status
        .iter()
        .map(|(s, n)| {
            json!({
                "Name": "consul.http.requests", "Count": n, "Rate": 0, "Sum": n, "Min": 1,
                "Max": 1, "Mean": 1, "Stddev": 0, "Labels": {"status": s.to_string()},
            })
        })
        .collect();
    let mut gauges: Vec<Value> = others
        .iter()
        .map(|(name, labels, v)| {
            let labels: serde_json::Map<String, Value> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            gauge(&format!("consul.{name}"), *v as f64, Value::Object(labels))
        })
        .collect();
    gauges.extend([
        gauge("consul.http.blocking_queries", open as f64, json!({})),
        gauge("consul.raft.applied_index", applied as f64, json!({})),
        gauge("consul.http.blocking_wakeups", wakeups as f64, json!({})),
        gauge(
            "consul.kv.watched_topics",
            wk as f64,
            json!({"kind": "key"}),
        ),
        gauge(
            "consul.kv.watched_topics",
            wp as f64,
            json!({"kind": "prefix"}),
        ),
        gauge(
            "consul.kv.watched_topics",
            wc as f64,
            json!({"kind": "catalog"}),
        ),
        gauge("consul.watch.fires", fires as f64, json!({})),
    ]);
    let body = json!({
        "Timestamp": "", "Gauges": gauges, "Points": [], "Counters": counters, "Samples": [],
    });
    Ok(cx.json(&body))
}

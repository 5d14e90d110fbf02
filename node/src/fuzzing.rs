//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`) and for the replay of their
//! corpora (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, feeds them to the decoder
//! that faces them in production, checks what comes out, and must never panic.
//!
//! - [`rpc_frame`]: server RPC (8300) frames as a served connection reads them (header, size
//!   bound, postcard body; multiplexed after [`Rpc::Mux`]), forwarded HTTP calls run through
//!   a dev-store API;
//! - [`dns_query`]: a DNS query answered over UDP and TCP by a fixed zone;
//! - [`http_query`]: a query string parsed into the read options every read takes, and sent
//!   with a KV read through the API;
//! - [`kv_json`]: KV entries as `kv export` writes them (the JSON `kv import` reads), written
//!   and read back through the API's KV endpoints; other bytes as a key and a value;
//! - [`config_loader`]: a config source as JSON text and as HCL text, through the loader's
//!   checks and the build of a [`Config`](crate::config::Config);
//! - [`gossip_packet`]: the gossip state machine's target (`tribune_core::gossip::fuzzing`);
//! - [`filter`]: a `?filter` expression parsed, evaluated, and checked against its negation;
//! - [`http_request`]: bytes as an HTTP connection's reader takes them (the request head,
//!   then a chunked body), whole and cut in two.
//!
//! Async code runs on one current-thread runtime per thread, built once. Every call that
//! needs an API gets a fresh dev store whose blocking queries never wait (query times of 0).

// A fuzz harness: an expectation that fails must panic, so the fuzzer reports it.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use base64::Engine;
use hickory_proto::op::Message;
use hickory_proto::op::MessageType;
use serde_json::Map;
use serde_json::Value;

use crate::config;
use crate::config::DnsConfig;
use crate::directory::Node;
use crate::dns::Zone;
use crate::dns::QUERY_BYTES_MAX;
use crate::dns::UDP_BYTES_MAX;
use crate::http::filter::Filter;
use crate::http::filter::FilterError;
use crate::http::query::Query;
use crate::http::query::QueryOptions;
use crate::http::query::QueryTimes;
use crate::http::AgentInfo;
use crate::http::Api;
use crate::raft::transport;
use crate::store::Consistency;
use crate::store::DevStore;
use crate::wire::Rpc;
use crate::wire::RpcError;
use crate::wire::RpcReply;
use crate::wire::FRAME_BYTES_MAX;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// An API over a fresh dev store, as a server with the default value limit serves it, whose
/// blocking queries return at once.
fn dev_api() -> Arc<Api> {
    let (control, _) = tokio::sync::mpsc::unbounded_channel();
    Arc::new(Api {
        store: Arc::new(DevStore::new("127.0.0.1:8300".into())),
        lan: None,
        wan: None,
        agent: AgentInfo {
            raft_id: Some(1),
            node_name: "n1".into(),
            node_id: "00000000-0000-0000-0000-000000000001".into(),
            datacenter: "dc1".into(),
            server: true,
            bootstrap: true,
            bootstrap_expect: 0,
            advertise_ip: "127.0.0.1".into(),
            serf_lan_port: 8301,
            serf_wan_port: 8302,
            server_port: 8300,
            encrypted: false,
            node_meta: Default::default(),
            session_ttl_min: Duration::from_secs(10),
            debug_config: Value::Object(Map::new()),
        },
        kv_max_value_size: 512 * 1024,
        default_query_time: Duration::ZERO,
        max_query_time: Duration::ZERO,
        metrics: Arc::default(),
        control,
        forward: None,
        local: Arc::new(crate::local::Local::new(Default::default(), false, false)),
    })
}

/// One request through the API as the HTTP listener serves it: (status, body).
async fn call(api: &Arc<Api>, method: &str, uri: &str, body: Vec<u8>) -> Option<(u16, Vec<u8>)> {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::from(body))
        .ok()?;
    let resp = crate::http::serve_forwarded(api.clone())(req).await;
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), FRAME_BYTES_MAX)
        .await
        .expect("an in-memory response body");
    Some((status, body.to_vec()))
}

/// Server RPC frames, read as a served connection reads them: each frame's header (refused
/// beyond [`FRAME_BYTES_MAX`]) and body, decoded as an [`Rpc`], or after [`Rpc::Mux`] as an
/// `(id, Rpc)`. A decoded request must encode again; a forwarded HTTP call is run through a
/// dev-store API as a server runs it, and its reply must fit a frame or fail as too large.
pub fn rpc_frame(data: &[u8]) {
    block_on(async {
        let serve = crate::forward::over_rpc(crate::http::serve_forwarded(dev_api()));
        let timeouts = transport::Timeouts::default();
        let mut stream = data;
        let mut mux = false;
        while let Ok(body) = transport::read_request(&mut stream, &timeouts, || false).await {
            assert!(body.len() <= FRAME_BYTES_MAX);
            let rpc = if mux {
                match postcard::from_bytes::<(u64, Rpc)>(&body) {
                    Ok((_, rpc)) => rpc,
                    Err(_) => return,
                }
            } else {
                match transport::decode::<Rpc>(&body) {
                    Ok(rpc) => rpc,
                    Err(_) => return,
                }
            };
            let frame = transport::encode_frame(&rpc).expect("a decoded request encodes");
            let _: Rpc = transport::decode(&frame[4..]).expect("an encoded request decodes");
            match rpc {
                Rpc::Mux if !mux => mux = true,
                Rpc::Http(call) => {
                    let reply = serve(call).await;
                    if let Err(e) = transport::encode_frame(&reply) {
                        panic!("a reply too large to frame: {e}");
                    }
                    if let RpcReply::Failed(RpcError::NotReady) = reply {
                        panic!("the API is up");
                    }
                }
                Rpc::Mux | Rpc::Peer(_) => {}
            }
        }
    })
}

/// The fuzzed zone's directory: fixed gossip nodes, and a catalog of services.
struct FuzzDirectory {
    nodes: Vec<Node>,
    catalog: tribune_core::catalog::Catalog,
}

impl crate::directory::Directory for FuzzDirectory {
    fn node(&self, name: &str) -> Option<Node> {
        self.nodes.node(name)
    }

    fn servers(&self) -> Vec<Node> {
        self.nodes.servers()
    }

    fn with_catalogs(
        &self,
        _service: Option<&str>,
        f: &mut dyn FnMut(&tribune_core::catalog::Catalog),
    ) {
        f(&self.catalog);
    }
}

/// A small fixed zone: `n1` (a server), an IPv6 node, a node whose name is no DNS label,
/// and enough servers with long names that answers must be trimmed to fit; in the catalog,
/// `web` on IPv4 and IPv6 nodes with meta, tags, own addresses, a host name and health of
/// every kind, and `many` on enough nodes to be trimmed.
fn zone() -> Zone {
    let mut nodes = vec![
        Node {
            name: "n1".into(),
            ip: "10.0.0.1".parse().unwrap(),
            server_port: Some(8300),
        },
        Node {
            name: "web".into(),
            ip: "fd00::7".parse().unwrap(),
            server_port: None,
        },
        Node {
            name: "not a label".into(),
            ip: "10.0.0.3".parse().unwrap(),
            server_port: Some(8300),
        },
    ];
    nodes.extend((0..12).map(|i| Node {
        name: format!("server-{i}-with-a-name-long-enough-to-fill-a-packet"),
        ip: format!("10.0.1.{i}").parse().unwrap(),
        server_port: Some(8300),
    }));
    let entry = |node: &str, addr: &str, svc_addr: &str, tags: &[&str], status: &str| {
        serde_json::json!({
            "Node": {"Node": node, "Address": addr,
                     "Meta": {"rack": "r1", " k=`": "v`", "rfc1035-x": "raw"}},
            "Service": {"ID": format!("web-{node}"), "Service": "web", "Tags": tags,
                        "Address": svc_addr, "Port": 80},
            "Checks": [{"Node": node, "CheckID": "c", "Status": status,
                        "ServiceID": format!("web-{node}")}],
        })
    };
    let mut entries = vec![
        entry("w1", "10.0.2.1", "", &["primary"], "passing"),
        entry("w2", "fd00::2", "", &["v1"], "warning"),
        entry("w3", "10.0.2.3", "192.168.0.3", &[], "passing"),
        entry("w4", "10.0.2.4", "", &["primary"], "critical"),
        entry("w5", "db.example.com", "", &[], "passing"),
        entry("w6", "10.0.2.6", "web.example.com", &[], "passing"),
        entry("not a label", "10.0.2.7", "", &[], "passing"),
    ];
    for i in 0..40 {
        let mut e = entry(
            &format!("many-{i}-with-a-long-name"),
            "10.0.3.1",
            "",
            &[],
            "passing",
        );
        e["Node"]["Address"] = Value::from(format!("10.0.3.{i}"));
        e["Service"]["Service"] = Value::from("many");
        entries.push(e);
    }
    let catalog = crate::directory::catalog_of_health(&Value::Array(entries));
    let settings = DnsConfig {
        addr: None,
        enable_truncate: true,
        udp_answer_limit: 3,
        node_ttl: Duration::from_secs(1),
        service_ttl: vec![("*".into(), Duration::from_secs(5))],
        a_record_limit: 30,
        ..DnsConfig::default()
    };
    let dir = FuzzDirectory { nodes, catalog };
    Zone::new("consul", "dc1", Arc::new(dir), settings, Arc::default()).expect("a valid zone")
}

/// A DNS query answered as the UDP and the TCP servers answer it. A query that is dropped
/// must be oversize or not parse as a query; an answer must parse as the response to it
/// and fit its transport (the query's EDNS size within 512..=4096 bytes on UDP, 65,535 on
/// TCP).
pub fn dns_query(data: &[u8]) {
    // Built once: the catalog takes far longer to build than a query to answer.
    static ZONE: std::sync::OnceLock<Zone> = std::sync::OnceLock::new();
    let zone = ZONE.get_or_init(zone);
    for udp in [true, false] {
        let Some(out) = zone.handle(data, udp) else {
            let dropped = data.len() > QUERY_BYTES_MAX
                || Message::from_vec(data)
                    .map_or(true, |m| m.metadata.message_type != MessageType::Query);
            assert!(dropped, "a query was dropped");
            continue;
        };
        let req = Message::from_vec(data).expect("an answered query parses");
        let resp = Message::from_vec(&out).expect("an answer parses");
        assert_eq!(resp.metadata.message_type, MessageType::Response);
        assert_eq!(resp.metadata.id, req.metadata.id);
        let max = if udp {
            req.edns.as_ref().map_or(512, |e| {
                usize::from(e.max_payload()).clamp(512, UDP_BYTES_MAX)
            })
        } else {
            65_535
        };
        assert!(
            out.len() <= max,
            "an answer of {} bytes over {udp:?} (at most {max})",
            out.len()
        );
    }
}

/// The query-time bounds of the fuzzed reads.
const TIMES: QueryTimes = QueryTimes {
    default: Duration::from_secs(300),
    max: Duration::from_secs(600),
};

/// A query string (up to a first newline; what follows is the `X-Consul-Token` and
/// `Authorization` headers, a line each) parsed into the read options every read takes:
/// an option set is consistent (wait within its bounds, not both stale and consistent), a
/// refusal is a 400. Then a KV read with that query string through the API.
pub fn http_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let raw = lines.next().unwrap_or("");
    let mut headers = HeaderMap::new();
    for name in ["x-consul-token", "authorization"] {
        if let Some(v) = lines.next().and_then(|l| HeaderValue::from_str(l).ok()) {
            headers.insert(name, v);
        }
    }
    let q = Query::parse(Some(raw));
    assert_eq!(q.raw, raw);
    match QueryOptions::parse(&q, &headers, TIMES, "n1") {
        Ok(o) => {
            assert!(!o.wait.is_zero() && o.wait <= TIMES.max, "{:?}", o.wait);
            if q.has("stale") || o.max_stale.is_some_and(|d| !d.is_zero()) {
                assert_eq!(o.consistency, Consistency::Stale);
            }
            if o.consistency == Consistency::Consistent {
                assert!(q.has("consistent") && !q.has("stale") && !q.has("cached"));
            }
        }
        Err(e) => assert_eq!(e.into_response().status().as_u16(), 400),
    }
    block_on(async {
        let api = dev_api();
        let put = call(&api, "PUT", "/v1/kv/k", b"v".to_vec()).await;
        assert_eq!(put.map(|(s, _)| s), Some(200));
        if let Some((status, body)) =
            call(&api, "GET", &format!("/v1/kv/k?{raw}"), Vec::new()).await
        {
            if status == 200 {
                let _: Value = serde_json::from_slice(&body)
                    .or_else(|_| std::str::from_utf8(&body).map(|_| Value::Null))
                    .expect("a KV read answers JSON or its raw value");
            }
        }
    })
}

/// One KV entry as `kv import` takes it from `kv export`'s JSON.
struct Entry {
    key: String,
    flags: u64,
    value: Vec<u8>,
}

/// The entries of `kv export` JSON, decoded as `kv import` decodes them; `None` where it
/// would stop with an error.
fn import_entries(data: &[u8]) -> Option<Vec<Entry>> {
    let entries: Vec<Value> = serde_json::from_slice(data).ok()?;
    entries
        .iter()
        .map(|e| {
            Some(Entry {
                key: e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                flags: e.get("flags").and_then(Value::as_u64).unwrap_or(0),
                value: base64::engine::general_purpose::STANDARD
                    .decode(e.get("value").and_then(Value::as_str).unwrap_or(""))
                    .ok()?,
            })
        })
        .collect()
}

/// KV entries written and read back through the API's KV endpoints: the bytes as `kv
/// export` JSON (as `kv import` reads it), or else a key (up to a first newline) and its
/// value. A write the API takes (200 `true`) reads back as JSON with the same flags and
/// value, raw (`?raw`) as the value, and in a recursive listing; a refusal is a 4xx.
pub fn kv_json(data: &[u8]) {
    let entries = import_entries(data).unwrap_or_else(|| {
        let (key, value) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (data, &[][..]),
        };
        vec![Entry {
            key: String::from_utf8_lossy(key).into_owned(),
            flags: value.len() as u64,
            value: value.to_vec(),
        }]
    });
    block_on(async {
        let api = dev_api();
        for e in entries.iter().take(16) {
            let path = format!("/v1/kv/{}", crate::client::escape_key(&e.key));
            let uri = format!("{path}?flags={}", e.flags);
            let Some((status, body)) = call(&api, "PUT", &uri, e.value.clone()).await else {
                continue;
            };
            if status != 200 {
                assert!((400..500).contains(&status), "PUT {uri}: {status}");
                continue;
            }
            assert_eq!(body, b"true", "PUT {uri}");
            let (status, body) = call(&api, "GET", &path, Vec::new())
                .await
                .expect("a URI that was served");
            assert_eq!(status, 200, "GET {path}");
            let got: Value = serde_json::from_slice(&body).expect("a KV read answers JSON");
            let got = &got[0];
            assert_eq!(got["Flags"].as_u64(), Some(e.flags), "{got}");
            let value = match got["Value"].as_str() {
                Some(v) => base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .expect("a value in base64"),
                None => Vec::new(),
            };
            assert_eq!(value, e.value, "{got}");
            let (status, raw) = call(&api, "GET", &format!("{path}?raw"), Vec::new())
                .await
                .unwrap();
            assert_eq!((status, raw), (200, e.value.clone()));
            let (status, list) = call(&api, "GET", "/v1/kv/?recurse", Vec::new())
                .await
                .unwrap();
            assert_eq!(status, 200);
            let list: Vec<Value> = serde_json::from_slice(&list).expect("a listing in JSON");
            assert!(
                list.iter().any(|x| x["Key"] == got["Key"]),
                "{got} not listed"
            );
            let (status, keys) = call(&api, "GET", "/v1/kv/?keys", Vec::new()).await.unwrap();
            assert_eq!(status, 200);
            let _: Vec<String> = serde_json::from_slice(&keys).expect("keys in JSON");
        }
        for e in &entries {
            let path = format!("/v1/kv/{}", crate::client::escape_key(&e.key));
            if let Some((status, _)) = call(&api, "DELETE", &path, Vec::new()).await {
                assert!(
                    status == 200 || (400..500).contains(&status),
                    "DELETE {path}: {status}"
                );
            }
        }
    })
}

/// A config source in memory, as the loader reads a file: the text as JSON (a `.json` file)
/// and as HCL (a `.hcl` file: JSON if it opens with `{`). Each that parses is checked
/// against the schema as a source, then loaded (merged and built into a `Config`) as a
/// server's and as a dev agent's only source; a built config's addresses, DNS zone and
/// watches are derived as the agent derives them.
pub fn config_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // a file that is not UTF-8 is unreadable
    };
    let json = serde_json::from_str::<Value>(text).ok();
    let hcl = if text.trim_start().starts_with('{') {
        json.clone()
    } else {
        config::hcl_to_json(text).ok()
    };
    for v in [json, hcl].into_iter().flatten() {
        let mut warnings = Vec::new();
        if config::check_source("fuzz.json", &v, &mut warnings).is_err() {
            continue;
        }
        let Value::Object(source) = v.clone() else {
            panic!("a source that passed its checks is an object");
        };
        let mut twice = v.clone();
        config::merge(&mut twice, v.clone());
        for dev in [false, true] {
            let opts = config::LoadOptions {
                dev,
                flags: source.clone(),
                ..Default::default()
            };
            let Ok((cfg, _)) = config::load(&opts) else {
                continue;
            };
            let _ = (cfg.advertise_ip(), cfg.http_listen(), cfg.dns_listen());
            let _ = Zone::new(
                &cfg.domain,
                &cfg.datacenter,
                Arc::new(Vec::<Node>::new()),
                cfg.dns.clone(),
                Arc::default(),
            );
            for w in &cfg.watches {
                let _ = crate::watch_spec::parse_watch(w);
            }
        }
    }
}

/// The gossip target: a packet and a stream payload fed to a live gossip node, and the same
/// bytes wrapped in a valid encryption (the first byte picks the node; see
/// `tribune_core::gossip::fuzzing`).
pub fn gossip_packet(data: &[u8]) {
    use tribune_core::gossip::fuzzing::encrypt_with_fuzz_key;
    use tribune_core::gossip::fuzzing::exercise;
    exercise(data);
    if let Some((_, rest)) = data.split_first() {
        let mut wrapped = vec![1u8];
        wrapped.extend_from_slice(&encrypt_with_fuzz_key(rest));
        exercise(&wrapped);
    }
}

/// What a filter is evaluated against when its input brings no JSON: a health entry as
/// `/v1/health/service` returns one.
const FILTER_DATUM: &str = r#"{
  "Node": {"ID": "n1-id", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
           "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {"rack": "r1", "env": ""},
           "CreateIndex": 5, "ModifyIndex": 18446744073709551615},
  "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1", "primary"], "Address": "",
              "Meta": {"version": "1.2"}, "Port": 8080, "Weights": {"Passing": 1,
              "Warning": 1}, "EnableTagOverride": false, "Proxy": null},
  "Checks": [{"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "Output": "ok",
              "ServiceTags": [], "Interval": 1.5}]
}"#;

/// A `?filter` expression: the bytes up to a first NUL (all of them without one), and the
/// JSON after it as the value (else [`FILTER_DATUM`]). Parsing never panics; an expression
/// that parses evaluates (to a result or an error) without panicking, and `not (e)` parses
/// too, unless past a bound, and answers the negation, or the same error.
pub fn filter(data: &[u8]) {
    let (expr, json) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let src = String::from_utf8_lossy(expr);
    let datum: Value = serde_json::from_slice(json)
        .or_else(|_| serde_json::from_str(FILTER_DATUM))
        .unwrap();
    let Ok(f) = Filter::parse(&src) else { return };
    let got = f.matches(&datum);
    if src.is_empty() {
        assert_eq!(got, Ok(true));
        return;
    }
    match Filter::parse(&format!("not ({src})")) {
        Ok(neg) => assert_eq!(neg.matches(&datum), got.map(|b| !b), "{src:?}"),
        Err(FilterError::TooLong(_) | FilterError::TooDeep) => {}
        Err(e) => panic!("{src:?} parses but its negation does not: {e}"),
    }
}

/// Bytes as the HTTP connection loop reads them: the head parsed (no prefix of a complete
/// head is complete), then what follows it decoded as a chunked body, whole and in two
/// pieces cut where the first byte says, which must agree.
pub fn http_request(data: &[u8]) {
    use crate::http::conn::parse_head;
    use crate::http::conn::Chunked;
    let rest = match parse_head(data) {
        Ok(Some((_, len))) => {
            assert!(len <= data.len());
            for cut in [0, len / 2, len.saturating_sub(1)] {
                assert!(
                    !matches!(parse_head(&data[..cut]), Ok(Some(_))),
                    "prefix complete"
                );
            }
            &data[len..]
        }
        _ => data,
    };
    let mut whole = rest.to_vec();
    let mut a = Chunked::default();
    let one = a.feed(&mut whole, 4096);
    let cut = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len());
    let mut first = rest[..cut].to_vec();
    let mut b = Chunked::default();
    let two = match b.feed(&mut first, 4096) {
        Ok(false) => {
            first.extend_from_slice(&rest[cut..]);
            b.feed(&mut first, 4096)
        }
        other => other,
    };
    match (&one, &two) {
        (Ok(true), Ok(true)) => {
            assert_eq!(whole, first, "left over after the body");
            assert_eq!(a.into_body(), b.into_body());
        }
        // A bad chunk may be found in the first piece, or only with more input.
        (Err(_), _) | (_, Err(_)) | (Ok(false), Ok(false)) => {}
        _ => panic!("whole: {one:?}, in two pieces: {two:?}"),
    }
}

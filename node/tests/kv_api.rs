//! The `/v1/kv` HTTP surface against a real `tribune agent -dev`.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::*;
use serde_json::json;

#[test]
fn put_get_flags_raw_and_entry_shape() {
    let a = Agent::dev(&[]);
    let r = a.http("PUT", "/v1/kv/app/config?flags=42", b"hello");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let r = a.http("GET", "/v1/kv/app/config", b"");
    assert_eq!(r.status, 200);
    let idx = r.index();
    assert!(idx >= 2, "first write gets index >= 2, got {idx}");
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(r.header("X-Consul-LastContact"), Some("0"));
    assert_eq!(r.header("X-Consul-Effective-Consistency"), Some("leader"));
    // Exact field order and content, Session omitted.
    assert_eq!(
        r.text(),
        format!(
            concat!(
                r#"[{{"LockIndex":0,"Key":"app/config","Flags":42,"Value":"aGVsbG8=","#,
                r#""CreateIndex":{idx},"ModifyIndex":{idx}}}]"#
            ),
            idx = idx
        )
    );
    let raw = a.http("GET", "/v1/kv/app/config?raw", b"");
    assert_eq!(raw.body, b"hello");
    assert_eq!(raw.header("Content-Type"), Some("text/plain"));
    assert_eq!(raw.header("X-Content-Type-Options"), Some("nosniff"));
    // Empty value renders as null; flags are not preserved across writes that omit them.
    a.http("PUT", "/v1/kv/app/config", b"");
    let v = a.http("GET", "/v1/kv/app/config", b"").json();
    assert_eq!(v[0]["Value"], json!(null));
    assert_eq!(v[0]["Flags"], json!(0));
    assert_eq!(v[0]["CreateIndex"], json!(idx));
    // Consistency modes.
    assert_eq!(
        a.http("GET", "/v1/kv/app/config?stale", b"")
            .header("X-Consul-Effective-Consistency"),
        Some("stale")
    );
    assert_eq!(
        a.http("GET", "/v1/kv/app/config?consistent", b"")
            .header("X-Consul-Effective-Consistency"),
        Some("consistent")
    );
    let r = a.http("GET", "/v1/kv/app/config?stale&consistent", b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics."
        )
    );
    // Binary values round-trip byte for byte.
    let bin: Vec<u8> = (0..=255u8).collect();
    a.http("PUT", "/v1/kv/bin", &bin);
    assert_eq!(a.http("GET", "/v1/kv/bin?raw", b"").body, bin);
}

#[test]
fn not_found_has_index_and_empty_body() {
    let a = Agent::dev(&[]);
    let r = a.http("GET", "/v1/kv/missing", b"");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    assert_eq!(r.index(), 1, "never 0");
    a.http("PUT", "/v1/kv/gone", b"x");
    let del = a.http("DELETE", "/v1/kv/gone", b"");
    assert_eq!(del.text(), "true");
    let r = a.http("GET", "/v1/kv/gone", b"");
    assert_eq!(r.status, 404);
    assert!(r.index() > 2, "the tombstone's index, not 1: {}", r.index());
    assert_eq!(a.http("GET", "/v1/kv/nothing/?recurse", b"").status, 404);
    assert_eq!(a.http("GET", "/v1/kv/nothing/?keys", b"").status, 404);
    let root = a.http("GET", "/v1/kv/?keys", b"");
    assert_eq!((root.status, root.text().as_str()), (200, "[]"));
}

#[test]
fn recurse_keys_separator() {
    let a = Agent::dev(&[]);
    for k in [
        "web/foo",
        "web/bar",
        "web/subdir/x",
        "web/subdir/y",
        "webby",
        "other",
    ] {
        assert_eq!(
            a.http("PUT", &format!("/v1/kv/{k}"), k.as_bytes()).status,
            200
        );
    }
    let r = a.http("GET", "/v1/kv/web?recurse", b"");
    let keys: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        vec![
            "web/bar",
            "web/foo",
            "web/subdir/x",
            "web/subdir/y",
            "webby"
        ]
    );
    let list_index = r.index();
    assert_eq!(
        a.http("GET", "/v1/kv/web/?keys", b"").json(),
        json!(["web/bar", "web/foo", "web/subdir/x", "web/subdir/y"])
    );
    assert_eq!(
        a.http("GET", "/v1/kv/web/?keys&separator=/", b"").json(),
        json!(["web/bar", "web/foo", "web/subdir/"])
    );
    assert_eq!(
        a.http("GET", "/v1/kv/web/?keys&seperator=/", b"").json(),
        json!(["web/bar", "web/foo", "web/subdir/"])
    );
    // Presence-based, case-insensitive flags with any value.
    assert_eq!(
        a.http("GET", "/v1/kv/web/?Recurse=false", b"")
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // The prefix index is the highest ModifyIndex under it, not the table's.
    a.http("PUT", "/v1/kv/other", b"changed");
    assert_eq!(a.http("GET", "/v1/kv/web?recurse", b"").index(), list_index);
    // Recursive delete.
    assert_eq!(a.http("DELETE", "/v1/kv/web/?recurse", b"").text(), "true");
    assert_eq!(
        a.http("GET", "/v1/kv/?keys", b"").json(),
        json!(["other", "webby"])
    );
    assert!(
        a.http("GET", "/v1/kv/web/?recurse", b"").index() > list_index,
        "delete moves the prefix index forward"
    );
}

#[test]
fn cas_put_and_delete() {
    let a = Agent::dev(&[]);
    assert_eq!(a.http("PUT", "/v1/kv/c?cas=0", b"1").text(), "true");
    assert_eq!(a.http("PUT", "/v1/kv/c?cas=0", b"2").text(), "false");
    let idx = a.http("GET", "/v1/kv/c", b"").json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(
        a.http("PUT", &format!("/v1/kv/c?cas={}", idx + 100), b"3")
            .text(),
        "false"
    );
    assert_eq!(
        a.http("PUT", &format!("/v1/kv/c?cas={idx}"), b"3").text(),
        "true"
    );
    assert_eq!(a.http("GET", "/v1/kv/c?raw", b"").body, b"3");
    assert_eq!(
        a.http("DELETE", &format!("/v1/kv/c?cas={idx}"), b"").text(),
        "false"
    );
    let idx = a.http("GET", "/v1/kv/c", b"").json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(a.http("DELETE", "/v1/kv/c?cas=0", b"").text(), "false");
    assert_eq!(
        a.http("DELETE", &format!("/v1/kv/c?cas={idx}"), b"").text(),
        "true"
    );
    assert_eq!(a.http("GET", "/v1/kv/c", b"").status, 404);
    // Missing key: cas delete succeeds, as upstream.
    assert_eq!(a.http("DELETE", "/v1/kv/c?cas=5", b"").text(), "true");
}

#[test]
fn errors_and_limits() {
    let a = Agent::dev(&[]);
    let r = a.http("GET", "/v1/kv/", b"");
    assert_eq!((r.status, r.text().as_str()), (400, "Missing key name"));
    assert_eq!(a.http("PUT", "/v1/kv/", b"x").text(), "Missing key name");
    assert_eq!(a.http("DELETE", "/v1/kv/", b"").status, 400);
    let r = a.http("PUT", "/v1/kv/k?cas=0&acquire=abc", b"x");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Conflicting flags"), "{}", r.text());
    assert_eq!(a.http("DELETE", "/v1/kv/k?recurse&cas=1", b"").status, 400);
    let r = a.http(
        "PUT",
        "/v1/kv/k?acquire=0d8ac0d2-0000-0000-0000-000000000000",
        b"x",
    );
    assert_eq!(r.status, 500);
    assert!(r.text().starts_with("invalid session"), "{}", r.text());
    assert_eq!(
        a.http("GET", "/v1/kv/k?index=abc", b"").text(),
        "Invalid index"
    );
    assert_eq!(
        a.http("GET", "/v1/kv/k?index=1&wait=forever", b"").text(),
        "Invalid wait time"
    );
    assert_eq!(a.http("GET", "/v1/kv/k?dc=elsewhere", b"").status, 500);
    assert_eq!(a.http("GET", "/v1/kv/k?dc=DC1", b"").status, 404);
    // Value limit: exactly the limit is fine, one more byte is 413 and stores nothing.
    let max = vec![b'a'; 524288];
    assert_eq!(a.http("PUT", "/v1/kv/big", &max).status, 200);
    let r = a.http("PUT", "/v1/kv/big2", &vec![b'a'; 524289]);
    assert_eq!(r.status, 413);
    assert_eq!(
        r.text(),
        "Request body(524289 bytes) too large, max size: 524288 bytes. See \
        https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
    );
    assert_eq!(a.http("GET", "/v1/kv/big2", b"").status, 404);
    assert_eq!(a.http("POST", "/v1/status/leader", b"").status, 405);
    assert_eq!(a.http("PUT", "/v1/kv/a/../b", b"x").status, 400);
    // Leading and doubled slashes do not make distinct keys.
    a.http("PUT", "/v1/kv//lead//slash", b"x");
    assert_eq!(a.http("GET", "/v1/kv/lead/slash?raw", b"").body, b"x");
    // ?pretty indents.
    assert!(a
        .http("GET", "/v1/kv/lead/slash?pretty", b"")
        .text()
        .contains("\n"));
}

#[test]
fn kv_max_value_size_is_configurable() {
    let dir = temp_dir("limits");
    std::fs::write(
        dir.join("limits.json"),
        r#"{"limits":{"kv_max_value_size":10}}"#,
    )
    .unwrap();
    let a = Agent::dev(&[&format!("-config-dir={}", dir.display())]);
    assert_eq!(a.http("PUT", "/v1/kv/k", b"0123456789").status, 200);
    let r = a.http("PUT", "/v1/kv/k", b"0123456789X");
    assert_eq!(r.status, 413);
    assert!(r.text().contains("max size: 10 bytes"));
}

fn blocking_get(port: u16, path: String) -> std::thread::JoinHandle<(Resp, Duration)> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let r = try_http(port, "GET", &path, b"").unwrap();
        (r, start.elapsed())
    })
}

#[test]
fn blocking_get_wakes_on_its_key_only() {
    let a = Agent::dev(&[]);
    a.http("PUT", "/v1/kv/watched", b"1");
    let idx = a.http("GET", "/v1/kv/watched", b"").index();
    let h = blocking_get(a.port, format!("/v1/kv/watched?index={idx}&wait=20s"));
    std::thread::sleep(Duration::from_millis(300));
    // Unrelated writes and an identical write do not wake it.
    a.http("PUT", "/v1/kv/other", b"x");
    a.http("PUT", "/v1/kv/watchedX", b"x");
    a.http("PUT", "/v1/kv/watched", b"1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !h.is_finished(),
        "blocking query returned on an unrelated write"
    );
    let m = a
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .text();
    assert!(m.contains("consul_http_blocking_queries 1"), "{m}");
    assert!(
        m.contains("consul_http_blocking_wakeups_total 0"),
        "woken by unrelated or identical writes:\n{m}"
    );
    a.http("PUT", "/v1/kv/watched", b"2");
    let (r, took) = h.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.index() > idx);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(r.json()[0]["Value"], json!("Mg=="));
}

#[test]
fn blocking_prefix_and_missing_key_and_timeout() {
    let a = Agent::dev(&[]);
    a.http("PUT", "/v1/kv/svc/a", b"1");
    let idx = a.http("GET", "/v1/kv/svc/?recurse", b"").index();
    let prefix = blocking_get(a.port, format!("/v1/kv/svc/?recurse&index={idx}&wait=20s"));
    let missing = blocking_get(a.port, "/v1/kv/svc/new?index=1&wait=20s".to_string());
    std::thread::sleep(Duration::from_millis(300));
    a.http("PUT", "/v1/kv/elsewhere", b"x");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!prefix.is_finished() && !missing.is_finished());
    a.http("PUT", "/v1/kv/svc/new", b"n");
    let (r, _) = prefix.join().unwrap();
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let (r, _) = missing.join().unwrap();
    assert_eq!(r.status, 200);
    // Timeout: returns the current result with the same index after the wait (+ jitter).
    let cur = a.http("GET", "/v1/kv/svc/a", b"").index();
    let (r, took) = blocking_get(a.port, format!("/v1/kv/svc/a?index={cur}&wait=400ms"))
        .join()
        .unwrap();
    assert_eq!((r.status, r.index()), (200, cur));
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn blocking_query_is_cancelled_when_client_disconnects() {
    let a = Agent::dev(&[]);
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        use std::io::Write;
        s.write_all(b"GET /v1/kv/x?index=50&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        drop(s);
    }
    let gone = eventually(Duration::from_secs(5), || {
        let m = a
            .http("GET", "/v1/agent/metrics?format=prometheus", b"")
            .text();
        m.contains("consul_http_blocking_queries 0").then_some(())
    });
    assert!(
        gone.is_some(),
        "blocking queries of disconnected clients still open"
    );
}

#[test]
fn status_agent_operator_endpoints() {
    let a = Agent::dev(&["-node=devnode", "-datacenter=DC7"]);
    assert_eq!(
        a.http("GET", "/v1/status/leader", b"").json(),
        json!("127.0.0.1:8300")
    );
    assert_eq!(
        a.http("GET", "/v1/status/peers", b"").json(),
        json!(["127.0.0.1:8300"])
    );
    let s = a.http("GET", "/v1/agent/self", b"").json();
    assert_eq!(s["Config"]["Datacenter"], json!("dc7"));
    assert_eq!(s["Config"]["NodeName"], json!("devnode"));
    assert_eq!(s["Config"]["Server"], json!(true));
    assert_eq!(s["Member"]["Name"], json!("devnode"));
    assert!(s["Stats"]["raft"]["applied_index"].is_string());
    let m = a.http("GET", "/v1/agent/members", b"").json();
    assert_eq!(m[0]["Status"], json!(1));
    assert_eq!(m[0]["Tags"]["role"], json!("consul"));
    assert_eq!(
        a.http("GET", "/v1/agent/members?wan", b"").json()[0]["Name"],
        json!("devnode.dc7")
    );
    let rc = a.http("GET", "/v1/operator/raft/configuration", b"").json();
    assert_eq!(rc["Servers"][0]["Leader"], json!(true));
    let metrics = a.http("GET", "/v1/agent/metrics", b"").json();
    assert!(metrics["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["Name"] == json!("consul.raft.applied_index")));
    assert_eq!(a.http("PUT", "/v1/agent/reload", b"").status, 200);
}

#[test]
fn leave_stops_the_agent() {
    let mut a = Agent::dev(&[]);
    assert_eq!(a.http("PUT", "/v1/agent/leave", b"").status, 200);
    let exited = eventually(Duration::from_secs(5), || a.child.try_wait().unwrap());
    assert!(exited.expect("agent exits after leave").success());
}

#[test]
fn agent_self_tells_the_api_version_meta_and_consuls_config_names() {
    let dir = temp_dir("self");
    let config = r#"{"node_meta": {"rack": "r1", "instance-type": "t2"}, "session_ttl_min": "15s",
                     "ports": {"serf_wan": 8402}}"#;
    std::fs::write(dir.join("self.json"), config).unwrap();
    let a = Agent::dev(&["-node=selfnode", &format!("-config-dir={}", dir.display())]);
    let me = a.http("GET", "/v1/agent/self", b"").json();
    let version = me["Config"]["Version"].as_str().unwrap();
    assert!(
        version.starts_with("1."),
        "Config.Version is the Consul API version: {version}"
    );
    assert_eq!(
        me["Config"]["TribuneVersion"],
        json!(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(me["Config"]["SessionTTLMin"], json!(15_000_000_000u64));
    assert_eq!(me["Config"]["NodeName"], json!("selfnode"));
    assert_eq!(me["Meta"], json!({"instance-type": "t2", "rack": "r1"}));
    let debug = &me["DebugConfig"];
    assert_eq!(debug["NodeName"], json!("selfnode"));
    assert_eq!(debug["SessionTTLMin"], json!("15s"));
    assert_eq!(debug["SerfPortWAN"], json!(8402));
    assert_eq!(debug["HTTPPort"], json!(a.port));
    assert_eq!(debug["NodeMeta"]["rack"], json!("r1"));
    assert_eq!(debug["Version"], json!(version));
    assert!(
        debug.get("node_meta").is_none() && debug.get("ports").is_none(),
        "{debug}"
    );
}

#[test]
fn wrong_methods_unknown_paths_and_bad_query_options() {
    let a = Agent::dev(&[]);
    let r = a.http("POST", "/v1/agent/self", b"");
    assert_eq!((r.status, r.header("Allow")), (405, Some("OPTIONS,GET")));
    assert_eq!(r.text(), "method POST not allowed");
    let r = a.http("PATCH", "/v1/kv/k", b"");
    assert_eq!(
        (r.status, r.header("Allow")),
        (405, Some("OPTIONS,GET,PUT,DELETE"))
    );
    let r = a.http("GET", "/v1/agent/leave", b"");
    assert_eq!((r.status, r.header("Allow")), (405, Some("OPTIONS,PUT")));
    let r = a.http("OPTIONS", "/v1/operator/raft/peer", b"");
    assert_eq!((r.status, r.header("Allow")), (200, Some("OPTIONS,DELETE")));
    let r = a.http("GET", "/v1/catalog/nothing-here-yet", b"");
    let unknown = "Invalid URL path: not a recognized HTTP API endpoint\n";
    assert_eq!((r.status, r.text().as_str()), (404, unknown));
    for (q, text) in [
        ("index=x", "Invalid index"),
        ("index=1&wait=1x", "Invalid wait time"),
        (
            "stale&consistent",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        ("max_stale=never", "Invalid max_stale value \"never\""),
    ] {
        let r = a.http("GET", &format!("/v1/kv/k?{q}"), b"");
        assert_eq!((r.status, r.text().as_str()), (400, text), "{q}");
    }
    // Patroni's fractional-second waits are fine.
    a.http("PUT", "/v1/kv/k", b"v");
    let idx = a.http("GET", "/v1/kv/k", b"").index();
    let started = Instant::now();
    let r = a.http("GET", &format!("/v1/kv/k?index={idx}&wait=0.3969s"), b"");
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(390),
        "{:?}",
        started.elapsed()
    );
}

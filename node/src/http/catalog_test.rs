use std::time::Duration;

use serde_json::json;

use crate::http::testing::call;
use crate::http::testing::dev_api;
use crate::http::testing::get_json;

const WEB: &[u8] = br#"{
    "Datacenter": "dc1",
    "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
    "Node": "n1",
    "Address": "10.0.0.1",
    "TaggedAddresses": {"lan": "10.0.0.1", "wan": "198.18.0.1"},
    "NodeMeta": {"somekey": "somevalue"},
    "Service": {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["primary", "v1"],
        "Address": "127.0.0.1",
        "Meta": {"version": "1"},
        "Port": 8000
    },
    "Check": {
        "Node": "n1",
        "CheckID": "web-alive",
        "Name": "web alive",
        "Status": "passing",
        "ServiceID": "web-1",
        "Definition": {"HTTP": "http://127.0.0.1:8000/health", "Interval": "5s"}
    }
}"#;

fn index(h: &axum::http::HeaderMap) -> u64 {
    h["X-Consul-Index"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn register_then_read_back_in_consuls_shapes() {
    let api = dev_api();
    let (status, _, body) = call(&api, "PUT", "/v1/catalog/register", WEB).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"true");

    let nodes = get_json(&api, "/v1/catalog/nodes").await;
    assert_eq!(nodes[0]["Node"], "n1");
    assert_eq!(nodes[0]["Datacenter"], "dc1");
    assert_eq!(nodes[0]["Meta"]["somekey"], "somevalue");
    assert_eq!(nodes[0]["TaggedAddresses"]["wan"], "198.18.0.1");

    let services = get_json(&api, "/v1/catalog/services").await;
    assert_eq!(services, json!({"web": ["primary", "v1"]}));

    let web = get_json(&api, "/v1/catalog/service/web").await;
    assert_eq!(web[0]["ServiceID"], "web-1");
    assert_eq!(web[0]["ServiceAddress"], "127.0.0.1");
    assert_eq!(web[0]["ServicePort"], 8000);
    assert_eq!(web[0]["NodeMeta"]["somekey"], "somevalue");
    assert_eq!(
        web[0]["ServiceWeights"],
        json!({"Passing": 1, "Warning": 1})
    );

    let health = get_json(&api, "/v1/health/service/web").await;
    assert_eq!(
        health[0]["Node"]["Datacenter"], "dc1",
        "discovery reads the dc here"
    );
    assert_eq!(health[0]["Service"]["ID"], "web-1");
    assert_eq!(health[0]["Checks"][0]["CheckID"], "web-alive");
    assert_eq!(health[0]["Checks"][0]["Status"], "passing");
    assert_eq!(health[0]["Checks"][0]["ServiceName"], "web");
    assert_eq!(health[0]["Checks"][0]["Interval"], "5s");

    let node = get_json(&api, "/v1/catalog/node/n1").await;
    assert_eq!(node["Services"]["web-1"]["Service"], "web");
    let list = get_json(&api, "/v1/catalog/node-services/n1").await;
    assert_eq!(list["Services"][0]["ID"], "web-1");
    assert_eq!(get_json(&api, "/v1/catalog/node/nope").await, json!(null));
    let checks = get_json(&api, "/v1/health/node/n1").await;
    assert_eq!(checks.as_array().unwrap().len(), 1);
    assert_eq!(
        get_json(&api, "/v1/health/state/passing").await[0]["Node"],
        "n1"
    );
    assert_eq!(get_json(&api, "/v1/health/state/critical").await, json!([]));
    assert_eq!(
        get_json(&api, "/v1/catalog/datacenters").await,
        json!(["dc1"])
    );
}

#[tokio::test]
async fn lowercase_and_snake_case_fields_are_taken() {
    let api = dev_api();
    let body = br#"{"node": "n2", "address": "10.0.0.2", "node_meta": {"Rack": "r1"},
        "service": {"service": "db", "port": 5432, "enable_tag_override": true}}"#;
    let (status, _, b) = call(&api, "PUT", "/v1/catalog/register", body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let db = get_json(&api, "/v1/catalog/service/db").await;
    assert_eq!(db[0]["ServiceID"], "db", "the id defaults to the name");
    assert_eq!(db[0]["ServiceEnableTagOverride"], true);
    assert_eq!(db[0]["NodeMeta"]["Rack"], "r1", "meta keys keep their case");
}

#[tokio::test]
async fn bad_registrations_answer_consuls_errors() {
    let api = dev_api();
    let cases: [(&[u8], u16, &str); 5] = [
        (br#"{"Node": "n1"}"#, 500, "Must provide node and address"),
        (
            br#"{"Node": "n1", "Address": "a", "ID": "x"}"#,
            500,
            "Bad node ID: ",
        ),
        (
            br#"{"Node": "n1", "Address": "a", "Service": {"Port": "80"}}"#,
            400,
            "Request decode failed: ",
        ),
        (b"{not json", 400, "Request decode failed: "),
        (
            br#"{"Node": "n1", "Address": "a", "Check": {"Name": "c", "ServiceID": "nope"}}"#,
            500,
            "failed inserting check on node \"n1\": Missing service registration",
        ),
    ];
    for (body, want_status, want_text) in cases {
        let (status, _, b) = call(&api, "PUT", "/v1/catalog/register", body).await;
        let text = String::from_utf8_lossy(&b);
        assert_eq!(status, want_status, "{text}");
        assert!(
            text.starts_with(want_text),
            "{text:?} should start with {want_text:?}"
        );
    }
    let (status, _, b) = call(&api, "PUT", "/v1/catalog/register?dc=dc9", WEB).await;
    assert_eq!((status, &b[..]), (500, &b"No path to datacenter"[..]));
    assert_eq!(get_json(&api, "/v1/catalog/nodes").await, json!([]));
    let (status, _, b) = call(&api, "GET", "/v1/health/service/web?passing=maybe", b"").await;
    assert_eq!((status, &b[..]), (400, &b"Invalid value for ?passing"[..]));
}

#[tokio::test]
async fn tag_passing_and_node_meta_filter_instances() {
    let api = dev_api();
    call(&api, "PUT", "/v1/catalog/register", WEB).await;
    let second = br#"{"Node": "n2", "Address": "10.0.0.2",
        "Service": {"ID": "web-2", "Service": "web", "Tags": ["v2"], "Port": 8001},
        "Check": {"CheckID": "web-2-alive", "Name": "alive", "ServiceID": "web-2",
                  "Status": "critical"}}"#;
    call(&api, "PUT", "/v1/catalog/register", second).await;
    let all = get_json(&api, "/v1/health/service/web").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let passing = get_json(&api, "/v1/health/service/web?passing").await;
    assert_eq!(passing.as_array().unwrap().len(), 1);
    assert_eq!(passing[0]["Service"]["ID"], "web-1");
    let tagged = get_json(&api, "/v1/catalog/service/web?tag=v2").await;
    assert_eq!(tagged[0]["ServiceID"], "web-2");
    let both = get_json(&api, "/v1/catalog/service/web?tag=primary&tag=v1").await;
    assert_eq!(both.as_array().unwrap().len(), 1);
    let none = get_json(&api, "/v1/catalog/service/web?tag=primary&tag=v2").await;
    assert_eq!(none, json!([]));
    let meta = get_json(&api, "/v1/catalog/service/web?node-meta=somekey:somevalue").await;
    assert_eq!(meta.as_array().unwrap().len(), 1);
    let checks = get_json(&api, "/v1/health/checks/web").await;
    assert_eq!(checks.as_array().unwrap().len(), 2);
    let critical = get_json(&api, "/v1/health/state/critical").await;
    assert_eq!(critical[0]["CheckID"], "web-2-alive");
}

#[tokio::test]
async fn deregister_removes_a_service_then_the_node() {
    let api = dev_api();
    call(&api, "PUT", "/v1/catalog/register", WEB).await;
    let body = br#"{"Node": "n1", "ServiceID": "web-1"}"#;
    let (status, _, _) = call(&api, "PUT", "/v1/catalog/deregister", body).await;
    assert_eq!(status, 200);
    assert_eq!(get_json(&api, "/v1/catalog/service/web").await, json!([]));
    assert_eq!(
        get_json(&api, "/v1/health/node/n1").await,
        json!([]),
        "its check went too"
    );
    let (status, _, b) = call(&api, "PUT", "/v1/catalog/deregister", b"{}").await;
    assert_eq!((status, &b[..]), (500, &b"Must provide node"[..]));
    call(&api, "PUT", "/v1/catalog/deregister", br#"{"Node": "n1"}"#).await;
    assert_eq!(get_json(&api, "/v1/catalog/nodes").await, json!([]));
}

/// A watcher of one service is answered by a change to it, and not by a change to another
/// service or by a KV write.
#[tokio::test]
async fn a_blocking_query_on_a_service_wakes_only_for_that_service() {
    let api = dev_api();
    call(&api, "PUT", "/v1/catalog/register", WEB).await;
    let (_, h, _) = call(&api, "GET", "/v1/health/service/web", b"").await;
    let at = index(&h);
    let uri = format!("/v1/health/service/web?index={at}&wait=2s");
    let watcher = {
        let api = api.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let (_, h, _) = call(&api, "GET", &uri, b"").await;
            (index(&h), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = br#"{"Node": "n2", "Address": "b", "Service": {"Service": "db"}}"#;
    call(&api, "PUT", "/v1/catalog/register", other).await;
    call(&api, "PUT", "/v1/kv/k", b"v").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watcher.is_finished(), "woken by a write to something else");
    let fail = br#"{"Node": "n1", "Address": "10.0.0.1",
        "Check": {"CheckID": "web-alive", "Name": "web alive", "Status": "critical",
                  "ServiceID": "web-1"}}"#;
    call(&api, "PUT", "/v1/catalog/register", fail).await;
    let (new_index, took) = watcher.await.unwrap();
    assert!(new_index > at);
    assert!(
        took < Duration::from_millis(1500),
        "answered at the change, took {took:?}"
    );
    // The same registration again is no write: the index stays.
    call(&api, "PUT", "/v1/catalog/register", fail).await;
    let (_, h, _) = call(&api, "GET", "/v1/health/service/web", b"").await;
    assert_eq!(index(&h), new_index);
}

/// Every catalog and health read takes `?filter` through the same path: a malformed
/// expression is a 400 on each of them, and `?dc` of another datacenter a 500.
#[tokio::test]
async fn every_read_takes_filter_and_dc_the_same_way() {
    let api = dev_api();
    call(&api, "PUT", "/v1/catalog/register", WEB).await;
    let reads = [
        "/v1/catalog/nodes",
        "/v1/catalog/services",
        "/v1/catalog/service/web",
        "/v1/catalog/node/n1",
        "/v1/catalog/node-services/n1",
        "/v1/health/node/n1",
        "/v1/health/checks/web",
        "/v1/health/state/any",
        "/v1/health/service/web",
    ];
    for path in reads {
        let (status, _, body) = call(&api, "GET", &format!("{path}?filter=(("), b"").await;
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
        let (status, _, _) = call(&api, "GET", &format!("{path}?dc=elsewhere"), b"").await;
        assert_eq!(status, 500, "{path}");
        let (status, _, _) = call(&api, "GET", path, b"").await;
        assert_eq!(status, 200, "{path}");
    }
}

fn with_filter(path: &str, expr: &str) -> String {
    let enc: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    format!("{path}?filter={enc}")
}

/// `?filter` in Consul's expression language, on every read, over the JSON each returns.
#[tokio::test]
async fn filters_select_what_each_read_returns() {
    let api = dev_api();
    call(&api, "PUT", "/v1/catalog/register", WEB).await;
    let second = br#"{"Node": "n2", "Address": "10.0.0.2", "NodeMeta": {"rack": "r2"},
        "Service": {"ID": "web-2", "Service": "web", "Tags": ["v2"], "Port": 8001,
                    "Meta": {"version": "2"}},
        "Check": {"CheckID": "web-2-alive", "Name": "alive", "ServiceID": "web-2",
                  "Status": "critical"}}"#;
    call(&api, "PUT", "/v1/catalog/register", second).await;
    let ids = |v: serde_json::Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e.pointer(key).unwrap().as_str().unwrap().to_string())
            .collect()
    };
    let p = with_filter("/v1/health/service/web", "Service.Tags contains \"v2\"");
    assert_eq!(ids(get_json(&api, &p).await, "/Service/ID"), ["web-2"]);
    let p = with_filter(
        "/v1/health/service/web",
        "Checks.0.Status == passing and Node.Meta.somekey == somevalue",
    );
    assert_eq!(ids(get_json(&api, &p).await, "/Service/ID"), ["web-1"]);
    let p = with_filter("/v1/catalog/service/web", "ServiceMeta.version == \"1\"");
    assert_eq!(ids(get_json(&api, &p).await, "/ServiceID"), ["web-1"]);
    let p = with_filter("/v1/catalog/nodes", "Meta.rack == r2");
    assert_eq!(ids(get_json(&api, &p).await, "/Node"), ["n2"]);
    let p = with_filter("/v1/health/state/any", "Status != passing");
    assert_eq!(ids(get_json(&api, &p).await, "/CheckID"), ["web-2-alive"]);
    let p = with_filter("/v1/catalog/services", "ServicePort == 8001");
    assert_eq!(get_json(&api, &p).await, json!({"web": ["v2"]}));
    let p = with_filter("/v1/catalog/node/n1", "Port == 1");
    assert_eq!(get_json(&api, &p).await["Services"], json!({}));
    let p = with_filter("/v1/catalog/node-services/n2", "Port == 8001");
    assert_eq!(
        ids(get_json(&api, &p).await["Services"].clone(), "/ID"),
        ["web-2"]
    );
    // A selector no entry has is Consul's 400.
    let p = with_filter("/v1/catalog/service/web", "NoSuchField == 1");
    let (status, _, body) = call(&api, "GET", &p, b"").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body)
        .starts_with("Failed to create boolean expression evaluator: "));
}

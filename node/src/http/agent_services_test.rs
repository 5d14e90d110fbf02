use std::time::Duration;

use crate::http::testing::call;
use crate::http::testing::dev_api;
use crate::http::testing::get_json;

const WEB: &[u8] = br#"{
    "name": "web",
    "id": "web-1",
    "tags": ["v1"],
    "port": 8080,
    "meta": {"version": "1"},
    "check": {"ttl": "10s", "notes": "heartbeat"},
    "checks": []
}"#;

async fn put(
    api: &std::sync::Arc<crate::http::Api>,
    path: &str,
    body: &'static [u8],
) -> (u16, String) {
    let (status, _, body) = call(api, "PUT", path, body).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn register_list_and_deregister_a_service_with_a_ttl_check() {
    let api = dev_api();
    assert_eq!(put(&api, "/v1/agent/service/register", WEB).await.0, 200);
    let services = get_json(&api, "/v1/agent/services").await;
    assert_eq!(services["web-1"]["Service"], "web");
    assert_eq!(services["web-1"]["Port"], 8080);
    assert_eq!(services["web-1"]["Tags"][0], "v1");
    assert_eq!(services["web-1"]["Datacenter"], "dc1");
    let checks = get_json(&api, "/v1/agent/checks").await;
    let c = &checks["service:web-1"];
    assert_eq!(c["Name"], "Service 'web' check");
    assert_eq!(c["Status"], "critical");
    assert_eq!(c["Type"], "ttl");
    assert_eq!(c["ServiceName"], "web");

    assert_eq!(
        put(&api, "/v1/agent/check/pass/service:web-1?note=fine", b"")
            .await
            .0,
        200
    );
    let checks = get_json(&api, "/v1/agent/checks").await;
    assert_eq!(checks["service:web-1"]["Status"], "passing");
    assert_eq!(checks["service:web-1"]["Output"], "fine");

    let (status, _, body) = call(&api, "GET", "/v1/agent/health/service/id/web-1", b"").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["AggregatedStatus"], "passing");
    let r = put(&api, "/v1/agent/check/warn/service:web-1", b"").await;
    assert_eq!(r.0, 200);
    let path = "/v1/agent/health/service/name/web?format=text";
    let (status, _, body) = call(&api, "GET", path, b"").await;
    assert_eq!((status, body.as_slice()), (429, b"warning".as_slice()));

    assert_eq!(
        put(&api, "/v1/agent/service/deregister/web-1", b"").await.0,
        200
    );
    assert_eq!(
        get_json(&api, "/v1/agent/services").await,
        serde_json::json!({})
    );
    assert_eq!(
        get_json(&api, "/v1/agent/checks").await,
        serde_json::json!({})
    );
    let (status, text) = put(&api, "/v1/agent/service/deregister/web-1", b"").await;
    assert_eq!(status, 404);
    assert_eq!(
        text,
        "Unknown service ID \"web-1\". Ensure that the service ID is passed, not the service \
         name."
    );
}

#[tokio::test]
async fn bad_definitions_get_consuls_errors() {
    let api = dev_api();
    let cases: &[(&str, &'static [u8], u16, &str)] = &[
        (
            "/v1/agent/service/register",
            br#"{"port": 1}"#,
            400,
            "Missing service name",
        ),
        (
            "/v1/agent/service/register",
            br#"{"name": "a", "check": {"http": "http://x/"}}"#,
            400,
            "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks",
        ),
        (
            "/v1/agent/service/register",
            br#"{"name": "a", "check": {"ttl": "5s", "interval": "5s"}}"#,
            400,
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            "/v1/agent/check/register",
            br#"{"name": "s", "args": ["true"], "interval": "5s"}"#,
            400,
            "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' \
             or 'enable_local_script_checks' to true",
        ),
        (
            "/v1/agent/check/register",
            br#"{"name": "c", "ttl": "5s", "service_id": "nope"}"#,
            400,
            "ServiceID \"nope\" does not exist",
        ),
        (
            "/v1/agent/check/register",
            br#"{"ttl": "5s"}"#,
            400,
            "Missing check name",
        ),
        (
            "/v1/agent/check/pass/nope",
            b"",
            404,
            "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name.",
        ),
        (
            "/v1/agent/maintenance",
            b"",
            400,
            "Missing value for enable",
        ),
    ];
    for (path, body, status, text) in cases {
        assert_eq!(
            put(&api, path, body).await,
            (*status, text.to_string()),
            "{path} {}",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test]
async fn maintenance_turns_the_service_unavailable_and_back() {
    let api = dev_api();
    put(&api, "/v1/agent/service/register", WEB).await;
    put(&api, "/v1/agent/check/pass/service:web-1", b"").await;
    let r = put(
        &api,
        "/v1/agent/service/maintenance/web-1?enable=true&reason=deploy",
        b"",
    );
    assert_eq!(r.await.0, 200);
    let (status, _, body) = call(
        &api,
        "GET",
        "/v1/agent/health/service/id/web-1?format=text",
        b"",
    )
    .await;
    assert_eq!((status, body.as_slice()), (503, b"maintenance".as_slice()));
    let checks = get_json(&api, "/v1/agent/checks").await;
    assert_eq!(checks["_service_maintenance:web-1"]["Notes"], "deploy");
    let r = put(
        &api,
        "/v1/agent/service/maintenance/web-1?enable=false",
        b"",
    );
    assert_eq!(r.await.0, 200);
    let (status, _, _) = call(&api, "GET", "/v1/agent/health/service/id/web-1", b"").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_service_endpoint_blocks_on_its_content_hash() {
    let api = dev_api();
    put(&api, "/v1/agent/service/register", WEB).await;
    let (status, headers, body) = call(&api, "GET", "/v1/agent/service/web-1", b"").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let hash = v["ContentHash"].as_str().unwrap().to_string();
    assert_eq!(headers["X-Consul-ContentHash"], hash.as_str());
    let waiter = {
        let api = api.clone();
        let path = format!("/v1/agent/service/web-1?hash={hash}&wait=10s");
        tokio::spawn(async move { call(&api, "GET", &path, b"").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "an unchanged service holds the query"
    );
    let changed = br#"{"name": "web", "id": "web-1", "port": 9090}"#;
    put(&api, "/v1/agent/service/register", changed).await;
    let (_, _, body) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the change")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Port"], 9090);
    assert_ne!(v["ContentHash"], hash.as_str());
    let (status, _, _) = call(&api, "GET", "/v1/agent/service/nope", b"").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn replace_existing_checks_drops_the_checks_not_given_again() {
    let api = dev_api();
    let two = br#"{"name": "web", "checks": [{"ttl": "5s"}, {"ttl": "6s"}]}"#;
    put(&api, "/v1/agent/service/register", two).await;
    let checks = get_json(&api, "/v1/agent/checks").await;
    assert!(checks.get("service:web:1").is_some() && checks.get("service:web:2").is_some());
    let one = br#"{"name": "web", "checks": [{"id": "only", "ttl": "5s"}]}"#;
    put(
        &api,
        "/v1/agent/service/register?replace-existing-checks",
        one,
    )
    .await;
    let checks = get_json(&api, "/v1/agent/checks").await;
    let ids: Vec<&String> = checks.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["only"]);
}

#[tokio::test]
async fn agent_services_and_checks_take_filters() {
    let api = dev_api();
    put(&api, "/v1/agent/service/register", WEB).await;
    let other = br#"{"name": "db", "port": 5432, "tags": ["primary"]}"#;
    put(&api, "/v1/agent/service/register", other).await;
    let enc = |e: &str| form_urlencoded::byte_serialize(e.as_bytes()).collect::<String>();
    let p = format!("/v1/agent/services?filter={}", enc("\"primary\" in Tags"));
    let v = get_json(&api, &p).await;
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["db"]);
    let p = format!("/v1/agent/checks?filter={}", enc("ServiceName == web"));
    let v = get_json(&api, &p).await;
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["service:web-1"]
    );
    let p = format!("/v1/agent/services?filter={}", enc("(("));
    assert_eq!(call(&api, "GET", &p, b"").await.0, 400);
}

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

/// Check `id` of `/v1/agent/checks`: its status and output.
async fn check_state(api: &std::sync::Arc<crate::http::Api>, id: &str) -> (String, String) {
    let checks = get_json(api, "/v1/agent/checks").await;
    let c = &checks[id];
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (text("Status"), text("Output"))
}

/// Wait (bounded) until check `id` is `status` with `output`.
async fn wait_check(api: &std::sync::Arc<crate::http::Api>, id: &str, status: &str, output: &str) {
    let want = (status.to_string(), output.to_string());
    for _ in 0..100 {
        if check_state(api, id).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(check_state(api, id).await, want, "{id}");
}

#[tokio::test]
async fn an_alias_check_mirrors_a_local_service_and_a_node_of_the_catalog() {
    let api = dev_api();
    let web = br#"{"name": "web", "check": {"id": "web-ttl", "ttl": "30s"}}"#;
    assert_eq!(put(&api, "/v1/agent/service/register", web).await.0, 200);
    // snake_case, in a service definition's `checks`.
    let proxy = br#"{"name": "proxy", "checks": [{"id": "proxy-alias", "alias_service": "web"}]}"#;
    assert_eq!(put(&api, "/v1/agent/service/register", proxy).await.0, 200);
    let checks = get_json(&api, "/v1/agent/checks").await;
    assert_eq!(checks["proxy-alias"]["Type"], "alias");
    assert_eq!(checks["proxy-alias"]["ServiceID"], "proxy");
    let failing = "Aliased check \"Service 'web' check\" failing: ";
    assert_eq!(
        check_state(&api, "proxy-alias").await,
        ("critical".into(), failing.into())
    );
    put(&api, "/v1/agent/check/pass/web-ttl", b"").await;
    assert_eq!(
        check_state(&api, "proxy-alias").await,
        ("passing".into(), "All checks passing.".into())
    );
    put(&api, "/v1/agent/check/warn/web-ttl?note=slow", b"").await;
    assert_eq!(
        check_state(&api, "proxy-alias").await,
        ("warning".into(), format!("{failing}slow"))
    );
    let (status, _, _) = call(&api, "GET", "/v1/agent/health/service/id/proxy", b"").await;
    assert_eq!(status, 429, "the proxy's health is its alias's");
    put(&api, "/v1/agent/service/deregister/web", b"").await;
    assert_eq!(
        check_state(&api, "proxy-alias").await,
        (
            "critical".into(),
            "Service web could not be found on node ".into()
        )
    );

    // Registered on its own, in Consul's spelling: an alias of a node in the catalog.
    let n2 = br#"{"Node": "n2", "Address": "10.0.0.2",
        "Service": {"ID": "db", "Service": "db"},
        "Check": {"CheckID": "db-up", "Name": "db-up", "Status": "passing", "ServiceID": "db"}}"#;
    assert_eq!(put(&api, "/v1/catalog/register", n2).await.0, 200);
    let alias = br#"{"Name": "db-alias", "AliasNode": "n2", "AliasService": "db"}"#;
    assert_eq!(put(&api, "/v1/agent/check/register", alias).await.0, 200);
    wait_check(&api, "db-alias", "passing", "All checks passing.").await;
    // Defined again (as a reload does), it keeps what it saw instead of flapping.
    assert_eq!(put(&api, "/v1/agent/check/register", alias).await.0, 200);
    assert_eq!(
        check_state(&api, "db-alias").await,
        ("passing".into(), "All checks passing.".into())
    );
    let down = br#"{"Node": "n2", "Address": "10.0.0.2",
        "Check": {"CheckID": "db-up", "Name": "db-up", "Status": "critical", "ServiceID": "db",
                  "Output": "boom"}}"#;
    assert_eq!(put(&api, "/v1/catalog/register", down).await.0, 200);
    wait_check(
        &api,
        "db-alias",
        "critical",
        "Aliased check \"db-up\" failing: boom",
    )
    .await;
    let gone = br#"{"Node": "n2", "ServiceID": "db"}"#;
    assert_eq!(put(&api, "/v1/catalog/deregister", gone).await.0, 200);
    wait_check(
        &api,
        "db-alias",
        "critical",
        "Service db could not be found on node n2",
    )
    .await;
    // Deregistered, it is gone (and its query with it).
    put(&api, "/v1/agent/check/deregister/db-alias", b"").await;
    assert!(get_json(&api, "/v1/agent/checks")
        .await
        .get("db-alias")
        .is_none());
}

#[tokio::test]
async fn alias_definitions_get_consuls_errors() {
    let api = dev_api();
    let cases: &[(&'static [u8], &str)] = &[
        (
            br#"{"name": "a", "alias_service": "web", "ttl": "5s"}"#,
            "Invalid check: TTL must be not be set for Alias checks",
        ),
        (
            br#"{"name": "a", "AliasService": "web", "http": "http://x/", "interval": "5s"}"#,
            "Invalid check: Interval cannot be set for Alias checks",
        ),
        (
            br#"{"name": "a", "alias_node": "n2", "tcp": "127.0.0.1:1"}"#,
            "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks",
        ),
        (
            br#"{"name": "a", "alias_node": "n2", "ttl": "5s", "interval": "5s"}"#,
            "Invalid check: Interval and TTL cannot both be specified",
        ),
    ];
    for (body, text) in cases {
        assert_eq!(
            put(&api, "/v1/agent/check/register", body).await,
            (400, text.to_string()),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // An interval alone is Consul's to ignore: the alias is taken.
    let body = br#"{"name": "a", "alias_service": "web", "interval": "10s"}"#;
    assert_eq!(put(&api, "/v1/agent/check/register", body).await.0, 200);
    let checks = get_json(&api, "/v1/agent/checks").await;
    assert_eq!(checks["a"]["Type"], "alias");
}

//! Services and checks registered with a real agent: they reach the catalog by
//! anti-entropy, their checks run (TTL, HTTP, TCP, script) and flip health as their targets
//! change, and deregistering takes them out of the catalog again.

mod common;

use std::io::Read;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The status of `check` in the catalog's health of service `service`, if listed.
fn catalog_status(a: &Agent, service: &str, check: &str) -> Option<String> {
    let v = a
        .http("GET", &format!("/v1/health/service/{service}"), b"")
        .json();
    let entry = v.as_array()?.first()?.clone();
    let checks = entry["Checks"].as_array()?.clone();
    checks
        .iter()
        .find(|c| c["CheckID"] == check)
        .and_then(|c| c["Status"].as_str().map(str::to_string))
}

fn wait_status(a: &Agent, service: &str, check: &str, want: &str, within: Duration) {
    let got = eventually(within, || {
        (catalog_status(a, service, check).as_deref() == Some(want)).then_some(())
    });
    assert!(
        got.is_some(),
        "{check} of {service} never became {want}: {:?}",
        catalog_status(a, service, check)
    );
}

/// A tiny HTTP server answering 200 while `up` is set, 503 otherwise.
fn health_server(up: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let reply: &[u8] = if up.load(Ordering::SeqCst) {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"
            };
            let _ = s.write_all(reply);
        }
    });
    port
}

#[test]
fn a_ttl_check_reaches_the_catalog_passes_and_expires() {
    let a = Agent::dev(&["-node=box"]);
    let body = br#"{"name": "web", "id": "web-1", "port": 8080, "tags": ["v1"],
        "check": {"id": "web-ttl", "ttl": "2s"}}"#;
    assert_eq!(
        a.http("PUT", "/v1/agent/service/register", body).status,
        200
    );
    // In the catalog at once, critical until its first update.
    wait_status(&a, "web", "web-ttl", "critical", Duration::from_secs(5));
    let svc = a.http("GET", "/v1/catalog/service/web", b"").json();
    assert_eq!(svc[0]["Node"], "box");
    assert_eq!(svc[0]["ServiceTags"][0], "v1");
    let r = a.http("PUT", "/v1/agent/check/pass/web-ttl?note=alive", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_status(&a, "web", "web-ttl", "passing", Duration::from_secs(5));
    // Nothing updates it: 2 s later it is critical, in the agent and in the catalog.
    wait_status(&a, "web", "web-ttl", "critical", Duration::from_secs(8));
    let checks = a.http("GET", "/v1/agent/checks", b"").json();
    assert_eq!(
        checks["web-ttl"]["Output"],
        "TTL expired (last output before timeout follows): alive"
    );
    assert_eq!(
        a.http("PUT", "/v1/agent/service/deregister/web-1", b"")
            .status,
        200
    );
    let gone = eventually(Duration::from_secs(5), || {
        let v = a.http("GET", "/v1/catalog/service/web", b"").json();
        v.as_array().is_some_and(|l| l.is_empty()).then_some(())
    });
    assert!(
        gone.is_some(),
        "the deregistered service stays in the catalog"
    );
    // The agent's own node entry (serfHealth) is untouched by that.
    assert!(catalog_status(&a, "consul", "serfHealth").is_some());
}

#[test]
fn http_tcp_and_script_checks_follow_their_targets() {
    let script_dir = temp_dir("agent-script-check");
    let flag = script_dir.join("healthy");
    std::fs::write(&flag, b"").unwrap();
    let cfg = script_dir.join("scripts.json");
    std::fs::write(&cfg, br#"{"enable_script_checks": true}"#).unwrap();
    let a = Agent::dev(&[&format!("-config-file={}", cfg.display())]);
    let up = Arc::new(AtomicBool::new(true));
    let port = health_server(up.clone());
    let body = format!(
        r#"{{"name": "api", "port": {port}, "checks": [
            {{"id": "api-http", "http": "http://127.0.0.1:{port}/health", "interval": "1s"}},
            {{"id": "api-tcp", "tcp": "127.0.0.1:{port}", "interval": "1s"}},
            {{"id": "api-script", "interval": "1s",
              "args": ["sh", "-c", "test -e {flag} || exit 2"]}}
        ]}}"#,
        flag = flag.display()
    );
    let r = a.http("PUT", "/v1/agent/service/register", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    for c in ["api-http", "api-tcp", "api-script"] {
        wait_status(&a, "api", c, "passing", Duration::from_secs(8));
    }
    let checks = a.http("GET", "/v1/agent/checks", b"").json();
    let out = checks["api-http"]["Output"].as_str().unwrap_or_default();
    assert!(out.contains("200 OK") && out.ends_with("ok"), "{out}");

    up.store(false, Ordering::SeqCst);
    std::fs::remove_file(&flag).unwrap();
    wait_status(&a, "api", "api-http", "critical", Duration::from_secs(8));
    wait_status(&a, "api", "api-script", "critical", Duration::from_secs(8));
    // The port still accepts connections: TCP stays passing.
    assert_eq!(
        catalog_status(&a, "api", "api-tcp").as_deref(),
        Some("passing")
    );
    let passing = a.http("GET", "/v1/health/service/api?passing", b"").json();
    assert_eq!(passing.as_array().map(Vec::len), Some(0));
}

#[test]
fn script_checks_are_refused_unless_enabled() {
    let a = Agent::dev(&[]);
    let body = br#"{"name": "s", "args": ["true"], "interval": "5s"}"#;
    let r = a.http("PUT", "/v1/agent/check/register", body);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("enable_script_checks"), "{}", r.text());
}

fn service_ids(a: &Agent) -> Vec<String> {
    let v = a.http("GET", "/v1/agent/services", b"").json();
    let mut ids: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn catalog_port(a: &Agent, service: &str) -> Option<u64> {
    let v = a
        .http("GET", &format!("/v1/catalog/service/{service}"), b"")
        .json();
    v.as_array()?.first()?["ServicePort"].as_u64()
}

#[test]
fn config_file_services_in_json_and_hcl_are_registered_and_reloaded_on_sighup() {
    let dir = temp_dir("agent-config-services");
    let web = |port: u16| {
        format!(
            r#"{{"service": {{"name": "web", "port": {port}, "tags": ["cfg"],
                "check": {{"id": "web-ttl", "ttl": "30s"}}}}}}"#
        )
    };
    std::fs::write(dir.join("web.json"), web(8080)).unwrap();
    let hcl = r#"
services {
  name = "db"
  port = 5432
  checks {
    id       = "db-tcp"
    tcp      = "127.0.0.1:1"
    interval = "1s"
    timeout  = "500ms"
  }
}
check {
  id   = "disk"
  name = "disk"
  ttl  = "60s"
}
"#;
    std::fs::write(dir.join("db.hcl"), hcl).unwrap();
    let a = Agent::dev(&[&format!("-config-dir={}", dir.display())]);
    assert_eq!(service_ids(&a), ["db", "web"]);
    let checks = a.http("GET", "/v1/agent/checks", b"").json();
    assert_eq!(checks["db-tcp"]["Type"], "tcp");
    assert_eq!(checks["disk"]["Type"], "ttl");
    let seen = eventually(Duration::from_secs(5), || catalog_port(&a, "db"));
    assert_eq!(seen, Some(5432));
    // Nothing listens on port 1: the TCP check goes critical.
    wait_status(&a, "db", "db-tcp", "critical", Duration::from_secs(8));

    // One service over HTTP too: a reload leaves it alone.
    let body = br#"{"name": "adhoc", "port": 1}"#;
    assert_eq!(
        a.http("PUT", "/v1/agent/service/register", body).status,
        200
    );

    // db.hcl goes, web's port changes; SIGHUP.
    std::fs::remove_file(dir.join("db.hcl")).unwrap();
    std::fs::write(dir.join("web.json"), web(9090)).unwrap();
    let pid = a.child.id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let reloaded = eventually(Duration::from_secs(5), || {
        (service_ids(&a) == ["adhoc", "web"]).then_some(())
    });
    assert!(reloaded.is_some(), "after reload: {:?}", service_ids(&a));
    let checks = a.http("GET", "/v1/agent/checks", b"").json();
    assert!(
        checks.get("disk").is_none() && checks.get("db-tcp").is_none(),
        "{checks}"
    );
    let moved = eventually(Duration::from_secs(5), || {
        (catalog_port(&a, "web") == Some(9090)).then_some(())
    });
    assert!(
        moved.is_some(),
        "the catalog keeps web on {:?}",
        catalog_port(&a, "web")
    );
    let gone = eventually(Duration::from_secs(5), || {
        catalog_port(&a, "db").is_none().then_some(())
    });
    assert!(gone.is_some(), "db stays in the catalog");
}

#[test]
fn a_bad_service_definition_in_the_config_stops_the_start_with_its_name() {
    let dir = temp_dir("agent-config-bad-service");
    let bad = r#"{"service": {"name": "web", "check": {"http": "http://127.0.0.1/"}}}"#;
    std::fs::write(dir.join("web.json"), bad).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["agent", "-dev", "-http-port=-1", "-dns-port=-1"])
        .arg(format!("-config-dir={}", dir.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service \"web\"") && err.contains("Interval must be > 0"),
        "{err}"
    );
}

/// The status and output of check `check` in the catalog's health of service `service`.
fn catalog_check(a: &Agent, service: &str, check: &str) -> Option<(String, String)> {
    let v = a
        .http("GET", &format!("/v1/health/service/{service}"), b"")
        .json();
    let entry = v.as_array()?.first()?.clone();
    let c = entry["Checks"]
        .as_array()?
        .iter()
        .find(|c| c["CheckID"] == check)?
        .clone();
    Some((c["Status"].as_str()?.into(), c["Output"].as_str()?.into()))
}

/// Wait until the catalog holds check `check` of `service` as `status` with `output`.
fn wait_catalog(a: &Agent, service: &str, check: &str, status: &str, output: &str) {
    let want = Some((status.to_string(), output.to_string()));
    let got = eventually(Duration::from_secs(8), || {
        (catalog_check(a, service, check) == want).then_some(())
    });
    assert!(
        got.is_some(),
        "{check} of {service} never became {want:?}: {:?}",
        catalog_check(a, service, check)
    );
}

/// The status and output of agent check `id`.
fn agent_check(a: &Agent, id: &str) -> (String, String) {
    let v = a.http("GET", "/v1/agent/checks", b"").json();
    let text = |k: &str| v[id][k].as_str().unwrap_or_default().to_string();
    (text("Status"), text("Output"))
}

#[test]
fn alias_checks_follow_a_local_service_and_a_node_of_the_catalog() {
    let dir = temp_dir("agent-alias-checks");
    // A proxy aliasing web (HCL), and an edge aliasing the proxy on this node (JSON).
    let proxy = r#"
services {
  name = "proxy"
  port = 21000
  checks {
    id            = "proxy-alias"
    alias_service = "web"
  }
}
"#;
    std::fs::write(dir.join("proxy.hcl"), proxy).unwrap();
    let edge = r#"{"service": {"name": "edge", "port": 443,
        "check": {"id": "edge-alias", "alias_service": "proxy", "alias_node": "box"}}}"#;
    std::fs::write(dir.join("edge.json"), edge).unwrap();
    let a = Agent::dev(&["-node=box", &format!("-config-dir={}", dir.display())]);
    let missing = "Service web could not be found on node ";
    wait_catalog(&a, "proxy", "proxy-alias", "critical", missing);
    assert_eq!(
        agent_check(&a, "edge-alias"),
        (
            "critical".into(),
            format!("Aliased check \"Service 'proxy' check\" failing: {missing}")
        )
    );

    // web comes, with a TTL check that is critical until its first update.
    let web = br#"{"name": "web", "port": 8080,
        "check": {"id": "web-ttl", "name": "web-ttl", "ttl": "30s"}}"#;
    let r = a.http("PUT", "/v1/agent/service/register", web);
    assert_eq!(r.status, 200, "{}", r.text());
    let failing = "Aliased check \"web-ttl\" failing: ";
    wait_catalog(&a, "proxy", "proxy-alias", "critical", failing);
    let r = a.http("PUT", "/v1/agent/check/pass/web-ttl", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_catalog(&a, "proxy", "proxy-alias", "passing", "All checks passing.");
    wait_catalog(&a, "edge", "edge-alias", "passing", "All checks passing.");
    let r = a.http("PUT", "/v1/agent/check/fail/web-ttl?note=down", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_catalog(
        &a,
        "proxy",
        "proxy-alias",
        "critical",
        &format!("{failing}down"),
    );
    let passing = a
        .http("GET", "/v1/health/service/proxy?passing", b"")
        .json();
    assert_eq!(passing.as_array().map(Vec::len), Some(0));
    let r = a.http("PUT", "/v1/agent/check/pass/web-ttl", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_catalog(&a, "proxy", "proxy-alias", "passing", "All checks passing.");
    let r = a.http("PUT", "/v1/agent/service/deregister/web", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_catalog(&a, "proxy", "proxy-alias", "critical", missing);

    // An alias of another node follows that node's checks in the catalog.
    let ext = br#"{"Node": "ext", "Address": "10.9.9.9",
        "Service": {"ID": "db", "Service": "db"},
        "Check": {"CheckID": "db-up", "Name": "db-up", "Status": "passing", "ServiceID": "db"}}"#;
    assert_eq!(a.http("PUT", "/v1/catalog/register", ext).status, 200);
    let alias = br#"{"name": "db-alias", "alias_node": "ext", "alias_service": "db"}"#;
    let r = a.http("PUT", "/v1/agent/check/register", alias);
    assert_eq!(r.status, 200, "{}", r.text());
    let want = |status: &str, output: &str| (status.to_string(), output.to_string());
    let seen = eventually(Duration::from_secs(5), || {
        (agent_check(&a, "db-alias") == want("passing", "All checks passing.")).then_some(())
    });
    assert!(seen.is_some(), "{:?}", agent_check(&a, "db-alias"));
    let down = br#"{"Node": "ext", "Address": "10.9.9.9",
        "Check": {"CheckID": "db-up", "Name": "db-up", "Status": "critical",
                  "ServiceID": "db", "Output": "boom"}}"#;
    assert_eq!(a.http("PUT", "/v1/catalog/register", down).status, 200);
    let boom = want("critical", "Aliased check \"db-up\" failing: boom");
    let seen = eventually(Duration::from_secs(5), || {
        (agent_check(&a, "db-alias") == boom).then_some(())
    });
    assert!(seen.is_some(), "{:?}", agent_check(&a, "db-alias"));
}

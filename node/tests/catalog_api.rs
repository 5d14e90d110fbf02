//! The catalog and health HTTP surface against a real `tribune agent -dev`.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::*;

const WEB: &[u8] = br#"{"Node": "web-host", "Address": "10.1.0.5",
    "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Port": 8080},
    "Check": {"CheckID": "web-1-ttl", "Name": "web ttl", "ServiceID": "web-1",
              "Status": "passing"}}"#;

#[test]
fn the_dev_agent_lists_itself_with_serf_health_and_the_consul_service() {
    let a = Agent::dev(&["-node=devbox"]);
    let entries = eventually(Duration::from_secs(10), || {
        let v = a.http("GET", "/v1/health/service/consul", b"").json();
        (v.as_array().is_some_and(|l| !l.is_empty())).then_some(v)
    })
    .expect("the agent registers itself");
    assert_eq!(entries[0]["Node"]["Node"], "devbox");
    assert_eq!(entries[0]["Node"]["Datacenter"], "dc1");
    assert_eq!(entries[0]["Service"]["Port"], 8300);
    assert_eq!(entries[0]["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(entries[0]["Checks"][0]["Status"], "passing");
}

#[test]
fn register_watch_a_check_fail_and_deregister() {
    let a = Agent::dev(&[]);
    let r = a.http("PUT", "/v1/catalog/register", WEB);
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let r = a.http("GET", "/v1/health/service/web?passing", b"");
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let at = r.index();
    // A long-poll on web, answered by the check going critical.
    let port = a.addr();
    let watcher = std::thread::spawn(move || {
        let started = Instant::now();
        let path = format!("/v1/health/service/web?passing&index={at}&wait=10s");
        let r = try_http_at(&port, "GET", &path, b"").unwrap();
        (r.index(), r.json(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let other = br#"{"Node": "db-host", "Address": "10.1.0.6", "Service": {"Service": "db"}}"#;
    assert_eq!(a.http("PUT", "/v1/catalog/register", other).status, 200);
    let failing = br#"{"Node": "web-host", "Address": "10.1.0.5",
        "Check": {"CheckID": "web-1-ttl", "Name": "web ttl", "ServiceID": "web-1",
                  "Status": "critical", "Output": "TTL expired"}}"#;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.http("PUT", "/v1/catalog/register", failing).status, 200);
    let (index, passing, took) = watcher.join().unwrap();
    assert!(index > at);
    assert_eq!(
        passing.as_array().unwrap().len(),
        0,
        "no passing instance left"
    );
    assert!(
        took >= Duration::from_millis(500),
        "woken by the db registration: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "not woken by the failing check: {took:?}"
    );
    let critical = a.http("GET", "/v1/health/state/critical", b"").json();
    assert_eq!(critical[0]["Output"], "TTL expired");
    let body = br#"{"Node": "web-host"}"#;
    assert_eq!(a.http("PUT", "/v1/catalog/deregister", body).status, 200);
    let nodes = a.http("GET", "/v1/catalog/service/web", b"").json();
    assert_eq!(nodes.as_array().unwrap().len(), 0);
}

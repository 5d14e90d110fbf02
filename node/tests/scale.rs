//! Idle long-polls on one dev agent: 10,000 on KV keys cost little memory, a write wakes
//! only the waiters of its key, and disconnecting frees everything; 15,000 on
//! `/v1/health/service/web` cost at most 4 KiB each and are all answered soon after `web`
//! changes.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;
use std::time::Instant;

use common::*;

#[allow(unsafe_code)] // getrlimit/setrlimit: std has no wrapper
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit calls with a valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn gauge(a: &Agent, name: &str) -> u64 {
    let m = a
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
        .trim()
        .parse()
        .unwrap()
}

/// The tests take turns: together they would need more sockets than a process may open.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How many long-polls this test may open, up to `want`, where the fd limit allows (the
/// agent and this test each hold one socket per long-poll; Linux defaults allow 20k+);
/// fewer otherwise, so that the properties are still checked; `None` when too few.
fn long_polls_allowed(want: usize) -> Option<usize> {
    let limit = raise_fd_limit();
    let n = want.min((limit as usize).saturating_sub(500) / 100 * 100);
    if n < 200 {
        eprintln!("skipping: fd limit {limit} is too low");
        return None;
    }
    Some(n)
}

/// A `-dev` agent that takes 30,000 connections from one client.
fn agent_for_many(name: &str) -> Agent {
    let dir = temp_dir(name);
    std::fs::write(
        dir.join("limits.json"),
        r#"{"limits":{"http_max_conns_per_client":30000}}"#,
    )
    .unwrap();
    Agent::dev(&[&format!("-config-dir={}", dir.display())])
}

/// Wait until `n` blocking queries are open on `a`, and check the agent's RSS growth per
/// query since `before` (KiB): at most 4 KiB: the connection holds no buffer while its request
/// waits (src/http/conn.rs).
fn bytes_per_open_poll(a: &Agent, n: usize, before: u64, what: &str) {
    let all_open = eventually(Duration::from_secs(60), || {
        (gauge(a, "consul_http_blocking_queries") == n as u64).then_some(())
    });
    assert!(
        all_open.is_some(),
        "only {} of {n} long-polls open",
        gauge(a, "consul_http_blocking_queries")
    );
    let after = rss_kib(a.child.id());
    let per_poll = (after.saturating_sub(before)) * 1024 / n as u64;
    eprintln!(
        "{n} idle {what} long-polls: RSS {before} KiB -> {after} KiB ({per_poll} bytes each)"
    );
    assert!(per_poll <= 4096, "{per_poll} bytes per idle long-poll");
}

#[test]
fn ten_thousand_idle_long_polls() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(n) = long_polls_allowed(10_000) else {
        return;
    };
    const KEYS: usize = 100;
    let a = agent_for_many("scale");
    for k in 0..KEYS {
        a.http("PUT", &format!("/v1/kv/idle/{k}"), b"0");
    }
    let idx = a.http("GET", "/v1/kv/idle/?recurse", b"").index();
    let before = rss_kib(a.child.id());
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        let req = format!(
            "GET /v1/kv/idle/{}?index={idx}&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n",
            i % KEYS
        );
        s.write_all(req.as_bytes()).unwrap();
        conns.push(s);
    }
    bytes_per_open_poll(&a, n, before, "KV");
    let keys_watched = a
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .text();
    assert!(
        keys_watched.contains(&format!("consul_kv_watched_topics{{kind=\"key\"}} {KEYS}")),
        "{keys_watched}"
    );
    // A write to one key wakes exactly that key's waiters, quickly.
    let wakeups_before = gauge(&a, "consul_http_blocking_wakeups_total");
    let start = Instant::now();
    assert_eq!(a.http("PUT", "/v1/kv/idle/7", b"1").status, 200);
    let woke = n / KEYS;
    let settled = eventually(Duration::from_secs(10), || {
        (gauge(&a, "consul_http_blocking_queries") == (n - woke) as u64).then_some(start.elapsed())
    });
    let took = settled.expect("the key's waiters returned");
    eprintln!("write to idle/7 woke {woke} waiters in {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gauge(&a, "consul_http_blocking_queries"),
        (n - woke) as u64,
        "other waiters returned too"
    );
    assert_eq!(
        gauge(&a, "consul_http_blocking_wakeups_total") - wakeups_before,
        woke as u64,
        "other waiters were woken (and went back to sleep)"
    );
    // A write to an unwatched key wakes nobody.
    a.http("PUT", "/v1/kv/unwatched", b"1");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        gauge(&a, "consul_http_blocking_wakeups_total") - wakeups_before,
        woke as u64
    );

    drop(conns);
    let freed = eventually(Duration::from_secs(30), || {
        (gauge(&a, "consul_http_blocking_queries") == 0).then_some(())
    });
    assert!(
        freed.is_some(),
        "long-polls of closed connections still open"
    );
    let m = a
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .text();
    assert!(
        m.contains("consul_kv_watched_topics{kind=\"key\"} 0"),
        "{m}"
    );
}

/// Register `web` on node `n{i}` with a check in `status`, through the catalog.
fn register_web(a: &Agent, i: usize, status: &str) {
    let body = format!(
        r#"{{"Node":"n{i}","Address":"10.0.0.{i}","Service":{{"ID":"web","Service":"web",
        "Port":80}},"Check":{{"CheckID":"web-up","Name":"web up","ServiceID":"web",
        "Status":"{status}"}}}}"#
    );
    assert_eq!(
        a.http("PUT", "/v1/catalog/register", body.as_bytes())
            .status,
        200
    );
}

#[test]
fn fifteen_thousand_idle_health_long_polls() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(n) = long_polls_allowed(15_000) else {
        return;
    };
    let a = agent_for_many("scale-health");
    for i in 1..=3 {
        register_web(&a, i, "passing");
    }
    let idx = a.http("GET", "/v1/health/service/web", b"").index();
    let before = rss_kib(a.child.id());
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        let req = format!(
            "GET /v1/health/service/web?passing&index={idx}&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        conns.push(s);
    }
    bytes_per_open_poll(&a, n, before, "/v1/health/service");

    // One instance's check fails: every waiter is answered, with the instance left out.
    let start = Instant::now();
    register_web(&a, 2, "critical");
    let answered = eventually(Duration::from_secs(30), || {
        (gauge(&a, "consul_http_blocking_queries") == 0).then_some(start.elapsed())
    });
    let took = answered.expect("every long-poll answered");
    eprintln!("one change to web answered all {n} long-polls in {took:?}");
    // Each connection got its answer: read a few of them.
    for s in conns.iter_mut().step_by(n / 10) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\"n3\"") {
            let k = std::io::Read::read(s, &mut buf).expect("an answer");
            assert!(k > 0, "closed without an answer");
            got.extend_from_slice(&buf[..k]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            !text.contains("\"n2\""),
            "the critical instance is listed: {text}"
        );
    }
}

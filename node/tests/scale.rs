//! 10,000 idle long-polls on one dev agent: they cost little memory, a write wakes only the
//! waiters of its key, and disconnecting frees everything.

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

#[test]
fn ten_thousand_idle_long_polls() {
    let limit = raise_fd_limit();
    // 10,000 where the fd limit allows (it does on Linux defaults of 20k+ hard); fewer
    // otherwise, so the properties are still checked on a constrained CI box.
    let n: usize = 10_000.min((limit as usize).saturating_sub(500) / 100 * 100);
    if n < 200 {
        eprintln!("skipping: fd limit {limit} is too low");
        return;
    }
    const KEYS: usize = 100;
    let dir = temp_dir("scale");
    std::fs::write(
        dir.join("limits.json"),
        r#"{"limits":{"http_max_conns_per_client":30000}}"#,
    )
    .unwrap();
    let a = Agent::dev(&[&format!("-config-dir={}", dir.display())]);
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
    let all_open = eventually(Duration::from_secs(30), || {
        (gauge(&a, "consul_http_blocking_queries") == n as u64).then_some(())
    });
    assert!(
        all_open.is_some(),
        "only {} of {n} long-polls open",
        gauge(&a, "consul_http_blocking_queries")
    );
    let keys_watched = a
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .text();
    assert!(
        keys_watched.contains(&format!("consul_kv_watched_topics{{kind=\"key\"}} {KEYS}")),
        "{keys_watched}"
    );
    let after = rss_kib(a.child.id());
    let per_poll = (after.saturating_sub(before)) * 1024 / n as u64;
    eprintln!("{n} idle long-polls: RSS {before} KiB -> {after} KiB ({per_poll} bytes each)");
    // Mostly hyper's two 8 KiB connection buffers; Go's net/http (Consul) spends about as much.
    assert!(per_poll < 24 * 1024, "{per_poll} bytes per idle long-poll");

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

//! A real three-server cluster: three `tribune agent` processes on 127.0.x.1-3 with the
//! default ports, `bootstrap_expect: 3` and `retry_join`, fjall data dirs, kill -9.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_tribune");

struct Server {
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args([
                "agent",
                &format!("-node=n{}", self.ip.rsplit('.').next().unwrap()),
            ])
            .arg(format!("-config-dir={}", self.dir.join("config").display()))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok(); // SIGKILL
            c.wait().ok();
        }
    }

    fn http(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
        http(&format!("{}:8500", self.ip), method, path, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    common::try_http_at(addr, method, path, body)
        .ok()
        .map(|r| (r.status, r.text()))
}

/// Three servers on 127.0.<subnet>.1-3 (each test its own subnet: tests run in parallel).
fn cluster(name: &str, subnet: u8) -> Vec<Server> {
    cluster_with(name, subnet, |_, _| {})
}

/// [`cluster`], with `edit(i, config)` changing server i's config first.
fn cluster_with(
    name: &str,
    subnet: u8,
    edit: impl Fn(usize, &mut serde_json::Value),
) -> Vec<Server> {
    cluster_of_files(name, subnet, |i, ip, ips, key, data| {
        let mut config = serde_json::json!({
            "bootstrap_expect": 3,
            "bind_addr": ip,
            "client_addr": ip,
            "datacenter": "KE-DC",
            "data_dir": data,
            "log_level": "INFO",
            "server": true,
            "retry_join": ips,
            "encrypt": key,
            "ports": { "dns": -1 },
        });
        edit(i, &mut config);
        vec![("config.json".into(), config.to_string())]
    })
}

/// Three servers on 127.0.<subnet>.1-3, server i's config directory holding the files
/// `files(i, ip, all ips, gossip key, data_dir)` gives (name, text).
fn cluster_of_files(
    name: &str,
    subnet: u8,
    files: impl Fn(usize, &str, &[String], &str, &Path) -> Vec<(String, String)>,
) -> Vec<Server> {
    let key = keygen();
    let root = std::env::temp_dir().join(format!("tribune-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let ips: Vec<String> = (1..=3).map(|i| format!("127.0.{subnet}.{i}")).collect();
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            let dir = root.join(ip);
            std::fs::create_dir_all(dir.join("config")).unwrap();
            for (file, text) in files(i, ip, &ips, &key, &dir.join("data")) {
                std::fs::write(dir.join("config").join(file), text).unwrap();
            }
            let mut s = Server {
                ip: ip.clone(),
                dir,
                child: None,
            };
            s.start();
            s
        })
        .collect()
}

/// The gossip key a server was configured with.
fn gossip_key(s: &Server) -> String {
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.dir.join("config/config.json")).unwrap())
            .unwrap();
    c["encrypt"].as_str().unwrap().to_string()
}

fn keygen() -> String {
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn members(ip: &str) -> String {
    let out = Command::new(BIN)
        .args(["members", &format!("-http-addr={ip}:8500")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Wait until `tribune members` on `ip` shows `want` alive members.
fn wait_alive(ip: &str, want: usize) -> String {
    let start = Instant::now();
    loop {
        let m = members(ip);
        if m.lines().filter(|l| l.contains(" alive ")).count() == want {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{want} alive members never showed on {ip}:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The leader every live server agrees on, once they do.
fn wait_leader(servers: &[Server], within: Duration) -> String {
    let start = Instant::now();
    while start.elapsed() < within {
        let views: Vec<Option<String>> = servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| {
                s.http("GET", "/v1/status/leader", b"")
                    .map(|(_, b)| b.trim().trim_matches('"').to_string())
            })
            .collect();
        if let Some(Some(first)) = views.first() {
            if !first.is_empty() && views.iter().all(|v| v.as_deref() == Some(first.as_str())) {
                return first.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no agreed leader within {within:?}");
}

fn put(s: &Server, key: &str, value: &str) -> bool {
    let reply = s.http("PUT", &format!("/v1/kv/{key}"), value.as_bytes());
    matches!(reply, Some((200, b)) if b.trim() == "true")
}

fn get_raw(s: &Server, key: &str, stale: bool) -> Option<String> {
    let q = if stale { "?raw&stale" } else { "?raw" };
    match s.http("GET", &format!("/v1/kv/{key}{q}"), b"") {
        Some((200, b)) => Some(b),
        _ => None,
    }
}

/// A Prometheus sample from `/v1/agent/metrics?format=prometheus`.
fn metric(s: &Server, sample: &str) -> u64 {
    let (_, text) = s
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
}

/// `X-Consul-LastContact` of a stale read on `s`.
fn last_contact(s: &Server) -> u64 {
    let r = common::try_http_at(
        &format!("{}:8500", s.ip),
        "GET",
        "/v1/kv/redis/config/k0?stale",
        b"",
    )
    .unwrap();
    r.header("X-Consul-LastContact")
        .expect("X-Consul-LastContact")
        .parse()
        .unwrap()
}

fn leader_index(servers: &[Server], leader: &str) -> usize {
    let ip = leader.split(':').next().unwrap();
    servers
        .iter()
        .position(|s| s.ip == ip)
        .expect("leader is one of ours")
}

/// A number in `Stats.raft` of `/v1/agent/self`.
fn raft_stat(s: &Server, key: &str) -> u64 {
    let (_, body) = s.http("GET", "/v1/agent/self", b"").unwrap();
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    me["Stats"]["raft"][key]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {me}"))
}

#[test]
fn three_servers_elect_replicate_survive_kill9_and_catch_up() {
    // Snapshots every 16 entries (8 kept behind): they are built, written and restored
    // from fjall in this test, and the restarted server is further behind than the log.
    let mut servers = cluster_with("kill", 1, |_, c| {
        c["raft_snapshot_threshold"] = 16.into();
        c["raft_snapshot_interval"] = "100ms".into();
    });
    let leader = wait_leader(&servers, Duration::from_secs(20));
    assert!(
        leader.ends_with(":8300"),
        "leader is a server RPC address: {leader}"
    );
    // The walkthrough's `members` table, seen from every server.
    for s in &servers {
        let table = wait_alive(&s.ip, 3);
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Segment"]
        );
        for (row, peer) in lines.zip(&servers) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cols[1], format!("{}:8301", peer.ip), "{table}");
            assert_eq!(&cols[2..4], ["alive", "server"], "{table}");
            assert_eq!(&cols[5..], ["2", "ke-dc", "<all>"], "{table}");
        }
    }
    let (_, peers) = servers[0].http("GET", "/v1/status/peers", b"").unwrap();
    for s in &servers {
        assert!(peers.contains(&format!("{}:8300", s.ip)), "{peers}");
    }
    // Servers find each other on the WAN pool through the LAN (flood join).
    let start = Instant::now();
    let wan = loop {
        let out = Command::new(BIN)
            .args([
                "members",
                "-wan",
                &format!("-http-addr={}:8500", servers[0].ip),
            ])
            .output()
            .unwrap();
        let table = String::from_utf8(out.stdout).unwrap();
        if table.lines().filter(|l| l.contains(" alive ")).count() == 3 {
            break table;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the WAN pool never showed three servers:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for s in &servers {
        let name = format!("n{}.ke-dc", s.ip.rsplit('.').next().unwrap());
        assert!(
            wan.lines()
                .any(|l| l.starts_with(&name) && l.contains(&format!("{}:8302", s.ip))),
            "{name}:\n{wan}"
        );
    }

    // Writes through any server; reads through any other.
    for (i, s) in servers.iter().enumerate() {
        assert!(
            put(s, &format!("redis/config/k{i}"), &format!("v{i}")),
            "write via {}",
            s.ip
        );
    }
    for s in &servers {
        for i in 0..3 {
            assert_eq!(
                get_raw(s, &format!("redis/config/k{i}"), false).as_deref(),
                Some(format!("v{i}").as_str())
            );
        }
    }

    // Raft metrics: the leader counted its commits; followers hear from it often.
    let li = leader_index(&servers, &leader);
    assert!(metric(&servers[li], "consul_raft_commit_time_ms_count") >= 1);
    assert_eq!(
        metric(
            &servers[li],
            "consul_raft_commit_time_ms_bucket{le=\"+Inf\"}"
        ),
        metric(&servers[li], "consul_raft_commit_time_ms_count")
    );
    assert_eq!(metric(&servers[li], "consul_raft_state_leader"), 1);
    assert_eq!(
        last_contact(&servers[li]),
        0,
        "the leader's last contact is 0"
    );
    // `Stats` of /v1/agent/self (what `tribune info` prints and exporters read).
    for (i, s) in servers.iter().enumerate() {
        let (_, body) = s.http("GET", "/v1/agent/self", b"").unwrap();
        let me: serde_json::Value = serde_json::from_str(&body).unwrap();
        let stats = &me["Stats"];
        assert_eq!(stats["serf_lan"]["members"], "3", "{stats}");
        assert_eq!(stats["serf_lan"]["encrypted"], "true", "{stats}");
        assert_eq!(stats["serf_wan"]["members"], "3", "{stats}");
        assert_eq!(
            stats["raft"]["state"],
            if i == li { "Leader" } else { "Follower" },
            "{stats}"
        );
        assert_eq!(stats["raft"]["num_peers"], "2", "{stats}");
    }
    // The Raft configuration names each server by its real Raft id (the `raft-id` file in
    // its data dir) and node name, all voters.
    let (_, body) = servers[li]
        .http("GET", "/v1/operator/raft/configuration", b"")
        .unwrap();
    let conf: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = conf["Servers"]
        .as_array()
        .unwrap_or_else(|| panic!("{conf}"));
    assert_eq!(listed.len(), 3, "{conf}");
    for s in &servers {
        let id = std::fs::read_to_string(s.dir.join("data/raft-id"))
            .unwrap()
            .trim()
            .to_string();
        let name = format!("n{}", s.ip.rsplit('.').next().unwrap());
        let entry = listed
            .iter()
            .find(|e| e["ID"] == id.as_str())
            .unwrap_or_else(|| panic!("raft id {id} not in {conf}"));
        assert_eq!(entry["Node"], name.as_str(), "{conf}");
        assert_eq!(entry["Voter"], true, "{conf}");
    }
    for (i, s) in servers.iter().enumerate().filter(|(i, _)| *i != li) {
        assert!(
            last_contact(s) < 1_000,
            "follower {i} has not heard from the leader for {} ms",
            last_contact(s)
        );
        assert!(metric(s, "consul_raft_leader_changes") >= 1);
    }

    // kill -9 the leader: a new one is elected and writes continue.
    servers[li].kill9();
    let other = (li + 1) % 3;
    let killed_at = Instant::now();
    while !put(&servers[other], "after/kill", "1") {
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no write succeeded after the leader died"
        );
    }
    let new_leader = wait_leader(&servers, Duration::from_secs(15));
    assert_ne!(new_leader, leader);
    let ni = leader_index(&servers, &new_leader);
    assert_eq!(
        metric(&servers[ni], "consul_raft_state_leader"),
        1,
        "the new leader counted its election"
    );
    assert!(
        metric(&servers[ni], "consul_raft_leader_changes") >= 2,
        "the new leader saw two leaders"
    );
    // Writes go on until the new leader's snapshot is more than the 8 kept entries past
    // what the killed server had (its log is purged behind the snapshot), so the restarted
    // server is further behind than the log.
    let behind = raft_stat(&servers[ni], "applied_index");
    let start = Instant::now();
    let mut i = 0;
    while i < 20 || raft_stat(&servers[ni], "last_snapshot_index") <= behind + 8 {
        assert!(put(&servers[other], &format!("during/{i}"), "x"));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the new leader took no snapshot past {behind}"
        );
        i += 1;
    }

    // The killed server restarts from its data dir and catches up.
    servers[li].start();
    let start = Instant::now();
    loop {
        if get_raw(&servers[li], "during/19", true).as_deref() == Some("x")
            && get_raw(&servers[li], "redis/config/k2", true).as_deref() == Some("v2")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "restarted server did not catch up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every server takes snapshots on its schedule (every 100-200 ms here).
    for s in servers.iter() {
        let start = Instant::now();
        while raft_stat(s, "last_snapshot_index") < 16 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: no snapshot past 16",
                s.ip
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Operator removal of a dead server (a live one would be added back by the leader, as
    // in Consul): the other two keep serving.
    servers[li].kill9();
    let gone = format!("{}:8300", servers[li].ip);
    let (status, body) = servers[other]
        .http(
            "DELETE",
            &format!("/v1/operator/raft/peer?address={gone}"),
            b"",
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (_, peers) = servers[other].http("GET", "/v1/status/peers", b"").unwrap();
    assert!(
        !peers.contains(&gone) && peers.matches(":8300").count() == 2,
        "{peers}"
    );
    assert!(put(&servers[other], "after/remove", "1"));
    let (status, _) = servers[other]
        .http(
            "DELETE",
            "/v1/operator/raft/peer?address=10.9.9.9:8300",
            b"",
        )
        .unwrap();
    assert_eq!(status, 500, "an unknown peer is an error");
}

#[test]
fn acknowledged_writes_survive_kill9_of_every_server() {
    let mut servers = cluster("power", 2);
    wait_leader(&servers, Duration::from_secs(20));
    for i in 0..100 {
        assert!(
            put(&servers[i % 3], &format!("durable/{i:03}"), &i.to_string()),
            "write {i}"
        );
    }
    // Power loss: every server dies at once, then all come back.
    servers.iter_mut().for_each(Server::kill9);
    servers.iter_mut().for_each(Server::start);
    wait_leader(&servers, Duration::from_secs(20));
    for i in 0..100 {
        let key = format!("durable/{i:03}");
        let start = Instant::now();
        while get_raw(&servers[0], &key, false).as_deref() != Some(i.to_string().as_str()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "acknowledged write {key} lost"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_node_with_the_wrong_encrypt_key_never_gets_in() {
    let servers = cluster("key", 3);
    wait_leader(&servers, Duration::from_secs(20));
    wait_alive(&servers[0].ip, 3);
    let dir = std::env::temp_dir().join(format!("tribune-cluster-intruder-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let config = serde_json::json!({
        "bind_addr": "127.0.3.9", "client_addr": "127.0.3.9", "datacenter": "KE-DC",
        "data_dir": dir.join("data"), "encrypt": keygen(), "server": false,
        "retry_join": [servers[0].ip.clone()], "ports": { "dns": -1 },
    });
    std::fs::write(dir.join("config/config.json"), config.to_string()).unwrap();
    let mut intruder = Server {
        ip: "127.0.3.9".into(),
        dir,
        child: None,
    };
    intruder.start();
    // Give it several join retries and gossip rounds.
    std::thread::sleep(Duration::from_secs(4));
    for s in &servers {
        let table = members(&s.ip);
        assert!(
            !table.contains("127.0.3.9"),
            "the intruder appears on {}:\n{table}",
            s.ip
        );
    }
    let own = members("127.0.3.9");
    assert_eq!(
        own.lines().count(),
        2,
        "the intruder sees only itself:\n{own}"
    );
    // Its packets were dropped and counted, not obeyed.
    let (_, metrics) = servers[0]
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .unwrap();
    let dropped: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("consul_serf_packets_dropped{pool=\"lan\",reason=\"decrypt_failed\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "no dropped packets counted:\n{metrics}");
    assert!(
        metrics.contains("consul_serf_members{pool=\"lan\",state=\"alive\"} 3"),
        "{metrics}"
    );
}

/// A client agent's node name, as its `/v1/agent/self` reports it.
fn client_node_name(s: &Server) -> String {
    let (_, body) = s.http("GET", "/v1/agent/self", b"").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["Config"]["NodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn peers(s: &Server) -> String {
    s.http("GET", "/v1/status/peers", b"")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// Wait until `s` reports `want` Raft peers and return them.
fn wait_peers(s: &Server, want: usize, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let p = peers(s);
        if p.matches(":8300").count() == want {
            return p;
        }
        assert!(
            start.elapsed() < within,
            "{want} peers never showed on {}: {p}",
            s.ip
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tribune leave` (graceful): the server leaves gossip and the Raft configuration, so the
/// quorum shrinks; restarted, it rejoins through `retry_join` and the leader makes it a
/// voter again. A leaving leader hands over to one of the others.
#[test]
fn graceful_leave_shrinks_the_cluster_and_a_restart_rejoins() {
    let mut servers = cluster("leave", 4);
    let leader = wait_leader(&servers, Duration::from_secs(20));
    wait_peers(&servers[0], 3, Duration::from_secs(10));
    let li = leader_index(&servers, &leader);
    let fi = (li + 1) % 3;
    let other = (li + 2) % 3;

    let out = Command::new(BIN)
        .args(["leave", &format!("-http-addr={}:8500", servers[fi].ip)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Graceful leave complete"),
        "{out:?}"
    );
    let status = servers[fi].child.as_mut().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "the agent exits 0 after a leave: {status}"
    );
    servers[fi].child = None;
    let p = wait_peers(&servers[li], 2, Duration::from_secs(10));
    assert!(!p.contains(&servers[fi].ip), "{p}");
    let table = members(&servers[li].ip);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&servers[fi].ip) && l.contains(" left ")),
        "{table}"
    );
    assert!(put(&servers[other], "while/away", "1"));

    // Restart: it rejoins, becomes a voter again and catches up.
    servers[fi].start();
    let p = wait_peers(&servers[li], 3, Duration::from_secs(20));
    assert!(p.contains(&servers[fi].ip), "{p}");
    assert_eq!(
        get_raw(&servers[fi], "while/away", false).as_deref(),
        Some("1")
    );

    // The leader leaves: one of the two others leads, and the cluster keeps writing.
    let out = Command::new(BIN)
        .args(["leave", &format!("-http-addr={}:8500", servers[li].ip)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    servers[li].child.as_mut().unwrap().wait().unwrap();
    servers[li].child = None;
    let new_leader = wait_leader(&servers, Duration::from_secs(15));
    assert_ne!(new_leader, leader);
    let p = wait_peers(&servers[other], 2, Duration::from_secs(10));
    assert!(!p.contains(&servers[li].ip), "{p}");
    assert!(put(&servers[fi], "after/leader/left", "1"));
}

/// Servers that expect different cluster sizes never bootstrap (Consul's rule), and say why.
#[test]
fn mismatched_bootstrap_expect_never_elects() {
    // The third server expects 2: without the rule, it and either other could bootstrap.
    let servers = cluster_with("expect", 5, |i, c| {
        if i == 2 {
            c["bootstrap_expect"] = serde_json::json!(2);
        }
    });
    wait_alive(&servers[0].ip, 3);
    std::thread::sleep(Duration::from_secs(4));
    for s in &servers {
        let leader = s
            .http("GET", "/v1/status/leader", b"")
            .map(|(_, b)| b.trim().to_string());
        assert_eq!(leader.as_deref(), Some("\"\""), "{} elected a leader", s.ip);
    }
    let log = std::fs::read_to_string(servers[2].dir.join("agent.log")).unwrap();
    assert!(log.contains("has a conflicting expect value"), "{log}");
}

/// A client agent (not a server) forwards KV and status requests to the servers over
/// server RPC: writes, reads, blocking queries, its own config watches, the size limit.
#[test]
fn a_client_agent_forwards_to_the_servers() {
    let servers = cluster("client", 6);
    let leader = wait_leader(&servers, Duration::from_secs(20));
    let dir = std::env::temp_dir().join(format!(
        "tribune-cluster-client-agent-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let fired = dir.join("fired.json");
    let key = gossip_key(&servers[0]);
    let handler = format!("cat > {f}.tmp && mv {f}.tmp {f}", f = fired.display());
    let config = serde_json::json!({
        "bind_addr": "127.0.6.4", "client_addr": "127.0.6.4", "datacenter": "KE-DC",
        "data_dir": dir.join("data"), "encrypt": key, "server": false,
        "retry_join": [servers[0].ip.clone()], "ports": { "dns": -1 },
        "limits": { "http_max_conns_per_client": 1000 },
        "watches": [{"type": "key", "key": "via/watched", "handler_type": "script",
                     "args": ["sh", "-c", handler]}],
    });
    std::fs::write(dir.join("config/config.json"), config.to_string()).unwrap();
    let mut client = Server {
        ip: "127.0.6.4".into(),
        dir,
        child: None,
    };
    client.start();
    wait_alive(&client.ip, 4);

    let out = Command::new(BIN)
        .args([
            "kv",
            "put",
            "-http-addr=127.0.6.4:8500",
            "via/client",
            "hello",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Success! Data written to: via/client\n",
        "{out:?}"
    );
    assert_eq!(
        get_raw(&servers[0], "via/client", false).as_deref(),
        Some("hello")
    );
    let r = common::try_http_at("127.0.6.4:8500", "GET", "/v1/kv/via/client", b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(
        client
            .http("GET", "/v1/status/leader", b"")
            .unwrap()
            .1
            .trim(),
        format!("\"{leader}\"")
    );

    // A blocking query through the client wakes on a write through a server.
    let index = r.index();
    let waiter = std::thread::spawn(move || {
        http(
            "127.0.6.4:8500",
            "GET",
            &format!("/v1/kv/via/client?index={index}&wait=20s&raw"),
            b"",
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(put(&servers[1], "via/client", "again"));
    let woke = Instant::now();
    assert_eq!(waiter.join().unwrap(), Some((200, "again".to_string())));
    assert!(
        woke.elapsed() < Duration::from_secs(5),
        "the blocking query did not wake on the write"
    );

    // The client's own config watch fires on a write through a server.
    assert!(put(&servers[2], "via/watched", "7"));
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&fired) {
            if text.contains("\"Value\":\"Nw==\"") {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the client's watch never fired with the value"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A service registered with the client reaches the catalog on the servers by
    // anti-entropy (through the forwarding path), its TTL check's updates follow, and
    // deregistering takes it out again.
    let svc = br#"{"name": "pay", "id": "pay-1", "port": 7000,
        "check": {"id": "pay-ttl", "ttl": "30s"}}"#;
    let r = client.http("PUT", "/v1/agent/service/register", svc);
    assert_eq!(r.as_ref().map(|(s, _)| *s), Some(200), "{r:?}");
    let pay_status = |s: &Server| -> Option<String> {
        let (_, body) = s.http("GET", "/v1/health/service/pay", b"")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let entry = v.as_array()?.first()?.clone();
        assert_eq!(entry["Node"]["Node"], client_node_name(&client), "{entry}");
        let checks = entry["Checks"].as_array()?.clone();
        let c = checks.iter().find(|c| c["CheckID"] == "pay-ttl")?;
        c["Status"].as_str().map(str::to_string)
    };
    let seen = common::eventually(Duration::from_secs(10), || {
        (pay_status(&servers[1]).as_deref() == Some("critical")).then_some(())
    });
    assert!(
        seen.is_some(),
        "the client's service never reached the catalog"
    );
    let r = client.http("PUT", "/v1/agent/check/pass/pay-ttl", b"");
    assert_eq!(r.map(|(s, _)| s), Some(200));
    let seen = common::eventually(Duration::from_secs(10), || {
        (pay_status(&servers[2]).as_deref() == Some("passing")).then_some(())
    });
    assert!(seen.is_some(), "the check's pass never reached the catalog");
    let r = client.http("PUT", "/v1/agent/service/deregister/pay-1", b"");
    assert_eq!(r.map(|(s, _)| s), Some(200));
    let gone = common::eventually(Duration::from_secs(10), || {
        let (_, body) = servers[0].http("GET", "/v1/catalog/service/pay", b"")?;
        (body.trim() == "[]").then_some(())
    });
    assert!(
        gone.is_some(),
        "the deregistered service stays in the catalog"
    );

    // Too large a value: 413, nothing stored.
    let big = vec![b'x'; 512 * 1024 + 1];
    assert_eq!(
        client.http("PUT", "/v1/kv/via/big", &big).map(|(s, _)| s),
        Some(413)
    );
    assert_eq!(get_raw(&servers[0], "via/big", false), None);

    // A server runs at most 256 forwarded requests at once: 300 long-polls through the
    // client (which sticks to one server) get 429s beyond that, and the cluster keeps
    // writing meanwhile.
    let index = common::try_http_at("127.0.6.4:8500", "GET", "/v1/kv/via/client", b"")
        .unwrap()
        .index();
    let polls: Vec<_> = (0..300)
        .map(|_| {
            std::thread::spawn(move || {
                http(
                    "127.0.6.4:8500",
                    "GET",
                    &format!("/v1/kv/via/client?index={index}&wait=4s"),
                    b"",
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        put(&servers[0], "during/polls", "1"),
        "writes go on under 300 long-polls"
    );
    let replies: Vec<(u16, String)> = polls
        .into_iter()
        .map(|p| p.join().unwrap().unwrap_or_default())
        .collect();
    let busy = replies
        .iter()
        .filter(|(s, b)| *s == 429 && b.contains("too many forwarded requests"))
        .count();
    assert!(
        busy > 0 && replies.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{replies:?}"
    );
}

/// The gossip snapshot: an agent joined by hand (`tribune join`, no join addresses in its
/// config) finds its peers again after a crash; after a graceful leave it does not, unless
/// `-rejoin` (`rejoin_after_leave`).
#[test]
fn the_gossip_snapshot_rejoins_after_a_crash_but_not_after_a_leave() {
    let servers = cluster("snapshot", 7);
    wait_leader(&servers, Duration::from_secs(20));
    let dir = std::env::temp_dir().join(format!(
        "tribune-cluster-snapshot-agent-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let key = gossip_key(&servers[0]);
    let config = serde_json::json!({
        "bind_addr": "127.0.7.4", "client_addr": "127.0.7.4", "datacenter": "KE-DC",
        "data_dir": dir.join("data"), "encrypt": key, "server": false, "ports": { "dns": -1 },
    });
    std::fs::write(dir.join("config/config.json"), config.to_string()).unwrap();
    let mut agent = Server {
        ip: "127.0.7.4".into(),
        dir: dir.clone(),
        child: None,
    };
    agent.start();
    std::thread::sleep(Duration::from_secs(1));
    let out = Command::new(BIN)
        .args(["join", "-http-addr=127.0.7.4:8500", &servers[0].ip])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_alive(&agent.ip, 4);
    std::thread::sleep(Duration::from_secs(6)); // a snapshot is written

    // A crash: it comes back by itself.
    agent.kill9();
    agent.start();
    wait_alive(&agent.ip, 4);

    // A graceful leave: it stays alone when restarted...
    std::thread::sleep(Duration::from_secs(1));
    let out = Command::new(BIN)
        .args(["leave", "-http-addr=127.0.7.4:8500"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    agent.child.as_mut().unwrap().wait().unwrap();
    agent.child = None;
    agent.start();
    std::thread::sleep(Duration::from_secs(4));
    let own = members(&agent.ip);
    assert_eq!(
        own.lines().filter(|l| l.contains(" alive ")).count(),
        1,
        "it rejoined after a leave:\n{own}"
    );
    agent.kill9();

    // ...unless told to rejoin.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "agent",
            "-node=n4",
            "-rejoin",
            &format!("-config-dir={}", dir.join("config").display()),
        ])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while members(&agent.ip)
        .lines()
        .filter(|l| l.contains(" alive "))
        .count()
        != 4
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "-rejoin did not rejoin:\n{}",
            members(&agent.ip)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().ok();
    child.wait().ok();
}

/// The walkthrough's three servers, configured as Consul's packages lay it out: `.hcl` files
/// in each server's config directory, in HCL's block forms. They elect a leader, `members`
/// shows the three alive, and a write on one server reads back on another.
#[test]
fn three_servers_from_hcl_files() {
    let servers = cluster_of_files("hcl", 8, |_, ip, ips, key, data| {
        let join: Vec<String> = ips.iter().map(|ip| format!("{ip:?}")).collect();
        let consul = format!(
            r#"# consul.hcl
datacenter = "KE-DC"
data_dir   = {data:?}
client_addr = "{ip}"
bind_addr   = "{ip}"
encrypt    = "{key}"
retry_join = [{join}]
log_level  = "INFO"
leave_on_terminate = true
rejoin_after_leave = true

dns_config {{
  enable_truncate = true
}}
"#,
            join = join.join(", ")
        );
        let server = r#"# server.hcl
server           = true
bootstrap_expect = 3

ports {
  dns = -1
}
performance {
  raft_multiplier = 1
}
"#;
        vec![
            ("consul.hcl".into(), consul),
            ("server.hcl".into(), server.into()),
        ]
    });
    let leader = wait_leader(&servers, Duration::from_secs(20));
    assert!(leader.ends_with(":8300"), "{leader}");
    for s in &servers {
        let table = wait_alive(&s.ip, 3);
        assert!(table.contains("ke-dc"), "{table}");
    }
    let start = Instant::now();
    while !put(&servers[0], "hcl/key", "from-hcl") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "put never succeeded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get_raw(&servers[2], "hcl/key", false).as_deref(),
        Some("from-hcl")
    );
    // The files were read as they were meant: no key warned about.
    for s in &servers {
        let log = std::fs::read_to_string(s.dir.join("agent.log")).unwrap();
        assert!(!log.contains("config key"), "{log}");
    }
}

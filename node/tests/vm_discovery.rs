//! A real Prometheus-style discovery engine finds its targets through Tribune: VictoriaMetrics'
//! `consul_sd_configs` against a client agent of a three-server cluster (127.0.30.1-3, the
//! client on 127.0.30.4, default ports). Two `/metrics` servers of this process are
//! registered on the client as service `web`; VictoriaMetrics must discover both, scrape
//! them with the `__meta_consul_*` labels relabelled onto their samples, drop the one whose
//! check turns critical or that is in maintenance, take it back once it passes again, and
//! forget it once it is deregistered, scraping the other all along.
//!
//! Needs Debian's `victoria-metrics` (1.79; Debian's Prometheus has no Consul discovery):
//! without it the test says `SKIPPED` and passes, unless `CI` is set.

mod common;

use std::io::Read;
use std::io::Write;
use std::net::TcpListener;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;
use serde_json::Value;

/// This test's loopback subnet: servers on .1-.3, the client agent on .4.
const SUBNET: u8 = 30;
/// The datacenter as configured; agents report it lowercased, as Consul does.
const DC: &str = "VM-DC";
/// The metric each `/metrics` server exposes.
const METRIC: &str = "tribune_vm_demo";
/// How long any one step may take to show (a loaded 2-core machine runs this).
const STEP: Duration = Duration::from_secs(30);

/// A child process that is killed and reaped when dropped (a panicking test too), with
/// the file its output goes to.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Run `cmd` with stdout and stderr appended to `log`.
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The log's last `n` lines.
    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panic, with the log's tail, if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.tail(40));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `tribune agent` with its config directory, on `ip` with the default ports.
fn start_agent(root: &Path, name: &str, config: Value) -> Proc {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/config.json"), config.to_string()).unwrap();
    let mut cmd = Command::new(common::BIN);
    cmd.arg("agent")
        .arg(format!("-node={name}"))
        .arg(format!("-config-dir={}", dir.join("config").display()));
    Proc::spawn(name, &mut cmd, dir.join("agent.log"))
}

/// The config every agent here shares: `server` or a client, joining the three servers.
fn agent_config(ip: &str, server: bool, key: &str, data: &Path) -> Value {
    let servers: Vec<String> = (1..=3).map(|i| format!("127.0.{SUBNET}.{i}")).collect();
    let mut c = json!({
        "bind_addr": ip,
        "client_addr": ip,
        "datacenter": DC,
        "data_dir": data,
        "log_level": "INFO",
        "server": server,
        "retry_join": servers,
        "retry_interval": "1s",
        "encrypt": key,
        "ports": { "dns": -1 },
    });
    if server {
        c["bootstrap_expect"] = 3.into();
    }
    c
}

/// A gossip key from `tribune keygen`.
fn keygen() -> String {
    let out = Command::new(common::BIN).arg("keygen").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `GET path` on the agent at `ip:8500`: status and body, or `None` if it does not answer.
fn agent_get(ip: &str, path: &str) -> Option<(u16, String)> {
    let r = common::try_http_at(&format!("{ip}:8500"), "GET", path, b"").ok()?;
    Some((r.status, r.text()))
}

/// `PUT path` on the agent at `ip:8500`, which must answer 200.
fn agent_put(ip: &str, path: &str, body: &str) {
    let r = common::try_http_at(&format!("{ip}:8500"), "PUT", path, body.as_bytes())
        .unwrap_or_else(|e| panic!("PUT {path} on {ip}: {e}"));
    assert_eq!(r.status, 200, "PUT {path} on {ip}: {}", r.text());
}

/// Wait until every agent in `ips` names the same, non-empty leader.
fn wait_leader(agents: &mut [Proc], ips: &[String]) {
    let start = Instant::now();
    loop {
        agents.iter_mut().for_each(Proc::assert_running);
        let views: Vec<Option<String>> = ips
            .iter()
            .map(|ip| agent_get(ip, "/v1/status/leader"))
            .map(|r| r.map(|(_, b)| b.trim().trim_matches('"').to_string()))
            .collect();
        if let Some(Some(first)) = views.first() {
            if !first.is_empty() && views.iter().all(|v| v.as_ref() == Some(first)) {
                return;
            }
        }
        assert!(
            start.elapsed() < STEP,
            "no agreed leader within {STEP:?}: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `/metrics` endpoint in Prometheus' text format on a free 127.0.0.1 port, serving one
/// sample of [`METRIC`] labelled `flavour`, counting the scrapes it answers; it stops when
/// dropped.
struct MetricsServer {
    port: u16,
    scrapes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl MetricsServer {
    fn start(flavour: &str, value: u64) -> MetricsServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let scrapes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let body = format!(
            "# HELP {METRIC} A value each test server sets.\n# TYPE {METRIC} gauge\n\
             {METRIC}{{flavour=\"{flavour}\"}} {value}\n"
        );
        let (count, quit) = (scrapes.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if quit.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (body, count) = (body.clone(), count.clone());
                std::thread::spawn(move || serve_metrics(conn, &body, &count));
            }
        });
        MetricsServer {
            port,
            scrapes,
            stop,
        }
    }

    fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::SeqCst)
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answer the requests of one connection: `GET /metrics` with `body`, anything else 404.
fn serve_metrics(mut conn: TcpStream, body: &str, scrapes: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let reply = if head.starts_with("GET /metrics ") {
                scrapes.fetch_add(1, Ordering::SeqCst);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            };
            if conn.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) if buf.len() + n <= 64 * 1024 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return,
        }
    }
}

/// The `victoria-metrics` binary on `PATH`, if installed.
fn find_victoria_metrics() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("victoria-metrics"))
        .find(|p| p.is_file())
}

/// The scrape config: every `web` instance tagged `metrics` on a node in rack r1 that the
/// client agent knows, every second, kept only while passing, with its Consul service,
/// datacenter, instance ID, node, node address and metadata and tags as labels.
fn scrape_config(agent: &str) -> String {
    format!(
        "global:
  scrape_interval: 1s
scrape_configs:
  - job_name: tribune-web
    scrape_interval: 1s
    scrape_timeout: 1s
    consul_sd_configs:
      - server: \"{agent}\"
        services: [web]
        tags: [metrics]
        node_meta:
          rack: r1
    relabel_configs:
      - source_labels: [__meta_consul_health]
        regex: passing
        action: keep
      - source_labels: [__meta_consul_service]
        target_label: service
      - source_labels: [__meta_consul_dc]
        target_label: dc
      - source_labels: [__meta_consul_service_id]
        target_label: service_id
      - source_labels: [__meta_consul_node]
        target_label: node
      - source_labels: [__meta_consul_address]
        target_label: node_address
      - source_labels: [__meta_consul_metadata_rack]
        target_label: rack
      - source_labels: [__meta_consul_tags]
        target_label: tags
      - source_labels: [__meta_consul_service_metadata_flavour]
        target_label: meta_flavour
"
    )
}

/// A running VictoriaMetrics, asked over HTTP.
struct Vm {
    proc: Proc,
    addr: String,
}

impl Vm {
    fn start(bin: &Path, dir: &Path, agent: &str) -> Vm {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("scrape.yml");
        std::fs::write(&config, scrape_config(agent)).unwrap();
        let addr = format!("127.0.0.1:{}", common::free_port());
        let mut cmd = Command::new(bin);
        cmd.arg(format!("-storageDataPath={}", dir.join("data").display()))
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!("-promscrape.config={}", config.display()))
            .arg("-promscrape.config.strictParse=true")
            .arg("-promscrape.consulSDCheckInterval=1s")
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .arg("-memory.allowedPercent=10")
            .arg("-loggerLevel=INFO");
        let proc = Proc::spawn("victoria-metrics", &mut cmd, dir.join("vm.log"));
        let mut vm = Vm { proc, addr };
        let start = Instant::now();
        while vm.get("/health").map(|b| b.trim().to_string()).as_deref() != Some("OK") {
            vm.proc.assert_running();
            assert!(
                start.elapsed() < STEP,
                "victoria-metrics never served /health"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        vm
    }

    /// The body of a 200 answer to `GET path`.
    fn get(&self, path: &str) -> Option<String> {
        let r = common::try_http_at(&self.addr, "GET", path, b"").ok()?;
        if r.status != 200 {
            return None;
        }
        let chunked = r
            .header("Transfer-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked { dechunk(&r.body)? } else { r.body };
        String::from_utf8(body).ok()
    }

    /// `GET path` as JSON whose `status` is `success`: its `data`.
    fn data(&self, path: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(&self.get(path)?).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The active targets: (labels, health) of each.
    fn targets(&self) -> Vec<(Value, String)> {
        let Some(data) = self.data("/api/v1/targets") else {
            return Vec::new();
        };
        let list = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.into_iter()
            .map(|t| {
                let health = t["health"].as_str().unwrap_or_default().to_string();
                (t["labels"].clone(), health)
            })
            .collect()
    }

    /// The `service_id` of each active target that is up, sorted.
    fn up_targets(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .targets()
            .into_iter()
            .filter(|(_, health)| health == "up")
            .map(|(labels, _)| labels["service_id"].as_str().unwrap_or("?").to_string())
            .collect();
        ids.sort();
        ids
    }

    /// The dropped targets' discovered labels.
    fn dropped(&self) -> Vec<Value> {
        self.data("/api/v1/targets")
            .and_then(|d| d["droppedTargets"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|t| t["discoveredLabels"].clone())
            .collect()
    }

    /// The instant query `q`'s series: (labels, value) of each, sorted by `service_id`.
    fn query(&self, q: &str) -> Vec<(Value, String)> {
        let path = format!(
            "/api/v1/query?query={}",
            form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        );
        let Some(data) = self.data(&path) else {
            return Vec::new();
        };
        let mut out: Vec<(Value, String)> = data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap_or_default().to_string();
                (s["metric"].clone(), value)
            })
            .collect();
        out.sort_by_key(|(m, _)| m["service_id"].as_str().unwrap_or_default().to_string());
        out
    }

    /// Wait until `f` holds, failing with `what`, the last value seen and VM's log.
    fn wait<T: std::fmt::Debug>(&mut self, what: &str, mut f: impl FnMut(&Vm) -> (bool, T)) {
        let start = Instant::now();
        loop {
            self.proc.assert_running();
            let (ok, seen) = f(self);
            if ok {
                println!("{what}: after {:?}", start.elapsed());
                return;
            }
            assert!(
                start.elapsed() < STEP,
                "{what} within {STEP:?}; last seen: {seen:?}\nvictoria-metrics log:\n{}",
                self.proc.tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// VictoriaMetrics' error and warning lines about Consul discovery.
    fn consul_complaints(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("\terror\t") || l.contains("\twarn\t"))
            .filter(|l| l.to_ascii_lowercase().contains("consul"))
            .map(str::to_string)
            .collect()
    }
}

/// A `Transfer-Encoding: chunked` body, decoded.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// The registration of instance `id` of `web` on `port` with `tags`, and a passing TTL
/// check `<id>-alive`.
fn web_instance(id: &str, flavour: &str, port: u16, tags: &[&str]) -> String {
    json!({
        "ID": id,
        "Name": "web",
        "Address": "127.0.0.1",
        "Port": port,
        "Tags": tags,
        "Meta": { "flavour": flavour },
        "Check": {
            "CheckID": format!("{id}-alive"),
            "Name": format!("{id} alive"),
            "TTL": "10m",
            "Status": "passing",
        },
    })
    .to_string()
}

/// Whether `id` is dropped with `__meta_consul_health` `health` while web-b is up alone:
/// (that, and what was seen).
fn dropped_as(vm: &Vm, id: &str, health: &str) -> (bool, (Vec<String>, Vec<Value>)) {
    let up = vm.up_targets();
    let dropped = vm.dropped();
    let seen = dropped
        .iter()
        .any(|l| l["__meta_consul_service_id"] == id && l["__meta_consul_health"] == health);
    (up == ["web-b"] && seen, (up, dropped))
}

/// Three servers and a client agent (node `web-host`, in rack r1), the client being where
/// services register and where VictoriaMetrics asks, as Consul is usually deployed.
fn start_cluster(root: &Path) -> Vec<Proc> {
    let key = keygen();
    let ips: Vec<String> = (1..=4).map(|i| format!("127.0.{SUBNET}.{i}")).collect();
    let agent = |i: usize, name: &str| {
        let mut config = agent_config(&ips[i], i < 3, &key, &root.join(name).join("data"));
        if i == 3 {
            config["node_meta"] = json!({ "rack": "r1" });
        }
        start_agent(root, name, config)
    };
    let mut agents: Vec<Proc> = (0..3).map(|i| agent(i, &format!("s{}", i + 1))).collect();
    wait_leader(&mut agents, &ips[..3]);
    agents.push(agent(3, "web-host"));
    wait_leader(&mut agents, &ips);
    agents
}

#[test]
fn victoria_metrics_discovers_scrapes_and_forgets_services_through_a_client_agent() {
    let Some(vm_bin) = find_victoria_metrics() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "victoria-metrics is not installed, and CI must run this test"
        );
        eprintln!("SKIPPED: victoria-metrics not installed");
        return;
    };
    let root = common::temp_dir("vm-discovery");
    let agents = start_cluster(&root);
    let client = format!("127.0.{SUBNET}.4");

    // VictoriaMetrics watches the catalog before there is anything to find.
    let mut vm = Vm::start(&vm_bin, &root.join("vm"), &format!("{client}:8500"));
    vm.wait("the Consul watcher started, with no targets", |vm| {
        let log = std::fs::read_to_string(&vm.proc.log).unwrap_or_default();
        let started = log.contains("started Consul service watcher");
        (started && vm.targets().is_empty(), vm.targets())
    });

    // web-a shows up (a new service name), web-c never does (it lacks the `metrics` tag the
    // scrape config asks for), then web-b joins (a new instance of a known service).
    let (a, b, c) = (
        MetricsServer::start("a", 11),
        MetricsServer::start("b", 22),
        MetricsServer::start("c", 33),
    );
    let register = |id: &str, flavour: &str, port: u16, tags: &[&str]| {
        let body = web_instance(id, flavour, port, tags);
        agent_put(&client, "/v1/agent/service/register", &body);
    };
    register("web-c", "c", c.port, &["other"]);
    register("web-a", "a", a.port, &["metrics"]);
    let catalog = || agent_get(&client, "/v1/health/service/web");
    vm.wait("web-a up as a target", |vm| {
        (vm.up_targets() == ["web-a"], (vm.targets(), catalog()))
    });
    register("web-b", "b", b.port, &["metrics"]);
    let both = ["web-a", "web-b"];
    vm.wait("web-a and web-b up as targets", |vm| {
        (vm.up_targets() == both, (vm.targets(), catalog()))
    });

    // The targets carry the relabelled `__meta_consul_*` labels.
    let dc = DC.to_lowercase();
    for (labels, _) in vm.targets() {
        let id = labels["service_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (flavour, port) = if id == "web-a" {
            ("a", a.port)
        } else {
            ("b", b.port)
        };
        assert_eq!(labels["service"], "web", "{labels}");
        assert_eq!(labels["dc"], dc.as_str(), "{labels}");
        assert_eq!(labels["node"], "web-host", "{labels}");
        assert_eq!(labels["node_address"], client.as_str(), "{labels}");
        assert_eq!(labels["rack"], "r1", "{labels}");
        assert_eq!(labels["tags"], ",metrics,", "{labels}");
        assert_eq!(labels["meta_flavour"], flavour, "{labels}");
        assert_eq!(labels["instance"], format!("127.0.0.1:{port}"), "{labels}");
    }

    // What it scraped is stored and queryable, each value with its target's labels.
    vm.wait("both servers scraped twice", |_| {
        let n = (a.scrapes(), b.scrapes());
        (n.0 >= 2 && n.1 >= 2, n)
    });
    let q = format!("{METRIC}{{job=\"tribune-web\"}}");
    vm.wait("both servers' samples queryable", |vm| {
        let got = vm.query(&q);
        let ok = got.len() == 2
            && got[0].1 == "11"
            && got[1].1 == "22"
            && got.iter().zip(["a", "b"]).all(|((m, _), f)| {
                m["flavour"] == f
                    && m["service_id"] == format!("web-{f}")
                    && m["service"] == "web"
                    && m["dc"] == dc.as_str()
            });
        (ok, got)
    });

    // web-a's check turns critical: it is dropped (its health seen as critical), web-b
    // stays; passing again, it is back. Likewise in maintenance, and out of it.
    agent_put(&client, "/v1/agent/check/fail/web-a-alive", "");
    vm.wait("web-a dropped once critical", |vm| {
        dropped_as(vm, "web-a", "critical")
    });
    agent_put(&client, "/v1/agent/check/pass/web-a-alive", "");
    vm.wait("web-a back once passing", |vm| {
        (vm.up_targets() == both, vm.targets())
    });
    let maintenance = "/v1/agent/service/maintenance/web-a?enable=true&reason=deploy";
    agent_put(&client, maintenance, "");
    vm.wait("web-a dropped in maintenance", |vm| {
        dropped_as(vm, "web-a", "maintenance")
    });
    agent_put(
        &client,
        "/v1/agent/service/maintenance/web-a?enable=false",
        "",
    );
    vm.wait("web-a back out of maintenance", |vm| {
        (vm.up_targets() == both, vm.targets())
    });

    // Deregistered, web-a is forgotten, its series going stale; web-b is still scraped.
    agent_put(&client, "/v1/agent/service/deregister/web-a", "");
    vm.wait("web-a forgotten once deregistered", |vm| {
        let ids: Vec<Value> = vm
            .targets()
            .iter()
            .map(|(l, _)| l["service_id"].clone())
            .collect();
        (ids == ["web-b"], ids)
    });
    vm.wait("only web-b's series left", |vm| {
        let got = vm.query(&q);
        let ok = got.len() == 1 && got[0].0["service_id"] == "web-b" && got[0].1 == "22";
        (ok, got)
    });
    let before = b.scrapes();
    vm.wait("web-b still scraped", |_| {
        let now = b.scrapes();
        (now >= before + 2, now)
    });
    assert_eq!(
        c.scrapes(),
        0,
        "web-c, without the `metrics` tag, was scraped"
    );

    let complaints = vm.consul_complaints();
    assert!(
        complaints.is_empty(),
        "victoria-metrics complained about Consul discovery:\n{}",
        complaints.join("\n")
    );
    drop(vm);
    drop(agents);
    let _ = std::fs::remove_dir_all(&root);
}

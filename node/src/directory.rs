//! Where the DNS interface finds what it answers about: a [`Directory`]. It offers the
//! catalog (nodes, services, checks) and the LAN gossip pool's nodes and servers.
//!
//! - Servers and `-dev` agents: [`StoreDirectory`], the local state machine's catalog
//!   (a stale read, as Consul's `allow_stale` default), with this agent and its LAN pool
//!   behind it for nodes the catalog does not have yet.
//! - Client agents have no catalog: [`ClientView`] keeps one small catalog per service
//!   name looked up, filled and kept current by a blocking query
//!   (`/v1/health/service/NAME?index=N&stale`) sent to the servers the way the agent
//!   forwards HTTP reads. At most [`VIEW_SERVICES_MAX`] names are kept, and when the view
//!   is full the least recently used name makes room (its loop is stopped); a name unused
//!   for [`VIEW_IDLE`] is dropped at its loop's next turn (within a minute more). The first
//!   lookup of a name waits at most [`FIRST_FILL_WAIT`] for its first answer. Node lookups
//!   on a client find the nodes of the services it keeps, then its LAN pool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::watch;
use tribune_core::catalog::Catalog;
use tribune_core::catalog::CatalogOp;
use tribune_core::catalog::CheckInfo;
use tribune_core::catalog::Health;
use tribune_core::catalog::NodeInfo;
use tribune_core::catalog::Registration;
use tribune_core::catalog::ServiceInfo;
use tribune_core::catalog::Weights;

use crate::forward::Forwarder;
use crate::serf::Pool;
use crate::store::BoxFuture;
use crate::store::Store;

/// Service names a client agent's view keeps at once. Each holds one blocking query
/// forwarded to a server, which runs at most `forward::FORWARDED_MAX` of them for all
/// agents: a quarter of that.
pub const VIEW_SERVICES_MAX: usize = 64;
/// A name of the view not looked up for this long is dropped.
pub const VIEW_IDLE: Duration = Duration::from_secs(180);
/// How long the first lookup of a name waits for its first fill.
pub const FIRST_FILL_WAIT: Duration = Duration::from_secs(2);
/// The `wait` of each blocking query of the view: its loop looks at least this often
/// whether its name is still used.
const VIEW_POLL_WAIT: Duration = Duration::from_secs(60);
/// Pause after a failed fill, before the next try.
const VIEW_RETRY: Duration = Duration::from_secs(1);
/// Largest `/v1/health/service` answer the view reads (a forwarded response is bounded by
/// the RPC frame too).
const VIEW_BODY_BYTES_MAX: usize = 8 << 20;

/// A node as DNS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    /// The server RPC port, for servers (the nodes of the `consul` service).
    pub server_port: Option<u16>,
}

/// What DNS answers about: the catalog, and the nodes of this datacenter's LAN pool.
pub trait Directory: Send + Sync {
    /// The alive node named `name` (case-insensitively), if there is one.
    fn node(&self, name: &str) -> Option<Node>;

    /// The alive servers: the nodes of the `consul` service, each with its RPC port.
    fn servers(&self) -> Vec<Node>;

    /// Run `f` on each catalog answers come from: with `service`, the one that holds that
    /// service's instances. Keep `f` short (it may run under the state machine's lock).
    fn with_catalogs(&self, _service: Option<&str>, _f: &mut dyn FnMut(&Catalog)) {}

    /// Make `service` answerable from local state (a client agent's view waits, bounded,
    /// for the name's first fill); a no-op where the catalog is local. False: it could not
    /// be (the servers did not answer in time), and the lookup fails (SERVFAIL).
    fn prepare<'a>(&'a self, _service: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }
}

/// A fixed list of nodes (tests, and any caller that has its nodes at hand).
impl Directory for [Node] {
    fn node(&self, name: &str) -> Option<Node> {
        self.iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    fn servers(&self) -> Vec<Node> {
        self.iter()
            .filter(|n| n.server_port.is_some())
            .cloned()
            .collect()
    }
}

impl Directory for Vec<Node> {
    fn node(&self, name: &str) -> Option<Node> {
        self.as_slice().node(name)
    }

    fn servers(&self) -> Vec<Node> {
        self.as_slice().servers()
    }
}

/// This agent and the alive members of its LAN pool (if gossip runs): a member is a server
/// when tagged `role=consul`, at the RPC port of its `port` tag.
pub struct LanDirectory {
    own: Node,
    lan: Option<Pool>,
}

impl LanDirectory {
    pub fn new(own: Node, lan: Option<Pool>) -> LanDirectory {
        LanDirectory { own, lan }
    }

    /// The alive members other than this agent, as nodes.
    fn members(&self) -> impl Iterator<Item = Node> + '_ {
        let members = self.lan.iter().flat_map(|p| p.members());
        // Consul's "alive" (status 1) includes suspect members.
        members
            .filter(|m| m.status == 1 && m.name != self.own.name)
            .map(|m| {
                let server = m.tags.get("role").is_some_and(|r| r == "consul");
                let server_port = m
                    .tags
                    .get("port")
                    .and_then(|p| p.parse().ok())
                    .filter(|_| server);
                Node {
                    name: m.name,
                    ip: m.addr.ip(),
                    server_port,
                }
            })
    }
}

impl Directory for LanDirectory {
    fn node(&self, name: &str) -> Option<Node> {
        if self.own.name.eq_ignore_ascii_case(name) {
            return Some(self.own.clone());
        }
        self.members().find(|n| n.name.eq_ignore_ascii_case(name))
    }

    fn servers(&self) -> Vec<Node> {
        let own = Some(self.own.clone()).filter(|n| n.server_port.is_some());
        own.into_iter()
            .chain(self.members().filter(|n| n.server_port.is_some()))
            .collect()
    }
}

/// A server's or `-dev` agent's directory: its own state machine's catalog, and the LAN
/// pool behind it.
pub struct StoreDirectory {
    store: Arc<dyn Store>,
    lan: LanDirectory,
}

impl StoreDirectory {
    pub fn new(store: Arc<dyn Store>, lan: LanDirectory) -> StoreDirectory {
        StoreDirectory { store, lan }
    }
}

impl Directory for StoreDirectory {
    fn node(&self, name: &str) -> Option<Node> {
        self.lan.node(name)
    }

    fn servers(&self) -> Vec<Node> {
        self.lan.servers()
    }

    fn with_catalogs(&self, _service: Option<&str>, f: &mut dyn FnMut(&Catalog)) {
        self.store.with_state(&mut |sm| f(sm.catalog()));
    }
}

/// One service name of a [`ClientView`].
struct ViewEntry {
    /// The instances as last read, in a catalog of their own (None before the first fill).
    catalog: watch::Receiver<Option<Arc<Catalog>>>,
    used: Instant,
    /// Which loop fills it: a name dropped and looked up again gets a new loop, and the
    /// old one stops.
    generation: u64,
    /// That loop, aborted when the entry makes room for another.
    task: tokio::task::AbortHandle,
}

/// A client agent's bounded local view of the catalog, one entry per service name looked
/// up (see the module docs).
pub struct ClientView {
    lan: LanDirectory,
    forward: Arc<Forwarder>,
    entries: Mutex<HashMap<String, ViewEntry>>,
    generations: std::sync::atomic::AtomicU64,
}

impl ClientView {
    pub fn new(lan: LanDirectory, forward: Arc<Forwarder>) -> Arc<ClientView> {
        Arc::new(ClientView {
            lan,
            forward,
            entries: Mutex::default(),
            generations: Default::default(),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, ViewEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry of `name` (marked used), started if it is new.
    fn entry(self: &Arc<Self>, name: &str) -> watch::Receiver<Option<Arc<Catalog>>> {
        let mut entries = self.entries();
        if let Some(e) = entries.get_mut(name) {
            e.used = Instant::now();
            return e.catalog.clone();
        }
        if entries.len() >= VIEW_SERVICES_MAX {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(n, _)| n.clone());
            // Its loop is stopped at once, so no more than the cap are ever running.
            if let Some(e) = oldest.and_then(|n| entries.remove(&n)) {
                e.task.abort();
            }
        }
        let (tx, rx) = watch::channel(None);
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Spawned under the lock: the loop's first look at its entry waits for it.
        let task = tokio::spawn(self.clone().keep(name.to_string(), generation, tx));
        entries.insert(
            name.to_string(),
            ViewEntry {
                catalog: rx.clone(),
                used: Instant::now(),
                generation,
                task: task.abort_handle(),
            },
        );
        rx
    }

    /// Whether `name` is still kept by loop `generation` and was used within
    /// [`VIEW_IDLE`]; drops it if idle.
    fn still_used(&self, name: &str, generation: u64) -> bool {
        let mut entries = self.entries();
        match entries.get(name) {
            Some(e) if e.generation != generation => false,
            Some(e) if e.used.elapsed() < VIEW_IDLE => true,
            Some(_) => {
                entries.remove(name);
                false
            }
            None => false,
        }
    }

    /// The loop of one name: a blocking query after another, each answer replacing the
    /// name's catalog, until the name is dropped.
    async fn keep(
        self: Arc<Self>,
        name: String,
        generation: u64,
        tx: watch::Sender<Option<Arc<Catalog>>>,
    ) {
        let mut index = 0u64;
        loop {
            if !self.still_used(&name, generation) {
                return;
            }
            match self.fetch(&name, index).await {
                Ok((catalog, next)) => {
                    // Consul's rule: an index that goes backwards starts over.
                    index = if next < index { 0 } else { next };
                    tx.send_replace(Some(Arc::new(catalog)));
                }
                Err(e) => {
                    tracing::debug!(service = %name, error = %e, "dns: view fill failed");
                    index = 0;
                    tokio::time::sleep(VIEW_RETRY).await;
                }
            }
        }
    }

    /// One `/v1/health/service/NAME` read through the servers, as a catalog.
    async fn fetch(&self, name: &str, index: u64) -> Result<(Catalog, u64), String> {
        let uri = format!(
            "/v1/health/service/{}?stale&index={index}&wait={}s",
            percent(name),
            VIEW_POLL_WAIT.as_secs()
        );
        let req = axum::http::Request::get(uri)
            .body(axum::body::Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = self.forward.forward(req).await;
        let status = resp.status();
        let next = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = axum::body::to_bytes(resp.into_body(), VIEW_BODY_BYTES_MAX)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok((catalog_of_health(&v), next))
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A catalog holding the entries of a `/v1/health/service` answer (nodes, instances and
/// checks); entries that do not make a valid registration are skipped.
pub fn catalog_of_health(v: &Value) -> Catalog {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let map = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut catalog = Catalog::default();
    for (i, e) in v.as_array().into_iter().flatten().enumerate() {
        let (Some(n), Some(s)) = (e.get("Node"), e.get("Service")) else {
            continue;
        };
        let weight = |k: &str| {
            s.get("Weights")
                .and_then(|w| w.get(k))
                .and_then(Value::as_u64)
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or(1)
        };
        let checks = e.get("Checks").and_then(Value::as_array);
        let r = Registration {
            node: NodeInfo {
                // The id only renames nodes: not needed in a view, and not checked here.
                id: String::new(),
                name: text(n, "Node"),
                address: text(n, "Address"),
                datacenter: text(n, "Datacenter"),
                tagged_addresses: map(n, "TaggedAddresses"),
                meta: map(n, "Meta"),
            },
            skip_node_update: false,
            service: Some(ServiceInfo {
                id: text(s, "ID"),
                name: text(s, "Service"),
                tags: s
                    .get("Tags")
                    .and_then(Value::as_array)
                    .map(|t| {
                        t.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                address: text(s, "Address"),
                meta: map(s, "Meta"),
                port: s
                    .get("Port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                weights: Weights {
                    passing: weight("Passing"),
                    warning: weight("Warning"),
                },
                ..ServiceInfo::default()
            }),
            checks: checks
                .into_iter()
                .flatten()
                .map(|c| CheckInfo {
                    node: text(c, "Node"),
                    check_id: text(c, "CheckID"),
                    name: text(c, "Name"),
                    status: Health::parse(&text(c, "Status")).unwrap_or(Health::Critical),
                    service_id: text(c, "ServiceID"),
                    ..CheckInfo::default()
                })
                .collect(),
        };
        let _ = catalog.apply(i as u64 + 1, &CatalogOp::Register(Box::new(r)));
    }
    catalog
}

impl Directory for Arc<ClientView> {
    fn node(&self, name: &str) -> Option<Node> {
        self.lan.node(name)
    }

    fn servers(&self) -> Vec<Node> {
        self.lan.servers()
    }

    fn with_catalogs(&self, service: Option<&str>, f: &mut dyn FnMut(&Catalog)) {
        let catalogs: Vec<Arc<Catalog>> = {
            let entries = self.entries();
            match service {
                Some(s) => entries
                    .get(s)
                    .and_then(|e| e.catalog.borrow().clone())
                    .into_iter()
                    .collect(),
                None => entries
                    .values()
                    .filter_map(|e| e.catalog.borrow().clone())
                    .collect(),
            }
        };
        for c in catalogs {
            f(&c);
        }
    }

    fn prepare<'a>(&'a self, service: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let mut rx = self.entry(service);
            let filled = tokio::time::timeout(FIRST_FILL_WAIT, rx.wait_for(Option::is_some))
                .await
                .is_ok_and(|r| r.is_ok());
            filled
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, server_port: Option<u16>) -> Node {
        Node {
            name: name.into(),
            ip: "10.0.0.1".parse().unwrap(),
            server_port,
        }
    }

    #[test]
    fn a_list_finds_names_case_insensitively_and_servers_by_port() {
        let nodes = vec![node("web-1", None), node("Server-1", Some(8300))];
        assert_eq!(nodes.node("WEB-1"), Some(node("web-1", None)));
        assert_eq!(nodes.node("nope"), None);
        assert_eq!(nodes.servers(), vec![node("Server-1", Some(8300))]);
    }

    #[tokio::test]
    async fn a_client_view_is_capped_and_fails_without_servers() {
        let identity = tribune_core::gossip::Identity {
            name: "c1".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            tags: Default::default(),
        };
        let bind = "127.0.0.1:0".parse().unwrap();
        let config = tribune_core::gossip::Config::lan();
        let pool = Pool::start(bind, config, identity, "lan").await.unwrap();
        let forward = Forwarder::new(pool.clone(), "dc1".into(), Duration::from_secs(1));
        let lan = LanDirectory::new(node("c1", None), Some(pool));
        let view = ClientView::new(lan, Arc::new(forward));
        // No server to ask: the first fill never comes, and the lookup is told so.
        let started = Instant::now();
        assert!(!view.prepare("web").await);
        assert!(started.elapsed() >= FIRST_FILL_WAIT);
        let mut seen = 0;
        view.with_catalogs(Some("web"), &mut |_| seen += 1);
        assert_eq!(seen, 0);
        // More names than the cap: the least recently used make room, their loops stop.
        for i in 0..VIEW_SERVICES_MAX + 5 {
            let _ = view.entry(&format!("s{i}"));
        }
        let entries = view.entries();
        assert_eq!(entries.len(), VIEW_SERVICES_MAX);
        assert!(!entries.contains_key("web") && !entries.contains_key("s0"));
        assert!(entries.contains_key(&format!("s{}", VIEW_SERVICES_MAX + 4)));
    }

    #[test]
    fn a_health_answer_becomes_a_catalog() {
        let v = serde_json::json!([
            {"Node": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"a": "b"}},
             "Service": {"ID": "web-1", "Service": "web", "Tags": ["t"], "Port": 80,
                         "Weights": {"Passing": 3, "Warning": 2}},
             "Checks": [{"Node": "n1", "CheckID": "c", "Status": "warning",
                         "ServiceID": "web-1"}]},
            {"Node": {"Node": "", "Address": ""}, "Service": {"Service": "web"}},
            "not an entry"
        ]);
        let c = catalog_of_health(&v);
        let s: Vec<_> = c.instances("web").collect();
        assert_eq!(s.len(), 1, "the entry without a node is skipped");
        assert_eq!((s[0].info.port, s[0].info.weights.passing), (80, 3));
        assert_eq!(c.node("n1").unwrap().info.meta["a"], "b");
        let checks: Vec<_> = c.instance_checks("n1", "web-1").collect();
        assert_eq!(checks[0].info.status, Health::Warning);
        assert!(catalog_of_health(&serde_json::json!({"x": 1})).is_empty());
    }

    #[test]
    fn without_gossip_the_agent_is_its_own_directory() {
        let d = LanDirectory::new(node("n1", Some(8300)), None);
        assert_eq!(d.node("N1"), Some(node("n1", Some(8300))));
        assert_eq!(d.node("n2"), None);
        assert_eq!(d.servers().len(), 1);
        let client = LanDirectory::new(node("c1", None), None);
        assert!(client.servers().is_empty());
    }
}

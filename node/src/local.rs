//! The agent's side of its local services and checks: the clock the core's [`LocalState`]
//! runs on, and the checks this agent runs. (The catalog port its anti-entropy writes
//! through is wired in `agent`.)
//!
//! - Checks: a TTL check goes critical when its TTL runs out without an update; an HTTP
//!   check is passing on a 2xx, warning on a 429 and critical otherwise; a TCP check is
//!   passing when a connection opens; a script check (only with `enable_script_checks`, or
//!   `enable_local_script_checks` for checks from config files) is passing on exit 0,
//!   warning on exit 1 and critical otherwise. Each runs every `interval`, is given up at
//!   `timeout` (a script's process is killed), and keeps at most [`OUTPUT_MAX`] bytes of
//!   output. `success_before_passing` and `failures_before_critical` hold a status until
//!   that many results in a row agree. A service whose check stays critical for
//!   `deregister_critical_service_after` is removed.
//! - Alias checks mirror another service's or node's health
//!   (`tribune_core::local::alias`). One of a local service is kept in step by the local
//!   state itself; one of another node follows that node's checks in the catalog through a
//!   blocking query ([`NodeHealth`]: the agent's own store on a server, its servers on a
//!   client agent), as Consul's does: an error is retried at once up to
//!   [`ALIAS_RETRIES_AT_ONCE`] times, then after a pause doubling from 2 s up to
//!   [`ALIAS_BACKOFF_MAX`], and from the second error in a row on the check is critical
//!   (`Failure checking aliased node or service: ...`).
//!
//! Bounds: one task per running check (an alias of a local service has none), at most
//! `tribune_core::local::CHECKS_MAX` checks; an HTTP check reads at most [`HTTP_READ_MAX`]
//! bytes of its response; a remote alias holds one blocking query of at most
//! [`ALIAS_QUERY_WAIT`] at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use openraft_rt_tokio::TokioRuntime;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tribune_core::catalog::CheckInfo;
use tribune_core::catalog::Health;
use tribune_core::catalog::NodeInfo;
use tribune_core::catalog::ServiceInfo;
use tribune_core::local::alias::aggregate;
use tribune_core::local::alias::Aggregate;
use tribune_core::local::anti_entropy::LocalAgent;
use tribune_core::local::Alias;
use tribune_core::local::LocalState;
use tribune_core::local::OUTPUT_MAX;

use crate::store::BoxFuture;

/// The most of an HTTP check's response read (its head and the start of its body).
pub const HTTP_READ_MAX: usize = 64 * 1024;
/// A check's timeout when it names none (Consul's 10 s).
pub const CHECK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// The shortest interval a check runs at (Consul's `MinInterval`).
pub const CHECK_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// The wait of each blocking query of a remote alias (Consul's).
pub const ALIAS_QUERY_WAIT: Duration = Duration::from_secs(60);
/// Failed queries of a remote alias retried at once before pausing (Consul's).
pub const ALIAS_RETRIES_AT_ONCE: u32 = 3;
/// The longest pause between failed queries of a remote alias (Consul's).
pub const ALIAS_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Tries of the look-up whether an aliased service is on its node (Consul's), each after a
/// pause one second longer; when all fail, it is taken to be there.
const ALIAS_SERVICE_TRIES: u32 = 4;

/// Where an alias of another node reads that node's health: the catalog.
pub trait NodeHealth: Send + Sync + 'static {
    /// The checks of node `node` once the catalog's index for it passes `index` (at once
    /// for 0), waiting at most about `wait`; with the index to wait on next.
    fn node_checks<'a>(
        &'a self,
        node: &'a str,
        index: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<(Vec<CheckInfo>, u64), String>>;

    /// Whether service `id` is registered on node `node`.
    fn has_service<'a>(&'a self, node: &'a str, id: &'a str)
        -> BoxFuture<'a, Result<bool, String>>;
}

/// What a check does to find its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Updated from outside (`/v1/agent/check/pass/...`); critical after its TTL.
    Ttl(Duration),
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        body: String,
    },
    Tcp(String),
    Script(Vec<String>),
    /// Mirrors another service's or node's health.
    Alias(Alias),
    /// A check whose status is set by its registration only (and maintenance checks).
    Static,
}

/// A check as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDef {
    pub info: CheckInfo,
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub success_before_passing: u32,
    pub failures_before_critical: u32,
    pub deregister_after: Option<Duration>,
}

impl CheckDef {
    /// Consul's `Type` for the check.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            CheckKind::Ttl(_) => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp(_) => "tcp",
            CheckKind::Script(_) => "script",
            CheckKind::Alias(_) => "alias",
            CheckKind::Static => "",
        }
    }
}

/// The agent's local state, its clock and its running checks.
pub struct Local {
    pub agent: Arc<LocalAgent<TokioRuntime>>,
    origin: Instant,
    runners: Mutex<BTreeMap<String, JoinHandle<()>>>,
    /// `enable_script_checks`: script checks may be registered over HTTP.
    pub script_checks: bool,
    /// `enable_local_script_checks`: script checks may come from config files.
    pub local_script_checks: bool,
    /// The service and check ids the config files defined (a reload replaces them).
    from_config: Mutex<(Vec<String>, Vec<String>)>,
    /// Where remote alias checks read the catalog (set once the API is up).
    remote: OnceLock<Arc<dyn NodeHealth>>,
}

impl Local {
    pub fn new(node: NodeInfo, script_checks: bool, local_script_checks: bool) -> Local {
        Local {
            agent: Arc::new(LocalAgent::new(node)),
            origin: Instant::now(),
            runners: Mutex::new(BTreeMap::new()),
            script_checks,
            local_script_checks,
            from_config: Mutex::new((Vec::new(), Vec::new())),
            remote: OnceLock::new(),
        }
    }

    /// Set where remote alias checks read the catalog (once; later calls are ignored).
    pub fn set_remote(&self, remote: Arc<dyn NodeHealth>) {
        let _ = self.remote.set(remote);
    }

    /// Take the services and checks of the config files: what an earlier load defined and
    /// this one does not is removed, the rest is added or replaced (an unchanged definition
    /// costs no catalog write). Services registered over HTTP are left alone.
    pub fn load_config(
        self: &Arc<Self>,
        services: Vec<(ServiceInfo, Vec<CheckDef>)>,
        checks: Vec<CheckDef>,
    ) -> Result<(), tribune_core::local::LocalError> {
        let fold = |s: &str| s.to_ascii_lowercase();
        let new_services: Vec<String> = services.iter().map(|(s, _)| fold(&s.id)).collect();
        let mut new_checks: Vec<String> = checks.iter().map(|c| fold(&c.info.check_id)).collect();
        for (_, cs) in &services {
            new_checks.extend(cs.iter().map(|c| fold(&c.info.check_id)));
        }
        let (old_services, old_checks) = {
            let g = self.from_config.lock().unwrap_or_else(|e| e.into_inner());
            g.clone()
        };
        for id in old_checks.iter().filter(|id| !new_checks.contains(id)) {
            let _ = self.remove_check(id);
        }
        for id in old_services.iter().filter(|id| !new_services.contains(id)) {
            let _ = self.remove_service(id);
        }
        for (svc, cs) in services {
            self.agent.change(|s| s.add_service(svc, None))?;
            for c in cs {
                self.add_check(c)?;
            }
        }
        for c in checks {
            self.add_check(c)?;
        }
        *self.from_config.lock().unwrap_or_else(|e| e.into_inner()) = (new_services, new_checks);
        Ok(())
    }

    /// The local state's clock: time since the agent started.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Register a check and start running it (replacing a runner of the same id).
    pub fn add_check(
        self: &Arc<Self>,
        def: CheckDef,
    ) -> Result<(), tribune_core::local::LocalError> {
        let mut c = tribune_core::local::LocalCheck::new(def.info.clone());
        c.info.kind = def.type_name().to_string();
        match &def.kind {
            CheckKind::Ttl(ttl) => c.ttl = Some(*ttl),
            CheckKind::Alias(a) => c.alias = Some(a.clone()),
            _ => {}
        }
        c.deregister_after = def.deregister_after;
        let now = self.now();
        self.agent.change(|s| {
            let same = s.check(&c.info.check_id).filter(|old| old.alias == c.alias);
            if let Some(old) = same.filter(|_| c.alias.is_some()) {
                // An alias defined again (a reload) keeps what it last saw until it looks
                // again, rather than flapping to its definition's status.
                c.info.status = old.info.status;
                c.info.output = old.info.output.clone();
            }
            s.add_check(c, now)
        })?;
        let id = self
            .agent
            .read(|s| s.check(&def.info.check_id).map(|c| c.info.check_id.clone()))
            .unwrap_or_default();
        let own = self.agent.read(|s| s.node().name.clone());
        let runner = match def.kind {
            CheckKind::Http { .. } | CheckKind::Tcp(_) | CheckKind::Script(_) => {
                let me = self.clone();
                Some(tokio::spawn(async move { me.run_check(def).await }))
            }
            CheckKind::Alias(a) if !a.follows_local(&own) => {
                let me = self.clone();
                let id = id.clone();
                Some(tokio::spawn(
                    async move { me.run_remote_alias(id, a).await },
                ))
            }
            CheckKind::Ttl(_) | CheckKind::Alias(_) | CheckKind::Static => None,
        };
        let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = runners.remove(&id.to_ascii_lowercase()) {
            old.abort();
        }
        if let Some(r) = runner {
            runners.insert(id.to_ascii_lowercase(), r);
        }
        Ok(())
    }

    /// Stop the runner of a check that is gone.
    pub fn stop_check(&self, id: &str) {
        let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = runners.remove(&id.to_ascii_lowercase()) {
            r.abort();
        }
    }

    /// Remove a check and stop it.
    pub fn remove_check(&self, id: &str) -> Result<(), tribune_core::local::LocalError> {
        self.agent.change(|s| s.remove_check(id))?;
        self.stop_check(id);
        Ok(())
    }

    /// Remove a service, its checks and their runners.
    pub fn remove_service(&self, id: &str) -> Result<(), tribune_core::local::LocalError> {
        let checks: Vec<String> = self.agent.read(|s| {
            s.service_checks(id)
                .map(|c| c.info.check_id.clone())
                .collect()
        });
        self.agent.change(|s| s.remove_service(id))?;
        for c in checks {
            self.stop_check(&c);
        }
        Ok(())
    }

    /// Run one check every interval until it is stopped.
    async fn run_check(self: Arc<Self>, def: CheckDef) {
        let interval = def.interval.max(CHECK_INTERVAL_MIN);
        let mut streak = Streak::default();
        // Consul starts a check after a random part of its interval, so checks registered
        // together do not run together.
        let first =
            Duration::from_millis(u64::from(rand_u32()) % interval.as_millis().max(1) as u64);
        tokio::time::sleep(first).await;
        loop {
            let (status, output) = run_once(&def).await;
            let reported = streak.observe(
                status,
                def.success_before_passing,
                def.failures_before_critical,
            );
            if let Some(status) = reported {
                let now = self.now();
                let id = &def.info.check_id;
                if self
                    .agent
                    .change(|s| s.update_check(id, status, output, now))
                    .is_err()
                {
                    return; // the check is gone
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Follow a remote alias check's node in the catalog until the check is gone.
    async fn run_remote_alias(self: Arc<Self>, id: String, alias: Alias) {
        let own = self.agent.read(|s| s.node().name.clone());
        let mut index = 0u64;
        let mut failures = 0u32;
        loop {
            if failures > ALIAS_RETRIES_AT_ONCE {
                tokio::time::sleep(alias_backoff(failures)).await;
            }
            let answer = match self.remote.get() {
                Some(r) => r.node_checks(&alias.node, index, ALIAS_QUERY_WAIT).await,
                None => Err("no catalog to ask yet".to_string()),
            };
            let (status, output) = match answer {
                Ok((checks, next)) => {
                    failures = 0;
                    // Consul's floor: an index of 0 would not block.
                    index = next.max(1);
                    let agg = remote_aggregate(&alias, &checks, &own, &id);
                    let exists = agg.service_found || self.aliased_service_exists(&alias).await;
                    agg.resolve(&alias, exists)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures < 2 {
                        continue;
                    }
                    let output = format!("Failure checking aliased node or service: {e}");
                    (Health::Critical, output)
                }
            };
            let now = self.now();
            if self
                .agent
                .change(|s| s.update_check(&id, status, output, now))
                .is_err()
            {
                return; // the check is gone
            }
        }
    }

    /// Whether the service a remote alias names is on its node; taken to be when the
    /// catalog cannot tell (Consul's rule).
    async fn aliased_service_exists(&self, alias: &Alias) -> bool {
        let Some(remote) = self.remote.get() else {
            return true;
        };
        for attempt in 1..=ALIAS_SERVICE_TRIES {
            match remote.has_service(&alias.node, &alias.service).await {
                Ok(found) => return found,
                Err(e) => {
                    tracing::debug!(node = %alias.node, error = %e, "agent: alias look-up failed");
                    if attempt < ALIAS_SERVICE_TRIES {
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                }
            }
        }
        true
    }

    /// Expire TTL checks and remove services critical for too long, until the agent stops.
    pub async fn run_timers(self: Arc<Self>) {
        let mut changed = self.agent.subscribe();
        loop {
            let now = self.now();
            self.agent.change(|s| s.expire_ttls(now));
            let gone = self.agent.read(|s| s.critical_too_long(now));
            for id in gone {
                tracing::info!(service = %id, "agent: deregistering a service critical too long");
                let _ = self.remove_service(&id);
            }
            let next = self
                .agent
                .read(LocalState::next_ttl_deadline)
                .map_or(Duration::from_secs(1), |d| d.saturating_sub(now))
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}

/// What remote alias `id` of this agent (whose node is `own`) reads in its node's
/// `checks`: itself left out (an alias of its own node by name would find itself there),
/// as a local alias never reads itself.
fn remote_aggregate(alias: &Alias, checks: &[CheckInfo], own: &str, id: &str) -> Aggregate {
    let others = checks
        .iter()
        .filter(|c| !(c.node.eq_ignore_ascii_case(own) && c.check_id.eq_ignore_ascii_case(id)));
    aggregate(alias, others)
}

/// The pause after `failures` failed queries of a remote alias in a row (past the ones
/// retried at once): 2 s, doubling, at most [`ALIAS_BACKOFF_MAX`].
fn alias_backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(ALIAS_RETRIES_AT_ONCE).min(31);
    Duration::from_secs(1u64 << shift).min(ALIAS_BACKOFF_MAX)
}

/// A small non-cryptographic random number for check staggering.
fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// Consecutive results, for `success_before_passing` / `failures_before_critical`.
#[derive(Debug, Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

impl Streak {
    /// The status to report after `status`, or `None` to keep the current one.
    fn observe(&mut self, status: Health, need_ok: u32, need_bad: u32) -> Option<Health> {
        match status {
            Health::Passing => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                (self.successes > need_ok).then_some(Health::Passing)
            }
            Health::Warning | Health::Critical => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                (self.failures > need_bad).then_some(status)
            }
        }
    }
}

/// Run a check once: its status and output.
async fn run_once(def: &CheckDef) -> (Health, String) {
    let timeout = if def.timeout.is_zero() {
        CHECK_TIMEOUT_DEFAULT
    } else {
        def.timeout
    };
    let r = tokio::time::timeout(timeout, probe(&def.kind)).await;
    match r {
        Ok(r) => r,
        Err(_) => (
            Health::Critical,
            format!("Timed out ({timeout:?}) running check"),
        ),
    }
}

async fn probe(kind: &CheckKind) -> (Health, String) {
    match kind {
        CheckKind::Http {
            url,
            method,
            headers,
            body,
        } => http_probe(url, method, headers, body).await,
        CheckKind::Tcp(addr) => match tokio::net::TcpStream::connect(addr.as_str()).await {
            Ok(_) => (Health::Passing, format!("TCP connect {addr}: Success")),
            Err(e) => (Health::Critical, format!("dial tcp {addr}: {e}")),
        },
        CheckKind::Script(args) => script_probe(args).await,
        CheckKind::Ttl(_) | CheckKind::Alias(_) | CheckKind::Static => {
            (Health::Critical, String::new())
        }
    }
}

/// An HTTP check: 2xx passing, 429 warning, anything else critical; the output is
/// Consul's `HTTP <METHOD> <url>: <status> Output: <body>`.
async fn http_probe(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    body: &str,
) -> (Health, String) {
    let (addr, path) = match crate::client::split_url(url) {
        Ok(x) => x,
        Err(e) => return (Health::Critical, e.to_string()),
    };
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let method = if method.is_empty() { "GET" } else { method };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr.as_str()).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Consul Health Check\r\n\
             Accept: text/plain, text/*, */*\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(HTTP_READ_MAX as u64).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match exchange.await {
        Ok(b) => b,
        Err(e) => return (Health::Critical, format!("Get {url:?}: {e}")),
    };
    let text = String::from_utf8_lossy(&buf);
    let code: Option<u16> = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    let Some(code) = code else {
        return (
            Health::Critical,
            format!("Get {url:?}: malformed HTTP response"),
        );
    };
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let status = match code {
        200..=299 => Health::Passing,
        429 => Health::Warning,
        _ => Health::Critical,
    };
    let reason = text
        .lines()
        .next()
        .and_then(|l| l.split_once(' ').map(|x| x.1))
        .unwrap_or("")
        .to_string();
    let output =
        tribune_core::local::bound_output(format!("HTTP {method} {url}: {reason} Output: {body}"));
    (status, output)
}

/// Keep the first [`OUTPUT_MAX`] bytes of `r` and drain the rest, so a chatty script never
/// blocks on a full pipe.
async fn read_bounded(mut r: impl tokio::io::AsyncRead + Unpin, out: &mut Vec<u8>) {
    let _ = (&mut r).take(OUTPUT_MAX as u64).read_to_end(out).await;
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

/// A script check: exit 0 passing, 1 warning, anything else (or a signal) critical. Its
/// process is killed when the check's timeout drops this future.
async fn script_probe(args: &[String]) -> (Health, String) {
    let Some((prog, rest)) = args.split_first() else {
        return (Health::Critical, "no script given".into());
    };
    let child = tokio::process::Command::new(prog)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Health::Critical, format!("Check failed to start: {e}")),
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (Some(so), Some(se)) = (child.stdout.take(), child.stderr.take()) else {
        return (Health::Critical, "Check has no output pipes".into());
    };
    tokio::join!(read_bounded(so, &mut out), read_bounded(se, &mut err));
    let status = match child.wait().await {
        Ok(s) => s,
        Err(e) => return (Health::Critical, format!("Check failed: {e}")),
    };
    out.extend_from_slice(&err);
    let output = tribune_core::local::bound_output(String::from_utf8_lossy(&out).into_owned());
    let health = match status.code() {
        Some(0) => Health::Passing,
        Some(1) => Health::Warning,
        _ => Health::Critical,
    };
    (health, output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaks_hold_a_status_until_enough_results_agree() {
        let mut s = Streak::default();
        assert_eq!(s.observe(Health::Passing, 2, 0), None);
        assert_eq!(s.observe(Health::Passing, 2, 0), None);
        assert_eq!(s.observe(Health::Passing, 2, 0), Some(Health::Passing));
        assert_eq!(s.observe(Health::Critical, 2, 1), None);
        assert_eq!(s.observe(Health::Critical, 2, 1), Some(Health::Critical));
        let mut s = Streak::default();
        assert_eq!(s.observe(Health::Warning, 0, 0), Some(Health::Warning));
    }

    #[test]
    fn a_remote_alias_of_its_own_node_does_not_read_itself() {
        let check = |node: &str, id: &str, status| CheckInfo {
            node: node.into(),
            check_id: id.into(),
            name: id.into(),
            status,
            ..CheckInfo::default()
        };
        let alias = Alias {
            node: "box".into(),
            service: String::new(),
        };
        let checks = [
            check("box", "serfHealth", Health::Passing),
            check("box", "Self-Alias", Health::Critical),
        ];
        let agg = remote_aggregate(&alias, &checks, "box", "self-alias");
        assert_eq!(
            (agg.status, agg.output.as_str()),
            (Health::Passing, "All checks passing.")
        );
        // Another agent's check of the same id is not itself.
        let agg = remote_aggregate(&alias, &checks, "other", "self-alias");
        assert_eq!(agg.status, Health::Critical);
    }

    #[test]
    fn remote_alias_backoff_is_consuls() {
        let waits: Vec<u64> = (4..=11).map(|f| alias_backoff(f).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(alias_backoff(u32::MAX), ALIAS_BACKOFF_MAX);
    }
}

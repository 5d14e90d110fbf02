//! `tribune agent`: load the config, take the data_dir lock, set up logging, start the store,
//! the HTTP API and the config watches; handle reload (SIGHUP, `/v1/agent/reload`) and leave
//! (SIGINT, SIGTERM, `/v1/agent/leave`).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use serde_json::Map;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

use crate::config;
use crate::config::Config;
use crate::config::ConfigError;
use crate::config::LoadOptions;
use crate::config::Source;
use crate::directory::LanDirectory;
use crate::directory::Node;
use crate::dns::DnsError;
use crate::flags;
use crate::flags::FlagError;
use crate::flags::Kind;
use crate::http;
use crate::http::AgentInfo;
use crate::http::Api;
use crate::http::Control;
use crate::raft::RaftStore;
use crate::store::DevStore;
use crate::store::Store;

/// Agent flags: (flag, kind, config key path, value type).
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    List,
}

const AGENT_FLAGS: &[(&str, Kind, &[&str], Ty)] = &[
    ("node", Kind::Value, &["node_name"], Ty::Str),
    ("node-id", Kind::Value, &["node_id"], Ty::Str),
    ("server", Kind::Bool, &["server"], Ty::Bool),
    ("bootstrap", Kind::Bool, &["bootstrap"], Ty::Bool),
    (
        "bootstrap-expect",
        Kind::Value,
        &["bootstrap_expect"],
        Ty::Int,
    ),
    ("bind", Kind::Value, &["bind_addr"], Ty::Str),
    ("advertise", Kind::Value, &["advertise_addr"], Ty::Str),
    ("client", Kind::Value, &["client_addr"], Ty::Str),
    ("data-dir", Kind::Value, &["data_dir"], Ty::Str),
    ("datacenter", Kind::Value, &["datacenter"], Ty::Str),
    ("domain", Kind::Value, &["domain"], Ty::Str),
    ("join", Kind::Value, &["retry_join"], Ty::List),
    ("retry-join", Kind::Value, &["retry_join"], Ty::List),
    ("retry-interval", Kind::Value, &["retry_interval"], Ty::Str),
    ("encrypt", Kind::Value, &["encrypt"], Ty::Str),
    ("log-level", Kind::Value, &["log_level"], Ty::Str),
    ("log-json", Kind::Bool, &["log_json"], Ty::Bool),
    ("syslog", Kind::Bool, &["enable_syslog"], Ty::Bool),
    ("rejoin", Kind::Bool, &["rejoin_after_leave"], Ty::Bool),
    ("ui", Kind::Bool, &["ui"], Ty::Bool),
    ("http-port", Kind::Value, &["ports", "http"], Ty::Int),
    ("dns-port", Kind::Value, &["ports", "dns"], Ty::Int),
    (
        "serf-lan-port",
        Kind::Value,
        &["ports", "serf_lan"],
        Ty::Int,
    ),
    (
        "serf-wan-port",
        Kind::Value,
        &["ports", "serf_wan"],
        Ty::Int,
    ),
    ("server-port", Kind::Value, &["ports", "server"], Ty::Int),
];

const USAGE: &str = concat!(
    "Usage: tribune agent [options]\n\n",
    "  Starts the Tribune agent and runs until an interrupt is received.\n\n",
    "  -dev  -node=NAME  -config-dir=DIR  -config-file=FILE  -config-format=json|hcl  -server\n",
    "  -bind=ADDR  -client=ADDR  -data-dir=DIR  -datacenter=DC  -bootstrap-expect=N  -join=ADDR\n",
    "  -retry-join=ADDR  -encrypt=KEY  -log-level=LEVEL  -log-json  -http-port=N  -dns-port=N\n",
    "  -serf-lan-port=N  -server-port=N",
);

/// Parse the agent's command line into config load options.
pub fn parse_args(argv: &[String]) -> Result<LoadOptions, FlagError> {
    let mut specs: Vec<(&str, Kind)> = AGENT_FLAGS.iter().map(|(n, k, _, _)| (*n, *k)).collect();
    specs.extend([
        ("dev", Kind::Bool),
        ("config-dir", Kind::Value),
        ("config-file", Kind::Value),
        ("config-format", Kind::Value),
        ("pid-file", Kind::Value),
    ]);
    let p = flags::parse(&specs, argv)?;
    if let Some(a) = p.args.first() {
        return Err(FlagError::Bad(format!("unexpected argument: {a}")));
    }
    // As in Consul: the format of every config file, whatever its name; empty is unset.
    let format = match p.get("config-format").filter(|f| !f.is_empty()) {
        None => None,
        Some(f) => match config::Format::from_flag(f) {
            Some(format) => Some(format),
            None => {
                return Err(FlagError::Bad(format!(
                    "-config-format={f}: must be json or hcl"
                )));
            }
        },
    };
    let pid_file = p.get("pid-file").map(PathBuf::from);
    let mut opts = LoadOptions {
        dev: p.flag("dev"),
        pid_file,
        format,
        ..Default::default()
    };
    for (name, value) in &p.values {
        match name.as_str() {
            "config-dir" => opts.sources.push(Source::Dir(PathBuf::from(value))),
            "config-file" => opts.sources.push(Source::File(PathBuf::from(value))),
            _ => {}
        }
    }
    let mut frag = Value::Object(Map::new());
    for (name, value) in &p.values {
        let Some((_, _, path, ty)) = AGENT_FLAGS.iter().find(|(n, ..)| n == name) else {
            continue;
        };
        let v = match ty {
            Ty::Str => json!(value),
            Ty::Bool => json!(value == "true"),
            Ty::List => json!([value]),
            Ty::Int => match value.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => {
                    return Err(FlagError::Bad(format!(
                        "invalid value {value:?} for flag -{name}: expected an integer"
                    )))
                }
            },
        };
        let mut nested = v;
        for k in path.iter().rev() {
            let mut m = Map::new();
            m.insert(k.to_string(), nested);
            nested = Value::Object(m);
        }
        config::merge(&mut frag, nested);
    }
    if let Value::Object(m) = frag {
        opts.flags = m;
    }
    Ok(opts)
}

/// Writes log lines to stdout and, if enabled, to the local syslog socket.
#[derive(Clone)]
struct LogWriter {
    syslog: Option<Arc<UnixDatagram>>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(s) = &self.syslog {
            // LOCAL0 (16) * 8 + info (6).
            let mut msg = b"<134>tribune: ".to_vec();
            msg.extend_from_slice(buf.strip_suffix(b"\n").unwrap_or(buf));
            let _ = s.send(&msg);
        }
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

type LevelHandle = reload::Handle<LevelFilter, Registry>;

fn level_filter(level: &str) -> LevelFilter {
    level.parse().unwrap_or(LevelFilter::INFO)
}

fn init_logging(cfg: &Config) -> (LevelHandle, Option<String>) {
    let mut warning = None;
    // The socket path can be moved for tests; the default is the system's.
    let dev_log = std::env::var("TRIBUNE_SYSLOG_SOCKET").unwrap_or_else(|_| "/dev/log".into());
    let syslog = if cfg.enable_syslog {
        if Path::new(&dev_log).exists() {
            match UnixDatagram::unbound().and_then(|s| s.connect(&dev_log).map(|_| s)) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    warning = Some(format!(
                        "enable_syslog: cannot connect to {dev_log} ({e}); logging to stdout only"
                    ));
                    None
                }
            }
        } else {
            warning = Some(format!(
                "enable_syslog: {dev_log} does not exist; logging to stdout only"
            ));
            None
        }
    } else {
        None
    };
    let (filter, handle) = reload::Layer::new(level_filter(&cfg.log_level));
    let writer = LogWriter { syslog };
    let make = move || writer.clone();
    // openraft narrates every vote and heartbeat at INFO; an operator wants its warnings.
    let quiet_raft = tracing_subscriber::filter::filter_fn(|m| {
        !m.target().starts_with("openraft") || *m.level() <= tracing::Level::WARN
    });
    let registry = tracing_subscriber::registry().with(filter).with(quiet_raft);
    if cfg.log_json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(make),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(make),
            )
            .init();
    }
    (handle, warning)
}

/// Why the agent did not start, by what the operator can fix; each text is what it prints
/// (after `==> `) before it exits 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config did not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `data_dir` cannot be created: check the path and its permissions.
    #[error("Error creating data_dir {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data_dir's lock file cannot be opened: check its permissions.
    #[error("Error opening lock file {}: {source}", path.display())]
    LockFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another agent runs on this data_dir: stop it, or give this one another data_dir.
    #[error(
        "Error starting agent: data_dir {} is in use by another agent (could not lock {}: {source})",
        dir.display(),
        lock.display()
    )]
    DataDirInUse {
        dir: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The node id cannot be kept in the data_dir: check its permissions and free space.
    #[error("Error writing {}: {source}", path.display())]
    NodeId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A server without a data_dir: give it one.
    #[error("data_dir is required to run a server")]
    NoDataDir,
    /// An address or port that does not parse: fix it in the config.
    #[error("invalid {what} {value}")]
    BadAddress { what: &'static str, value: String },
    /// The Raft store did not open (a damaged or foreign data_dir, a port in use).
    #[error("Error starting the Raft store in {}: {source}", dir.display())]
    RaftStore {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A gossip pool did not start (its port is in use, a bad key).
    #[error("Error starting agent: Failed to start {label} gossip on {ip}:{port}: {source}")]
    Gossip {
        label: &'static str,
        ip: std::net::IpAddr,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP API cannot listen where it is told to.
    #[error("Error starting agent: Failed to start HTTP listener on {addr}: {source}")]
    HttpListener {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The DNS interface did not start.
    #[error(transparent)]
    Dns(#[from] DnsError),
}

fn bad_address(what: &'static str, value: impl std::fmt::Display) -> StartError {
    StartError::BadAddress {
        what,
        value: value.to_string(),
    }
}

/// Hold an exclusive flock on `<data_dir>/tribune.lock` for the agent's lifetime.
fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    crate::durable::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("tribune.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::LockFile {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a valid, open file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StartError::DataDirInUse {
            dir: dir.to_path_buf(),
            lock: path,
            source: std::io::Error::last_os_error(),
        });
    }
    let mut f = &file;
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    Ok(file)
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn node_id(cfg: &Config) -> Result<String, StartError> {
    if let Some(id) = &cfg.node_id {
        return Ok(id.clone());
    }
    let Some(dir) = &cfg.data_dir else {
        return Ok(random_uuid());
    };
    let path = dir.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    let id = random_uuid();
    crate::durable::write_file(&path, id.as_bytes())
        .map_err(|source| StartError::NodeId { path, source })?;
    Ok(id)
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn compile_watches(cfg: &Config) -> Result<Vec<crate::watch_spec::WatchSpec>, ConfigError> {
    cfg.watches
        .iter()
        .map(|w| Ok(crate::watch_spec::parse_watch(w)?))
        .collect()
}

fn spawn_watches(
    api: &Arc<Api>,
    http_addr: &str,
    specs: Vec<crate::watch_spec::WatchSpec>,
) -> Vec<tokio::task::JoinHandle<()>> {
    for s in &specs {
        if let crate::watch_spec::Handler::Http { url, .. } = &s.handler {
            if let Err(e) = crate::client::split_url(url) {
                tracing::warn!(watch = ?s.kind, "watch: http handler will fail: {e}");
            }
        }
    }
    // A client agent's watches read through its own HTTP API, which forwards to a server.
    let source = match &api.forward {
        Some(_) => crate::watch::Source::Remote(http_addr.to_string()),
        None => crate::watch::Source::Local(api.clone()),
    };
    specs
        .into_iter()
        .map(|s| tokio::spawn(crate::watch::run(s, source.clone())))
        .collect()
}

/// How often the leader reconciles gossip membership into the Raft configuration.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a leaving server waits to see itself out of the Raft configuration
/// (Consul's `leave_drain_time`).
const LEAVE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the gossip snapshot records the live peers.
const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Consul's `tombstone_ttl` and the granularity of its tombstone GC.
const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const TOMBSTONE_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(30);

/// The store behind the API: `-dev` gets the single-node in-memory [`DevStore`]; a server
/// gets the replicated Raft store in `data_dir` (returned twice: as the API's store and as
/// itself) and starts forming (or joining) its cluster. A client agent forwards what the
/// servers hold (see `forward`), so its store stays empty.
async fn open_store(
    cfg: &Config,
    rpc_addr: &str,
) -> Result<(Arc<dyn Store>, Option<Arc<RaftStore>>), StartError> {
    if cfg.dev {
        return Ok((Arc::new(DevStore::new(rpc_addr.to_string())), None));
    }
    if !cfg.server {
        return Ok((Arc::new(DevStore::new(rpc_addr.to_string())), None));
    }
    let data_dir = cfg.data_dir.clone().ok_or(StartError::NoDataDir)?;
    let port =
        u16::try_from(cfg.server_port).map_err(|_| bad_address("ports.server", cfg.server_port))?;
    let advertise: std::net::SocketAddr = rpc_addr
        .parse()
        .map_err(|_| bad_address("advertise address", rpc_addr))?;
    let bind: std::net::SocketAddr = format!("{}:{port}", cfg.bind_addr)
        .parse()
        .map_err(|_| bad_address("bind_addr", &cfg.bind_addr))?;
    let mut join = cfg.start_join.clone();
    join.extend(cfg.retry_join.iter().cloned());
    let spec = crate::raft::ServerSpec {
        data_dir: &data_dir,
        bind,
        rpc_addr: advertise,
        name: cfg.node_name.clone(),
        datacenter: cfg.datacenter.clone(),
        raft_multiplier: cfg.raft_multiplier,
        join,
        gossip: cfg.serf_lan_port >= 0,
    };
    let store =
        crate::raft::RaftStore::open(spec)
            .await
            .map_err(|source| StartError::RaftStore {
                dir: data_dir.clone(),
                source,
            })?;
    let expect = if cfg.bootstrap {
        1
    } else {
        cfg.bootstrap_expect
    };
    tokio::spawn(store.clone().form_cluster(expect, cfg.retry_interval));
    Ok((store.clone(), Some(store)))
}

/// Start the LAN gossip pool (and the WAN pool on servers) unless their ports are -1.
/// A node with the wrong `encrypt` key cannot read or write any packet of the pool.
async fn start_gossip(
    cfg: &Config,
    agent: &AgentInfo,
) -> Result<(Option<crate::serf::Pool>, Option<crate::serf::Pool>), StartError> {
    use tribune_core::gossip;
    let ip: std::net::IpAddr = cfg
        .advertise_ip()
        .parse()
        .map_err(|_| bad_address("advertise address", cfg.advertise_ip()))?;
    let bind_ip: std::net::IpAddr = cfg
        .bind_addr
        .parse()
        .map_err(|_| bad_address("bind_addr", &cfg.bind_addr))?;
    let keys: Vec<String> = cfg.encrypt.iter().cloned().collect();
    let start = |port: i64, wan: bool| {
        let keys = keys.clone();
        async move {
            if port < 0 || (wan && !cfg.server) || cfg.dev {
                return Ok(None);
            }
            let port = u16::try_from(port).map_err(|_| bad_address("gossip port", port))?;
            let mut config = if wan {
                gossip::Config::wan()
            } else {
                gossip::Config::lan()
            };
            config.keys = keys;
            let name = if wan {
                format!("{}.{}", cfg.node_name, cfg.datacenter)
            } else {
                cfg.node_name.clone()
            };
            let identity = gossip::Identity {
                name,
                addr: std::net::SocketAddr::new(ip, port),
                tags: crate::serf::tags_of(&http::member(agent, wan)),
            };
            let label = if wan { "wan" } else { "lan" };
            crate::serf::Pool::start(
                std::net::SocketAddr::new(bind_ip, port),
                config,
                identity,
                label,
            )
            .await
            .map(Some)
            .map_err(|source| StartError::Gossip {
                label,
                ip: bind_ip,
                port,
                source,
            })
        }
    };
    let lan = start(cfg.serf_lan_port, false).await?;
    let wan = start(cfg.serf_wan_port, true).await?;
    Ok((lan, wan))
}

/// This agent as DNS shows it: its name, its advertise address and, on a server, its RPC
/// port.
fn own_node(agent: &AgentInfo) -> Result<Node, StartError> {
    let ip = agent
        .advertise_ip
        .parse()
        .map_err(|_| bad_address("advertise address", &agent.advertise_ip))?;
    let server_port = u16::try_from(agent.server_port)
        .ok()
        .filter(|_| agent.server);
    Ok(Node {
        name: agent.node_name.clone(),
        ip,
        server_port,
    })
}

/// A graceful leave: the gossip pools first (the leave intent needs a moment to spread, and
/// then the leader will not add this server back), then a server leaves the Raft
/// configuration.
async fn leave(api: &Api, raft: Option<&RaftStore>, snapshot: Option<&crate::serf::Snapshot>) {
    if let (Some(snapshot), Some(lan)) = (snapshot, &api.lan) {
        snapshot.left(lan);
    }
    for pool in [&api.lan, &api.wan].into_iter().flatten() {
        let _ = pool.leave().await;
    }
    if api.lan.is_some() {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    if let Some(raft) = raft {
        raft.leave(LEAVE_DRAIN).await;
    }
}

/// A startup error once logging is up: to the log and to the terminal; exit code 1.
fn startup_failed(e: &StartError) -> i32 {
    tracing::error!("{e}");
    eprintln!("==> {e}");
    1
}

pub async fn run(argv: &[String]) -> i32 {
    let opts = match parse_args(argv) {
        Ok(o) => o,
        Err(FlagError::Help) => {
            println!("{USAGE}");
            return 0;
        }
        Err(FlagError::Bad(m)) => {
            eprintln!("{m}\n\n{USAGE}");
            return 1;
        }
    };
    let (cfg, warnings) = match config::load(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("==> {e}");
            return 1;
        }
    };
    let watch_specs = match compile_watches(&cfg) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("==> {e}");
            return 1;
        }
    };
    let _lock = match &cfg.data_dir {
        Some(dir) => match lock_data_dir(dir) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("==> {e}");
                return 1;
            }
        },
        None => None,
    };
    let node_id = match node_id(&cfg) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("==> {e}");
            return 1;
        }
    };
    if let Some(pid_file) = &opts.pid_file {
        if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            eprintln!("==> Error writing pid file {}: {e}", pid_file.display());
            return 1;
        }
    }
    raise_fd_limit();
    let (level, log_warning) = init_logging(&cfg);
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(w) = log_warning {
        tracing::warn!("{w}");
    }

    let rpc_addr = format!("{}:{}", cfg.advertise_ip(), cfg.server_port);
    let (store, raft) = match open_store(&cfg, &rpc_addr).await {
        Ok(s) => s,
        Err(e) => return startup_failed(&e),
    };
    tokio::spawn(crate::store::reap_tombstones(
        store.clone(),
        rpc_addr.clone(),
        TOMBSTONE_TTL,
        TOMBSTONE_GRANULARITY,
    ));
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let agent_info = AgentInfo {
        raft_id: raft.as_ref().map(|r| r.id),
        node_name: cfg.node_name.clone(),
        node_id: node_id.clone(),
        datacenter: cfg.datacenter.clone(),
        server: cfg.server,
        bootstrap: cfg.bootstrap,
        bootstrap_expect: cfg.bootstrap_expect,
        advertise_ip: cfg.advertise_ip(),
        serf_lan_port: cfg.serf_lan_port,
        serf_wan_port: cfg.serf_wan_port,
        server_port: cfg.server_port,
        encrypted: cfg.encrypt.is_some(),
        node_meta: http::node_meta(&cfg),
        session_ttl_min: http::session_ttl_min(&cfg),
        debug_config: http::debug_config(&cfg),
    };
    let (lan, wan) = match start_gossip(&cfg, &agent_info).await {
        Ok(pools) => pools,
        Err(e) => return startup_failed(&e),
    };
    let api = Arc::new(Api {
        store,
        lan: lan.clone(),
        wan,
        agent: agent_info,
        kv_max_value_size: cfg.kv_max_value_size,
        default_query_time: cfg.default_query_time,
        max_query_time: cfg.max_query_time,
        metrics: Arc::default(),
        control: control_tx,
        forward: lan.as_ref().filter(|_| !cfg.server && !cfg.dev).map(|lan| {
            crate::forward::Forwarder::new(lan.clone(), cfg.datacenter.clone(), cfg.max_query_time)
        }),
    });
    if let Some(raft) = &raft {
        let serve = http::serve_forwarded(api.clone());
        let _ = raft.http.set(crate::forward::over_rpc(serve));
    }

    let listen = cfg.http_listen();
    let listener = if cfg.http_port < 0 {
        None
    } else {
        match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => Some(l),
            Err(source) => {
                return startup_failed(&StartError::HttpListener {
                    addr: listen,
                    source,
                })
            }
        }
    };
    let directory = match own_node(&api.agent) {
        Ok(own) => Arc::new(LanDirectory::new(own, api.lan.clone())),
        Err(e) => return startup_failed(&e),
    };
    if let Err(e) = crate::dns::start(&cfg, directory, api.metrics.clone()).await {
        return startup_failed(&e.into());
    }
    println!("==> Starting Tribune agent...");
    println!("           Version: 'v{}'", http::VERSION);
    println!("           Node ID: '{node_id}'");
    println!("         Node name: '{}'", cfg.node_name);
    println!(
        "        Datacenter: '{}' (Segment: '<all>')",
        cfg.datacenter
    );
    println!(
        "            Server: {} (Bootstrap: {})",
        cfg.server, cfg.bootstrap
    );
    println!(
        "       Client Addr: [{}] (HTTP: {}, DNS: {})",
        cfg.client_addr, cfg.http_port, cfg.dns_port
    );
    println!(
        "      Cluster Addr: {} (LAN: {}, WAN: {})",
        cfg.advertise_ip(),
        cfg.serf_lan_port,
        cfg.serf_wan_port
    );
    println!("==> Log data will now stream in as it occurs:");
    if let Some(l) = listener {
        let router = http::router(api.clone());
        let per_client = cfg.http_max_conns_per_client;
        tokio::spawn(http::serve(l, router, per_client, 65_536));
        tracing::info!(address = %listen, "agent: Started HTTP server");
    }
    if cfg.dev {
        tracing::info!(leader = %rpc_addr, "agent: cluster leadership acquired (single node)");
    }
    let mut watches = spawn_watches(&api, &listen, watch_specs);
    if let (Some(raft), Some(lan)) = (&raft, &lan) {
        raft.start_reconcile(lan.clone(), RECONCILE_EVERY);
    }
    if let (Some(lan), Some(wan)) = (&lan, &api.wan) {
        tokio::spawn(crate::serf::flood_join(
            lan.clone(),
            wan.clone(),
            RECONCILE_EVERY,
        ));
    }
    let snapshot = cfg
        .data_dir
        .as_ref()
        .filter(|_| lan.is_some())
        .map(|d| Arc::new(crate::serf::Snapshot::new(d.join("serf/local.snapshot"))));
    if let Some(lan) = &lan {
        let mut join = cfg.start_join.clone();
        join.extend(cfg.retry_join.iter().cloned());
        if let Some(snapshot) = &snapshot {
            match snapshot.load() {
                Some(prev) if prev.left && !cfg.rejoin_after_leave => {
                    tracing::info!("serf: Ignoring previous nodes: this node left gracefully (rejoin_after_leave is off)")
                }
                Some(prev) if !prev.peers.is_empty() => {
                    tracing::info!(
                        peers = prev.peers.len(),
                        "serf: Re-joining previously known nodes"
                    );
                    join.extend(prev.peers.iter().map(|a| a.to_string()));
                }
                _ => {}
            }
            tokio::spawn(snapshot.clone().keep(lan.clone(), SNAPSHOT_EVERY));
        }
        tokio::spawn(crate::serf::retry_join(
            lan.clone(),
            join,
            cfg.serf_lan_port as u16,
            cfg.retry_interval,
        ));
    }
    println!("==> Tribune agent running!");

    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let (Ok(mut hup), Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return 1;
    };
    loop {
        let reply = tokio::select! {
            _ = hup.recv() => None,
            _ = int.recv() => {
                tracing::info!("agent: Caught signal: interrupt");
                if !cfg.skip_leave_on_interrupt {
                    tracing::info!("agent: Gracefully leaving (skip_leave_on_interrupt is off)");
                    leave(&api, raft.as_deref(), snapshot.as_deref()).await;
                }
                break;
            }
            _ = term.recv() => {
                tracing::info!("agent: Caught signal: terminated");
                if cfg.leave_on_terminate {
                    tracing::info!("agent: Gracefully leaving (leave_on_terminate is on)");
                    leave(&api, raft.as_deref(), snapshot.as_deref()).await;
                }
                break;
            }
            c = control_rx.recv() => match c {
                Some(Control::Reload(tx)) => Some(tx),
                Some(Control::Leave) | None => { tracing::info!("agent: Requesting shutdown (leave)"); leave(&api, raft.as_deref(), snapshot.as_deref()).await; break; }
            },
        };
        tracing::info!("agent: Reloading configuration...");
        let result = match config::load(&opts) {
            Ok((new, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                match compile_watches(&new) {
                    Ok(specs) => {
                        let _ = level.modify(|f| *f = level_filter(&new.log_level));
                        for w in watches.drain(..) {
                            w.abort();
                        }
                        watches = spawn_watches(&api, &listen, specs);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::error!("agent: Failed to reload configs: {e}");
        }
        if let Some(tx) = reply {
            let _ = tx.send(result);
        }
    }
    tracing::info!("agent: shutdown complete");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_become_config() {
        let o = parse_args(&argv(&[
            "-dev",
            "-node=n1",
            "--http-port",
            "9001",
            "-join=a",
            "-retry-join",
            "b",
            "-config-dir=/etc/x",
            "-config-file",
            "/f.json",
            "-server",
        ]))
        .unwrap();
        assert!(o.dev);
        assert_eq!(
            o.sources,
            vec![Source::Dir("/etc/x".into()), Source::File("/f.json".into())]
        );
        assert_eq!(
            Value::Object(o.flags),
            json!({"node_name": "n1", "ports": {"http": 9001}, "retry_join": ["a", "b"], "server": true})
        );
        assert!(
            matches!(parse_args(&argv(&["-http-port=x"])), Err(FlagError::Bad(m)) if m.contains("http-port"))
        );
        assert!(matches!(
            parse_args(&argv(&["-bogus"])),
            Err(FlagError::Bad(_))
        ));
        assert!(matches!(
            parse_args(&argv(&["extra"])),
            Err(FlagError::Bad(_))
        ));
        assert_eq!(o.format, None);
    }

    #[test]
    fn config_format_flag() {
        let format = |args: &[&str]| parse_args(&argv(args)).map(|o| o.format);
        assert_eq!(
            format(&["-config-format=hcl"]),
            Ok(Some(config::Format::Hcl))
        );
        assert_eq!(
            format(&["-config-format", "json"]),
            Ok(Some(config::Format::Json))
        );
        assert_eq!(format(&["-config-format="]), Ok(None));
        let err = format(&["-config-format=yaml"]).unwrap_err();
        assert_eq!(
            err,
            FlagError::Bad("-config-format=yaml: must be json or hcl".into())
        );
    }

    #[test]
    fn second_lock_on_data_dir_fails() {
        let d = std::env::temp_dir().join(format!("tribune-lock-{}", std::process::id()));
        let first = lock_data_dir(&d).unwrap();
        let err = lock_data_dir(&d).unwrap_err().to_string();
        assert!(err.contains("in use by another agent"), "{err}");
        drop(first);
        lock_data_dir(&d).unwrap();
    }
}

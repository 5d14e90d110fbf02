//! `tribune agent`: load the config, take the data_dir lock, set up logging, start the store,
//! gossip, the HTTP API, DNS and the config watches; then run until told to leave (SIGINT,
//! SIGTERM, `/v1/agent/leave`), reloading on SIGHUP and `/v1/agent/reload`.
//!
//! [`run`] composes the steps, each in its module:
//!
//! - `flags`: the command line, as one more config source;
//! - `datadir`: the data_dir lock;
//! - `identity`: the node id, and this agent as the API, gossip and DNS describe it;
//! - `process`: the pid file and the open-files limit;
//! - `logging`: the log lines, and the banner;
//! - `storage`: the dev store or a server's Raft store;
//! - `gossip`: the gossip pools and joining the cluster;
//! - `listeners`: the HTTP API and the DNS interface;
//! - `watches`: the config's watches;
//! - `lifecycle`: signals, graceful leave, reload;
//! - `error`: why the agent did not start, printed one way.

pub(crate) mod catalog_port;
mod datadir;
mod error;
mod flags;
mod gossip;
mod identity;
mod lifecycle;
mod listeners;
mod logging;
mod process;
mod services;
mod storage;
mod watches;

use tokio::sync::mpsc;

use crate::config;
use crate::config::LoadOptions;
use crate::flags::FlagError;

pub use self::error::StartError;
pub use self::flags::parse_args;
use self::lifecycle::Running;

/// Run the agent with its command line; returns the exit code. A bad command line prints
/// the usage, as Consul's does; any other failure to start prints one `==> ` line (see
/// [`error::report`]).
pub async fn run(argv: &[String]) -> i32 {
    let opts = match parse_args(argv) {
        Ok(o) => o,
        Err(FlagError::Help) => {
            println!("{}", flags::USAGE);
            return 0;
        }
        Err(FlagError::Bad(m)) => {
            eprintln!("{m}\n\n{}", flags::USAGE);
            return 1;
        }
    };
    match start(&opts).await {
        Ok(agent) => lifecycle::run(agent, &opts).await,
        Err(e) => error::report(&e),
    }
}

/// Start everything, in order; the first step that fails stops the start.
async fn start(opts: &LoadOptions) -> Result<Running, StartError> {
    let (cfg, warnings) = config::load(opts)?;
    let watch_specs = watches::compile(&cfg)?;
    let definitions = services::compile(&cfg)?;
    let lock = datadir::lock(&cfg)?;
    let node_id = identity::node_id(&cfg)?;
    process::write_pid_file(opts.pid_file.as_deref())?;
    process::raise_fd_limit();
    let (level, log_warning) = logging::init(&cfg);
    logging::warn_all(warnings.into_iter().chain(log_warning));

    let rpc_addr = format!("{}:{}", cfg.advertise_ip(), cfg.server_port);
    let (store, raft) = storage::open(&cfg, &rpc_addr).await?;
    storage::reap_tombstones(&store, &rpc_addr);
    let (control_tx, control) = mpsc::unbounded_channel();
    let agent_info = identity::agent_info(&cfg, &node_id, raft.as_ref().map(|r| r.id));
    let pools = gossip::start(&cfg, &agent_info).await?;
    let api = listeners::api(&cfg, store, raft.as_ref(), pools, agent_info, control_tx);
    let http_listener = listeners::bind_http(&cfg).await?;
    listeners::start_dns(&cfg, &api).await?;

    logging::banner(&cfg, &node_id);
    listeners::serve_http(&cfg, http_listener, &api);
    services::apply(&api, definitions)?;
    catalog_port::spawn(&api);
    if cfg.dev {
        tracing::info!(leader = %rpc_addr, "agent: cluster leadership acquired (single node)");
    }
    let watches = watches::spawn(&api, &cfg.http_listen(), watch_specs);
    let snapshot = gossip::join(&cfg, raft.as_ref(), api.lan.as_ref(), api.wan.as_ref());
    if cfg.dev {
        gossip::register_dev_agent(&cfg, &api);
    }
    let signals = lifecycle::signals()?;
    println!("==> Tribune agent running!");
    Ok(Running {
        cfg,
        api,
        raft,
        snapshot,
        level,
        watches,
        control,
        signals,
        lock,
    })
}

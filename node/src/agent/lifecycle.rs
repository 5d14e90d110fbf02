//! A started agent's life: it runs until a signal or the API tells it to stop, leaving the
//! cluster gracefully when it should; SIGHUP and `/v1/agent/reload` reload the config.

use std::fs::File;
use std::sync::Arc;

use tokio::signal::unix::signal;
use tokio::signal::unix::Signal;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::error::StartError;
use super::logging;
use super::logging::LevelHandle;
use super::watches;
use crate::config;
use crate::config::Config;
use crate::config::ConfigError;
use crate::config::LoadOptions;
use crate::http::Api;
use crate::http::Control;
use crate::raft::RaftStore;
use crate::serf::Snapshot;

/// How long a leaving server waits to see itself out of the Raft configuration
/// (Consul's `leave_drain_time`).
const LEAVE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The signals the agent acts on.
pub struct Signals {
    hup: Signal,
    int: Signal,
    term: Signal,
}

/// Catch SIGHUP (reload), SIGINT and SIGTERM (stop).
pub fn signals() -> Result<Signals, StartError> {
    Ok(Signals {
        hup: signal(SignalKind::hangup()).map_err(StartError::Signals)?,
        int: signal(SignalKind::interrupt()).map_err(StartError::Signals)?,
        term: signal(SignalKind::terminate()).map_err(StartError::Signals)?,
    })
}

/// A started agent: what its lifecycle acts on, and what it holds until it stops.
pub struct Running {
    pub cfg: Config,
    pub api: Arc<Api>,
    pub raft: Option<Arc<RaftStore>>,
    pub snapshot: Option<Arc<Snapshot>>,
    pub level: LevelHandle,
    pub watches: Vec<JoinHandle<()>>,
    pub control: UnboundedReceiver<Control>,
    pub signals: Signals,
    /// The data_dir lock, released when the agent stops.
    pub lock: Option<File>,
}

/// Run until told to stop; reload on SIGHUP and `/v1/agent/reload`. Returns the exit code.
pub async fn run(agent: Running, opts: &LoadOptions) -> i32 {
    let Running {
        cfg,
        api,
        raft,
        snapshot,
        level,
        mut watches,
        mut control,
        mut signals,
        lock: _lock,
    } = agent;
    let listen = cfg.http_listen();
    let leave_now = || leave(&api, raft.as_deref(), snapshot.as_deref());
    loop {
        let reply = tokio::select! {
            _ = signals.hup.recv() => None,
            _ = signals.int.recv() => {
                tracing::info!("agent: Caught signal: interrupt");
                if !cfg.skip_leave_on_interrupt {
                    tracing::info!("agent: Gracefully leaving (skip_leave_on_interrupt is off)");
                    leave_now().await;
                }
                break;
            }
            _ = signals.term.recv() => {
                tracing::info!("agent: Caught signal: terminated");
                if cfg.leave_on_terminate {
                    tracing::info!("agent: Gracefully leaving (leave_on_terminate is on)");
                    leave_now().await;
                }
                break;
            }
            c = control.recv() => match c {
                Some(Control::Reload(tx)) => Some(tx),
                Some(Control::Leave) | None => {
                    tracing::info!("agent: Requesting shutdown (leave)");
                    leave_now().await;
                    break;
                }
            },
        };
        tracing::info!("agent: Reloading configuration...");
        let result = reload(opts, &level, &api, &listen, &mut watches);
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

/// Load the config again; if it loads, and its watches and service definitions compile, take
/// its log level, its services and checks, and restart the watches with the new ones. Other
/// settings wait for a restart.
fn reload(
    opts: &LoadOptions,
    level: &LevelHandle,
    api: &Arc<Api>,
    listen: &str,
    watches: &mut Vec<JoinHandle<()>>,
) -> Result<(), ConfigError> {
    let (new, warnings) = config::load(opts)?;
    logging::warn_all(warnings);
    let specs = watches::compile(&new)?;
    let definitions = super::services::compile(&new)?;
    super::services::apply(api, definitions)?;
    let _ = level.modify(|f| *f = logging::level_filter(&new.log_level));
    for w in watches.drain(..) {
        w.abort();
    }
    *watches = watches::spawn(api, listen, specs);
    Ok(())
}

/// A graceful leave: the gossip pools first (the leave intent needs a moment to spread, and
/// then the leader will not add this server back), then a server leaves the Raft
/// configuration.
async fn leave(api: &Api, raft: Option<&RaftStore>, snapshot: Option<&Snapshot>) {
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

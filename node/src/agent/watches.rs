//! The config's watches: compiled at startup and on reload (a bad one stops either), and
//! run until the next reload.

use std::sync::Arc;

use crate::config::Config;
use crate::config::ConfigError;
use crate::http::Api;
use crate::watch_spec::Handler;
use crate::watch_spec::WatchSpec;

/// The config's `watches`, each compiled, or the first that is not a watch.
pub fn compile(cfg: &Config) -> Result<Vec<WatchSpec>, ConfigError> {
    cfg.watches
        .iter()
        .map(|w| Ok(crate::watch_spec::parse_watch(w)?))
        .collect()
}

/// Start the watches; a client agent's read through its own HTTP API at `http_addr`.
pub fn spawn(
    api: &Arc<Api>,
    http_addr: &str,
    specs: Vec<WatchSpec>,
) -> Vec<tokio::task::JoinHandle<()>> {
    for s in &specs {
        if let Handler::Http { url, .. } = &s.handler {
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

//! Why the agent did not start, and the one way it says so.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::dns::DnsError;

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
        "Error starting agent: data_dir {} is in use by another agent \
         (could not lock {}: {source})",
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
    /// The pid file cannot be written: check `-pid-file`'s path and its permissions.
    #[error("Error writing pid file {}: {source}", path.display())]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent cannot catch SIGHUP, SIGINT or SIGTERM.
    #[error("Error starting agent: cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The DNS interface did not start.
    #[error(transparent)]
    Dns(#[from] DnsError),
}

pub fn bad_address(what: &'static str, value: impl std::fmt::Display) -> StartError {
    StartError::BadAddress {
        what,
        value: value.to_string(),
    }
}

/// Every startup failure ends here, printed as Consul prints them: one `==> ` line on
/// stderr, and to the log if logging is up yet (before that, the log line goes nowhere). The
/// agent then exits with the code returned, 1.
pub fn report(e: &StartError) -> i32 {
    tracing::error!("{e}");
    eprintln!("==> {e}");
    1
}

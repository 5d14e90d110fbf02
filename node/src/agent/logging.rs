//! Logging: the log lines to stdout (and syslog, if enabled), plain or JSON, at a level a
//! reload can change; and the banner an operator sees when the agent has started.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

use crate::config::Config;
use crate::http;

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

pub type LevelHandle = reload::Handle<LevelFilter, Registry>;

pub fn level_filter(level: &str) -> LevelFilter {
    level.parse().unwrap_or(LevelFilter::INFO)
}

pub fn init(cfg: &Config) -> (LevelHandle, Option<String>) {
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

/// The config's warnings (unknown keys, a syslog that cannot be reached...), once logging is
/// up.
pub fn warn_all(warnings: impl IntoIterator<Item = String>) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// What Consul prints once its agent has started, before the log lines stream in.
pub fn banner(cfg: &Config, node_id: &str) {
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
}

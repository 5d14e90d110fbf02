//! The Tribune agent as a library: the binary in `main.rs` dispatches to `agent` and `cli`,
//! and the fuzz targets (`fuzz/`) reach the decoders that face the network and the config
//! loader through it.

pub mod agent;
pub mod cli;
pub mod client;
pub mod config;
pub mod directory;
pub mod dns;
pub mod durable;
pub mod flags;
pub mod forward;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod raft;
pub mod serf;
pub mod store;
pub mod watch;
pub mod watch_spec;
pub mod wire;

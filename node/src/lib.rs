//! The Tribune agent as a library: the binary in `main.rs` dispatches to `agent` and `cli`,
//! and the fuzz targets (`fuzz/`) reach the decoders that face the network and the config
//! loader through it.
//!
//! The modules stand in layers, each importing only from the layers beneath it (no module
//! imports one that imports it back), bottom up:
//!
//! 1. wire and tools: `wire` (what is said on server RPC), `metrics` (the counters), `hub`
//!    (wakes blocking queries), `flags`, `durable`, `client` (the HTTP client);
//! 2. the seams and the gossip shell: `store` (what the API needs of a replicated state
//!    machine, and the dev store), `serf` (the gossip pools), `watch_spec` (what a watch is);
//! 3. servers and state: `raft` (the replicated store and its RPC transport), `config`,
//!    `directory` (what DNS answers from: the catalog, a client agent's view of it, gossip),
//!    `local` (this agent's services and the checks it runs);
//! 4. the faces: `forward` (client agents to servers), `dns`, `http`, then `watch`, and on
//!    top `cli` and `agent`, which wires everything together.

// Network input never unwraps: a failure there is an error answered, not a panic. Tests may
// unwrap (clippy.toml).
#![deny(clippy::unwrap_used)]

pub mod agent;
pub mod cli;
pub mod client;
pub mod config;
pub mod directory;
pub mod dns;
pub mod durable;
pub mod flags;
pub mod forward;
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod local;
pub mod metrics;
pub mod raft;
pub mod serf;
pub mod store;
pub mod watch;
pub mod watch_spec;
pub mod wire;

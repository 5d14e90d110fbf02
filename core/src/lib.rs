//! Tribune's sans-IO core.
//!
//! Nothing in this crate reads a clock, opens a socket, spawns a thread or draws from a
//! global random source: time and randomness are inputs. The crate holds the KV index
//! (`kv`), the catalog of nodes, services and checks (`catalog`), the replicated state
//! machine (`fsm`), the Raft glue (`raft`), gossip (`gossip`) and the cluster engine every
//! server runs around Raft (`cluster`), and an agent's local services and checks with
//! their anti-entropy (`local`).

#![forbid(unsafe_code)]

pub mod catalog;
pub mod cluster;
pub mod fsm;
pub mod gossip;
pub mod kv;
pub mod local;
pub mod raft;

//! Raft glue (openraft type config and storage).

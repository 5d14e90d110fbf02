//! KV entries as `kv export` JSON (or a key and a value) written and read back through the KV
//! endpoints (see `tribune_node::fuzzing::kv_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tribune_node::fuzzing::kv_json(data));

//! A query string parsed into the read options every read takes, then sent with a KV read through
//! the API (see `tribune_node::fuzzing::http_query`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tribune_node::fuzzing::http_query(data));

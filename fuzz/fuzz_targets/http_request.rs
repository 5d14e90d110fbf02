//! Bytes as the HTTP connection loop reads them: a request head, then a chunked body (see
//! `tribune_node::fuzzing::http_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tribune_node::fuzzing::http_request(data));

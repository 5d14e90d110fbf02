//! A DNS query answered by a fixed zone over UDP and TCP; the answer must parse and fit its
//! transport (see `tribune_node::fuzzing::dns_query`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tribune_node::fuzzing::dns_query(data));

//! A `?filter` expression parsed, evaluated against a health entry (or the JSON after a NUL),
//! and checked against its negation (see `tribune_node::fuzzing::filter`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tribune_node::fuzzing::filter(data));

//! A config source as JSON and as HCL text through the loader's checks and the build of a Config
//! (see `tribune_node::fuzzing::config_loader`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tribune_node::fuzzing::config_loader(data));

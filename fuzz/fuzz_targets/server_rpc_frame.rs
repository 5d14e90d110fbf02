//! Server RPC (8300) frames as a served connection reads them: header, size bound, postcard body,
//! multiplexed frames after a Mux; forwarded HTTP calls run through a dev-store API (see
//! `tribune_node::fuzzing::rpc_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tribune_node::fuzzing::rpc_frame(data));

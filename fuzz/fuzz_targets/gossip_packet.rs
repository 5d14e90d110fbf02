//! Arbitrary bytes (first byte: 0 = plaintext node, 1 = node with the fuzz key) fed to a live
//! gossip state machine as a UDP packet and as a stream payload; `exercise` checks that the
//! node survives with its invariants intact. A second pass wraps the bytes in a valid
//! encryption with the known key so the decoder behind the cipher is reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tribune_core::gossip::fuzzing::{encrypt_with_fuzz_key, exercise};

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if let Some((_, rest)) = data.split_first() {
        let mut wrapped = vec![1u8];
        wrapped.extend_from_slice(&encrypt_with_fuzz_key(rest));
        exercise(&wrapped);
    }
});

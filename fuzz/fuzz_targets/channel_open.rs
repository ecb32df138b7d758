//! Both ends of an established channel fed arbitrary ciphertext frames.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::channel_open(data));

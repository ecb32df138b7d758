//! The relay side of the handshake fed arbitrary bytes as `ClientHello` and `ClientStart`,
//! including well-encrypted `ClientStart` plaintexts that reach certificate and signature
//! verification.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::server_handshake(data));

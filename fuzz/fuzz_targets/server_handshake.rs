//! The relay side of the handshake fed arbitrary bytes as `ClientHello` and `ClientStart`,
//! including well-encrypted `ClientStart` plaintexts that reach `AuthBody` decoding and the
//! device's transcript signature check, and genuinely signed `AuthBody`s whose user and user
//! proof the input picks (the recovery proof check, with an oracle).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::server_handshake(data));

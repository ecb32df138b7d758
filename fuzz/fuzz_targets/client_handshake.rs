//! The client side of the handshake fed arbitrary, relay-signed or emulated-relay
//! `ServerHello`s and `SessionStart`s, then arbitrary server frames through the client's
//! receive half.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::client_handshake(data));

//! Every message type a peer decodes, fed arbitrary bytes: must give a value or an error,
//! never a panic or an unbounded allocation.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::decode_frames(data));

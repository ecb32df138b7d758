//! Both pairing state machines (inviter and joiner) with a relay in the middle that delivers
//! the genuine message, one of its own, or arbitrary bytes at every step: never a panic, and
//! never an admission (a request the inviter accepts) or a grant of the data keys for a peer
//! that did not prove the code.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::pairing(data));

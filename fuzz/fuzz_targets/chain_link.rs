//! A device chain link decoded from arbitrary bytes and applied to a small fixed chain, as
//! it is, re-signed by each key (the user key, active, revoked and unknown devices) or placed
//! at the chain's head: never a panic, and never a link accepted from a device that is not
//! active, with a signature its signer did not make, or with another effect than its body says.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_protocol::fuzzing::chain_link(data));

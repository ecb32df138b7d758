//! The client SDK's outbox journal parser (`ferry_client::fuzzing::outbox_journal`): any
//! bytes after the header parse without a panic, and the parser keeps its own promises.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_client::fuzzing::outbox_journal(data));

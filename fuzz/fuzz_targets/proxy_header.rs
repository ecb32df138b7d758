//! The relay's PROXY protocol header decoder (`relay/src/proxy_protocol/header.rs`). The file
//! is compiled here as it is (it uses nothing but `std`): the relay crate, with its database
//! and TLS drivers, does not belong in this workspace, and the protocol crate has no business
//! with a load balancer's header.
//!
//! Oracles: no panic; a complete header is at most `MAX_LEN` bytes, decodes the same from its
//! own bytes (nothing after it was looked at) and is incomplete one byte shorter (its length
//! is exact); an incomplete one is shorter than the most the decoder may need; an error is
//! final (more bytes give the same error).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../relay/src/proxy_protocol/header.rs"]
mod header;

use header::{Decoded, MAX_LEN, V1_MAX_LEN, decode};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Decoded::Complete { header, len }) => {
            assert!(len > 0 && len <= data.len() && len <= MAX_LEN);
            assert_eq!(decode(&data[..len]), Ok(Decoded::Complete { header, len }));
            assert_eq!(decode(&data[..len - 1]), Ok(Decoded::Incomplete));
        }
        Ok(Decoded::Incomplete) => {
            assert!(data.len() < MAX_LEN);
            if data.first() == Some(&b'P') {
                assert!(data.len() < V1_MAX_LEN);
            }
        }
        Err(e) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\0");
            assert_eq!(decode(&longer), Err(e));
        }
    }
});

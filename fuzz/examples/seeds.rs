//! Writes a small seed corpus into `fuzz/corpus/<target>/seed-<n>` (not committed):
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//!
//! The protocol seeds come from `ferry_protocol::fuzzing::seeds`. The outbox journal seeds
//! are written here, in the journal's record format (`u32` LE body length, body, first 8
//! bytes of the body's SHA-256; a body is `1 ‖ seq (u64 LE) ‖ payload` for an entry,
//! `2 ‖ seq` for a "done" record and `3 ‖ new seq ‖ old seq ‖ payload` for an entry moved to a
//! new sequence): without them a fuzzer would almost never pass the check.

use std::path::Path;

use sha2::{Digest, Sha256};

fn record(out: &mut Vec<u8>, kind: u8, seq: u64, payload: &[u8]) {
    let mut body = vec![kind];
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(payload);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&Sha256::digest(&body)[..8]);
}

fn journals() -> Vec<Vec<u8>> {
    let mut two = Vec::new();
    record(&mut two, 1, 1, &[0xAA; 20]);
    record(&mut two, 1, 2, &[0xBB; 3]);
    let mut done = two.clone();
    record(&mut done, 2, 1, &[]);
    let mut torn = done.clone();
    torn.extend_from_slice(&two[..10]);
    // A damaged record with a valid one after it.
    let mut damaged = two.clone();
    damaged[8] ^= 1;
    let mut bad_kind = Vec::new();
    record(&mut bad_kind, 3, 4, &[]);
    record(&mut bad_kind, 2, 5, &[1]);
    record(&mut bad_kind, 1, 6, &[]);
    let mut moved = two.clone();
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[0xCC; 20]);
    record(&mut moved, 3, 7, &body);
    record(&mut moved, 2, 2, &[]);
    vec![two, done, torn, damaged, bad_kind, moved]
}

/// PROXY protocol headers as load balancers send them, each followed by a client's first
/// bytes: v1 TCP4, TCP6 and UNKNOWN, v2 PROXY over IPv4 and over IPv6 with an extension, v2
/// LOCAL.
fn proxy_headers() -> Vec<Vec<u8>> {
    let v2 = |command: u8, family: u8, payload: &[u8]| {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend_from_slice(&[0x20 | command, family]);
        header.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        header.extend_from_slice(payload);
        header.extend_from_slice(b"\x16\x03\x01");
        header
    };
    let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
    v6.resize(16, 7);
    v6.extend_from_within(..16);
    v6.extend_from_slice(&[
        0xdc, 0x04, 0x01, 0xbb, 0xea, 0x00, 0x04, 0x01, b'v', b'p', b'c',
    ]);
    vec![
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\nGET /ws HTTP/1.1\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\nGET /healthz HTTP/1.1\r\n".to_vec(),
        b"PROXY UNKNOWN\r\nGET /healthz HTTP/1.1\r\n".to_vec(),
        v2(
            1,
            0x11,
            &[203, 0, 113, 7, 192, 0, 2, 1, 0xdc, 0x04, 0x01, 0xbb],
        ),
        v2(1, 0x21, &v6),
        v2(0, 0x00, &[]),
    ]
}

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds = ferry_protocol::fuzzing::seeds();
    seeds.extend(journals().into_iter().map(|j| ("outbox_journal", j)));
    seeds.extend(proxy_headers().into_iter().map(|h| ("proxy_header", h)));
    let mut counts = std::collections::BTreeMap::new();
    for (target, input) in seeds {
        let n = counts.entry(target).or_insert(0usize);
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{n}")), input)?;
        *n += 1;
    }
    for (target, n) in counts {
        println!("{target}: {n} seeds");
    }
    Ok(())
}

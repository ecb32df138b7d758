//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each takes arbitrary
//! bytes and must never panic. They live here so the fuzzers exercise exactly the code
//! production runs.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::handshake::{
    ClientHandshake, ClientHello, ClientStart, Credentials, ServerHandshake,
    ServerHandshakeMessage, SessionStart,
};
use crate::{ClientFrame, RelayKey, ServerFrame, codec};

/// Decodes `data` as every message type a peer accepts.
pub fn decode_frames(data: &[u8]) {
    let _ = codec::decode::<ClientFrame>(data);
    let _ = codec::decode::<ServerFrame>(data);
    let _ = codec::decode::<ClientHello>(data);
    let _ = codec::decode::<ServerHandshakeMessage>(data);
    let _ = codec::decode::<ClientStart>(data);
    let _ = codec::decode::<SessionStart>(data);
    let _ = codec::decode::<crate::pairing::PairingMessage>(data);
}

/// Drives the relay side of the handshake with `data`, three ways:
/// 1. the first byte splits the rest into a `ClientHello` and an encrypted `ClientStart`;
/// 2. after a genuine `ClientHello`, `data` is the encrypted `ClientStart`;
/// 3. after a genuine `ClientHello`, `data` is sealed under the real key as the `ClientStart`
///    plaintext, so certificate and signature verification are reached.
pub fn server_handshake(data: &[u8]) {
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let relay = RelayKey::generate(&mut rng);

    if let Some((&split, rest)) = data.split_first() {
        let (hello, start) = rest.split_at((split as usize).min(rest.len()));
        if let Ok((server, _)) = ServerHandshake::handle_client_hello(&relay, hello, &mut rng) {
            let _ = server.handle_client_start(start);
        }
    }

    let (_, hello) = ClientHandshake::start(relay.id(), &mut rng);
    if let Ok((server, _)) = ServerHandshake::handle_client_hello(&relay, &hello, &mut rng) {
        let _ = server.handle_client_start(data);
    }

    let (client, hello) = ClientHandshake::start(relay.id(), &mut rng);
    if let Ok((server, server_hello)) =
        ServerHandshake::handle_client_hello(&relay, &hello, &mut rng)
        && let Some(sealed) = client.seal_raw_start(&server_hello, data)
    {
        let _ = server.handle_client_start(&sealed);
    }
}

/// Opens `data` as a sequence of channel frames (each prefixed by a one-byte length) on both
/// ends of a real channel, after a genuine handshake.
pub fn channel_open(data: &[u8]) {
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let relay = RelayKey::generate(&mut rng);
    let (client, hello) = ClientHandshake::start(relay.id(), &mut rng);
    let Ok((server, server_hello)) = ServerHandshake::handle_client_hello(&relay, &hello, &mut rng)
    else {
        return;
    };
    let Ok((client, start)) = client.handle_server_hello(&server_hello, Credentials::Anonymous)
    else {
        return;
    };
    let Ok(pending) = server.handle_client_start(&start) else {
        return;
    };
    let (mut server_channel, established) = pending.accept(0, 0);
    let Ok((_, mut client_channel)) = client.handle_session(&established) else {
        return;
    };

    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (frame, tail) = tail.split_at((len as usize).min(tail.len()));
        let _ = server_channel.open(frame);
        let _ = client_channel.open(frame);
        rest = tail;
    }
}

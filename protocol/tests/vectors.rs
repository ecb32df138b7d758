//! Known-answer vectors for the whole protocol, made deterministically from fixed inputs.
//!
//! Every secret and random value is fixed (see the start of `vectors()`), so an independent implementation can
//! reproduce each byte. The expected values live in `docs/protocol.md` between the
//! `vectors:begin` and `vectors:end` markers; this test recomputes them and compares, so the
//! specification and the code cannot drift apart. After an intended protocol change, rewrite the
//! block with `FERRY_WRITE_VECTORS=1 cargo test -p ferry-protocol --test vectors` and review the
//! diff: every changed line is a wire-format change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt::Write as _;

use ferry_protocol::handshake::{
    ClientHandshake, Credentials, ServerHandshake, ServerHandshakeMessage, keys,
};
use ferry_protocol::pairing;
use ferry_protocol::seal::{self, DataKey, EventSlot};
use ferry_protocol::*;
use rand_core::{CryptoRng, RngCore};

/// Serves fixed byte strings, in order, as "randomness".
struct Scripted(VecDeque<u8>);

impl Scripted {
    fn new(parts: &[&[u8]]) -> Self {
        Self(parts.iter().flat_map(|p| p.iter().copied()).collect())
    }
}

impl RngCore for Scripted {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            *byte = self.0.pop_front().expect("the script ran out of bytes");
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for Scripted {}

fn vectors() -> String {
    let mut out = String::new();
    let mut line =
        |name: &str, bytes: &[u8]| writeln!(out, "{name} = {}", hex::encode(bytes)).unwrap();

    // Inputs.
    let relay = RelayKey::from_secret_bytes(&[0xa0; 32]);
    let user = UserKey::from_secret_bytes(&[0xb0; 32]);
    let device = DeviceKey::from_secret_bytes(&[0xc0; 32]);
    let (client_ephemeral, client_nonce) = ([0x11; 32], [0x12; 32]);
    let (server_ephemeral, server_nonce) = ([0x21; 32], [0x22; 32]);
    line("relay_secret", &[0xa0; 32]);
    line("relay_public", relay.id().as_bytes());
    line("user_secret", &[0xb0; 32]);
    line("user_public", user.id().as_bytes());
    line("device_secret", &[0xc0; 32]);
    line("device_public", device.id().as_bytes());

    let certificate =
        DeviceCertificate::issue(&user, device.id(), "laptop", 1_700_000_000).unwrap();
    line("device_certificate", &codec::encode(&certificate));

    // Steps 1–2.
    line("client_ephemeral_secret", &client_ephemeral);
    line("client_nonce", &client_nonce);
    let mut client_rng = Scripted::new(&[&client_ephemeral, &client_nonce]);
    let (client, client_hello) = ClientHandshake::start(relay.id(), &mut client_rng);
    line("client_hello", &client_hello);

    line("server_ephemeral_secret", &server_ephemeral);
    line("server_nonce", &server_nonce);
    let mut server_rng = Scripted::new(&[&server_ephemeral, &server_nonce]);
    let (server, server_hello) =
        ServerHandshake::handle_client_hello(&relay, &client_hello, &mut server_rng).unwrap();
    line("server_hello", &server_hello);

    // Step 3, recomputed from the public messages and the ephemeral secrets.
    let ServerHandshakeMessage::Hello(hello) = codec::decode(&server_hello).unwrap() else {
        panic!()
    };
    let transcript = keys::transcript_hash(&client_hello, &hello.body);
    line("transcript_hash", &transcript);
    let server_public =
        x25519_dalek::x25519(server_ephemeral, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(client_ephemeral, server_public);
    line("x25519_shared_secret", &shared);
    let session_keys = keys::derive(&shared, &transcript);
    line("key_client_to_server", &session_keys.client_to_server);
    line("key_server_to_client", &session_keys.server_to_client);
    line("session_id", &session_keys.session_id);

    // Steps 4–5.
    let credentials = Credentials::Device {
        key: &device,
        certificate,
        resume: None,
    };
    let (client, client_start) = client
        .handle_server_hello(&server_hello, credentials)
        .unwrap();
    line("client_start_encrypted", &client_start);
    let (mut server_channel, established) = server
        .handle_client_start(&client_start)
        .unwrap()
        .accept_device(5, 3, 7);
    line("session_established_encrypted", &established);
    // The keys listed above are the ones the state machines used: frame 0 opens with k_c2s.
    {
        use chacha20poly1305::aead::{Aead, KeyInit};
        let cipher =
            chacha20poly1305::ChaCha20Poly1305::new((&session_keys.client_to_server).into());
        assert!(
            cipher
                .decrypt(&[0u8; 12].into(), client_start.as_slice())
                .is_ok()
        );
    }
    let (_, mut client_channel) = client.handle_session(&established).unwrap();

    // Payload sealing and the first frames of the channel.
    let data_key = DataKey::from_bytes(&[0xd0; 32]);
    let payload_nonce = [0x33; 24];
    line("data_key", data_key.bytes());
    line("payload_nonce", &payload_nonce);
    line("payload_plaintext", b"hello, ferry");
    let slot = EventSlot {
        user: user.id(),
        device: device.id(),
        device_seq: 1,
    };
    let sealed = seal::seal(
        &data_key,
        &slot,
        b"hello, ferry",
        &mut Scripted::new(&[&payload_nonce]),
    )
    .unwrap();
    line("payload_sealed", &sealed.0);

    let append = ClientFrame::Append(Append {
        device_seq: 1,
        payload: sealed.clone(),
    });
    line("append_frame_plain", &codec::encode(&append));
    line(
        "append_frame_encrypted",
        &client_channel.seal(&append).unwrap(),
    );
    let appended = ServerFrame::Appended {
        device_seq: 1,
        seq: 6,
    };
    line("appended_frame_plain", &codec::encode(&appended));
    line(
        "appended_frame_encrypted",
        &server_channel.seal(&appended).unwrap(),
    );

    let revocation = Revocation::issue(&user, device.id(), 1_700_000_100);
    line("revocation", &codec::encode(&revocation));

    // Pairing with code 7-123456 on the relay above: the joiner's new device key is 0xe0…,
    // SPAKE2 scalars are drawn from 64 bytes each (0x44… for the inviter, 0x55… for the
    // joiner).
    let code = pairing::PairingCode::parse("7-123456").unwrap();
    let relay_id = relay.id();
    let (inviter_identity, joiner_identity) = pairing::identities(&relay_id, code.slot());
    line("pair_inviter_identity", &inviter_identity);
    line("pair_joiner_identity", &joiner_identity);
    let joiner_device = DeviceKey::from_secret_bytes(&[0xe0; 32]);
    line("pair_joiner_device_public", joiner_device.id().as_bytes());
    let inviter = pairing::Inviter::start(&code, &relay_id, &mut Scripted::new(&[&[0x44; 64]]));
    let (joiner, join_body) =
        pairing::Joiner::start(&code, &relay_id, &mut Scripted::new(&[&[0x55; 64]]));
    line("pair_joiner_hello", &join_body);
    let (inviter, inviter_hello) = inviter.handle_joiner_hello(&join_body).unwrap();
    line("pair_inviter_hello", &inviter_hello);
    let (joiner, request) = joiner
        .handle_inviter_hello(&inviter_hello, &joiner_device, "tablet")
        .unwrap();
    line("pair_joiner_request", &request);
    line(
        "pair_confirmation_string",
        inviter.confirmation().as_bytes(),
    );
    let (_, grant) = inviter
        .handle_joiner_request(&request, &user, &data_key, 1_700_000_200)
        .unwrap();
    line("pair_inviter_grant", &grant);
    assert_eq!(
        joiner.handle_grant(&grant).unwrap().user_key.id(),
        user.id()
    );

    // Section 11: the recovery key and the device chain.
    let recovery = recovery::RecoveryKey::from_bytes([0x77; 32]);
    line("recovery_key_secret", &[0x77; 32]);
    line("recovery_key_written", recovery.display().as_bytes());
    let recovered_user = recovery.user_key();
    line("recovery_user_public", recovered_user.id().as_bytes());
    let mut chain = chain::Chain::new(recovered_user.id());
    let create = chain.sign(
        chain::LinkBody::Create {
            recovery_exchange: [0x78; 32],
            epoch_key: chain::SealedKey(vec![0x79; 104]),
        },
        chain::SigningKey::User(&recovered_user),
    );
    chain.apply(&create).unwrap();
    line("chain_link_1_create", &codec::encode(&create));
    line("chain_link_1_hash", &create.hash().0);
    let admit = chain.sign(
        chain::LinkBody::Admit {
            device: device.id(),
            exchange: [0x7a; 32],
            name: "laptop".into(),
            created_at: 1_700_000_000,
        },
        chain::SigningKey::User(&recovered_user),
    );
    chain.apply(&admit).unwrap();
    line("chain_link_2_admit", &codec::encode(&admit));
    line("chain_link_2_hash", &admit.hash().0);
    let recovery_exchange = recovery.exchange_secret();
    line("recovery_exchange_public", &recovery_exchange.public());
    let sealed_epoch = epoch::seal_epoch_key(
        &mut Scripted::new(&[&[0x7b; 32], &[0x7c; 24]]),
        &recovered_user.id(),
        0,
        &data_key,
        &recovery_exchange.public(),
    )
    .unwrap();
    line("epoch_0_key_sealed_to_recovery", &sealed_epoch.0);
    assert_eq!(
        epoch::open_epoch_key(&recovery_exchange, &recovered_user.id(), 0, &sealed_epoch)
            .unwrap()
            .bytes(),
        data_key.bytes()
    );
    out
}

const BEGIN: &str = "<!-- vectors:begin -->\n```text\n";
const END: &str = "```\n<!-- vectors:end -->";

#[test]
fn vectors_match_the_specification() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md exists");
    let start = doc
        .find(BEGIN)
        .expect("docs/protocol.md has a vectors:begin marker")
        + BEGIN.len();
    let end = doc
        .find(END)
        .expect("docs/protocol.md has a vectors:end marker");
    let computed = vectors();
    if std::env::var_os("FERRY_WRITE_VECTORS").is_some() {
        let rewritten = format!("{}{}{}", &doc[..start], computed, &doc[end..]);
        std::fs::write(path, rewritten).unwrap();
        return;
    }
    let documented = &doc[start..end];
    for (line, (want, got)) in documented.lines().zip(computed.lines()).enumerate() {
        assert_eq!(
            want,
            got,
            "docs/protocol.md vector line {} differs",
            line + 1
        );
    }
    assert_eq!(
        documented.lines().count(),
        computed.lines().count(),
        "vector count differs"
    );
}

#[test]
fn vectors_are_deterministic() {
    assert_eq!(vectors(), vectors());
}

#[test]
fn every_error_code_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    for code in ErrorCode::ALL {
        let row = format!(
            "| {} | `{}` | {} |",
            code.number(),
            code.name(),
            code.description()
        );
        assert!(doc.contains(&row), "docs/protocol.md lacks the row:\n{row}");
    }
}

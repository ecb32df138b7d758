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
    AuthBody, ClientHandshake, ClientStart, Credentials, ServerHandshake, ServerHandshakeMessage,
    keys,
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

/// The handshake of the vectors, run with fixed randomness so that every run has the same
/// transcript; `recovery` adds the user proof. Writes the handshake's lines if `line` is
/// given, and returns both channels.
fn handshake(
    relay: &RelayKey,
    user: &UserKey,
    device: &DeviceKey,
    recovery: Option<&UserKey>,
    out: &mut String,
) -> (ClientChannel, ServerChannel) {
    let mut line =
        |name: &str, bytes: &[u8]| writeln!(out, "{name} = {}", hex::encode(bytes)).unwrap();
    let (client_ephemeral, client_nonce) = ([0x11; 32], [0x12; 32]);
    let (server_ephemeral, server_nonce) = ([0x21; 32], [0x22; 32]);
    let first = recovery.is_none();

    // Steps 1–2.
    let mut client_rng = Scripted::new(&[&client_ephemeral, &client_nonce]);
    let (client, client_hello) = ClientHandshake::start(relay.id(), &mut client_rng);
    let mut server_rng = Scripted::new(&[&server_ephemeral, &server_nonce]);
    let (server, server_hello) =
        ServerHandshake::handle_client_hello(relay, &client_hello, &mut server_rng).unwrap();
    let ServerHandshakeMessage::Hello(hello) = codec::decode(&server_hello).unwrap() else {
        panic!()
    };
    let transcript = keys::transcript_hash(&client_hello, &hello.body);
    let server_public =
        x25519_dalek::x25519(server_ephemeral, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(client_ephemeral, server_public);
    let session_keys = keys::derive(&shared, &transcript);
    if first {
        line("client_ephemeral_secret", &client_ephemeral);
        line("client_nonce", &client_nonce);
        line("client_hello", &client_hello);
        line("server_ephemeral_secret", &server_ephemeral);
        line("server_nonce", &server_nonce);
        line("server_hello", &server_hello);
        // Step 3, recomputed from the public messages and the ephemeral secrets.
        line("transcript_hash", &transcript);
        line("x25519_shared_secret", &shared);
        line("key_client_to_server", &session_keys.client_to_server);
        line("key_server_to_client", &session_keys.server_to_client);
        line("session_id", &session_keys.session_id);
    }

    // Step 4: the AuthBody the device signs (and, for a recovery session, the user proof
    // inside it), then the encrypted ClientStart.
    let user_proof = recovery.map(|key| {
        let mut message = transcript.to_vec();
        message.extend_from_slice(device.id().as_bytes());
        key.sign(keys::USER_PROOF_LABEL, &message)
    });
    let auth_body = AuthBody {
        user: user.id(),
        device: device.id(),
        resume: None,
        user_proof,
    };
    let credentials = Credentials::Device {
        key: device,
        user: user.id(),
        resume: None,
        recovery,
    };
    let (client, client_start) = client
        .handle_server_hello(&server_hello, credentials)
        .unwrap();
    // The keys listed above are the ones the state machines used: frame 0 opens with k_c2s,
    // and holds the AuthBody listed.
    let plain = {
        use chacha20poly1305::aead::{Aead, KeyInit};
        let cipher =
            chacha20poly1305::ChaCha20Poly1305::new((&session_keys.client_to_server).into());
        cipher
            .decrypt(&[0u8; 12].into(), client_start.as_slice())
            .unwrap()
    };
    let ClientStart::Auth(auth) = codec::decode(&plain).unwrap() else {
        panic!("expected ClientStart::Auth")
    };
    assert_eq!(auth.body, codec::encode(&auth_body));
    let pending = server.handle_client_start(&client_start).unwrap();
    assert_eq!(pending.auth().unwrap().user_proven, recovery.is_some());
    let (server_channel, established) = pending.accept_device(5, 3, 7, 2);
    let (session, client_channel) = client.handle_session(&established).unwrap();
    assert_eq!(session.chain_seqno, 2);
    if let Some(proof) = &user_proof {
        line("user_proof", proof);
        line("auth_body_with_user_proof", &auth.body);
        line("client_start_with_user_proof_encrypted", &client_start);
    } else {
        line("auth_body", &auth.body);
        line("client_start_encrypted", &client_start);
        line("session_established_encrypted", &established);
    }
    (client_channel, server_channel)
}

fn vectors() -> String {
    let mut out = String::new();
    macro_rules! line {
        ($name:expr, $bytes:expr) => {
            writeln!(out, "{} = {}", $name, hex::encode($bytes)).unwrap()
        };
    }

    // Inputs.
    let relay = RelayKey::from_secret_bytes(&[0xa0; 32]);
    let user = UserKey::from_secret_bytes(&[0xb0; 32]);
    let device = DeviceKey::from_secret_bytes(&[0xc0; 32]);
    line!("relay_secret", [0xa0; 32]);
    line!("relay_public", relay.id().as_bytes());
    line!("user_secret", [0xb0; 32]);
    line!("user_public", user.id().as_bytes());
    line!("device_secret", [0xc0; 32]);
    line!("device_public", device.id().as_bytes());

    // Steps 1–5 for the device of user_public, without a user proof; then the same handshake
    // (same randomness, so the same transcript) with the user key's proof: a recovery session.
    let (mut client_channel, mut server_channel) =
        handshake(&relay, &user, &device, None, &mut out);
    handshake(&relay, &user, &device, Some(&user), &mut out);

    // Payload sealing under epoch 0 and epoch 1, and the first frames of the channel.
    let data_key = DataKey::from_bytes(&[0xd0; 32]);
    let data_key_1 = DataKey::from_bytes(&[0xd1; 32]);
    let payload_nonce = [0x33; 24];
    line!("data_key", data_key.bytes());
    line!("data_key_epoch_1", data_key_1.bytes());
    line!("payload_nonce", payload_nonce);
    line!("payload_plaintext", b"hello, ferry");
    let slot = EventSlot {
        user: user.id(),
        device: device.id(),
        device_seq: 1,
    };
    let sealed = seal::seal(
        &data_key,
        0,
        &slot,
        b"hello, ferry",
        &mut Scripted::new(&[&payload_nonce]),
    )
    .unwrap();
    line!("payload_sealed", &sealed.0);
    let sealed_1 = seal::seal(
        &data_key_1,
        1,
        &slot,
        b"hello, ferry",
        &mut Scripted::new(&[&payload_nonce]),
    )
    .unwrap();
    line!("payload_sealed_epoch_1", &sealed_1.0);
    assert_eq!(seal::epoch_of(&sealed_1), Ok(1));
    assert_eq!(
        &seal::open(&data_key_1, &slot, &sealed_1).unwrap()[..],
        b"hello, ferry"
    );

    let append = ClientFrame::Append(Append {
        device_seq: 1,
        payload: sealed.clone(),
    });
    line!("append_frame_plain", codec::encode(&append));
    line!(
        "append_frame_encrypted",
        client_channel.seal(&append).unwrap()
    );
    let appended = ServerFrame::Appended {
        device_seq: 1,
        seq: 6,
    };
    line!("appended_frame_plain", codec::encode(&appended));
    line!(
        "appended_frame_encrypted",
        server_channel.seal(&appended).unwrap()
    );

    // Pairing with code 7-123456 on the relay above: the joiner's new device key is 0xe0…,
    // its exchange secret 0xe1…; SPAKE2 scalars are drawn from 64 bytes each (0x44… for the
    // inviter, 0x55… for the joiner). The inviter grants user_public's epochs 0 and 1.
    let code = pairing::PairingCode::parse("7-123456").unwrap();
    let relay_id = relay.id();
    let (inviter_identity, joiner_identity) = pairing::identities(&relay_id, code.slot());
    line!("pair_inviter_identity", &inviter_identity);
    line!("pair_joiner_identity", &joiner_identity);
    let joiner_device = DeviceKey::from_secret_bytes(&[0xe0; 32]);
    let joiner_exchange = epoch::ExchangeSecret::from_bytes(&[0xe1; 32]);
    line!("pair_joiner_device_public", joiner_device.id().as_bytes());
    line!("pair_joiner_exchange_public", joiner_exchange.public());
    let inviter = pairing::Inviter::start(&code, &relay_id, &mut Scripted::new(&[&[0x44; 64]]));
    let (joiner, join_body) =
        pairing::Joiner::start(&code, &relay_id, &mut Scripted::new(&[&[0x55; 64]]));
    line!("pair_joiner_hello", &join_body);
    let (inviter, inviter_hello) = inviter.handle_joiner_hello(&join_body).unwrap();
    line!("pair_inviter_hello", &inviter_hello);
    let (joiner, request) = joiner
        .handle_inviter_hello(
            &inviter_hello,
            &joiner_device,
            joiner_exchange.public(),
            "tablet",
        )
        .unwrap();
    line!("pair_joiner_request", &request);
    line!(
        "pair_confirmation_string",
        inviter.confirmation().as_bytes()
    );
    let (join_request, ready) = inviter.handle_joiner_request(&request).unwrap();
    assert_eq!(
        join_request,
        pairing::JoinRequest {
            device: joiner_device.id(),
            exchange: joiner_exchange.public(),
            name: "tablet".into(),
        }
    );
    let grant = ready.grant(user.id(), &[(0, &data_key), (1, &data_key_1)]);
    line!("pair_inviter_grant", &grant);
    let granted = joiner.handle_grant(&grant).unwrap();
    assert_eq!(granted.user, user.id());
    assert_eq!(granted.epochs.len(), 2);
    assert_eq!(granted.epochs[1].1.bytes(), data_key_1.bytes());

    // Section 11: the recovery key and the device chain. The chain is created with epoch 0's
    // key sealed to the recovery key, admits the device (user key, as at `ferry init`), admits
    // the paired joiner (signed by the device, as in pairing), and revokes the joiner (signed
    // by the device), moving to epoch 1 sealed to the recovery key and the device.
    let recovery = recovery::RecoveryKey::from_bytes([0x77; 32]);
    line!("recovery_key_secret", [0x77; 32]);
    line!("recovery_key_written", recovery.display().as_bytes());
    let recovered_user = recovery.user_key();
    line!("recovery_user_public", recovered_user.id().as_bytes());
    let recovery_exchange = recovery.exchange_secret();
    line!("recovery_exchange_public", recovery_exchange.public());
    let device_exchange = epoch::ExchangeSecret::from_bytes(&[0x7a; 32]);
    line!("device_exchange_secret", [0x7a; 32]);
    line!("device_exchange_public", device_exchange.public());
    let sealed_epoch = epoch::seal_epoch_key(
        &mut Scripted::new(&[&[0x7b; 32], &[0x7c; 24]]),
        &recovered_user.id(),
        0,
        &data_key,
        &recovery_exchange.public(),
    )
    .unwrap();
    line!("epoch_0_key_sealed_to_recovery", &sealed_epoch.0);
    assert_eq!(
        epoch::open_epoch_key(&recovery_exchange, &recovered_user.id(), 0, &sealed_epoch)
            .unwrap()
            .bytes(),
        data_key.bytes()
    );
    let mut chain = Chain::new(recovered_user.id());
    let mut links = Vec::new();
    let create = chain.sign(
        LinkBody::Create {
            recovery_exchange: recovery_exchange.public(),
            epoch_key: sealed_epoch,
        },
        SigningKey::User(&recovered_user),
    );
    chain.apply(&create).unwrap();
    line!("chain_link_1_create", codec::encode(&create));
    line!("chain_link_1_hash", create.hash().0);
    links.push(create);
    let admit = chain.sign(
        LinkBody::Admit {
            device: device.id(),
            exchange: device_exchange.public(),
            name: "laptop".into(),
            created_at: 1_700_000_000,
        },
        SigningKey::User(&recovered_user),
    );
    chain.apply(&admit).unwrap();
    line!("chain_link_2_admit", codec::encode(&admit));
    line!("chain_link_2_hash", admit.hash().0);
    links.push(admit);
    let admit_joiner = chain.sign(
        LinkBody::Admit {
            device: joiner_device.id(),
            exchange: joiner_exchange.public(),
            name: "tablet".into(),
            created_at: 1_700_000_200,
        },
        SigningKey::Device(&device),
    );
    chain.apply(&admit_joiner).unwrap();
    line!("chain_link_3_admit_by_device", codec::encode(&admit_joiner));
    line!("chain_link_3_hash", admit_joiner.hash().0);
    links.push(admit_joiner);
    // Epoch 1: the ephemeral secrets are 0x7d… (recovery) and 0x7f… (device), the nonces
    // 0x7e… and 0x80….
    let epoch_1_recovery = epoch::seal_epoch_key(
        &mut Scripted::new(&[&[0x7d; 32], &[0x7e; 24]]),
        &recovered_user.id(),
        1,
        &data_key_1,
        &recovery_exchange.public(),
    )
    .unwrap();
    line!("epoch_1_key_sealed_to_recovery", &epoch_1_recovery.0);
    let epoch_1_device = epoch::seal_epoch_key(
        &mut Scripted::new(&[&[0x7f; 32], &[0x80; 24]]),
        &recovered_user.id(),
        1,
        &data_key_1,
        &device_exchange.public(),
    )
    .unwrap();
    line!("epoch_1_key_sealed_to_device", &epoch_1_device.0);
    assert_eq!(
        epoch::open_epoch_key(&device_exchange, &recovered_user.id(), 1, &epoch_1_device)
            .unwrap()
            .bytes(),
        data_key_1.bytes()
    );
    let revoke = chain.sign(
        LinkBody::Revoke {
            devices: vec![joiner_device.id()],
            epoch: chain::EpochKeys {
                epoch: 1,
                recovery: epoch_1_recovery,
                devices: vec![(device.id(), epoch_1_device)],
            },
        },
        SigningKey::Device(&device),
    );
    chain.apply(&revoke).unwrap();
    line!("chain_link_4_revoke", codec::encode(&revoke));
    line!("chain_link_4_hash", revoke.hash().0);
    links.push(revoke);
    // The four links verify from the start to the same chain.
    assert_eq!(
        Chain::verify(recovered_user.id(), &links),
        Ok(chain.clone())
    );
    assert_eq!(chain.epoch(), 1);
    assert!(chain.is_active(&device.id()) && !chain.is_active(&joiner_device.id()));
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

//! Known-answer vectors for the whole protocol, made deterministically from fixed inputs.
//!
//! Every secret and random value is fixed (see the start of `vectors()`), so an independent implementation can
//! reproduce each byte. The expected values live in `docs/protocol.md` between the
//! `vectors:begin` and `vectors:end` markers; this test recomputes them and compares, so the
//! specification and the code cannot drift apart. After an intended protocol change, rewrite the
//! block with `FERRY_WRITE_VECTORS=1 cargo test -p ferry-protocol --test vectors` and review the
//! diff: every changed line is a wire-format change.
//!
//! The same file checks the handle examples and the people-layer limits that `docs/protocol.md`
//! lists in tables (§9 and §2): each row is made from the code and must be in the document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt::Write as _;

use ferry_protocol::handshake::{
    AuthBody, ClientHandshake, ClientStart, Credentials, ServerHandshake, ServerHandshakeMessage,
    keys,
};
use ferry_protocol::pairing;
use ferry_protocol::people::{self, ContactInfo, ContactState, Handle, Notice, RELAY_DEVICE};
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

    // Section 12: the recovery key and the device chain. The chain is created with epoch 0's
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
    // Epoch keys are the generic sealed box (also used by contact intros, section 9) with the
    // label "ferry/v1/epoch-key" and the context user ‖ be32(epoch): the same bytes.
    let mut epoch_0_context = recovered_user.id().0.to_vec();
    epoch_0_context.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(
        epoch::seal_key_to(
            &mut Scripted::new(&[&[0x7b; 32], &[0x7c; 24]]),
            epoch::EPOCH_KEY_LABEL,
            &epoch_0_context,
            data_key.bytes(),
            &recovery_exchange.public(),
        )
        .unwrap(),
        sealed_epoch
    );
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

    people_vectors(&mut out, &recovered_user.id(), &device, &data_key);
    conversation_vectors(&mut out, &recovered_user.id(), &device.id());
    out
}

/// Section 13, conversations: the frames' plaintext encodings, with placeholder MLS bytes
/// (`0xc1…` for a message, `0xc2…` a Welcome, `0xc3…` a GroupInfo: the relay's checks of
/// their content are openmls's, see the section) and the conversation `0xcc…`.
fn conversation_vectors(out: &mut String, user: &UserId, device: &DeviceId) {
    use ferry_protocol::conversations::{
        ConvId, ConvMessage, ConvSend, ConvSummary, Direction, MemberState, MessageClass,
    };
    macro_rules! line {
        ($name:expr, $bytes:expr) => {
            writeln!(out, "{} = {}", $name, hex::encode($bytes)).unwrap()
        };
    }
    let conv = ConvId([0xcc; 16]);
    line!("conv_id", conv.0);
    let commit = ConvSend {
        conv,
        device_seq: 4,
        epoch: 2,
        class: MessageClass::Commit,
        message: vec![0xc1; 8],
        welcome: Some(vec![0xc2; 8].into()),
        group_info: Some(vec![0xc3; 8].into()),
        attachments: Vec::new(),
    };
    line!(
        "conv_frame_send_commit",
        codec::encode(&ClientFrame::ConvSend(Box::new(commit)))
    );
    line!(
        "conv_frame_fetch_backward",
        codec::encode(&ClientFrame::ConvFetch {
            conv,
            from: 0,
            direction: Direction::Backward,
            limit: 50,
        })
    );
    line!(
        "conv_frame_read",
        codec::encode(&ClientFrame::ConvRead { conv, seq: 9 })
    );
    line!(
        "conv_frame_sent",
        codec::encode(&ServerFrame::ConvSent {
            conv,
            device_seq: 4,
            conv_seq: 10,
        })
    );
    line!(
        "conv_frame_stale",
        codec::encode(&ServerFrame::ConvStale {
            conv,
            device_seq: 4,
            epoch: 3,
            head: 10,
        })
    );
    line!(
        "conv_frame_messages",
        codec::encode(&ServerFrame::ConvMessages {
            conv,
            messages: vec![ConvMessage {
                conv_seq: 10,
                device: *device,
                device_seq: 5,
                epoch: 3,
                class: MessageClass::Content,
                sent_at: 1_700_000_000_000,
                message: vec![0xc1; 8],
            }],
            more: false,
        })
    );
    line!(
        "conv_frame_conversations",
        codec::encode(&ServerFrame::Conversations {
            convs: vec![ConvSummary {
                conv,
                epoch: 3,
                head: 10,
                last_activity: 1_700_000_000_000,
                unread: 2,
                members: vec![MemberState {
                    user: *user,
                    devices: vec![*device],
                    read: 8,
                    delivered: 10,
                }],
            }],
            more: false,
        })
    );
    line!(
        "conv_notice_welcome",
        Notice::Welcome {
            conv,
            conv_seq: 10,
            welcome: vec![0xc2; 8],
        }
        .to_payload()
        .0
    );
    line!(
        "turn_frame_fetch",
        codec::encode(&ClientFrame::TurnCredentialsFetch)
    );
    line!(
        "turn_frame_credentials",
        codec::encode(&ServerFrame::TurnCredentials(TurnCredentials {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            username: "1700003600:AAAAAAAAAAAAAAAAAAAAAA".into(),
            password: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            expires_at: 1_700_003_600,
        }))
    );
    line!(
        "push_frame_register",
        codec::encode(&ClientFrame::PushRegister(PushTarget::WebPush {
            endpoint: "https://push.example.net/push/abc".into(),
            p256dh: vec![0x04; 65],
            auth: vec![0xa5; 16],
        }))
    );
    line!(
        "push_frame_register_apns",
        codec::encode(&ClientFrame::PushRegister(PushTarget::Apns {
            token: vec![0xa7; 32],
            sandbox: false,
        }))
    );
    line!(
        "push_frame_conv_wake",
        codec::encode(&ClientFrame::ConvWake { conv })
    );
    attachment_vectors(out, conv);
}

/// Section 16, attachments: a file of `CHUNK_LEN + 3` bytes of 0x5a (two chunks) under the
/// file key `0x66…`, the blob `0xb1…`, and a message of the conversation above that refers
/// to it.
fn attachment_vectors(out: &mut String, conv: ConvId) {
    use ferry_protocol::attachments::{BlobId, CHUNK_LEN, FileKey};
    use ferry_protocol::conversations::{ConvSend, MessageClass};
    use sha2::{Digest, Sha256};
    macro_rules! line {
        ($name:expr, $bytes:expr) => {
            writeln!(out, "{} = {}", $name, hex::encode($bytes)).unwrap()
        };
    }
    let key = FileKey([0x66; 32]);
    let file = vec![0x5a; CHUNK_LEN + 3];
    let first = key.seal_chunk(0, false, &file[..CHUNK_LEN]);
    let last = key.seal_chunk(1, true, &file[CHUNK_LEN..]);
    // The first part is long: its tag (last 16 bytes) stands for it.
    line!("attachment_part0_tag", &first[first.len() - 16..]);
    line!("attachment_part1", &last);
    let mut digest = Sha256::new();
    digest.update(&first);
    digest.update(&last);
    let digest: [u8; 32] = digest.finalize().into();
    line!("attachment_blob_sha256", digest);
    let blob = BlobId([0xb1; 32]);
    let size = (first.len() + last.len()) as u64;
    line!(
        "attachment_frame_create",
        codec::encode(&ClientFrame::BlobCreate { size, digest })
    );
    line!(
        "attachment_frame_created",
        codec::encode(&ServerFrame::BlobCreated {
            blob,
            unreferenced_until: 1_700_086_400_000,
        })
    );
    line!(
        "attachment_frame_put",
        codec::encode(&ClientFrame::BlobPut {
            blob,
            part: 1,
            bytes: last.clone(),
        })
    );
    line!(
        "attachment_frame_stored",
        codec::encode(&ServerFrame::BlobStored {
            blob,
            stored: 2,
            complete: true,
        })
    );
    line!(
        "attachment_frame_get",
        codec::encode(&ClientFrame::BlobGet { blob, part: 1 })
    );
    line!(
        "attachment_frame_part",
        codec::encode(&ServerFrame::BlobPart {
            blob,
            part: 1,
            size,
            bytes: last,
        })
    );
    let send = ConvSend {
        conv,
        device_seq: 9,
        epoch: 2,
        class: MessageClass::Content,
        message: vec![0xc4; 8],
        welcome: None,
        group_info: None,
        attachments: vec![blob],
    };
    line!(
        "attachment_frame_conv_send",
        codec::encode(&ClientFrame::ConvSend(Box::new(send)))
    );
}

/// Section 9, the people layer: the user of the chain above (`recovery_user_public`), on its
/// device `device_public`, introduces itself to a second user (`0x90…`) whose one device is
/// `0x91…` with the exchange secret `0x92…`; its profile key comes from epoch 0's `data_key`.
fn people_vectors(out: &mut String, user: &UserId, device: &DeviceKey, epoch_zero: &DataKey) {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use hkdf::Hkdf;
    use sha2::Sha256;

    macro_rules! line {
        ($name:expr, $bytes:expr) => {
            writeln!(out, "{} = {}", $name, hex::encode($bytes)).unwrap()
        };
    }
    let peer_user = UserKey::from_secret_bytes(&[0x90; 32]);
    let peer_device = DeviceKey::from_secret_bytes(&[0x91; 32]);
    let peer_exchange = epoch::ExchangeSecret::from_bytes(&[0x92; 32]);
    line!("people_peer_user_secret", [0x90; 32]);
    line!("people_peer_user_public", peer_user.id().as_bytes());
    line!("people_peer_device_secret", [0x91; 32]);
    line!("people_peer_device_public", peer_device.id().as_bytes());
    line!("people_peer_exchange_secret", [0x92; 32]);
    line!("people_peer_exchange_public", peer_exchange.public());

    // The profile key: HKDF-SHA256 of epoch 0's data key.
    let profile_key = people::ProfileKey::derive(epoch_zero);
    line!("people_profile_key", profile_key.bytes());
    let mut derived = [0u8; 32];
    Hkdf::<Sha256>::new(None, epoch_zero.bytes())
        .expand(b"ferry/v1/profile-key", &mut derived)
        .unwrap();
    assert_eq!(&derived, profile_key.bytes());

    // The intro: drawn in order, the content key 0x93…, then for the one recipient the
    // ephemeral secret 0x94… and the nonce 0x95… of its sealed content key, then the body's
    // nonce 0x96….
    let content_key = [0x93; 32];
    let body = people::IntroBody {
        note: "hi, it's Alice".into(),
        profile_key: profile_key.clone(),
    };
    line!("people_intro_note", body.note.as_bytes());
    let mut intro_rng = Scripted::new(&[&content_key, &[0x94; 32], &[0x95; 24], &[0x96; 24]]);
    let intro = people::Intro::seal(
        &mut intro_rng,
        *user,
        device,
        peer_user.id(),
        &[(peer_device.id(), peer_exchange.public())],
        &body,
    )
    .unwrap();
    assert!(
        intro_rng.0.is_empty(),
        "the intro draws exactly what is listed"
    );
    line!("people_intro_content_key", content_key);
    line!("people_intro_sealed_content_key", &intro.recipients[0].1.0);
    line!("people_intro", codec::encode(&intro));
    let opened = intro.open(peer_device.id(), &peer_exchange).unwrap();
    assert_eq!(opened, body);
    line!("people_intro_body_opened", codec::encode(&opened));
    // The construction as documented: the sealed box under the intro label with the two
    // users as context, the body's associated data, and the signature over the intro
    // without its signature (its last 65 bytes: the length 64 and the signature).
    let mut users = user.0.to_vec();
    users.extend_from_slice(peer_user.id().as_bytes());
    let unsealed = epoch::open_key_from(
        &peer_exchange,
        b"ferry/v1/contact-intro-key",
        &users,
        &intro.recipients[0].1,
    )
    .unwrap();
    assert_eq!(*unsealed, content_key);
    let mut aad = b"ferry/v1/contact-intro".to_vec();
    aad.extend_from_slice(&users);
    aad.extend_from_slice(device.id().as_bytes());
    let plain = XChaCha20Poly1305::new((&content_key).into())
        .decrypt(
            XNonce::from_slice(&[0x96; 24]),
            Payload {
                msg: &intro.ciphertext,
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(plain, codec::encode(&body));
    let encoded = codec::encode(&intro);
    let (signed, signature) = encoded.split_at(encoded.len() - 65);
    assert_eq!(signature[0], 64);
    device
        .id()
        .verify(b"ferry/v1/contact-intro", signed, &intro.signature)
        .unwrap();

    // A sealed profile, version 3, drawing the nonce 0x97….
    let profile = people::ProfileBody {
        display_name: "Alice Liddell".into(),
        avatar: Some("blob:1234".into()),
    };
    line!("people_profile_body", codec::encode(&profile));
    let sealed_profile = profile
        .seal(&mut Scripted::new(&[&[0x97; 24]]), &profile_key, user, 3)
        .unwrap();
    line!("people_profile_sealed", codec::encode(&sealed_profile));

    // A contact card: what the first user's devices keep about the second user, sealed under
    // epoch 0's data key with the nonce 0x98….
    let card = people::CardBody {
        profile_key: Some(people::ProfileKey::from_bytes(&[0x99; 32])),
        pinned: Some((2, LinkHash([0x9a; 32]))),
        handle: Some("bob.12".into()),
    };
    let sealed_card = card.seal(
        &mut Scripted::new(&[&[0x98; 24]]),
        epoch_zero,
        0,
        user,
        &peer_user.id(),
    );
    line!(
        "people_frame_contact_card",
        codec::encode(&ClientFrame::ContactCard {
            peer: peer_user.id(),
            card: sealed_card.clone(),
        })
    );
    assert_eq!(
        sealed_card.open(epoch_zero, user, &peer_user.id()).unwrap(),
        card
    );
    assert_eq!(sealed_profile.open(&profile_key, user).unwrap(), profile);
    let mut aad = b"ferry/v1/profile".to_vec();
    aad.extend_from_slice(user.as_bytes());
    aad.extend_from_slice(&3u64.to_be_bytes());
    let plain = XChaCha20Poly1305::new(profile_key.bytes().into())
        .decrypt(
            XNonce::from_slice(&[0x97; 24]),
            Payload {
                msg: &sealed_profile.ciphertext,
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(plain, codec::encode(&profile));

    // A notice: the payload, and the event that carries it (seq 12) as the relay sends it.
    let removed = Notice::Removed {
        peer: peer_user.id(),
        by_me: true,
    };
    line!("people_notice_removed", &removed.to_payload().0);
    let event = ServerFrame::Events(vec![Event {
        seq: 12,
        device: RELAY_DEVICE,
        device_seq: 12,
        payload: removed.to_payload(),
    }]);
    line!("people_notice_removed_event", codec::encode(&event));
    assert_eq!(Notice::from_payload(&removed.to_payload().0), Ok(removed));

    // Frames (plaintext postcard).
    line!(
        "people_frame_handle_set",
        codec::encode(&ClientFrame::HandleSet {
            name: Some("Alice".into())
        })
    );
    line!(
        "people_frame_handle_is",
        codec::encode(&ServerFrame::HandleIs {
            handle: Some("alice.07".into())
        })
    );
    line!(
        "people_frame_whois",
        codec::encode(&ClientFrame::Whois {
            handle: "alice.07".into()
        })
    );
    line!(
        "people_frame_whois_result",
        codec::encode(&ServerFrame::WhoisResult {
            handle: "alice.07".into(),
            user: Some(*user),
        })
    );
    line!(
        "people_frame_contact_remove",
        codec::encode(&ClientFrame::ContactRemove {
            peer: peer_user.id()
        })
    );
    line!("people_frame_done", codec::encode(&ServerFrame::Done));
    line!(
        "people_frame_contacts",
        codec::encode(&ServerFrame::Contacts {
            contacts: vec![ContactInfo {
                user: peer_user.id(),
                state: ContactState::Contact,
                profile_version: 3,
                last_seen: Some(1_700_000_100),
                since: 1_700_000_000,
                card: None,
            }],
            presence_visible: true,
            more: false,
        })
    );
    line!(
        "people_frame_presence",
        codec::encode(&ServerFrame::Presence {
            user: peer_user.id(),
            source: 3,
            online: false,
            last_seen: Some(1_700_000_100),
        })
    );
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

/// The handle examples of section 9: each row, made from the code, is in the document.
#[test]
fn handle_examples_are_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    // (typed, what the table says about it)
    let examples = [
        ("Alice.07", ""),
        ("@alice.07", ""),
        ("ＡＬＩＣＥ.07", " (fullwidth)"),
        ("ﬁona.12", " (ligature `ﬁ`)"),
        ("A1ice.07", ""),
        ("B0B_99.00", ""),
        ("rnary.02", ""),
        ("vvill.03", ""),
        ("vvvill.03", ""),
        ("аlice.07", " (Cyrillic `а`)"),
        ("zoë.01", ""),
        ("ab.01", ""),
        ("_alice.01", ""),
        ("a__b.01", ""),
        ("alice.7", ""),
        ("alice", ""),
    ];
    for (typed, note) in examples {
        let row = match typed.parse::<Handle>() {
            Ok(handle) => format!(
                "| `{typed}`{note} | `{handle}` | `{}` |",
                handle.lookup_key()
            ),
            Err(error) => format!("| `{typed}`{note} | refused: {error} | |"),
        };
        assert!(doc.contains(&row), "docs/protocol.md lacks the row:\n{row}");
    }
}

/// The people layer's decoding limits (section 2's table) are the ones the code enforces, and
/// section 9 names the last-seen granularity the code uses.
#[test]
fn people_limits_are_documented() {
    use ferry_protocol::people::handle::MAX_HANDLE_INPUT_LEN;
    use ferry_protocol::people::intro::{MAX_INTRO_CIPHERTEXT_LEN, MAX_NOTE_LEN};
    use ferry_protocol::people::profile::{
        MAX_AVATAR_REF_LEN, MAX_DISPLAY_NAME_LEN, MAX_PROFILE_CIPHERTEXT_LEN,
    };
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    for row in [
        format!("| handle or name as sent (before normalisation) | {MAX_HANDLE_INPUT_LEN} bytes |"),
        format!("| intro note | {MAX_NOTE_LEN} bytes UTF-8 |"),
        format!("| intro ciphertext | {MAX_INTRO_CIPHERTEXT_LEN} bytes |"),
        format!(
            "| devices one intro is sealed to | {} |",
            chain::MAX_CHAIN_DEVICES
        ),
        format!("| profile display name | {MAX_DISPLAY_NAME_LEN} bytes UTF-8 |"),
        format!("| profile avatar reference | {MAX_AVATAR_REF_LEN} bytes |"),
        format!("| profile ciphertext | {MAX_PROFILE_CIPHERTEXT_LEN} bytes |"),
        format!(
            "| entries per `Contacts` frame | {} |",
            people::MAX_CONTACTS_PER_FRAME
        ),
        format!(
            "| contact card ciphertext | {} bytes |",
            people::card::MAX_CARD_CIPHERTEXT_LEN
        ),
        format!(
            "| links per `UserChainLinks` frame | {} |",
            frames::MAX_LINKS_PER_FRAME
        ),
        // Not a decoding limit: how coarse last-seen times are (section 9, presence).
        format!(
            "`LAST_SEEN_GRANULARITY_S` = {} s",
            people::LAST_SEEN_GRANULARITY_S
        ),
    ] {
        assert!(doc.contains(&row), "docs/protocol.md lacks the row:\n{row}");
    }
}

//! Property tests: every frame survives encoding and the encrypted channel unchanged, and no
//! byte string makes a decoder panic. Failing cases are kept in `proptest-regressions/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferry_protocol::chain::{EpochKeys, MAX_SEALED_KEY_LEN, SealedKey};
use ferry_protocol::codec::{self, Wire};
use ferry_protocol::handshake::{
    AuthBody, ClientHandshake, ClientHello, ClientStart, Credentials, ServerHandshake,
    ServerHandshakeMessage, SessionStart,
};
use ferry_protocol::limits::{MAX_DEVICE_NAME_LEN, MAX_PAYLOAD_LEN};
use ferry_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use rand_core::SeedableRng;

fn bytes32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn payload() -> impl Strategy<Value = SealedPayload> {
    prop_oneof![vec(any::<u8>(), 0..300), Just(vec![7u8; MAX_PAYLOAD_LEN])].prop_map(SealedPayload)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~é]{{0,{}}}", max / 2)).unwrap()
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode::from)
}

fn error_frame() -> impl Strategy<Value = ErrorFrame> {
    (error_code(), text(200), any::<Option<u64>>()).prop_map(|(code, message, device_seq)| {
        ErrorFrame {
            code,
            message,
            device_seq,
        }
    })
}

fn sealed_key() -> impl Strategy<Value = SealedKey> {
    prop_oneof![
        vec(any::<u8>(), 1..120),
        Just(vec![5u8; MAX_SEALED_KEY_LEN])
    ]
    .prop_map(SealedKey)
}

fn epoch_keys() -> impl Strategy<Value = EpochKeys> {
    (
        any::<u32>(),
        sealed_key(),
        vec((bytes32(), sealed_key()), 0..4),
    )
        .prop_map(|(epoch, recovery, devices)| EpochKeys {
            epoch,
            recovery,
            devices: devices
                .into_iter()
                .map(|(d, key)| (DeviceId(d), key))
                .collect(),
        })
}

fn link_body() -> impl Strategy<Value = LinkBody> {
    prop_oneof![
        (bytes32(), sealed_key()).prop_map(|(recovery_exchange, epoch_key)| LinkBody::Create {
            recovery_exchange,
            epoch_key
        }),
        (
            bytes32(),
            bytes32(),
            text(MAX_DEVICE_NAME_LEN),
            any::<u64>()
        )
            .prop_map(|(device, exchange, name, created_at)| LinkBody::Admit {
                device: DeviceId(device),
                exchange,
                name,
                created_at,
            }),
        (vec(bytes32(), 0..4), epoch_keys()).prop_map(|(devices, epoch)| LinkBody::Revoke {
            devices: devices.into_iter().map(DeviceId).collect(),
            epoch,
        }),
        epoch_keys().prop_map(|epoch| LinkBody::Rotate { epoch }),
    ]
}

fn link() -> impl Strategy<Value = Link> {
    (
        bytes32(),
        any::<u64>(),
        bytes32(),
        link_body(),
        proptest::option::of(bytes32()),
        any::<[u8; 32]>(),
    )
        .prop_map(|(user, seqno, prev, body, signer, half)| {
            let mut signature = [0u8; 64];
            signature[32..].copy_from_slice(&half);
            Link {
                user: UserId(user),
                seqno,
                prev: LinkHash(prev),
                body,
                signer: signer.map_or(Signer::User, |d| Signer::Device(DeviceId(d))),
                signature,
            }
        })
}

fn event() -> impl Strategy<Value = Event> {
    (any::<u64>(), bytes32(), any::<u64>(), payload()).prop_map(
        |(seq, device, device_seq, payload)| Event {
            seq,
            device: DeviceId(device),
            device_seq,
            payload,
        },
    )
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u64>(), payload()).prop_map(|(device_seq, payload)| ClientFrame::Append(Append {
            device_seq,
            payload
        })),
        any::<u64>().prop_map(|seq| ClientFrame::Ack { seq }),
        vec(any::<u8>(), 0..500).prop_map(|body| ClientFrame::Ephemeral { body }),
        any::<u64>().prop_map(|nonce| ClientFrame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ClientFrame::Pong { nonce }),
        Just(ClientFrame::ListDevices),
        link().prop_map(|link| ClientFrame::ChainAppend(Box::new(link))),
        any::<u64>().prop_map(|after| ClientFrame::ChainFetch { after }),
        Just(ClientFrame::PairOpen),
        (any::<u16>(), vec(any::<u8>(), 0..200))
            .prop_map(|(slot, body)| ClientFrame::PairJoin { slot, body }),
        (any::<u16>(), vec(any::<u8>(), 0..200))
            .prop_map(|(slot, body)| ClientFrame::PairForward { slot, body }),
        (any::<u16>(), any::<bool>())
            .prop_map(|(slot, success)| ClientFrame::PairClose { slot, success }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(device_seq, seq)| ServerFrame::Appended { device_seq, seq }),
        // At most three events, so a batch of maximum-size payloads still fits in one frame.
        vec(event(), 0..4).prop_map(ServerFrame::Events),
        any::<u64>().prop_map(|head| ServerFrame::CaughtUp { head }),
        any::<u64>().prop_map(|earliest| ServerFrame::ResyncRequired { earliest }),
        (bytes32(), vec(any::<u8>(), 0..300)).prop_map(|(from, body)| ServerFrame::Ephemeral {
            from: DeviceId(from),
            body
        }),
        error_frame().prop_map(ServerFrame::Error),
        any::<u64>().prop_map(|nonce| ServerFrame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ServerFrame::Pong { nonce }),
        vec(
            (
                bytes32(),
                text(MAX_DEVICE_NAME_LEN),
                any::<u64>(),
                any::<bool>()
            ),
            0..4
        )
        .prop_map(|devices| {
            ServerFrame::Devices(
                devices
                    .into_iter()
                    .map(|(device, name, last_seen, revoked)| DeviceInfo {
                        device: DeviceId(device),
                        name,
                        last_seen,
                        revoked,
                    })
                    .collect(),
            )
        }),
        any::<u64>().prop_map(|seqno| ServerFrame::ChainAppended { seqno }),
        (vec(link(), 0..4), any::<bool>())
            .prop_map(|(links, more)| ServerFrame::ChainLinks { links, more }),
        any::<u64>().prop_map(|seqno| ServerFrame::ChainGrew { seqno }),
        (any::<u16>(), any::<u64>())
            .prop_map(|(slot, expires_at)| ServerFrame::PairOpened { slot, expires_at }),
        (any::<u16>(), vec(any::<u8>(), 0..200))
            .prop_map(|(slot, body)| ServerFrame::PairPeer { slot, body }),
        (any::<u16>(), proptest::option::of(error_code()))
            .prop_map(|(slot, code)| ServerFrame::PairClosed { slot, code }),
    ]
}

fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: &T) -> Result<(), TestCaseError> {
    let bytes = codec::encode(value);
    prop_assert_eq!(&codec::decode::<T>(&bytes).unwrap(), value);
    // Trailing bytes are never silently ignored.
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert!(codec::decode::<T>(&longer).is_err());
    Ok(())
}

fn decode_everything(bytes: &[u8]) {
    let _ = codec::decode::<ClientFrame>(bytes);
    let _ = codec::decode::<ServerFrame>(bytes);
    let _ = codec::decode::<ClientHello>(bytes);
    let _ = codec::decode::<ServerHandshakeMessage>(bytes);
    let _ = codec::decode::<ClientStart>(bytes);
    let _ = codec::decode::<SessionStart>(bytes);
    let _ = codec::decode::<AuthBody>(bytes);
    let _ = codec::decode::<Link>(bytes);
}

fn channels(seed: u64) -> (ClientChannel, ServerChannel) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let relay = RelayKey::generate(&mut rng);
    let (client, hello) = ClientHandshake::start(relay.id(), &mut rng);
    let (server, server_hello) =
        ServerHandshake::handle_client_hello(&relay, &hello, &mut rng).unwrap();
    let (client, start) = client
        .handle_server_hello(&server_hello, Credentials::Anonymous)
        .unwrap();
    let (server_channel, established) = server.handle_client_start(&start).unwrap().accept(0, 0);
    let (_, client_channel) = client.handle_session(&established).unwrap();
    (client_channel, server_channel)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        round_trip(&frame)?;
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        round_trip(&frame)?;
    }

    #[test]
    fn frames_survive_the_channel(frames in vec((client_frame(), server_frame()), 1..6), seed in any::<u64>()) {
        let (mut client, mut server) = channels(seed);
        for (up, down) in frames {
            let wire = client.seal(&up).unwrap();
            prop_assert_eq!(server.open(&wire).unwrap(), up);
            let wire = server.seal(&down).unwrap();
            prop_assert_eq!(client.open(&wire).unwrap(), down);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..2048)) {
        decode_everything(&bytes);
    }

    #[test]
    fn decoding_mutated_frames_never_panics(frame in server_frame(), flips in vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = codec::encode(&frame);
        for (at, value) in flips {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = value;
            }
        }
        decode_everything(&bytes);
        decode_everything(&bytes[..bytes.len() / 2]);
    }

    #[test]
    fn opening_arbitrary_ciphertext_fails_cleanly(bytes in vec(any::<u8>(), 0..512), seed in any::<u64>()) {
        let (_, mut server) = channels(seed);
        prop_assert!(server.open(&bytes).is_err());
        prop_assert!(server.is_closed());
    }
}

#[test]
fn huge_declared_lengths_do_not_allocate() {
    // An `Events` frame claiming 2^63 events, and an `Append` whose payload claims 4 GiB,
    // in a few bytes: the decoder must refuse them without trying to reserve the memory.
    let events = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(codec::decode::<ServerFrame>(&events).is_err());
    let append = [0u8, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
    assert!(codec::decode::<ClientFrame>(&append).is_err());
}

/// Inserts a space at each of `at` (positions modulo the length) of `text`.
fn with_spaces(text: &str, at: &[usize]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &i in at {
        chars.insert(i % (chars.len() + 1), ' ');
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pairing_codes_round_trip_through_their_text(slot in 1..=u16::MAX, seed in any::<u64>(), spaces in vec(any::<usize>(), 0..6)) {
        let code = pairing::PairingCode::generate(slot, &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
        let text = code.text();
        let (shown_slot, digits) = text.split_once('-').unwrap();
        prop_assert_eq!(shown_slot, slot.to_string());
        prop_assert_eq!(digits, code.digits().to_string());
        prop_assert_eq!(digits.len(), 6);
        // As typed: spaces anywhere are fine.
        prop_assert_eq!(pairing::PairingCode::parse(&with_spaces(&text, &spaces)).unwrap(), code);
        // Without the dash the split would be a guess: refused.
        let undashed = text.replace('-', "");
        prop_assert_eq!(pairing::PairingCode::parse(&undashed), Err(pairing::PairingError::BadCode));
        prop_assert_eq!(pairing::PairingCode::parse(&format!("{slot}-{digits}0")), Err(pairing::PairingError::BadCode));
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,24}") {
        if let Ok(code) = pairing::PairingCode::parse(&text) {
            prop_assert!(code.slot() >= 1);
            prop_assert_eq!(pairing::PairingCode::parse(&code.text()).unwrap(), code);
        }
    }
}

proptest! {
    // Each case runs two SPAKE2 exchanges.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_pake_matches_only_for_the_same_relay_key_and_slot(
        slots in (1..=u16::MAX, 1..=u16::MAX),
        relays in (bytes32(), bytes32()),
        same_slot in any::<bool>(),
        same_relay in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let inviter_code = pairing::PairingCode::generate(slots.0, &mut rng);
        let joiner_slot = if same_slot { slots.0 } else { slots.1 };
        let joiner_code = pairing::PairingCode::parse(&format!("{joiner_slot}-{}", inviter_code.digits().as_str())).unwrap();
        let inviter_relay = RelayId(relays.0);
        let joiner_relay = if same_relay { inviter_relay } else { RelayId(relays.1) };
        let inviter = pairing::Inviter::start(&inviter_code, &inviter_relay, &mut rng);
        let (joiner, hello) = pairing::Joiner::start(&joiner_code, &joiner_relay, &mut rng);
        let (inviter, reply) = inviter.handle_joiner_hello(&hello).unwrap();
        let device = DeviceKey::generate(&mut rng);
        let result = joiner.handle_inviter_hello(&reply, &device, [5; 32], "tablet");
        if joiner_slot == slots.0 && joiner_relay == inviter_relay {
            let (joiner, _) = result.unwrap();
            prop_assert_eq!(joiner.confirmation(), inviter.confirmation());
        } else {
            prop_assert_eq!(result.err(), Some(pairing::PairingError::WrongCode));
        }
    }
}

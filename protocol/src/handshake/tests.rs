//! Every way a handshake can fail, driven through the public state machines.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::keys::{self, CLIENT_SIGNATURE_LABEL, USER_PROOF_LABEL};
use super::*;
use crate::channel::{ClientChannel, ServerChannel};
use crate::codec;
use crate::identity::{DeviceKey, RelayKey, UserKey};
use crate::limits::MAX_FRAME_LEN;
use crate::{Append, ClientFrame, SealedPayload, ServerFrame};

struct World {
    rng: ChaCha20Rng,
    relay: RelayKey,
    user: UserKey,
    device: DeviceKey,
}

fn world(seed: u64) -> World {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let relay = RelayKey::generate(&mut rng);
    let user = UserKey::generate(&mut rng);
    let device = DeviceKey::generate(&mut rng);
    World {
        rng,
        relay,
        user,
        device,
    }
}

/// Runs steps 1–2 and returns the client state, the relay state, and the raw messages.
fn hello(w: &mut World) -> (AwaitServerHello, AwaitClientStart, Vec<u8>, Vec<u8>) {
    let (client, client_hello) = ClientHandshake::start(w.relay.id(), &mut w.rng);
    let (server, server_hello) =
        ServerHandshake::handle_client_hello(&w.relay, &client_hello, &mut w.rng).unwrap();
    (client, server, client_hello, server_hello)
}

fn credentials(w: &World) -> Credentials<'_> {
    Credentials::Device {
        key: &w.device,
        user: w.user.id(),
        resume: Some(7),
        recovery: None,
    }
}

/// The credentials of a device whose user typed the recovery key (`recovery` signs the
/// transcript too).
fn recovery_credentials<'a>(w: &'a World, recovery: &'a UserKey) -> Credentials<'a> {
    Credentials::Device {
        key: &w.device,
        user: w.user.id(),
        resume: None,
        recovery: Some(recovery),
    }
}

/// A full handshake, returning both channels.
pub(crate) fn connected(seed: u64) -> (ClientChannel, ServerChannel) {
    let mut w = world(seed);
    let (client, server, _, server_hello) = hello(&mut w);
    let (client, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let (server_channel, established) = server.handle_client_start(&start).unwrap().accept(3, 2);
    let (_, client_channel) = client.handle_session(&established).unwrap();
    (client_channel, server_channel)
}

/// Builds a `ClientStart::Auth` by hand, signed by `signer` over the real transcript.
fn crafted_start(
    client: AwaitServerHello,
    client_hello: &[u8],
    server_hello: &[u8],
    body: &AuthBody,
    signer: &DeviceKey,
) -> Vec<u8> {
    let ServerHandshakeMessage::Hello(hello) = codec::decode(server_hello).unwrap() else {
        panic!()
    };
    let transcript = keys::transcript_hash(client_hello, &hello.body);
    let body = codec::encode(body);
    let signature = signer.sign(
        CLIENT_SIGNATURE_LABEL,
        &keys::client_signed_message(&transcript, &body),
    );
    let start = codec::encode(&ClientStart::Auth(ClientAuth { body, signature }));
    client.seal_raw_start(server_hello, &start).unwrap()
}

fn server_error(server: AwaitClientStart, start: &[u8]) -> HandshakeError {
    server.handle_client_start(start).unwrap_err().error
}

#[test]
fn device_handshake_opens_a_session_both_ways() {
    let mut w = world(1);
    let (client, server, _, server_hello) = hello(&mut w);
    let (client, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let pending = server.handle_client_start(&start).unwrap();
    let auth = pending.auth().unwrap().clone();
    assert_eq!(
        (auth.user, auth.device, auth.resume),
        (w.user.id(), w.device.id(), Some(7))
    );
    assert!(!auth.user_proven, "no recovery proof was sent");
    let session_id = pending.session_id();
    let (mut server_channel, established) = pending.accept_device(10, 4, 12, 6);
    let (session, mut client_channel) = client.handle_session(&established).unwrap();
    assert_eq!(
        session,
        Session {
            session_id,
            version: 1,
            head: 10,
            acked: 4,
            last_device_seq: 12,
            chain_seqno: 6,
        }
    );

    let append = ClientFrame::Append(Append {
        device_seq: 1,
        payload: SealedPayload(vec![1, 2, 3]),
    });
    let wire = client_channel.seal(&append).unwrap();
    assert_eq!(server_channel.open(&wire).unwrap(), append);
    let reply = ServerFrame::Appended {
        device_seq: 1,
        seq: 11,
    };
    let wire = server_channel.seal(&reply).unwrap();
    assert_eq!(client_channel.open(&wire).unwrap(), reply);
}

#[test]
fn anonymous_session_has_no_identity() {
    let mut w = world(2);
    let (client, server, _, server_hello) = hello(&mut w);
    let (client, start) = client
        .handle_server_hello(&server_hello, Credentials::Anonymous)
        .unwrap();
    let pending = server.handle_client_start(&start).unwrap();
    assert!(pending.auth().is_none());
    let (_, established) = pending.accept(0, 0);
    assert!(client.handle_session(&established).is_ok());
}

#[test]
fn wrong_pinned_relay_key_is_refused() {
    let mut w = world(3);
    let impostor = RelayKey::generate(&mut w.rng);
    let (client, client_hello) = ClientHandshake::start(w.relay.id(), &mut w.rng);
    let (_, server_hello) =
        ServerHandshake::handle_client_hello(&impostor, &client_hello, &mut w.rng).unwrap();
    let err = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap_err();
    assert!(matches!(err, HandshakeError::WrongRelayKey { found, .. } if found == impostor.id()));
    assert_eq!(err.code(), ErrorCode::HandshakeFailed);
}

#[test]
fn impostor_claiming_the_pinned_key_fails_the_signature() {
    let mut w = world(4);
    let impostor = RelayKey::generate(&mut w.rng);
    let (client, client_hello) = ClientHandshake::start(w.relay.id(), &mut w.rng);
    let (_, server_hello) =
        ServerHandshake::handle_client_hello(&impostor, &client_hello, &mut w.rng).unwrap();
    // Rewrite the body to name the pinned relay, keeping the impostor's signature.
    let ServerHandshakeMessage::Hello(mut hello) = codec::decode(&server_hello).unwrap() else {
        panic!()
    };
    let mut body: ServerHelloBody = codec::decode(&hello.body).unwrap();
    body.relay = w.relay.id();
    hello.body = codec::encode(&body);
    let forged = codec::encode(&ServerHandshakeMessage::Hello(hello));
    let err = client
        .handle_server_hello(&forged, credentials(&w))
        .unwrap_err();
    assert_eq!(err, HandshakeError::BadRelaySignature);
}

#[test]
fn tampered_server_hello_fails_the_signature() {
    for field in 0..3 {
        let mut w = world(5);
        let (client, _, _, server_hello) = hello(&mut w);
        let ServerHandshakeMessage::Hello(mut hello) = codec::decode(&server_hello).unwrap() else {
            panic!()
        };
        let mut body: ServerHelloBody = codec::decode(&hello.body).unwrap();
        match field {
            0 => body.nonce[0] ^= 1,
            1 => body.ephemeral[5] ^= 1,
            _ => hello.signature[10] ^= 1,
        }
        hello.body = codec::encode(&body);
        let tampered = codec::encode(&ServerHandshakeMessage::Hello(hello));
        let err = client
            .handle_server_hello(&tampered, credentials(&w))
            .unwrap_err();
        assert_eq!(err, HandshakeError::BadRelaySignature, "field {field}");
    }
}

#[test]
fn server_hello_replayed_from_another_session_is_refused() {
    let mut w = world(6);
    let (_, _, _, old_server_hello) = hello(&mut w);
    let (client, _, _, _) = hello(&mut w);
    let err = client
        .handle_server_hello(&old_server_hello, credentials(&w))
        .unwrap_err();
    assert_eq!(err, HandshakeError::BadRelaySignature);
}

/// The user key's proof over `transcript` for `device`, as an honest client makes it.
fn user_proof(user: &UserKey, transcript: &[u8; 32], device: &DeviceId) -> [u8; 64] {
    user.sign(
        USER_PROOF_LABEL,
        &keys::user_proof_message(transcript, device),
    )
}

/// The transcript hash of a handshake, from its two hello messages.
fn transcript_of(client_hello: &[u8], server_hello: &[u8]) -> [u8; 32] {
    let ServerHandshakeMessage::Hello(hello) = codec::decode(server_hello).unwrap() else {
        panic!()
    };
    keys::transcript_hash(client_hello, &hello.body)
}

#[test]
fn the_device_signs_the_transcript_and_the_auth_body() {
    // The genuine start verifies: the device key signed `CLIENT_SIGNATURE_LABEL ‖ th ‖ body`.
    let mut w = world(7);
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let body = AuthBody {
        user: w.user.id(),
        device: w.device.id(),
        resume: Some(3),
        user_proof: None,
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &w.device);
    let auth = server.handle_client_start(&start).unwrap().auth().cloned();
    assert_eq!(
        auth,
        Some(VerifiedAuth {
            user: w.user.id(),
            device: w.device.id(),
            resume: Some(3),
            user_proven: false,
        })
    );
    // Every field of the body is signed: the signature over one body does not cover another.
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let transcript = transcript_of(&client_hello, &server_hello);
    let signed = codec::encode(&body);
    let signature = w.device.sign(
        CLIENT_SIGNATURE_LABEL,
        &keys::client_signed_message(&transcript, &signed),
    );
    let altered = codec::encode(&AuthBody {
        resume: Some(0),
        ..body.clone()
    });
    let start = codec::encode(&ClientStart::Auth(ClientAuth {
        body: altered,
        signature,
    }));
    let sealed = client.seal_raw_start(&server_hello, &start).unwrap();
    let failure = server.handle_client_start(&sealed).unwrap_err();
    assert_eq!(failure.error, HandshakeError::BadDeviceSignature);
    assert_eq!(failure.error.code(), ErrorCode::HandshakeFailed);
    assert!(failure.reply.is_some(), "the relay explains the refusal");
    // A signature under another label (the user-proof label) is not a device signature.
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let transcript = transcript_of(&client_hello, &server_hello);
    let signature = w.device.sign(
        USER_PROOF_LABEL,
        &keys::client_signed_message(&transcript, &signed),
    );
    let start = codec::encode(&ClientStart::Auth(ClientAuth {
        body: signed.clone(),
        signature,
    }));
    let sealed = client.seal_raw_start(&server_hello, &start).unwrap();
    assert_eq!(
        server_error(server, &sealed),
        HandshakeError::BadDeviceSignature
    );
}

#[test]
fn a_device_id_is_worth_nothing_without_its_key() {
    let mut w = world(9);
    let thief = DeviceKey::generate(&mut w.rng);
    // Claim the device, sign with another key.
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let body = AuthBody {
        user: w.user.id(),
        device: w.device.id(),
        resume: None,
        user_proof: None,
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &thief);
    assert_eq!(
        server_error(server, &start),
        HandshakeError::BadDeviceSignature
    );
    // Even with a valid user proof for the claimed device (the user key is no substitute
    // for the device key).
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let transcript = transcript_of(&client_hello, &server_hello);
    let body = AuthBody {
        user_proof: Some(user_proof(&w.user, &transcript, &w.device.id())),
        ..body
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &thief);
    assert_eq!(
        server_error(server, &start),
        HandshakeError::BadDeviceSignature
    );
}

#[test]
fn a_valid_user_proof_opens_a_user_proven_session() {
    let mut w = world(8);
    let user = UserKey::from_secret_bytes(&w.user.secret_bytes());
    let (client, server, _, server_hello) = hello(&mut w);
    let (client, start) = client
        .handle_server_hello(&server_hello, recovery_credentials(&w, &user))
        .unwrap();
    let pending = server.handle_client_start(&start).unwrap();
    assert_eq!(
        pending.auth(),
        Some(&VerifiedAuth {
            user: w.user.id(),
            device: w.device.id(),
            resume: None,
            user_proven: true,
        })
    );
    // The relay admits it (its chain check is outside this crate); the session opens.
    let (_, established) = pending.accept_device(0, 0, 0, 0);
    let (session, _) = client.handle_session(&established).unwrap();
    assert_eq!(session.chain_seqno, 0);
}

#[test]
fn a_user_proof_by_another_user_key_is_refused() {
    let mut w = world(10);
    let mallory = UserKey::generate(&mut w.rng);
    let (client, server, _, server_hello) = hello(&mut w);
    // The honest client library signs with whatever key the user typed; the relay refuses.
    let (_, start) = client
        .handle_server_hello(&server_hello, recovery_credentials(&w, &mallory))
        .unwrap();
    let failure = server.handle_client_start(&start).unwrap_err();
    assert_eq!(failure.error, HandshakeError::BadUserProof);
    assert_eq!(failure.error.code(), ErrorCode::BadUserProof);
    assert_eq!(failure.error.code().number(), 206);
    assert!(failure.reply.is_some(), "the relay explains the refusal");
    // The explanation reaches the client as a rejection with code 206.
    let (client, server, _, server_hello) = hello(&mut w);
    let (client, start) = client
        .handle_server_hello(&server_hello, recovery_credentials(&w, &mallory))
        .unwrap();
    let reply = server
        .handle_client_start(&start)
        .unwrap_err()
        .reply
        .unwrap();
    assert_eq!(
        client.handle_session(&reply).unwrap_err().code(),
        ErrorCode::BadUserProof
    );
}

#[test]
fn a_user_proof_for_another_device_is_refused() {
    let mut w = world(11);
    let other = DeviceKey::generate(&mut w.rng);
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let transcript = transcript_of(&client_hello, &server_hello);
    // The user key vouched for `other` in this very session; `w.device` presents it.
    let body = AuthBody {
        user: w.user.id(),
        device: w.device.id(),
        resume: None,
        user_proof: Some(user_proof(&w.user, &transcript, &other.id())),
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &w.device);
    assert_eq!(server_error(server, &start), HandshakeError::BadUserProof);
    // The same proof for the right device passes, so the device is what failed above.
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let transcript = transcript_of(&client_hello, &server_hello);
    let body = AuthBody {
        user_proof: Some(user_proof(&w.user, &transcript, &w.device.id())),
        ..body
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &w.device);
    let pending = server.handle_client_start(&start).unwrap();
    assert!(pending.auth().unwrap().user_proven);
}

#[test]
fn a_user_proof_replayed_from_another_transcript_is_refused() {
    let mut w = world(12);
    // A proof the user key made for this device in an earlier session...
    let (_, _, old_client_hello, old_server_hello) = hello(&mut w);
    let old_transcript = transcript_of(&old_client_hello, &old_server_hello);
    let old_proof = user_proof(&w.user, &old_transcript, &w.device.id());
    // ...presented in a new one, with a fresh device signature.
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let body = AuthBody {
        user: w.user.id(),
        device: w.device.id(),
        resume: None,
        user_proof: Some(old_proof),
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &w.device);
    assert_eq!(server_error(server, &start), HandshakeError::BadUserProof);
    // A proof under another label (the device's signature label) is not a user proof.
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let transcript = transcript_of(&client_hello, &server_hello);
    let mislabelled = w.user.sign(
        CLIENT_SIGNATURE_LABEL,
        &keys::user_proof_message(&transcript, &w.device.id()),
    );
    let body = AuthBody {
        user_proof: Some(mislabelled),
        ..body
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &w.device);
    assert_eq!(server_error(server, &start), HandshakeError::BadUserProof);
}

#[test]
fn a_user_id_that_is_not_a_key_proves_nothing() {
    let mut w = world(13);
    let not_a_key = (0..=u8::MAX)
        .map(|b| UserId([b; 32]))
        .find(|id| id.verifying_key().is_err())
        .expect("some 32-byte strings are not curve points");
    let (client, server, client_hello, server_hello) = hello(&mut w);
    let transcript = transcript_of(&client_hello, &server_hello);
    let body = AuthBody {
        user: not_a_key,
        device: w.device.id(),
        resume: None,
        user_proof: Some(user_proof(&w.user, &transcript, &w.device.id())),
    };
    let start = crafted_start(client, &client_hello, &server_hello, &body, &w.device);
    assert_eq!(server_error(server, &start), HandshakeError::BadUserProof);
}

#[test]
fn auth_bodies_round_trip_and_a_proof_is_64_bytes() {
    let mut w = world(14);
    let body = AuthBody {
        user: w.user.id(),
        device: w.device.id(),
        resume: Some(u64::MAX),
        user_proof: Some([0xA5; 64]),
    };
    let decoded: AuthBody = codec::decode(&codec::encode(&body)).unwrap();
    assert_eq!(decoded, body);
    let none = AuthBody {
        resume: None,
        user_proof: None,
        ..body.clone()
    };
    let decoded: AuthBody = codec::decode(&codec::encode(&none)).unwrap();
    assert_eq!(decoded, none);
    // On the wire the proof is an optional byte string: `Some` ‖ length 64 ‖ the bytes.
    let encoded = codec::encode(&body);
    assert_eq!(&encoded[encoded.len() - 66..encoded.len() - 64], &[1, 64]);
    // A proof of any other length does not decode, neither alone nor in a handshake.
    for len in [0usize, 63, 65] {
        let mut bad = codec::encode(&none);
        bad.pop(); // the `None` of user_proof
        bad.push(1);
        bad.push(len as u8);
        bad.extend(std::iter::repeat_n(7u8, len));
        assert!(codec::decode::<AuthBody>(&bad).is_err(), "{len} bytes");
        let (client, server, client_hello, server_hello) = hello(&mut w);
        let transcript = transcript_of(&client_hello, &server_hello);
        let signature = w.device.sign(
            CLIENT_SIGNATURE_LABEL,
            &keys::client_signed_message(&transcript, &bad),
        );
        let start = codec::encode(&ClientStart::Auth(ClientAuth {
            body: bad,
            signature,
        }));
        let sealed = client.seal_raw_start(&server_hello, &start).unwrap();
        let error = server_error(server, &sealed);
        assert!(matches!(error, HandshakeError::Decode(_)), "{error:?}");
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }
}

#[test]
fn device_signature_over_another_transcript_is_refused() {
    let mut w = world(10);
    let (_, _, old_client_hello, old_server_hello) = hello(&mut w);
    let (client, server, _, server_hello) = hello(&mut w);
    // Signed for the old session's transcript, sealed into the new one.
    let ServerHandshakeMessage::Hello(old) = codec::decode(&old_server_hello).unwrap() else {
        panic!()
    };
    let transcript = keys::transcript_hash(&old_client_hello, &old.body);
    let body = codec::encode(&AuthBody {
        user: w.user.id(),
        device: w.device.id(),
        resume: None,
        user_proof: None,
    });
    let signature = w.device.sign(
        CLIENT_SIGNATURE_LABEL,
        &keys::client_signed_message(&transcript, &body),
    );
    let start = codec::encode(&ClientStart::Auth(ClientAuth { body, signature }));
    let sealed = client.seal_raw_start(&server_hello, &start).unwrap();
    assert_eq!(
        server_error(server, &sealed),
        HandshakeError::BadDeviceSignature
    );
}

#[test]
fn client_start_replayed_into_another_session_fails_to_decrypt() {
    let mut w = world(11);
    let (client, _, _, server_hello) = hello(&mut w);
    let (_, old_start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let (_, server, _, _) = hello(&mut w);
    assert_eq!(
        server_error(server, &old_start),
        HandshakeError::Channel(ChannelError::Decrypt)
    );
}

#[test]
fn out_of_order_handshake_messages_are_refused() {
    let mut w = world(12);
    // A second ClientHello where the encrypted ClientStart belongs.
    let (_, server, client_hello, _) = hello(&mut w);
    let err = server_error(server, &client_hello);
    assert_eq!(err, HandshakeError::Unexpected("ClientHello sent twice"));
    assert_eq!(err.code(), ErrorCode::UnexpectedFrame);
    // A ClientStart as the first message.
    let (client, _, _, server_hello) = hello(&mut w);
    let (_, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let err = ServerHandshake::handle_client_hello(&w.relay, &start, &mut w.rng).unwrap_err();
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    // The relay's SessionStart fed back where a ServerHello belongs.
    let (client, server, _, server_hello) = hello(&mut w);
    let (_, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let (_, established) = server.handle_client_start(&start).unwrap().accept(0, 0);
    let (client, _, _, _) = hello(&mut w);
    assert!(
        client
            .handle_server_hello(&established, credentials(&w))
            .is_err()
    );
}

#[test]
fn truncated_handshake_messages_are_refused() {
    let mut w = world(13);
    let (client, server, client_hello, server_hello) = hello(&mut w);
    for cut in 0..client_hello.len() {
        let err = ServerHandshake::handle_client_hello(&w.relay, &client_hello[..cut], &mut w.rng)
            .unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::MalformedFrame,
            "ClientHello cut at {cut}"
        );
    }
    for cut in [0, 1, server_hello.len() / 2, server_hello.len() - 1] {
        let (client, _, _, server_hello) = hello(&mut w);
        let err = client
            .handle_server_hello(&server_hello[..cut], credentials(&w))
            .unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::MalformedFrame,
            "ServerHello cut at {cut}"
        );
    }
    let (_, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    assert_eq!(
        server_error(server, &start[..start.len() - 1]),
        HandshakeError::Channel(ChannelError::Decrypt)
    );
}

#[test]
fn oversized_hello_is_refused_before_decoding() {
    let mut w = world(14);
    let huge = vec![0u8; MAX_FRAME_LEN + 1];
    let err = ServerHandshake::handle_client_hello(&w.relay, &huge, &mut w.rng).unwrap_err();
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn unknown_version_gets_a_clear_refusal() {
    let mut w = world(15);
    let (client, client_hello) =
        ClientHandshake::start_with_versions(w.relay.id(), 2, 3, &mut w.rng);
    let err =
        ServerHandshake::handle_client_hello(&w.relay, &client_hello, &mut w.rng).unwrap_err();
    assert_eq!(err, HandshakeError::UnsupportedVersion { min: 2, max: 3 });
    let reject = ServerHandshake::reject(&err);
    let refused = client
        .handle_server_hello(&reject, credentials(&w))
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::UnsupportedVersion);
    assert!(matches!(refused, HandshakeError::Rejected(frame) if frame.message.contains("2..=3")));
    // A client speaking 1..=5 settles on this build's version.
    let (client, client_hello) =
        ClientHandshake::start_with_versions(w.relay.id(), 1, 5, &mut w.rng);
    let (_, server_hello) =
        ServerHandshake::handle_client_hello(&w.relay, &client_hello, &mut w.rng).unwrap();
    assert!(
        client
            .handle_server_hello(&server_hello, credentials(&w))
            .is_ok()
    );
}

#[test]
fn a_version_range_below_the_relays_is_refused() {
    // The client's newest version is older than the relay's oldest: the versions would
    // settle on one the relay does not speak.
    let below = crate::MIN_PROTOCOL_VERSION - 1;
    let mut w = world(19);
    let (_, client_hello) =
        ClientHandshake::start_with_versions(w.relay.id(), below, below, &mut w.rng);
    let err =
        ServerHandshake::handle_client_hello(&w.relay, &client_hello, &mut w.rng).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::UnsupportedVersion {
            min: below,
            max: below
        }
    );
    // A range reaching up to the relay's versions settles on the newest one both speak.
    let (client, client_hello) = ClientHandshake::start_with_versions(
        w.relay.id(),
        below,
        crate::PROTOCOL_VERSION,
        &mut w.rng,
    );
    let (server, server_hello) =
        ServerHandshake::handle_client_hello(&w.relay, &client_hello, &mut w.rng).unwrap();
    let (_, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let pending = server.handle_client_start(&start).unwrap();
    assert_eq!(pending.version(), crate::PROTOCOL_VERSION);
}

/// Plays the relay by hand through step 4, so the test decides what `SessionEstablished`
/// says. Returns the client waiting for step 5, its relay channel and the real session id.
fn relay_by_hand(w: &mut World) -> (AwaitSession, ServerChannel, [u8; 16]) {
    use x25519_dalek::{EphemeralSecret, PublicKey};
    let (client, client_hello) = ClientHandshake::start(w.relay.id(), &mut w.rng);
    let hello: ClientHello = codec::decode(&client_hello).unwrap();
    let secret = EphemeralSecret::random_from_rng(&mut w.rng);
    let body = codec::encode(&ServerHelloBody {
        version: crate::PROTOCOL_VERSION,
        ephemeral: PublicKey::from(&secret).to_bytes(),
        nonce: [9; 32],
        relay: w.relay.id(),
    });
    let transcript = keys::transcript_hash(&client_hello, &body);
    let signature = w.relay.sign(keys::SERVER_SIGNATURE_LABEL, &transcript);
    let server_hello = codec::encode(&ServerHandshakeMessage::Hello(ServerHello {
        body,
        signature,
    }));
    let shared = secret.diffie_hellman(&PublicKey::from(hello.ephemeral));
    let keys = keys::derive(shared.as_bytes(), &transcript);
    let mut channel = ServerChannel::new(&keys.server_to_client, &keys.client_to_server);
    let (client, start) = client
        .handle_server_hello(&server_hello, credentials(w))
        .unwrap();
    assert!(matches!(
        channel.open_value::<ClientStart>(&start).unwrap(),
        ClientStart::Auth(_)
    ));
    (client, channel, keys.session_id)
}

#[test]
fn session_established_must_match_both_session_id_and_version() {
    let mut w = world(34);
    let version = crate::PROTOCOL_VERSION;
    let (client, mut relay, session_id) = relay_by_hand(&mut w);
    assert_eq!(client.session_id(), session_id);
    let mut established = SessionEstablished {
        session_id,
        version,
        head: 5,
        acked: 4,
        last_device_seq: 3,
        chain_seqno: 9,
    };
    // The honest answer opens the session.
    let reply = relay
        .seal_value(&SessionStart::Established(established.clone()))
        .unwrap();
    let (session, _) = client.handle_session(&reply).unwrap();
    assert_eq!(
        (
            session.session_id,
            session.version,
            session.head,
            session.chain_seqno
        ),
        (session_id, version, 5, 9)
    );
    // The right session id with another version, and another session id with the right
    // version: each alone is a mismatch.
    for (other_id, other_version) in [(false, true), (true, false)] {
        let (client, mut relay, session_id) = relay_by_hand(&mut w);
        established.session_id = session_id;
        established.version = version;
        if other_id {
            established.session_id[0] ^= 1;
        }
        if other_version {
            established.version = version + 1;
        }
        let reply = relay
            .seal_value(&SessionStart::Established(established.clone()))
            .unwrap();
        assert_eq!(
            client.handle_session(&reply).unwrap_err(),
            HandshakeError::SessionMismatch,
            "other id: {other_id}, other version: {other_version}"
        );
    }
}

#[test]
fn both_sides_derive_the_same_fresh_session_id() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut w = world(35 + ids.len() as u64);
        let (client, server, _, server_hello) = hello(&mut w);
        let (client, start) = client
            .handle_server_hello(&server_hello, credentials(&w))
            .unwrap();
        let pending = server.handle_client_start(&start).unwrap();
        assert_eq!(client.session_id(), pending.session_id());
        ids.push(client.session_id());
    }
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn client_state_debug_shows_the_pinned_key_only() {
    let mut w = world(37);
    let (client, _) = ClientHandshake::start(w.relay.id(), &mut w.rng);
    // Nothing of the ephemeral secret or the transcript.
    assert_eq!(
        format!("{client:?}"),
        format!("AwaitServerHello {{ pinned: {:?}, .. }}", w.relay.id())
    );
}

#[test]
fn low_order_ephemeral_key_is_refused() {
    let mut w = world(16);
    let hello = ClientHello {
        min_version: 1,
        max_version: 1,
        ephemeral: [0; 32],
        nonce: [1; 32],
    };
    let err = ServerHandshake::handle_client_hello(&w.relay, &codec::encode(&hello), &mut w.rng)
        .unwrap_err();
    assert_eq!(err, HandshakeError::WeakKey);
}

#[test]
fn relay_refusal_reaches_the_client() {
    let mut w = world(17);
    let (client, server, _, server_hello) = hello(&mut w);
    let (client, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let reply = server
        .handle_client_start(&start)
        .unwrap()
        .reject(ErrorFrame::new(ErrorCode::DeviceRevoked));
    let err = client.handle_session(&reply).unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeviceRevoked);
}

#[test]
fn tampered_session_start_is_refused() {
    let mut w = world(18);
    let (client, server, _, server_hello) = hello(&mut w);
    let (client, start) = client
        .handle_server_hello(&server_hello, credentials(&w))
        .unwrap();
    let (_, mut established) = server.handle_client_start(&start).unwrap().accept(0, 0);
    established[0] ^= 1;
    assert_eq!(
        client.handle_session(&established).unwrap_err(),
        HandshakeError::Channel(ChannelError::Decrypt)
    );
}

#[test]
fn handshake_errors_map_to_their_codes() {
    for (error, code) in [
        (HandshakeError::BadUserProof, ErrorCode::BadUserProof),
        (
            HandshakeError::BadDeviceSignature,
            ErrorCode::HandshakeFailed,
        ),
        (HandshakeError::SessionMismatch, ErrorCode::HandshakeFailed),
        (HandshakeError::WeakKey, ErrorCode::HandshakeFailed),
    ] {
        assert_eq!(error.code(), code, "{error:?}");
    }
    assert_eq!(ErrorCode::BadUserProof.number(), 206);
}

#[test]
fn session_keys_print_the_session_id_and_no_key() {
    let keys = keys::derive(&[7; 32], &[8; 32]);
    let shown = format!("{keys:?}");
    assert!(shown.contains(&hex::encode(keys.session_id)), "{shown}");
    assert!(
        !shown.contains(&hex::encode(keys.client_to_server)),
        "{shown}"
    );
    assert!(
        !shown.contains(&hex::encode(keys.server_to_client)),
        "{shown}"
    );
}

mod channel {
    use super::*;
    use crate::channel::Encoded;
    use crate::limits::CHANNEL_OVERHEAD;

    fn append(n: u64) -> ClientFrame {
        ClientFrame::Append(Append {
            device_seq: n,
            payload: SealedPayload(vec![n as u8; 40]),
        })
    }

    #[test]
    fn tampered_frames_are_refused_and_close_the_channel() {
        let (mut client, _) = connected(20);
        let wire = client.seal(&append(1)).unwrap();
        for i in 0..wire.len() {
            let (mut client, mut server) = connected(20);
            let mut bad = client.seal(&append(1)).unwrap();
            bad[i] ^= 0x01;
            assert_eq!(server.open(&bad), Err(ChannelError::Decrypt), "byte {i}");
            // The channel is now closed, even for the genuine next frame.
            let good = client.seal(&append(2)).unwrap();
            assert_eq!(server.open(&good), Err(ChannelError::Closed));
            assert!(server.is_closed());
            assert_eq!(
                server.seal(&ServerFrame::Ping { nonce: 1 }),
                Err(ChannelError::Closed)
            );
        }
    }

    #[test]
    fn reordered_frames_are_refused() {
        let (mut client, mut server) = connected(21);
        let first = client.seal(&append(1)).unwrap();
        let second = client.seal(&append(2)).unwrap();
        assert_eq!(server.open(&second), Err(ChannelError::Decrypt));
        assert_eq!(server.open(&first), Err(ChannelError::Closed));
    }

    #[test]
    fn replayed_frames_are_refused() {
        let (mut client, mut server) = connected(22);
        let first = client.seal(&append(1)).unwrap();
        assert_eq!(server.open(&first).unwrap(), append(1));
        // Same bytes again: the counter has moved on, so the nonce differs.
        assert_eq!(server.open(&first), Err(ChannelError::Decrypt));
    }

    #[test]
    fn counter_reuse_by_the_sender_cannot_be_forced() {
        // Two frames with equal content get different ciphertexts: the counter never repeats.
        let (mut client, mut server) = connected(23);
        let a = client.seal(&append(1)).unwrap();
        let b = client.seal(&append(1)).unwrap();
        assert_ne!(a, b);
        assert_eq!(server.open(&a).unwrap(), append(1));
        assert_eq!(server.open(&b).unwrap(), append(1));
        // Counter 0 of each direction carried the handshake's encrypted message.
        assert_eq!((client.sent(), server.received()), (3, 3));
    }

    #[test]
    fn truncated_and_oversized_frames_are_refused() {
        let (mut client, mut server) = connected(24);
        let wire = client.seal(&append(1)).unwrap();
        assert_eq!(
            server.open(&wire[..wire.len() - 1]),
            Err(ChannelError::Decrypt)
        );
        let (_, mut server) = connected(24);
        assert_eq!(server.open(&[]), Err(ChannelError::Decrypt));
        let (_, mut server) = connected(24);
        let huge = vec![0u8; MAX_FRAME_LEN + 17];
        assert_eq!(server.open(&huge), Err(ChannelError::TooLarge(huge.len())));
        assert_eq!(ChannelError::TooLarge(0).code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn a_frame_for_the_other_direction_is_refused() {
        let (mut client, _) = connected(25);
        let wire = client.seal(&append(1)).unwrap();
        let (mut client2, _) = connected(25);
        // The client's own send key is not its receive key.
        assert_eq!(client2.open(&wire), Err(ChannelError::Decrypt));
    }

    #[test]
    fn oversized_payload_inside_a_valid_frame_is_refused() {
        let (mut client, mut server) = connected(26);
        let big = ClientFrame::Append(Append {
            device_seq: 1,
            payload: SealedPayload(vec![0; crate::limits::MAX_PAYLOAD_LEN + 1]),
        });
        let wire = client.seal(&big).unwrap();
        let err = server.open(&wire).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
    }

    /// A `ServerFrame::Events` whose encoding is exactly `len` bytes (about 1 MiB).
    fn events_frame_of_len(len: usize) -> ServerFrame {
        let device = DeviceKey::generate(&mut ChaCha20Rng::seed_from_u64(29)).id();
        let event = |seq: u64, size: usize| crate::Event {
            seq,
            device,
            device_seq: seq,
            payload: SealedPayload(vec![seq as u8; size]),
        };
        // Five payloads under the payload limit; the last one grows to make up the difference
        // (its length prefix stays three bytes wide).
        let size = 200_000;
        let frame = |last: usize| {
            let mut events: Vec<_> = (1..5).map(|seq| event(seq, size)).collect();
            events.push(event(5, last));
            ServerFrame::Events(events)
        };
        let missing = len - codec::encode(&frame(size)).len();
        let frame = frame(size + missing);
        assert_eq!(codec::encode(&frame).len(), len);
        frame
    }

    #[test]
    fn a_frame_of_exactly_the_maximum_passes_one_byte_more_does_not() {
        let (mut client, mut server) = connected(28);
        // Exactly MAX_FRAME_LEN: sealed, and its ciphertext (limit + tag) opens.
        let max = events_frame_of_len(MAX_FRAME_LEN);
        let wire = server.seal(&max).unwrap();
        assert_eq!(wire.len(), MAX_FRAME_LEN + CHANNEL_OVERHEAD);
        assert_eq!(client.open(&wire).unwrap(), max);
        assert!(!server.is_closed() && !client.is_closed());
        // One byte more: the sender refuses it and closes.
        let over = events_frame_of_len(MAX_FRAME_LEN + 1);
        assert_eq!(
            server.seal(&over),
            Err(ChannelError::TooLarge(MAX_FRAME_LEN + 1))
        );
        assert!(server.is_closed());
        assert_eq!(server.seal(&max), Err(ChannelError::Closed));
        // The same limits through the split halves and pre-encoded frames.
        let (client, server) = connected(28);
        let (mut send, _) = server.split();
        let (_, mut recv) = client.split();
        let wire = send.seal_encoded(&Encoded::new(&max)).unwrap();
        assert_eq!(wire.len(), MAX_FRAME_LEN + CHANNEL_OVERHEAD);
        assert_eq!(recv.open(&wire).unwrap(), max);
        assert_eq!(
            send.seal_encoded(&Encoded::new(&over)),
            Err(ChannelError::TooLarge(MAX_FRAME_LEN + 1))
        );
        assert_eq!(send.seal(&max), Err(ChannelError::Closed));
    }

    #[test]
    fn a_ciphertext_one_byte_over_the_maximum_is_refused_before_decrypting() {
        for len in [
            MAX_FRAME_LEN + CHANNEL_OVERHEAD,
            MAX_FRAME_LEN + CHANNEL_OVERHEAD + 1,
        ] {
            let (_, mut server) = connected(30);
            let junk = vec![0u8; len];
            let expected = if len > MAX_FRAME_LEN + CHANNEL_OVERHEAD {
                ChannelError::TooLarge(len)
            } else {
                // Within the limit: it is decrypted, and fails to authenticate.
                ChannelError::Decrypt
            };
            assert_eq!(server.open(&junk), Err(expected), "{len} bytes");
            assert!(server.is_closed());
        }
    }

    #[test]
    fn pre_encoded_frames_seal_like_the_frame_itself() {
        let (mut client, mut server) = connected(31);
        let frame = ServerFrame::Ping { nonce: 5 };
        let encoded = Encoded::new(&frame);
        assert_eq!(encoded.len(), codec::encode(&frame).len());
        assert!(!encoded.is_empty());
        assert!(Encoded::<ServerFrame>::from_raw(Vec::new()).is_empty());
        let wire = server.seal_encoded(&encoded).unwrap();
        assert_eq!(wire.len(), encoded.len() + CHANNEL_OVERHEAD);
        assert_eq!(client.open(&wire).unwrap(), frame);
        // The split sending half too, with the counter carrying on.
        let (mut send, _) = server.split();
        let (_, mut recv) = client.split();
        for nonce in 6..9 {
            let frame = ServerFrame::Ping { nonce };
            let wire = send.seal_encoded(&Encoded::new(&frame)).unwrap();
            assert_eq!(wire.len(), codec::encode(&frame).len() + CHANNEL_OVERHEAD);
            assert_eq!(recv.open(&wire).unwrap(), frame);
        }
    }

    #[test]
    fn a_working_channel_is_open() {
        let (mut client, mut server) = connected(32);
        assert!(!client.is_closed() && !server.is_closed());
        let wire = client.seal(&append(1)).unwrap();
        assert_eq!(server.open(&wire).unwrap(), append(1));
        assert!(!client.is_closed() && !server.is_closed());
        assert_eq!(server.open(&wire), Err(ChannelError::Decrypt));
        assert!(server.is_closed() && !client.is_closed());
    }

    #[test]
    fn debug_shows_counters_and_no_key() {
        let (mut client, mut server) = connected(33);
        let wire = client.seal(&append(1)).unwrap();
        server.open(&wire).unwrap();
        let shown = format!("{server:?}");
        assert!(shown.starts_with("Channel {"), "{shown}");
        assert!(
            shown.contains("sent: 1, received: 2, closed: false"),
            "{shown}"
        );
        assert!(
            !shown.contains("cipher") && !shown.contains("key"),
            "{shown}"
        );
        let (send, recv) = server.split();
        assert_eq!(format!("{send:?}"), "SendHalf { sent: 1, .. }");
        assert_eq!(format!("{recv:?}"), "RecvHalf { received: 2, .. }");
    }

    #[test]
    fn a_payload_of_exactly_the_limit_passes_one_byte_more_does_not() {
        let limit = crate::limits::MAX_PAYLOAD_LEN;
        let (mut client, mut server) = connected(38);
        let frame = |len: usize| {
            ClientFrame::Append(Append {
                device_seq: 1,
                payload: SealedPayload(vec![3; len]),
            })
        };
        let wire = client.seal(&frame(limit)).unwrap();
        assert_eq!(server.open(&wire).unwrap(), frame(limit));
        let wire = client.seal(&frame(limit + 1)).unwrap();
        assert_eq!(
            server.open(&wire),
            Err(ChannelError::Decode(DecodeError::FieldTooLarge {
                field: "payload",
                len: limit + 1,
                limit
            }))
        );
    }

    #[test]
    fn split_halves_keep_the_counters_and_close_on_failure() {
        let (client, server) = connected(27);
        let (mut client_send, mut client_recv) = client.split();
        let (mut server_send, mut server_recv) = server.split();
        for n in 1..4 {
            let wire = client_send.seal(&append(n)).unwrap();
            assert_eq!(server_recv.open(&wire).unwrap(), append(n));
            let wire = server_send.seal(&ServerFrame::Ping { nonce: n }).unwrap();
            assert_eq!(
                client_recv.open(&wire).unwrap(),
                ServerFrame::Ping { nonce: n }
            );
        }
        let wire = client_send.seal(&append(9)).unwrap();
        assert_eq!(server_recv.open(&wire[1..]), Err(ChannelError::Decrypt));
        assert_eq!(server_recv.open(&wire), Err(ChannelError::Closed));
    }
}

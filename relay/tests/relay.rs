//! The relay over real sockets, driven by a client built on the protocol crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ferry_protocol::frames::MAX_LINKS_PER_FRAME;
use ferry_protocol::handshake::{ClientHandshake, ClientHello, Credentials, ServerHandshake};
use ferry_protocol::{
    Chain, ClientFrame, DeviceKey, ErrorCode, LinkBody, ServerFrame, SigningKey, codec,
};
use ferry_relay::{Config, Server};
use futures_util::SinkExt;
use rand_core::OsRng;
use support::client::{Account, Client, Identity, close_code, next_binary, revoke_body, socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

struct Relay {
    server: Server,
    _dir: tempfile::TempDir,
}

async fn relay() -> Relay {
    relay_with(|_| {}).await
}

async fn relay_with(adjust: impl FnOnce(&mut Config)) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
    adjust(&mut config);
    let server = Server::spawn(config).await.unwrap();
    Relay { server, _dir: dir }
}

impl Relay {
    async fn connect(&self, id: &Identity) -> Client {
        Client::connect(self.server.local_addr(), self.server.relay_id(), id, None)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn devices_sync_by_replay_then_live() {
    let relay = relay().await;
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");

    let mut a = relay.connect(&laptop).await;
    assert_eq!(a.replay().await, (vec![], 0));
    for n in 1..=3 {
        assert_eq!(
            a.append(n, format!("event {n}").as_bytes()).await.unwrap(),
            n
        );
    }

    let mut b = relay.connect(&phone).await;
    assert_eq!(b.session.head, 3);
    let (replayed, head) = b.replay().await;
    assert_eq!(head, 3);
    assert_eq!(
        replayed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(replayed.iter().all(|e| e.device == laptop.device.id()));
    assert_eq!(replayed[1].payload.0, b"event 2");

    // Live, both ways, and every session sees the whole log in order.
    assert_eq!(b.append(1, b"from phone").await.unwrap(), 4);
    // `a` sees its own events too: everything it was sent, from the start, is the log.
    let live = a.events(4).await;
    assert_eq!(live.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!((live[3].device, live[3].device_seq), (phone.device.id(), 1));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn retries_get_the_original_sequence_and_reuse_is_a_conflict() {
    let relay = relay().await;
    let id = Identity::new_user();
    let mut a = relay.connect(&id).await;
    a.replay().await;
    assert_eq!(a.append(1, b"one").await.unwrap(), 1);
    assert_eq!(a.append(2, b"two").await.unwrap(), 2);
    // The same append again (a retry after a lost answer) is not stored twice.
    assert_eq!(a.append(1, b"one").await.unwrap(), 1);
    let conflict = a.append(2, b"something else").await.unwrap_err();
    assert_eq!(conflict.code, ErrorCode::Conflict);
    let invalid = a.append(0, b"zero").await.unwrap_err();
    assert_eq!(invalid.code, ErrorCode::InvalidSequence);

    let mut other = relay.connect(&id.another_device("other")).await;
    let (events, head) = other.replay().await;
    assert_eq!(head, 2);
    assert_eq!(events.len(), 2);
    relay.server.shutdown().await;
}

#[tokio::test]
async fn sequences_are_per_user_and_users_are_isolated() {
    let relay = relay().await;
    let alice = Identity::new_user();
    let bob = Identity::new_user();
    let mut a = relay.connect(&alice).await;
    let mut b = relay.connect(&bob).await;
    a.replay().await;
    b.replay().await;
    for n in 1..=5 {
        assert_eq!(a.append(n, b"alice").await.unwrap(), n);
        assert_eq!(b.append(n, b"bob").await.unwrap(), n);
    }
    let mut alice2 = relay.connect(&alice.another_device("2")).await;
    let (events, _) = alice2.replay().await;
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e.payload.0 == b"alice"));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn the_cursor_moves_on_ack_only_and_replay_resumes_after_it() {
    let relay = relay().await;
    let writer = Identity::new_user();
    let reader = writer.another_device("reader");
    let mut w = relay.connect(&writer).await;
    w.replay().await;
    for n in 1..=6 {
        w.append(n, b"x").await.unwrap();
    }

    // Receiving a page does not move the cursor...
    let mut r = relay.connect(&reader).await;
    assert_eq!(r.replay().await.0.len(), 6);
    drop(r);
    let mut r = relay.connect(&reader).await;
    assert_eq!(r.session.acked, 0);
    assert_eq!(r.replay().await.0.len(), 6);
    // ...an Ack does.
    r.send(&ClientFrame::Ack { seq: 4 }).await;
    r.send(&ClientFrame::Ping { nonce: 9 }).await;
    assert_eq!(r.recv().await.unwrap(), ServerFrame::Pong { nonce: 9 });
    drop(r);
    let mut r = relay.connect(&reader).await;
    assert_eq!(r.session.acked, 4);
    let (events, head) = r.replay().await;
    assert_eq!(
        (events.iter().map(|e| e.seq).collect::<Vec<_>>(), head),
        (vec![5, 6], 6)
    );
    // The client's own cursor wins when it has one.
    let mut r = Client::connect(
        relay.server.local_addr(),
        relay.server.relay_id(),
        &reader,
        Some(5),
    )
    .await
    .unwrap();
    assert_eq!(
        r.replay().await.0.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6]
    );
    relay.server.shutdown().await;
}

#[tokio::test]
async fn a_revoked_device_is_disconnected_and_refused() {
    let relay = relay().await;
    let laptop = Identity::new_user();
    let stolen = laptop.another_device("stolen phone");
    let mut a = relay.connect(&laptop).await;
    a.replay().await;
    let mut s = relay.connect(&stolen).await;
    s.replay().await;
    assert_eq!(s.session.chain_seqno, 3, "Create, and two Admits");

    // A Revoke signed by a device of another user's chain is refused.
    let mallory = Identity::new_user();
    let mut m = relay.connect(&mallory).await;
    let chain = a.fetch_chain(laptop.user.id()).await;
    let forged = chain.sign(
        revoke_body(&chain, &[stolen.device.id()]),
        SigningKey::Device(&mallory.device),
    );
    let refused = a.append_link(&forged).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::ChainLinkRefused);
    assert_eq!(
        refused.message,
        "the signer is not an active device of the user"
    );
    // Nor may a device append a link to another user's chain.
    let refused = m.append_link(&forged).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::ChainLinkRefused);
    assert_eq!(refused.message, "the link is for another user");

    let seqno = a
        .sign_and_append(
            laptop.user.id(),
            revoke_body(&chain, &[stolen.device.id()]),
            SigningKey::Device(&laptop.device),
        )
        .await
        .unwrap();
    assert_eq!(seqno, 4);
    // Its open session is told inside the channel, then closed...
    let told = s.recv().await.unwrap();
    assert!(
        matches!(&told, ServerFrame::Error(e) if e.code == ErrorCode::DeviceRevoked && e.device_seq.is_none()),
        "{told:?}"
    );
    assert_eq!(
        close_code(&mut s.ws).await,
        Some(ErrorCode::DeviceRevoked.close_code())
    );
    // ...and it cannot come back.
    let refused = Client::connect(
        relay.server.local_addr(),
        relay.server.relay_id(),
        &stolen,
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::DeviceRevoked));

    a.send(&ClientFrame::ListDevices).await;
    let ServerFrame::Devices(devices) = a.recv().await.unwrap() else {
        panic!("expected devices")
    };
    assert_eq!(devices.len(), 2);
    assert!(
        devices
            .iter()
            .any(|d| d.device == stolen.device.id() && d.revoked && d.name == "stolen phone")
    );
    assert!(
        devices
            .iter()
            .any(|d| d.device == laptop.device.id() && !d.revoked)
    );
    relay.server.shutdown().await;
}

/// A payload with a format-2 header naming `epoch` (the relay reads no further).
fn sealed_under(epoch: u32, text: &str) -> Vec<u8> {
    let mut bytes = vec![ferry_protocol::seal::FORMAT_V2];
    bytes.extend_from_slice(&epoch.to_be_bytes());
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// A device that has not heard of a revocation still seals under the old epoch, which the
/// revoked device can read: its append is refused `stale_epoch` (naming the current epoch),
/// and so is everything it sends after it until it sends that one again.
#[tokio::test]
async fn an_append_sealed_under_a_replaced_epoch_is_refused_until_sealed_again() {
    let relay = relay().await;
    let a_id = Identity::new_user();
    let b_id = a_id.another_device("b");
    let c_id = a_id.another_device("c");
    let mut a = relay.connect(&a_id).await;
    a.replay().await;
    assert_eq!(a.append(1, &sealed_under(0, "before")).await.unwrap(), 1);
    let mut b = relay.connect(&b_id).await;
    b.replay().await;
    drop(relay.connect(&c_id).await);

    // B revokes C; A stays on epoch 0.
    let chain = b.fetch_chain(a_id.user.id()).await;
    assert_eq!(chain.epoch(), 0);
    b.sign_and_append(
        a_id.user.id(),
        revoke_body(&chain, &[c_id.device.id()]),
        SigningKey::Device(&b_id.device),
    )
    .await
    .unwrap();

    let refused = a.append(2, &sealed_under(0, "stale")).await.unwrap_err();
    assert_eq!(
        (refused.code, refused.device_seq),
        (ErrorCode::StaleEpoch, Some(2))
    );
    assert!(
        refused.message.contains("epoch is 1"),
        "{}",
        refused.message
    );
    // Held back behind it, though sealed under epoch 1; opaque payloads are not judged but
    // are held back all the same (the device's order).
    let later = a.append(3, &sealed_under(1, "later")).await.unwrap_err();
    assert_eq!(
        (later.code, later.device_seq),
        (ErrorCode::StaleEpoch, Some(3))
    );
    // Sealed again under epoch 1 with the same device sequence: stored, then the rest.
    assert_eq!(a.append(2, &sealed_under(1, "stale")).await.unwrap(), 2);
    assert_eq!(a.append(3, &sealed_under(1, "later")).await.unwrap(), 3);
    assert_eq!(a.append(4, b"opaque").await.unwrap(), 4);
    // Another device's epoch-0 append is refused too; B's own epoch-1 append is stored.
    assert_eq!(
        b.append(1, &sealed_under(0, "b")).await.unwrap_err().code,
        ErrorCode::StaleEpoch
    );
    assert_eq!(b.append(1, &sealed_under(1, "b")).await.unwrap(), 5);
    relay.server.shutdown().await;
}

/// The attack the device chain answers: a revoked device keeps its device key (a stolen
/// laptop, a copied state folder). Whatever it signs is refused, it cannot connect, a key it
/// made up is unknown, and nothing it appends is stored. The revocation is stored behind the
/// relay node's back (as on another node whose bus message was lost), so the thief still has
/// a live session to send from.
#[tokio::test]
async fn a_revoked_device_can_neither_admit_nor_revoke_nor_append() {
    let node = support::node::node(|_| {}).await;
    let (addr, relay_id) = (node.server.local_addr(), node.server.relay_id());
    let laptop = Identity::new_user();
    let thief_id = laptop.another_device("thief");
    let mut thief = node.connect(&thief_id, None).await;
    thief.replay().await;
    assert_eq!(thief.append(1, b"before").await.unwrap(), 1);

    let store = node.store();
    let chain = support::storage::stored_chain(&**store, laptop.user.id()).await;
    let revoke = chain.sign(
        revoke_body(&chain, &[thief_id.device.id()]),
        SigningKey::Device(&laptop.device),
    );
    store.append_link(&revoke, 10, 1).await.unwrap();

    // The thief admits a fresh key of its own, and revokes the legitimate laptop: refused.
    let fresh = laptop.unadmitted_device("fresh");
    let chain = thief.fetch_chain(laptop.user.id()).await;
    assert!(!chain.is_active(&thief_id.device.id()));
    let admission = chain.sign(fresh.admit_body(), SigningKey::Device(&thief_id.device));
    let refused = thief.append_link(&admission).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::ChainLinkRefused);
    assert_eq!(
        refused.message,
        "the signer is not an active device of the user"
    );
    let coup = chain.sign(
        revoke_body(&chain, &[laptop.device.id()]),
        SigningKey::Device(&thief_id.device),
    );
    let refused = thief.append_link(&coup).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::ChainLinkRefused);
    // A link signed before the revocation, replayed after it, is out of place.
    let early = Chain::verify(laptop.user.id(), &thief.fetch_links(0).await[..3])
        .unwrap()
        .sign(fresh.admit_body(), SigningKey::Device(&thief_id.device));
    assert_eq!(
        thief.append_link(&early).await.unwrap_err().code,
        ErrorCode::ChainLinkRefused
    );
    assert_eq!(store.chain_seqno(laptop.user.id()).await.unwrap(), 4);

    // Its appends are refused by the store, and its session ends: 203 inside the channel,
    // then the close code.
    let refused = thief.append(2, b"after").await.unwrap_err();
    assert_eq!(
        (refused.code, refused.device_seq),
        (ErrorCode::DeviceRevoked, Some(2))
    );
    assert_eq!(
        close_code(&mut thief.ws).await,
        Some(ErrorCode::DeviceRevoked.close_code())
    );
    // It cannot connect, nor can the key it tried to admit.
    let refused = Client::connect_as(addr, relay_id, &thief_id, None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::DeviceRevoked));
    let refused = Client::connect_as(addr, relay_id, &fresh, None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::UnknownDevice));
    // Not even with the recovery key: a revoked device key is never let back in.
    let refused = Client::connect_recovery(addr, relay_id, &thief_id)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::DeviceRevoked));
    // The laptop is untouched, and the log holds only what the thief stored before.
    let mut a = node.connect(&laptop, None).await;
    let (events, head) = a.replay().await;
    assert_eq!(head, 1);
    assert_eq!(events[0].payload.0, b"before");
    assert_eq!(a.append(1, b"still mine").await.unwrap(), 2);
    node.server.shutdown().await;
}

#[tokio::test]
async fn recovery_sessions_only_read_and_extend_the_chain() {
    let relay = relay().await;
    let (addr, relay_id) = (relay.server.local_addr(), relay.server.relay_id());
    let laptop = Identity::new_user();

    // Before any chain: the device is unknown, but the user key opens a recovery session.
    let refused = Client::connect_as(addr, relay_id, &laptop, None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::UnknownDevice));
    let mut recovery = Client::connect_recovery(addr, relay_id, &laptop)
        .await
        .unwrap();
    assert_eq!(recovery.session.chain_seqno, 0);
    assert!(recovery.fetch_links(0).await.is_empty());
    recovery.send(&ClientFrame::Ping { nonce: 3 }).await;
    assert_eq!(
        recovery.recv().await.unwrap(),
        ServerFrame::Pong { nonce: 3 }
    );
    recovery.admit_by_user_key(&laptop).await;
    assert_eq!(recovery.fetch_links(0).await.len(), 2);
    recovery.send(&ClientFrame::ListDevices).await;
    let ServerFrame::Devices(devices) = recovery.recv().await.unwrap() else {
        panic!("expected devices")
    };
    assert_eq!(devices.len(), 1);
    // No replay, no events: anything but the chain, devices and pings ends the session.
    recovery
        .send(&ClientFrame::Append(ferry_protocol::Append {
            device_seq: 1,
            payload: ferry_protocol::SealedPayload(vec![1]),
        }))
        .await;
    let told = recovery.recv().await.unwrap();
    assert!(
        matches!(&told, ServerFrame::Error(e) if e.code == ErrorCode::UnexpectedFrame),
        "{told:?}"
    );
    assert_eq!(
        close_code(&mut recovery.ws).await,
        Some(ErrorCode::UnexpectedFrame.close_code())
    );

    // Admitted now: a normal session, which sees the chain's length, and nothing was appended.
    let mut a = Client::connect_as(addr, relay_id, &laptop, None)
        .await
        .unwrap();
    assert_eq!((a.session.chain_seqno, a.session.head), (2, 0));
    assert_eq!(a.replay().await, (vec![], 0));

    // A recovery session gets no events either, even when the log has some.
    a.append(1, b"x").await.unwrap();
    let mut recovery = Client::connect_recovery(addr, relay_id, &laptop)
        .await
        .unwrap();
    assert_eq!(recovery.session.head, 1);
    recovery.send(&ClientFrame::Ping { nonce: 4 }).await;
    assert_eq!(
        recovery.recv().await.unwrap(),
        ServerFrame::Pong { nonce: 4 }
    );
    recovery.send(&ClientFrame::Ack { seq: 1 }).await;
    assert!(matches!(
        recovery.recv().await.unwrap(),
        ServerFrame::Error(e) if e.code == ErrorCode::UnexpectedFrame
    ));

    // A wrong recovery key: the user key's proof does not verify for this user.
    let wrong = Account::new();
    let device = DeviceKey::generate(&mut OsRng);
    let credentials = Credentials::Device {
        key: &device,
        user: laptop.user.id(),
        resume: None,
        recovery: Some(&wrong.key),
    };
    let refused = Client::connect_with(addr, relay_id, credentials)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::BadUserProof));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn ephemeral_frames_reach_other_online_devices_and_are_not_stored() {
    let relay = relay().await;
    let a_id = Identity::new_user();
    let b_id = a_id.another_device("b");
    let mut a = relay.connect(&a_id).await;
    let mut b = relay.connect(&b_id).await;
    a.replay().await;
    b.replay().await;
    a.send(&ClientFrame::Ephemeral {
        body: b"typing".to_vec(),
    })
    .await;
    assert_eq!(
        b.recv().await.unwrap(),
        ServerFrame::Ephemeral {
            from: a_id.device.id(),
            body: b"typing".to_vec()
        }
    );
    // Not echoed to the sender, not stored.
    a.send(&ClientFrame::Ping { nonce: 1 }).await;
    assert_eq!(a.recv().await.unwrap(), ServerFrame::Pong { nonce: 1 });
    let mut c = relay.connect(&a_id.another_device("c")).await;
    assert_eq!(c.replay().await, (vec![], 0));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_a_closed_connection() {
    let relay = relay_with(|c| c.limits.max_frame_bytes = 64 * 1024).await;
    let addr = relay.server.local_addr();
    let relay_id = relay.server.relay_id();

    // Garbage instead of a ClientHello.
    let mut ws = socket(addr).await;
    ws.send(Message::Binary(vec![0xff; 40].into()))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(ErrorCode::MalformedFrame.close_code())
    );

    // A text message.
    let mut ws = socket(addr).await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(ErrorCode::UnexpectedFrame.close_code())
    );

    // A ClientHello sent twice.
    let mut ws = socket(addr).await;
    let (_, hello) = ClientHandshake::start(relay_id, &mut OsRng);
    ws.send(Message::Binary(hello.clone().into()))
        .await
        .unwrap();
    next_binary(&mut ws).await.unwrap();
    ws.send(Message::Binary(hello.into())).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(ErrorCode::UnexpectedFrame.close_code())
    );

    // A frame before the handshake ends: an encrypted-looking blob where ClientStart belongs.
    let mut ws = socket(addr).await;
    let (_, hello) = ClientHandshake::start(relay_id, &mut OsRng);
    ws.send(Message::Binary(hello.into())).await.unwrap();
    next_binary(&mut ws).await.unwrap();
    ws.send(Message::Binary(vec![7; 64].into())).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(ErrorCode::DecryptFailed.close_code())
    );

    // An unknown protocol version: a plaintext refusal, then the close.
    let mut ws = socket(addr).await;
    let hello = ClientHello {
        min_version: 7,
        max_version: 9,
        ephemeral: [9; 32],
        nonce: [1; 32],
    };
    ws.send(Message::Binary(codec::encode(&hello).into()))
        .await
        .unwrap();
    let reply = next_binary(&mut ws).await.unwrap();
    let (state, _) = ClientHandshake::start(relay_id, &mut OsRng);
    let refused = state
        .handle_server_hello(&reply, Credentials::Anonymous)
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::UnsupportedVersion);
    assert_eq!(
        close_code(&mut ws).await,
        Some(ErrorCode::UnsupportedVersion.close_code())
    );

    // An oversized message, before and after the handshake.
    let mut ws = socket(addr).await;
    ws.send(Message::Binary(vec![0; 80 * 1024].into()))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(ErrorCode::FrameTooLarge.close_code())
    );
    let id = Identity::new_user();
    let mut a = relay.connect(&id).await;
    a.replay().await;
    a.ws.send(Message::Binary(vec![0; 80 * 1024].into()))
        .await
        .unwrap();
    // Told inside the channel first, where the client can trust it, then closed.
    let told = a.recv().await.unwrap();
    assert!(
        matches!(&told, ServerFrame::Error(e) if e.code == ErrorCode::FrameTooLarge),
        "{told:?}"
    );
    assert_eq!(
        close_code(&mut a.ws).await,
        Some(ErrorCode::FrameTooLarge.close_code())
    );

    // A tampered frame after the handshake.
    let mut a = relay.connect(&id).await;
    a.replay().await;
    let mut bytes = a.channel.seal(&ClientFrame::Ping { nonce: 1 }).unwrap();
    bytes[0] ^= 1;
    a.ws.send(Message::Binary(bytes.into())).await.unwrap();
    assert_eq!(
        close_code(&mut a.ws).await,
        Some(ErrorCode::DecryptFailed.close_code())
    );

    // None of it hurt anyone else.
    let mut fine = relay.connect(&id).await;
    fine.replay().await;
    assert_eq!(fine.append(1, b"still here").await.unwrap(), 1);
    relay.server.shutdown().await;
}

#[tokio::test]
async fn a_device_the_chain_does_not_admit_is_refused_at_the_handshake() {
    let relay = relay().await;
    let (addr, relay_id) = (relay.server.local_addr(), relay.server.relay_id());
    let victim = Identity::new_user();
    let mut v = relay.connect(&victim).await;
    v.replay().await;
    // A device claiming the victim's user id, which the victim's chain never admitted (no
    // certificate or device id alone gets anyone in): 205, inside the channel.
    let claimed = victim.unadmitted_device("intruder");
    let refused = Client::connect_as(addr, relay_id, &claimed, None)
        .await
        .err()
        .unwrap();
    assert!(matches!(refused, support::client::Refused::Handshake(_)));
    assert_eq!(refused.code(), Some(ErrorCode::UnknownDevice));
    // A user without any chain: the same.
    let nobody = Identity::new_user();
    let refused = Client::connect_as(addr, relay_id, &nobody, None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::UnknownDevice));
    // Nothing was registered by trying.
    v.send(&ClientFrame::ListDevices).await;
    let ServerFrame::Devices(devices) = v.recv().await.unwrap() else {
        panic!("expected devices")
    };
    assert_eq!(devices.len(), 1);
    relay.server.shutdown().await;
}

#[tokio::test]
async fn chain_links_come_in_pages_and_growth_reaches_every_session() {
    let relay = relay().await;
    let (addr, relay_id) = (relay.server.local_addr(), relay.server.relay_id());
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");
    let mut a = relay.connect(&laptop).await;
    a.replay().await;
    let mut p = relay.connect(&phone).await;
    p.replay().await;

    // The laptop admits a tablet: the phone's session hears that the chain grew; the
    // laptop's gets the answer instead.
    let tablet = laptop.unadmitted_device("tablet");
    assert_eq!(a.admit(&laptop, &tablet).await.unwrap(), 4);
    p.wait_chain_grew(4).await;
    a.send(&ClientFrame::Ping { nonce: 5 }).await;
    assert_eq!(a.recv().await.unwrap(), ServerFrame::Pong { nonce: 5 });
    assert!(
        !a.chain_grew.contains(&4),
        "the sender gets ChainAppended instead"
    );

    // More links than one frame holds (Rotations signed by the user key in a recovery
    // session): ChainFetch answers in consecutive pages, `more` on all but the last.
    let rotations = MAX_LINKS_PER_FRAME + 20;
    let mut recovery = Client::connect_recovery(addr, relay_id, &laptop)
        .await
        .unwrap();
    let mut chain = recovery.fetch_chain(laptop.user.id()).await;
    for _ in 0..rotations {
        let link = chain.sign(
            LinkBody::Rotate {
                epoch: support::client::next_epoch(&chain, &[]),
            },
            SigningKey::User(&laptop.user.key),
        );
        recovery
            .send(&ClientFrame::ChainAppend(Box::new(link.clone())))
            .await;
        chain.apply(&link).unwrap();
    }
    for n in 0..rotations {
        let ServerFrame::ChainAppended { seqno } = recovery.recv().await.unwrap() else {
            panic!("rotation {n} refused")
        };
        assert_eq!(seqno, 5 + n as u64);
    }
    let head = chain.seqno();
    assert_eq!(head, 4 + rotations as u64);
    recovery.close().await;

    p.send(&ClientFrame::ChainFetch { after: 1 }).await;
    let mut pages = Vec::new();
    loop {
        match p.recv().await.unwrap() {
            ServerFrame::ChainLinks { links, more } => {
                pages.push((links, more));
                if !more {
                    break;
                }
            }
            ServerFrame::ChainGrew { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pages.len() >= 2, "{} pages", pages.len());
    let mut next = 2;
    for (links, _) in &pages {
        assert!(!links.is_empty() && links.len() <= MAX_LINKS_PER_FRAME);
        for link in links {
            assert_eq!(link.seqno, next);
            next += 1;
        }
    }
    assert_eq!(next, head + 1);
    assert!(pages[..pages.len() - 1].iter().all(|(_, more)| *more));
    // The whole chain verifies, and nothing after its end is one empty last page.
    assert_eq!(p.fetch_chain(laptop.user.id()).await, chain);
    p.send(&ClientFrame::ChainFetch { after: head }).await;
    assert_eq!(
        p.recv().await.unwrap(),
        ServerFrame::ChainLinks {
            links: vec![],
            more: false
        }
    );
    // The phone's session heard of every link.
    p.wait_chain_grew(head).await;
    relay.server.shutdown().await;
}

#[tokio::test]
async fn limits_answer_with_their_codes() {
    let relay = relay_with(|c| {
        c.limits.handshakes_per_ip_per_minute = 40; // bursts of 10
        c.limits.max_devices_per_user = 2;
        c.limits.appends_per_device_per_second = 5; // bursts of 10
    })
    .await;
    let id = Identity::new_user();

    // Devices per user: the chain refuses a third active device, which stays unknown.
    let mut first = relay.connect(&id).await;
    first.replay().await;
    let _second = relay.connect(&id.another_device("2")).await;
    let third = id.unadmitted_device("3");
    let refused = first.admit(&id, &third).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::TooManyDevices);
    let refused = Client::connect(
        relay.server.local_addr(),
        relay.server.relay_id(),
        &third,
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::UnknownDevice));

    // Appends per device: a burst of 30 gets some answered RateLimited, none lost silently.
    for n in 1..=30 {
        first
            .send(&ClientFrame::Append(ferry_protocol::Append {
                device_seq: n,
                payload: ferry_protocol::SealedPayload(vec![1]),
            }))
            .await;
    }
    let (mut ok, mut limited) = (0, 0);
    for n in 1..=30 {
        match first.answer(n).await {
            Ok(_) => ok += 1,
            Err(e) if e.code == ErrorCode::RateLimited => limited += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(ok >= 10 && limited > 0, "ok {ok}, limited {limited}");
    // What was refused was not stored: the log holds exactly the appends answered with a
    // sequence number.
    let mut check = relay.connect(&id).await;
    assert_eq!(check.session.head, ok, "ok {ok}, limited {limited}");
    let (stored, _) = check.replay().await;
    assert_eq!(stored.len() as u64, ok);

    // Handshakes per IP: the burst runs out.
    let mut codes = Vec::new();
    for _ in 0..12 {
        let mut ws = socket(relay.server.local_addr()).await;
        let (_, hello) = ClientHandshake::start(relay.server.relay_id(), &mut OsRng);
        ws.send(Message::Binary(hello.into())).await.unwrap();
        if let Err(code) = next_binary(&mut ws).await {
            codes.push(code);
        }
    }
    assert!(
        codes.contains(&Some(ErrorCode::RateLimited.close_code())),
        "{codes:?}"
    );
    relay.server.shutdown().await;
}

#[tokio::test]
async fn connection_limit_and_handshake_timeout() {
    let relay = relay_with(|c| {
        c.limits.max_connections = 1;
        c.limits.handshake_timeout_ms = 300;
    })
    .await;
    let mut first = socket(relay.server.local_addr()).await;
    let mut second = socket(relay.server.local_addr()).await;
    assert_eq!(
        close_code(&mut second).await,
        Some(ErrorCode::TooManyConnections.close_code())
    );
    // The first never says hello.
    assert_eq!(
        close_code(&mut first).await,
        Some(ErrorCode::HandshakeTimeout.close_code())
    );
    relay.server.shutdown().await;
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_resync_required() {
    let relay = relay_with(|c| {
        c.log.retention_max_events = Some(2);
        c.log.retention_interval_secs = 1;
    })
    .await;
    let id = Identity::new_user();
    let mut a = relay.connect(&id).await;
    a.replay().await;
    for n in 1..=5 {
        a.append(n, b"x").await.unwrap();
    }
    let mut trimmed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if relay
            .server
            .metrics()
            .render()
            .contains("ferry_trimmed_events_total 3")
        {
            trimmed = true;
            break;
        }
    }
    assert!(trimmed, "retention ran");
    let mut late = relay.connect(&id.another_device("late")).await;
    assert_eq!(
        late.recv().await.unwrap(),
        ServerFrame::ResyncRequired { earliest: 4 }
    );
    assert_eq!(
        close_code(&mut late.ws).await,
        Some(ErrorCode::ResyncRequired.close_code())
    );
    // A device that kept up is not affected.
    let mut current = Client::connect(
        relay.server.local_addr(),
        relay.server.relay_id(),
        &id,
        Some(5),
    )
    .await
    .unwrap();
    assert_eq!(current.replay().await, (vec![], 5));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_in_flight_appends_and_says_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
    let server = Server::spawn(config.clone()).await.unwrap();
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    let id = Identity::new_user();
    let mut a = Client::connect(addr, relay_id, &id, None).await.unwrap();
    a.replay().await;
    for n in 1..=200 {
        a.send(&ClientFrame::Append(ferry_protocol::Append {
            device_seq: n,
            payload: ferry_protocol::SealedPayload(vec![n as u8]),
        }))
        .await;
    }
    // Shut down once the relay is committing them: the rest are in flight.
    let mut acked = Vec::new();
    while acked.is_empty() {
        if let ServerFrame::Appended { device_seq, seq } = a.recv().await.unwrap() {
            acked.push((device_seq, seq));
        }
    }
    let stopping = tokio::spawn(server.shutdown());
    let close = loop {
        match a.recv().await {
            Ok(ServerFrame::Appended { device_seq, seq }) => acked.push((device_seq, seq)),
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    stopping.await.unwrap();
    assert_eq!(
        close,
        Some(1001),
        "acknowledged before the close: {}",
        acked.len()
    );
    let acked_set: std::collections::BTreeSet<(u64, u64)> = acked.iter().copied().collect();
    assert_eq!(acked_set.len(), acked.len(), "each append answered once");
    // After a restart the log holds exactly what was acknowledged: nothing acknowledged is
    // lost, and nothing was committed without an answer ("committed and answered").
    let server = Server::spawn(config).await.unwrap();
    let mut b = Client::connect(server.local_addr(), relay_id, &id.another_device("b"), None)
        .await
        .unwrap();
    let (events, _) = b.replay().await;
    let stored: std::collections::BTreeSet<(u64, u64)> = events
        .iter()
        .filter(|e| e.device == id.device.id())
        .map(|e| (e.device_seq, e.seq))
        .collect();
    assert_eq!(stored.len(), events.len(), "only this device appended");
    let lost: Vec<_> = acked_set.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let unanswered: Vec<_> = stored.difference(&acked_set).collect();
    assert!(
        unanswered.is_empty(),
        "stored but never answered: {unanswered:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let relay = relay().await;
    let id = Identity::new_user();
    let mut a = relay.connect(&id).await;
    a.replay().await;
    a.append(1, b"x").await.unwrap();
    let addr = relay.server.local_addr();
    for (path, status, needle) in [
        ("/healthz", "200", "ok"),
        ("/readyz", "200", "ready"),
        ("/metrics", "200", "ferry_appends_total 1"),
        ("/nope", "404", "not found"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {response}"
        );
        assert!(response.contains(needle), "{path}: {response}");
    }
    let metrics = relay.server.metrics().render();
    for name in [
        "ferry_connections",
        "ferry_handshakes_total{outcome=\"ok\"}",
        "ferry_commit_batch_size",
        "ferry_commit_seconds",
        "ferry_delivery_seconds",
        "ferry_replayed_events_total",
        "ferry_bus_up 1",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    relay.server.shutdown().await;
}

#[test]
fn a_relay_refusal_is_a_plaintext_message_clients_understand() {
    use ferry_protocol::handshake::HandshakeError;
    let err = HandshakeError::UnsupportedVersion { min: 5, max: 6 };
    let refusal = ServerHandshake::reject(&err);
    // A client that sent its hello reads the refusal where it expects the relay's hello,
    // and gets the relay's code and message.
    let (client, _) = ClientHandshake::start(ferry_protocol::RelayId([7; 32]), &mut OsRng);
    let understood = client
        .handle_server_hello(&refusal, Credentials::Anonymous)
        .expect_err("a refusal is not a hello");
    let HandshakeError::Rejected(frame) = &understood else {
        panic!("expected Rejected, got {understood:?}")
    };
    assert_eq!(frame.code, ErrorCode::UnsupportedVersion);
    assert_eq!(understood.code(), ErrorCode::UnsupportedVersion);
    assert_eq!(frame.message, err.to_string());
}

#[tokio::test]
async fn a_stalled_device_is_dropped_without_hurting_others() {
    let relay = relay_with(|c| {
        c.limits.write_timeout_ms = 300;
        c.limits.appends_per_device_per_second = 100_000;
    })
    .await;
    let writer_id = Identity::new_user();
    let stalled_id = writer_id.another_device("stalled");
    let mut stalled = relay.connect(&stalled_id).await;
    stalled.replay().await;
    // `stalled` never reads again. The writer pushes far more than socket buffers hold.
    let mut writer = relay.connect(&writer_id).await;
    writer.replay().await;
    let payload = vec![7u8; 32 * 1024];
    for n in 1..=600u64 {
        writer
            .send(&ClientFrame::Append(ferry_protocol::Append {
                device_seq: n,
                payload: ferry_protocol::SealedPayload(payload.clone()),
            }))
            .await;
        if n % 50 == 0 {
            writer.answer(n).await.unwrap();
        }
    }
    for n in (1..=600u64).filter(|n| n % 50 != 0) {
        writer.answer(n).await.unwrap();
    }
    let mut dropped = false;
    for _ in 0..100 {
        let metrics = relay.server.metrics().render();
        if metrics.contains("ferry_errors_total{code=\"slow_consumer\"}")
            && metrics.contains("ferry_sessions 1\n")
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dropped,
        "the stalled session was dropped:\n{}",
        relay.server.metrics().render()
    );
    // It resumes from its cursor when it comes back, and gets everything.
    drop(stalled);
    let mut back = relay.connect(&stalled_id).await;
    let (events, head) = back.replay().await;
    assert_eq!((events.len(), head), (600, 600));
    relay.server.shutdown().await;
}

//! The device chain against a real relay: a revoked device that kept its whole folder can do
//! nothing for the user and reads nothing written after its revocation, even with the relay's
//! database in hand; the recovery key brings the account back on a new device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_client::{Client, ClientError, ClientState, RecoveryKey, account};
use ferry_protocol::seal::{self, EventSlot};
use ferry_protocol::{
    Append, Chain, ClientFrame, DeviceKey, ErrorCode, LinkBody, ServerFrame, SigningKey,
};
use rand_core::OsRng;
use support::*;

#[tokio::test]
async fn a_revoked_device_that_kept_its_folder_can_do_nothing_and_reads_nothing_newer() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let relay = TestRelay::start(&relay_dir);
    let a_state = new_user(&dir.path().join("a"), &relay, "a").await;
    let c_dir = dir.path().join("c");
    let c_state = another_device(&a_state, &c_dir, "c").await;
    let (user, a_id, c_id) = (a_state.user_id(), a_state.device_id(), c_state.device_id());
    let a_key = device_key_of(a_state.dir());
    let c_key = device_key_of(&c_dir);
    drop(c_state);

    let a = Client::connect(a_state, fast()).await.unwrap();
    a.append(b"before the revocation").await.unwrap();
    // C holds a session open across its revocation, and its view of the chain.
    let mut c_raw = RawSession::connect(&relay.url(), relay.relay_id, &c_key, user, None)
        .await
        .unwrap();
    let c_view = Chain::verify(user, &c_raw.fetch_chain(0).await).unwrap();

    a.revoke(c_id).await.unwrap();
    a.append(b"after the revocation").await.unwrap();
    a.append(b"and more").await.unwrap();

    // C, with its old key: a fresh key admitted, A revoked, an event appended. Against the
    // chain it knew and against the chain as it is now: nothing is taken.
    let mut a_raw = RawSession::connect(&relay.url(), relay.relay_id, &a_key, user, None)
        .await
        .unwrap();
    let now = Chain::verify(user, &a_raw.fetch_chain(0).await).unwrap();
    assert_eq!(now.seqno(), 4, "Create, A, C, the revocation of C");
    assert!(!now.is_active(&c_id) && now.is_active(&a_id));
    let fresh = DeviceKey::generate(&mut OsRng);
    let admit = |chain: &Chain| {
        chain.sign(
            LinkBody::Admit {
                device: fresh.id(),
                exchange: [3; 32],
                name: "fresh".into(),
                created_at: 1,
            },
            SigningKey::Device(&c_key),
        )
    };
    let coup = now.sign(
        LinkBody::Revoke {
            devices: vec![a_id],
            epoch: ferry_protocol::chain::EpochKeys {
                epoch: 2,
                recovery: ferry_protocol::chain::SealedKey(vec![1; 104]),
                devices: vec![],
            },
        },
        SigningKey::Device(&c_key),
    );
    for forged in [admit(&c_view), admit(&now), coup] {
        match c_raw.append(&forged).await {
            Ok(seqno) => panic!("the relay stored a link of a revoked device at {seqno}"),
            Err(Some(error)) => assert!(
                matches!(
                    error.code,
                    ErrorCode::DeviceRevoked | ErrorCode::ChainLinkRefused
                ),
                "{error:?}"
            ),
            Err(None) => {} // the relay closed the revoked device's session
        }
    }
    c_raw
        .send(ClientFrame::Append(Append {
            device_seq: 1,
            payload: ferry_protocol::SealedPayload(vec![2; 64]),
        }))
        .await;
    while let Some(frame) = c_raw.recv().await {
        assert!(
            !matches!(frame, ServerFrame::Appended { .. }),
            "the relay stored an append of a revoked device"
        );
    }
    // New sessions: the old key is revoked, the fresh one was never admitted.
    let refused = RawSession::connect(&relay.url(), relay.relay_id, &c_key, user, None)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code, ErrorCode::DeviceRevoked);
    let refused = RawSession::connect(&relay.url(), relay.relay_id, &fresh, user, None)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code, ErrorCode::UnknownDevice);
    // Nor does the client get anywhere with the folder.
    let c_state = ClientState::open(&c_dir).unwrap();
    assert!(matches!(
        Client::connect(c_state, fast()).await,
        Err(ClientError::Revoked)
    ));
    // The chain is as A left it.
    let after = Chain::verify(user, &a_raw.fetch_chain(0).await).unwrap();
    assert_eq!(after, now);
    drop(a_raw);

    // The relay's database in hand: the events after the revocation are under epoch 1,
    // which C never got; its keys open only what came before.
    let a_state = a.close().await.unwrap();
    let newest = a_state.epoch_keys();
    assert_eq!(newest.len(), 2);
    let c_keys = ClientState::open(&c_dir).unwrap().epoch_keys();
    assert_eq!(c_keys.len(), 1, "C holds epoch 0 only");
    let database = format!("sqlite://{}?mode=ro", relay_dir.join("ferry.db").display());
    let store = ferry_relay::store::open(&database).await.unwrap();
    let events = store.read_events(user, 0, 100).await.unwrap();
    store.close().await;
    assert_eq!(events.len(), 3);
    for event in &events {
        let slot = EventSlot {
            user,
            device: event.device,
            device_seq: event.device_seq,
        };
        let epoch = seal::epoch_of(&event.payload).unwrap();
        let c_opens = c_keys
            .iter()
            .any(|(_, key)| seal::open(key, &slot, &event.payload).is_ok());
        assert_eq!(
            c_opens,
            event.seq == 1,
            "event {} (epoch {epoch})",
            event.seq
        );
        assert_eq!(epoch, u32::from(event.seq > 1));
        let a_key = &newest[epoch as usize].1;
        assert!(seal::open(a_key, &slot, &event.payload).is_ok());
    }
    // Not in C's folder either, raw or in hex.
    for file in walk(&c_dir) {
        let bytes = std::fs::read(&file).unwrap();
        let secret = newest[1].1.bytes();
        for needle in [secret.to_vec(), hex::encode(secret).into_bytes()] {
            assert!(
                !contains(&bytes, &needle),
                "{} holds epoch 1",
                file.display()
            );
        }
    }
}

#[tokio::test]
async fn the_recovery_key_revokes_everything_and_the_new_device_reads_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let created = new_user_with_recovery(&dir.path().join("a"), &relay, "a").await;
    let written = created.recovery_key.display().to_string();
    let a_state = created.state;
    let b_state = another_device(&a_state, &dir.path().join("b"), "b").await;
    let (a_id, b_id) = (a_state.device_id(), b_state.device_id());
    let a = Client::connect(a_state, fast()).await.unwrap();
    a.append(b"epoch 0").await.unwrap();
    a.revoke(b_id).await.unwrap();
    a.append(b"epoch 1").await.unwrap();
    let a_state = a.close().await.unwrap();

    // A valid key of no account here, then the right one as typed.
    let stranger = RecoveryKey::generate(&mut OsRng);
    let error = account::recover(
        dir.path().join("x"),
        &relay.url(),
        relay.relay_id,
        "x",
        &stranger,
        false,
        &fast(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ClientError::WrongRecoveryKey), "{error:?}");
    assert!(error.to_string().contains("not this account's"), "{error}");
    let typed = RecoveryKey::parse(&written.to_lowercase()).unwrap();
    let recovered = account::recover(
        dir.path().join("new"),
        &relay.url(),
        relay.relay_id,
        "new",
        &typed,
        true,
        &fast(),
    )
    .await
    .unwrap();
    assert_eq!(recovered.revoked, vec![a_id]);
    let state = recovered.state;
    assert_eq!(state.epoch(), 2);
    assert_eq!(state.epoch_keys().len(), 3);
    let mut new = Client::connect(state, fast()).await.unwrap();
    assert_eq!(
        texts(&until_caught_up(&mut new).await),
        ["epoch 0", "epoch 1"]
    );
    new.append(b"epoch 2").await.unwrap();
    let devices = new.list_devices().await.unwrap();
    assert_eq!(devices.iter().filter(|d| !d.revoked).count(), 1);
    new.close().await.unwrap();
    assert!(matches!(
        Client::connect(a_state, fast()).await,
        Err(ClientError::Revoked)
    ));
}

/// A device that was offline while another revoked a third sealed an event under epoch 0;
/// the relay refuses it `stale_epoch` when the device comes back, and the device seals it
/// again under epoch 1, which the revoked device never got: the event is stored, once, and
/// the revoked device's keys do not open it even with the relay's database in hand.
#[tokio::test]
async fn an_event_sealed_offline_before_a_revocation_is_sealed_again_under_the_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let relay = TestRelay::start(&relay_dir);
    let a_state = new_user(&dir.path().join("a"), &relay, "a").await;
    let (b_dir, c_dir) = (dir.path().join("b"), dir.path().join("c"));
    let b_state = another_device(&a_state, &b_dir, "b").await;
    let c_state = another_device(&a_state, &c_dir, "c").await;
    let (user, b_id, c_id) = (a_state.user_id(), b_state.device_id(), c_state.device_id());
    let c_keys = c_state.epoch_keys();
    assert_eq!(c_keys.len(), 1, "C holds epoch 0 only");
    drop(c_state);

    // B is offline (its relay unreachable): its event waits in the outbox, sealed under the
    // newest epoch it knows, 0.
    drop(b_state);
    repoint(&b_dir, &format!("ws://{}/ws", free_addr()), relay.relay_id);
    let b = Client::start(open_when_free(&b_dir).await, fast());
    let device_seq = b.enqueue(b"sealed while offline").await.unwrap();
    for later in [b"and later 1", b"and later 2"] {
        b.enqueue(later).await.unwrap();
    }
    let b_state = b.close().await.unwrap();
    assert_eq!(b_state.pending(), 3);
    assert_eq!(b_state.epoch(), 0);
    drop(b_state);

    // Meanwhile A revokes C: epoch 1, sealed to A and B only.
    let a = Client::connect(a_state, fast()).await.unwrap();
    a.revoke(c_id).await.unwrap();
    let a_state = a.close().await.unwrap();
    assert_eq!(a_state.epoch(), 1);

    // B comes back: its epoch-0 entry is refused, sealed again under epoch 1 and stored.
    repoint(&b_dir, &relay.url(), relay.relay_id);
    let b = Client::connect(open_when_free(&b_dir).await, fast())
        .await
        .unwrap();
    b.flush(std::time::Duration::from_secs(20)).await.unwrap();
    let b_state = b.close().await.unwrap();
    assert_eq!(b_state.pending(), 0, "the entry left the outbox stored");
    assert_eq!(b_state.epoch(), 1);
    assert!(
        relay.metrics().contains("stale_epoch"),
        "the relay refused the epoch-0 append"
    );

    let database = format!("sqlite://{}?mode=ro", relay_dir.join("ferry.db").display());
    let store = ferry_relay::store::open(&database).await.unwrap();
    let events = store.read_events(user, 0, 100).await.unwrap();
    store.close().await;
    // Each once, under its own device sequence, in the order sent, all under epoch 1.
    let from_b: Vec<_> = events.iter().filter(|e| e.device == b_id).collect();
    assert_eq!(
        from_b.iter().map(|e| e.device_seq).collect::<Vec<_>>(),
        [device_seq, device_seq + 1, device_seq + 2],
        "{events:?}"
    );
    let epoch_1 = &a_state.epoch_keys()[1].1;
    let texts: [&[u8]; 3] = [b"sealed while offline", b"and later 1", b"and later 2"];
    for (event, text) in from_b.into_iter().zip(texts) {
        assert_eq!(seal::epoch_of(&event.payload).unwrap(), 1);
        let slot = EventSlot {
            user,
            device: event.device,
            device_seq: event.device_seq,
        };
        for (_, key) in &c_keys {
            assert!(seal::open(key, &slot, &event.payload).is_err());
        }
        assert_eq!(
            &seal::open(epoch_1, &slot, &event.payload).unwrap()[..],
            text
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

//! Attachments against a real relay (docs/protocol.md §16): uploads part by part with
//! resends, the digest check, who may read a blob (its uploader, and the members of a
//! conversation keeping a message that refers to it; nobody else), references checked in
//! the message's transaction, the size limit and the quota, and the deletion job (expired,
//! unreferenced, trimmed with its messages, and finishing after a crash between a blob's
//! parts and its row). On SQLite, and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use ferry_mls::GroupKind;
use ferry_protocol::attachments::{BlobId, PART_LEN, part_count};
use ferry_protocol::conversations::ConvId;
use ferry_protocol::{ClientFrame, ErrorCode, ServerFrame, SigningKey};
use ferry_relay::Config;
use ferry_relay::attachments::{BlobStorage, FolderStorage, delete_dead_blobs};
use ferry_relay::store::Store;
use sha2::{Digest, Sha256};
use support::client::{Identity, revoke_body};
use support::conversation::{Talker, befriend, one_to_one};
use support::node::{Node, node, node_on};

const HOUR_MS: u64 = 3_600_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `len` bytes that differ from one call to the next (a sealed file, to the relay).
fn blob_bytes(len: usize) -> Vec<u8> {
    let seed = support::random_bytes();
    (0..len).map(|i| seed[i % 32] ^ (i / 32) as u8).collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn part(bytes: &[u8], index: u32) -> Vec<u8> {
    let start = index as usize * PART_LEN;
    bytes[start..(start + PART_LEN).min(bytes.len())].to_vec()
}

fn error_code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error(e) => Some(e.code),
        ServerFrame::ConvRefused { error, .. } => Some(error.code),
        _ => None,
    }
}

async fn create(talker: &mut Talker, size: u64, digest: [u8; 32]) -> Result<BlobId, ErrorCode> {
    match talker.ask(&ClientFrame::BlobCreate { size, digest }).await {
        ServerFrame::BlobCreated { blob, .. } => Ok(blob),
        other => Err(error_code(&other).unwrap_or_else(|| panic!("create answered {other:?}"))),
    }
}

async fn put(talker: &mut Talker, blob: BlobId, index: u32, bytes: Vec<u8>) -> ServerFrame {
    let frame = ClientFrame::BlobPut {
        blob,
        part: index,
        bytes,
    };
    talker.ask(&frame).await
}

/// Uploads `bytes` whole; returns the blob.
async fn upload(talker: &mut Talker, bytes: &[u8]) -> BlobId {
    let blob = create(talker, bytes.len() as u64, sha256(bytes))
        .await
        .unwrap();
    let parts = part_count(bytes.len() as u64) as u32;
    for index in 0..parts {
        let answer = put(talker, blob, index, part(bytes, index)).await;
        let expected = ServerFrame::BlobStored {
            blob,
            stored: index + 1,
            complete: index + 1 == parts,
        };
        assert_eq!(answer, expected);
    }
    blob
}

/// Downloads the whole blob, or the first error.
async fn download(talker: &mut Talker, blob: BlobId) -> Result<Vec<u8>, ErrorCode> {
    let mut out = Vec::new();
    let mut index = 0;
    loop {
        match talker
            .ask(&ClientFrame::BlobGet { blob, part: index })
            .await
        {
            ServerFrame::BlobPart {
                part, size, bytes, ..
            } => {
                assert_eq!(part, index);
                out.extend_from_slice(&bytes);
                if out.len() as u64 >= size {
                    return Ok(out);
                }
                index += 1;
            }
            other => return Err(error_code(&other).unwrap()),
        }
    }
}

/// Sends a content message referring to `blobs`; returns its conv_seq or the refusal.
async fn send_with(
    talker: &mut Talker,
    conv: ConvId,
    blobs: Vec<BlobId>,
) -> Result<u64, ErrorCode> {
    let device_seq = talker.next_seq;
    talker.next_seq += 1;
    let mut send = talker.content(conv, device_seq, b"a file");
    send.attachments = blobs;
    match talker.ask(&ClientFrame::ConvSend(Box::new(send))).await {
        ServerFrame::ConvSent { conv_seq, .. } => Ok(conv_seq),
        other => Err(error_code(&other).unwrap_or_else(|| panic!("send answered {other:?}"))),
    }
}

fn at(node: &Node) -> (std::net::SocketAddr, ferry_protocol::RelayId) {
    (node.server.local_addr(), node.server.relay_id())
}

/// Alice, Bob (in a 1:1 with Alice) and Carol (a contact of Alice's, in no conversation).
async fn three(node: &Node) -> (Talker, Talker, Talker, ConvId) {
    let (addr, relay) = at(node);
    let (mut alice, bob, conv) = one_to_one(addr, relay, 2).await;
    let mut carol = Talker::connect(addr, relay, &Identity::new_user(), 2).await;
    befriend(&mut alice, &mut carol).await;
    (alice, bob, carol, conv)
}

async fn members_only_story(node: &Node) {
    let (mut alice, mut bob, mut carol, conv) = three(node).await;
    let bytes = blob_bytes(2 * PART_LEN + 1234);
    let blob = create(&mut alice, bytes.len() as u64, sha256(&bytes))
        .await
        .unwrap();

    // Parts go in order; one resent (a reconnect) or one ahead is not stored again, and the
    // answer says where the upload stands.
    let stored = |stored| ServerFrame::BlobStored {
        blob,
        stored,
        complete: false,
    };
    assert_eq!(put(&mut alice, blob, 0, part(&bytes, 0)).await, stored(1));
    assert_eq!(put(&mut alice, blob, 0, part(&bytes, 0)).await, stored(1));
    assert_eq!(put(&mut alice, blob, 2, part(&bytes, 2)).await, stored(1));
    // A part of the wrong length is refused; nobody else writes into the upload.
    let short = part(&bytes, 1)[..100].to_vec();
    let answer = put(&mut alice, blob, 1, short).await;
    assert_eq!(error_code(&answer), Some(ErrorCode::MalformedFrame));
    let answer = put(&mut bob, blob, 1, part(&bytes, 1)).await;
    assert_eq!(error_code(&answer), Some(ErrorCode::NoSuchAttachment));
    // Incomplete: not readable, not referable.
    assert_eq!(
        download(&mut alice, blob).await,
        Err(ErrorCode::AttachmentIncomplete)
    );
    assert_eq!(
        send_with(&mut alice, conv, vec![blob]).await,
        Err(ErrorCode::AttachmentIncomplete)
    );
    assert_eq!(put(&mut alice, blob, 1, part(&bytes, 1)).await, stored(2));
    let done = ServerFrame::BlobStored {
        blob,
        stored: 3,
        complete: true,
    };
    assert_eq!(put(&mut alice, blob, 2, part(&bytes, 2)).await, done);
    assert_eq!(put(&mut alice, blob, 2, part(&bytes, 2)).await, done);

    // The uploader reads it; Bob only once a message of his conversation refers to it.
    assert_eq!(download(&mut alice, blob).await.unwrap(), bytes);
    assert_eq!(
        download(&mut bob, blob).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    let seq = send_with(&mut alice, conv, vec![blob]).await.unwrap();
    assert_eq!(download(&mut bob, blob).await.unwrap(), bytes);
    // Carol knows the id (say it leaked) but is in no conversation that refers to it: she
    // can neither read it nor refer to it from a conversation of her own.
    assert_eq!(
        download(&mut carol, blob).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    let carols = carol.create(GroupKind::Group, Vec::new()).await;
    assert_eq!(
        send_with(&mut carol, carols, vec![blob]).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    // A blob that does not exist, and a message naming one twice.
    assert_eq!(
        download(&mut bob, BlobId([7; 32])).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    assert_eq!(
        send_with(&mut alice, conv, vec![blob, blob]).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    // A refused message stores nothing: the next one follows the first directly.
    let next = send_with(&mut alice, conv, vec![]).await.unwrap();
    assert_eq!(next, seq + 1);
    // Bob forwards it to a group with Carol: a member may refer to what he may read.
    befriend(&mut bob, &mut carol).await;
    let group = bob.create(GroupKind::Group, Vec::new()).await;
    assert_eq!(bob.add_users(group, &[carol.user()]).await, 1);
    carol.join(group).await;
    send_with(&mut bob, group, vec![blob]).await.unwrap();
    assert_eq!(download(&mut carol, blob).await.unwrap(), bytes);
    // Beyond the last part.
    let beyond = ClientFrame::BlobGet { blob, part: 3 };
    assert_eq!(
        error_code(&bob.ask(&beyond).await),
        Some(ErrorCode::NoSuchAttachment)
    );
}

#[tokio::test]
async fn a_blob_is_read_by_its_uploader_and_the_members_of_conversations_that_refer_to_it() {
    members_only_story(&node(|_| {}).await).await;
}

/// The same over object storage (`object_store`'s in-memory backend, as S3 is not reachable
/// here): nothing is written to the data folder.
#[tokio::test]
async fn a_blob_is_read_by_its_uploader_and_members_only_on_object_storage() {
    let node = node(|c: &mut Config| c.attachments.store = Some("memory://".into())).await;
    members_only_story(&node).await;
    assert!(!node.dir.path().join("blobs").exists());
}

#[tokio::test]
async fn a_blob_is_read_by_its_uploader_and_members_only_on_postgres() {
    let Some(url) = support::postgres_url().await else {
        return;
    };
    let hub = ferry_relay::bus::LocalBusHub::new();
    members_only_story(&node_on(&hub, Some(url), |_| {}).await).await;
}

/// A revoked device reads no attachment and writes none, also in the moment before the hub
/// closes its session: the store checks the asking device's record for every part.
#[tokio::test]
async fn a_revoked_device_reads_no_attachment() {
    let node = node(|_| {}).await;
    let (addr, relay) = at(&node);
    let alice = Identity::new_user();
    let mut phone = Talker::connect(addr, relay, &alice, 2).await;
    let laptop_id = alice.another_device("laptop");
    let mut laptop = Talker::connect(addr, relay, &laptop_id, 2).await;
    let bytes = blob_bytes(PART_LEN + 10);
    let blob = upload(&mut phone, &bytes).await;
    assert_eq!(download(&mut laptop, blob).await.unwrap(), bytes);
    let store = Arc::clone(node.store());
    let (user, laptop_device) = (phone.user(), laptop.device());
    assert!(
        store
            .blob(blob, user, laptop_device)
            .await
            .unwrap()
            .is_some()
    );

    let chain = phone.client.fetch_chain(user).await;
    phone
        .client
        .sign_and_append(
            user,
            revoke_body(&chain, &[laptop_device]),
            SigningKey::Device(&alice.device),
        )
        .await
        .unwrap();
    // Whatever its session heard yet, the store answers the laptop as if there were no blob.
    assert!(
        store
            .blob(blob, user, laptop_device)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .blob(blob, user, phone.device())
            .await
            .unwrap()
            .is_some()
    );
    // A device the user never admitted is no better.
    let stranger = alice.unadmitted_device("stranger").device.id();
    assert!(store.blob(blob, user, stranger).await.unwrap().is_none());
    assert_eq!(download(&mut phone, blob).await.unwrap(), bytes);
}

#[tokio::test]
async fn an_upload_that_does_not_match_its_digest_is_deleted() {
    let node = node(|_| {}).await;
    let (addr, relay) = at(&node);
    let mut alice = Talker::connect(addr, relay, &Identity::new_user(), 1).await;
    let bytes = blob_bytes(PART_LEN + 10);
    let mut wrong = sha256(&bytes);
    wrong[0] ^= 1;
    let blob = create(&mut alice, bytes.len() as u64, wrong).await.unwrap();
    let usage = node.store().attachment_usage(alice.user()).await.unwrap();
    assert_eq!(usage, bytes.len() as u64);
    put(&mut alice, blob, 0, part(&bytes, 0)).await;
    let answer = put(&mut alice, blob, 1, part(&bytes, 1)).await;
    assert_eq!(error_code(&answer), Some(ErrorCode::AttachmentCorrupt));
    // Gone: from the index, from the folder, and from the quota.
    assert_eq!(
        download(&mut alice, blob).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    let answer = put(&mut alice, blob, 1, part(&bytes, 1)).await;
    assert_eq!(error_code(&answer), Some(ErrorCode::NoSuchAttachment));
    let folder = FolderStorage::new(node.dir.path().join("blobs"));
    assert_eq!(folder.get_part(&blob, 0).await.unwrap(), None);
    assert_eq!(
        node.store().attachment_usage(alice.user()).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn the_size_limit_and_the_quota_hold() {
    let node = node(|c: &mut Config| {
        c.attachments.max_bytes = 3 * PART_LEN as u64;
        c.attachments.quota_bytes = 4 * PART_LEN as u64;
    })
    .await;
    let (addr, relay) = at(&node);
    let mut alice = Talker::connect(addr, relay, &Identity::new_user(), 1).await;
    let digest = [0; 32];
    let too_large = create(&mut alice, 3 * PART_LEN as u64 + 1, digest).await;
    assert_eq!(too_large, Err(ErrorCode::AttachmentTooLarge));
    assert_eq!(
        create(&mut alice, 0, digest).await,
        Err(ErrorCode::MalformedFrame)
    );
    create(&mut alice, 3 * PART_LEN as u64, digest)
        .await
        .unwrap();
    // Every blob counts from its creation, uploaded or not.
    let over = create(&mut alice, PART_LEN as u64 + 1, digest).await;
    assert_eq!(over, Err(ErrorCode::QuotaExceeded));
    // The refusal says which quota, in words a user can act on.
    let frame = ClientFrame::BlobCreate {
        size: PART_LEN as u64 + 1,
        digest,
    };
    match alice.ask(&frame).await {
        ServerFrame::Error(e) => {
            let quota = (4 * PART_LEN).to_string();
            assert!(e.message.contains(&quota), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    create(&mut alice, PART_LEN as u64, digest).await.unwrap();
    // Another user has a quota of its own.
    let mut bob = Talker::connect(addr, relay, &Identity::new_user(), 1).await;
    create(&mut bob, 3 * PART_LEN as u64, digest).await.unwrap();
}

/// The relay's own deletion job runs once an hour (at start, then when these tests are
/// over): they run it by hand.
fn quiet_job(config: &mut Config) {
    config.log.retention_interval_secs = 3600;
}

/// The deletion job, run by hand at chosen times over the relay's own folder.
async fn deletion_story(node: &Node) {
    let store: Arc<dyn Store> = Arc::clone(node.store());
    let folder = FolderStorage::new(node.dir.path().join("blobs"));
    let (mut alice, mut bob, _carol, conv) = three(node).await;
    let now = now_ms();
    let run = |at: u64| {
        let store = Arc::clone(&store);
        let folder = FolderStorage::new(node.dir.path().join("blobs"));
        async move { delete_dead_blobs(&*store, &folder, at).await.unwrap() }
    };

    let kept = upload(&mut alice, &blob_bytes(100)).await;
    send_with(&mut alice, conv, vec![kept]).await.unwrap();
    let unreferenced = upload(&mut alice, &blob_bytes(PART_LEN + 1)).await;
    let trimmed_bytes = blob_bytes(200);
    let trimmed = upload(&mut bob, &trimmed_bytes).await;
    let early = send_with(&mut bob, conv, vec![trimmed]).await.unwrap();
    let usage = store.attachment_usage(alice.user()).await.unwrap();
    assert_eq!(usage, 100 + PART_LEN as u64 + 1);

    // Nothing is dead yet.
    assert_eq!(run(now).await, 0);
    // A day later, the blob no message refers to goes; the others stay.
    assert_eq!(run(now + 25 * HOUR_MS).await, 1);
    assert_eq!(
        download(&mut alice, unreferenced).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    assert_eq!(folder.get_part(&unreferenced, 0).await.unwrap(), None);
    assert_eq!(store.attachment_usage(alice.user()).await.unwrap(), 100);

    // Retention deletes Bob's message (and Alice's, older too; then a new one of Alice's
    // refers to `kept` again): `trimmed` goes with its message, `kept` stays.
    assert_eq!(download(&mut alice, trimmed).await.unwrap(), trimmed_bytes);
    let trimmed_n = store
        .trim_conversations(0, 0, now_ms() + 1000)
        .await
        .unwrap();
    assert!(trimmed_n >= early);
    send_with(&mut alice, conv, vec![kept]).await.unwrap();
    // Alice no longer reads Bob's blob (its message is gone, she is not its uploader).
    assert_eq!(
        download(&mut alice, trimmed).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    // The relay stops between deleting its parts and its row: it stays unreadable, and
    // the next run finishes it.
    node.faults.fail_next_blob_forgets(1);
    let failed = delete_dead_blobs(node.faults.as_ref(), &folder, now).await;
    assert!(failed.is_err());
    assert_eq!(folder.get_part(&trimmed, 0).await.unwrap(), None);
    assert_eq!(
        download(&mut bob, trimmed).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    assert_eq!(store.attachment_usage(bob.user()).await.unwrap(), 200);
    assert_eq!(run(now).await, 1);
    assert_eq!(store.attachment_usage(bob.user()).await.unwrap(), 0);
    assert_eq!(download(&mut bob, kept).await.unwrap().len(), 100);

    // Thirty days on, every blob has expired whatever refers to it.
    assert_eq!(run(now + 31 * 24 * HOUR_MS).await, 1);
    assert_eq!(
        download(&mut bob, kept).await,
        Err(ErrorCode::NoSuchAttachment)
    );
    assert_eq!(store.attachment_usage(alice.user()).await.unwrap(), 0);
}

#[tokio::test]
async fn dead_blobs_are_deleted_and_a_stopped_deletion_is_finished() {
    deletion_story(&node(quiet_job).await).await;
}

#[tokio::test]
async fn dead_blobs_are_deleted_on_postgres() {
    // The deletion job walks every blob of a database: a database of its own.
    let Some(database) = support::private_postgres("attachments").await else {
        return;
    };
    let hub = ferry_relay::bus::LocalBusHub::new();
    let node = node_on(&hub, Some(database.url.clone()), quiet_job).await;
    deletion_story(&node).await;
    let store = Arc::clone(node.store());
    node.server.shutdown().await;
    store.close().await;
    database.drop().await;
}

#[tokio::test]
async fn the_relay_deletes_dead_blobs_by_itself() {
    let node = node(|c: &mut Config| {
        // Time to upload it first.
        c.attachments.unreferenced_secs = 2;
        c.log.retention_interval_secs = 1;
    })
    .await;
    let (addr, relay) = at(&node);
    let mut alice = Talker::connect(addr, relay, &Identity::new_user(), 1).await;
    let blob = upload(&mut alice, &blob_bytes(10)).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while download(&mut alice, blob).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "never deleted");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        node.store().attachment_usage(alice.user()).await.unwrap(),
        0
    );
}

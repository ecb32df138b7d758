//! The storage story of the people domain: handles, contact requests, blocks, limits,
//! profiles and presence, written once against `Arc<dyn Store>` and run against SQLite and
//! PostgreSQL (`FERRY_TEST_POSTGRES_URL`, shared with other tests, so every story uses fresh
//! random users and never truncates anything).
//!
//! Every operation is checked three ways: the notices it returns (`Notified`, what the hub
//! wakes devices with), the users' logs (every event, in order, gapless, notices sharing one
//! sequence with the devices' own appends) and the users' contact lists. A refused
//! operation must leave every log and every list as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_protocol::epoch::ExchangeSecret;
use ferry_protocol::people::{
    ContactInfo, ContactState, Intro, IntroBody, LAST_SEEN_GRANULARITY_S, Notice, ProfileBody,
    ProfileKey, RELAY_DEVICE, SealedProfile,
};
use ferry_protocol::{DeviceKey, ErrorCode, Event, UserId};
use ferry_relay::store::{
    AppendOutcome, CommitConfig, CommitHandle, Committer, ContactChange, ContactList, Notified,
    PRESENCE_PEERS_POINT_ROWS, PeopleLimits, Store, StoreError,
};
use rand_core::OsRng;
use support::random_bytes;
use support::storage::*;

crate::storage_story!(
    handles_are_unique_keep_their_number_and_decide_chain_visibility,
    a_request_and_its_acceptance_reach_both_logs,
    crossing_requests_make_contacts,
    decline_cancel_and_remove_notify_both_sides,
    a_blocked_user_sees_exactly_what_silence_looks_like,
    unblocking_and_asking_a_blocked_user,
    limits_refuse_and_store_nothing,
    profile_versions_grow_and_only_contacts_read_them,
    presence_is_mutual_and_reciprocal,
    presence_peers_beyond_one_point_read_are_all_there,
    a_failed_notice_rolls_back_the_whole_operation,
    the_requesters_limit_counts_and_nobody_is_asked_without_a_chain,
    cards_are_kept_for_related_users_only_and_blocks_are_bounded,
);

const LIMITS: PeopleLimits = PeopleLimits {
    requests_per_day: 100,
    pending_requests: 200,
    contacts: 2000,
    blocks: 10_000,
};

// ---------------------------------------------------------------------------------------------
// Users, intros and the checks every story shares.

/// A fresh user with one admitted device, which appends ordinary events and seals intros.
struct Person {
    id: UserId,
    key: DeviceKey,
    exchange: ExchangeSecret,
    profile_key: ProfileKey,
    /// The device's last `device_seq`.
    sent: AtomicU64,
}

async fn person(store: &dyn Store) -> Person {
    let id = user();
    let key = DeviceKey::generate(&mut OsRng);
    admit(store, id, &[key.id()]).await;
    Person {
        id,
        key,
        exchange: ExchangeSecret::generate(&mut OsRng),
        profile_key: ProfileKey::from_bytes(&random_bytes()),
        sent: AtomicU64::new(0),
    }
}

/// A signed intro from `from`'s device, sealed to `to`'s device.
fn intro(from: &Person, to: &Person, note: &str) -> Intro {
    let body = IntroBody {
        note: note.to_owned(),
        profile_key: from.profile_key.clone(),
    };
    let recipients = [(to.key.id(), to.exchange.public())];
    let intro = Intro::seal(&mut OsRng, from.id, &from.key, to.id, &recipients, &body).unwrap();
    intro.verify_signature().unwrap();
    intro
}

/// What the receiving device reads in `intro`: the note and the sender's profile key.
fn opened(intro: &Intro, by: &Person) -> (String, ProfileKey) {
    let body = intro.open(by.key.id(), &by.exchange).unwrap();
    (body.note, body.profile_key)
}

/// Appends an ordinary event from `p`'s device with `append_batch`; returns its seq.
async fn own(store: &dyn Store, p: &Person, text: &str) -> u64 {
    let device_seq = p.sent.fetch_add(1, Ordering::SeqCst) + 1;
    let outcomes = store
        .append_batch(&[req(p.id, p.key.id(), device_seq, text)], NOW_MS)
        .await
        .unwrap();
    match outcomes[..] {
        [AppendOutcome::Appended { seq }] => seq,
        _ => panic!("{outcomes:?}"),
    }
}

/// [`own`] through a committer (group commit).
async fn own_via(committer: &CommitHandle, p: &Person, text: &str) -> u64 {
    let device_seq = p.sent.fetch_add(1, Ordering::SeqCst) + 1;
    match committer
        .append(req(p.id, p.key.id(), device_seq, text))
        .await
        .unwrap()
    {
        AppendOutcome::Appended { seq } => seq,
        other => panic!("{other:?}"),
    }
}

/// One event of a log: an ordinary event (its text) or a notice.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Own(String),
    Note(Notice),
}

fn own_entry(text: &str) -> Entry {
    Entry::Own(text.to_owned())
}

/// Reads one event as an entry, checking the shape of a notice's event.
fn entry(event: &Event) -> Entry {
    if event.device == RELAY_DEVICE {
        assert_eq!(
            event.device_seq, event.seq,
            "a notice's device_seq is its seq"
        );
        Entry::Note(Notice::from_payload(&event.payload.0).expect("a notice"))
    } else {
        Entry::Own(String::from_utf8(event.payload.0.clone()).unwrap())
    }
}

/// The whole log of `user`, checked gapless from 1 to its head.
async fn log_of(store: &dyn Store, user: UserId) -> Vec<Entry> {
    let events = store.read_events(user, 0, 1000).await.unwrap();
    let n = events.len() as u64;
    assert_eq!(seqs(&events), (1..=n).collect::<Vec<_>>(), "gapless log");
    let bounds = store.log_bounds(user).await.unwrap();
    assert_eq!((bounds.earliest, bounds.head), (1, n));
    events.iter().map(entry).collect()
}

fn notes(entries: &[Entry]) -> Vec<Notice> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Note(n) => Some(n.clone()),
            Entry::Own(_) => None,
        })
        .collect()
}

/// Checks that an operation returned exactly `expected`, each notice as the event now stored
/// at its seq, one user's notices consecutive and the last one its log's head.
async fn check_notified(store: &dyn Store, notified: &Notified, expected: &[(UserId, Notice)]) {
    let got: Vec<(UserId, Notice)> = notified
        .0
        .iter()
        .map(|(user, event)| {
            assert_eq!(event.device, RELAY_DEVICE);
            assert_eq!(event.device_seq, event.seq);
            (*user, Notice::from_payload(&event.payload.0).unwrap())
        })
        .collect();
    assert_eq!(got, expected, "the notices returned");
    let mut per_user: BTreeMap<UserId, Vec<u64>> = BTreeMap::new();
    for (user, event) in &notified.0 {
        let stored = store.read_events(*user, event.seq - 1, 1).await.unwrap();
        assert_eq!(
            stored,
            std::slice::from_ref(event),
            "a returned notice is the stored event"
        );
        per_user.entry(*user).or_default().push(event.seq);
    }
    for (user, seqs) in per_user {
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(
            store.log_bounds(user).await.unwrap().head,
            *seqs.last().unwrap()
        );
    }
}

/// Runs `op` and checks that it returns exactly `expected`.
async fn notified(
    store: &dyn Store,
    op: impl Future<Output = Result<Notified, StoreError>>,
    expected: &[(UserId, Notice)],
) {
    let notified = op.await.unwrap();
    check_notified(store, &notified, expected).await;
}

/// What the users' logs and lists are, to check that nothing changed.
async fn snapshot(store: &dyn Store, users: &[UserId]) -> Vec<(Vec<Entry>, ContactList)> {
    let mut all = Vec::new();
    for user in users {
        all.push((
            log_of(store, *user).await,
            store.contacts(*user).await.unwrap(),
        ));
    }
    all
}

/// Runs `op`, checks it is refused with `code`, and that no log and no list of `users`
/// changed.
async fn refused<T: Debug>(
    store: &dyn Store,
    users: &[UserId],
    op: impl Future<Output = Result<T, StoreError>>,
    code: ErrorCode,
) {
    let before = snapshot(store, users).await;
    match op.await {
        Err(StoreError::Refused(c)) if c == code => {}
        other => panic!("expected Refused({code:?}), got {other:?}"),
    }
    assert_eq!(
        snapshot(store, users).await,
        before,
        "a refused operation changes nothing"
    );
}

/// `user`'s list as (peer, state), sorted by peer.
async fn states(store: &dyn Store, user: UserId) -> Vec<(UserId, ContactState)> {
    let mut states: Vec<_> = store
        .contacts(user)
        .await
        .unwrap()
        .contacts
        .iter()
        .map(|c| (c.user, c.state))
        .collect();
    states.sort_by_key(|(user, _)| *user);
    states
}

/// `user`'s entry for `peer`.
async fn info(store: &dyn Store, user: UserId, peer: UserId) -> ContactInfo {
    store
        .contacts(user)
        .await
        .unwrap()
        .contacts
        .into_iter()
        .find(|c| c.user == peer)
        .expect("an entry for the peer")
}

fn sent(intro: &Intro) -> Notice {
    Notice::RequestSent {
        intro: Box::new(intro.clone()),
    }
}

fn received(intro: &Intro) -> Notice {
    Notice::RequestReceived {
        intro: Box::new(intro.clone()),
    }
}

fn accepted(peer: &Person, intro: &Intro) -> Notice {
    Notice::Accepted {
        peer: peer.id,
        intro: Box::new(intro.clone()),
    }
}

/// `a` asks `b`, who accepts (with no block either way): they are contacts. Returns the
/// request and the acceptance.
async fn befriend(store: &dyn Store, a: &Person, b: &Person) -> (Intro, Intro) {
    let ask = intro(a, b, "let's be contacts");
    let answer = intro(b, a, "sure");
    notified(
        store,
        store.request_contact(&ask, &LIMITS, NOW_MS),
        &[(a.id, sent(&ask)), (b.id, received(&ask))],
    )
    .await;
    notified(
        store,
        store.accept_contact(&answer, &LIMITS, NOW_MS),
        &[(b.id, accepted(a, &answer)), (a.id, accepted(b, &answer))],
    )
    .await;
    (ask, answer)
}

// ---------------------------------------------------------------------------------------------
// 1. Handles.

fn candidates(n: u8) -> Vec<(u8, [u8; 32])> {
    (1..=n).map(|number| (number, random_bytes())).collect()
}

async fn handles_are_unique_keep_their_number_and_decide_chain_visibility(db: Db) {
    let store = &*db.store;
    let (x, y, z) = (
        person(store).await,
        person(store).await,
        person(store).await,
    );
    let ada = candidates(3);
    assert_eq!(own(store, &x, "x1").await, 1);

    // The first free number; the next user with the same name gets the next one.
    let (number, n) = store.set_handle(x.id, "ada", &ada, NOW_MS).await.unwrap();
    assert_eq!(number, 1);
    let x_ada = Notice::HandleChanged {
        handle: Some("ada.01".into()),
    };
    check_notified(store, &n, &[(x.id, x_ada.clone())]).await;
    let (number, n) = store.set_handle(y.id, "ada", &ada, NOW_MS).await.unwrap();
    assert_eq!(number, 2);
    let y_ada = Notice::HandleChanged {
        handle: Some("ada.02".into()),
    };
    check_notified(store, &n, &[(y.id, y_ada.clone())]).await;
    assert_eq!(store.find_handle(&ada[0].1).await.unwrap(), Some(x.id));
    assert_eq!(store.find_handle(&ada[1].1).await.unwrap(), Some(y.id));
    assert_eq!(store.find_handle(&ada[2].1).await.unwrap(), None);

    // The same name again keeps its number and writes nothing, even when an earlier number
    // is free by then.
    let (number, n) = store.set_handle(y.id, "ada", &ada, NOW_MS).await.unwrap();
    assert_eq!((number, n), (2, Notified::default()));
    notified(
        store,
        store.clear_handle(x.id, NOW_MS),
        &[(x.id, no_handle())],
    )
    .await;
    assert_eq!(store.find_handle(&ada[0].1).await.unwrap(), None);
    let (number, n) = store.set_handle(y.id, "ada", &ada, NOW_MS).await.unwrap();
    assert_eq!((number, n), (2, Notified::default()));
    let (number, n) = store.set_handle(x.id, "ada", &ada, NOW_MS).await.unwrap();
    assert_eq!(number, 1);
    check_notified(store, &n, &[(x.id, x_ada.clone())]).await;
    assert_eq!(own(store, &x, "x2").await, 5);

    // Another name replaces the old handle: its hash is free again.
    let bea = candidates(2);
    let (number, n) = store.set_handle(x.id, "bea", &bea, NOW_MS).await.unwrap();
    assert_eq!(number, 1);
    let x_bea = Notice::HandleChanged {
        handle: Some("bea.01".into()),
    };
    check_notified(store, &n, &[(x.id, x_bea.clone())]).await;
    assert_eq!(store.find_handle(&ada[0].1).await.unwrap(), None);
    assert_eq!(store.find_handle(&bea[0].1).await.unwrap(), Some(x.id));

    // Every candidate taken: refused, and the old handle is kept (the old one is deleted
    // before the candidates are tried, so this takes the rollback).
    refused(
        store,
        &[x.id, y.id],
        store.set_handle(y.id, "bea", &bea[..1], NOW_MS),
        ErrorCode::HandleTaken,
    )
    .await;
    assert_eq!(store.find_handle(&ada[1].1).await.unwrap(), Some(y.id));
    assert_eq!(store.find_handle(&bea[0].1).await.unwrap(), Some(x.id));
    refused(
        store,
        &[z.id],
        store.set_handle(z.id, "bea", &bea[..1], NOW_MS),
        ErrorCode::HandleTaken,
    )
    .await;
    // The same user may take the other number of the name: a new handle, a notice.
    let (number, n) = store.set_handle(y.id, "bea", &bea, NOW_MS).await.unwrap();
    assert_eq!(number, 2);
    let y_bea = Notice::HandleChanged {
        handle: Some("bea.02".into()),
    };
    check_notified(store, &n, &[(y.id, y_bea.clone())]).await;
    assert_eq!(store.find_handle(&ada[1].1).await.unwrap(), None);

    // Chain visibility: itself, a user with a handle, or a request either way.
    assert!(store.chain_visible(z.id, z.id).await.unwrap());
    assert!(store.chain_visible(z.id, x.id).await.unwrap());
    assert!(!store.chain_visible(x.id, z.id).await.unwrap());
    notified(
        store,
        store.clear_handle(x.id, NOW_MS),
        &[(x.id, no_handle())],
    )
    .await;
    notified(store, store.clear_handle(x.id, NOW_MS), &[]).await;
    assert_eq!(store.find_handle(&bea[0].1).await.unwrap(), None);
    assert!(!store.chain_visible(z.id, x.id).await.unwrap());
    assert!(store.chain_visible(z.id, y.id).await.unwrap());
    let ask = intro(&z, &x, "found you");
    notified(
        store,
        store.request_contact(&ask, &LIMITS, NOW_MS),
        &[(z.id, sent(&ask)), (x.id, received(&ask))],
    )
    .await;
    assert!(store.chain_visible(z.id, x.id).await.unwrap());
    assert!(store.chain_visible(x.id, z.id).await.unwrap());
    assert!(!store.chain_visible(y.id, z.id).await.unwrap());
    // Either way means either user's row: a request a block kept from arriving leaves only
    // the asker's row, and both may still read each other's chain.
    let blocked = Notice::Blocked { peer: z.id };
    let change = store.change_contact(y.id, z.id, ContactChange::Block, &LIMITS, NOW_MS);
    notified(store, change, &[(y.id, blocked.clone())]).await;
    let undelivered = intro(&z, &y, "are you there");
    notified(
        store,
        store.request_contact(&undelivered, &LIMITS, NOW_MS),
        &[(z.id, sent(&undelivered))],
    )
    .await;
    assert_eq!(states(store, y.id).await, [(z.id, ContactState::Blocked)]);
    assert!(store.chain_visible(y.id, z.id).await.unwrap());
    assert!(store.chain_visible(z.id, y.id).await.unwrap());

    let n = Entry::Note;
    assert_eq!(
        log_of(store, x.id).await,
        [
            own_entry("x1"),
            n(x_ada.clone()),
            n(no_handle()),
            n(x_ada),
            own_entry("x2"),
            n(x_bea),
            n(no_handle()),
            n(received(&ask)),
        ]
    );
    assert_eq!(log_of(store, y.id).await, [n(y_ada), n(y_bea), n(blocked)]);
    assert_eq!(
        log_of(store, z.id).await,
        [n(sent(&ask)), n(sent(&undelivered))]
    );
}

fn no_handle() -> Notice {
    Notice::HandleChanged { handle: None }
}

// ---------------------------------------------------------------------------------------------
// 2. A request and its acceptance.

async fn a_request_and_its_acceptance_reach_both_logs(db: Db) {
    let store = &*db.store;
    let (a, b) = (person(store).await, person(store).await);
    let committer = Committer::spawn(Arc::clone(&db.store), CommitConfig::default());
    assert_eq!(own_via(&committer, &a, "a1").await, 1);
    assert_eq!(own(store, &b, "b1").await, 1);

    let ask = intro(&a, &b, "hi, it's a");
    notified(
        store,
        store.request_contact(&ask, &LIMITS, NOW_MS),
        &[(a.id, sent(&ask)), (b.id, received(&ask))],
    )
    .await;
    assert_eq!(
        store.contacts(a.id).await.unwrap(),
        ContactList {
            contacts: vec![ContactInfo {
                user: b.id,
                state: ContactState::Outgoing,
                profile_version: 0,
                last_seen: None,
                since: NOW_S,
                card: None,
            }],
            presence_visible: true,
        }
    );
    assert_eq!(states(store, b.id).await, [(a.id, ContactState::Incoming)]);
    assert_eq!(
        opened(&ask, &b),
        ("hi, it's a".to_owned(), a.profile_key.clone())
    );

    // A repeat while pending: A's devices learn it, B's log gets nothing new.
    let again = intro(&a, &b, "hi again");
    notified(
        store,
        store.request_contact(&again, &LIMITS, NOW_MS + 1000),
        &[(a.id, sent(&again))],
    )
    .await;
    assert_eq!(info(store, a.id, b.id).await.since, NOW_S + 1);
    assert_eq!(info(store, b.id, a.id).await.since, NOW_S);
    assert_eq!(own_via(&committer, &a, "a2").await, 4);
    assert_eq!(own(store, &b, "b2").await, 3);

    let answer = intro(&b, &a, "hello a");
    notified(
        store,
        store.accept_contact(&answer, &LIMITS, NOW_MS + 2000),
        &[(b.id, accepted(&a, &answer)), (a.id, accepted(&b, &answer))],
    )
    .await;
    for (owner, peer) in [(a.id, b.id), (b.id, a.id)] {
        assert_eq!(
            info(store, owner, peer).await,
            ContactInfo {
                user: peer,
                state: ContactState::Contact,
                profile_version: 0,
                last_seen: None,
                since: NOW_S + 2,
                card: None,
            }
        );
    }
    // The requester reads the accepter's profile key in the acceptance.
    assert_eq!(
        opened(&answer, &a),
        ("hello a".to_owned(), b.profile_key.clone())
    );

    // Accepting again (a retry after a lost answer) is done; so is asking a contact.
    notified(
        store,
        store.accept_contact(&intro(&b, &a, "retry"), &LIMITS, NOW_MS),
        &[],
    )
    .await;
    notified(
        store,
        store.request_contact(&intro(&a, &b, "already"), &LIMITS, NOW_MS),
        &[],
    )
    .await;
    assert_eq!(own_via(&committer, &a, "a3").await, 6);
    assert_eq!(own(store, &b, "b3").await, 5);
    committer.shutdown().await;

    assert_eq!(states(store, a.id).await, [(b.id, ContactState::Contact)]);
    assert_eq!(states(store, b.id).await, [(a.id, ContactState::Contact)]);
    let n = Entry::Note;
    assert_eq!(
        log_of(store, a.id).await,
        [
            own_entry("a1"),
            n(sent(&ask)),
            n(sent(&again)),
            own_entry("a2"),
            n(accepted(&b, &answer)),
            own_entry("a3"),
        ]
    );
    assert_eq!(
        log_of(store, b.id).await,
        [
            own_entry("b1"),
            n(received(&ask)),
            own_entry("b2"),
            n(accepted(&a, &answer)),
            own_entry("b3"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Crossing requests.

async fn crossing_requests_make_contacts(db: Db) {
    let store = &*db.store;
    let (a, b) = (person(store).await, person(store).await);
    assert_eq!(own(store, &a, "a1").await, 1);
    let ask = intro(&a, &b, "a asks");
    notified(
        store,
        store.request_contact(&ask, &LIMITS, NOW_MS),
        &[(a.id, sent(&ask)), (b.id, received(&ask))],
    )
    .await;
    // B asks A while A's request is pending: that accepts it, with B's intro.
    let back = intro(&b, &a, "b asks too");
    notified(
        store,
        store.request_contact(&back, &LIMITS, NOW_MS),
        &[(b.id, accepted(&a, &back)), (a.id, accepted(&b, &back))],
    )
    .await;
    assert_eq!(states(store, a.id).await, [(b.id, ContactState::Contact)]);
    assert_eq!(states(store, b.id).await, [(a.id, ContactState::Contact)]);
    assert_eq!(opened(&back, &a).1, b.profile_key);
    assert_eq!(own(store, &b, "b1").await, 3);
    assert_eq!(own(store, &a, "a2").await, 4);
    let n = Entry::Note;
    assert_eq!(
        log_of(store, a.id).await,
        [
            own_entry("a1"),
            n(sent(&ask)),
            n(accepted(&b, &back)),
            own_entry("a2")
        ]
    );
    assert_eq!(
        log_of(store, b.id).await,
        [n(received(&ask)), n(accepted(&a, &back)), own_entry("b1")]
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Decline, cancel, remove.

async fn decline_cancel_and_remove_notify_both_sides(db: Db) {
    let store = &*db.store;
    let (a, b) = (person(store).await, person(store).await);
    let both = [a.id, b.id];
    let change = |user: &Person, peer: &Person, change| {
        store.change_contact(user.id, peer.id, change, &LIMITS, NOW_MS)
    };
    let no_such = ErrorCode::NoSuchContact;
    assert_eq!(own(store, &a, "a1").await, 1);

    // Nothing to act on between strangers, nor with oneself.
    for c in [
        ContactChange::Decline,
        ContactChange::Cancel,
        ContactChange::Remove,
    ] {
        refused(store, &both, change(&a, &b, c), no_such).await;
        refused(store, &both, change(&a, &a, c), no_such).await;
    }
    refused(
        store,
        &both,
        store.accept_contact(&intro(&b, &a, "?"), &LIMITS, NOW_MS),
        no_such,
    )
    .await;

    // Decline.
    let ask = intro(&a, &b, "one");
    notified(
        store,
        store.request_contact(&ask, &LIMITS, NOW_MS),
        &[(a.id, sent(&ask)), (b.id, received(&ask))],
    )
    .await;
    // Only the receiver declines, only the sender cancels, nobody removes a request, and
    // the sender cannot accept its own request.
    refused(
        store,
        &both,
        change(&a, &b, ContactChange::Decline),
        no_such,
    )
    .await;
    refused(store, &both, change(&b, &a, ContactChange::Cancel), no_such).await;
    refused(store, &both, change(&a, &b, ContactChange::Remove), no_such).await;
    refused(store, &both, change(&b, &a, ContactChange::Remove), no_such).await;
    refused(
        store,
        &both,
        store.accept_contact(&intro(&a, &b, "self"), &LIMITS, NOW_MS),
        no_such,
    )
    .await;
    let declined = |peer: &Person, by_me| Notice::Declined {
        peer: peer.id,
        by_me,
    };
    notified(
        store,
        change(&b, &a, ContactChange::Decline),
        &[(b.id, declined(&a, true)), (a.id, declined(&b, false))],
    )
    .await;
    assert_eq!(states(store, a.id).await, []);
    assert_eq!(states(store, b.id).await, []);
    refused(
        store,
        &both,
        change(&b, &a, ContactChange::Decline),
        no_such,
    )
    .await;
    refused(
        store,
        &both,
        store.accept_contact(&intro(&b, &a, "late"), &LIMITS, NOW_MS),
        no_such,
    )
    .await;
    assert_eq!(own(store, &b, "b1").await, 3);

    // Cancel: a new request after the decline reaches B again.
    let ask2 = intro(&a, &b, "two");
    notified(
        store,
        store.request_contact(&ask2, &LIMITS, NOW_MS),
        &[(a.id, sent(&ask2)), (b.id, received(&ask2))],
    )
    .await;
    let cancelled = |peer: &Person, by_me| Notice::Cancelled {
        peer: peer.id,
        by_me,
    };
    notified(
        store,
        change(&a, &b, ContactChange::Cancel),
        &[(a.id, cancelled(&b, true)), (b.id, cancelled(&a, false))],
    )
    .await;
    assert_eq!(states(store, a.id).await, []);
    assert_eq!(states(store, b.id).await, []);
    refused(store, &both, change(&a, &b, ContactChange::Cancel), no_such).await;
    refused(
        store,
        &both,
        change(&b, &a, ContactChange::Decline),
        no_such,
    )
    .await;

    // Remove.
    let ask3 = intro(&b, &a, "three");
    let answer = intro(&a, &b, "yes");
    notified(
        store,
        store.request_contact(&ask3, &LIMITS, NOW_MS),
        &[(b.id, sent(&ask3)), (a.id, received(&ask3))],
    )
    .await;
    notified(
        store,
        store.accept_contact(&answer, &LIMITS, NOW_MS),
        &[(a.id, accepted(&b, &answer)), (b.id, accepted(&a, &answer))],
    )
    .await;
    refused(
        store,
        &both,
        change(&a, &b, ContactChange::Decline),
        no_such,
    )
    .await;
    refused(store, &both, change(&b, &a, ContactChange::Cancel), no_such).await;
    let removed = |peer: &Person, by_me| Notice::Removed {
        peer: peer.id,
        by_me,
    };
    notified(
        store,
        change(&b, &a, ContactChange::Remove),
        &[(b.id, removed(&a, true)), (a.id, removed(&b, false))],
    )
    .await;
    assert_eq!(states(store, a.id).await, []);
    assert_eq!(states(store, b.id).await, []);
    refused(store, &both, change(&b, &a, ContactChange::Remove), no_such).await;
    refused(store, &both, change(&a, &b, ContactChange::Remove), no_such).await;
    assert_eq!(own(store, &a, "a2").await, 9);

    let n = Entry::Note;
    assert_eq!(
        log_of(store, a.id).await,
        [
            own_entry("a1"),
            n(sent(&ask)),
            n(declined(&b, false)),
            n(sent(&ask2)),
            n(cancelled(&b, true)),
            n(received(&ask3)),
            n(accepted(&b, &answer)),
            n(removed(&b, false)),
            own_entry("a2"),
        ]
    );
    assert_eq!(
        log_of(store, b.id).await,
        [
            n(received(&ask)),
            n(declined(&a, true)),
            own_entry("b1"),
            n(received(&ask2)),
            n(cancelled(&a, false)),
            n(sent(&ask3)),
            n(accepted(&a, &answer)),
            n(removed(&a, true)),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Blocks.

/// Names the two users and the intros of one run, so that two runs (with other users and
/// other random intros) compare: what a user sees, modulo ids.
struct Names {
    me: UserId,
    peer: UserId,
    intros: Vec<(Intro, &'static str)>,
}

impl Names {
    fn user(&self, user: UserId) -> &'static str {
        match user {
            u if u == self.me => "me",
            u if u == self.peer => "peer",
            other => panic!("unexpected user {other:?}"),
        }
    }

    fn intro(&self, intro: &Intro) -> &'static str {
        self.intros
            .iter()
            .find(|(known, _)| known == intro)
            .map(|(_, label)| *label)
            .expect("an intro of this run")
    }

    fn notice(&self, notice: &Notice) -> String {
        match notice {
            Notice::RequestSent { intro } => format!("RequestSent({})", self.intro(intro)),
            Notice::RequestReceived { intro } => {
                format!("RequestReceived({})", self.intro(intro))
            }
            Notice::Accepted { peer, intro } => {
                format!("Accepted({}, {})", self.user(*peer), self.intro(intro))
            }
            Notice::Declined { peer, by_me } => format!("Declined({}, {by_me})", self.user(*peer)),
            Notice::Cancelled { peer, by_me } => {
                format!("Cancelled({}, {by_me})", self.user(*peer))
            }
            Notice::Removed { peer, by_me } => format!("Removed({}, {by_me})", self.user(*peer)),
            Notice::Blocked { peer } => format!("Blocked({})", self.user(*peer)),
            Notice::Unblocked { peer } => format!("Unblocked({})", self.user(*peer)),
            other => format!("{other:?}"),
        }
    }

    fn entry(&self, entry: &Entry) -> String {
        match entry {
            Entry::Own(text) => format!("own {text}"),
            Entry::Note(notice) => self.notice(notice),
        }
    }

    /// An answer as `me` sees it: refused, or the notices written into its own log.
    fn answer(&self, result: &Result<Notified, StoreError>) -> String {
        match result {
            Ok(notified) => notified
                .0
                .iter()
                .filter(|(user, _)| *user == self.me)
                .map(|(_, event)| format!("{}: {}", event.seq, self.notice(&note_of(event))))
                .collect::<Vec<_>>()
                .join("; "),
            Err(StoreError::Refused(code)) => format!("refused {code:?}"),
            Err(other) => panic!("{other}"),
        }
    }
}

fn note_of(event: &Event) -> Notice {
    match entry(event) {
        Entry::Note(notice) => notice,
        Entry::Own(text) => panic!("not a notice: {text}"),
    }
}

/// What `me` does towards `peer` in one run of the blocks story.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// Asks, asks again, cancels, cancels again, asks once more.
    Request,
    /// Accepts the peer's earlier request, then again, then asks.
    Accept,
    /// Answers the peer's earlier request by asking back.
    AskBack,
    /// Declines the peer's earlier request, then again, then accepts it.
    Decline,
    /// Removes the peer (contacts from before), then again.
    Remove,
}

/// What `me` saw in one run: its log, its answers and its list, named.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    log: Vec<String>,
    answers: Vec<String>,
    list: Vec<(&'static str, ContactState)>,
}

/// One run of `case`: the peer did its part, then blocked `me` (`block`) or just never
/// answered again; then `me` acts.
async fn run_case(store: &dyn Store, case: Case, block: bool) -> Seen {
    let (me, peer) = (person(store).await, person(store).await);
    let mut names = Names {
        me: me.id,
        peer: peer.id,
        intros: Vec::new(),
    };
    own(store, &me, "before").await;
    match case {
        Case::Request => {}
        Case::Accept | Case::AskBack | Case::Decline => {
            let ask = intro(&peer, &me, "peer asks");
            names.intros.push((ask.clone(), "peer asks"));
            notified(
                store,
                store.request_contact(&ask, &LIMITS, NOW_MS),
                &[(peer.id, sent(&ask)), (me.id, received(&ask))],
            )
            .await;
        }
        Case::Remove => {
            let (ask, answer) = (intro(&peer, &me, "peer asks"), intro(&me, &peer, "yes"));
            names.intros.push((ask.clone(), "peer asks"));
            names.intros.push((answer.clone(), "me accepts"));
            notified(
                store,
                store.request_contact(&ask, &LIMITS, NOW_MS),
                &[(peer.id, sent(&ask)), (me.id, received(&ask))],
            )
            .await;
            notified(
                store,
                store.accept_contact(&answer, &LIMITS, NOW_MS),
                &[
                    (me.id, accepted(&peer, &answer)),
                    (peer.id, accepted(&me, &answer)),
                ],
            )
            .await;
        }
    }
    if block {
        let blocked = Notice::Blocked { peer: me.id };
        let change = store.change_contact(peer.id, me.id, ContactChange::Block, &LIMITS, NOW_MS);
        notified(store, change, &[(peer.id, blocked)]).await;
        assert!(store.is_blocked(peer.id, me.id).await.unwrap());
        assert!(!store.is_blocked(me.id, peer.id).await.unwrap());
    } else {
        assert!(!store.is_blocked(peer.id, me.id).await.unwrap());
    }
    let peer_before = snapshot(store, &[peer.id]).await;

    let mut answers = Vec::new();
    let mut intro_to_peer = |label: &'static str| {
        let made = intro(&me, &peer, label);
        names.intros.push((made.clone(), label));
        made
    };
    let change = |change| store.change_contact(me.id, peer.id, change, &LIMITS, NOW_MS);
    match case {
        Case::Request => {
            let (first, again, last) = (
                intro_to_peer("me asks"),
                intro_to_peer("me asks again"),
                intro_to_peer("me asks once more"),
            );
            answers.push(store.request_contact(&first, &LIMITS, NOW_MS).await);
            answers.push(store.request_contact(&again, &LIMITS, NOW_MS).await);
            answers.push(change(ContactChange::Cancel).await);
            answers.push(change(ContactChange::Cancel).await);
            answers.push(store.request_contact(&last, &LIMITS, NOW_MS).await);
        }
        Case::Accept => {
            let (answer, retry, ask) = (
                intro_to_peer("me accepts"),
                intro_to_peer("me accepts again"),
                intro_to_peer("me asks"),
            );
            answers.push(store.accept_contact(&answer, &LIMITS, NOW_MS).await);
            answers.push(store.accept_contact(&retry, &LIMITS, NOW_MS).await);
            answers.push(store.request_contact(&ask, &LIMITS, NOW_MS).await);
        }
        Case::AskBack => {
            let back = intro_to_peer("me asks back");
            answers.push(store.request_contact(&back, &LIMITS, NOW_MS).await);
        }
        Case::Decline => {
            let answer = intro_to_peer("me accepts");
            answers.push(change(ContactChange::Decline).await);
            answers.push(change(ContactChange::Decline).await);
            answers.push(store.accept_contact(&answer, &LIMITS, NOW_MS).await);
        }
        Case::Remove => {
            answers.push(change(ContactChange::Remove).await);
            answers.push(change(ContactChange::Remove).await);
        }
    }
    own(store, &me, "after").await;

    if block {
        // Nothing reached the blocker: its log and list are as the block left them.
        assert_eq!(snapshot(store, &[peer.id]).await, peer_before, "{case:?}");
        assert_eq!(
            states(store, peer.id).await,
            [(me.id, ContactState::Blocked)]
        );
        assert!(store.is_blocked(peer.id, me.id).await.unwrap());
    } else {
        // Without the block the peer's log did grow: the comparison means something.
        assert_ne!(snapshot(store, &[peer.id]).await, peer_before, "{case:?}");
    }
    let mut list: Vec<_> = states(store, me.id)
        .await
        .into_iter()
        .map(|(user, state)| (names.user(user), state))
        .collect();
    list.sort_by_key(|(name, _)| *name);
    Seen {
        log: log_of(store, me.id)
            .await
            .iter()
            .map(|e| names.entry(e))
            .collect(),
        answers: answers.iter().map(|a| names.answer(a)).collect(),
        list,
    }
}

/// A case, and the log, answers and list `me` must see in it.
type Expected = (
    Case,
    &'static [&'static str],
    &'static [&'static str],
    &'static [(&'static str, ContactState)],
);

async fn a_blocked_user_sees_exactly_what_silence_looks_like(db: Db) {
    let store = &*db.store;
    let expected: [Expected; 5] = [
        (
            Case::Request,
            &[
                "own before",
                "RequestSent(me asks)",
                "RequestSent(me asks again)",
                "Cancelled(peer, true)",
                "RequestSent(me asks once more)",
                "own after",
            ],
            &[
                "2: RequestSent(me asks)",
                "3: RequestSent(me asks again)",
                "4: Cancelled(peer, true)",
                "refused NoSuchContact",
                "5: RequestSent(me asks once more)",
            ],
            &[("peer", ContactState::Outgoing)],
        ),
        (
            Case::Accept,
            &[
                "own before",
                "RequestReceived(peer asks)",
                "Accepted(peer, me accepts)",
                "own after",
            ],
            &["3: Accepted(peer, me accepts)", "", ""],
            &[("peer", ContactState::Contact)],
        ),
        (
            Case::AskBack,
            &[
                "own before",
                "RequestReceived(peer asks)",
                "Accepted(peer, me asks back)",
                "own after",
            ],
            &["3: Accepted(peer, me asks back)"],
            &[("peer", ContactState::Contact)],
        ),
        (
            Case::Decline,
            &[
                "own before",
                "RequestReceived(peer asks)",
                "Declined(peer, true)",
                "own after",
            ],
            &[
                "3: Declined(peer, true)",
                "refused NoSuchContact",
                "refused NoSuchContact",
            ],
            &[],
        ),
        (
            Case::Remove,
            &[
                "own before",
                "RequestReceived(peer asks)",
                "Accepted(peer, me accepts)",
                "Removed(peer, true)",
                "own after",
            ],
            &["4: Removed(peer, true)", "refused NoSuchContact"],
            &[],
        ),
    ];
    for (case, log, answers, list) in expected {
        let blocked = run_case(store, case, true).await;
        let silent = run_case(store, case, false).await;
        assert_eq!(blocked, silent, "{case:?}: a block must look like silence");
        assert_eq!(
            blocked,
            Seen {
                log: log.iter().map(|s| s.to_string()).collect(),
                answers: answers.iter().map(|s| s.to_string()).collect(),
                list: list.to_vec(),
            },
            "{case:?}"
        );
    }
}

async fn unblocking_and_asking_a_blocked_user(db: Db) {
    let store = &*db.store;
    let (a, b) = (person(store).await, person(store).await);
    let change = |user: &Person, peer: &Person, change, now_ms| {
        store.change_contact(user.id, peer.id, change, &LIMITS, now_ms)
    };
    let blocked = |peer: &Person| Notice::Blocked { peer: peer.id };
    let unblocked = |peer: &Person| Notice::Unblocked { peer: peer.id };
    assert_eq!(own(store, &a, "a1").await, 1);

    // Blocking a stranger; blocking again is done.
    let block = ContactChange::Block;
    notified(store, change(&a, &b, block, NOW_MS), &[(a.id, blocked(&b))]).await;
    notified(store, change(&a, &b, block, NOW_MS + 5000), &[]).await;
    assert_eq!(
        store.contacts(a.id).await.unwrap().contacts,
        [ContactInfo {
            user: b.id,
            state: ContactState::Blocked,
            profile_version: 0,
            last_seen: None,
            since: NOW_S,
            card: None,
        }]
    );
    assert_eq!(states(store, b.id).await, []);
    assert!(store.is_blocked(a.id, b.id).await.unwrap());
    assert!(!store.is_blocked(b.id, a.id).await.unwrap());

    // B asks while blocked: only B's view and log change.
    let ask = intro(&b, &a, "let me in");
    notified(
        store,
        store.request_contact(&ask, &LIMITS, NOW_MS),
        &[(b.id, sent(&ask))],
    )
    .await;
    assert_eq!(states(store, b.id).await, [(a.id, ContactState::Outgoing)]);
    assert_eq!(states(store, a.id).await, [(b.id, ContactState::Blocked)]);

    // Unblocking writes Unblocked; again is done.
    let unblock = ContactChange::Unblock;
    notified(
        store,
        change(&a, &b, unblock, NOW_MS),
        &[(a.id, unblocked(&b))],
    )
    .await;
    notified(store, change(&a, &b, unblock, NOW_MS), &[]).await;
    assert!(!store.is_blocked(a.id, b.id).await.unwrap());
    assert_eq!(states(store, a.id).await, []);
    assert_eq!(own(store, &a, "a2").await, 4);

    // The request sent during the block stays undelivered; a new one reaches A.
    let again = intro(&b, &a, "again");
    notified(
        store,
        store.request_contact(&again, &LIMITS, NOW_MS),
        &[(b.id, sent(&again)), (a.id, received(&again))],
    )
    .await;
    assert_eq!(states(store, a.id).await, [(b.id, ContactState::Incoming)]);
    let answer = intro(&a, &b, "welcome");
    notified(
        store,
        store.accept_contact(&answer, &LIMITS, NOW_MS),
        &[(a.id, accepted(&b, &answer)), (b.id, accepted(&a, &answer))],
    )
    .await;

    // Blocking a contact changes only the blocker's view.
    notified(store, change(&a, &b, block, NOW_MS), &[(a.id, blocked(&b))]).await;
    assert_eq!(states(store, a.id).await, [(b.id, ContactState::Blocked)]);
    assert_eq!(states(store, b.id).await, [(a.id, ContactState::Contact)]);
    assert!(store.presence_peers(b.id).await.unwrap().is_empty());

    let n = Entry::Note;
    assert_eq!(
        log_of(store, a.id).await,
        [
            own_entry("a1"),
            n(blocked(&b)),
            n(unblocked(&b)),
            own_entry("a2"),
            n(received(&again)),
            n(accepted(&b, &answer)),
            n(blocked(&b)),
        ]
    );
    assert_eq!(
        log_of(store, b.id).await,
        [n(sent(&ask)), n(sent(&again)), n(accepted(&a, &answer))]
    );

    // Asking a user one has blocked unblocks it. Here the blocked user asked meanwhile (an
    // undelivered request): both asked, so they are contacts at once.
    let (x, y) = (person(store).await, person(store).await);
    notified(store, change(&x, &y, block, NOW_MS), &[(x.id, blocked(&y))]).await;
    let y_asks = intro(&y, &x, "y asks");
    notified(
        store,
        store.request_contact(&y_asks, &LIMITS, NOW_MS),
        &[(y.id, sent(&y_asks))],
    )
    .await;
    let x_asks = intro(&x, &y, "x asks");
    notified(
        store,
        store.request_contact(&x_asks, &LIMITS, NOW_MS),
        &[
            (x.id, unblocked(&y)),
            (x.id, sent(&x_asks)),
            (x.id, accepted(&y, &y_asks)),
            (y.id, accepted(&x, &x_asks)),
        ],
    )
    .await;
    assert!(!store.is_blocked(x.id, y.id).await.unwrap());
    assert_eq!(states(store, x.id).await, [(y.id, ContactState::Contact)]);
    assert_eq!(states(store, y.id).await, [(x.id, ContactState::Contact)]);
    assert_eq!(opened(&y_asks, &x).1, y.profile_key);
    assert_eq!(opened(&x_asks, &y).1, x.profile_key);
    assert_eq!(
        log_of(store, x.id).await,
        [
            n(blocked(&y)),
            n(unblocked(&y)),
            n(sent(&x_asks)),
            n(accepted(&y, &y_asks)),
        ]
    );
    assert_eq!(
        log_of(store, y.id).await,
        [n(sent(&y_asks)), n(accepted(&x, &x_asks))]
    );

    // Without a request from the blocked user: unblocked, and an ordinary request.
    let (p, q) = (person(store).await, person(store).await);
    notified(store, change(&p, &q, block, NOW_MS), &[(p.id, blocked(&q))]).await;
    let p_asks = intro(&p, &q, "p asks");
    notified(
        store,
        store.request_contact(&p_asks, &LIMITS, NOW_MS),
        &[
            (p.id, unblocked(&q)),
            (p.id, sent(&p_asks)),
            (q.id, received(&p_asks)),
        ],
    )
    .await;
    assert_eq!(states(store, p.id).await, [(q.id, ContactState::Outgoing)]);
    assert_eq!(states(store, q.id).await, [(p.id, ContactState::Incoming)]);
}

// ---------------------------------------------------------------------------------------------
// 6. Limits.

const DAY_MS: u64 = 86_400_000;

async fn limits_refuse_and_store_nothing(db: Db) {
    let store = &*db.store;
    let (a, b1, b2, b3) = (
        person(store).await,
        person(store).await,
        person(store).await,
        person(store).await,
    );
    let all = [a.id, b1.id, b2.id, b3.id];
    let limits = PeopleLimits {
        requests_per_day: 2,
        pending_requests: 1,
        ..LIMITS
    };
    assert_eq!(own(store, &a, "a1").await, 1);

    let to_b1 = intro(&a, &b1, "1");
    notified(
        store,
        store.request_contact(&to_b1, &limits, NOW_MS),
        &[(a.id, sent(&to_b1)), (b1.id, received(&to_b1))],
    )
    .await;
    // A second pending request is over the pending limit (and, refused, does not count
    // against the day: the repeat below is the day's second).
    refused(
        store,
        &all,
        store.request_contact(&intro(&a, &b2, "2"), &limits, NOW_MS),
        ErrorCode::PendingLimit,
    )
    .await;
    // A repeat is no new pending request, but counts against the day.
    let again = intro(&a, &b1, "1 again");
    notified(
        store,
        store.request_contact(&again, &limits, NOW_MS),
        &[(a.id, sent(&again))],
    )
    .await;
    refused(
        store,
        &all,
        store.request_contact(&intro(&a, &b1, "1 thrice"), &limits, NOW_MS),
        ErrorCode::RequestLimit,
    )
    .await;
    let cancelled = |peer: &Person, by_me| Notice::Cancelled {
        peer: peer.id,
        by_me,
    };
    notified(
        store,
        store.change_contact(a.id, b1.id, ContactChange::Cancel, &LIMITS, NOW_MS),
        &[(a.id, cancelled(&b1, true)), (b1.id, cancelled(&a, false))],
    )
    .await;
    // Room for a pending request again, but the day's requests are used up, to its last
    // millisecond.
    let day_end = (NOW_MS / DAY_MS + 1) * DAY_MS - 1;
    refused(
        store,
        &all,
        store.request_contact(&intro(&a, &b2, "2"), &limits, day_end),
        ErrorCode::RequestLimit,
    )
    .await;
    assert_eq!(own(store, &a, "a2").await, 5);

    // The next day.
    let to_b2 = intro(&a, &b2, "2");
    notified(
        store,
        store.request_contact(&to_b2, &limits, NOW_MS + DAY_MS),
        &[(a.id, sent(&to_b2)), (b2.id, received(&to_b2))],
    )
    .await;
    refused(
        store,
        &all,
        store.request_contact(&intro(&a, &b3, "3"), &limits, NOW_MS + DAY_MS),
        ErrorCode::PendingLimit,
    )
    .await;
    // Another user's requests are counted apart.
    let b3_asks = intro(&b3, &a, "3");
    notified(
        store,
        store.request_contact(&b3_asks, &limits, NOW_MS),
        &[(b3.id, sent(&b3_asks)), (a.id, received(&b3_asks))],
    )
    .await;

    let n = Entry::Note;
    assert_eq!(
        log_of(store, a.id).await,
        [
            own_entry("a1"),
            n(sent(&to_b1)),
            n(sent(&again)),
            n(cancelled(&b1, true)),
            own_entry("a2"),
            n(sent(&to_b2)),
            n(received(&b3_asks)),
        ]
    );
    assert_eq!(
        log_of(store, b1.id).await,
        [n(received(&to_b1)), n(cancelled(&a, false))]
    );
    assert_eq!(log_of(store, b2.id).await, [n(received(&to_b2))]);
    assert_eq!(log_of(store, b3.id).await, [n(sent(&b3_asks))]);

    // The contact limit: C has one contact, D1; D2's request waits.
    let (c, d1, d2) = (
        person(store).await,
        person(store).await,
        person(store).await,
    );
    let all = [c.id, d1.id, d2.id];
    let one = PeopleLimits {
        contacts: 1,
        ..LIMITS
    };
    let (d1_asks, c_accepts) = (intro(&d1, &c, "d1"), intro(&c, &d1, "ok"));
    notified(
        store,
        store.request_contact(&d1_asks, &one, NOW_MS),
        &[(d1.id, sent(&d1_asks)), (c.id, received(&d1_asks))],
    )
    .await;
    notified(
        store,
        store.accept_contact(&c_accepts, &one, NOW_MS),
        &[
            (c.id, accepted(&d1, &c_accepts)),
            (d1.id, accepted(&c, &c_accepts)),
        ],
    )
    .await;
    let d2_asks = intro(&d2, &c, "d2");
    notified(
        store,
        store.request_contact(&d2_asks, &one, NOW_MS),
        &[(d2.id, sent(&d2_asks)), (c.id, received(&d2_asks))],
    )
    .await;
    refused(
        store,
        &all,
        store.accept_contact(&intro(&c, &d2, "no room"), &one, NOW_MS),
        ErrorCode::ContactLimit,
    )
    .await;
    // Asking back accepts, so it is refused the same way.
    refused(
        store,
        &all,
        store.request_contact(&intro(&c, &d2, "no room"), &one, NOW_MS),
        ErrorCode::ContactLimit,
    )
    .await;
    assert_eq!(
        states(store, c.id).await,
        sorted_states(vec![
            (d1.id, ContactState::Contact),
            (d2.id, ContactState::Incoming)
        ])
    );
    // Removing D1 makes room.
    let removed = |peer: &Person, by_me| Notice::Removed {
        peer: peer.id,
        by_me,
    };
    notified(
        store,
        store.change_contact(c.id, d1.id, ContactChange::Remove, &LIMITS, NOW_MS),
        &[(c.id, removed(&d1, true)), (d1.id, removed(&c, false))],
    )
    .await;
    let c_accepts_d2 = intro(&c, &d2, "room now");
    notified(
        store,
        store.accept_contact(&c_accepts_d2, &one, NOW_MS),
        &[
            (c.id, accepted(&d2, &c_accepts_d2)),
            (d2.id, accepted(&c, &c_accepts_d2)),
        ],
    )
    .await;
    assert_eq!(
        log_of(store, c.id).await,
        [
            n(received(&d1_asks)),
            n(accepted(&d1, &c_accepts)),
            n(received(&d2_asks)),
            n(removed(&d1, true)),
            n(accepted(&d2, &c_accepts_d2)),
        ]
    );
    assert_eq!(
        log_of(store, d2.id).await,
        [n(sent(&d2_asks)), n(accepted(&c, &c_accepts_d2))]
    );
}

fn sorted_states(mut list: Vec<(UserId, ContactState)>) -> Vec<(UserId, ContactState)> {
    list.sort_by_key(|(user, _)| *user);
    list
}

// ---------------------------------------------------------------------------------------------
// 7. Profiles.

fn profile_of(p: &Person, name: &str, version: u64) -> (ProfileBody, SealedProfile) {
    let body = ProfileBody {
        display_name: name.to_owned(),
        avatar: Some(format!("attachment/{version}")),
    };
    let sealed = body
        .seal(&mut OsRng, &p.profile_key, &p.id, version)
        .unwrap();
    (body, sealed)
}

async fn profile_versions_grow_and_only_contacts_read_them(db: Db) {
    let store = &*db.store;
    let (a, b, c) = (
        person(store).await,
        person(store).await,
        person(store).await,
    );
    let changed = |version| Notice::ProfileChanged { version };
    let not_a_contact = ErrorCode::NotAContact;
    assert_eq!(store.profile(a.id, a.id).await.unwrap(), None);
    assert_eq!(own(store, &a, "a1").await, 1);

    let (_, v1) = profile_of(&a, "Ada", 1);
    let (body2, v2) = profile_of(&a, "Ada L.", 2);
    notified(
        store,
        store.set_profile(a.id, &v1, NOW_MS),
        &[(a.id, changed(1))],
    )
    .await;
    assert_eq!(store.profile(a.id, a.id).await.unwrap(), Some(v1.clone()));
    notified(
        store,
        store.set_profile(a.id, &v2, NOW_MS),
        &[(a.id, changed(2))],
    )
    .await;
    // The same version (even sealed again) or an older one: a conflict.
    let (_, v2_again) = profile_of(&a, "Ada again", 2);
    refused(
        store,
        &[a.id],
        store.set_profile(a.id, &v2_again, NOW_MS),
        ErrorCode::Conflict,
    )
    .await;
    refused(
        store,
        &[a.id],
        store.set_profile(a.id, &v1, NOW_MS),
        ErrorCode::Conflict,
    )
    .await;
    assert_eq!(store.profile(a.id, a.id).await.unwrap(), Some(v2.clone()));

    // A stranger, then a pending request either way: not a contact.
    refused(
        store,
        &[a.id, b.id],
        store.profile(b.id, a.id),
        not_a_contact,
    )
    .await;
    let ask = intro(&b, &a, "b asks");
    notified(
        store,
        store.request_contact(&ask, &LIMITS, NOW_MS),
        &[(b.id, sent(&ask)), (a.id, received(&ask))],
    )
    .await;
    refused(
        store,
        &[a.id, b.id],
        store.profile(b.id, a.id),
        not_a_contact,
    )
    .await;
    refused(
        store,
        &[a.id, b.id],
        store.profile(a.id, b.id),
        not_a_contact,
    )
    .await;
    assert_eq!(info(store, b.id, a.id).await.profile_version, 0);

    // Contacts read each other's profiles (B has none) and see the version in the list.
    let answer = intro(&a, &b, "a accepts");
    notified(
        store,
        store.accept_contact(&answer, &LIMITS, NOW_MS),
        &[(a.id, accepted(&b, &answer)), (b.id, accepted(&a, &answer))],
    )
    .await;
    let seen = store.profile(b.id, a.id).await.unwrap().unwrap();
    assert_eq!(seen, v2);
    // B's device opens it with the profile key of A's acceptance.
    let (_, key) = opened(&answer, &b);
    assert_eq!(seen.open(&key, &a.id).unwrap(), body2);
    assert_eq!(store.profile(a.id, b.id).await.unwrap(), None);
    assert_eq!(info(store, b.id, a.id).await.profile_version, 2);
    assert_eq!(info(store, a.id, b.id).await.profile_version, 0);
    refused(
        store,
        &[a.id, c.id],
        store.profile(c.id, a.id),
        not_a_contact,
    )
    .await;

    let (_, v3) = profile_of(&a, "Ada Lovelace", 3);
    notified(
        store,
        store.set_profile(a.id, &v3, NOW_MS),
        &[(a.id, changed(3))],
    )
    .await;
    assert_eq!(info(store, b.id, a.id).await.profile_version, 3);
    assert_eq!(store.profile(b.id, a.id).await.unwrap(), Some(v3.clone()));
    let (_, b1) = profile_of(&b, "Bo", 1);
    notified(
        store,
        store.set_profile(b.id, &b1, NOW_MS),
        &[(b.id, changed(1))],
    )
    .await;
    assert_eq!(store.profile(a.id, b.id).await.unwrap(), Some(b1));
    assert_eq!(info(store, a.id, b.id).await.profile_version, 1);

    // Removed: not a contact any more.
    let removed = |peer: &Person, by_me| Notice::Removed {
        peer: peer.id,
        by_me,
    };
    notified(
        store,
        store.change_contact(a.id, b.id, ContactChange::Remove, &LIMITS, NOW_MS),
        &[(a.id, removed(&b, true)), (b.id, removed(&a, false))],
    )
    .await;
    refused(
        store,
        &[a.id, b.id],
        store.profile(b.id, a.id),
        not_a_contact,
    )
    .await;
    assert_eq!(store.profile(a.id, a.id).await.unwrap(), Some(v3));
    assert_eq!(own(store, &a, "a2").await, 8);

    let n = Entry::Note;
    assert_eq!(
        log_of(store, a.id).await,
        [
            own_entry("a1"),
            n(changed(1)),
            n(changed(2)),
            n(received(&ask)),
            n(accepted(&b, &answer)),
            n(changed(3)),
            n(removed(&b, true)),
            own_entry("a2"),
        ]
    );
    assert_eq!(
        log_of(store, b.id).await,
        [
            n(sent(&ask)),
            n(accepted(&a, &answer)),
            n(changed(1)),
            n(removed(&a, false)),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Presence.

/// `t` rounded down to the last-seen granularity.
fn coarse(t: u64) -> u64 {
    t - t % LAST_SEEN_GRANULARITY_S
}

async fn presence_is_mutual_and_reciprocal(db: Db) {
    let store = &*db.store;
    let (a, b, c, e) = (
        person(store).await,
        person(store).await,
        person(store).await,
        person(store).await,
    );
    befriend(store, &a, &b).await;
    befriend(store, &e, &a).await;
    let c_asks = intro(&c, &a, "c asks");
    notified(
        store,
        store.request_contact(&c_asks, &LIMITS, NOW_MS),
        &[(c.id, sent(&c_asks)), (a.id, received(&c_asks))],
    )
    .await;
    let mut a_peers = vec![b.id, e.id];
    a_peers.sort();
    assert_eq!(store.presence_peers(a.id).await.unwrap(), a_peers);
    assert_eq!(store.presence_peers(b.id).await.unwrap(), [a.id]);
    assert_eq!(store.presence_peers(e.id).await.unwrap(), [a.id]);
    assert!(store.presence_peers(c.id).await.unwrap().is_empty());

    let t = NOW_S + 1234;
    assert_ne!(
        t % LAST_SEEN_GRANULARITY_S,
        0,
        "a time that must be rounded"
    );
    // One write of many users, as the relay's write-behind makes it: strangers first, so
    // that the users looked at below are in the second statement of the batch.
    let mut seen: Vec<(UserId, u64)> = (0..600u16)
        .map(|i| {
            let mut id = [0xEE; 32];
            id[..2].copy_from_slice(&i.to_be_bytes());
            (UserId(id), t)
        })
        .collect();
    seen.extend([(b.id, t), (a.id, t + 400), (c.id, t)]);
    store.touch_last_seen(&seen).await.unwrap();
    store.touch_last_seen(&[(b.id, t - 1000)]).await.unwrap(); // never goes back
    let last_seen =
        |owner: UserId, peer: UserId| async move { info(store, owner, peer).await.last_seen };
    assert_eq!(last_seen(a.id, b.id).await, Some(coarse(t)));
    assert_eq!(last_seen(b.id, a.id).await, Some(coarse(t + 400)));
    assert_eq!(last_seen(e.id, a.id).await, Some(coarse(t + 400)));
    assert_eq!(last_seen(a.id, e.id).await, None, "never seen");
    assert_eq!(
        last_seen(a.id, c.id).await,
        None,
        "a request, not a contact"
    );
    assert_eq!(
        last_seen(c.id, a.id).await,
        None,
        "a request, not a contact"
    );
    assert!(store.contacts(a.id).await.unwrap().presence_visible);

    // A hides: nobody sees A, and A sees nobody.
    let visibility = |visible| Notice::PresenceVisibility { visible };
    notified(
        store,
        store.set_presence_visible(a.id, false, NOW_MS),
        &[(a.id, visibility(false))],
    )
    .await;
    notified(store, store.set_presence_visible(a.id, false, NOW_MS), &[]).await;
    assert!(!store.contacts(a.id).await.unwrap().presence_visible);
    for user in [a.id, b.id, e.id] {
        assert!(store.presence_peers(user).await.unwrap().is_empty());
    }
    assert_eq!(last_seen(a.id, b.id).await, None);
    assert_eq!(last_seen(b.id, a.id).await, None);
    assert_eq!(last_seen(e.id, a.id).await, None);

    // A shows again, B hides: A and E see each other only.
    notified(
        store,
        store.set_presence_visible(a.id, true, NOW_MS),
        &[(a.id, visibility(true))],
    )
    .await;
    notified(
        store,
        store.set_presence_visible(b.id, false, NOW_MS),
        &[(b.id, visibility(false))],
    )
    .await;
    store.touch_last_seen(&[(e.id, t)]).await.unwrap();
    assert_eq!(store.presence_peers(a.id).await.unwrap(), [e.id]);
    assert_eq!(store.presence_peers(e.id).await.unwrap(), [a.id]);
    assert!(store.presence_peers(b.id).await.unwrap().is_empty());
    assert_eq!(last_seen(a.id, b.id).await, None);
    assert_eq!(last_seen(b.id, a.id).await, None);
    assert_eq!(last_seen(a.id, e.id).await, Some(coarse(t)));
    assert_eq!(last_seen(e.id, a.id).await, Some(coarse(t + 400)));

    // A blocked contact still counts A as a contact (a block looks like silence), but its
    // view is one-sided now: no presence, no last seen, either way.
    let g = person(store).await;
    let (a_asks_g, g_accepts) = befriend(store, &a, &g).await;
    store.touch_last_seen(&[(g.id, t)]).await.unwrap();
    assert_eq!(last_seen(g.id, a.id).await, Some(coarse(t + 400)));
    assert_eq!(last_seen(a.id, g.id).await, Some(coarse(t)));
    let blocked = Notice::Blocked { peer: g.id };
    let change = store.change_contact(a.id, g.id, ContactChange::Block, &LIMITS, NOW_MS);
    notified(store, change, &[(a.id, blocked.clone())]).await;
    assert_eq!(states(store, g.id).await, [(a.id, ContactState::Contact)]);
    assert_eq!(last_seen(g.id, a.id).await, None);
    assert_eq!(last_seen(a.id, g.id).await, None);
    assert!(store.presence_peers(g.id).await.unwrap().is_empty());
    assert!(!store.presence_peers(a.id).await.unwrap().contains(&g.id));

    // No longer contacts: no presence.
    let removed = |peer: &Person, by_me| Notice::Removed {
        peer: peer.id,
        by_me,
    };
    notified(
        store,
        store.change_contact(e.id, a.id, ContactChange::Remove, &LIMITS, NOW_MS),
        &[(e.id, removed(&a, true)), (a.id, removed(&e, false))],
    )
    .await;
    assert!(store.presence_peers(a.id).await.unwrap().is_empty());
    assert!(store.presence_peers(e.id).await.unwrap().is_empty());
    assert_eq!(own(store, &a, "a1").await, 12);

    let a_notes = notes(&log_of(store, a.id).await);
    assert_eq!(
        a_notes[a_notes.len() - 7..],
        [
            received(&c_asks),
            visibility(false),
            visibility(true),
            sent(&a_asks_g),
            accepted(&g, &g_accepts),
            blocked,
            removed(&e, false),
        ]
    );
}

/// More mutual contacts than a SQLite relay reads as a point read: the rest come from a
/// second read, none lost, none twice, in order, and the filter holds in both reads; exactly
/// a point read's worth needs nothing more.
async fn presence_peers_beyond_one_point_read_are_all_there(db: Db) {
    let store = &*db.store;
    let (a, b) = (person(store).await, person(store).await);
    let mut people = Vec::new();
    for _ in 0..PRESENCE_PEERS_POINT_ROWS + 3 {
        let p = person(store).await;
        befriend(store, &p, &a).await;
        people.push(p);
    }
    people.sort_by_key(|p| p.id);
    for p in &people[..PRESENCE_PEERS_POINT_ROWS] {
        befriend(store, p, &b).await;
    }
    let ids = |people: &[Person]| people.iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(store.presence_peers(a.id).await.unwrap(), ids(&people));
    assert_eq!(
        store.presence_peers(b.id).await.unwrap(),
        ids(&people[..PRESENCE_PEERS_POINT_ROWS])
    );
    // One peer in each read hides its presence.
    let hidden = [1, PRESENCE_PEERS_POINT_ROWS + 1];
    for &i in &hidden {
        let hides = store.set_presence_visible(people[i].id, false, NOW_MS);
        let visibility = Notice::PresenceVisibility { visible: false };
        notified(store, hides, &[(people[i].id, visibility)]).await;
    }
    let shown: Vec<UserId> = (0..people.len())
        .filter(|i| !hidden.contains(i))
        .map(|i| people[i].id)
        .collect();
    assert_eq!(store.presence_peers(a.id).await.unwrap(), shown);
}

// ---------------------------------------------------------------------------------------------
// 9. Atomicity under an injected fault.

/// A trigger that makes every insert of an event for one user fail, installed over a
/// connection of its own (named after the user, so parallel stories never collide).
struct Fault {
    url: String,
    backend: &'static str,
    name: String,
}

async fn inject_fault(db: &Db, victim: UserId) -> Fault {
    use sqlx::Connection;
    let hex = victim.to_hex();
    // PostgreSQL truncates names at 63 bytes: 128 random bits of the id are plenty.
    let name = format!("ferry_fault_{}", &hex[..32]);
    let backend = db.store.backend();
    match backend {
        "sqlite" => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            let ddl = format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON events WHEN NEW.user_id = X'{hex}'
                 BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            );
            sqlx::raw_sql(&ddl).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
        "postgres" => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let ddl = format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
                 CREATE TRIGGER {name} BEFORE INSERT ON events FOR EACH ROW
                     WHEN (NEW.user_id = '\\x{hex}'::bytea) EXECUTE FUNCTION {name}();"
            );
            sqlx::raw_sql(&ddl).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
        other => panic!("unknown backend {other}"),
    }
    Fault {
        url: db.url.clone(),
        backend,
        name,
    }
}

impl Fault {
    async fn remove(self) {
        use sqlx::Connection;
        let name = &self.name;
        if self.backend == "sqlite" {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            let ddl = format!("DROP TRIGGER {name}");
            sqlx::raw_sql(&ddl).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        } else {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            let ddl = format!("DROP TRIGGER {name} ON events; DROP FUNCTION {name}();");
            sqlx::raw_sql(&ddl).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
    }
}

fn is_injected<T: Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Database(e)) if e.to_string().contains("injected fault"))
}

async fn a_failed_notice_rolls_back_the_whole_operation(db: Db) {
    let store = &*db.store;
    let (a, victim, w, r) = (
        person(store).await,
        person(store).await,
        person(store).await,
        person(store).await,
    );
    let limits = PeopleLimits {
        requests_per_day: 2,
        ..LIMITS
    };
    assert_eq!(own(store, &a, "a1").await, 1);
    assert_eq!(own(store, &victim, "v1").await, 1);
    let to_w = intro(&a, &w, "w");
    notified(
        store,
        store.request_contact(&to_w, &limits, NOW_MS),
        &[(a.id, sent(&to_w)), (w.id, received(&to_w))],
    )
    .await;
    let victim_asks = intro(&victim, &r, "r");
    notified(
        store,
        store.request_contact(&victim_asks, &limits, NOW_MS),
        &[
            (victim.id, sent(&victim_asks)),
            (r.id, received(&victim_asks)),
        ],
    )
    .await;

    let fault = inject_fault(&db, victim.id).await;
    // The fault hits the victim's events only.
    assert_eq!(own(store, &a, "a2").await, 3);
    let victims_append = store
        .append_batch(&[req(victim.id, victim.key.id(), 2, "v2")], NOW_MS)
        .await;
    let before = snapshot(store, &[a.id, victim.id, w.id, r.id]).await;
    // A's notice is written first, then the victim's fails: both must be rolled back, with
    // the rows and A's daily request count.
    let to_victim = intro(&a, &victim, "to the victim");
    let request = store.request_contact(&to_victim, &limits, NOW_MS).await;
    // R's acceptance: R's notice first, then the victim's.
    let r_accepts = intro(&r, &victim, "welcome");
    let accept = store.accept_contact(&r_accepts, &limits, NOW_MS).await;
    let after = snapshot(store, &[a.id, victim.id, w.id, r.id]).await;
    fault.remove().await;

    assert!(is_injected(&victims_append), "{victims_append:?}");
    assert!(is_injected(&request), "{request:?}");
    assert!(is_injected(&accept), "{accept:?}");
    assert_eq!(after, before, "a failed operation leaves no trace");
    assert_eq!(states(store, a.id).await, [(w.id, ContactState::Outgoing)]);
    assert_eq!(
        states(store, victim.id).await,
        [(r.id, ContactState::Outgoing)]
    );
    assert_eq!(
        states(store, r.id).await,
        [(victim.id, ContactState::Incoming)]
    );
    assert!(!store.chain_visible(a.id, victim.id).await.unwrap());

    // Without the fault the same operations go through; the failed request was not counted
    // against A's day (this is its second request), the next one is.
    notified(
        store,
        store.request_contact(&to_victim, &limits, NOW_MS),
        &[(a.id, sent(&to_victim)), (victim.id, received(&to_victim))],
    )
    .await;
    refused(
        store,
        &[a.id, r.id],
        store.request_contact(&intro(&a, &r, "third"), &limits, NOW_MS),
        ErrorCode::RequestLimit,
    )
    .await;
    notified(
        store,
        store.accept_contact(&r_accepts, &limits, NOW_MS),
        &[
            (r.id, accepted(&victim, &r_accepts)),
            (victim.id, accepted(&r, &r_accepts)),
        ],
    )
    .await;
    assert_eq!(own(store, &victim, "v2").await, 5);

    let n = Entry::Note;
    assert_eq!(
        log_of(store, a.id).await,
        [
            own_entry("a1"),
            n(sent(&to_w)),
            own_entry("a2"),
            n(sent(&to_victim)),
        ]
    );
    assert_eq!(
        log_of(store, victim.id).await,
        [
            own_entry("v1"),
            n(sent(&victim_asks)),
            n(received(&to_victim)),
            n(accepted(&r, &r_accepts)),
            own_entry("v2"),
        ]
    );
    assert_eq!(
        log_of(store, r.id).await,
        [n(received(&victim_asks)), n(accepted(&victim, &r_accepts))]
    );
}

/// An acceptance that reaches the requester respects the requester's contact limit too
/// (accepting, and asking back); a request to an id without a device chain is refused and
/// starts no log.
async fn the_requesters_limit_counts_and_nobody_is_asked_without_a_chain(db: Db) {
    let store = &*db.store;
    let (c, d, e) = (
        person(store).await,
        person(store).await,
        person(store).await,
    );
    let all = [c.id, d.id, e.id];
    let one = PeopleLimits {
        contacts: 1,
        ..LIMITS
    };
    // D asks C, then becomes E's contact: D is full.
    let d_asks_c = intro(&d, &c, "c?");
    notified(
        store,
        store.request_contact(&d_asks_c, &one, NOW_MS),
        &[(d.id, sent(&d_asks_c)), (c.id, received(&d_asks_c))],
    )
    .await;
    let e_asks_d = intro(&e, &d, "d?");
    notified(
        store,
        store.request_contact(&e_asks_d, &one, NOW_MS),
        &[(e.id, sent(&e_asks_d)), (d.id, received(&e_asks_d))],
    )
    .await;
    let d_accepts_e = intro(&d, &e, "ok");
    notified(
        store,
        store.accept_contact(&d_accepts_e, &one, NOW_MS),
        &[
            (d.id, accepted(&e, &d_accepts_e)),
            (e.id, accepted(&d, &d_accepts_e)),
        ],
    )
    .await;
    // C accepting D's request would give D a second contact: refused, nothing written.
    refused(
        store,
        &all,
        store.accept_contact(&intro(&c, &d, "ok"), &one, NOW_MS),
        ErrorCode::ContactLimit,
    )
    .await;
    // Asking back is accepting: refused the same way.
    refused(
        store,
        &all,
        store.request_contact(&intro(&c, &d, "ok"), &one, NOW_MS),
        ErrorCode::ContactLimit,
    )
    .await;
    assert_eq!(
        states(store, d.id).await,
        sorted_states(vec![
            (c.id, ContactState::Outgoing),
            (e.id, ContactState::Contact)
        ])
    );

    // A user id nobody holds (no chain): refused, and no log is started for it.
    let ghost = user();
    let ghost_person = Person {
        id: ghost,
        key: DeviceKey::generate(&mut OsRng),
        exchange: ExchangeSecret::generate(&mut OsRng),
        profile_key: ProfileKey::from_bytes(&random_bytes()),
        sent: AtomicU64::new(0),
    };
    refused(
        store,
        &[c.id],
        store.request_contact(&intro(&c, &ghost_person, "anyone?"), &one, NOW_MS),
        ErrorCode::NoSuchContact,
    )
    .await;
    assert!(log_of(store, ghost).await.is_empty());
    assert_eq!(store.log_bounds(ghost).await.unwrap().head, 0);
}

/// A card is stored only about a user one has a row or a block with, replaces the previous
/// one, comes back with the list (for blocks too) and outlives a removal; blocks are bounded.
async fn cards_are_kept_for_related_users_only_and_blocks_are_bounded(db: Db) {
    use ferry_protocol::people::SealedCard;
    let store = &*db.store;
    let (a, b, c) = (
        person(store).await,
        person(store).await,
        person(store).await,
    );
    let card = |n: u8| SealedCard {
        epoch: 0,
        nonce: [n; 24],
        ciphertext: vec![n; 40],
    };
    let card_of = |list: &ContactList, peer: UserId| {
        list.contacts
            .iter()
            .find(|info| info.user == peer)
            .and_then(|info| info.card.clone())
    };
    // A stranger: refused.
    assert!(matches!(
        store.set_card(a.id, b.id, &card(1), NOW_MS).await,
        Err(StoreError::Refused(ErrorCode::NoSuchContact))
    ));
    let to_b = intro(&a, &b, "hi");
    notified(
        store,
        store.request_contact(&to_b, &LIMITS, NOW_MS),
        &[(a.id, sent(&to_b)), (b.id, received(&to_b))],
    )
    .await;
    store.set_card(a.id, b.id, &card(1), NOW_MS).await.unwrap();
    store.set_card(a.id, b.id, &card(2), NOW_MS).await.unwrap();
    store.set_card(b.id, a.id, &card(3), NOW_MS).await.unwrap();
    assert_eq!(
        card_of(&store.contacts(a.id).await.unwrap(), b.id),
        Some(card(2))
    );
    assert_eq!(
        card_of(&store.contacts(b.id).await.unwrap(), a.id),
        Some(card(3))
    );
    // Withdrawn: the card stays (a pin outlives the relation) and can still be replaced.
    let _notified = store
        .change_contact(a.id, b.id, ContactChange::Cancel, &LIMITS, NOW_MS)
        .await
        .unwrap();
    store.set_card(a.id, b.id, &card(4), NOW_MS).await.unwrap();
    // A block: the card comes back with the blocked entry.
    let _notified = store
        .change_contact(a.id, b.id, ContactChange::Block, &LIMITS, NOW_MS)
        .await
        .unwrap();
    assert_eq!(
        card_of(&store.contacts(a.id).await.unwrap(), b.id),
        Some(card(4))
    );
    // Blocks are bounded: one allowed, a second refused with nothing written; blocking the
    // same user again is not a new block.
    let one = PeopleLimits {
        blocks: 1,
        ..LIMITS
    };
    let _notified = store
        .change_contact(a.id, b.id, ContactChange::Block, &one, NOW_MS)
        .await
        .unwrap();
    refused(
        store,
        &[a.id, c.id],
        store.change_contact(a.id, c.id, ContactChange::Block, &one, NOW_MS),
        ErrorCode::BlockLimit,
    )
    .await;
    assert!(!store.is_blocked(a.id, c.id).await.unwrap());
}

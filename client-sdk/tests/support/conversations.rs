//! Conversations through the SDK, for the suites that check what every device heard: a
//! device that keeps every conversation event it was given (so "once, in order" is checked
//! on the whole record, not on what a wait happened to see), users with two devices on one
//! relay or on two nodes (their handles unique even on a shared database), the transcript of
//! what was sent, and the MLS state a device saved (its epoch and epoch authenticator,
//! compared across devices: the SDK does not expose them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_client::{
    CallEvent, Client, ClientEvent, ClientHandle, ConvId, ConversationEvent, DeviceId, PeopleEvent,
    StoredMessage, UserId,
};

use super::{TestRelay, WAIT, another_device, device_key_of, fast, new_user, open_when_free};

/// One device, and every conversation event it was given.
pub struct Dev {
    pub name: String,
    pub client: Client,
    pub dir: PathBuf,
    /// Every conversation event the app was given, in order.
    pub heard: Vec<ConversationEvent>,
    /// How far [`Dev::until`] has looked in `heard`.
    taken: usize,
    /// Every call event the app was given, in order.
    pub calls: Vec<CallEvent>,
    /// How far [`Dev::until_call`] has looked in `calls`.
    calls_taken: usize,
}

impl Dev {
    /// Opens the state in `dir` (waiting for a client closing it) and connects.
    pub async fn connect(name: &str, dir: &Path) -> Dev {
        let state = open_when_free(dir).await;
        let client = Client::connect(state, fast()).await.unwrap();
        Dev {
            name: name.to_owned(),
            client,
            dir: dir.to_owned(),
            heard: Vec::new(),
            taken: 0,
            calls: Vec::new(),
            calls_taken: 0,
        }
    }

    pub fn handle(&self) -> ClientHandle {
        self.client.handle()
    }

    pub fn id(&self) -> DeviceId {
        self.client.device_id()
    }

    /// Closes the client (this device goes offline); its folder, to connect again.
    pub async fn close(self) -> PathBuf {
        drop(self.client.close().await.unwrap());
        self.dir
    }

    /// The next event of the client; conversation events are kept in `heard`.
    async fn next(&mut self, what: &str) -> ClientEvent {
        match tokio::time::timeout(WAIT, self.client.next_event()).await {
            Ok(Ok(event)) => {
                if let ClientEvent::Conversation(e) = &event {
                    self.heard.push(e.clone());
                }
                if let ClientEvent::Call(e) = &event {
                    self.calls.push(e.clone());
                }
                event
            }
            Ok(Err(e)) => panic!("{}: waiting for {what}: {e:?}", self.name),
            Err(_) => panic!("{}: no {what} within {WAIT:?}", self.name),
        }
    }

    /// The next conversation event matching `want` after the last one this returned (those
    /// heard meanwhile included; others are passed over, and stay in `heard`).
    pub async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&ConversationEvent) -> bool,
    ) -> ConversationEvent {
        loop {
            if let Some(at) = self.heard[self.taken..].iter().position(&want) {
                self.taken += at + 1;
                return self.heard[self.taken - 1].clone();
            }
            self.next(what).await;
        }
    }

    /// The next call event matching `want` after the last one this returned, as
    /// [`Dev::until`].
    pub async fn until_call(&mut self, what: &str, want: impl Fn(&CallEvent) -> bool) -> CallEvent {
        loop {
            if let Some(at) = self.calls[self.calls_taken..].iter().position(&want) {
                self.calls_taken += at + 1;
                return self.calls[self.calls_taken - 1].clone();
            }
            self.next(what).await;
        }
    }

    /// Waits for the next `CaughtUp`.
    pub async fn caught_up(&mut self) {
        while !matches!(self.next("CaughtUp").await, ClientEvent::CaughtUp { .. }) {}
    }

    /// Waits for the people event `event`.
    pub async fn people(&mut self, event: PeopleEvent) {
        let what = format!("{event:?}");
        loop {
            if let ClientEvent::People(got) = self.next(&what).await
                && got == event
            {
                return;
            }
        }
    }

    pub async fn joined(&mut self, conv: ConvId) {
        self.until(
            "Joined",
            |e| matches!(e, ConversationEvent::Joined { conv: c, .. } if *c == conv),
        )
        .await;
    }

    pub async fn left(&mut self, conv: ConvId) {
        self.until(
            "Left",
            |e| matches!(e, ConversationEvent::Left { conv: c } if *c == conv),
        )
        .await;
    }

    /// Waits until this device holds the message at `conv_seq` of `conv`: heard (once it
    /// was sent by another device), or sent by this one.
    pub async fn message(&mut self, conv: ConvId, conv_seq: u64) -> StoredMessage {
        let own = self
            .handle()
            .history(conv, 0, usize::MAX)
            .await
            .into_iter()
            .find(|m| m.conv_seq == conv_seq && m.device == self.id());
        if let Some(own) = own {
            return own;
        }
        let what = format!("message {conv_seq} of {conv}");
        loop {
            let found = self.heard.iter().find_map(|e| match e {
                ConversationEvent::Message(m) if m.conv == conv && m.conv_seq == conv_seq => {
                    Some(m.clone())
                }
                _ => None,
            });
            if let Some(m) = found {
                return m;
            }
            self.next(&what).await;
        }
    }

    /// Waits until this device heard every message of `said` after `after` that another
    /// device sent (so it has processed everything up to the last of them).
    pub async fn read_all(&mut self, conv: ConvId, said: &Transcript, after: u64) {
        let want = said.heard_by(self, after);
        loop {
            let heard = self.heard_messages(conv);
            let missing: Vec<_> = want.iter().filter(|m| !heard.contains(m)).collect();
            if missing.is_empty() {
                return;
            }
            let what = format!("{missing:?} in {conv} (heard {heard:?})");
            self.next(&what).await;
        }
    }

    /// The messages of `conv` the app was given, in the order it was given them.
    pub fn heard_messages(&self, conv: ConvId) -> Vec<(u64, String)> {
        self.heard
            .iter()
            .filter_map(|e| match e {
                ConversationEvent::Message(m) if m.conv == conv => {
                    Some((m.conv_seq, m.text().to_owned()))
                }
                _ => None,
            })
            .collect()
    }

    /// What `history` shows of `conv`.
    pub async fn history(&self, conv: ConvId) -> Vec<(u64, String)> {
        self.handle()
            .history(conv, 0, usize::MAX)
            .await
            .into_iter()
            .map(|m| (m.conv_seq, m.text().to_owned()))
            .collect()
    }

    /// This device's MLS state as it saved it.
    pub fn mls(&self) -> ferry_mls::Member {
        saved_member(&self.dir)
    }

    /// This device's epoch of `conv` and its epoch authenticator, as saved.
    pub fn epoch(&self, conv: ConvId) -> (u64, Vec<u8>) {
        let mls = self.mls();
        let epoch = mls.epoch(&conv.0).unwrap();
        (epoch, mls.epoch_authenticator(&conv.0).unwrap())
    }
}

/// The MLS state a device saved in `dir`. The `conversations` file is postcard of
/// `{ format, book, member }`, the member's bytes last (a length, then the bytes, to the end
/// of the file); the book before them is found by that length rather than decoded, so the
/// book's layout is the SDK's to change. `Member::from_bytes` checks the state's digest.
pub fn saved_member(dir: &Path) -> ferry_mls::Member {
    let bytes = std::fs::read(dir.join("conversations")).unwrap();
    let key = device_key_of(dir);
    for start in 0..bytes.len() {
        let Some((len, used)) = varint(&bytes[start..]) else {
            continue;
        };
        if (start + used).checked_add(len) == Some(bytes.len())
            && let Ok(member) = ferry_mls::Member::from_bytes(&bytes[start + used..], &key)
        {
            return member;
        }
    }
    panic!("no MLS state in {}", dir.join("conversations").display());
}

/// A postcard (LEB128) length at the start of `bytes`, and the bytes it took.
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((usize::try_from(value).ok()?, i + 1));
        }
    }
    None
}

/// Every device in `devs` is at the same epoch of `conv` with the same epoch authenticator
/// (the same history of the group); returns the epoch.
pub fn same_epoch(devs: &[&Dev], conv: ConvId) -> u64 {
    let (epoch, authenticator) = devs[0].epoch(conv);
    for dev in &devs[1..] {
        let (theirs, their_authenticator) = dev.epoch(conv);
        assert_eq!(
            (theirs, &their_authenticator),
            (epoch, &authenticator),
            "{} and {} disagree on the epoch of {conv}",
            devs[0].name,
            dev.name
        );
    }
    epoch
}

/// A user with two devices: the first talks to `first`, the second to `second` (the same
/// relay, or two nodes of one cluster sharing the relay key). Both caught up once, so their
/// KeyPackages are at the relay. Its handle's name is made unique (`name_` and random hex):
/// a name has only a hundred numbers, and a database may be shared by many runs.
pub struct Person {
    pub user: UserId,
    pub handle: String,
    pub one: Dev,
    pub two: Dev,
}

pub async fn person(dir: &Path, first: &TestRelay, second: &TestRelay, name: &str) -> Person {
    let one_dir = dir.join(format!("{name}1"));
    let state = new_user(&one_dir, first, name).await;
    let user = state.user_id();
    let two_dir = dir.join(format!("{name}2"));
    drop(another_device(&state, &two_dir, &format!("{name}-two")).await);
    drop(state);
    super::repoint(&two_dir, &second.url(), second.relay_id);
    let mut one = Dev::connect(&format!("{name}.one"), &one_dir).await;
    let mut two = Dev::connect(&format!("{name}.two"), &two_dir).await;
    one.caught_up().await;
    two.caught_up().await;
    let unique = format!(
        "{name}_{:08x}",
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    );
    let handle = one.handle().set_handle(&unique).await.unwrap();
    Person {
        user,
        handle,
        one,
        two,
    }
}

impl Person {
    pub fn devs(&self) -> [&Dev; 2] {
        [&self.one, &self.two]
    }

    /// Both devices joined `conv`.
    pub async fn joined(&mut self, conv: ConvId) {
        self.one.joined(conv).await;
        self.two.joined(conv).await;
    }

    /// Both devices left `conv`.
    pub async fn left(&mut self, conv: ConvId) {
        self.one.left(conv).await;
        self.two.left(conv).await;
    }

    /// Both devices heard every message of `said` after `after` that another device sent
    /// ([`Dev::read_all`]).
    pub async fn read_all(&mut self, conv: ConvId, said: &Transcript, after: u64) {
        self.one.read_all(conv, said, after).await;
        self.two.read_all(conv, said, after).await;
    }
}

/// `a` finds `b` by its handle and asks, `b` accepts.
pub async fn befriend(a: &mut Person, b: &mut Person) {
    let found = a
        .one
        .handle()
        .request_contact_by_handle(&b.handle, "hi")
        .await
        .unwrap();
    assert_eq!(found, b.user);
    b.one
        .people(PeopleEvent::RequestReceived {
            from: a.user,
            note: Some("hi".into()),
        })
        .await;
    b.one.handle().accept_contact(a.user).await.unwrap();
    a.one.people(PeopleEvent::Accepted { user: b.user }).await;
}

/// What was sent to a conversation: `conv_seq` to the sending device and the text.
#[derive(Default)]
pub struct Transcript(pub BTreeMap<u64, (DeviceId, String)>);

impl Transcript {
    /// `dev` sends `text` to `conv`; returns its `conv_seq`.
    pub async fn say(&mut self, dev: &Dev, conv: ConvId, text: &str) -> u64 {
        let seq = dev.handle().send_text(conv, text).await.unwrap();
        let before = self.0.insert(seq, (dev.id(), text.to_owned()));
        assert!(before.is_none(), "{seq} given twice");
        seq
    }

    /// Every message, in order.
    pub fn all(&self) -> Vec<(u64, String)> {
        self.0
            .iter()
            .map(|(seq, (_, text))| (*seq, text.clone()))
            .collect()
    }

    /// The messages after `after` that `dev` did not send (what it hears), in order.
    pub fn heard_by(&self, dev: &Dev, after: u64) -> Vec<(u64, String)> {
        self.0
            .range(after + 1..)
            .filter(|(_, (device, _))| *device != dev.id())
            .map(|(seq, (_, text))| (*seq, text.clone()))
            .collect()
    }

    /// The last `conv_seq` given.
    pub fn last(&self) -> u64 {
        self.0.keys().next_back().copied().unwrap_or(0)
    }
}

/// Alice and Bob (two devices each), contacts, in a 1:1 that Alice opened and every device
/// joined, on one relay. Bind every field: the relay and the folders live as long as they.
pub struct TwoInAChat {
    pub relay: TestRelay,
    pub alice: Person,
    pub bob: Person,
    pub conv: ConvId,
    pub dir: tempfile::TempDir,
}

/// See [`TwoInAChat`].
pub async fn two_in_a_chat() -> TwoInAChat {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let mut alice = person(dir.path(), &relay, &relay, "alice").await;
    let mut bob = person(dir.path(), &relay, &relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    let conv = alice.one.handle().start_chat(bob.user).await.unwrap();
    alice.two.joined(conv).await;
    bob.joined(conv).await;
    TwoInAChat {
        relay,
        alice,
        bob,
        conv,
        dir,
    }
}

//! A device that talks in conversations: a session of the test client ([`Client`]) with real
//! MLS state (`ferry_mls::Member`), driven frame by frame. It keeps what the relay pushes
//! while it waits for an answer (log events, conversation heads, read markers, ephemerals),
//! reads conversations from its own cursors and keeps the transcript it decrypted.

use std::collections::HashMap;
use std::net::SocketAddr;

use ferry_mls::{GroupKind, GroupPolicy, Incoming, Member};
use ferry_protocol::conversations::{ConvId, ConvMessage, ConvSend, ConvSummary, Direction};
use ferry_protocol::people::{Intro, IntroBody, Notice, ProfileKey, RELAY_DEVICE};
use ferry_protocol::{
    ClientFrame, DeviceId, ErrorCode, Event, MessageClass, RelayId, ServerFrame, UserId,
};
use rand_core::{OsRng, RngCore};

use super::client::{Client, Identity};
use super::node::next_frame;

/// Alice and Bob (new users, one device each keeping `packages` KeyPackages), contacts, in
/// a 1:1 Alice opened, both joined.
pub async fn one_to_one(
    addr: SocketAddr,
    relay: RelayId,
    packages: usize,
) -> (Talker, Talker, ConvId) {
    let mut a = Talker::connect(addr, relay, &Identity::new_user(), packages).await;
    let mut b = Talker::connect(addr, relay, &Identity::new_user(), packages).await;
    befriend(&mut a, &mut b).await;
    let conv = a.create(GroupKind::OneToOne, Vec::new()).await;
    let bob = b.user();
    assert_eq!(a.add_users(conv, &[bob]).await, 1);
    b.join(conv).await;
    (a, b, conv)
}

/// One line of a conversation as a device holds it: (conv_seq, sending device, text).
pub type Line = (u64, DeviceId, Vec<u8>);

/// A device in conversations (see the module docs).
pub struct Talker {
    pub id: Identity,
    pub client: Client,
    pub mls: Member,
    /// The next `device_seq` for conversation sends (one counter for all conversations).
    pub next_seq: u64,
    /// How far this device has read each conversation.
    pub cursors: HashMap<ConvId, u64>,
    /// Log events received (the user's own log: notices included).
    pub log: Vec<Event>,
    /// Pushed frames kept while waiting for answers (heads, markers, ephemerals, presence).
    pub pushed: Vec<ServerFrame>,
    /// What it decrypted (and sent) per conversation, in conv_seq order.
    pub transcript: HashMap<ConvId, Vec<Line>>,
    /// The epoch each conversation was joined at: application messages of earlier epochs
    /// (sent while the commit that added this device was on its way) cannot be opened, and
    /// are skipped (as an app would).
    pub joined_epoch: HashMap<ConvId, u64>,
    /// Messages skipped that way.
    pub skipped: Vec<(ConvId, u64)>,
}

impl Talker {
    /// Connects `id`, replays its log and uploads `packages` KeyPackages and a last-resort one.
    pub async fn connect(addr: SocketAddr, relay: RelayId, id: &Identity, packages: usize) -> Self {
        let client = Client::connect(addr, relay, id, None).await.unwrap();
        let mut talker = Self {
            mls: Member::new(id.user.id(), &id.device),
            id: id.clone(),
            client,
            next_seq: 1,
            cursors: HashMap::new(),
            log: Vec::new(),
            pushed: Vec::new(),
            transcript: HashMap::new(),
            joined_epoch: HashMap::new(),
            skipped: Vec::new(),
        };
        let (events, _) = talker.client.replay().await;
        talker.log.extend(events);
        if packages > 0 {
            let count = talker.upload(packages).await;
            assert_eq!(count, packages as u64);
        }
        talker
    }

    pub fn user(&self) -> UserId {
        self.id.user.id()
    }

    pub fn device(&self) -> DeviceId {
        self.id.device.id()
    }

    /// Uploads `n` one-use packages and a last-resort one; returns the relay's count.
    pub async fn upload(&mut self, n: usize) -> u64 {
        let packages = self.mls.key_packages(n).unwrap();
        let last_resort = self.mls.last_resort_key_package().unwrap();
        let frame = ClientFrame::KeyPackagesUpload {
            packages: packages.into_iter().map(Into::into).collect(),
            last_resort: Some(last_resort.into()),
        };
        match self.ask(&frame).await {
            ServerFrame::KeyPackageCount { count } => count,
            other => panic!("upload answered {other:?}"),
        }
    }

    /// Sends `frame` and returns its answer, keeping pushed frames aside.
    pub async fn ask(&mut self, frame: &ClientFrame) -> ServerFrame {
        self.client.send(frame).await;
        self.answer().await
    }

    /// The next frame that answers a request (pushed frames are kept aside).
    pub async fn answer(&mut self) -> ServerFrame {
        loop {
            match next_frame(&mut self.client).await.expect("connection open") {
                ServerFrame::Events(events) => self.log.extend(events),
                pushed @ (ServerFrame::ConvHead { .. }
                | ServerFrame::ConvReadBy { .. }
                | ServerFrame::ConvEphemeral { .. }
                | ServerFrame::Presence { .. }
                | ServerFrame::CaughtUp { .. }) => self.pushed.push(pushed),
                answer => return answer,
            }
        }
    }

    /// Waits until a pushed frame matches `want` (kept frames first), and takes it.
    pub async fn pushed_frame(&mut self, want: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            if let Some(i) = self.pushed.iter().position(&want) {
                return self.pushed.remove(i);
            }
            match next_frame(&mut self.client).await.expect("connection open") {
                ServerFrame::Events(events) => self.log.extend(events),
                frame => self.pushed.push(frame),
            }
        }
    }

    /// Sends one conversation message; returns the relay's answer.
    pub async fn send(
        &mut self,
        conv: ConvId,
        class: MessageClass,
        epoch: u64,
        message: Vec<u8>,
        welcome: Option<Vec<u8>>,
        group_info: Option<Vec<u8>>,
    ) -> ServerFrame {
        let device_seq = self.next_seq;
        self.next_seq += 1;
        let send = ConvSend {
            conv,
            device_seq,
            epoch,
            class,
            message,
            welcome: welcome.map(Into::into),
            group_info: group_info.map(Into::into),
            attachments: Vec::new(),
        };
        self.ask(&ClientFrame::ConvSend(Box::new(send))).await
    }

    /// `text` encrypted for `conv` at this device's epoch, as a content message under
    /// `device_seq` (built, not sent).
    pub fn content(&mut self, conv: ConvId, device_seq: u64, text: &[u8]) -> ConvSend {
        ConvSend {
            conv,
            device_seq,
            epoch: self.mls.epoch(&conv.0).unwrap(),
            class: MessageClass::Content,
            message: self.mls.encrypt(&conv.0, text).unwrap(),
            welcome: None,
            group_info: None,
            attachments: Vec::new(),
        }
    }

    /// Creates a conversation alone (epoch 0).
    pub async fn create(&mut self, kind: GroupKind, admins: Vec<UserId>) -> ConvId {
        let mut id = [0; 16];
        OsRng.fill_bytes(&mut id);
        let conv = ConvId(id);
        let group_info = self
            .mls
            .create_group(&conv.0, GroupPolicy { kind, admins })
            .unwrap();
        let answer = self
            .ask(&ClientFrame::ConvCreate { conv, group_info })
            .await;
        assert_eq!(answer, ServerFrame::ConvCreated { conv });
        self.cursors.insert(conv, 0);
        conv
    }

    /// Claims a KeyPackage of every active device of `user` (this device's own left out).
    pub async fn claim(&mut self, user: UserId) -> Result<Vec<Vec<u8>>, ErrorCode> {
        match self.ask(&ClientFrame::KeyPackagesClaim { user }).await {
            ServerFrame::KeyPackagesClaimed {
                user: got,
                packages,
            } => {
                assert_eq!(got, user);
                Ok(packages.into_iter().map(|p| p.package).collect())
            }
            ServerFrame::Error(e) => Err(e.code),
            other => panic!("claim answered {other:?}"),
        }
    }

    /// Commits `change` (made by `make`) at the group's epoch and merges it if the relay
    /// stored it. Returns the relay's answer.
    pub async fn commit(
        &mut self,
        conv: ConvId,
        make: impl FnOnce(&mut Member) -> ferry_mls::CommitOut,
    ) -> ServerFrame {
        let epoch = self.mls.epoch(&conv.0).unwrap();
        let out = make(&mut self.mls);
        let answer = self
            .send(
                conv,
                MessageClass::Commit,
                epoch,
                out.commit,
                out.welcome,
                Some(out.group_info),
            )
            .await;
        match &answer {
            ServerFrame::ConvSent { conv_seq, .. } => {
                self.mls.merge_pending(&conv.0).unwrap();
                self.cursors.insert(conv, *conv_seq);
            }
            _ => self.mls.discard_pending(&conv.0).unwrap(),
        }
        answer
    }

    /// Adds every device of `users` (claimed now) to `conv`; panics unless stored.
    pub async fn add_users(&mut self, conv: ConvId, users: &[UserId]) -> u64 {
        let mut packages = Vec::new();
        for user in users {
            packages.extend(self.claim(*user).await.unwrap());
        }
        self.sync(conv).await;
        match self
            .commit(conv, |mls| mls.add(&conv.0, &packages).unwrap())
            .await
        {
            ServerFrame::ConvSent { conv_seq, .. } => conv_seq,
            other => panic!("adding {users:?} answered {other:?}"),
        }
    }

    /// Waits for the Welcome to `conv` in this user's log and joins.
    pub async fn join(&mut self, conv: ConvId) {
        loop {
            let found = self.log.iter().find_map(|event| {
                if event.device != RELAY_DEVICE {
                    return None;
                }
                match Notice::from_payload(&event.payload.0) {
                    Ok(Notice::Welcome {
                        conv: c,
                        conv_seq,
                        welcome,
                    }) if c == conv => Some((conv_seq, welcome)),
                    _ => None,
                }
            });
            if let Some((conv_seq, welcome)) = found {
                let joined = self.mls.join(&welcome).unwrap();
                assert_eq!(joined, conv.0.to_vec());
                let epoch = self.mls.epoch(&conv.0).unwrap();
                self.joined_epoch.insert(conv, epoch);
                self.cursors.insert(conv, conv_seq);
                return;
            }
            match next_frame(&mut self.client).await.expect("connection open") {
                ServerFrame::Events(events) => self.log.extend(events),
                frame => self.pushed.push(frame),
            }
        }
    }

    /// Reads frames until the log holds a removal notice for `conv`.
    pub async fn wait_removed(&mut self, conv: ConvId) {
        while !self.removed_from(conv) {
            match next_frame(&mut self.client).await.expect("connection open") {
                ServerFrame::Events(events) => self.log.extend(events),
                frame => self.pushed.push(frame),
            }
        }
    }

    /// Whether the log holds a removal notice for `conv`.
    pub fn removed_from(&self, conv: ConvId) -> bool {
        self.log.iter().any(|event| {
            event.device == RELAY_DEVICE
                && matches!(
                    Notice::from_payload(&event.payload.0),
                    Ok(Notice::RemovedFromConversation { conv: c, .. }) if c == conv
                )
        })
    }

    /// The conversation's latest GroupInfo and its epoch (panics on a refusal).
    pub async fn group_info(&mut self, conv: ConvId) -> (u64, Vec<u8>) {
        match self.ask(&ClientFrame::GroupInfoFetch { conv }).await {
            ServerFrame::GroupInfo {
                epoch, group_info, ..
            } => (epoch, group_info),
            other => panic!("GroupInfoFetch answered {other:?}"),
        }
    }

    /// Joins `conv` by external commit from its GroupInfo (its own state for the group, if
    /// any, is dropped first), and reads on from that commit. Returns the commit's conv_seq.
    pub async fn rejoin(&mut self, conv: ConvId) -> u64 {
        if self.mls.is_active(&conv.0).unwrap_or(false) {
            self.mls.forget(&conv.0).unwrap();
        }
        let (epoch, group_info) = self.group_info(conv).await;
        let (joined, out) = self.mls.join_external(&group_info).unwrap();
        assert_eq!(joined, conv.0.to_vec());
        let (commit, info) = (out.commit, Some(out.group_info));
        let answer = self
            .send(conv, MessageClass::Commit, epoch, commit, None, info)
            .await;
        let ServerFrame::ConvSent { conv_seq, .. } = answer else {
            panic!("the external commit answered {answer:?}");
        };
        self.mls.merge_pending(&conv.0).unwrap();
        self.cursors.insert(conv, conv_seq);
        self.joined_epoch.insert(conv, epoch + 1);
        conv_seq
    }

    /// Encrypts and sends `text` as content; returns its conv_seq.
    pub async fn say(&mut self, conv: ConvId, text: &str) -> u64 {
        self.say_as(conv, MessageClass::Content, text).await
    }

    /// Encrypts and sends `text` with `class`; returns its conv_seq.
    pub async fn say_as(&mut self, conv: ConvId, class: MessageClass, text: &str) -> u64 {
        let epoch = self.mls.epoch(&conv.0).unwrap();
        let message = self.mls.encrypt(&conv.0, text.as_bytes()).unwrap();
        match self.send(conv, class, epoch, message, None, None).await {
            ServerFrame::ConvSent { conv_seq, .. } => {
                let me = self.device();
                self.transcript.entry(conv).or_default().push((
                    conv_seq,
                    me,
                    text.as_bytes().to_vec(),
                ));
                conv_seq
            }
            other => panic!("saying {text:?} answered {other:?}"),
        }
    }

    /// One page of `conv` from `from` in `direction`.
    pub async fn page(
        &mut self,
        conv: ConvId,
        from: u64,
        direction: Direction,
        limit: u16,
    ) -> Result<(Vec<ConvMessage>, bool), ErrorCode> {
        let frame = ClientFrame::ConvFetch {
            conv,
            from,
            direction,
            limit,
        };
        match self.ask(&frame).await {
            ServerFrame::ConvMessages {
                conv: got,
                messages,
                more,
            } => {
                assert_eq!(got, conv);
                Ok((messages, more))
            }
            ServerFrame::Error(e) => Err(e.code),
            other => panic!("fetch answered {other:?}"),
        }
    }

    /// Reads `conv` from this device's cursor to the head, processing every message of
    /// others in order (its own are known already), then acknowledges. Returns what it read.
    pub async fn sync(&mut self, conv: ConvId) -> Vec<ConvMessage> {
        let mut read = Vec::new();
        loop {
            let cursor = self.cursors.get(&conv).copied().unwrap_or(0);
            let (messages, more) = self
                .page(conv, cursor, Direction::Forward, 100)
                .await
                .unwrap_or_else(|code| panic!("{:?} cannot read {conv}: {code:?}", self.device()));
            for message in &messages {
                assert_eq!(message.conv_seq, self.cursors[&conv] + 1, "a gap in {conv}");
                self.cursors.insert(conv, message.conv_seq);
                if message.device == self.device() {
                    continue;
                }
                let joined = self.joined_epoch.get(&conv).copied().unwrap_or(0);
                if message.epoch < joined {
                    self.skipped.push((conv, message.conv_seq));
                    continue;
                }
                let incoming = self.mls.process(&conv.0, &message.message).unwrap();
                if let Incoming::Application { plaintext, sender } = incoming {
                    assert_eq!(sender.1, message.device, "the relay's sender is MLS's");
                    self.transcript.entry(conv).or_default().push((
                        message.conv_seq,
                        message.device,
                        plaintext,
                    ));
                }
            }
            read.extend(messages);
            if !more {
                break;
            }
        }
        let seq = self.cursors[&conv];
        self.client.send(&ClientFrame::ConvAck { conv, seq }).await;
        read
    }

    /// The lines of `conv` as this device holds them.
    pub fn lines(&self, conv: ConvId) -> Vec<Line> {
        let mut lines = self.transcript.get(&conv).cloned().unwrap_or_default();
        lines.sort_by_key(|line| line.0);
        lines
    }

    /// `conv` as it appears in this user's conversation list.
    pub async fn summary(&mut self, conv: ConvId) -> ConvSummary {
        let list = self.list().await;
        list.into_iter().find(|s| s.conv == conv).expect("listed")
    }

    /// This user's conversation list.
    pub async fn list(&mut self) -> Vec<ConvSummary> {
        let mut all = Vec::new();
        loop {
            match self.ask(&ClientFrame::ConvList).await {
                ServerFrame::Conversations { convs, more } => {
                    all.extend(convs);
                    if !more {
                        return all;
                    }
                }
                other => panic!("ConvList answered {other:?}"),
            }
        }
    }
}

/// `from` asks `to` to be a contact and `to` accepts (intros sealed to one device each: the
/// relay checks only the signature, the device tests open them).
pub async fn befriend(from: &mut Talker, to: &mut Talker) {
    let intro = |a: &Talker, b: &Talker| {
        let body = IntroBody {
            note: "hi".into(),
            profile_key: ProfileKey::from_bytes(&[7; 32]),
        };
        Intro::seal(
            &mut OsRng,
            a.user(),
            &a.id.device,
            b.user(),
            &[(b.device(), b.id.exchange)],
            &body,
        )
        .unwrap()
    };
    let ask = intro(from, to);
    assert_eq!(
        from.ask(&ClientFrame::ContactRequest(Box::new(ask))).await,
        ServerFrame::Done
    );
    let accept = intro(to, from);
    assert_eq!(
        to.ask(&ClientFrame::ContactAccept(Box::new(accept))).await,
        ServerFrame::Done
    );
}

/// The answer's error code, for refusals of any kind.
pub fn refusal(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error(e) => Some(e.code),
        ServerFrame::ConvRefused { error, .. } => Some(error.code),
        _ => None,
    }
}

//! Random interleavings of sends, self-updates, adds and removes on several devices, sequenced
//! through a simulated Delivery Service that follows the relay's rules
//! (`relay/src/store/conversations.rs`):
//!
//! 1. One ordered log per group. A commit is appended only if its epoch is the group's current
//!    one (the first valid commit per epoch wins), after [`DsGroup`] validated it and the
//!    whole-user rule held ([`check_membership_change`]). The loser discards its pending
//!    commit, reads the log to the head, and may try again.
//! 2. Application messages are accepted for the current epoch and the
//!    [`PAST_EPOCHS_ACCEPTED`] before it, never for an epoch before the last commit that added
//!    or removed a leaf (the relay's `floor_epoch`). A refused sender reads the log to the head
//!    and encrypts again.
//! 3. Added devices get the Welcome, join when they next act, and read the log from just after
//!    the commit that added them. A removed device reads nothing stored after its removal.
//!
//! Devices read the log at random moments, so some lag many epochs behind; a removed user may
//! be added again later with fresh KeyPackages. At the end every member device reads to the
//! head, and [`Sim::finish`] checks the properties.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use ferry_mls::{
    CommitOut, Device, DsGroup, GroupKind, GroupPolicy, Incoming, Member, MlsRefusal,
    check_key_package, check_membership_change, check_welcome, inspect_application,
};
use ferry_protocol::conversations::PAST_EPOCHS_ACCEPTED;
use ferry_protocol::identity::{DeviceId, DeviceKey, UserId, UserKey};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const GROUP: &[u8] = b"interleavings";
const USERS: usize = 3;
const DEVICES_PER_USER: usize = 2;
const DEVICES: usize = USERS * DEVICES_PER_USER;

/// One step of a run. `actor` picks among the devices in the group (modulo their number),
/// `target` among the users an add or remove can name.
#[derive(Clone, Debug)]
enum Op {
    /// The actor sends a text.
    Send { actor: usize },
    /// The actor commits a self-update.
    Update { actor: usize, retry: bool },
    /// The actor adds a user that is not in the group, with all its devices.
    Add {
        actor: usize,
        target: usize,
        retry: bool,
    },
    /// The actor removes another user in the group, with all its devices.
    Remove {
        actor: usize,
        target: usize,
        retry: bool,
    },
    /// The actor reads the log: `entries` more of it, or all of it.
    Read {
        actor: usize,
        entries: Option<usize>,
    },
}

/// What a commit does.
#[derive(Clone, Copy, Debug)]
enum Change {
    Update,
    Add(usize),
    Remove(usize),
}

/// One entry of the group's log, as the relay stores it.
enum Entry {
    Commit {
        by: usize,
        message: Vec<u8>,
        /// The epoch the commit leads to.
        epoch: u64,
    },
    Application {
        by: usize,
        message: Vec<u8>,
        text: Vec<u8>,
    },
}

impl Entry {
    fn by(&self) -> usize {
        match self {
            Entry::Commit { by, .. } | Entry::Application { by, .. } => *by,
        }
    }
}

/// A device's place in the group.
enum State {
    /// Not in the group (never added, or removed and forgotten).
    Out,
    /// Added by the commit at `added_at`; joins from the Welcome when it next acts.
    Welcomed { welcome: Vec<u8>, added_at: usize },
    /// In the group: reads the log from `cursor`; `decrypted` lists the application messages
    /// it opened (log positions).
    In {
        added_at: usize,
        cursor: usize,
        decrypted: Vec<usize>,
    },
}

struct Slot {
    key: DeviceKey,
    member: Member,
    user: usize,
    state: State,
}

/// A removed device's state just before it processed its removal (it had read everything
/// stored before it), kept to check it opens nothing stored afterwards.
struct Removed {
    device: usize,
    at: usize,
    state: Vec<u8>,
}

/// The devices, the relay's view of the group and its log.
struct Sim {
    users: Vec<UserId>,
    ids: Vec<Device>,
    slots: Vec<Slot>,
    ds: DsGroup,
    /// The epoch of the last commit that added or removed a leaf.
    floor: u64,
    log: Vec<Entry>,
    removed: Vec<Removed>,
    texts: usize,
    /// Whether a device at the head's epoch reads the log before it commits (see
    /// [`Sim::commit`]).
    read_before_commit: bool,
}

impl Sim {
    /// Device 0 (user 0) creates the group and adds its user's other devices.
    fn new() -> Sim {
        let mut rng = ChaCha20Rng::seed_from_u64(0x1e7e_a5ed);
        let mut users = Vec::new();
        let mut slots = Vec::new();
        for user in 0..USERS {
            users.push(UserKey::generate(&mut rng).id());
            for _ in 0..DEVICES_PER_USER {
                let key = DeviceKey::generate(&mut rng);
                let member = Member::new(users[user], &key);
                slots.push(Slot {
                    key,
                    member,
                    user,
                    state: State::Out,
                });
            }
        }
        let ids = slots.iter().map(|slot| slot.member.id()).collect();
        let policy = GroupPolicy {
            kind: GroupKind::Group,
            admins: vec![users[0]],
        };
        let info = slots[0].member.create_group(GROUP, policy).unwrap();
        let ds = DsGroup::start(&info, GROUP).unwrap();
        slots[0].state = State::In {
            added_at: 0,
            cursor: 0,
            decrypted: Vec::new(),
        };
        let mut sim = Sim {
            users,
            ids,
            slots,
            ds,
            floor: 0,
            log: Vec::new(),
            removed: Vec::new(),
            texts: 0,
            read_before_commit: true,
        };
        let packages = sim.claim(0, |d| d != 0);
        let out = sim.slots[0].member.add(GROUP, &packages).unwrap();
        sim.accept(0, out);
        sim
    }

    fn run(&mut self, op: &Op) {
        let members = self.member_devices();
        let acting = |actor: &usize| members[actor % members.len()];
        match op {
            Op::Send { actor } => self.send(acting(actor)),
            Op::Update { actor, retry } => self.commit(acting(actor), Change::Update, *retry),
            Op::Add {
                actor,
                target,
                retry,
            } => {
                let out: Vec<usize> = (0..USERS).filter(|&u| !self.user_in(u)).collect();
                if !out.is_empty() {
                    let user = out[target % out.len()];
                    self.commit(acting(actor), Change::Add(user), *retry);
                }
            }
            Op::Remove {
                actor,
                target,
                retry,
            } => {
                let d = acting(actor);
                let others: Vec<usize> = (0..USERS)
                    .filter(|&u| u != self.slots[d].user && self.user_in(u))
                    .collect();
                if !others.is_empty() {
                    let user = others[target % others.len()];
                    self.commit(d, Change::Remove(user), *retry);
                }
            }
            Op::Read { actor, entries } => {
                let d = acting(actor);
                self.join_if_welcomed(d);
                let upto = match (entries, &self.slots[d].state) {
                    (Some(n), State::In { cursor, .. }) => (cursor + n).min(self.log.len()),
                    _ => self.log.len(),
                };
                self.read(d, upto);
            }
        }
        // The relay stores its group between operations; the state round-trips exactly.
        let bytes = self.ds.to_bytes();
        self.ds = DsGroup::from_bytes(&bytes).unwrap();
        assert_eq!(self.ds.to_bytes(), bytes);
        // So does every device's, as the SDK saves it after each step.
        for slot in &mut self.slots {
            slot.member = Member::from_bytes(&slot.member.to_bytes(), &slot.key).unwrap();
        }
    }

    /// Devices in the group (joined or holding their Welcome), in order.
    fn member_devices(&self) -> Vec<usize> {
        (0..DEVICES)
            .filter(|&d| !matches!(self.slots[d].state, State::Out))
            .collect()
    }

    fn user_in(&self, user: usize) -> bool {
        self.member_devices()
            .iter()
            .any(|&d| self.slots[d].user == user)
    }

    /// One fresh KeyPackage per device chosen by `pick`, checked like the relay does.
    fn claim(&mut self, user: usize, pick: impl Fn(usize) -> bool) -> Vec<Vec<u8>> {
        let mut packages = Vec::new();
        for d in devices_of(user).filter(|&d| pick(d)) {
            let package = self.slots[d].member.key_packages(1).unwrap().remove(0);
            let (user, device) = self.ids[d];
            assert!(
                !check_key_package(&package, user, device)
                    .unwrap()
                    .last_resort
            );
            packages.push(package);
        }
        packages
    }

    fn join_if_welcomed(&mut self, d: usize) {
        let State::Welcomed { added_at, .. } = self.slots[d].state else {
            return;
        };
        let epoch = self.commit_epoch(added_at);
        let joined = State::In {
            added_at,
            cursor: added_at + 1,
            decrypted: Vec::new(),
        };
        let slot = &mut self.slots[d];
        let State::Welcomed { welcome, .. } = std::mem::replace(&mut slot.state, joined) else {
            unreachable!()
        };
        assert_eq!(slot.member.join(&welcome).unwrap(), GROUP);
        assert_eq!(slot.member.epoch(GROUP).unwrap(), epoch);
    }

    fn commit_epoch(&self, at: usize) -> u64 {
        match &self.log[at] {
            Entry::Commit { epoch, .. } => *epoch,
            Entry::Application { .. } => panic!("log entry {at} is not a commit"),
        }
    }

    /// `d` processes the log, in order, up to (not including) `upto`.
    fn read(&mut self, d: usize, upto: usize) {
        self.join_if_welcomed(d);
        let slot = &mut self.slots[d];
        let State::In {
            cursor, decrypted, ..
        } = &mut slot.state
        else {
            return;
        };
        while *cursor < upto {
            let at = *cursor;
            let entry = &self.log[at];
            let by = entry.by();
            // Its own messages are known: commits were merged when accepted, texts kept.
            if by != d {
                match (entry, slot.member.process(GROUP, entry_message(entry))) {
                    (
                        Entry::Commit { epoch, .. },
                        Ok(Incoming::Commit {
                            sender,
                            epoch: now,
                            removed_us: false,
                            ..
                        }),
                    ) => {
                        assert_eq!(sender, self.ids[by], "committer of {at} seen by {d}");
                        assert_eq!(now, *epoch, "epoch after {at} on device {d}");
                    }
                    (
                        Entry::Application { text, .. },
                        Ok(Incoming::Application { plaintext, sender }),
                    ) => {
                        assert_eq!(&plaintext, text, "text of {at} on device {d}");
                        assert_eq!(sender, self.ids[by], "sender of {at} seen by {d}");
                        decrypted.push(at);
                    }
                    (_, outcome) => panic!(
                        "device {d} (epoch {}) processing log entry {at} from device {by}: {outcome:?}",
                        slot.member.epoch(GROUP).unwrap()
                    ),
                }
            }
            *cursor += 1;
        }
    }

    /// `d` sends a text: encrypted at its epoch, refused by the relay if that epoch is too
    /// old (then it reads to the head and encrypts again).
    fn send(&mut self, d: usize) {
        self.join_if_welcomed(d);
        let text = format!("text {} from device {d}", self.texts).into_bytes();
        self.texts += 1;
        for attempt in 0..2 {
            let member = &mut self.slots[d].member;
            let message = member.encrypt(GROUP, &text).unwrap();
            let (group, epoch) = inspect_application(&message).unwrap();
            assert_eq!(group, GROUP);
            assert_eq!(epoch, member.epoch(GROUP).unwrap());
            let oldest = self
                .ds
                .epoch()
                .saturating_sub(PAST_EPOCHS_ACCEPTED)
                .max(self.floor);
            if (oldest..=self.ds.epoch()).contains(&epoch) {
                self.log.push(Entry::Application {
                    by: d,
                    message,
                    text,
                });
                return;
            }
            assert_eq!(attempt, 0, "device {d} at the head was refused");
            self.read(d, self.log.len());
        }
    }

    /// `d` makes the commit at its epoch and sends it; if another commit won that epoch it
    /// discards it, reads to the head and, with `retry`, makes it again. A device that is at
    /// the group's epoch first reads the application messages it has not read yet.
    fn commit(&mut self, d: usize, change: Change, retry: bool) {
        self.join_if_welcomed(d);
        for _attempt in 0..2 {
            if self.read_before_commit
                && self.slots[d].member.epoch(GROUP).unwrap() == self.ds.epoch()
            {
                // Whatever it has not read is application messages (and its own commits), so
                // this does not change whether its commit wins. Without it, a device that
                // commits more than `PAST_EPOCHS - PAST_EPOCHS_ACCEPTED` times past its read
                // cursor cannot open a message sent from the oldest epoch the relay accepted
                // (`a_committer_that_outruns_its_cursor_loses_a_message`, below).
                self.read(d, self.log.len());
            }
            let epoch = self.slots[d].member.epoch(GROUP).unwrap();
            let lagging = epoch != self.ds.epoch();
            let made = match change {
                Change::Update => self.slots[d].member.self_update(GROUP),
                Change::Add(user) => {
                    let packages = self.claim(user, |_| true);
                    self.slots[d].member.add(GROUP, &packages)
                }
                Change::Remove(user) => {
                    let devices: Vec<Device> = devices_of(user).map(|d| self.ids[d]).collect();
                    self.slots[d].member.remove(GROUP, &devices)
                }
            };
            match made {
                Ok(out) if !lagging => {
                    assert_eq!(out.epoch, epoch + 1);
                    self.accept(d, out);
                    return;
                }
                Ok(out) => {
                    // The relay answers Stale and stores nothing; the DsGroup refuses it too.
                    let before = self.ds.to_bytes();
                    assert_eq!(
                        self.ds.process_commit(&out.commit).unwrap_err(),
                        MlsRefusal::WrongEpoch {
                            message: epoch,
                            group: self.ds.epoch()
                        }
                    );
                    assert_eq!(self.ds.to_bytes(), before);
                    self.slots[d].member.discard_pending(GROUP).unwrap();
                }
                // A lagging device may not see the group the change is about (the user it
                // removes was added since, or the one it adds is still in its old tree).
                Err(e) => assert!(
                    lagging,
                    "device {d} at the head cannot commit {change:?}: {e}"
                ),
            }
            self.read(d, self.log.len());
            if !retry {
                return;
            }
        }
        panic!("device {d} read to the head and still lost the epoch");
    }

    /// The relay's acceptance of a commit at the current epoch, then its effects: the
    /// committer merges, added devices get the Welcome, removed ones stop.
    fn accept(&mut self, d: usize, out: CommitOut) {
        let staged = self
            .ds
            .stage_commit(&out.commit)
            .unwrap_or_else(|e| panic!("the relay refused device {d}'s commit: {e}"));
        let summary = staged.summary().clone();
        assert_eq!(summary.sender, self.ids[d]);
        assert!(!summary.external && !summary.policy_changed);
        let active = |user: &UserId| -> BTreeSet<DeviceId> {
            let u = self.users.iter().position(|known| known == user).unwrap();
            devices_of(u).map(|d| self.ids[d].1).collect()
        };
        check_membership_change(&summary.before, &summary.after, summary.sender.0, active).unwrap();
        let before_epoch = self.ds.epoch();
        self.ds.apply(staged).unwrap();
        assert_eq!(self.ds.epoch(), before_epoch + 1);
        assert_eq!(self.ds.epoch(), out.epoch);
        self.ds.check_group_info(&out.group_info).unwrap();
        self.slots[d].member.merge_pending(GROUP).unwrap();

        let at = self.log.len();
        self.log.push(Entry::Commit {
            by: d,
            message: out.commit,
            epoch: out.epoch,
        });
        if summary.before != summary.after {
            self.floor = out.epoch;
        }
        let added: Vec<usize> = (0..DEVICES)
            .filter(|&x| {
                summary.after.contains(&self.ids[x]) && !summary.before.contains(&self.ids[x])
            })
            .collect();
        let removed: Vec<usize> = (0..DEVICES)
            .filter(|&x| {
                summary.before.contains(&self.ids[x]) && !summary.after.contains(&self.ids[x])
            })
            .collect();
        if !added.is_empty() {
            let welcome = out.welcome.expect("an add commit carries a Welcome");
            check_welcome(&welcome).unwrap();
            for x in added {
                assert!(matches!(self.slots[x].state, State::Out));
                self.slots[x].state = State::Welcomed {
                    welcome: welcome.clone(),
                    added_at: at,
                };
            }
        }
        for x in removed {
            // It reads everything stored before its removal (a removed device is refused at
            // once by the relay, but this is the most it could know)...
            self.read(x, at);
            self.check_decrypted(x, at);
            self.removed.push(Removed {
                device: x,
                at,
                state: self.slots[x].member.to_bytes(),
            });
            // ...then the commit that removes it, and forgets the group.
            let member = &mut self.slots[x].member;
            match member.process(GROUP, entry_message(&self.log[at])) {
                Ok(Incoming::Commit {
                    removed_us: true, ..
                }) => {}
                other => panic!("device {x} processing its removal at {at}: {other:?}"),
            }
            assert!(!member.is_active(GROUP).unwrap());
            member.forget(GROUP).unwrap();
            self.slots[x].state = State::Out;
        }
    }

    /// `d` opened exactly the application messages stored after it joined and before `until`,
    /// except its own, in log order.
    fn check_decrypted(&self, d: usize, until: usize) {
        let State::In {
            added_at,
            cursor,
            decrypted,
        } = &self.slots[d].state
        else {
            panic!("device {d} is not in the group");
        };
        assert_eq!(*cursor, until);
        let expected: Vec<usize> = (added_at + 1..until)
            .filter(|&at| matches!(&self.log[at], Entry::Application { by, .. } if *by != d))
            .collect();
        assert_eq!(decrypted, &expected, "messages device {d} opened");
    }

    /// Every member reads to the head; then the properties.
    fn finish(mut self) {
        let head = self.log.len();
        let members = self.member_devices();
        for &d in &members {
            self.read(d, head);
        }

        // 1. Members agree with each other and with the relay.
        let expected: Vec<Device> = {
            let mut ids: Vec<Device> = members.iter().map(|&d| self.ids[d]).collect();
            ids.sort();
            ids
        };
        assert_eq!(self.ds.members(), expected);
        let authenticator = self.slots[members[0]]
            .member
            .epoch_authenticator(GROUP)
            .unwrap();
        for &d in &members {
            let member = &self.slots[d].member;
            assert_eq!(member.epoch(GROUP).unwrap(), self.ds.epoch(), "device {d}");
            assert_eq!(member.members(GROUP).unwrap(), expected, "device {d}");
            assert_eq!(
                member.epoch_authenticator(GROUP).unwrap(),
                authenticator,
                "device {d}"
            );
        }

        // 2. Every member opened every message stored since it joined, once: a replay fails.
        for &d in &members {
            self.check_decrypted(d, head);
            let State::In { decrypted, .. } = &self.slots[d].state else {
                unreachable!()
            };
            for at in decrypted.clone() {
                let replay = self.slots[d]
                    .member
                    .process(GROUP, entry_message(&self.log[at]));
                assert!(replay.is_err(), "device {d} opened entry {at} twice");
            }
        }
        // A removed device opens nothing stored after its removal.
        for removed in &self.removed {
            let key = &self.slots[removed.device].key;
            let mut member = Member::from_bytes(&removed.state, key).unwrap();
            for at in removed.at + 1..head {
                if let Entry::Application { .. } = &self.log[at] {
                    let outcome = member.process(GROUP, entry_message(&self.log[at]));
                    assert!(
                        outcome.is_err(),
                        "device {} removed at {} opened entry {at}: {outcome:?}",
                        removed.device,
                        removed.at
                    );
                }
            }
        }

        // 3. The log's commits move the epoch one at a time (none for a stale epoch).
        let epochs: Vec<u64> = self
            .log
            .iter()
            .filter_map(|entry| match entry {
                Entry::Commit { epoch, .. } => Some(*epoch),
                Entry::Application { .. } => None,
            })
            .collect();
        assert_eq!(epochs, (1..=self.ds.epoch()).collect::<Vec<_>>());
    }
}

fn devices_of(user: usize) -> std::ops::Range<usize> {
    user * DEVICES_PER_USER..(user + 1) * DEVICES_PER_USER
}

fn entry_message(entry: &Entry) -> &[u8] {
    match entry {
        Entry::Commit { message, .. } | Entry::Application { message, .. } => message,
    }
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly the first two devices in the group act, so the others fall behind.
    let actor = || prop_oneof![3 => 0..2usize, 1 => 0..DEVICES];
    let target = || 0..USERS;
    prop_oneof![
        5 => actor().prop_map(|actor| Op::Send { actor }),
        3 => (actor(), any::<bool>()).prop_map(|(actor, retry)| Op::Update { actor, retry }),
        2 => (actor(), target(), any::<bool>())
            .prop_map(|(actor, target, retry)| Op::Add { actor, target, retry }),
        2 => (actor(), target(), any::<bool>())
            .prop_map(|(actor, target, retry)| Op::Remove { actor, target, retry }),
        3 => (actor(), proptest::option::weighted(0.7, 1..6usize))
            .prop_map(|(actor, entries)| Op::Read { actor, entries }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn members_agree_and_read_everything_under_any_interleaving(
        ops in proptest::collection::vec(op(), 10..50)
    ) {
        let mut sim = Sim::new();
        for op in &ops {
            sim.run(op);
        }
        sim.finish();
    }
}

/// Found by this test: the relay accepts application messages from [`PAST_EPOCHS_ACCEPTED`]
/// (3) epochs back, and a device keeps [`ferry_mls::PAST_EPOCHS`] (5) epochs of keys. A device
/// whose commits keep winning without it reading the log (the SDK's `commit`, when this was
/// written, read the log only after `ConvStale`) moves its epoch past its read cursor; after 3
/// such commits it cannot open a message a lagging member sent 3 epochs back, which the relay
/// accepted and stored before them. Two such commits are still fine.
#[test]
#[ignore = "finding: a committer that outruns its read cursor loses messages (see the doc)"]
fn a_committer_that_outruns_its_cursor_loses_a_message() {
    let mut sim = Sim::new();
    sim.read_before_commit = false;
    // Device 0 moves the group from epoch 1 to 4; device 1 stays at 1 and sends (the relay
    // accepts epochs 1..=4); device 0, still not reading, commits 3 more times (epoch 7) and
    // then reads the message of epoch 1: gone.
    let update = Op::Update {
        actor: 0,
        retry: false,
    };
    let send = Op::Send { actor: 1 };
    for op in [&update, &update, &update, &send, &update, &update, &update] {
        sim.run(op);
    }
    sim.finish();
}

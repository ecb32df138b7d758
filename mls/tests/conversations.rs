//! Real MLS clients ([`Member`]) against the relay's checks ([`DsGroup`]): the flows of a
//! conversation end to end, and the forgeries the relay must refuse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use ferry_mls::{
    CommitOut, CommitSummary, Device, DsGroup, GroupKind, GroupPolicy, Incoming, Member,
    MlsRefusal, check_group_info, check_key_package, check_membership_change, check_welcome,
    inspect_application,
};
use ferry_protocol::identity::{DeviceId, DeviceKey, UserId, UserKey};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const A1: usize = 0;
const A2: usize = 1;
const B1: usize = 2;
const B2: usize = 3;
const C1: usize = 4;
const C2: usize = 5;

/// Three users with two devices each, plus what the relay knows of their device chains.
struct World {
    rng: ChaCha20Rng,
    keys: Vec<DeviceKey>,
    devices: Vec<Member>,
    active: BTreeMap<UserId, BTreeSet<DeviceId>>,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut keys = Vec::new();
        let mut devices = Vec::new();
        let mut active: BTreeMap<UserId, BTreeSet<DeviceId>> = BTreeMap::new();
        for _ in 0..3 {
            let user = UserKey::generate(&mut rng).id();
            for _ in 0..2 {
                let key = DeviceKey::generate(&mut rng);
                active.entry(user).or_default().insert(key.id());
                devices.push(Member::new(user, &key));
                keys.push(key);
            }
        }
        World {
            rng,
            keys,
            devices,
            active,
        }
    }

    fn user(&self, device: usize) -> UserId {
        self.devices[device].id().0
    }

    fn active(&self) -> impl Fn(&UserId) -> BTreeSet<DeviceId> + '_ {
        |user| self.active.get(user).cloned().unwrap_or_default()
    }

    /// `creator` creates the group; the relay starts tracking it.
    fn create(&mut self, creator: usize, id: &[u8], policy: GroupPolicy) -> DsGroup {
        let info = self.devices[creator]
            .create_group(id, policy.clone())
            .unwrap();
        check_group_info(&info, id, 0).unwrap();
        let ds = DsGroup::start(&info, id).unwrap();
        assert_eq!(ds.epoch(), 0);
        assert_eq!(ds.members(), vec![self.devices[creator].id()]);
        assert_eq!(ds.policy(), Some(policy));
        ds
    }

    /// One key package per device, as a claim returns them, checked like the relay does.
    fn claim(&mut self, devices: &[usize]) -> Vec<Vec<u8>> {
        devices
            .iter()
            .map(|&d| {
                let package = self.devices[d].key_packages(1).unwrap().remove(0);
                let (user, device) = self.devices[d].id();
                let info = check_key_package(&package, user, device).unwrap();
                assert!(!info.last_resort);
                package
            })
            .collect()
    }

    /// The relay's whole acceptance path for a commit; then the committer merges, the others
    /// in `members` process it, and added devices join from the Welcome.
    fn accept(
        &mut self,
        ds: &mut DsGroup,
        id: &[u8],
        committer: usize,
        out: &CommitOut,
        members: &[usize],
        joining: &[usize],
    ) -> CommitSummary {
        let staged = ds.stage_commit(&out.commit).unwrap();
        let summary = staged.summary().clone();
        check_membership_change(
            &summary.before,
            &summary.after,
            summary.sender.0,
            self.active(),
        )
        .unwrap();
        ds.apply(staged).unwrap();
        assert_eq!(ds.epoch(), out.epoch);
        ds.check_group_info(&out.group_info).unwrap();
        check_group_info(&out.group_info, id, ds.epoch()).unwrap();
        self.devices[committer].merge_pending(id).unwrap();
        for &m in members.iter().filter(|&&m| m != committer) {
            match self.devices[m].process(id, &out.commit).unwrap() {
                Incoming::Commit { sender, epoch, .. } => {
                    assert_eq!(sender, self.devices[committer].id());
                    assert_eq!(epoch, out.epoch);
                }
                other => panic!("expected a commit, got {other:?}"),
            }
        }
        if !joining.is_empty() {
            let welcome = out.welcome.as_ref().unwrap();
            check_welcome(welcome).unwrap();
            for &j in joining {
                assert_eq!(self.devices[j].join(welcome).unwrap(), id);
            }
        }
        summary
    }

    /// Every device in `members` sends a message that every other one decrypts.
    fn chat(&mut self, ds: &DsGroup, id: &[u8], members: &[usize]) {
        for &from in members {
            let text = format!("hello from {from} at {}", ds.epoch()).into_bytes();
            let sealed = self.devices[from].encrypt(id, &text).unwrap();
            assert_eq!(
                inspect_application(&sealed).unwrap(),
                (id.to_vec(), ds.epoch())
            );
            assert!(
                !contains(&sealed, &text),
                "the relay must not see the plaintext"
            );
            for &to in members.iter().filter(|&&to| to != from) {
                let incoming = self.devices[to].process(id, &sealed).unwrap();
                assert_eq!(
                    incoming,
                    Incoming::Application {
                        plaintext: text.clone(),
                        sender: self.devices[from].id(),
                    }
                );
            }
        }
    }

    /// All `members` agree with each other and with the relay.
    fn agree(&self, ds: &DsGroup, id: &[u8], members: &[usize]) {
        let authenticator = self.devices[members[0]].epoch_authenticator(id).unwrap();
        let mut expected: Vec<Device> = members.iter().map(|&m| self.devices[m].id()).collect();
        expected.sort();
        assert_eq!(ds.members(), expected);
        for &m in members {
            let device = &self.devices[m];
            assert_eq!(device.epoch(id).unwrap(), ds.epoch());
            assert_eq!(device.members(id).unwrap(), ds.members());
            assert_eq!(device.epoch_authenticator(id).unwrap(), authenticator);
            assert_eq!(device.policy(id).unwrap(), ds.policy());
            assert_eq!(
                device.export_secret(id, "ferry/v1/typing", 32).unwrap(),
                self.devices[members[0]]
                    .export_secret(id, "ferry/v1/typing", 32)
                    .unwrap()
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn group_policy(world: &World) -> GroupPolicy {
    GroupPolicy {
        kind: GroupKind::Group,
        admins: vec![world.user(A1)],
    }
}

/// A group of all six devices, at epoch 1.
fn six_device_group(world: &mut World, id: &[u8]) -> DsGroup {
    let policy = group_policy(world);
    let mut ds = world.create(A1, id, policy);
    let packages = world.claim(&[A2, B1, B2, C1, C2]);
    let out = world.devices[A1].add(id, &packages).unwrap();
    let summary = world.accept(&mut ds, id, A1, &out, &[A1], &[A2, B1, B2, C1, C2]);
    assert_eq!(summary.before, vec![world.devices[A1].id()]);
    assert_eq!(summary.after.len(), 6);
    assert!(!summary.external && !summary.policy_changed);
    ds
}

const ALL: [usize; 6] = [A1, A2, B1, B2, C1, C2];

#[test]
fn a_one_to_one_and_a_group_of_three_users_with_two_devices_each() {
    let mut world = World::new(1);

    // 1:1 between A and B: A1 creates, adds A2, B1, B2 in one commit.
    let dm = b"dm:a-b".as_slice();
    let mut ds_dm = world.create(
        A1,
        dm,
        GroupPolicy {
            kind: GroupKind::OneToOne,
            admins: vec![],
        },
    );
    let packages = world.claim(&[A2, B1, B2]);
    let out = world.devices[A1].add(dm, &packages).unwrap();
    world.accept(&mut ds_dm, dm, A1, &out, &[A1], &[A2, B1, B2]);
    world.chat(&ds_dm, dm, &[A1, A2, B1, B2]);
    world.agree(&ds_dm, dm, &[A1, A2, B1, B2]);

    // The group of everyone.
    let id = b"group:abc".as_slice();
    let mut ds = six_device_group(&mut world, id);
    world.chat(&ds, id, &ALL);
    world.agree(&ds, id, &ALL);

    // Self-updates from a device of each user, each validated by the relay.
    for committer in [B2, C1, A2] {
        let out = world.devices[committer].self_update(id).unwrap();
        let summary = world.accept(&mut ds, id, committer, &out, &ALL, &[]);
        assert_eq!(summary.before, summary.after);
        world.chat(&ds, id, &ALL);
        world.agree(&ds, id, &ALL);
    }

    // B removes C entirely (both devices): the whole-user rule allows it.
    let c = [world.devices[C1].id(), world.devices[C2].id()];
    let out = world.devices[B1].remove(id, &c).unwrap();
    assert!(out.welcome.is_none());
    let summary = world.accept(&mut ds, id, B1, &out, &[A1, A2, B2], &[]);
    assert_eq!(summary.after.len(), 4);
    for removed in [C1, C2] {
        match world.devices[removed].process(id, &out.commit).unwrap() {
            Incoming::Commit { removed_us, .. } => assert!(removed_us),
            other => panic!("expected a commit, got {other:?}"),
        }
        assert!(!world.devices[removed].is_active(id).unwrap());
        world.devices[removed].forget(id).unwrap();
    }
    world.chat(&ds, id, &[A1, A2, B1, B2]);
    world.agree(&ds, id, &[A1, A2, B1, B2]);
    // The 1:1 went on untouched.
    world.agree(&ds_dm, dm, &[A1, A2, B1, B2]);
}

#[test]
fn two_commits_in_one_epoch_the_first_wins_and_the_loser_retries() {
    let mut world = World::new(2);
    let id = b"race".as_slice();
    let mut ds = six_device_group(&mut world, id);
    let epoch = ds.epoch();

    let first = world.devices[A1].self_update(id).unwrap();
    let second = world.devices[B1].self_update(id).unwrap();
    ds.process_commit(&first.commit).unwrap();
    assert_eq!(
        ds.process_commit(&second.commit).unwrap_err(),
        MlsRefusal::WrongEpoch {
            message: epoch,
            group: epoch + 1
        }
    );

    // The winner sees its own commit come back in the stream.
    assert_eq!(
        world.devices[A1].process(id, &first.commit).unwrap(),
        Incoming::OwnCommit { epoch: epoch + 1 }
    );
    // The loser discards, catches up, retries.
    world.devices[B1].discard_pending(id).unwrap();
    for m in [A2, B1, B2, C1, C2] {
        world.devices[m].process(id, &first.commit).unwrap();
    }
    let retry = world.devices[B1].self_update(id).unwrap();
    assert_eq!(retry.epoch, epoch + 2);
    world.accept(&mut ds, id, B1, &retry, &ALL, &[]);
    world.chat(&ds, id, &ALL);
    world.agree(&ds, id, &ALL);
}

#[test]
fn a_user_leaves_by_proposals_another_member_commits_them() {
    let mut world = World::new(3);
    let id = b"leaving".as_slice();
    let mut ds = six_device_group(&mut world, id);

    // Both of C's devices propose their own removal; everyone queues the proposals.
    for leaver in [C1, C2] {
        let proposal = world.devices[leaver].leave(id).unwrap();
        let summary = ds.process_proposal(&proposal).unwrap();
        assert_eq!(summary.sender, world.devices[leaver].id());
        assert_eq!(summary.removes, vec![world.devices[leaver].id()]);
        assert!(summary.self_remove);
        for m in ALL.into_iter().filter(|&m| m != leaver) {
            assert_eq!(
                world.devices[m].process(id, &proposal).unwrap(),
                Incoming::Proposal {
                    sender: world.devices[leaver].id(),
                    removes: vec![world.devices[leaver].id()],
                }
            );
        }
    }
    // The relay's stored state keeps the queued proposals.
    let mut ds = DsGroup::from_bytes(&ds.to_bytes()).unwrap();

    let out = world.devices[A2].commit_pending_proposals(id).unwrap();
    let summary = world.accept(&mut ds, id, A2, &out, &[A1, A2, B1, B2], &[]);
    let mut c = vec![world.devices[C1].id(), world.devices[C2].id()];
    c.sort();
    assert_eq!(summary.self_removed, c);
    assert_eq!(summary.after.len(), 4);
    for leaver in [C1, C2] {
        match world.devices[leaver].process(id, &out.commit).unwrap() {
            Incoming::Commit {
                removed_us,
                removed,
                ..
            } => {
                assert!(removed_us);
                assert_eq!(removed, c);
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    world.chat(&ds, id, &[A1, A2, B1, B2]);
    world.agree(&ds, id, &[A1, A2, B1, B2]);

    // No queued proposal survives the merge in the relay's stored state.
    let again = DsGroup::from_bytes(&ds.to_bytes()).unwrap();
    assert_eq!(again.to_bytes(), ds.to_bytes());
    assert!(!contains(&ds.to_bytes(), b"QueuedProposal"));
}

#[test]
fn a_device_that_fell_behind_rejoins_by_external_commit() {
    let mut world = World::new(4);
    let id = b"rejoin".as_slice();
    let mut ds = six_device_group(&mut world, id);

    // C2 goes offline; the group moves on without it.
    let offline = world.devices[C2].to_bytes();
    let online = [A1, A2, B1, B2, C1];
    let mut latest_info = Vec::new();
    for committer in [A1, B2] {
        let out = world.devices[committer].self_update(id).unwrap();
        let staged = ds.stage_commit(&out.commit).unwrap();
        ds.apply(staged).unwrap();
        world.devices[committer].merge_pending(id).unwrap();
        for m in online.into_iter().filter(|&m| m != committer) {
            world.devices[m].process(id, &out.commit).unwrap();
        }
        ds.check_group_info(&out.group_info).unwrap();
        latest_info = out.group_info;
    }

    // Back online with a stale state (the relay no longer has the commits it missed): it
    // rejoins from the stored GroupInfo, replacing its own old leaf.
    world.devices[C2] = Member::from_bytes(&offline, &world.keys[C2]).unwrap();
    assert_eq!(world.devices[C2].epoch(id).unwrap(), 1);
    let (joined, out) = world.devices[C2].join_external(&latest_info).unwrap();
    assert_eq!(joined, id);
    let summary = ds.stage_commit(&out.commit).unwrap().summary().clone();
    assert!(summary.external);
    assert_eq!(summary.sender, world.devices[C2].id());
    assert_eq!(summary.before, summary.after);
    check_membership_change(
        &summary.before,
        &summary.after,
        summary.sender.0,
        world.active(),
    )
    .unwrap();
    ds.process_commit(&out.commit).unwrap();
    ds.check_group_info(&out.group_info).unwrap();
    for m in online {
        match world.devices[m].process(id, &out.commit).unwrap() {
            Incoming::Commit {
                sender,
                added,
                removed,
                ..
            } => {
                assert_eq!(sender, world.devices[C2].id());
                assert_eq!(added, vec![world.devices[C2].id()]);
                assert_eq!(removed, vec![world.devices[C2].id()]);
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    world.chat(&ds, id, &ALL);
    world.agree(&ds, id, &ALL);

    // A stranger holding the GroupInfo can make a valid MLS external commit, but Ferry's
    // whole-user rule refuses it: a user cannot put itself in.
    let mut stranger = Member::new(
        UserKey::generate(&mut world.rng).id(),
        &DeviceKey::generate(&mut world.rng),
    );
    let (_, out) = stranger.join_external(&out.group_info).unwrap();
    let summary = ds.stage_commit(&out.commit).unwrap().summary().clone();
    assert_eq!(
        check_membership_change(
            &summary.before,
            &summary.after,
            summary.sender.0,
            world.active()
        ),
        Err(MlsRefusal::NotAMember)
    );
}

#[test]
fn state_round_trips_and_the_restored_objects_carry_on() {
    let mut world = World::new(5);
    let id = b"persist".as_slice();
    let ds = six_device_group(&mut world, id);

    let stored = ds.to_bytes();
    let mut ds = DsGroup::from_bytes(&stored).unwrap();
    assert_eq!(
        ds.to_bytes(),
        stored,
        "the relay's state must round-trip exactly"
    );
    assert_eq!(format!("{ds:?}"), "DsGroup { epoch: 1, members: 6, .. }");

    for d in ALL {
        let bytes = world.devices[d].to_bytes();
        world.devices[d] = Member::from_bytes(&bytes, &world.keys[d]).unwrap();
        assert_eq!(world.devices[d].to_bytes(), bytes);
    }
    assert!(matches!(
        Member::from_bytes(&world.devices[A1].to_bytes(), &world.keys[A2]),
        Err(MlsRefusal::BadState(_))
    ));
    assert!(!format!("{:?}", world.devices[A1]).contains("values"));

    world.chat(&ds, id, &ALL);
    let out = world.devices[C2].self_update(id).unwrap();
    world.accept(&mut ds, id, C2, &out, &ALL, &[]);
    world.chat(&ds, id, &ALL);
    world.agree(&ds, id, &ALL);
}

#[test]
fn the_relay_refuses_forgeries_and_stays_unchanged() {
    let mut world = World::new(6);
    let id = b"forgeries".as_slice();
    let mut ds = six_device_group(&mut world, id);
    let other = b"other".as_slice();
    let mut ds_other = world.create(B1, other, group_policy(&world));
    let before = ds.to_bytes();

    // An application message is not a commit; a commit is not an application message.
    let sealed = world.devices[A1].encrypt(id, b"secret").unwrap();
    assert_eq!(
        ds.process_commit(&sealed).unwrap_err(),
        MlsRefusal::NotACommit
    );
    assert_eq!(
        ds.process_proposal(&sealed).unwrap_err(),
        MlsRefusal::NotAProposal
    );

    // A commit for another group.
    let foreign = world.devices[B1].self_update(other).unwrap();
    assert_eq!(
        ds.process_commit(&foreign.commit).unwrap_err(),
        MlsRefusal::WrongGroup
    );
    assert_eq!(
        inspect_application(&foreign.commit).unwrap_err(),
        MlsRefusal::NotApplication
    );
    ds_other.process_commit(&foreign.commit).unwrap();

    // A commit signed by a non-member: an outsider builds its own group under the same id
    // and epoch.
    let mut outsider = Member::new(
        UserKey::generate(&mut world.rng).id(),
        &DeviceKey::generate(&mut world.rng),
    );
    outsider.create_group(id, group_policy(&world)).unwrap();
    outsider.self_update(id).unwrap();
    outsider.merge_pending(id).unwrap();
    let fake = outsider.self_update(id).unwrap();
    assert_eq!(outsider.epoch(id).unwrap(), ds.epoch());
    assert!(matches!(
        ds.process_commit(&fake.commit).unwrap_err(),
        MlsRefusal::InvalidCommit(_)
    ));

    // A member's valid commit, tampered with in its signed content.
    let real = world.devices[B2].self_update(id).unwrap();
    for position in [real.commit.len() / 2, 20, real.commit.len() - 70] {
        let mut tampered = real.commit.clone();
        tampered[position] ^= 0x01;
        assert!(ds.process_commit(&tampered).is_err(), "byte {position}");
    }
    // The membership tag at the very end is a MAC the relay cannot check (MLS gives a
    // Delivery Service no key for it): it stages, but members refuse it. Only the sender can
    // produce this (the relay channel is authenticated), so it is an insider's denial of
    // service, not a forgery.
    let mut bad_tag = real.commit.clone();
    *bad_tag.last_mut().unwrap() ^= 0x01;
    assert!(ds.stage_commit(&bad_tag).is_ok());
    assert!(world.devices[A1].process(id, &bad_tag).is_err());
    for cut in [0, 1, 10, real.commit.len() - 1] {
        assert!(matches!(
            ds.process_commit(&real.commit[..cut]).unwrap_err(),
            MlsRefusal::Malformed(_)
        ));
    }
    let mut trailing = real.commit.clone();
    trailing.push(0);
    assert!(matches!(
        ds.process_commit(&trailing).unwrap_err(),
        MlsRefusal::Malformed(_)
    ));
    assert_eq!(ds.to_bytes(), before, "refusals leave the group unchanged");

    // A stale commit: once the real one is in, a second one from the old epoch is refused.
    ds.process_commit(&real.commit).unwrap();
    let stale = world.devices[C1].self_update(id).unwrap();
    assert!(matches!(
        ds.process_commit(&stale.commit).unwrap_err(),
        MlsRefusal::WrongEpoch { .. }
    ));
    // A GroupInfo of an old epoch or another group.
    assert!(matches!(ds.check_group_info(&real.group_info), Ok(())));
    assert!(matches!(
        ds.check_group_info(&foreign.group_info),
        Err(MlsRefusal::WrongGroup)
    ));
    assert!(matches!(
        check_group_info(&real.group_info, id, 1),
        Err(MlsRefusal::WrongEpoch {
            message: 2,
            group: 1
        })
    ));
    // Starting from a GroupInfo of another group, or one past epoch 0.
    assert_eq!(
        DsGroup::start(&real.group_info, other).unwrap_err(),
        MlsRefusal::WrongGroup
    );
    assert!(matches!(
        DsGroup::start(&real.group_info, id).unwrap_err(),
        MlsRefusal::WrongEpoch {
            message: 2,
            group: 0
        }
    ));
}

#[test]
fn forged_key_packages_are_refused() {
    use ferry_mls::credential::IDENTITY_LEN;
    use ferry_mls::policy::leaf_capabilities;
    use openmls::prelude::{
        BasicCredential, Capabilities, CredentialWithKey, KeyPackage, MlsMessageOut,
    };
    use openmls_rust_crypto::OpenMlsRustCrypto;

    let mut world = World::new(7);
    let (user, device) = world.devices[A1].id();
    let good = world.devices[A1].key_packages(1).unwrap().remove(0);
    check_key_package(&good, user, device).unwrap();
    // The package names A1: uploading it as A2's, or as another user's, is refused.
    let (_, a2) = world.devices[A2].id();
    assert!(matches!(
        check_key_package(&good, user, a2),
        Err(MlsRefusal::BadCredential(_))
    ));
    assert!(matches!(
        check_key_package(&good, world.user(B1), device),
        Err(MlsRefusal::BadCredential(_))
    ));
    let last = world.devices[A1].last_resort_key_package().unwrap();
    assert!(check_key_package(&last, user, device).unwrap().last_resort);

    // Hand-made packages: the credential names A1, but the signature key is another key.
    let provider = OpenMlsRustCrypto::default();
    let other_key = DeviceKey::generate(&mut world.rng);
    let build = |signature_key: &[u8], signer_key: &DeviceKey, capabilities: Capabilities| {
        let mut identity = Vec::with_capacity(IDENTITY_LEN);
        identity.extend_from_slice(user.as_bytes());
        identity.extend_from_slice(device.as_bytes());
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities)
            .build(
                ferry_mls::CIPHERSUITE,
                &provider,
                &ferry_mls::signer(signer_key),
                CredentialWithKey {
                    credential: BasicCredential::new(identity).into(),
                    signature_key: signature_key.to_vec().into(),
                },
            )
            .unwrap();
        MlsMessageOut::from(bundle.key_package().clone())
            .to_bytes()
            .unwrap()
    };
    let other_signature_key = build(other_key.id().as_bytes(), &other_key, leaf_capabilities());
    assert_eq!(
        check_key_package(&other_signature_key, user, device),
        Err(MlsRefusal::BadCredential(
            "signature key differs from the device id".into()
        ))
    );
    // Signature key = A1's id, but signed by another key: the signature fails.
    let wrong_signer = build(device.as_bytes(), &other_key, leaf_capabilities());
    assert!(matches!(
        check_key_package(&wrong_signer, user, device),
        Err(MlsRefusal::InvalidKeyPackage(_))
    ));
    // Without Ferry's policy extension in its capabilities.
    let no_policy = build(device.as_bytes(), &world.keys[A1], Capabilities::default());
    assert!(matches!(
        check_key_package(&no_policy, user, device),
        Err(MlsRefusal::InvalidKeyPackage(_))
    ));
    // A device will not add it either.
    world.create(B1, b"g", group_policy(&world));
    assert!(world.devices[B1].add(b"g", &[other_signature_key]).is_err());
    // Something else entirely: an MLSMessage header with a truncated key package.
    assert!(matches!(
        check_key_package(&[0, 1, 0, 5], user, device),
        Err(MlsRefusal::Malformed(_))
    ));
}

#[test]
fn random_and_mangled_bytes_never_panic() {
    let mut world = World::new(8);
    let id = b"fuzz".as_slice();
    let mut ds = six_device_group(&mut world, id);
    let out = world.devices[A2].self_update(id).unwrap();
    let sealed = world.devices[B1].encrypt(id, b"x").unwrap();
    let package = world.devices[C1].key_packages(1).unwrap().remove(0);
    let samples = [
        out.commit.clone(),
        out.group_info.clone(),
        sealed,
        package,
        ds.to_bytes(),
    ];
    let (user, device) = world.devices[C1].id();
    let before = ds.to_bytes();

    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for len in [0, 1, 2, 3, 4, 7, 16, 64, 300, 2000] {
        for _ in 0..20 {
            let mut bytes = vec![0u8; len];
            world.rng.fill_bytes(&mut bytes);
            // Make some of them look like an MLS message (version 1, each wire format).
            if len >= 4 && bytes[0] & 1 == 0 {
                let wire_format = 1 + bytes[3] % 5;
                bytes[..4].copy_from_slice(&[0, 1, 0, wire_format]);
            }
            inputs.push(bytes);
        }
    }
    for sample in &samples {
        for _ in 0..40 {
            let mut bytes = sample.clone();
            let i = (world.rng.next_u32() as usize) % bytes.len();
            bytes[i] ^= 1 << (world.rng.next_u32() % 8);
            inputs.push(bytes);
            let cut = (world.rng.next_u32() as usize) % sample.len();
            inputs.push(sample[..cut].to_vec());
        }
    }
    for input in &inputs {
        let _ = check_key_package(input, user, device);
        let _ = DsGroup::start(input, id);
        let _ = DsGroup::from_bytes(input);
        let _ = ds.check_group_info(input);
        let _ = check_group_info(input, id, 2);
        let _ = check_welcome(input);
        let _ = inspect_application(input);
        let _ = Member::from_bytes(input, &world.keys[C1]);
        let _ = world.devices[C2].join(input);
        if ds.stage_commit(input).is_ok() && input != &out.commit {
            // Only the confirmation and membership tags (the last 2 × 33 bytes) escape the
            // relay: they are MACs under keys only members hold. Members refuse them.
            assert_eq!(input.len(), out.commit.len());
            let first_difference = input.iter().zip(&out.commit).position(|(a, b)| a != b);
            assert!(first_difference.unwrap() >= input.len() - 66);
            assert!(world.devices[C1].process(id, input).is_err());
        }
        if let Ok(summary) = ds.clone_for_test_process_proposal(input) {
            panic!("a mangled proposal was accepted: {summary:?}");
        }
    }
    assert_eq!(ds.to_bytes(), before);
    // Everything still works afterwards.
    world.accept(&mut ds, id, A2, &out, &ALL, &[]);
    world.agree(&ds, id, &ALL);
}

/// `process_proposal` mutates on success; run it on a copy.
trait ProposalOnCopy {
    fn clone_for_test_process_proposal(
        &self,
        input: &[u8],
    ) -> Result<ferry_mls::ProposalSummary, MlsRefusal>;
}

impl ProposalOnCopy for DsGroup {
    fn clone_for_test_process_proposal(
        &self,
        input: &[u8],
    ) -> Result<ferry_mls::ProposalSummary, MlsRefusal> {
        DsGroup::from_bytes(&self.to_bytes())?.process_proposal(input)
    }
}

//! Property tests of the device chain: random sequences of admit, revoke and rotate links,
//! signed by random keys (the user key, active devices, revoked devices, strangers), checked
//! against a model written independently of `Chain`. The chain's verdict on every link must
//! be the model's; no link signed by a device that is not active is ever accepted; and a
//! verifier replaying the accepted links from scratch (what a client does on first sync)
//! reaches the same state as the one that checked them one by one (what the relay does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use ferry_protocol::chain::{
    Chain, ChainError, EpochKeys, Link, LinkBody, SealedKey, Signer, SigningKey,
};
use ferry_protocol::codec;
use ferry_protocol::{DeviceId, DeviceKey, UserKey};
use proptest::prelude::*;

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    /// Admit key `target`, signed by `signer`.
    Admit { signer: usize, target: usize },
    /// Revoke keys `targets` (indices into the key pool), signed by `signer`.
    Revoke { signer: usize, targets: Vec<usize> },
    /// Rotate, signed by `signer`.
    Rotate { signer: usize },
    /// Rotate, sealing to every active device but one (or to one extra device).
    RotateWrongRecipients { signer: usize },
}

/// Key pool: index 0 is the user key, 1..=DEVICES device keys.
const DEVICES: usize = 6;

fn op() -> impl Strategy<Value = Op> {
    let key = 0..=DEVICES;
    let device = 1..=DEVICES;
    prop_oneof![
        4 => (key.clone(), device.clone()).prop_map(|(signer, target)| Op::Admit { signer, target }),
        3 => (key.clone(), proptest::collection::vec(device, 0..3))
            .prop_map(|(signer, targets)| Op::Revoke { signer, targets }),
        2 => key.clone().prop_map(|signer| Op::Rotate { signer }),
        1 => key.prop_map(|signer| Op::RotateWrongRecipients { signer }),
    ]
}

/// What the model knows: every device ever admitted, and which of them are active.
#[derive(Default)]
struct Model {
    known: BTreeSet<DeviceId>,
    active: BTreeSet<DeviceId>,
    epoch: u32,
}

impl Model {
    fn may_sign(&self, signer: &Signer) -> bool {
        match signer {
            Signer::User => true,
            Signer::Device(device) => self.active.contains(device),
        }
    }

    /// The model's verdict on a body signed by `signer`, and the change it makes.
    fn accepts(&self, signer: &Signer, body: &LinkBody) -> bool {
        if !self.may_sign(signer) {
            return false;
        }
        match body {
            LinkBody::Create { .. } => false,
            LinkBody::Admit { device, .. } => !self.known.contains(device),
            LinkBody::Revoke { devices, epoch } => {
                let named: BTreeSet<DeviceId> = devices.iter().copied().collect();
                let remaining: Vec<DeviceId> = self.active.difference(&named).copied().collect();
                !devices.is_empty()
                    && named.len() == devices.len()
                    && named.is_subset(&self.active)
                    && epoch.epoch == self.epoch + 1
                    && epoch.devices.iter().map(|(d, _)| *d).collect::<Vec<_>>() == remaining
            }
            LinkBody::Rotate { epoch } => {
                epoch.epoch == self.epoch + 1
                    && epoch.devices.iter().map(|(d, _)| *d).collect::<Vec<_>>()
                        == self.active.iter().copied().collect::<Vec<_>>()
            }
        }
    }

    fn apply(&mut self, body: &LinkBody) {
        match body {
            LinkBody::Create { .. } => {}
            LinkBody::Admit { device, .. } => {
                self.known.insert(*device);
                self.active.insert(*device);
            }
            LinkBody::Revoke { devices, epoch } => {
                for device in devices {
                    self.active.remove(device);
                }
                self.epoch = epoch.epoch;
            }
            LinkBody::Rotate { epoch } => self.epoch = epoch.epoch,
        }
    }
}

fn sealed() -> SealedKey {
    SealedKey(vec![1; 104])
}

fn epoch(number: u32, recipients: impl IntoIterator<Item = DeviceId>) -> EpochKeys {
    EpochKeys {
        epoch: number,
        recovery: sealed(),
        devices: recipients.into_iter().map(|d| (d, sealed())).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_chain_agrees_with_the_model_and_never_accepts_an_inactive_signer(
        ops in proptest::collection::vec(op(), 1..40),
        seed in any::<u8>(),
    ) {
        let user = UserKey::from_secret_bytes(&[seed; 32]);
        let devices: Vec<DeviceKey> = (1..=DEVICES)
            .map(|i| DeviceKey::from_secret_bytes(&[seed.wrapping_add(i as u8) ^ 0x5a; 32]))
            .collect();
        let id = |i: usize| devices[i - 1].id();
        let key = |i: usize| {
            if i == 0 { SigningKey::User(&user) } else { SigningKey::Device(&devices[i - 1]) }
        };

        let mut chain = Chain::new(user.id());
        let create = chain.sign(
            LinkBody::Create { recovery_exchange: [2; 32], epoch_key: sealed() },
            SigningKey::User(&user),
        );
        chain.apply(&create).unwrap();
        let mut accepted: Vec<Link> = vec![create];
        let mut model = Model::default();

        for op in ops {
            let (signer, body) = match op {
                Op::Admit { signer, target } => (signer, LinkBody::Admit {
                    device: id(target),
                    exchange: [3; 32],
                    name: format!("device {target}"),
                    created_at: 1,
                }),
                Op::Revoke { signer, targets } => {
                    let named: Vec<DeviceId> = targets.iter().map(|&t| id(t)).collect();
                    // Seal to what the chain says remains (the honest client's choice), so
                    // the verdict turns on who signs and whom it names.
                    let remaining = chain
                        .active_devices()
                        .map(|(d, _)| *d)
                        .filter(|d| !named.contains(d))
                        .collect::<Vec<_>>();
                    (signer, LinkBody::Revoke { devices: named, epoch: epoch(chain.epoch() + 1, remaining) })
                }
                Op::Rotate { signer } => (
                    signer,
                    LinkBody::Rotate {
                        epoch: epoch(chain.epoch() + 1, chain.active_devices().map(|(d, _)| *d)),
                    },
                ),
                Op::RotateWrongRecipients { signer } => {
                    let mut recipients: Vec<DeviceId> =
                        chain.active_devices().map(|(d, _)| *d).collect();
                    if recipients.pop().is_none() {
                        recipients.push(id(1));
                    }
                    (signer, LinkBody::Rotate { epoch: epoch(chain.epoch() + 1, recipients) })
                }
            };
            let link = chain.sign(body, key(signer));
            let before = chain.clone();
            let verdict = chain.apply(&link);
            let expected = model.accepts(&link.signer, &link.body);
            prop_assert_eq!(verdict.is_ok(), expected, "link {:?}: {:?}", link.body, verdict);
            if let Signer::Device(device) = link.signer
                && !before.is_active(&device)
            {
                prop_assert_eq!(verdict.clone(), Err(ChainError::SignerNotActive));
            }
            if verdict.is_ok() {
                model.apply(&link.body);
                accepted.push(link);
            } else {
                prop_assert_eq!(&chain, &before, "a refused link changed the chain");
            }
            let active: BTreeSet<DeviceId> = chain.active_devices().map(|(d, _)| *d).collect();
            prop_assert_eq!(&active, &model.active);
            prop_assert_eq!(chain.epoch(), model.epoch);
        }

        // A client replaying the accepted links (decoded from the wire) reaches the same
        // state; dropping any one link from the middle breaks the chain from there on.
        let wire: Vec<Link> = accepted
            .iter()
            .map(|link| codec::decode(&codec::encode(link)).unwrap())
            .collect();
        let replayed = Chain::verify(user.id(), &wire).unwrap();
        prop_assert_eq!(&replayed, &chain);
        if wire.len() > 2 {
            let mut gapped = wire.clone();
            gapped.remove(1);
            prop_assert!(Chain::verify(user.id(), &gapped).is_err());
        }
    }
}

/// Who signs a step of [`every_accepted_prefix_verifies_and_no_revoked_signer_gets_in`].
#[derive(Clone, Debug)]
enum Who {
    /// The user key.
    User,
    /// The `n`th active device (modulo their number; the user key if there is none).
    Active(usize),
    /// The `n`th device the chain has revoked (modulo; the user key if there is none).
    Revoked(usize),
    /// Pool key `n` (the user key, or any device, admitted or not).
    Any(usize),
}

/// What a step does.
#[derive(Clone, Debug)]
enum Step {
    /// Admit pool device `target`.
    Admit(usize),
    /// Revoke these active devices (indices modulo the active ones) and unknown pool ones.
    Revoke(Vec<usize>),
    /// Rotate.
    Rotate,
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        1 => Just(Who::User),
        4 => any::<usize>().prop_map(Who::Active),
        3 => any::<usize>().prop_map(Who::Revoked),
        2 => (0..=DEVICES).prop_map(Who::Any),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..=DEVICES).prop_map(Step::Admit),
        3 => proptest::collection::vec(any::<usize>(), 1..3).prop_map(Step::Revoke),
        2 => Just(Step::Rotate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// What the relay does (apply each link as it comes) and what a client does (verify the
    /// links it fetched, from the first) agree after every accepted link, not only at the
    /// end; a link the relay refused is refused by a client at the same position; and once a
    /// device is revoked, no link it signs is accepted again, whether signed for the chain's
    /// current head or prepared earlier, while it was active, for the head it saw then.
    #[test]
    fn every_accepted_prefix_verifies_and_no_revoked_signer_gets_in(
        steps in proptest::collection::vec((who(), step(), any::<bool>()), 1..30),
        seed in any::<u8>(),
    ) {
        let user = UserKey::from_secret_bytes(&[seed ^ 0xa5; 32]);
        let devices: Vec<DeviceKey> = (1..=DEVICES)
            .map(|i| DeviceKey::from_secret_bytes(&[seed.wrapping_add(i as u8) ^ 0x3c; 32]))
            .collect();
        let key_of = |id: &DeviceId| {
            SigningKey::Device(devices.iter().find(|d| d.id() == *id).unwrap())
        };

        let mut chain = Chain::new(user.id());
        let create = chain.sign(
            LinkBody::Create { recovery_exchange: [2; 32], epoch_key: sealed() },
            SigningKey::User(&user),
        );
        chain.apply(&create).unwrap();
        let mut accepted: Vec<Link> = vec![create];
        let mut revoked_ever: BTreeSet<DeviceId> = BTreeSet::new();
        // Links each device prepared while it was active, for the head it saw then.
        let mut prepared: Vec<(DeviceId, Link)> = Vec::new();

        for (who, step, replay_prepared) in steps {
            let active: Vec<DeviceId> = chain.active_devices().map(|(d, _)| *d).collect();
            let revoked: Vec<DeviceId> = revoked_ever.iter().copied().collect();
            let signing = match who {
                Who::User => SigningKey::User(&user),
                Who::Active(n) if !active.is_empty() => key_of(&active[n % active.len()]),
                Who::Revoked(n) if !revoked.is_empty() => key_of(&revoked[n % revoked.len()]),
                Who::Any(0) | Who::Active(_) | Who::Revoked(_) => SigningKey::User(&user),
                Who::Any(n) => SigningKey::Device(&devices[n - 1]),
            };
            let body = match step {
                Step::Admit(target) => LinkBody::Admit {
                    device: devices[target - 1].id(),
                    exchange: [3; 32],
                    name: format!("device {target}"),
                    created_at: 1,
                },
                Step::Revoke(picks) => {
                    let mut named: Vec<DeviceId> = if active.is_empty() {
                        Vec::new()
                    } else {
                        picks.iter().map(|n| active[n % active.len()]).collect()
                    };
                    named.sort();
                    named.dedup();
                    if named.is_empty() {
                        named.push(devices[picks[0] % DEVICES].id());
                    }
                    let remaining: Vec<DeviceId> =
                        active.iter().copied().filter(|d| !named.contains(d)).collect();
                    LinkBody::Revoke { devices: named, epoch: epoch(chain.epoch() + 1, remaining) }
                }
                Step::Rotate => LinkBody::Rotate {
                    epoch: epoch(chain.epoch() + 1, active.iter().copied()),
                },
            };
            let mut link = chain.sign(body, signing);
            if let Signer::Device(device) = link.signer
                && chain.is_active(&device)
            {
                prepared.push((device, link.clone()));
            }
            // Now and then, a revoked device submits a link it prepared while active.
            if replay_prepared
                && let Some((_, old)) = prepared.iter().find(|(d, _)| revoked_ever.contains(d))
            {
                link = old.clone();
            }

            let before = chain.clone();
            let verdict = chain.apply(&link);
            if let Signer::Device(device) = link.signer {
                if revoked_ever.contains(&device) {
                    prop_assert!(verdict.is_err(), "a revoked device's link was accepted");
                }
                if !before.is_active(&device)
                    && link.seqno == before.seqno() + 1
                    && link.prev == before.head()
                {
                    prop_assert_eq!(verdict.clone(), Err(ChainError::SignerNotActive));
                }
            }
            match verdict {
                Ok(()) => {
                    if let LinkBody::Revoke { devices: named, .. } = &link.body {
                        revoked_ever.extend(named.iter().copied());
                    }
                    accepted.push(link);
                    // The client's view of the accepted prefix is the relay's.
                    let verified = Chain::verify(user.id(), &accepted);
                    prop_assert_eq!(verified.as_ref(), Ok(&chain));
                }
                Err(error) => {
                    prop_assert_eq!(&chain, &before, "a refused link changed the chain");
                    // A client handed the refused link after the accepted ones refuses it
                    // there, for the same reason.
                    let mut offered = accepted.clone();
                    offered.push(link);
                    prop_assert_eq!(
                        Chain::verify(user.id(), &offered),
                        Err((accepted.len(), error))
                    );
                }
            }
            for device in &revoked_ever {
                prop_assert!(!chain.is_active(device), "a revoked device is active again");
            }
        }
    }
}

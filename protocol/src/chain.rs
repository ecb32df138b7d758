//! The device chain: which devices may act for a user, as a hash-chained list of signed links.
//!
//! The chain is the user's answer to "is this device mine?", checked the same way by the
//! relay (before it stores a link, and at every handshake) and by every client (pinning the
//! user id, so a relay cannot add a device). It follows Keybase's sigchain: each link names
//! the hash of the link before it and is signed by the user key or by a device that the chain
//! admits and has not revoked at that point.
//!
//! | link | signed by | what it does |
//! | --- | --- | --- |
//! | [`LinkBody::Create`] | the user key, only as link 1 | names the recovery key's exchange key and seals data-key epoch 0 to it |
//! | [`LinkBody::Admit`] | the user key or an active device | a device may act for the user from now on |
//! | [`LinkBody::Revoke`] | the user key or an active device | devices may not act any more; the data key moves to a new epoch sealed to every device left |
//! | [`LinkBody::Rotate`] | the user key or an active device | the data key moves to a new epoch, sealed to every active device |
//!
//! Every epoch's key is sealed to the recovery key's exchange key too, so a user who lost
//! every device and types the recovery key reads the whole history again. A revoked device
//! is never admitted again (it would need a new device key), and a link signed by a device
//! that is revoked, even by a link the device has not seen yet, is refused.
//!
//! What the relay cannot check, the clients do: that a sealed epoch key opens, and that
//! revocations rotate to a key the revoked device never saw. The relay checks everything
//! that needs no secret: order, hashes, signatures, signer status and that a new epoch is
//! sealed to exactly the devices that remain.
//!
//! Signature: Ed25519 by the signer over `LINK_LABEL ‖ postcard((user, seqno, prev, body,
//! signer))`. Hash: `SHA-256(LINK_HASH_LABEL ‖ postcard(link))`, signature included.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, DecodeError, Wire, check_len};
use crate::identity::{DeviceId, DeviceKey, IdentityError, UserId, UserKey, check_device_name};

/// Prefix of every link's signed message.
pub const LINK_LABEL: &[u8] = b"ferry/v1/chain-link";
/// Prefix of every link's hash input.
pub const LINK_HASH_LABEL: &[u8] = b"ferry/v1/chain-link-hash";
/// Largest sealed epoch key, in bytes (an X25519 public key, a nonce, 32 bytes and a tag fit
/// in a third of it).
pub const MAX_SEALED_KEY_LEN: usize = 256;
/// Most devices one chain may hold (revoked ones included): a revocation names and seals to
/// at most this many.
pub const MAX_CHAIN_DEVICES: usize = 1024;
/// Most links one chain may hold. Every link is verified by the relay and by each device, and
/// `Rotate` links cost nothing to make, so a device of the user could otherwise grow the chain
/// (and everyone's verification work) without end; real chains stay far below it.
pub const MAX_CHAIN_LINKS: u64 = 4096;

/// The hash of a link; the first link names [`LinkHash::ZERO`] as its predecessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinkHash(pub [u8; 32]);

impl LinkHash {
    /// What the first link names as the link before it.
    pub const ZERO: Self = Self([0; 32]);
}

/// Who signed a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signer {
    /// The user key (present only while the user types the recovery key).
    User,
    /// A device the chain admits and has not revoked.
    Device(DeviceId),
}

/// A data key sealed to one recipient's X25519 exchange key. Opaque to the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A new data-key epoch: the key sealed to the recovery key and to each device that keeps
/// reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochKeys {
    /// The epoch number: one more than the chain's current epoch.
    pub epoch: u32,
    /// The key sealed to the recovery key's exchange key.
    pub recovery: SealedKey,
    /// The key sealed to each remaining device, sorted by device id, one each.
    pub devices: Vec<(DeviceId, SealedKey)>,
}

/// What a link says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkBody {
    /// The user's first link: the recovery key's X25519 exchange key (to which every epoch's
    /// key is sealed) and data-key epoch 0, sealed to it.
    Create {
        /// The recovery key's exchange public key.
        recovery_exchange: [u8; 32],
        /// Epoch 0's key, sealed to `recovery_exchange`.
        epoch_key: SealedKey,
    },
    /// A device may act for the user.
    Admit {
        /// The device's signing key.
        device: DeviceId,
        /// The device's X25519 exchange key, to which later epochs' keys are sealed.
        exchange: [u8; 32],
        /// A human name for the device.
        name: String,
        /// When it was admitted, in seconds since the Unix epoch (informational).
        created_at: u64,
    },
    /// Devices may no longer act for the user; the data key moves to a new epoch.
    Revoke {
        /// The devices revoked, each active before this link, each named once.
        devices: Vec<DeviceId>,
        /// The new epoch, sealed to every device still active after this link.
        epoch: EpochKeys,
    },
    /// The data key moves to a new epoch (after a suspected leak, or on a schedule).
    Rotate {
        /// The new epoch, sealed to every active device.
        epoch: EpochKeys,
    },
}

/// One signed link of a device chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Whose chain it extends.
    pub user: UserId,
    /// Its position: 1 for the first link.
    pub seqno: u64,
    /// The hash of the link before it ([`LinkHash::ZERO`] for the first).
    pub prev: LinkHash,
    /// What it says.
    pub body: LinkBody,
    /// Who signed it.
    pub signer: Signer,
    /// Ed25519 signature by the signer (see the module docs).
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl Wire for Link {
    /// Sizes only (a decoder bounds what it holds); the chain rules are [`Chain::check`]'s.
    fn check_limits(&self) -> Result<(), DecodeError> {
        let sealed = |key: &SealedKey| check_len("sealed key", key.0.len(), MAX_SEALED_KEY_LEN);
        let epoch = |epoch: &EpochKeys| {
            check_len("epoch recipients", epoch.devices.len(), MAX_CHAIN_DEVICES)?;
            sealed(&epoch.recovery)?;
            epoch.devices.iter().try_for_each(|(_, key)| sealed(key))
        };
        match &self.body {
            LinkBody::Create { epoch_key, .. } => sealed(epoch_key),
            LinkBody::Admit { name, .. } => check_len(
                "device name",
                name.len(),
                crate::limits::MAX_DEVICE_NAME_LEN,
            ),
            LinkBody::Revoke {
                devices,
                epoch: keys,
            } => {
                check_len("revoked devices", devices.len(), MAX_CHAIN_DEVICES)?;
                epoch(keys)
            }
            LinkBody::Rotate { epoch: keys } => epoch(keys),
        }
    }
}

/// The key that signs a new link.
#[derive(Clone, Copy, Debug)]
pub enum SigningKey<'a> {
    /// The user key, derived from the recovery key.
    User(&'a UserKey),
    /// A device's own key.
    Device(&'a DeviceKey),
}

impl Link {
    /// The hash the next link names as `prev`.
    pub fn hash(&self) -> LinkHash {
        let digest = Sha256::new()
            .chain_update(LINK_HASH_LABEL)
            .chain_update(codec::encode(self))
            .finalize();
        LinkHash(digest.into())
    }

    fn signed_message(
        user: &UserId,
        seqno: u64,
        prev: &LinkHash,
        body: &LinkBody,
        signer: &Signer,
    ) -> Vec<u8> {
        codec::encode(&(user, seqno, prev, body, signer))
    }

    fn check_signature(&self) -> Result<(), IdentityError> {
        let message =
            Self::signed_message(&self.user, self.seqno, &self.prev, &self.body, &self.signer);
        match self.signer {
            Signer::User => self.user.verify(LINK_LABEL, &message, &self.signature),
            Signer::Device(device) => device.verify(LINK_LABEL, &message, &self.signature),
        }
    }
}

/// Why a link does not extend a chain. The chain is unchanged after any of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The link belongs to another user's chain.
    #[error("the link is for another user")]
    WrongUser,
    /// The link is not the next one (a gap, a replay or a fork by position).
    #[error("the link has position {got}; the next is {expected}")]
    OutOfOrder {
        /// The position the chain expects.
        expected: u64,
        /// The position the link claims.
        got: u64,
    },
    /// The link names another predecessor than the chain's head: a fork.
    #[error("the link does not follow the chain's last link")]
    Fork,
    /// The signing device is unknown or revoked at this point of the chain.
    #[error("the signer is not an active device of the user")]
    SignerNotActive,
    /// The signature does not verify.
    #[error("the link's signature does not verify")]
    BadSignature,
    /// The first link is not a `Create` signed by the user key, or a later one is.
    #[error("a chain starts with one Create link signed by the user key, and has only one")]
    BadStart,
    /// An admitted device is already in the chain (active or revoked).
    #[error("the device is already in the chain")]
    AlreadyKnown,
    /// A revoked device is not active (unknown, revoked already, or named twice).
    #[error("a revoked device is not an active device of the user")]
    NotActive,
    /// A revocation names no device.
    #[error("a revocation names no device")]
    NothingRevoked,
    /// A new epoch is not numbered one above the chain's current one.
    #[error("the new epoch is {got}; the next is {expected}")]
    WrongEpoch {
        /// The epoch the chain expects.
        expected: u32,
        /// The epoch the link names.
        got: u32,
    },
    /// A new epoch is not sealed to exactly the devices that remain active, once each, in
    /// device order.
    #[error("the new epoch is not sealed to exactly the active devices")]
    WrongRecipients,
    /// A field is out of bounds (device name, sealed key size, chain size).
    #[error("a field of the link is out of bounds: {0}")]
    Invalid(&'static str),
}

/// One device as the chain knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its X25519 exchange key.
    pub exchange: [u8; 32],
    /// Its name.
    pub name: String,
    /// The position of the link that admitted it.
    pub admitted_at: u64,
    /// The position of the link that revoked it, if one did.
    pub revoked_at: Option<u64>,
}

impl Member {
    /// Whether it may act for the user (admitted, not revoked).
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// A user's device chain as verified so far: the state every new link is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    user: UserId,
    seqno: u64,
    head: LinkHash,
    epoch: u32,
    recovery_exchange: Option<[u8; 32]>,
    devices: BTreeMap<DeviceId, Member>,
}

impl Chain {
    /// The empty chain of `user` (no link yet): only a `Create` signed by the user key
    /// extends it.
    pub fn new(user: UserId) -> Self {
        Self {
            user,
            seqno: 0,
            head: LinkHash::ZERO,
            epoch: 0,
            recovery_exchange: None,
            devices: BTreeMap::new(),
        }
    }

    /// Verifies `links` from the first, and returns the chain they make.
    pub fn verify(user: UserId, links: &[Link]) -> Result<Self, (usize, ChainError)> {
        let mut chain = Self::new(user);
        for (i, link) in links.iter().enumerate() {
            chain.apply(link).map_err(|error| (i, error))?;
        }
        Ok(chain)
    }

    /// The user whose chain this is.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The number of links (the position of the last).
    pub fn seqno(&self) -> u64 {
        self.seqno
    }

    /// The hash of the last link ([`LinkHash::ZERO`] before the first).
    pub fn head(&self) -> LinkHash {
        self.head
    }

    /// The current data-key epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The recovery key's exchange key, once the chain is created.
    pub fn recovery_exchange(&self) -> Option<[u8; 32]> {
        self.recovery_exchange
    }

    /// A device as the chain knows it (active or revoked).
    pub fn member(&self, device: &DeviceId) -> Option<&Member> {
        self.devices.get(device)
    }

    /// Whether `device` may act for the user now.
    pub fn is_active(&self, device: &DeviceId) -> bool {
        self.devices.get(device).is_some_and(Member::is_active)
    }

    /// The devices that may act for the user now, in device order.
    pub fn active_devices(&self) -> impl Iterator<Item = (&DeviceId, &Member)> {
        self.devices.iter().filter(|(_, m)| m.is_active())
    }

    /// Signs `body` as the next link of this chain. The link is not applied: pass it to
    /// [`Chain::apply`] (which checks it like any other).
    pub fn sign(&self, body: LinkBody, key: SigningKey<'_>) -> Link {
        let seqno = self.seqno + 1;
        let signer = match key {
            SigningKey::User(_) => Signer::User,
            SigningKey::Device(device) => Signer::Device(device.id()),
        };
        let message = Link::signed_message(&self.user, seqno, &self.head, &body, &signer);
        let signature = match key {
            SigningKey::User(user) => user.sign(LINK_LABEL, &message),
            SigningKey::Device(device) => device.sign(LINK_LABEL, &message),
        };
        Link {
            user: self.user,
            seqno,
            prev: self.head,
            body,
            signer,
            signature,
        }
    }

    /// Checks that `link` extends this chain and applies it; on error nothing changes.
    pub fn apply(&mut self, link: &Link) -> Result<(), ChainError> {
        self.check(link)?;
        let seqno = link.seqno;
        match &link.body {
            LinkBody::Create {
                recovery_exchange, ..
            } => self.recovery_exchange = Some(*recovery_exchange),
            LinkBody::Admit {
                device,
                exchange,
                name,
                ..
            } => {
                self.devices.insert(
                    *device,
                    Member {
                        exchange: *exchange,
                        name: name.clone(),
                        admitted_at: seqno,
                        revoked_at: None,
                    },
                );
            }
            LinkBody::Revoke { devices, epoch } => {
                for device in devices {
                    if let Some(member) = self.devices.get_mut(device) {
                        member.revoked_at = Some(seqno);
                    }
                }
                self.epoch = epoch.epoch;
            }
            LinkBody::Rotate { epoch } => self.epoch = epoch.epoch,
        }
        self.seqno = seqno;
        self.head = link.hash();
        Ok(())
    }

    /// Every check of [`Chain::apply`], changing nothing.
    pub fn check(&self, link: &Link) -> Result<(), ChainError> {
        if link.user != self.user {
            return Err(ChainError::WrongUser);
        }
        let expected = self.seqno + 1;
        if link.seqno != expected {
            return Err(ChainError::OutOfOrder {
                expected,
                got: link.seqno,
            });
        }
        if link.prev != self.head {
            return Err(ChainError::Fork);
        }
        if link.seqno > MAX_CHAIN_LINKS {
            return Err(ChainError::Invalid("too many links"));
        }
        if let Signer::Device(device) = &link.signer
            && !self.is_active(device)
        {
            return Err(ChainError::SignerNotActive);
        }
        let is_create = matches!(link.body, LinkBody::Create { .. });
        if is_create != (self.seqno == 0) || (is_create && link.signer != Signer::User) {
            return Err(ChainError::BadStart);
        }
        self.check_body(&link.body)?;
        // Last, as the costliest check.
        link.check_signature().map_err(|_| ChainError::BadSignature)
    }

    fn check_body(&self, body: &LinkBody) -> Result<(), ChainError> {
        match body {
            LinkBody::Create { epoch_key, .. } => check_sealed(epoch_key),
            LinkBody::Admit { device, name, .. } => {
                check_device_name(name).map_err(|_| ChainError::Invalid("device name"))?;
                if self.devices.contains_key(device) {
                    return Err(ChainError::AlreadyKnown);
                }
                if self.devices.len() >= MAX_CHAIN_DEVICES {
                    return Err(ChainError::Invalid("too many devices"));
                }
                Ok(())
            }
            LinkBody::Revoke { devices, epoch } => {
                if devices.is_empty() {
                    return Err(ChainError::NothingRevoked);
                }
                let revoked: BTreeSet<&DeviceId> = devices.iter().collect();
                if revoked.len() != devices.len() || !devices.iter().all(|d| self.is_active(d)) {
                    return Err(ChainError::NotActive);
                }
                let remaining = self
                    .active_devices()
                    .map(|(device, _)| device)
                    .filter(|device| !revoked.contains(device));
                self.check_epoch(epoch, remaining)
            }
            LinkBody::Rotate { epoch } => {
                self.check_epoch(epoch, self.active_devices().map(|(device, _)| device))
            }
        }
    }

    /// A new epoch is the next number, sealed to the recovery key and to exactly
    /// `recipients` (in device order, which `BTreeMap` iteration gives).
    fn check_epoch<'a>(
        &self,
        epoch: &EpochKeys,
        recipients: impl Iterator<Item = &'a DeviceId>,
    ) -> Result<(), ChainError> {
        let expected = self
            .epoch
            .checked_add(1)
            .ok_or(ChainError::Invalid("epoch"))?;
        if epoch.epoch != expected {
            return Err(ChainError::WrongEpoch {
                expected,
                got: epoch.epoch,
            });
        }
        check_sealed(&epoch.recovery)?;
        let mut sealed = epoch.devices.iter();
        for recipient in recipients {
            match sealed.next() {
                Some((device, key)) if device == recipient => check_sealed(key)?,
                _ => return Err(ChainError::WrongRecipients),
            }
        }
        if sealed.next().is_some() {
            return Err(ChainError::WrongRecipients);
        }
        Ok(())
    }
}

fn check_sealed(key: &SealedKey) -> Result<(), ChainError> {
    if key.0.is_empty() || key.0.len() > MAX_SEALED_KEY_LEN {
        return Err(ChainError::Invalid("sealed key size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    struct World {
        user: UserKey,
        devices: Vec<DeviceKey>,
        chain: Chain,
    }

    fn sealed() -> SealedKey {
        SealedKey(vec![7; 104])
    }

    fn admit(device: &DeviceKey) -> LinkBody {
        LinkBody::Admit {
            device: device.id(),
            exchange: [1; 32],
            name: "laptop".into(),
            created_at: 1_700_000_000,
        }
    }

    fn epoch_for(chain: &Chain, leaving: &[DeviceId]) -> EpochKeys {
        EpochKeys {
            epoch: chain.epoch() + 1,
            recovery: sealed(),
            devices: chain
                .active_devices()
                .map(|(d, _)| *d)
                .filter(|d| !leaving.contains(d))
                .map(|d| (d, sealed()))
                .collect(),
        }
    }

    /// A created chain with three admitted devices (the first admitted by the user key, the
    /// others by the first device).
    fn world() -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let user = UserKey::generate(&mut rng);
        let devices: Vec<DeviceKey> = (0..3).map(|_| DeviceKey::generate(&mut rng)).collect();
        let mut chain = Chain::new(user.id());
        let create = chain.sign(
            LinkBody::Create {
                recovery_exchange: [9; 32],
                epoch_key: sealed(),
            },
            SigningKey::User(&user),
        );
        chain.apply(&create).unwrap();
        let first = chain.sign(admit(&devices[0]), SigningKey::User(&user));
        chain.apply(&first).unwrap();
        for device in &devices[1..] {
            let link = chain.sign(admit(device), SigningKey::Device(&devices[0]));
            chain.apply(&link).unwrap();
        }
        World {
            user,
            devices,
            chain,
        }
    }

    #[test]
    fn a_chain_verifies_from_its_links_and_tracks_members() {
        let w = world();
        assert_eq!(w.chain.seqno(), 4);
        assert_eq!(w.chain.active_devices().count(), 3);
        assert_eq!(w.chain.recovery_exchange(), Some([9; 32]));
        assert_eq!(w.chain.member(&w.devices[1].id()).unwrap().admitted_at, 3);
    }

    #[test]
    fn a_chain_takes_links_up_to_its_limit_and_no_more() {
        let mut w = world();
        let rotate = |chain: &Chain, devices: &[DeviceKey]| {
            chain.sign(
                LinkBody::Rotate {
                    epoch: epoch_for(chain, &[]),
                },
                SigningKey::Device(&devices[0]),
            )
        };
        // A chain one link short of the limit (as if it had grown there) takes the last one...
        w.chain.seqno = MAX_CHAIN_LINKS - 1;
        let last = rotate(&w.chain, &w.devices);
        w.chain.apply(&last).unwrap();
        assert_eq!(w.chain.seqno(), MAX_CHAIN_LINKS);
        // ...and refuses the one after, whoever signs it, changing nothing.
        let before = w.chain.clone();
        let beyond = rotate(&w.chain, &w.devices);
        assert_eq!(
            w.chain.apply(&beyond),
            Err(ChainError::Invalid("too many links"))
        );
        assert_eq!(w.chain, before);
    }

    #[test]
    fn the_revoked_device_attack_is_refused() {
        // The attack of the trust issue: a revoked device that kept its folder signs an
        // admission for a fresh key, and a revocation of the legitimate devices.
        let mut w = world();
        let thief = &w.devices[2];
        let revoke = w.chain.sign(
            LinkBody::Revoke {
                devices: vec![thief.id()],
                epoch: epoch_for(&w.chain, &[thief.id()]),
            },
            SigningKey::Device(&w.devices[0]),
        );
        w.chain.apply(&revoke).unwrap();
        assert!(!w.chain.is_active(&thief.id()));
        assert_eq!(w.chain.epoch(), 1);

        let fresh = DeviceKey::generate(&mut ChaCha20Rng::seed_from_u64(99));
        let before = w.chain.clone();
        let admission = w.chain.sign(admit(&fresh), SigningKey::Device(thief));
        assert_eq!(w.chain.apply(&admission), Err(ChainError::SignerNotActive));
        let coup = w.chain.sign(
            LinkBody::Revoke {
                devices: vec![w.devices[0].id()],
                epoch: epoch_for(&w.chain, &[w.devices[0].id()]),
            },
            SigningKey::Device(thief),
        );
        assert_eq!(w.chain.apply(&coup), Err(ChainError::SignerNotActive));
        // Nor may it be admitted again, under its own key.
        let readmit = w
            .chain
            .sign(admit(thief), SigningKey::Device(&w.devices[0]));
        assert_eq!(w.chain.apply(&readmit), Err(ChainError::AlreadyKnown));
        assert_eq!(w.chain, before, "refused links change nothing");
    }

    #[test]
    fn order_forks_and_signatures_are_checked() {
        let w = world();
        let fresh = DeviceKey::generate(&mut ChaCha20Rng::seed_from_u64(5));
        let good = w
            .chain
            .sign(admit(&fresh), SigningKey::Device(&w.devices[1]));
        w.chain.check(&good).unwrap();

        let mut gap = good.clone();
        gap.seqno += 1;
        assert_eq!(
            w.chain.check(&gap),
            Err(ChainError::OutOfOrder {
                expected: 5,
                got: 6
            })
        );
        let mut fork = good.clone();
        fork.prev = LinkHash([3; 32]);
        assert_eq!(w.chain.check(&fork), Err(ChainError::Fork));
        let mut forged = good.clone();
        forged.signature[0] ^= 1;
        assert_eq!(w.chain.check(&forged), Err(ChainError::BadSignature));
        // A signature is bound to its signer: claiming another device's authorship fails.
        let mut claimed = good.clone();
        claimed.signer = Signer::Device(w.devices[0].id());
        assert_eq!(w.chain.check(&claimed), Err(ChainError::BadSignature));
        let mut by_user = good.clone();
        by_user.signer = Signer::User;
        assert_eq!(w.chain.check(&by_user), Err(ChainError::BadSignature));
        // Every field is signed.
        let mut renamed = good.clone();
        if let LinkBody::Admit { name, .. } = &mut renamed.body {
            *name = "evil".into();
        }
        assert_eq!(w.chain.check(&renamed), Err(ChainError::BadSignature));
        let mut other_user = good;
        other_user.user = UserId([4; 32]);
        assert_eq!(w.chain.check(&other_user), Err(ChainError::WrongUser));
    }

    #[test]
    fn the_chain_starts_with_one_create_by_the_user_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let user = UserKey::generate(&mut rng);
        let device = DeviceKey::generate(&mut rng);
        let chain = Chain::new(user.id());
        let admit_first = chain.sign(admit(&device), SigningKey::User(&user));
        assert_eq!(chain.check(&admit_first), Err(ChainError::BadStart));
        let create_by_device = chain.sign(
            LinkBody::Create {
                recovery_exchange: [9; 32],
                epoch_key: sealed(),
            },
            SigningKey::Device(&device),
        );
        assert_eq!(
            chain.check(&create_by_device),
            Err(ChainError::SignerNotActive)
        );
        let w = world();
        let again = w.chain.sign(
            LinkBody::Create {
                recovery_exchange: [8; 32],
                epoch_key: sealed(),
            },
            SigningKey::User(&w.user),
        );
        assert_eq!(w.chain.check(&again), Err(ChainError::BadStart));
    }

    #[test]
    fn a_new_epoch_is_sealed_to_exactly_the_devices_that_remain() {
        let w = world();
        let leaving = w.devices[1].id();
        let signer = SigningKey::Device(&w.devices[0]);
        let revoke = |epoch: EpochKeys| LinkBody::Revoke {
            devices: vec![leaving],
            epoch,
        };
        // Sealed to the revoked device too: it would read the new epoch.
        let mut leaky = epoch_for(&w.chain, &[]);
        let check = |body| w.chain.check(&w.chain.sign(body, signer));
        assert_eq!(
            check(revoke(leaky.clone())),
            Err(ChainError::WrongRecipients)
        );
        // One remaining device left out, or one sealed twice.
        leaky = epoch_for(&w.chain, &[leaving]);
        let mut short = leaky.clone();
        short.devices.pop();
        assert_eq!(check(revoke(short)), Err(ChainError::WrongRecipients));
        let mut doubled = leaky.clone();
        doubled.devices.push(doubled.devices[0].clone());
        assert_eq!(check(revoke(doubled)), Err(ChainError::WrongRecipients));
        let mut skipped = leaky.clone();
        skipped.epoch += 1;
        assert_eq!(
            check(revoke(skipped)),
            Err(ChainError::WrongEpoch {
                expected: 1,
                got: 2
            })
        );
        let mut empty_key = leaky.clone();
        empty_key.recovery = SealedKey(Vec::new());
        assert!(matches!(
            check(revoke(empty_key)),
            Err(ChainError::Invalid(_))
        ));
        assert_eq!(check(revoke(leaky)), Ok(()));
        // Revoking nobody, somebody twice, or an unknown device.
        let body = |devices| LinkBody::Revoke {
            devices,
            epoch: epoch_for(&w.chain, &[leaving]),
        };
        assert_eq!(check(body(vec![])), Err(ChainError::NothingRevoked));
        assert_eq!(
            check(body(vec![leaving, leaving])),
            Err(ChainError::NotActive)
        );
        assert_eq!(
            check(body(vec![DeviceId([1; 32])])),
            Err(ChainError::NotActive)
        );
    }

    #[test]
    fn a_new_epoch_is_sealed_to_the_remaining_devices_themselves_in_device_order() {
        // The right number of recipients is not enough: each must be the device in its place.
        let w = world();
        let signer = SigningKey::Device(&w.devices[0]);
        let check = |body| w.chain.check(&w.chain.sign(body, signer));
        let rotate = |epoch| LinkBody::Rotate { epoch };
        let right = epoch_for(&w.chain, &[]);
        assert_eq!(right.devices.len(), 3);
        assert_eq!(check(rotate(right.clone())), Ok(()));
        // A stranger sealed to in place of an active device.
        for i in 0..right.devices.len() {
            let mut stranger = right.clone();
            stranger.devices[i].0 = DeviceId([1; 32]);
            assert_eq!(
                check(rotate(stranger)),
                Err(ChainError::WrongRecipients),
                "recipient {i}"
            );
        }
        // The same devices out of order.
        let mut swapped = right.clone();
        swapped.devices.swap(0, 2);
        assert_eq!(check(rotate(swapped)), Err(ChainError::WrongRecipients));
        // A revocation sealing to the revoked device in place of one that remains.
        let leaving = w.devices[1].id();
        let mut replaced = epoch_for(&w.chain, &[leaving]);
        replaced.devices[0].0 = leaving;
        replaced.devices.sort_by_key(|(device, _)| *device);
        let revoke = LinkBody::Revoke {
            devices: vec![leaving],
            epoch: replaced,
        };
        assert_eq!(check(revoke), Err(ChainError::WrongRecipients));
    }

    #[test]
    fn sealed_keys_are_accepted_up_to_their_limit_and_refused_past_it_everywhere() {
        // `Chain::check` bounds sealed keys itself (a relay may check a link it built, not
        // only one it decoded): 1 to MAX_SEALED_KEY_LEN bytes, wherever the key is.
        let w = world();
        let signer = SigningKey::Device(&w.devices[0]);
        let check = |body| w.chain.check(&w.chain.sign(body, signer));
        let refused = Err(ChainError::Invalid("sealed key size"));
        let sized = |len: usize, place: usize| {
            let mut epoch = epoch_for(&w.chain, &[]);
            let key = SealedKey(vec![7; len]);
            match place {
                0 => epoch.recovery = key,
                i => epoch.devices[i - 1].1 = key,
            }
            LinkBody::Rotate { epoch }
        };
        for place in 0..=3 {
            for len in [1, MAX_SEALED_KEY_LEN - 1, MAX_SEALED_KEY_LEN] {
                assert_eq!(check(sized(len, place)), Ok(()), "{len} bytes at {place}");
            }
            for len in [0, MAX_SEALED_KEY_LEN + 1, 2 * MAX_SEALED_KEY_LEN] {
                assert_eq!(check(sized(len, place)), refused, "{len} bytes at {place}");
            }
        }
        // The first link's epoch key, and a revocation's.
        let user = UserKey::generate(&mut ChaCha20Rng::seed_from_u64(13));
        let empty = Chain::new(user.id());
        let create = |len| {
            empty.check(&empty.sign(
                LinkBody::Create {
                    recovery_exchange: [9; 32],
                    epoch_key: SealedKey(vec![7; len]),
                },
                SigningKey::User(&user),
            ))
        };
        assert_eq!(create(MAX_SEALED_KEY_LEN), Ok(()));
        assert_eq!(create(MAX_SEALED_KEY_LEN + 1), refused);
        assert_eq!(create(0), refused);
        let leaving = w.devices[2].id();
        let revoke = |len| {
            let mut epoch = epoch_for(&w.chain, &[leaving]);
            epoch.devices[1].1 = SealedKey(vec![7; len]);
            LinkBody::Revoke {
                devices: vec![leaving],
                epoch,
            }
        };
        assert_eq!(check(revoke(MAX_SEALED_KEY_LEN)), Ok(()));
        assert_eq!(check(revoke(MAX_SEALED_KEY_LEN + 1)), refused);
    }

    #[test]
    fn the_user_key_revokes_everything_and_admits_a_new_first_device() {
        let mut w = world();
        let all: Vec<DeviceId> = w.devices.iter().map(DeviceKey::id).collect();
        let mut sorted = all.clone();
        sorted.sort();
        let wipe = w.chain.sign(
            LinkBody::Revoke {
                devices: sorted,
                epoch: epoch_for(&w.chain, &all),
            },
            SigningKey::User(&w.user),
        );
        w.chain.apply(&wipe).unwrap();
        assert_eq!(w.chain.active_devices().count(), 0);
        let fresh = DeviceKey::generate(&mut ChaCha20Rng::seed_from_u64(77));
        let admission = w.chain.sign(admit(&fresh), SigningKey::User(&w.user));
        w.chain.apply(&admission).unwrap();
        assert!(w.chain.is_active(&fresh.id()));
    }

    #[test]
    fn links_round_trip_and_hash_over_their_signature() {
        let w = world();
        let link = w.chain.sign(
            LinkBody::Rotate {
                epoch: epoch_for(&w.chain, &[]),
            },
            SigningKey::Device(&w.devices[2]),
        );
        let decoded: Link = codec::decode(&codec::encode(&link)).unwrap();
        assert_eq!(decoded, link);
        let mut huge = link.clone();
        if let LinkBody::Rotate { epoch } = &mut huge.body {
            epoch.recovery = SealedKey(vec![0; MAX_SEALED_KEY_LEN + 1]);
        }
        assert!(matches!(
            codec::decode::<Link>(&codec::encode(&huge)),
            Err(DecodeError::FieldTooLarge { .. })
        ));
        let mut other = link.clone();
        other.signature[63] ^= 1;
        assert_ne!(other.hash(), link.hash());
    }
}

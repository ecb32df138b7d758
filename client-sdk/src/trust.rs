//! The user's device chain as this device has verified it, and the data-key epochs it holds.
//!
//! The relay stores the chain ([`ferry_protocol::chain`]); this device keeps its own copy of
//! every link, verified from link 1 against the user id it was given (at `ferry init`, by the
//! pairing grant, or from the recovery key), and checks every link the relay serves later
//! against it with [`Chain::apply`]. A relay that adds a device, rewrites history or serves a
//! forged link is caught here: the client stops instead of believing it.
//!
//! Each revocation or rotation moves the data key to a new epoch, sealed to every device that
//! stays and to the recovery key. When a new link seals an epoch to this device, the key is
//! opened with this device's exchange secret and kept; a device that is revoked learns no key
//! after its revocation.

use std::collections::BTreeMap;

use ferry_protocol::chain::{EpochKeys, SealedKey};
use ferry_protocol::epoch::{ExchangeSecret, open_epoch_key, seal_epoch_key};
use ferry_protocol::seal::DataKey;
use ferry_protocol::{Chain, ChainError, DeviceId, Link, LinkBody, SigningKey, UserId};
use rand_core::CryptoRngCore;

/// A verified chain, its links, and the epoch keys this device can use.
pub(crate) struct Trust {
    links: Vec<Link>,
    chain: Chain,
    epochs: BTreeMap<u32, DataKey>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("user", &self.chain.user())
            .field("links", &self.links.len())
            .field("epoch", &self.chain.epoch())
            .field("epoch_keys", &self.epochs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Clone for Trust {
    fn clone(&self) -> Self {
        Self {
            links: self.links.clone(),
            chain: self.chain.clone(),
            epochs: self
                .epochs
                .iter()
                .map(|(n, key)| (*n, DataKey::from_bytes(key.bytes())))
                .collect(),
        }
    }
}

/// What applying links changed for this device.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// A link revoked this device.
    pub revoked: bool,
    /// Epochs sealed to this device whose key does not open (a broken or hostile device of
    /// the user signed them; the relay cannot forge a link).
    pub unopened: Vec<u32>,
}

/// A link that does not extend the chain: `seqno` is the position it claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub seqno: u64,
    pub error: ChainError,
}

impl From<Refused> for crate::error::ClientError {
    /// The relay served a link that does not verify: nothing it says is believed.
    fn from(refused: Refused) -> Self {
        Self::ChainRejected {
            seqno: refused.seqno,
            reason: refused.error.to_string(),
        }
    }
}

/// Why a revocation could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RevokeError {
    /// The device is not an active device of the chain.
    NotActive(DeviceId),
    /// The chain has no recovery exchange key (not created).
    NotCreated,
    /// An exchange key of the chain is unusable.
    WeakKey(DeviceId),
}

/// One device of the chain, for listing.
#[derive(Debug, Clone)]
pub(crate) struct ChainDevice {
    pub device: DeviceId,
    pub name: String,
    pub created_at: u64,
    pub admitted_at: u64,
    pub revoked_at: Option<u64>,
}

impl Trust {
    /// Verifies `links` from the first as `user`'s chain and keeps `epochs` (not checked:
    /// most epochs are not sealed to this device). Fails with the first link that does not
    /// verify.
    pub fn verify(
        user: UserId,
        links: Vec<Link>,
        epochs: BTreeMap<u32, DataKey>,
    ) -> Result<Self, Refused> {
        let chain = Chain::verify(user, &links).map_err(|(i, error)| Refused {
            seqno: i as u64 + 1,
            error,
        })?;
        Ok(Self {
            links,
            chain,
            epochs,
        })
    }

    /// The chain as verified so far.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The number of links.
    pub fn seqno(&self) -> u64 {
        self.chain.seqno()
    }

    /// The key of `epoch`, if this device holds it.
    pub fn key(&self, epoch: u32) -> Option<&DataKey> {
        self.epochs.get(&epoch)
    }

    /// The chain's current epoch and its key, if this device holds it.
    pub fn newest(&self) -> (u32, Option<&DataKey>) {
        let epoch = self.chain.epoch();
        (epoch, self.epochs.get(&epoch))
    }

    /// Every epoch key held, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = (u32, &DataKey)> {
        self.epochs.iter().map(|(n, key)| (*n, key))
    }

    /// Whether this device holds the key of every epoch from 0 to the current one.
    pub fn has_every_epoch(&self) -> bool {
        (0..=self.chain.epoch()).all(|n| self.epochs.contains_key(&n))
    }

    /// Keeps the key of `epoch` (one this device made or was granted).
    pub fn insert_epoch(&mut self, epoch: u32, key: DataKey) {
        self.epochs.insert(epoch, key);
    }

    /// Checks and applies `links` (each the next one), opening the epoch keys sealed to
    /// `me` with `exchange`. Stops at the first link that does not extend the chain; the
    /// links before it stay applied.
    pub fn apply(
        &mut self,
        links: &[Link],
        me: DeviceId,
        exchange: &ExchangeSecret,
    ) -> Result<Applied, Refused> {
        let mut applied = Applied::default();
        for link in links {
            self.chain.apply(link).map_err(|error| Refused {
                seqno: link.seqno,
                error,
            })?;
            self.links.push(link.clone());
            let epoch = match &link.body {
                LinkBody::Revoke { devices, epoch } => {
                    applied.revoked |= devices.contains(&me);
                    epoch
                }
                LinkBody::Rotate { epoch } => epoch,
                LinkBody::Create { .. } | LinkBody::Admit { .. } => continue,
            };
            if let Some((_, sealed)) = epoch.devices.iter().find(|(device, _)| *device == me) {
                match open_epoch_key(exchange, &self.chain.user(), epoch.epoch, sealed) {
                    Ok(key) => {
                        self.epochs.insert(epoch.epoch, key);
                    }
                    Err(error) => {
                        tracing::warn!(epoch = epoch.epoch, %error, "an epoch key sealed to this device does not open");
                        applied.unopened.push(epoch.epoch);
                    }
                }
            }
        }
        Ok(applied)
    }

    /// The next link: an admission of `device` (with its exchange key and name), signed by
    /// `signer`.
    pub fn admit(
        &self,
        device: DeviceId,
        exchange: [u8; 32],
        name: &str,
        created_at: u64,
        signer: SigningKey<'_>,
    ) -> Link {
        self.chain.sign(
            LinkBody::Admit {
                device,
                exchange,
                name: name.to_owned(),
                created_at,
            },
            signer,
        )
    }

    /// The next link: a revocation of `devices` (each active), moving the data key to a new
    /// epoch sealed to the recovery key and to every device that stays. Returns the link and
    /// the new epoch's key.
    pub fn revoke(
        &self,
        devices: &[DeviceId],
        signer: SigningKey<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Link, u32, DataKey), RevokeError> {
        if let Some(device) = devices.iter().find(|d| !self.chain.is_active(d)) {
            return Err(RevokeError::NotActive(*device));
        }
        let mut sorted = devices.to_vec();
        sorted.sort();
        sorted.dedup();
        let (epoch, key, keys) = self.new_epoch(&sorted, rng)?;
        let link = self.chain.sign(
            LinkBody::Revoke {
                devices: sorted,
                epoch: keys,
            },
            signer,
        );
        Ok((link, epoch, key))
    }

    fn new_epoch(
        &self,
        leaving: &[DeviceId],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(u32, DataKey, EpochKeys), RevokeError> {
        let recovery = self
            .chain
            .recovery_exchange()
            .ok_or(RevokeError::NotCreated)?;
        let epoch = self.chain.epoch() + 1;
        let key = DataKey::generate(rng);
        let user = self.chain.user();
        let recovery = seal_epoch_key(rng, &user, epoch, &key, &recovery)
            .map_err(|_| RevokeError::NotCreated)?;
        let mut devices: Vec<(DeviceId, SealedKey)> = Vec::new();
        for (device, member) in self.chain.active_devices() {
            if leaving.contains(device) {
                continue;
            }
            let sealed = seal_epoch_key(rng, &user, epoch, &key, &member.exchange)
                .map_err(|_| RevokeError::WeakKey(*device))?;
            devices.push((*device, sealed));
        }
        Ok((
            epoch,
            key,
            EpochKeys {
                epoch,
                recovery,
                devices,
            },
        ))
    }

    /// Every device the chain ever admitted, in the order admitted.
    pub fn devices(&self) -> Vec<ChainDevice> {
        self.links
            .iter()
            .filter_map(|link| match &link.body {
                LinkBody::Admit {
                    device,
                    name,
                    created_at,
                    ..
                } => {
                    let member = self.chain.member(device)?;
                    Some(ChainDevice {
                        device: *device,
                        name: name.clone(),
                        created_at: *created_at,
                        admitted_at: member.admitted_at,
                        revoked_at: member.revoked_at,
                    })
                }
                _ => None,
            })
            .collect()
    }
}

/// Every epoch key of `links` (a verified chain), opened with the recovery key's exchange
/// secret: epoch 0 from the `Create` link, each later one from its `recovery` key. `None`
/// for an epoch whose key does not open.
pub(crate) fn recover_epochs(
    links: &[Link],
    recovery: &ExchangeSecret,
) -> Result<BTreeMap<u32, DataKey>, u32> {
    let mut epochs = BTreeMap::new();
    for link in links {
        let (epoch, sealed) = match &link.body {
            LinkBody::Create { epoch_key, .. } => (0, epoch_key),
            LinkBody::Revoke { epoch, .. } | LinkBody::Rotate { epoch } => {
                (epoch.epoch, &epoch.recovery)
            }
            LinkBody::Admit { .. } => continue,
        };
        let key = open_epoch_key(recovery, &link.user, epoch, sealed).map_err(|_| epoch)?;
        epochs.insert(epoch, key);
    }
    Ok(epochs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferry_protocol::DeviceKey;
    use ferry_protocol::recovery::RecoveryKey;
    use rand_core::OsRng;

    struct Device {
        key: DeviceKey,
        exchange: ExchangeSecret,
    }

    fn device() -> Device {
        Device {
            key: DeviceKey::generate(&mut OsRng),
            exchange: ExchangeSecret::generate(&mut OsRng),
        }
    }

    #[test]
    fn revocations_seal_new_epochs_to_the_devices_that_stay_and_the_recovery_key() {
        let recovery = RecoveryKey::generate(&mut OsRng);
        let user_key = recovery.user_key();
        let user = user_key.id();
        let key0 = DataKey::generate(&mut OsRng);
        let mut chain = Chain::new(user);
        let create = chain.sign(
            LinkBody::Create {
                recovery_exchange: recovery.exchange_secret().public(),
                epoch_key: seal_epoch_key(
                    &mut OsRng,
                    &user,
                    0,
                    &key0,
                    &recovery.exchange_secret().public(),
                )
                .unwrap(),
            },
            SigningKey::User(&user_key),
        );
        chain.apply(&create).unwrap();
        let mut epochs = BTreeMap::new();
        epochs.insert(0, DataKey::from_bytes(key0.bytes()));
        let (a, b, c) = (device(), device(), device());
        let mut trust = Trust::verify(user, vec![create], epochs).unwrap();
        let mut links = Vec::new();
        for (i, d) in [&a, &b, &c].into_iter().enumerate() {
            let signer = if i == 0 {
                SigningKey::User(&user_key)
            } else {
                SigningKey::Device(&a.key)
            };
            let link = trust.admit(d.key.id(), d.exchange.public(), "d", 1, signer);
            trust
                .apply(std::slice::from_ref(&link), a.key.id(), &a.exchange)
                .unwrap();
            links.push(link);
        }
        // B's copy, from the same links.
        let mut b_trust =
            Trust::verify(user, trust.links()[..1].to_vec(), BTreeMap::new()).unwrap();
        b_trust.apply(&links, b.key.id(), &b.exchange).unwrap();

        let (revoke, epoch, key1) = trust
            .revoke(&[c.key.id()], SigningKey::Device(&a.key), &mut OsRng)
            .unwrap();
        assert_eq!(epoch, 1);
        let applied = trust
            .apply(std::slice::from_ref(&revoke), a.key.id(), &a.exchange)
            .unwrap();
        assert!(!applied.revoked && applied.unopened.is_empty());
        assert_eq!(trust.key(1).unwrap().bytes(), key1.bytes());
        let applied = b_trust
            .apply(std::slice::from_ref(&revoke), b.key.id(), &b.exchange)
            .unwrap();
        assert!(!applied.revoked);
        assert_eq!(b_trust.key(1).unwrap().bytes(), key1.bytes());
        // C sees its revocation and gets no key.
        let mut c_trust =
            Trust::verify(user, trust.links()[..1].to_vec(), BTreeMap::new()).unwrap();
        c_trust.apply(&links, c.key.id(), &c.exchange).unwrap();
        let applied = c_trust.apply(&[revoke], c.key.id(), &c.exchange).unwrap();
        assert!(applied.revoked);
        assert!(c_trust.key(1).is_none());
        // C can no longer sign anything the chain takes.
        let forged = c_trust.admit(
            DeviceId([7; 32]),
            [1; 32],
            "x",
            1,
            SigningKey::Device(&c.key),
        );
        assert_eq!(
            c_trust
                .apply(&[forged], c.key.id(), &c.exchange)
                .unwrap_err()
                .error,
            ChainError::SignerNotActive
        );
        // The recovery key opens every epoch.
        let all = recover_epochs(trust.links(), &recovery.exchange_secret()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[&0].bytes(), key0.bytes());
        assert_eq!(all[&1].bytes(), key1.bytes());
        assert_eq!(
            trust
                .devices()
                .iter()
                .filter(|d| d.revoked_at.is_some())
                .count(),
            1
        );
        assert!(matches!(
            trust.revoke(&[c.key.id()], SigningKey::Device(&a.key), &mut OsRng),
            Err(RevokeError::NotActive(_))
        ));
    }
}

//! A user's account: creating it (the recovery key is made and shown once), and recovering
//! it on a new device with the recovery key.
//!
//! # Creating
//!
//! [`create`] draws a [`RecoveryKey`] and derives the user key from it, makes this device's
//! keys and the data key of epoch 0, and builds the first two links of the user's device
//! chain, both signed by the user key: `Create` (the recovery key's exchange key, and epoch
//! 0's key sealed to it) and `Admit` (this device). It uploads them in a *recovery session*
//! (a session whose handshake the user key signs too), writes the state folder and returns
//! the recovery key, which the app shows once. The user key is dropped: no device keeps it.
//!
//! # Recovering
//!
//! [`recover`] takes the recovery key the user typed, opens a recovery session as a new
//! device, fetches and verifies the whole chain (pinned to the user the key stands for),
//! optionally revokes every device the chain holds (a lost or stolen one included), admits
//! this device with the user key, and opens every epoch's key through the recovery key (each
//! epoch is sealed to it), so the new device reads the whole history.

use std::path::Path;

use ferry_protocol::epoch::seal_epoch_key;
use ferry_protocol::handshake::Credentials;
use ferry_protocol::recovery::RecoveryKey;
use ferry_protocol::seal::DataKey;
use ferry_protocol::{Chain, DeviceId, Link, LinkBody, RelayId, SigningKey, UserId};
use rand_core::OsRng;

use crate::connection::Connection;
use crate::error::ClientError;
use crate::options::Options;
use crate::session;
use crate::state::{ClientState, DeviceSecrets, check_relay_url, unix_now};
use crate::trust::{RevokeError, Trust, recover_epochs};

/// A new user, made by [`create`].
#[derive(Debug)]
#[non_exhaustive]
pub struct NewUser {
    /// The new device's state, ready for a [`Client`](crate::Client).
    pub state: ClientState,
    /// The recovery key: show it to the user once ([`RecoveryKey::display`]), and never
    /// store it. Whoever holds it controls the account; nobody can make it again.
    pub recovery_key: RecoveryKey,
}

/// A device recovered by [`recover`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Recovered {
    /// The new device's state.
    pub state: ClientState,
    /// The devices revoked on the way (with `revoke_all`).
    pub revoked: Vec<DeviceId>,
}

/// What `create` makes before it talks to the relay.
pub(crate) struct Genesis {
    pub recovery: RecoveryKey,
    pub user: UserId,
    pub secrets: DeviceSecrets,
    pub epoch0: DataKey,
    pub links: Vec<Link>,
}

impl Genesis {
    /// A new recovery key, user, device and epoch 0, and the chain's first two links.
    pub fn new(device_name: &str) -> Self {
        let recovery = RecoveryKey::generate(&mut OsRng);
        let user_key = recovery.user_key();
        let user = user_key.id();
        let secrets = DeviceSecrets::generate();
        let epoch0 = DataKey::generate(&mut OsRng);
        let recovery_exchange = recovery.exchange_secret().public();
        let mut chain = Chain::new(user);
        let Ok(epoch_key) = seal_epoch_key(&mut OsRng, &user, 0, &epoch0, &recovery_exchange)
        else {
            unreachable!("a derived exchange key is never of low order");
        };
        let create = chain.sign(
            LinkBody::Create {
                recovery_exchange,
                epoch_key,
            },
            SigningKey::User(&user_key),
        );
        let admit = {
            let _ = chain.apply(&create);
            chain.sign(
                LinkBody::Admit {
                    device: secrets.device.id(),
                    exchange: secrets.exchange.public(),
                    name: device_name.to_owned(),
                    created_at: unix_now(),
                },
                SigningKey::User(&user_key),
            )
        };
        Self {
            recovery,
            user,
            secrets,
            epoch0,
            links: vec![create, admit],
        }
    }
}

/// Makes a new user with this device as its first, at the relay `relay_url` pinned to
/// `relay_key`, and writes the device's state to `dir`.
///
/// Uploads the chain's first links in a recovery session, then writes the folder. Returns
/// the recovery key, to show the user once: it is the only way back to the account when
/// every device is lost, and it is not stored anywhere.
pub async fn create(
    dir: impl AsRef<Path>,
    relay_url: &str,
    relay_key: RelayId,
    device_name: &str,
    options: &Options,
) -> Result<NewUser, ClientError> {
    let dir = dir.as_ref();
    check_relay_url(relay_url)?;
    ferry_protocol::check_device_name(device_name).map_err(crate::StateError::from)?;
    ClientState::check_vacant(dir)?;
    let Genesis {
        recovery,
        user,
        secrets,
        epoch0,
        links,
    } = Genesis::new(device_name);
    {
        let user_key = recovery.user_key();
        let credentials = Credentials::Device {
            key: &secrets.device,
            user,
            resume: None,
            recovery: Some(&user_key),
        };
        let mut connection = session::connect(relay_url, relay_key, credentials, options).await?;
        let uploaded = upload(&mut connection, &links, options).await;
        session::close(connection).await;
        uploaded?;
    }
    let state = ClientState::from_parts(
        dir,
        relay_url,
        relay_key,
        user,
        secrets,
        vec![(0, epoch0)],
        &links,
    )?;
    Ok(NewUser {
        state,
        recovery_key: recovery,
    })
}

async fn upload(
    connection: &mut Connection,
    links: &[Link],
    options: &Options,
) -> Result<(), ClientError> {
    for link in links {
        session::append_link(connection, link, options.connect_timeout).await?;
    }
    Ok(())
}

/// Recovers the account of `recovery` on this device: a new device, admitted by the user
/// key, holding every epoch's key, written to `dir` (which must not hold a state).
///
/// With `revoke_all`, every device the chain holds is revoked first (one revocation,
/// signed by the user key, moving the data key to a new epoch that no old device gets).
///
/// Fails with [`ClientError::WrongRecoveryKey`] when the relay holds no chain for the user
/// the key stands for (a valid key of another account, or of none), and
/// [`ClientError::ChainRejected`] when the chain it serves does not verify.
pub async fn recover(
    dir: impl AsRef<Path>,
    relay_url: &str,
    relay_key: RelayId,
    device_name: &str,
    recovery: &RecoveryKey,
    revoke_all: bool,
    options: &Options,
) -> Result<Recovered, ClientError> {
    let dir = dir.as_ref();
    check_relay_url(relay_url)?;
    ferry_protocol::check_device_name(device_name).map_err(crate::StateError::from)?;
    ClientState::check_vacant(dir)?;
    let user_key = recovery.user_key();
    let user = user_key.id();
    let exchange = recovery.exchange_secret();
    let secrets = DeviceSecrets::generate();
    let credentials = Credentials::Device {
        key: &secrets.device,
        user,
        resume: None,
        recovery: Some(&user_key),
    };
    let mut connection = session::connect(relay_url, relay_key, credentials, options).await?;
    let result = async {
        let links = session::fetch_chain(&mut connection, 0, options.connect_timeout).await?;
        if links.is_empty() {
            return Err(ClientError::WrongRecoveryKey);
        }
        let mut trust = Trust::verify(user, links, Default::default())?;
        if trust.chain().recovery_exchange() != Some(exchange.public()) {
            return Err(ClientError::WrongRecoveryKey);
        }
        let mut revoked = Vec::new();
        let mut new_links = Vec::new();
        if revoke_all {
            let devices: Vec<DeviceId> = trust.chain().active_devices().map(|(d, _)| *d).collect();
            if !devices.is_empty() {
                let (link, epoch, key) = trust
                    .revoke(&devices, SigningKey::User(&user_key), &mut OsRng)
                    .map_err(|e| match e {
                        RevokeError::NotActive(d) => ClientError::UnknownDevice(d),
                        RevokeError::NotCreated | RevokeError::WeakKey(_) => {
                            ClientError::Protocol("the chain cannot take a revocation".to_owned())
                        }
                    })?;
                session::append_link(&mut connection, &link, options.connect_timeout).await?;
                apply_own(&mut trust, &link, &secrets)?;
                trust.insert_epoch(epoch, key);
                revoked = devices;
                new_links.push(link);
            }
        }
        let admit = trust.admit(
            secrets.device.id(),
            secrets.exchange.public(),
            device_name,
            unix_now(),
            SigningKey::User(&user_key),
        );
        session::append_link(&mut connection, &admit, options.connect_timeout).await?;
        apply_own(&mut trust, &admit, &secrets)?;
        let epochs = recover_epochs(trust.links(), &exchange).map_err(|epoch| {
            ClientError::Protocol(format!(
                "the key of epoch {epoch} does not open with the recovery key"
            ))
        })?;
        Ok((trust, epochs, revoked))
    }
    .await;
    session::close(connection).await;
    let (trust, epochs, revoked) = result?;
    let state = ClientState::from_parts(
        dir,
        relay_url,
        relay_key,
        user,
        secrets,
        epochs.into_iter().collect(),
        trust.links(),
    )?;
    Ok(Recovered { state, revoked })
}

fn apply_own(trust: &mut Trust, link: &Link, secrets: &DeviceSecrets) -> Result<(), ClientError> {
    trust
        .apply(
            std::slice::from_ref(link),
            secrets.device.id(),
            &secrets.exchange,
        )
        .map(drop)
        .map_err(ClientError::from)
}

/// Connects as `secrets.device` of `user` (a normal session), fetches the whole chain and
/// verifies it pinned to `user`. Used by a newly paired device before it writes its state.
pub(crate) async fn fetch_verified_chain(
    relay_url: &str,
    relay_key: RelayId,
    user: UserId,
    secrets: &DeviceSecrets,
    options: &Options,
) -> Result<Trust, ClientError> {
    // A session that replays from the stored cursor; if the relay no longer keeps the log
    // from there it says so and closes: resume from what it keeps.
    let mut resume = None;
    for _ in 0..2 {
        let credentials = Credentials::Device {
            key: &secrets.device,
            user,
            resume,
            recovery: None,
        };
        let mut connection = session::connect(relay_url, relay_key, credentials, options).await?;
        let fetched = session::fetch_chain(&mut connection, 0, options.connect_timeout).await;
        session::close(connection).await;
        match fetched {
            Ok(links) => {
                return Ok(Trust::verify(user, links, Default::default())?);
            }
            Err(ClientError::ResyncRequired { earliest }) if resume.is_none() => {
                resume = Some(earliest.saturating_sub(1));
            }
            Err(error) => return Err(error),
        }
    }
    Err(ClientError::Protocol(
        "the relay asked to resync twice".to_owned(),
    ))
}

//! The joiner: a new device types the code, is admitted to the user's device chain by the
//! inviter, and receives every epoch's data key. It then checks the chain itself.

use std::path::{Path, PathBuf};

use ferry_protocol::IdentityError;
use ferry_protocol::handshake::Credentials;
use ferry_protocol::pairing::{Joiner, JoinerAwaitGrant, PairingCode};
use ferry_protocol::{ClientFrame, DeviceId, ErrorCode, RelayId};
use rand_core::OsRng;
use tokio::time::Instant;

use super::link::{Link, PairFrame};
use crate::account::fetch_verified_chain;
use crate::error::PairingError;
use crate::options::Options;
use crate::state::{ClientState, DeviceSecrets, check_relay_url};

/// Pairs this device with the code shown on another device of the user, and writes its new
/// state to `dir`.
///
/// `relay_url` and `relay_key` are the relay's, as for
/// [`account::create`](crate::account::create); the key is pinned in the new state. `code` is what the other
/// device shows, as in `7-402913` (spaces are ignored). The same as [`Join::start`]
/// followed by [`Join::finish`]; use those to show the confirmation string while the other
/// device decides.
pub async fn join(
    dir: impl AsRef<Path>,
    relay_url: &str,
    relay_key: RelayId,
    code: &str,
    device_name: &str,
    options: &Options,
) -> Result<ClientState, PairingError> {
    Join::start(dir, relay_url, relay_key, code, device_name, options)
        .await?
        .finish()
        .await
}

/// A pairing in progress on the new device: the code was right, the confirmation string is
/// known, the grant is on its way.
pub struct Join {
    link: Link,
    dir: PathBuf,
    relay_url: String,
    relay_key: RelayId,
    secrets: DeviceSecrets,
    options: Options,
    waiting: JoinerAwaitGrant,
    slot: u16,
    deadline: Instant,
}

impl std::fmt::Debug for Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join")
            .field("dir", &self.dir)
            .field("device", &self.secrets.device.id())
            .field("confirmation", &self.confirmation())
            .finish_non_exhaustive()
    }
}

impl Join {
    /// Joins the pairing that `code` names: checks the arguments (nothing is sent if they
    /// are wrong, so the code is not burned), connects anonymously, makes this device's key,
    /// runs the key exchange with the inviter and sends it the request to be admitted.
    ///
    /// Fails with [`PairingError::WrongCode`] if the inviter holds another code (the code is
    /// burned), [`PairingError::UnknownCode`], [`PairingError::Expired`] or
    /// [`PairingError::CodeUsed`] as the relay says, and
    /// [`StateError::AlreadyExists`](crate::StateError::AlreadyExists) (as
    /// [`PairingError::State`]) if `dir` already holds a state.
    pub async fn start(
        dir: impl AsRef<Path>,
        relay_url: &str,
        relay_key: RelayId,
        code: &str,
        device_name: &str,
        options: &Options,
    ) -> Result<Self, PairingError> {
        let code = PairingCode::parse(code)?;
        match ferry_protocol::check_device_name(device_name) {
            Err(IdentityError::NameTooLong) => return Err(PairingError::NameTooLong),
            Err(_) => return Err(PairingError::NameHasControl),
            Ok(()) => {}
        }
        check_relay_url(relay_url)?;
        let dir = dir.as_ref().to_owned();
        ClientState::check_vacant(&dir)?;

        let deadline = Instant::now() + options.pairing_timeout;
        let mut link = Link::connect(relay_url, relay_key, Credentials::Anonymous, options).await?;
        let secrets = DeviceSecrets::generate();
        let slot = code.slot();
        // Bound to the relay key pinned here and the slot, as the inviter's is.
        let (joiner, hello) = Joiner::start(&code, &relay_key, &mut OsRng);
        link.send(ClientFrame::PairJoin { slot, body: hello })
            .await?;
        let reply = inviter_message(&mut link, slot, deadline, Stage::Hello).await?;
        let exchange = secrets.exchange.public();
        let hello = joiner.handle_inviter_hello(&reply, &secrets.device, exchange, device_name);
        let (waiting, request) = match hello {
            Ok(next) => next,
            Err(e) => {
                // The inviter proved another key: a wrong code. Burn it and say so.
                let _ = link
                    .send(ClientFrame::PairClose {
                        slot,
                        success: false,
                    })
                    .await;
                let _ = link.finish().await;
                return Err(e.into());
            }
        };
        link.send(ClientFrame::PairForward {
            slot,
            body: request,
        })
        .await?;
        Ok(Self {
            link,
            dir,
            relay_url: relay_url.to_owned(),
            relay_key,
            secrets,
            options: options.clone(),
            waiting,
            slot,
            deadline,
        })
    }

    /// The short string both screens show (`1234-5678`), derived from the pairing
    /// transcript. The inviter shows the same one
    /// ([`PendingDevice::confirmation`](crate::pairing::PendingDevice::confirmation)).
    pub fn confirmation(&self) -> &str {
        self.waiting.confirmation()
    }

    /// This device's new key.
    pub fn device_id(&self) -> DeviceId {
        self.secrets.device.id()
    }

    /// Waits for the inviter's grant (the user and every epoch's key), then connects as
    /// the new device, fetches the user's device chain and verifies it from link 1, pinned to
    /// the granted user, checks that it admits this device with its exchange key, and writes
    /// the new state to the folder.
    ///
    /// Fails with [`PairingError::Refused`] if the inviter turned this device down, and with
    /// [`PairingError::Protocol`] if the chain does not admit this device.
    pub async fn finish(self) -> Result<ClientState, PairingError> {
        let Self {
            mut link,
            dir,
            relay_url,
            relay_key,
            secrets,
            options,
            waiting,
            slot,
            deadline,
        } = self;
        let sealed = inviter_message(&mut link, slot, deadline, Stage::Grant).await?;
        let grant = waiting.handle_grant(&sealed).map_err(|e| match e {
            // Both sides proved the same key already: a grant that does not open was
            // tampered with, not typed wrong.
            ferry_protocol::pairing::PairingError::WrongCode => {
                PairingError::Protocol("the grant does not open with the pairing key".to_owned())
            }
            other => other.into(),
        })?;
        // The inviter closed the pairing after the grant; nothing more to say.
        drop(link);
        let trust =
            fetch_verified_chain(&relay_url, relay_key, grant.user, &secrets, &options).await?;
        let admitted = trust
            .chain()
            .member(&secrets.device.id())
            .is_some_and(|m| m.is_active() && m.exchange == secrets.exchange.public());
        if !admitted {
            return Err(PairingError::Protocol(
                "the user's device chain does not admit this device (with its exchange key): \
                 the other device did not admit it; pair again"
                    .to_owned(),
            ));
        }
        Ok(ClientState::from_parts(
            dir,
            &relay_url,
            relay_key,
            grant.user,
            secrets,
            grant.epochs,
            trust.links(),
        )?)
    }
}

/// Which answer the joiner waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The inviter's hello (step 2).
    Hello,
    /// The grant (step 4), after both sides proved the code.
    Grant,
}

/// The next body from the inviter, within `deadline`.
async fn inviter_message(
    link: &mut Link,
    slot: u16,
    deadline: Instant,
    stage: Stage,
) -> Result<Vec<u8>, PairingError> {
    loop {
        match link.next(deadline).await? {
            Some(PairFrame::Peer { slot: from, body }) if from == slot => return Ok(body),
            Some(PairFrame::Closed { slot: closed, code }) if closed == slot => {
                return Err(match code {
                    Some(ErrorCode::Unavailable) => PairingError::PeerLeft,
                    // After both proved the code, a failure is the inviter's decision.
                    Some(ErrorCode::PairingFailed) if stage == Stage::Grant => {
                        PairingError::Refused
                    }
                    Some(code) => PairingError::from_code(code, code.description()),
                    None => PairingError::Protocol(
                        "the other device ended the pairing without a grant".to_owned(),
                    ),
                });
            }
            Some(PairFrame::Error(e)) => return Err(PairingError::from_code(e.code, e.message)),
            Some(_) => continue,
            None => return Err(PairingError::Expired),
        }
    }
}

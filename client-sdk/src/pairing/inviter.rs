//! The inviter: an active device of the user shows a code, admits the device that types it
//! to the device chain (signed with its own device key), and grants it every epoch's key.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::handshake::Credentials;
use ferry_protocol::pairing::{Inviter, InviterReady, JoinRequest, PairingCode};
use ferry_protocol::seal::DataKey;
use ferry_protocol::{ClientFrame, DeviceId, ErrorCode, RelayId, SigningKey};
use rand_core::OsRng;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::link::{Link, PairFrame};
use crate::error::{ClientError, PairingError};
use crate::options::Options;
use crate::session;
use crate::state::{ClientState, Keys, unix_now};
use crate::trust::Trust;

/// Admissions signed again after the relay refused one (another device extended the chain
/// first).
const ADMIT_ATTEMPTS: usize = 3;

/// What an inviter needs: the relay to reach and the device's keys. Taken from a
/// [`ClientState`] (which can then be closed or handed to a client) or kept by a
/// [`ClientHandle`](crate::ClientHandle).
#[derive(Debug, Clone)]
pub(crate) struct InviterDevice {
    pub relay_url: String,
    pub relay_key: RelayId,
    pub keys: Arc<Keys>,
    /// The chain and epochs as this device holds them (a client's driver keeps it current).
    pub trust: Arc<RwLock<Trust>>,
}

impl InviterDevice {
    pub fn of(state: &ClientState) -> Self {
        Self {
            relay_url: state.relay_url().to_owned(),
            relay_key: state.relay_key(),
            keys: state.keys(),
            trust: state.shared_trust(),
        }
    }
}

/// Opens a pairing slot for this device's user and draws the code to show.
///
/// Connects as the device (a session of its own, beside any running
/// [`Client`](crate::Client)), asks the relay for a slot (the relay picks its number), and
/// draws the six secret digits from the operating system's random number generator.
/// The state is only read: it can be closed, or handed to a client, as soon as this returns.
///
/// Then show [`Invitation::code`] and call [`Invitation::wait`] (or
/// [`Invitation::joined`], to show the confirmation string before the keys leave).
pub async fn invite(state: &ClientState, options: &Options) -> Result<Invitation, PairingError> {
    Invitation::open(InviterDevice::of(state), options).await
}

/// An open pairing slot: a code to show, waiting for a device to type it.
///
/// Dropping it closes the slot (the code is burned).
pub struct Invitation {
    link: Link,
    device: InviterDevice,
    code: PairingCode,
    inviter: Inviter,
    expires_at: SystemTime,
    deadline: Instant,
    timeout: Duration,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("code", &self.code)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Invitation {
    pub(crate) async fn open(
        device: InviterDevice,
        options: &Options,
    ) -> Result<Self, PairingError> {
        // The relay's stored cursor: this session reads no events, it only pairs. Should the
        // relay no longer keep the events after it, it says so and closes; then resume from
        // what it keeps (the stored cursor does not move: this session never acknowledges).
        let mut resume = None;
        loop {
            match Self::open_from(&device, resume, options).await? {
                Opened::Slot(link, slot, expires_at) => {
                    let code = PairingCode::generate(slot, &mut OsRng);
                    // Bound to the pinned relay key and the slot, as the joiner's is.
                    let inviter = Inviter::start(&code, &device.relay_key, &mut OsRng);
                    let (expires_at, remaining) = expiry(expires_at, options.pairing_timeout);
                    return Ok(Self {
                        link,
                        device,
                        code,
                        inviter,
                        expires_at,
                        deadline: Instant::now() + remaining,
                        timeout: options.pairing_timeout,
                    });
                }
                Opened::Resync(earliest) if resume.is_none() => resume = Some(earliest),
                Opened::Resync(_) => {
                    return Err(PairingError::Protocol(
                        "the relay asked to resync twice".to_owned(),
                    ));
                }
            }
        }
    }

    /// Connects and opens a slot.
    async fn open_from(
        device: &InviterDevice,
        resume: Option<u64>,
        options: &Options,
    ) -> Result<Opened, PairingError> {
        let credentials = Credentials::Device {
            key: &device.keys.device,
            user: device.keys.user,
            resume,
            recovery: None,
        };
        let mut link =
            Link::connect(&device.relay_url, device.relay_key, credentials, options).await?;
        let answer_within = Instant::now() + options.connect_timeout;
        link.send(ClientFrame::PairOpen).await?;
        loop {
            match link.next(answer_within).await? {
                Some(PairFrame::Opened { slot, expires_at }) => {
                    return Ok(Opened::Slot(link, slot, expires_at));
                }
                Some(PairFrame::Error(e)) => {
                    return Err(PairingError::from_code(e.code, e.message));
                }
                Some(PairFrame::Resync { earliest }) => return Ok(Opened::Resync(earliest)),
                Some(_) => continue,
                None => {
                    return Err(PairingError::RelayUnreachable(
                        "the relay did not open a pairing slot".to_owned(),
                    ));
                }
            }
        }
    }

    /// The code to show to the user (or to hand to the other device some other way):
    /// `SLOT-DDDDDD`, as in `7-402913`. The six digits are the pairing's secret: show them, do
    /// not log them.
    pub fn code(&self) -> Zeroizing<String> {
        self.code.text()
    }

    /// When the relay stops accepting the code.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Waits for a device to join, and admits it: appends its admission to the user's device
    /// chain (signed by this device), then sends it every data-key epoch's key, sealed under
    /// the key both devices derived from the code.
    ///
    /// The same as [`joined`](Self::joined) followed by [`PendingDevice::admit`]; use those
    /// to show the confirmation string (and the device's name) before the keys leave.
    pub async fn wait(self) -> Result<Paired, PairingError> {
        self.joined().await?.admit().await
    }

    /// Waits (until the code expires) for a device to join with the right code.
    ///
    /// Returns once the joining device has proved it holds the same code: the confirmation
    /// string is known and nothing secret has left this device yet. A wrong code fails with
    /// [`PairingError::WrongCode`] and burns the code; no device in time fails with
    /// [`PairingError::Expired`].
    pub async fn joined(self) -> Result<PendingDevice, PairingError> {
        let Self {
            mut link,
            device,
            code,
            inviter,
            deadline,
            timeout,
            ..
        } = self;
        let slot = code.slot();
        let Some(hello) = peer_message(&mut link, slot, deadline).await? else {
            return Err(PairingError::Expired);
        };
        let (waiting, reply) = match inviter.handle_joiner_hello(&hello) {
            Ok(next) => next,
            Err(e) => return Err(fail(link, slot, e.into()).await),
        };
        link.send(ClientFrame::PairForward { slot, body: reply })
            .await?;
        let confirmation = waiting.confirmation().to_owned();
        let Some(request) = peer_message(&mut link, slot, Instant::now() + timeout).await? else {
            return Err(fail(link, slot, PairingError::PeerLeft).await);
        };
        let (request, ready) = match waiting.handle_joiner_request(&request) {
            Ok(next) => next,
            Err(e) => return Err(fail(link, slot, e.into()).await),
        };
        Ok(PendingDevice {
            link,
            slot,
            timeout,
            paired: Paired {
                device: request.device,
                name: request.name.clone(),
                confirmation,
            },
            inviter: device,
            request,
            ready,
        })
    }
}

/// What one connection got.
enum Opened {
    /// An open slot, its number and its expiry (Unix milliseconds).
    Slot(Link, u16, u64),
    /// The relay wants the session to resume from here.
    Resync(u64),
}

/// A device that typed the right code, waiting to be admitted.
///
/// Show [`confirmation`](Self::confirmation) and [`name`](Self::name); the new device shows
/// the same string ([`Join::confirmation`](crate::pairing::Join::confirmation)). If the
/// strings differ, someone sits between the devices: [`refuse`](Self::refuse). Dropping it
/// ends the pairing too (the other device is told this one left).
pub struct PendingDevice {
    link: Link,
    slot: u16,
    timeout: Duration,
    paired: Paired,
    /// This device, which signs the admission.
    inviter: InviterDevice,
    /// What the new device asked to be admitted as.
    request: JoinRequest,
    /// Seals the grant once the admission is in the chain.
    ready: InviterReady,
}

impl std::fmt::Debug for PendingDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDevice")
            .field("paired", &self.paired)
            .finish_non_exhaustive()
    }
}

impl PendingDevice {
    /// Waits for `decision` (typically the user comparing the confirmation strings and
    /// answering) while keeping the pairing's session alive: the relay's pings are answered
    /// and the link pings on its own, so a user who takes minutes does not lose the pairing
    /// to the relay's idle timeout. Fails with [`PairingError::PeerLeft`] if the new device
    /// leaves (or the relay ends the slot) meanwhile.
    pub async fn while_deciding<F: Future>(
        &mut self,
        decision: F,
    ) -> Result<F::Output, PairingError> {
        tokio::pin!(decision);
        loop {
            // `Link::next` keeps no frame across a cancellation that matters here: a pairing
            // frame is returned as soon as it is read, and a lost Pong only costs a ping.
            let far = Instant::now() + Duration::from_secs(24 * 3600);
            tokio::select! {
                decided = &mut decision => return Ok(decided),
                frame = self.link.next(far) => match frame? {
                    Some(PairFrame::Closed { slot, .. }) if slot == self.slot => {
                        return Err(PairingError::PeerLeft);
                    }
                    // Pongs, and nothing else is expected before the grant.
                    _ => {}
                },
            }
        }
    }
    /// The short string both screens show (`1234-5678`), derived from the pairing
    /// transcript.
    pub fn confirmation(&self) -> &str {
        &self.paired.confirmation
    }

    /// The new device's key.
    pub fn device(&self) -> DeviceId {
        self.paired.device
    }

    /// The name the new device asked for (in its admission).
    pub fn name(&self) -> &str {
        &self.paired.name
    }

    /// Admits the device: appends its admission to the user's device chain (signed by this
    /// device, against the chain as the relay has it, which is fetched and verified first),
    /// waits for the relay to store it, then sends the grant (the user and every epoch's
    /// key) and closes the pairing as successful.
    ///
    /// Returns once the relay has passed the grant on. Fails with
    /// [`PairingError::PeerLeft`] if the new device is gone.
    pub async fn admit(self) -> Result<Paired, PairingError> {
        let Self {
            mut link,
            slot,
            timeout,
            paired,
            inviter,
            request,
            ready,
        } = self;
        let epochs = match admit_to_chain(&mut link, &inviter, &request, timeout).await {
            Ok(epochs) => epochs,
            Err(e) => return Err(fail(link, slot, e).await),
        };
        let granted: Vec<(u32, &DataKey)> = epochs.iter().map(|(n, key)| (*n, key)).collect();
        let grant = ready.grant(inviter.keys.user, &granted);
        link.send(ClientFrame::PairForward { slot, body: grant })
            .await?;
        link.send(ClientFrame::PairClose {
            slot,
            success: true,
        })
        .await?;
        // The relay answers a forward or close only to refuse it: the Pong, which comes after
        // any refusal, says both went through.
        let nonce = link.ping().await?;
        let deadline = Instant::now() + timeout;
        loop {
            match link.next(deadline).await? {
                Some(PairFrame::Pong { nonce: n }) if n == nonce => break,
                Some(PairFrame::Closed { slot: closed, .. }) if closed == slot => {
                    return Err(PairingError::PeerLeft);
                }
                // The slot was burned under us: the joiner left.
                Some(PairFrame::Error(e)) if e.code == ErrorCode::PairingUnknownCode => {
                    return Err(PairingError::PeerLeft);
                }
                Some(PairFrame::Error(e)) => {
                    return Err(PairingError::from_code(e.code, e.message));
                }
                Some(_) => continue,
                None => {
                    return Err(PairingError::RelayUnreachable(
                        "the relay did not confirm the grant".to_owned(),
                    ));
                }
            }
        }
        link.finish().await?;
        Ok(paired)
    }

    /// Turns the device down: closes the pairing as failed. The code is burned; the other
    /// device gets [`PairingError::Refused`].
    pub async fn refuse(self) -> Result<(), PairingError> {
        close_failed(self.link, self.slot).await
    }
}

/// A device the inviter admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Paired {
    /// The new device's key.
    pub device: DeviceId,
    /// Its name, as its admission says.
    pub name: String,
    /// The confirmation string both screens showed.
    pub confirmation: String,
}

/// Appends the admission of `request` to the chain, signed by this device, and returns
/// every epoch's key to grant. The chain is brought up to the relay's first (verified); a
/// refusal because another device extended it meanwhile is retried.
async fn admit_to_chain(
    link: &mut Link,
    inviter: &InviterDevice,
    request: &JoinRequest,
    timeout: Duration,
) -> Result<Vec<(u32, DataKey)>, PairingError> {
    let me = inviter.keys.device.id();
    let mut trust = inviter
        .trust
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for _ in 0..ADMIT_ATTEMPTS {
        let connection = link.connection();
        let fetched = session::fetch_chain(connection, trust.seqno(), timeout).await?;
        let applied = trust
            .apply(&fetched, me, &inviter.keys.exchange)
            .map_err(ClientError::from)?;
        if applied.revoked || !trust.chain().is_active(&me) {
            return Err(ClientError::Revoked.into());
        }
        if !trust.has_every_epoch() {
            return Err(PairingError::Protocol(format!(
                "this device does not hold every data-key epoch (up to {}); pair from another device",
                trust.chain().epoch()
            )));
        }
        let admission = trust.admit(
            request.device,
            request.exchange,
            &request.name,
            unix_now(),
            SigningKey::Device(&inviter.keys.device),
        );
        match session::append_link(link.connection(), &admission, timeout).await {
            Ok(()) => {
                return Ok(trust
                    .epochs()
                    .map(|(n, key)| (n, DataKey::from_bytes(key.bytes())))
                    .collect());
            }
            Err(error) if session::is_refused_link(&error) => {
                tracing::info!(%error, "the relay refused the admission; fetching the chain and signing again");
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ClientError::ChainLinkRefused("the chain kept moving; try again".to_owned()).into())
}

/// The next body from the joiner; `None` if `deadline` passed first.
async fn peer_message(
    link: &mut Link,
    slot: u16,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, PairingError> {
    loop {
        match link.next(deadline).await? {
            None => return Ok(None),
            Some(PairFrame::Peer { slot: from, body }) if from == slot => return Ok(Some(body)),
            Some(PairFrame::Closed { slot: closed, code }) if closed == slot => {
                return Err(match code {
                    Some(ErrorCode::Unavailable) => PairingError::PeerLeft,
                    Some(code) => PairingError::from_code(code, code.description()),
                    None => PairingError::Protocol(
                        "the other device closed the pairing early".to_owned(),
                    ),
                });
            }
            Some(PairFrame::Error(e)) => return Err(PairingError::from_code(e.code, e.message)),
            Some(_) => continue,
        }
    }
}

/// Closes the pairing as failed, then reports `error`.
async fn fail(link: Link, slot: u16, error: PairingError) -> PairingError {
    // The error to report is `error`, whether or not the relay heard the close: if it did
    // not, the session's end burns the slot all the same.
    let _ = close_failed(link, slot).await;
    error
}

async fn close_failed(link: Link, slot: u16) -> Result<(), PairingError> {
    link.send(ClientFrame::PairClose {
        slot,
        success: false,
    })
    .await?;
    link.finish().await
}

/// The relay's expiry (Unix milliseconds) as a time, and how long to wait for a joiner.
///
/// The relay's clock and ours may differ: the wait is at most `limit`, and `limit` when the
/// expiry looks already past (a clock ahead of the relay's).
fn expiry(expires_at_ms: u64, limit: Duration) -> (SystemTime, Duration) {
    let at = UNIX_EPOCH + Duration::from_millis(expires_at_ms);
    let remaining = at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(limit);
    (
        at,
        if remaining.is_zero() {
            limit
        } else {
            remaining
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_follows_the_relay_expiry_within_limits() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let limit = Duration::from_secs(600);
        let (_, wait) = expiry(now_ms + 60_000, limit);
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60));
        assert_eq!(expiry(now_ms + 6_000_000, limit).1, limit);
        assert_eq!(expiry(now_ms.saturating_sub(5_000), limit).1, limit);
    }
}

//! What a client hands the app: [`ClientEvent`]s and its [`Status`].

use ferry_protocol::DeviceId;
use zeroize::Zeroizing;

use crate::error::ClientError;

/// What [`Client::next_event`](crate::Client::next_event) returns.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The next event of the user's log, decrypted.
    Event(ReceivedEvent),
    /// Everything the relay had when this connection opened has been handed over; live
    /// events follow. Comes once per connection (so again after a reconnect).
    CaughtUp {
        /// The log's head at that moment.
        head: u64,
    },
    /// Something changed about the people around this user (see [`crate::people`]).
    People(crate::people::PeopleEvent),
    /// Something happened in this user's conversations (see [`crate::conversations`]).
    Conversation(crate::conversations::ConversationEvent),
    /// A setting of this user changed, on this device or another of the user's (see
    /// [`crate::settings`]); every device follows it from now on.
    Setting(crate::settings::Setting),
    /// Something happened in a call of this device (see [`crate::calls`]).
    Call(crate::calls::CallEvent),
}

/// One event of the user's log, opened with the data key.
///
/// Events from this device come back too: the log, in stream order, is the truth every
/// device derives its state from. Compare [`device`](Self::device) with
/// [`Client::device_id`](crate::Client::device_id) to tell them apart.
#[derive(Clone)]
pub struct ReceivedEvent {
    /// Position in the user's log: from 1, gapless, the same on every device.
    pub seq: u64,
    /// The device that appended it.
    pub device: DeviceId,
    /// That device's own sequence number for it.
    pub device_seq: u64,
    /// The plaintext, zeroized when dropped.
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ReceivedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedEvent")
            .field("seq", &self.seq)
            .field("device", &self.device)
            .field("device_seq", &self.device_seq)
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .finish()
    }
}

/// A snapshot of the client's connection and outbox.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Status {
    /// Whether a session with the relay is open now.
    pub connected: bool,
    /// Sessions opened so far (reconnects included).
    pub sessions: u64,
    /// Events in the outbox, not yet acknowledged by the relay.
    pub pending: usize,
    /// Why the last connection attempt failed or the last session ended.
    pub last_error: Option<ClientError>,
    /// Set when the client stopped: why (a permanent error, or [`ClientError::Closed`]).
    pub stopped: Option<ClientError>,
    /// Old events the relay served again at a new place in the log, dropped (acknowledged,
    /// never shown). Any is a misbehaving relay.
    pub replayed_events: u64,
    /// This device's appends that the log does not hold where the relay said it stored them
    /// (each also reported as [`ClientError::MisplacedAppend`]). Any is a misbehaving relay.
    pub misplaced_appends: u64,
}

/// One of the user's devices, as the device chain (verified by this device) says, with
/// when the relay last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Device {
    /// The device's key.
    pub id: DeviceId,
    /// Its name, from the link that admitted it.
    pub name: String,
    /// When it was admitted, in seconds since the Unix epoch (as the admitting device said).
    pub created_at: u64,
    /// The position of the link that admitted it.
    pub admitted_at: u64,
    /// Whether the chain has revoked it.
    pub revoked: bool,
    /// When the relay last saw it connect (seconds since the Unix epoch), if it said.
    pub last_seen: Option<u64>,
    /// Whether it is the device asking.
    pub this_device: bool,
}

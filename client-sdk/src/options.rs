//! How a client connects, retries and batches: [`Options`].

use std::path::PathBuf;
use std::time::Duration;

/// Tuning for a [`Client`](crate::Client). The defaults suit apps; tests shorten the times.
///
/// ```
/// use std::time::Duration;
/// let options = ferry_client::Options::default()
///     .backoff(Duration::from_millis(50), Duration::from_secs(1))
///     .connect_timeout(Duration::from_secs(3));
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// First wait before reconnecting; doubles after each failed attempt.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Time one connection attempt (TCP, WebSocket and handshake) may take; also how long
    /// [`Client::connect`](crate::Client::connect) waits for the first session.
    pub connect_timeout: Duration,
    /// A `Ping` goes out this often; no answer within the same time ends the connection.
    /// Keeps the relay's idle timeout (two minutes by default) from closing a quiet session.
    pub ping_interval: Duration,
    /// The cursor is written to disk and acknowledged to the relay at most this long after
    /// the app received an event, so a burst of events costs one write.
    pub ack_delay: Duration,
    /// Decrypted events held for the app. When the app falls this far behind, the client
    /// stops taking events and fetches them again once the app has caught up.
    pub event_buffer: usize,
    /// Longest a pairing may take ([`crate::pairing`]): how long an inviter waits for a
    /// device to join (never past the code's expiry), and then for each of its answers; how
    /// long a joining device waits for the inviter. Ten minutes, the relay's default code
    /// life.
    pub pairing_timeout: Duration,
    /// Whether the app also receives the events this device appended itself. They are in
    /// the log (other devices need them) and come back from the relay; by default the client
    /// acknowledges them without handing them to the app.
    pub own_events: bool,
    /// A CA certificate file (PEM) for a `wss://` relay: when set, it is the only CA trusted
    /// (a private deployment); by default the platform's root certificates are. Unused with
    /// `ws://`.
    pub ca_file: Option<PathBuf>,
    /// Whether conversation messages are archived in the user's own log (sealed with the
    /// data key), so a device paired later reads the conversations' earlier history (see
    /// [`crate::conversations`]), until the user says otherwise: the user's setting
    /// ([`ClientHandle::set_archive_history`](crate::ClientHandle::set_archive_history), made
    /// on any of its devices) wins over this default on all of them. On by default.
    pub archive_history: bool,
    /// How long an outgoing call rings before it ends unanswered (and is recorded as a
    /// missed call); see [`crate::calls`].
    pub ring_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            ack_delay: Duration::from_millis(100),
            event_buffer: 1024,
            pairing_timeout: Duration::from_secs(600),
            own_events: false,
            ca_file: None,
            archive_history: true,
            ring_timeout: Duration::from_secs(45),
        }
    }
}

impl Options {
    /// Sets the reconnect backoff: from `min`, doubling, up to `max` (each wait jittered).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// Sets [`Self::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`Self::ping_interval`].
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`Self::ack_delay`].
    pub fn ack_delay(mut self, delay: Duration) -> Self {
        self.ack_delay = delay;
        self
    }

    /// Sets [`Self::event_buffer`] (at least 1).
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(1);
        self
    }

    /// Sets [`Self::pairing_timeout`].
    pub fn pairing_timeout(mut self, timeout: Duration) -> Self {
        self.pairing_timeout = timeout;
        self
    }

    /// Sets whether the app also receives this device's own events (see
    /// [`Options::own_events`]).
    pub fn own_events(mut self, include: bool) -> Self {
        self.own_events = include;
        self
    }

    /// Sets whether conversation messages are archived for devices that join later until
    /// the user sets it (see [`Options::archive_history`]).
    pub fn archive_history(mut self, archive: bool) -> Self {
        self.archive_history = archive;
        self
    }

    /// Sets [`Self::ring_timeout`].
    pub fn ring_timeout(mut self, timeout: Duration) -> Self {
        self.ring_timeout = timeout;
        self
    }

    /// Sets [`Self::ca_file`]: trust only this CA (PEM) for `wss://`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
}

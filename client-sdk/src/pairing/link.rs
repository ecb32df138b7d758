//! The connection a pairing runs over: its own session with the relay, separate from any
//! [`Client`](crate::Client), which sees only the pairing frames.

use std::time::Duration;

use ferry_protocol::handshake::Credentials;
use ferry_protocol::{ClientFrame, ErrorFrame, RelayId, ServerFrame};
use tokio::time::{Instant, sleep_until};

use crate::connection::{self, Connection};
use crate::error::{ClientError, PairingError};
use crate::options::Options;

/// How long closing may take once the last frame is queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay says about a pairing.
#[derive(Debug)]
pub(super) enum PairFrame {
    /// The slot is open until `expires_at` (Unix milliseconds).
    Opened { slot: u16, expires_at: u64 },
    /// A message from the other device.
    Peer { slot: u16, body: Vec<u8> },
    /// The other device (or the relay) ended the pairing; `None` on success.
    Closed {
        slot: u16,
        code: Option<ferry_protocol::ErrorCode>,
    },
    /// The relay refused a request.
    Error(ErrorFrame),
    /// The answer to [`Link::ping`].
    Pong { nonce: u64 },
    /// The relay no longer keeps the events after the device's cursor and is closing the
    /// session: an inviter reconnects, resuming from `earliest`.
    Resync { earliest: u64 },
}

/// A session used for one pairing.
#[derive(Debug)]
pub(super) struct Link {
    connection: Connection,
    ping_interval: Duration,
    next_ping: Instant,
    nonce: u64,
}

impl Link {
    /// Connects with `credentials` (the inviting device, or anonymous for the joiner),
    /// within [`Options::connect_timeout`].
    pub async fn connect(
        url: &str,
        relay_key: RelayId,
        credentials: Credentials<'_>,
        options: &Options,
    ) -> Result<Self, PairingError> {
        let timeout = options.connect_timeout;
        let connection = match tokio::time::timeout(
            timeout,
            connection::open_as(url, relay_key, credentials, options.ca_file.as_deref()),
        )
        .await
        {
            Ok(opened) => opened?,
            Err(_) => {
                return Err(PairingError::RelayUnreachable(format!(
                    "{url}: no session within {timeout:?}"
                )));
            }
        };
        // Never zero: `Instant + 0` would ping in a loop.
        let ping_interval = options.ping_interval.max(Duration::from_millis(100));
        Ok(Self {
            connection,
            ping_interval,
            next_ping: Instant::now() + ping_interval,
            nonce: 0,
        })
    }

    /// The session, for device chain requests ([`crate::session`]).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// Queues a frame for the relay.
    pub async fn send(&self, frame: ClientFrame) -> Result<(), PairingError> {
        self.connection
            .outgoing
            .send(frame)
            .await
            .map_err(|_| PairingError::RelayUnreachable("the connection closed".to_owned()))
    }

    /// Sends a `Ping` and returns its nonce. The relay answers frames in order, so once
    /// its `Pong` is back, every earlier frame has been handled (and refused, if it was).
    pub async fn ping(&mut self) -> Result<u64, PairingError> {
        self.nonce += 1;
        self.next_ping = Instant::now() + self.ping_interval;
        self.send(ClientFrame::Ping { nonce: self.nonce }).await?;
        Ok(self.nonce)
    }

    /// The next pairing frame, waiting at most until `deadline` (then `Ok(None)`).
    ///
    /// An inviter's session is a device session: the relay replays and forwards the user's
    /// events to it too. They are dropped unread (never acknowledged: the device's cursor
    /// does not move). Pings are answered, and the link pings on its own so the relay's idle
    /// timeout does not close a session that waits minutes for a joiner.
    pub async fn next(&mut self, deadline: Instant) -> Result<Option<PairFrame>, PairingError> {
        loop {
            let frame = tokio::select! {
                frame = self.connection.incoming.next() => frame?,
                () = sleep_until(deadline) => return Ok(None),
                () = sleep_until(self.next_ping) => {
                        self.ping().await?;
                    continue;
                }
            };
            match frame {
                ServerFrame::PairOpened { slot, expires_at } => {
                    return Ok(Some(PairFrame::Opened { slot, expires_at }));
                }
                ServerFrame::PairPeer { slot, body } => {
                    return Ok(Some(PairFrame::Peer { slot, body }));
                }
                ServerFrame::PairClosed { slot, code } => {
                    return Ok(Some(PairFrame::Closed { slot, code }));
                }
                ServerFrame::Error(error) => return Ok(Some(PairFrame::Error(error))),
                ServerFrame::Pong { nonce } => return Ok(Some(PairFrame::Pong { nonce })),
                ServerFrame::ResyncRequired { earliest } => {
                    return Ok(Some(PairFrame::Resync { earliest }));
                }
                ServerFrame::Ping { nonce } => self.send(ClientFrame::Pong { nonce }).await?,
                // The log's traffic, not ours.
                _ => {}
            }
        }
    }

    /// Sends what is queued, then closes the connection. Fails if the frames could not be
    /// written.
    pub async fn finish(self) -> Result<(), PairingError> {
        let Connection {
            outgoing, writer, ..
        } = self.connection;
        // The writer flushes what is queued, then says goodbye, once the sender is gone.
        drop(outgoing);
        match tokio::time::timeout(CLOSE_TIMEOUT, writer).await {
            Ok(Ok(written)) => Ok(written?),
            Ok(Err(_)) => Err(ClientError::Closed.into()),
            Err(_) => Err(PairingError::RelayUnreachable(
                "the relay did not take the last frames".to_owned(),
            )),
        }
    }
}

//! The Ferry client SDK: what an app links to sync a user's devices through a relay that
//! cannot read what it carries.
//!
//! # In five minutes
//!
//! - A device keeps its [`ClientState`] in a folder: its keys (owner-only files), the
//!   user's device chain as it verified it, the data-key epochs it holds, the relay's URL
//!   and pinned key, its cursor and its outbox. [`account::create`] makes a new user (and
//!   its recovery key, shown once), [`pairing::join`] another device of a user,
//!   [`account::recover`] a device from the recovery key; [`ClientState::open`] opens it
//!   again.
//! - [`Client::connect`] (or [`Client::start`], which does not wait) hands the state to a
//!   background task that keeps a session with the relay, reconnecting with jittered
//!   exponential backoff.
//! - [`Client::append`] seals bytes with the newest data-key epoch, writes them to the outbox,
//!   and resolves with the event's place in the log once the relay has committed it.
//!   Nothing appended is lost across disconnects or crashes, and nothing is stored twice.
//! - [`Client::next_event`] returns the log's events, decrypted, in order, each once, on
//!   every device of the user. This device's own events are acknowledged without being
//!   shown unless [`Options::own_events`] asks for them. An event is acknowledged when the
//!   app asks for the next one.
//! - A device's appends are stored in the order it appended them, also across refusals
//!   (rate limits, a relay restart, a full quota: kept in the outbox and retried) and across
//!   a state folder restored from a backup (the relay tells the device where it is, and
//!   events the relay holds under another payload are re-sealed under new sequences).
//! - [`ClientError::ResyncRequired`] stops the client when the relay cannot continue from the
//!   device's cursor (retention deleted what follows it, or the relay's database went back
//!   in time): the app discards what it derived from the log, calls
//!   [`ClientState::resync`] and connects again to replay the log.
//! - [`Client::list_devices`] and [`Client::revoke`] manage the user's devices. A revocation
//!   is a link of the device chain signed by this device; it moves the data key to a new
//!   epoch that the revoked device never gets.
//! - [`pairing`] adds a device: [`pairing::invite`] (or [`Client::invite`]) on a device of
//!   the user shows a 6-digit code; [`pairing::join`] on the new device, with that code, is
//!   admitted to the chain, receives every epoch's key end to end and writes its
//!   [`ClientState`].
//! - Errors are [`ClientError`]s: one variant per thing that can go wrong, relay error
//!   codes included; [`ClientError::is_permanent`] says which ones stop the client.
//!
//! # What the client does not take on trust
//!
//! - **Which devices are the user's.** Each device keeps the user's device chain, verified
//!   from its first link and pinned to the user id (from `ferry init`, the pairing grant or
//!   the recovery key), and verifies every link the relay serves after it. A link that does
//!   not verify (a device added without a valid signature, a revoked device signing,
//!   history rewritten) stops the client with [`ClientError::ChainRejected`]. No device
//!   holds the user key: it exists only while the user types the recovery key.
//!
//! - **Refusals outside the channel.** WebSocket close codes and the plaintext handshake
//!   `Reject` can be forged by anyone on the network path. They never stop the client and
//!   never take an append out of the outbox: the client reconnects with backoff and shows
//!   the code as [`ClientError::Unauthenticated`] in [`Status::last_error`] ("the relay, or
//!   someone, refuses this device"). Only answers inside the encrypted channel are final: a
//!   revoked device learns [`ClientError::Revoked`] from the encrypted handshake answer at
//!   its next connection; an append is refused only by an `Error` frame naming it. The cost:
//!   an append the relay can only refuse by closing (a frame over a limit the relay set below
//!   the protocol's) stays in the outbox and is retried, with the close code in
//!   [`Status::last_error`]. A relay key that does not match the pin stops a client that
//!   never had a session (a misconfiguration); after a session it is retried as a failure on
//!   the path.
//! - **Replayed events.** Each device's `device_seq` rises with the stream sequence in an
//!   honest log. The client keeps, per device, the highest it has read and where (file
//!   `seen` in the state folder); an old event served again at a later place is acknowledged
//!   but not shown, logged and counted in [`Status::replayed_events`]. Reading the same
//!   places again after a resync is not a replay.
//! - **Where its appends went.** The place the relay gives in `Appended` is checked when the
//!   event there is read: another event there is a [`ClientError::MisplacedAppend`] from
//!   [`Client::next_event`], logged and counted in [`Status::misplaced_appends`].
//!
//! # Data flow
//!
//! ```text
//!  app ─append(bytes)─▶ seal(newest epoch key, slot = user/device/device_seq) ─▶ outbox (fsync) ─Append─▶ relay
//!                                                   ◀─ remove from outbox ◀─ Appended(seq) ─┘
//!  app ◀─next_event()─ open(key of the payload's epoch, slot) ◀─ drop seq ≤ cursor ◀─ Events ◀─ relay (replay, then live)
//!  chain: SessionEstablished{chain_seqno} / ChainGrew ─▶ ChainFetch ─▶ ChainLinks ─▶ verify, open epoch keys
//!      ─next_event() again─▶ cursor to disk ─Ack(seq)─▶ relay
//! ```
//!
//! The relay sees who appends and when, and how large each event is; it never sees a
//! plaintext or a key that opens one. Each payload is bound to its slot, so a relay that
//! moves a payload to another place makes it fail to open ([`ClientError::Undecryptable`]).
//!
//! # Example
//!
//! ```no_run
//! use ferry_client::{Client, ClientEvent, ClientState, Options, RelayId, account};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Once per user: a new user, pinned to the relay's key (printed at its first start).
//! let relay_key: RelayId = "b533d8ad9fcfbdde0b481c1b334ddc3c53412fd614564e7e5afd020368d382c3".parse()?;
//! let created = account::create("laptop-state", "ws://127.0.0.1:7070/ws", relay_key, "laptop", &Options::default()).await?;
//! // Shown once: the only way back to the account when every device is lost.
//! println!("recovery key: {}", created.recovery_key.display().as_str());
//! let state = created.state;
//! // Every later start: ClientState::open("laptop-state")?
//!
//! let mut client = Client::connect(state, Options::default()).await?;
//! let seq = client.append(b"hello from the laptop").await?;
//! println!("stored as event {seq}");
//!
//! loop {
//!     match client.next_event().await? {
//!         ClientEvent::Event(event) => {
//!             println!("{}: {}", event.seq, String::from_utf8_lossy(&event.plaintext));
//!         }
//!         ClientEvent::CaughtUp { .. } => break,
//!         _ => {}
//!     }
//! }
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/sync.rs` is a complete program; the `ferry` binary (feature `cli`, on by
//! default) is the same library behind a command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod account;
pub mod attachments;
mod backoff;
pub mod calls;
mod client;
mod connection;
pub mod conversations;
mod driver;
mod error;
mod event;
mod files;
mod options;
mod outbox;
pub mod pairing;
pub mod people;
mod push;
mod session;
pub mod settings;
mod state;
mod tls;
mod trust;

pub use attachments::{AttachmentError, FileRef, Progress};
pub use calls::{CallEvent, CallId, CallInfo, CallOutcome, CallRecord, CallState, EndReason};
pub use client::{Client, ClientHandle};
pub use conversations::{Content, ConversationEvent, ConversationInfo, Receipts, StoredMessage};
pub use error::{ClientError, PairingError, PeopleError, StateError};
pub use event::{ClientEvent, Device, ReceivedEvent, Status};
pub use ferry_mls::{GroupKind, GroupPolicy};
pub use ferry_protocol::conversations::ConvId;
pub use ferry_protocol::people::{ContactState, ProfileBody};
pub use options::Options;
pub use people::{Contact, IdentityChange, PeopleEvent};
pub use settings::Setting;
pub use state::{ClientState, DeviceSecrets};

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each panics only when
/// a promise of the code under test is broken.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::outbox::fuzz_journal as outbox_journal;
}

// The protocol types that appear in this crate's API, so apps need not depend on
// `ferry-protocol` themselves.
pub use ferry_protocol::epoch::ExchangeSecret;
pub use ferry_protocol::limits;
pub use ferry_protocol::recovery::{RecoveryKey, RecoveryKeyError};
pub use ferry_protocol::seal::{DataKey, MAX_PLAINTEXT_LEN};
pub use ferry_protocol::{
    DeviceId, DeviceInfo, DeviceKey, ErrorCode, Link, RelayId, TurnCredentials, UserId,
};

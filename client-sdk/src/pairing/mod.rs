//! Pairing: a new device joins the user through a code such as `7-402913` shown on an active
//! device of the user, which admits it to the user's device chain and hands it every data-key
//! epoch.
//!
//! # Flow
//!
//! ```text
//!  inviter (active device)                relay                  joiner (new device)
//!  invite(): connect as the device
//!            PairOpen ────────────────────▶ picks slot s
//!            ◀── PairOpened{s, expires_at}
//!            draw 6 digits d (OS RNG)
//!  show s-d                                                       user types s-d
//!                                                                join(): connect anonymously
//!                                          ◀── PairJoin{s, JoinerHello} (SPAKE2 with d)
//!  joined():  ◀── PairPeer{JoinerHello}
//!             PairForward{InviterHello} ──▶ ──▶ PairPeer         checks the inviter's proof
//!                                                                 (wrong code: PairClose{false})
//!                                          ◀── PairForward{JoinerRequest}  ← confirmation known
//!  confirmation known ◀── PairPeer            (sealed: device key, exchange key, name)
//!  admit():   ChainFetch, ChainAppend(Admit, signed by the inviter's device key)
//!             ◀── ChainAppended
//!             PairForward{InviterGrant} ──▶ ──▶ PairPeer         opens the grant (user, every
//!             (sealed: user id, every epoch's data key)            epoch's key); connects as the
//!             PairClose{true} ────────────▶ ──▶ PairClosed        new device, verifies the chain
//!                                                                 (pinned to the user) admits it,
//!                                                                 writes the state folder
//! ```
//!
//! The messages and the key schedule are [`ferry_protocol::pairing`]'s; this module drives
//! them over the relay. The relay forwards opaque SPAKE2 messages and sealed bodies: it
//! never sees a key, and without the code it gets one guess in 10^6 per code, after which the
//! code is burned.
//!
//! - The relay picks the slot number (the part before the dash: public, it only routes). The
//!   six digits after it come from the operating system's random number generator, uniform
//!   over 000000–999999, and are the SPAKE2 password, bound to the pinned relay key and the
//!   slot.
//! - A code works once and expires (ten minutes by default, the relay's setting). A wrong
//!   code burns it on both sides ([`PairingError::WrongCode`]); a second device typing it
//!   gets [`PairingError::CodeUsed`].
//! - Both screens can show a confirmation string (`1234-5678`) from the pairing transcript.
//!   If they differ, a relay sat in the middle: the inviter [refuses](PendingDevice::refuse)
//!   before the device is admitted and the keys leave. No device hands over the user key:
//!   no device has it. [`Invitation::joined`] and [`Join::start`] return as soon as it
//!   is known; [`Invitation::wait`] and [`join`] do everything in one call and do not stop.
//! - Each side runs on its own connection. The inviter's is a session of its device beside
//!   any running [`Client`](crate::Client); it reads no events and moves no cursor. The
//!   joiner's is anonymous: the relay lets it do nothing but pair.
//! - Waits are bounded: the inviter waits for a joiner until the code expires, then at most
//!   [`Options::pairing_timeout`](crate::Options::pairing_timeout) for each answer; the
//!   joiner at most that long in all.
//!
//! # Example
//!
//! ```no_run
//! use ferry_client::pairing::{self, Invitation, Join};
//! use ferry_client::{ClientState, Options, RelayId};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // On the laptop, which has the user:
//! let laptop = ClientState::open("laptop-state")?;
//! let invitation = pairing::invite(&laptop, &Options::default()).await?;
//! println!("type {} on the new device", invitation.code().as_str());
//! let pending = invitation.joined().await?;
//! println!("does the phone show {}?", pending.confirmation());
//! let paired = pending.admit().await?;
//! println!("paired {} ({})", paired.device, paired.name);
//!
//! // On the phone, with the relay's URL and key and the code the user typed:
//! # let relay_key: RelayId = "b533d8ad9fcfbdde0b481c1b334ddc3c53412fd614564e7e5afd020368d382c3".parse()?;
//! let join = Join::start("phone-state", "ws://127.0.0.1:7070/ws", relay_key, "7-402913", "phone", &Options::default()).await?;
//! println!("does the laptop show {}?", join.confirmation());
//! let phone: ClientState = join.finish().await?;
//! # let _ = phone;
//! # Ok(())
//! # }
//! ```

mod inviter;
mod joiner;
mod link;

pub use crate::error::PairingError;
pub(crate) use inviter::InviterDevice;
pub use inviter::{Invitation, Paired, PendingDevice, invite};
pub use joiner::{Join, join};

//! People: handles, profiles, contact requests, blocks and presence.
//!
//! - [`handle`]: `name.NN` handles, their normalisation rules and lookup key.
//! - [`intro`]: the signed, sealed introduction a contact request (and its acceptance)
//!   carries: the sender's profile key and a short note, readable only by the receiver's
//!   devices.
//! - [`profile`]: display name and avatar reference, sealed with the profile key.
//! - [`card`]: what a user's devices keep about a contact, sealed under the user's data key
//!   and stored by the relay, so devices paired later know the contact too.
//! - [`notice`]: the events the relay writes into a user's log when the user's contacts
//!   change, so every device of the user learns it by replaying the log.
//!
//! The frames are in [`crate::frames`] (`HandleSet`, `Whois`, `Contact*`, `Block`, …); the
//! relay's side of the rules (limits, blocks that look like pending requests, presence only
//! between contacts who both show it) is described in `docs/protocol.md`.

pub mod card;
pub mod handle;
pub mod intro;
pub mod notice;
pub mod profile;

use serde::{Deserialize, Serialize};

pub use card::{CardBody, CardError, SealedCard};
pub use handle::{Handle, HandleError, normalize_name};
pub use intro::{Intro, IntroBody, IntroError};
pub use notice::{NOTICE_FORMAT, Notice, RELAY_DEVICE};
pub use profile::{ProfileBody, ProfileError, ProfileKey, SealedProfile};

use crate::identity::UserId;

/// Most entries in one `Contacts` frame (a relay's contact limit stays below it).
pub const MAX_CONTACTS_PER_FRAME: usize = 8192;

/// Where a user stands with another, as the relay keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContactState {
    /// Both accepted: contacts.
    Contact,
    /// This user asked and the other has not answered (or has blocked this user: the two
    /// look the same to this user).
    Outgoing,
    /// The other user asked this user.
    Incoming,
    /// This user blocked the other.
    Blocked,
}

/// One entry of the contact list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactInfo {
    /// The other user.
    pub user: UserId,
    /// Where this user stands with them.
    pub state: ContactState,
    /// Their profile's version (0: none), for contacts; a client fetches versions it has
    /// not seen.
    pub profile_version: u64,
    /// When they were last online, rounded down to [`LAST_SEEN_GRANULARITY_S`], only for
    /// contacts when both show presence.
    pub last_seen: Option<u64>,
    /// When this entry last changed (seconds since the Unix epoch).
    pub since: u64,
    /// The card this user's devices keep about the other user (sealed under this user's
    /// data key; see [`card`]), if one was stored.
    pub card: Option<SealedCard>,
}

/// Last-seen times are rounded down to this many seconds: coarse, by design.
pub const LAST_SEEN_GRANULARITY_S: u64 = 300;

//! Frames exchanged after the handshake, inside the encrypted channel.
//!
//! A client sends [`ClientFrame`]s and a relay sends [`ServerFrame`]s; the split is in the
//! types, so a relay can never be tricked into treating `Events` as a request.
//!
//! The conversation of an authenticated device:
//!
//! 1. The relay replays the log after the device's cursor in `Events` pages, then sends
//!    `CaughtUp` (or `ResyncRequired` when retention has dropped events past the cursor).
//! 2. Live: every event appended by any of the user's devices reaches the others in `Events`.
//! 3. The device appends with `Append { device_seq, payload }`; the relay answers `Appended`
//!    only once the event is committed. A retry with the same `device_seq` and payload gets the
//!    original stream sequence; a different payload gets `Error(Conflict)`.
//! 4. The device sends `Ack { seq }` once the app holds everything up to `seq`; the relay
//!    stores it as the device's cursor.
//! 5. `Ephemeral` frames go to the user's other online devices and are never stored.
//!
//! The device chain (`Chain*`): a device appends a signed link (admit, revoke, rotate) with
//! `ChainAppend`; the relay checks it against the user's chain and answers `ChainAppended`, or
//! `Error(chain_link_refused)`. `ChainFetch { after }` returns the links after a position in
//! `ChainLinks` pages; `ChainGrew` tells every session of the user that the chain is longer.
//!
//! Pairing frames (`Pair*`) carry opaque PAKE messages between two devices; the relay
//! forwards them between the two ends of a slot and never reads them.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::attachments::{BlobId, PART_LEN};
use crate::chain::Link;
use crate::codec::{DecodeError, Wire, check_len};
use crate::conversations::{
    self, ConvId, ConvMessage, ConvSend, ConvSummary, Direction, MAX_CONV_MESSAGES_PER_FRAME,
    MAX_GROUP_BLOB_LEN, MAX_KEY_PACKAGE_LEN, MAX_KEY_PACKAGES_PER_UPLOAD, MAX_MLS_MESSAGE_LEN,
};
use crate::identity::{DeviceId, UserId};
use crate::limits::*;
use crate::people::handle::MAX_HANDLE_INPUT_LEN;
use crate::people::{ContactInfo, Intro, MAX_CONTACTS_PER_FRAME, SealedCard, SealedProfile};

/// An event payload sealed by the client; opaque to the relay.
///
/// The layout (see [`crate::seal`]) is a format byte, a 24-byte nonce and the
/// XChaCha20-Poly1305 ciphertext with its tag. The relay stores and forwards it untouched.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPayload(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for SealedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedPayload({} bytes)", self.0.len())
    }
}

/// A device appends one sealed event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    /// The sender's own sequence number for this event, from 1, never reused.
    pub device_seq: u64,
    /// The sealed payload.
    pub payload: SealedPayload,
}

/// One stored event as the relay delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the user's log: per user, from 1, gapless, in commit order.
    pub seq: u64,
    /// The device that appended it.
    pub device: DeviceId,
    /// The sending device's sequence number for it.
    pub device_seq: u64,
    /// The sealed payload, as the device sent it.
    pub payload: SealedPayload,
}

/// An error reported by the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation (at most [`MAX_ERROR_MESSAGE_LEN`] bytes).
    pub message: String,
    /// The `device_seq` of the append this error answers, if it answers one.
    pub device_seq: Option<u64>,
}

impl ErrorFrame {
    /// An error with the code's own description as its message.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: code.description().to_owned(),
            device_seq: None,
        }
    }

    /// An error with a specific message, cut to the length limit on a character boundary.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut end = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self {
            code,
            message,
            device_seq: None,
        }
    }

    /// The same error, answering the append with `device_seq`.
    pub fn for_append(mut self, device_seq: u64) -> Self {
        self.device_seq = Some(device_seq);
        self
    }
}

/// One of the user's devices, as listed by the relay. Informational: which devices act for
/// the user is the device chain's word, which clients verify themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device.
    pub device: DeviceId,
    /// Its name, from the chain link that admitted it.
    pub name: String,
    /// When the relay last saw it connect, in seconds since the Unix epoch.
    pub last_seen: u64,
    /// Whether the chain has revoked it.
    pub revoked: bool,
}

/// Frames a client sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Append one sealed event to the user's log.
    Append(Append),
    /// Everything up to and including `seq` is safely held by the app.
    Ack {
        /// The highest stream sequence the device holds, cumulative.
        seq: u64,
    },
    /// A body for the user's other online devices, never stored.
    Ephemeral {
        /// Opaque, sealed by the client.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Liveness check; the relay answers `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to the relay's `Ping`.
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
    /// Ask for the user's devices.
    ListDevices,
    /// Append a link to the user's device chain (admit, revoke, rotate); the relay answers
    /// `ChainAppended` or `Error(chain_link_refused)`.
    ChainAppend(Box<Link>),
    /// An authenticated device asks for a pairing slot; the relay picks its number and
    /// answers `PairOpened` (see the pairing section of the spec).
    PairOpen,
    /// An unauthenticated device joins slot `slot` with its first PAKE message.
    PairJoin {
        /// The slot number: the part of the code before the dash (public, it only routes).
        slot: u16,
        /// Opaque PAKE message.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Either side sends the next PAKE message to the other end of its slot.
    PairForward {
        /// The slot.
        slot: u16,
        /// Opaque PAKE message.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Either side ends the pairing; `success` tells the relay whether the code was right.
    PairClose {
        /// The slot.
        slot: u16,
        /// Whether the exchange succeeded.
        success: bool,
    },
    /// Ask for the chain's links after position `after` (0: from the first); the relay
    /// answers with one or more `ChainLinks` frames.
    ChainFetch {
        /// The position of the last link the device holds.
        after: u64,
    },
    /// Set this user's handle to `name` with a number the relay picks (`None`: remove the
    /// handle); answered with `HandleIs`, or `Error(handle_invalid | handle_taken)`.
    HandleSet {
        /// The chosen name (normalised by the relay, see [`crate::people::handle`]).
        name: Option<String>,
    },
    /// Which user has this handle (exact match only); answered with `WhoisResult`, or
    /// `Error(lookup_limit)`.
    Whois {
        /// `name.NN`.
        handle: String,
    },
    /// Another user's device chain after position `after`, answered with `UserChainLinks`
    /// pages. The relay shows it for users who have a handle and for users this user has a
    /// request or contact with; for anyone else the answer is an empty page.
    UserChainFetch {
        /// Whose chain.
        user: UserId,
        /// The position of the last link the device holds.
        after: u64,
    },
    /// Ask `intro.to` to become a contact; answered with `Done` (also when `intro.to` has
    /// blocked this user: the request then looks pending forever).
    ContactRequest(Box<Intro>),
    /// Accept the pending request from `intro.to`, sending this user's intro; answered with
    /// `Done` or `Error(no_such_contact)`.
    ContactAccept(Box<Intro>),
    /// Decline the pending request from `peer`; answered with `Done`.
    ContactDecline {
        /// The user who asked.
        peer: UserId,
    },
    /// Withdraw this user's pending request to `peer`; answered with `Done`.
    ContactCancel {
        /// The user asked.
        peer: UserId,
    },
    /// Stop being contacts with `peer`; answered with `Done`.
    ContactRemove {
        /// The contact.
        peer: UserId,
    },
    /// Block `peer`: nothing it directs at this user gets through, and any request or
    /// contact between the two ends. Answered with `Done`.
    Block {
        /// The user to block.
        peer: UserId,
    },
    /// Unblock `peer` (it does not restore a contact: that takes a new request). Answered
    /// with `Done`.
    Unblock {
        /// The user to unblock.
        peer: UserId,
    },
    /// This user's contacts, requests and blocks; answered with `Contacts` pages.
    ContactsList,
    /// Store this user's profile (a higher version than the stored one); answered with
    /// `Done`.
    ProfileSet(SealedProfile),
    /// A contact's (or this user's own) profile; answered with `Profile`, or
    /// `Error(not_a_contact)`.
    ProfileFetch {
        /// Whose profile.
        user: UserId,
    },
    /// Show or hide this user's presence (hidden also hides every contact's from this
    /// user); answered with `Done`.
    PresenceSet {
        /// Whether to show it.
        visible: bool,
    },
    /// Store the card this user's devices keep about `peer` (a user it has a request,
    /// contact or block with, or a card for already); answered with `Done`, or
    /// `Error(no_such_contact)`.
    ContactCard {
        /// The other user.
        peer: UserId,
        /// The card, sealed under this user's data key.
        card: SealedCard,
    },
    /// Add KeyPackages to this device's pool at the relay (and replace its last-resort
    /// package); answered with `KeyPackageCount`, or `Error(mls_refused)` naming the first
    /// package refused (none is stored then).
    KeyPackagesUpload {
        /// One-use packages (TLS-encoded `MLSMessage`s holding a KeyPackage).
        packages: Vec<serde_bytes::ByteBuf>,
        /// The package handed out when the pool is empty; never deleted by a claim.
        last_resort: Option<serde_bytes::ByteBuf>,
    },
    /// Claim one KeyPackage per active device of `user` (a contact), to add it to a
    /// conversation; answered with `KeyPackagesClaimed`, or `Error(not_a_contact)`.
    KeyPackagesClaim {
        /// Whose packages.
        user: UserId,
    },
    /// Start a conversation: the creator's MLS group at epoch 0 with only this device;
    /// answered with `ConvCreated`, or `Error(conversation_exists | mls_refused)`.
    ConvCreate {
        /// The conversation id, which is the MLS group id.
        conv: ConvId,
        /// The group's GroupInfo with its ratchet tree.
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
    },
    /// Send a message to a conversation; answered with `ConvSent`, `ConvStale` or
    /// `ConvRefused` (never with `Error`), in the order sent.
    ConvSend(Box<ConvSend>),
    /// A page of a conversation's messages from `from` in `direction`; answered with
    /// `ConvMessages`, or `Error(no_such_conversation)`.
    ConvFetch {
        /// The conversation.
        conv: ConvId,
        /// Forward: messages after this `conv_seq`; backward: before it (0: from the head).
        from: u64,
        /// Which way.
        direction: Direction,
        /// Most messages wanted (the relay may send fewer).
        limit: u16,
    },
    /// This device holds the conversation's messages up to `seq` (its cursor, "delivered").
    /// Not answered.
    ConvAck {
        /// The conversation.
        conv: ConvId,
        /// Cumulative.
        seq: u64,
    },
    /// This user has read the conversation up to `seq` (its read marker, for every member
    /// and every device of the user). Not answered; members are told with `ConvReadBy`.
    ConvRead {
        /// The conversation.
        conv: ConvId,
        /// Cumulative.
        seq: u64,
    },
    /// This user's conversations; answered with `Conversations` pages.
    ConvList,
    /// A body for the conversation members' online devices (typing, call signaling), sealed
    /// by the sender under a key exported from the epoch; never stored, not answered.
    ConvEphemeral {
        /// The conversation.
        conv: ConvId,
        /// Opaque.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The conversation's latest GroupInfo, for a member device that must rejoin by external
    /// commit; answered with `GroupInfo`, or `Error(no_such_conversation)`.
    GroupInfoFetch {
        /// The conversation.
        conv: ConvId,
    },
    /// Short-lived credentials for the relay's TURN servers, one request per call; answered
    /// with `TurnCredentials`, `Error(turn_unavailable)` or `Error(rate_limited)`.
    TurnCredentialsFetch,
    /// Where to wake this device when it has no session (replaces its target); answered
    /// with `Done`, `Error(push_target_invalid)`, or `Error(device_revoked)` for a device
    /// revoked meanwhile (a revocation also removes the device's target).
    PushRegister(PushTarget),
    /// This device wants no more wake-ups; answered with `Done`.
    PushUnregister,
    /// Wake the conversation's other members' devices that have no session, urgently (a call
    /// rings); not answered. Limited like ephemerals.
    ConvWake {
        /// The conversation.
        conv: ConvId,
    },
    /// Start uploading an attachment: a blob of `size` bytes (the sealed file) whose SHA-256
    /// is `digest`; answered with `BlobCreated`, or `Error(attachment_too_large |
    /// quota_exceeded | rate_limited)`.
    BlobCreate {
        /// The blob's length in bytes (at least 1).
        size: u64,
        /// SHA-256 of the whole blob, checked by the relay when the last part arrives.
        digest: [u8; 32],
    },
    /// Part `part` of an upload: exactly `attachments::part_len(size, part)` bytes. A part
    /// stored already is not stored again (so a part sent twice across a reconnect is
    /// harmless), and one beyond the next missing part is not stored; the answer is
    /// `BlobStored` with how many parts the relay holds, or `Error(no_such_attachment |
    /// attachment_corrupt | rate_limited)`.
    BlobPut {
        /// The blob (from `BlobCreated`).
        blob: BlobId,
        /// Which part, from 0.
        part: u32,
        /// Its bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Part `part` of a complete blob this device may read (its user uploaded it, or is in a
    /// conversation with a kept message that refers to it); answered with `BlobPart`, or
    /// `Error(no_such_attachment | attachment_incomplete | rate_limited)`.
    BlobGet {
        /// The blob.
        blob: BlobId,
        /// Which part, from 0.
        part: u32,
    },
}

/// Where a device is woken up (see docs/protocol.md §15). Wake-ups carry no sender, no
/// conversation and no content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushTarget {
    /// A Web Push subscription (RFC 8030; a browser's `PushSubscription`, or UnifiedPush):
    /// the relay encrypts for it (RFC 8291) and signs with its VAPID key (RFC 8292).
    WebPush {
        /// The push service URL (`https://`).
        endpoint: String,
        /// The subscription's P-256 public key, uncompressed (65 bytes).
        #[serde(with = "serde_bytes")]
        p256dh: Vec<u8>,
        /// The subscription's authentication secret (16 bytes).
        #[serde(with = "serde_bytes")]
        auth: Vec<u8>,
    },
    /// An iOS or macOS app's APNs device token (the app's bundle id, the topic, is the
    /// relay's: `--apns-topic`).
    Apns {
        /// The device token, as `didRegisterForRemoteNotificationsWithDeviceToken` gives it.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// A development build's token (APNs's sandbox environment).
        sandbox: bool,
    },
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint is a capability at the push service: not printed.
        match self {
            Self::WebPush { endpoint, .. } => f
                .debug_struct("WebPush")
                .field("endpoint_len", &endpoint.len())
                .finish_non_exhaustive(),
            Self::Apns { sandbox, .. } => f
                .debug_struct("Apns")
                .field("sandbox", sandbox)
                .finish_non_exhaustive(),
        }
    }
}

/// Longest push endpoint URL.
pub const MAX_PUSH_ENDPOINT_LEN: usize = 1024;

/// Longest APNs device token (32 bytes today; Apple says they may grow, up to 100).
pub const MAX_APNS_TOKEN_LEN: usize = 100;

impl PushTarget {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                check_len("push endpoint", endpoint.len(), MAX_PUSH_ENDPOINT_LEN)?;
                check_len("p256dh", p256dh.len(), 65)?;
                check_len("auth", auth.len(), 16)
            }
            Self::Apns { token, .. } => {
                check_len("APNs device token", token.len(), MAX_APNS_TOKEN_LEN)
            }
        }
    }
}

/// Frames a relay sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The append with `device_seq` is committed at stream sequence `seq`.
    Appended {
        /// The sender's sequence number.
        device_seq: u64,
        /// Where it sits in the user's log.
        seq: u64,
    },
    /// One or more events, in stream order (the spec's `Event` frame, batched).
    Events(Vec<Event>),
    /// Replay is done: everything up to `head` was sent; live events follow.
    CaughtUp {
        /// The user's log head when replay ended.
        head: u64,
    },
    /// The cursor is below what the relay keeps; the device must resync.
    ResyncRequired {
        /// The oldest stream sequence the relay still has.
        earliest: u64,
    },
    /// An ephemeral body from another of the user's devices.
    Ephemeral {
        /// The sending device.
        from: DeviceId,
        /// Opaque, sealed by the sender.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// An error; whether the connection ends depends on the code (see the spec).
    Error(ErrorFrame),
    /// Liveness check; the client answers `Pong`.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to the client's `Ping`.
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
    /// The user's devices.
    Devices(Vec<DeviceInfo>),
    /// The link sent with `ChainAppend` is stored at position `seqno`.
    ChainAppended {
        /// Its position in the chain.
        seqno: u64,
    },
    /// A pairing slot is open until `expires_at`.
    PairOpened {
        /// The slot the relay assigned: the part of the code before the dash.
        slot: u16,
        /// Expiry, in milliseconds since the Unix epoch.
        expires_at: u64,
    },
    /// A PAKE message from the other end of the slot.
    PairPeer {
        /// The slot.
        slot: u16,
        /// Opaque PAKE message.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The slot is closed (`code` says why when it did not succeed).
    PairClosed {
        /// The slot.
        slot: u16,
        /// `None` on success.
        code: Option<ErrorCode>,
    },
    /// Links of the chain, in order, answering `ChainFetch`. `more` says another page follows.
    ChainLinks {
        /// Consecutive links, the first right after the `after` asked for.
        links: Vec<Link>,
        /// Whether more links follow in another `ChainLinks` frame.
        more: bool,
    },
    /// The user's chain now has `seqno` links: fetch the ones you lack.
    ChainGrew {
        /// The chain's length.
        seqno: u64,
    },
    /// This user's handle after `HandleSet` (`None`: no handle).
    HandleIs {
        /// `name.NN`.
        handle: Option<String>,
    },
    /// The answer to `Whois`.
    WhoisResult {
        /// The handle asked for, as asked.
        handle: String,
        /// The user with this handle, if any.
        user: Option<UserId>,
    },
    /// Links of another user's chain, answering `UserChainFetch`.
    UserChainLinks {
        /// Whose chain.
        user: UserId,
        /// Consecutive links, the first right after the `after` asked for.
        links: Vec<Link>,
        /// Whether more links follow in another `UserChainLinks` frame.
        more: bool,
    },
    /// A people request (contact, block, profile, presence) is done.
    Done,
    /// The answer to `ContactsList`, in pages: `more` says another page follows.
    Contacts {
        /// Contacts, requests and blocks of this user (one page of them).
        contacts: Vec<ContactInfo>,
        /// Whether this user shows presence.
        presence_visible: bool,
        /// Whether more `Contacts` pages follow.
        more: bool,
    },
    /// The answer to `ProfileFetch`.
    Profile {
        /// Whose profile.
        user: UserId,
        /// The stored profile, if the user has set one.
        profile: Option<SealedProfile>,
    },
    /// A contact came online or went offline on one relay node (`source`). A contact is
    /// online while any node says so. Sent only between contacts who both show presence.
    Presence {
        /// The contact.
        user: UserId,
        /// The relay node that saw it (opaque).
        source: u64,
        /// Whether the contact has a session on that node.
        online: bool,
        /// When it was last online, coarse (see [`crate::people::LAST_SEEN_GRANULARITY_S`]).
        last_seen: Option<u64>,
    },
    /// How many one-use KeyPackages this device has left at the relay.
    KeyPackageCount {
        /// Packages in the pool (the last-resort package not counted).
        count: u64,
    },
    /// The answer to `KeyPackagesClaim`: one package per active device of `user` that has
    /// one (a one-use package if any is left, else its last-resort package).
    KeyPackagesClaimed {
        /// Whose packages.
        user: UserId,
        /// The packages, by device.
        packages: Vec<ClaimedKeyPackage>,
    },
    /// The conversation is created at epoch 0.
    ConvCreated {
        /// The conversation.
        conv: ConvId,
    },
    /// The message with `device_seq` is stored at `conv_seq`.
    ConvSent {
        /// The conversation.
        conv: ConvId,
        /// The sender's sequence number.
        device_seq: u64,
        /// Where it sits in the conversation.
        conv_seq: u64,
    },
    /// The commit with `device_seq` lost: the conversation is at `epoch` now, with `head`
    /// messages. Fetch and process them, then commit again (with a new `device_seq`).
    ConvStale {
        /// The conversation.
        conv: ConvId,
        /// The sender's sequence number of the refused commit.
        device_seq: u64,
        /// The conversation's current epoch.
        epoch: u64,
        /// The conversation's last `conv_seq`.
        head: u64,
    },
    /// The message with `device_seq` was refused (nothing stored).
    ConvRefused {
        /// The conversation.
        conv: ConvId,
        /// The sender's sequence number.
        device_seq: u64,
        /// Why.
        error: ErrorFrame,
    },
    /// A page of messages answering `ConvFetch`, in the direction asked.
    ConvMessages {
        /// The conversation.
        conv: ConvId,
        /// The messages.
        messages: Vec<ConvMessage>,
        /// Whether more follow in that direction.
        more: bool,
    },
    /// The conversation has messages up to `head` (pushed to every member's devices).
    ConvHead {
        /// The conversation.
        conv: ConvId,
        /// Its last `conv_seq`.
        head: u64,
    },
    /// The answer to `ConvList`, in pages.
    Conversations {
        /// This user's conversations (one page of them).
        convs: Vec<ConvSummary>,
        /// Whether more pages follow.
        more: bool,
    },
    /// An ephemeral body from a member device of the conversation.
    ConvEphemeral {
        /// The conversation.
        conv: ConvId,
        /// The sending user.
        user: UserId,
        /// The sending device.
        from: DeviceId,
        /// Opaque.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// A member moved its read marker (pushed to every member's devices).
    ConvReadBy {
        /// The conversation.
        conv: ConvId,
        /// The member.
        user: UserId,
        /// Its read marker.
        seq: u64,
    },
    /// The answer to `GroupInfoFetch`.
    GroupInfo {
        /// The conversation.
        conv: ConvId,
        /// The epoch of the GroupInfo.
        epoch: u64,
        /// The GroupInfo with its ratchet tree.
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
    },
    /// The answer to `ConvFetch` when retention deleted messages after `from`: the
    /// conversation keeps `earliest..=head`. With `rejoin`, a commit or proposal the device
    /// had not read is gone: it rejoins by external commit (`GroupInfoFetch`); otherwise only
    /// application messages are, and it reads on from `earliest`.
    ConvTrimmed {
        /// The conversation.
        conv: ConvId,
        /// The first message kept.
        earliest: u64,
        /// Whether the device must rejoin.
        rejoin: bool,
    },
    /// The answer to `TurnCredentialsFetch`: coturn's `use-auth-secret` scheme, valid for
    /// every URL until `expires_at`.
    TurnCredentials(TurnCredentials),
    /// The answer to `BlobCreate`: upload the parts to `blob`.
    BlobCreated {
        /// The new blob's id (a capability).
        blob: BlobId,
        /// When the relay deletes it unless a message refers to it by then (Unix ms).
        unreferenced_until: u64,
    },
    /// The answer to `BlobPut`: the relay holds parts `0..stored`; `complete` once all are
    /// there and the digest matched.
    BlobStored {
        /// The blob.
        blob: BlobId,
        /// Parts held.
        stored: u32,
        /// Whether the blob is complete.
        complete: bool,
    },
    /// The answer to `BlobGet`.
    BlobPart {
        /// The blob.
        blob: BlobId,
        /// Which part.
        part: u32,
        /// The blob's length in bytes.
        size: u64,
        /// The part's bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

/// Credentials for the relay's TURN servers (coturn's REST scheme: `username` is
/// `"<expiry unix seconds>:<opaque id>"`, `password` base64 HMAC-SHA1 of it under the secret
/// the relay shares with the TURN servers).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentials {
    /// `turn:` / `turns:` / `stun:` URLs, as WebRTC's `RTCIceServer.urls` takes them.
    pub urls: Vec<String>,
    /// The TURN username.
    pub username: String,
    /// The TURN password (a credential: not printed by `Debug`).
    pub password: String,
    /// When the TURN servers stop accepting them, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl std::fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Most URLs in `TurnCredentials`.
pub const MAX_TURN_URLS: usize = 8;
/// Longest TURN URL, username or password.
pub const MAX_TURN_FIELD_LEN: usize = 256;

impl TurnCredentials {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len("TURN URLs", self.urls.len(), MAX_TURN_URLS)?;
        self.urls
            .iter()
            .chain([&self.username, &self.password])
            .try_for_each(|field| check_len("TURN field", field.len(), MAX_TURN_FIELD_LEN))
    }
}

/// One claimed KeyPackage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    pub device: DeviceId,
    /// The package.
    #[serde(with = "serde_bytes")]
    pub package: Vec<u8>,
}

/// Most links in one `ChainLinks` frame (a relay also keeps a frame under the frame limit).
pub const MAX_LINKS_PER_FRAME: usize = 256;

impl Wire for ClientFrame {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::Append(append) => check_len("payload", append.payload.0.len(), MAX_PAYLOAD_LEN),
            Self::Ephemeral { body } => check_len("ephemeral body", body.len(), MAX_EPHEMERAL_LEN),
            Self::PairJoin { body, .. } | Self::PairForward { body, .. } => {
                check_len("pairing body", body.len(), MAX_PAIRING_BODY_LEN)
            }
            Self::ChainAppend(link) => link.check_limits(),
            Self::HandleSet { name } => check_len(
                "handle name",
                name.as_ref().map_or(0, String::len),
                MAX_HANDLE_INPUT_LEN,
            ),
            Self::Whois { handle } => check_len("handle", handle.len(), MAX_HANDLE_INPUT_LEN),
            Self::ContactRequest(intro) | Self::ContactAccept(intro) => intro.check_limits(),
            Self::ProfileSet(profile) => profile.check_limits(),
            Self::ContactCard { card, .. } => card.check_limits(),
            Self::KeyPackagesUpload {
                packages,
                last_resort,
            } => {
                check_len("key packages", packages.len(), MAX_KEY_PACKAGES_PER_UPLOAD)?;
                packages
                    .iter()
                    .chain(last_resort)
                    .try_for_each(|p| check_len("key package", p.len(), MAX_KEY_PACKAGE_LEN))
            }
            Self::ConvCreate { group_info, .. } => {
                check_len("group info", group_info.len(), MAX_GROUP_BLOB_LEN)
            }
            Self::ConvSend(send) => conversations::check_send(send),
            Self::PushRegister(target) => target.check_limits(),
            Self::BlobPut { bytes, .. } => check_len("blob part", bytes.len(), PART_LEN),
            Self::ConvEphemeral { body, .. } => {
                check_len("ephemeral body", body.len(), MAX_EPHEMERAL_LEN)
            }
            Self::KeyPackagesClaim { .. }
            | Self::BlobCreate { .. }
            | Self::BlobGet { .. }
            | Self::ConvFetch { .. }
            | Self::ConvAck { .. }
            | Self::ConvRead { .. }
            | Self::ConvList
            | Self::GroupInfoFetch { .. }
            | Self::TurnCredentialsFetch
            | Self::PushUnregister
            | Self::ConvWake { .. }
            | Self::UserChainFetch { .. }
            | Self::ContactDecline { .. }
            | Self::ContactCancel { .. }
            | Self::ContactRemove { .. }
            | Self::Block { .. }
            | Self::Unblock { .. }
            | Self::ContactsList
            | Self::ProfileFetch { .. }
            | Self::PresenceSet { .. }
            | Self::ChainFetch { .. }
            | Self::Ack { .. }
            | Self::Ping { .. }
            | Self::Pong { .. }
            | Self::ListDevices
            | Self::PairOpen
            | Self::PairClose { .. } => Ok(()),
        }
    }
}

impl Wire for ServerFrame {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::Events(events) => {
                check_len("events", events.len(), MAX_EVENTS_PER_FRAME)?;
                events
                    .iter()
                    .try_for_each(|e| check_len("payload", e.payload.0.len(), MAX_PAYLOAD_LEN))
            }
            Self::Ephemeral { body, .. } => {
                check_len("ephemeral body", body.len(), MAX_EPHEMERAL_LEN)
            }
            Self::Error(error) => {
                check_len("error message", error.message.len(), MAX_ERROR_MESSAGE_LEN)
            }
            Self::Devices(devices) => {
                check_len("devices", devices.len(), MAX_DEVICES_PER_FRAME)?;
                devices
                    .iter()
                    .try_for_each(|d| check_len("device name", d.name.len(), MAX_DEVICE_NAME_LEN))
            }
            Self::PairPeer { body, .. } => {
                check_len("pairing body", body.len(), MAX_PAIRING_BODY_LEN)
            }
            Self::ChainLinks { links, .. } | Self::UserChainLinks { links, .. } => {
                check_len("links", links.len(), MAX_LINKS_PER_FRAME)?;
                links.iter().try_for_each(Wire::check_limits)
            }
            Self::HandleIs { handle } => check_len(
                "handle",
                handle.as_ref().map_or(0, String::len),
                MAX_HANDLE_INPUT_LEN,
            ),
            Self::WhoisResult { handle, .. } => {
                check_len("handle", handle.len(), MAX_HANDLE_INPUT_LEN)
            }
            Self::Contacts { contacts, .. } => {
                check_len("contacts", contacts.len(), MAX_CONTACTS_PER_FRAME)?;
                contacts
                    .iter()
                    .filter_map(|c| c.card.as_ref())
                    .try_for_each(Wire::check_limits)
            }
            Self::Profile { profile, .. } => profile.as_ref().map_or(Ok(()), Wire::check_limits),
            Self::KeyPackagesClaimed { packages, .. } => {
                check_len("key packages", packages.len(), MAX_DEVICES_PER_FRAME)?;
                packages.iter().try_for_each(|p| {
                    check_len("key package", p.package.len(), MAX_KEY_PACKAGE_LEN)
                })
            }
            Self::ConvRefused { error, .. } => {
                check_len("error message", error.message.len(), MAX_ERROR_MESSAGE_LEN)
            }
            Self::ConvMessages { messages, .. } => {
                check_len("messages", messages.len(), MAX_CONV_MESSAGES_PER_FRAME)?;
                messages.iter().try_for_each(|m| {
                    check_len("MLS message", m.message.len(), MAX_MLS_MESSAGE_LEN)
                })
            }
            Self::Conversations { convs, .. } => conversations::check_summaries(convs),
            Self::ConvEphemeral { body, .. } => {
                check_len("ephemeral body", body.len(), MAX_EPHEMERAL_LEN)
            }
            Self::GroupInfo { group_info, .. } => {
                check_len("group info", group_info.len(), MAX_GROUP_BLOB_LEN)
            }
            Self::TurnCredentials(credentials) => credentials.check_limits(),
            Self::BlobPart { bytes, .. } => check_len("blob part", bytes.len(), PART_LEN),
            Self::KeyPackageCount { .. }
            | Self::BlobCreated { .. }
            | Self::BlobStored { .. }
            | Self::ConvCreated { .. }
            | Self::ConvSent { .. }
            | Self::ConvStale { .. }
            | Self::ConvHead { .. }
            | Self::ConvReadBy { .. }
            | Self::ConvTrimmed { .. }
            | Self::Appended { .. }
            | Self::CaughtUp { .. }
            | Self::ResyncRequired { .. }
            | Self::Ping { .. }
            | Self::Pong { .. }
            | Self::ChainAppended { .. }
            | Self::ChainGrew { .. }
            | Self::Done
            | Self::Presence { .. }
            | Self::PairOpened { .. }
            | Self::PairClosed { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn error_messages_are_cut_to_the_limit_on_a_character_boundary() {
        // Short and exactly-at-the-limit messages are kept whole.
        assert_eq!(
            ErrorFrame::with_message(ErrorCode::Internal, "short").message,
            "short"
        );
        let exact = "x".repeat(MAX_ERROR_MESSAGE_LEN);
        assert_eq!(
            ErrorFrame::with_message(ErrorCode::Internal, exact.clone()).message,
            exact
        );
        // ASCII is cut at the limit.
        let long = "y".repeat(MAX_ERROR_MESSAGE_LEN + 500);
        assert_eq!(
            ErrorFrame::with_message(ErrorCode::Internal, long.clone()).message,
            long[..MAX_ERROR_MESSAGE_LEN]
        );
        // "a" then two-byte characters: byte MAX_ERROR_MESSAGE_LEN falls inside one, so the cut
        // goes back one byte rather than splitting it (or going past the limit).
        let text = format!("a{}", "é".repeat(MAX_ERROR_MESSAGE_LEN));
        let frame = ErrorFrame::with_message(ErrorCode::Internal, text.clone());
        assert_eq!(frame.message.len(), MAX_ERROR_MESSAGE_LEN - 1);
        assert!(text.starts_with(&frame.message));
        // Whatever the cut, the frame still decodes at the peer.
        let wire = codec::encode(&ServerFrame::Error(frame.clone()));
        assert_eq!(
            codec::decode::<ServerFrame>(&wire),
            Ok(ServerFrame::Error(frame))
        );
    }

    #[test]
    fn an_error_answering_an_append_names_it() {
        let error = ErrorFrame::new(ErrorCode::Conflict);
        assert_eq!(error.device_seq, None);
        assert_eq!(error.message, ErrorCode::Conflict.description());
        assert_eq!(error.for_append(9).device_seq, Some(9));
    }

    #[test]
    fn payloads_print_their_length_not_their_bytes() {
        let payload = SealedPayload(vec![0xab; 300]);
        assert_eq!(format!("{payload:?}"), "SealedPayload(300 bytes)");
    }
}

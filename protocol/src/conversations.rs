//! Conversations: the wire types of the relay's role as MLS's Delivery Service.
//!
//! A conversation (1:1 or group) is an MLS group whose group id is its [`ConvId`], with one
//! leaf per device. The relay keeps one stream per conversation: every message gets the next
//! `conv_seq` (from 1, gapless, in commit order), is stored once and read by every member's
//! devices from their own cursor (fan-out on read). The relay sees only what routing needs:
//! the sender, its `device_seq` (idempotency), the MLS epoch, a [`MessageClass`], and the
//! opaque MLS message. Commits and proposals travel as MLS *public* messages so the relay can
//! validate them (membership, signatures, epoch) before sequencing; application messages are
//! MLS *private* messages the relay cannot read.
//!
//! **First valid commit per epoch wins**: a commit is accepted only for the conversation's
//! current epoch, in the same transaction that assigns its `conv_seq`; the loser is answered
//! [`ServerFrame::ConvStale`](crate::ServerFrame::ConvStale) with the epoch and head to catch
//! up to. Application messages are accepted for the current epoch and the
//! [`PAST_EPOCHS_ACCEPTED`] before it (a device may not have seen the latest commit yet).
//!
//! KeyPackages: each device keeps a pool (and one last-resort package) at the relay; a
//! contact claims one per device of a user to add that user to a conversation. Welcomes go
//! into the joining users' own logs (a relay notice), only once their commit was accepted.
//!
//! Unread counts need no decryption: [`MessageClass::Content`] messages are numbered by a
//! second counter, and a member's unread count is the conversation's content count minus the
//! content count at the member's read marker.

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, check_len};
use crate::identity::{DeviceId, UserId};

/// A conversation: 16 random bytes chosen by the device that creates it, also the MLS group id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConvId(pub [u8; 16]);

impl ConvId {
    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, DecodeError> {
        let mut bytes = [0; 16];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| DecodeError::Malformed("a conversation id is 32 hex characters".into()))?;
        Ok(Self(bytes))
    }
}

impl std::fmt::Debug for ConvId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConvId({})", &self.to_hex()[..12])
    }
}

impl std::fmt::Display for ConvId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a conversation message is, in the clear: all the relay needs to sequence and count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageClass {
    /// An MLS commit (public message): validated by the relay, advances the epoch.
    Commit,
    /// An MLS proposal (public message), for example a member's own removal when leaving.
    Proposal,
    /// An application message a person wrote (private message): counts as unread.
    Content,
    /// An application message for the devices (receipts, edits, titles; private message):
    /// does not count as unread.
    Control,
}

impl MessageClass {
    /// The number stored by the relay.
    pub const fn number(self) -> u8 {
        match self {
            Self::Commit => 0,
            Self::Proposal => 1,
            Self::Content => 2,
            Self::Control => 3,
        }
    }

    /// The class stored as `number`.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            0 => Some(Self::Commit),
            1 => Some(Self::Proposal),
            2 => Some(Self::Content),
            3 => Some(Self::Control),
            _ => None,
        }
    }

    /// Whether the message is an MLS handshake message the relay validates.
    pub const fn is_handshake(self) -> bool {
        matches!(self, Self::Commit | Self::Proposal)
    }
}

/// Past epochs whose application messages the relay still accepts.
pub const PAST_EPOCHS_ACCEPTED: u64 = 3;
/// Largest MLS message (commit, proposal or application message) in bytes.
pub const MAX_MLS_MESSAGE_LEN: usize = 192 * 1024;
/// Largest Welcome or GroupInfo in bytes (both grow with the group).
/// (A Welcome travels in a notice of the user log, under its 256 KiB payload limit, and a
/// commit frame carries two of these and its message under the 1 MiB frame limit;
/// this bounds a conversation to a few hundred leaves.)
pub const MAX_GROUP_BLOB_LEN: usize = 240 * 1024;
/// Largest KeyPackage in bytes.
pub const MAX_KEY_PACKAGE_LEN: usize = 4 * 1024;
/// Most KeyPackages in one upload.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 100;
/// Most messages in one `ConvMessages` page.
pub const MAX_CONV_MESSAGES_PER_FRAME: usize = 512;
/// Most bytes of MLS messages in one `ConvMessages` page, unless its one message is larger:
/// a page of the largest messages still fits a frame (512 messages' other fields take under
/// 48 KiB; [`MAX_MLS_MESSAGE_LEN`] is below this).
pub const MAX_CONV_PAGE_BYTES: usize = 768 * 1024;
/// Most conversations in one `Conversations` page.
pub const MAX_CONVS_PER_FRAME: usize = 256;
/// Most members listed for one conversation.
pub const MAX_MEMBERS_PER_CONV: usize = 1000;

/// A device sends one message to a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSend {
    /// The conversation.
    pub conv: ConvId,
    /// The sender's own sequence number for this conversation, from 1, never reused.
    pub device_seq: u64,
    /// The MLS epoch the message was made in (must match the message's own header).
    pub epoch: u64,
    /// The class (must match the MLS message: public commit/proposal, private application).
    pub class: MessageClass,
    /// The MLS message (`MLSMessage`, TLS-encoded).
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
    /// Commits: the Welcome for the members it adds, delivered into their logs if accepted.
    pub welcome: Option<serde_bytes::ByteBuf>,
    /// Commits: the new epoch's GroupInfo (with the ratchet tree), kept for external joins.
    pub group_info: Option<serde_bytes::ByteBuf>,
    /// Application messages: the attachments (blobs) the message refers to. The relay keeps
    /// each while a message that refers to it is kept, and lets the conversation's members
    /// fetch it (docs/protocol.md §16).
    pub attachments: Vec<crate::attachments::BlobId>,
}

/// One stored conversation message as the relay delivers it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvMessage {
    /// Position in the conversation: from 1, gapless, in commit order.
    pub conv_seq: u64,
    /// The sending device.
    pub device: DeviceId,
    /// The sending device's sequence number for it.
    pub device_seq: u64,
    /// Its MLS epoch.
    pub epoch: u64,
    /// Its class.
    pub class: MessageClass,
    /// When the relay stored it, in milliseconds since the Unix epoch.
    pub sent_at: u64,
    /// The MLS message.
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

impl std::fmt::Debug for ConvMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvMessage")
            .field("conv_seq", &self.conv_seq)
            .field("device", &self.device)
            .field("device_seq", &self.device_seq)
            .field("epoch", &self.epoch)
            .field("class", &self.class)
            .field("message", &format_args!("{} bytes", self.message.len()))
            .finish()
    }
}

/// Which way a history page goes from its starting point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Messages after `from`, oldest first.
    Forward,
    /// Messages before `from`, newest first.
    Backward,
}

/// What a member user has of a conversation, as the relay counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The member.
    pub user: UserId,
    /// Its devices in the group (its leaves).
    pub devices: Vec<DeviceId>,
    /// Its read marker: the highest `conv_seq` it has read.
    pub read: u64,
    /// The highest `conv_seq` one of its devices has fetched and acknowledged.
    pub delivered: u64,
}

/// One conversation in the list, for the asking user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSummary {
    /// The conversation.
    pub conv: ConvId,
    /// The current MLS epoch.
    pub epoch: u64,
    /// The last `conv_seq`.
    pub head: u64,
    /// When its last message was stored (milliseconds since the Unix epoch).
    pub last_activity: u64,
    /// Content messages after the asking user's read marker.
    pub unread: u64,
    /// The members (users with at least one leaf).
    pub members: Vec<MemberState>,
}

/// Checks the lengths in a [`ConvSend`].
pub fn check_send(send: &ConvSend) -> Result<(), DecodeError> {
    check_len("MLS message", send.message.len(), MAX_MLS_MESSAGE_LEN)?;
    if let Some(welcome) = &send.welcome {
        check_len("welcome", welcome.len(), MAX_GROUP_BLOB_LEN)?;
    }
    if let Some(info) = &send.group_info {
        check_len("group info", info.len(), MAX_GROUP_BLOB_LEN)?;
    }
    check_len(
        "attachments",
        send.attachments.len(),
        crate::attachments::MAX_ATTACHMENTS_PER_MESSAGE,
    )
}

/// Checks the lengths in a page of conversation summaries.
pub fn check_summaries(convs: &[ConvSummary]) -> Result<(), DecodeError> {
    check_len("conversations", convs.len(), MAX_CONVS_PER_FRAME)?;
    convs.iter().try_for_each(|c| {
        check_len("members", c.members.len(), MAX_MEMBERS_PER_CONV)?;
        c.members.iter().try_for_each(|m| {
            check_len(
                "member devices",
                m.devices.len(),
                crate::limits::MAX_DEVICES_PER_FRAME,
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_through_their_numbers_and_only_those() {
        for class in [
            MessageClass::Commit,
            MessageClass::Proposal,
            MessageClass::Content,
            MessageClass::Control,
        ] {
            assert_eq!(MessageClass::from_number(class.number()), Some(class));
        }
        assert_eq!(MessageClass::from_number(4), None);
        assert!(MessageClass::Commit.is_handshake());
        assert!(MessageClass::Proposal.is_handshake());
        assert!(!MessageClass::Content.is_handshake());
        assert!(!MessageClass::Control.is_handshake());
    }

    #[test]
    fn conversation_ids_print_as_hex_and_parse_back() {
        let id = ConvId([0xab; 16]);
        assert_eq!(ConvId::from_hex(&id.to_hex()), Ok(id));
        assert_eq!(format!("{id:?}"), "ConvId(abababababab)");
        assert!(ConvId::from_hex("abc").is_err());
        assert!(ConvId::from_hex(&"zz".repeat(16)).is_err());
    }

    #[test]
    fn oversized_blobs_are_refused() {
        let mut send = ConvSend {
            conv: ConvId([1; 16]),
            device_seq: 1,
            epoch: 0,
            class: MessageClass::Commit,
            message: vec![0; MAX_MLS_MESSAGE_LEN],
            welcome: Some(vec![0; MAX_GROUP_BLOB_LEN].into()),
            group_info: Some(vec![0; MAX_GROUP_BLOB_LEN].into()),
            attachments: Vec::new(),
        };
        assert!(check_send(&send).is_ok());
        send.message.push(0);
        assert!(check_send(&send).is_err());
        send.message.pop();
        send.welcome = Some(vec![0; MAX_GROUP_BLOB_LEN + 1].into());
        assert!(check_send(&send).is_err());
        send.welcome = None;
        send.group_info = Some(vec![0; MAX_GROUP_BLOB_LEN + 1].into());
        assert!(check_send(&send).is_err());
    }

    #[test]
    fn a_full_page_fits_a_frame_whatever_the_size_of_its_messages() {
        for size in [
            MAX_MLS_MESSAGE_LEN,
            MAX_CONV_PAGE_BYTES / MAX_CONV_MESSAGES_PER_FRAME,
        ] {
            let per_page = (MAX_CONV_PAGE_BYTES / size).min(MAX_CONV_MESSAGES_PER_FRAME);
            assert_full_page_fits(per_page, size);
        }
    }

    fn assert_full_page_fits(per_page: usize, size: usize) {
        use crate::frames::ServerFrame;
        let messages = (0..per_page as u64)
            .map(|i| ConvMessage {
                conv_seq: u64::MAX - i,
                device: DeviceId([0xff; 32]),
                device_seq: u64::MAX,
                epoch: u64::MAX,
                class: MessageClass::Content,
                sent_at: u64::MAX,
                message: vec![0xff; size],
            })
            .collect();
        let frame = ServerFrame::ConvMessages {
            conv: ConvId([0xff; 16]),
            messages,
            more: true,
        };
        let len = postcard::to_allocvec(&frame).unwrap().len();
        assert!(
            len <= crate::limits::MAX_FRAME_LEN,
            "{per_page} messages of {size} bytes: {len}"
        );
    }
}

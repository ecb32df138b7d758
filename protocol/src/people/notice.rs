//! Notices: the events the relay itself writes into a user's log when something about the
//! user's contacts changes, so that every device of the user (including ones offline at the
//! time) learns it by replaying the log, in order, like any other event.
//!
//! A notice is an [`Event`](crate::Event) whose `device` is [`RELAY_DEVICE`] (all zeros: a
//! key no device can hold, since it is a small-order point that strict verification
//! refuses) and whose `device_seq` equals its `seq`. Its payload is [`NOTICE_FORMAT`]
//! followed by the postcard encoding of a [`Notice`]. It is not sealed: it only says what
//! the relay already knows (who asked whom, who accepted); what the users said to each other
//! travels inside the [`Intro`]s, signed by the sending device and sealed to the receiver.

use serde::{Deserialize, Serialize};

use super::Intro;
use crate::codec::{self, DecodeError, Wire};
use crate::conversations::{ConvId, MAX_GROUP_BLOB_LEN};
use crate::frames::SealedPayload;
use crate::identity::{DeviceId, UserId};

/// The device id of events the relay writes.
pub const RELAY_DEVICE: DeviceId = DeviceId([0; 32]);
/// First byte of a notice's payload.
pub const NOTICE_FORMAT: u8 = 0xA0;

/// What changed (see the module docs). "This user" is the owner of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// This user asked `intro.to` to become a contact.
    RequestSent {
        /// The request as sent (sealed to the other user's devices).
        intro: Box<Intro>,
    },
    /// `intro.from` asks this user to become a contact.
    RequestReceived {
        /// The request, sealed to this user's devices.
        intro: Box<Intro>,
    },
    /// This user and `peer` are contacts now. `intro` is the one the accepting user sent:
    /// in the requester's log it brings the accepter's profile key.
    Accepted {
        /// The other user.
        peer: UserId,
        /// The accepting user's intro.
        intro: Box<Intro>,
    },
    /// The request between this user and `peer` was declined.
    Declined {
        /// The other user.
        peer: UserId,
        /// Whether this user declined (rather than `peer`).
        by_me: bool,
    },
    /// The request between this user and `peer` was withdrawn by the user who sent it.
    Cancelled {
        /// The other user.
        peer: UserId,
        /// Whether this user withdrew it.
        by_me: bool,
    },
    /// This user and `peer` are no longer contacts.
    Removed {
        /// The other user.
        peer: UserId,
        /// Whether this user removed the contact.
        by_me: bool,
    },
    /// This user blocked `peer` (only the blocker's log says so).
    Blocked {
        /// The blocked user.
        peer: UserId,
    },
    /// This user unblocked `peer`.
    Unblocked {
        /// The user no longer blocked.
        peer: UserId,
    },
    /// This user's handle is now `handle` (`None`: no handle).
    HandleChanged {
        /// The handle, `name.NN`.
        handle: Option<String>,
    },
    /// This user's profile is at `version` now.
    ProfileChanged {
        /// The new version.
        version: u64,
    },
    /// Whether this user shows presence to contacts (and so sees theirs).
    PresenceVisibility {
        /// Shown or hidden.
        visible: bool,
    },
    /// This user's devices were added to conversation `conv` by the commit at `conv_seq`:
    /// `welcome` is the MLS Welcome (only devices it names can open it).
    Welcome {
        /// The conversation.
        conv: ConvId,
        /// The commit that added them.
        conv_seq: u64,
        /// The MLS Welcome.
        #[serde(with = "serde_bytes")]
        welcome: Vec<u8>,
    },
    /// This user's last devices in conversation `conv` were removed by the commit at
    /// `conv_seq` (or it left): its devices can no longer read or send there.
    RemovedFromConversation {
        /// The conversation.
        conv: ConvId,
        /// The commit that removed them.
        conv_seq: u64,
    },
}

impl Notice {
    /// The payload of the notice's event.
    pub fn to_payload(&self) -> SealedPayload {
        let mut bytes = vec![NOTICE_FORMAT];
        bytes.extend_from_slice(&codec::encode(self));
        SealedPayload(bytes)
    }

    /// Reads a notice from an event payload written by the relay.
    pub fn from_payload(payload: &[u8]) -> Result<Self, DecodeError> {
        match payload.split_first() {
            Some((&NOTICE_FORMAT, rest)) => codec::decode(rest),
            _ => Err(DecodeError::Malformed("not a notice".into())),
        }
    }
}

impl Wire for Notice {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::RequestSent { intro }
            | Self::RequestReceived { intro }
            | Self::Accepted { intro, .. } => intro.check_limits(),
            Self::HandleChanged { handle } => codec::check_len(
                "handle",
                handle.as_ref().map_or(0, String::len),
                super::handle::MAX_HANDLE_INPUT_LEN,
            ),
            Self::Welcome { welcome, .. } => {
                codec::check_len("welcome", welcome.len(), MAX_GROUP_BLOB_LEN)
            }
            Self::Declined { .. }
            | Self::Cancelled { .. }
            | Self::Removed { .. }
            | Self::Blocked { .. }
            | Self::Unblocked { .. }
            | Self::ProfileChanged { .. }
            | Self::PresenceVisibility { .. }
            | Self::RemovedFromConversation { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_through_a_payload_and_nothing_else_reads_as_one() {
        let notice = Notice::Removed {
            peer: UserId([4; 32]),
            by_me: true,
        };
        let payload = notice.to_payload();
        assert_eq!(payload.0[0], NOTICE_FORMAT);
        assert_eq!(Notice::from_payload(&payload.0), Ok(notice));
        assert!(Notice::from_payload(&[]).is_err());
        assert!(Notice::from_payload(&[2, 0, 0]).is_err());
        assert!(Notice::from_payload(&[NOTICE_FORMAT, 0xff]).is_err());
    }

    #[test]
    fn the_relay_device_is_not_a_usable_key() {
        // Strict verification refuses it, so no device can ever hold it.
        assert!(RELAY_DEVICE.verify(b"x", b"y", &[0; 64]).is_err());
    }
}

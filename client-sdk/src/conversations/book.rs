//! What a device keeps of its conversations beside the MLS state: per conversation its
//! cursor, the epoch it joined at and the messages it decrypted (MLS opens each message once:
//! history is read from here), and the device's `device_seq` counter. Saved together with the
//! MLS state in one file, so the two never disagree after a crash.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_mls::{GroupKind, Member};
use ferry_protocol::conversations::ConvId;
use ferry_protocol::{DeviceId, DeviceKey, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, StateError};
use crate::files::{Access, write_atomic};

/// Version of the saved file.
const FORMAT: u8 = 1;

/// The start of a log event that archives a conversation message for this user's other
/// devices (see [`crate::conversations`]): a zero byte, then a label an app's own text would
/// not start with. Such events are not handed to the app.
pub const ARCHIVE_PREFIX: &[u8] = b"\0ferry/conversation-archive/v1\0";

/// The log event archiving `message`.
pub(crate) fn archive_record(message: &StoredMessage) -> Vec<u8> {
    let mut record = ARCHIVE_PREFIX.to_vec();
    record.extend_from_slice(&postcard::to_allocvec(message).unwrap_or_default());
    record
}

/// The message an archive event holds; `None` if the plaintext is not one.
pub(crate) fn read_archive(plaintext: &[u8]) -> Option<StoredMessage> {
    postcard::from_bytes(plaintext.strip_prefix(ARCHIVE_PREFIX)?).ok()
}

/// A message as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The conversation.
    pub conv: ConvId,
    /// Its place in the conversation.
    pub conv_seq: u64,
    /// The sending user.
    pub user: UserId,
    /// The sending device.
    pub device: DeviceId,
    /// When the relay stored it (milliseconds since the Unix epoch; this device's clock for
    /// its own messages).
    pub sent_at: u64,
    /// The text.
    pub text: String,
}

/// What an application message carries (inside MLS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Text a person wrote (class `Content`).
    Text(String),
    /// The conversation's title (class `Control`): sent by whoever names it, and again by
    /// whoever adds members, who cannot read what was said before they joined.
    Title(String),
}

impl Body {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// `None` for a body this version does not know (skipped, not an error).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// One conversation of this device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ConvRecord {
    pub kind: GroupKind,
    /// The last `conv_seq` processed.
    pub cursor: u64,
    /// The epoch this device joined at (earlier application messages cannot be opened).
    pub joined_epoch: u64,
    /// Messages decrypted or sent, in `conv_seq` order.
    pub messages: Vec<StoredMessage>,
    /// Its title, if one was given.
    pub title: Option<String>,
    /// A member proposed to leave: commit it after this page.
    #[serde(skip)]
    pub leave_proposed: bool,
}

impl ConvRecord {
    /// Keeps `message` in `conv_seq` order (a device's own message may be stored before
    /// the others' messages before it are read); a second copy of one is ignored.
    pub fn keep(&mut self, message: StoredMessage) {
        match self
            .messages
            .binary_search_by_key(&message.conv_seq, |m| m.conv_seq)
        {
            Ok(_) => {}
            Err(at) => self.messages.insert(at, message),
        }
    }

    pub fn new(kind: GroupKind, joined_epoch: u64) -> Self {
        Self {
            kind,
            cursor: 0,
            joined_epoch,
            messages: Vec::new(),
            title: None,
            leave_proposed: false,
        }
    }
}

/// The book: every conversation of this device, and its `device_seq` counter.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Book {
    /// The last `device_seq` taken (conversation sends, every conversation).
    pub last_seq: u64,
    /// Whether the last-resort KeyPackage was uploaded.
    pub last_resort_uploaded: bool,
    pub convs: BTreeMap<ConvId, ConvRecord>,
    /// Messages this user's devices archived in its log, by conversation, in `conv_seq`
    /// order: the history of conversations from before this device was in them.
    pub archive: BTreeMap<ConvId, Vec<StoredMessage>>,
}

impl Book {
    /// The next `device_seq` (the caller saves before sending it).
    pub fn take_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }
}

/// The saved file: the book and the MLS state.
#[derive(Serialize, Deserialize)]
pub(crate) struct Saved {
    format: u8,
    book: Book,
    member: Vec<u8>,
}

impl Saved {
    /// Reads the file, if there is one.
    pub fn read(path: &Path, device: &DeviceKey) -> Result<Option<(Member, Book)>, ClientError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(path, e).into()),
        };
        let saved: Saved = postcard::from_bytes(&bytes)
            .map_err(|e| StateError::corrupt(path, format!("conversations: {e}")))?;
        if saved.format != FORMAT {
            return Err(StateError::corrupt(path, "an unknown conversations format").into());
        }
        let member = Member::from_bytes(&saved.member, device)
            .map_err(|e| StateError::corrupt(path, format!("MLS state: {e}")))?;
        Ok(Some((member, saved.book)))
    }

    /// Replaces the file (private: it holds MLS secrets and decrypted messages).
    pub fn write(path: &Path, member: &Member, book: &Book) -> Result<(), ClientError> {
        let saved = Saved {
            format: FORMAT,
            book: book.clone(),
            member: member.to_bytes(),
        };
        let bytes = postcard::to_allocvec(&saved)
            .map_err(|e| ClientError::Protocol(format!("cannot encode conversations: {e}")))?;
        write_atomic(path, &bytes, Access::Private)?;
        Ok(())
    }
}

//! What a device keeps of its conversations beside the MLS state: per conversation its
//! cursor, the epoch it joined at and the messages it decrypted (MLS opens each message once:
//! history is read from here), and the device's `device_seq` counter. Saved together with the
//! MLS state in one file, so the two never disagree after a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferry_mls::{GroupKind, Member};
use ferry_protocol::conversations::ConvId;
use ferry_protocol::{DeviceId, DeviceKey, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, StateError};
use crate::files::{Access, write_atomic};

/// Version of the saved file (1: before [`Book::blocked`], read and converted).
const FORMAT: u8 = 2;

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
    /// whoever adds members, who cannot read what was said before they joined (for a device
    /// that joins by itself, by one member that reads its join: see `title_sender`).
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
    /// A device joined by itself and this one sends it the title: after this catch-up.
    #[serde(skip)]
    pub title_owed: bool,
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
            title_owed: false,
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
    /// Users this user blocked, as this device last heard (its own block, the relay's notices
    /// in the log, the relay's contact list at each catch-up). Their messages in the groups
    /// shared with them are processed and kept, but neither handed to the app nor shown in
    /// history while the block lasts.
    pub blocked: BTreeSet<UserId>,
}

/// The book as format 1 saved it (no `blocked`: filled in from the relay's contact list at
/// the next catch-up).
#[derive(Serialize, Deserialize)]
struct BookV1 {
    last_seq: u64,
    last_resort_uploaded: bool,
    convs: BTreeMap<ConvId, ConvRecord>,
    archive: BTreeMap<ConvId, Vec<StoredMessage>>,
}

impl From<BookV1> for Book {
    fn from(old: BookV1) -> Self {
        Self {
            last_seq: old.last_seq,
            last_resort_uploaded: old.last_resort_uploaded,
            convs: old.convs,
            archive: old.archive,
            blocked: BTreeSet::new(),
        }
    }
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

/// The saved file of format 1.
#[derive(Serialize, Deserialize)]
struct SavedV1 {
    format: u8,
    book: BookV1,
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
        let corrupt = |e: postcard::Error| StateError::corrupt(path, format!("conversations: {e}"));
        // The format is the first byte (postcard writes a u8 as itself).
        let (book, member) = match bytes.first() {
            Some(&FORMAT) => {
                let saved: Saved = postcard::from_bytes(&bytes).map_err(corrupt)?;
                (saved.book, saved.member)
            }
            Some(1) => {
                let saved: SavedV1 = postcard::from_bytes(&bytes).map_err(corrupt)?;
                debug_assert_eq!(saved.format, 1);
                (saved.book.into(), saved.member)
            }
            _ => return Err(StateError::corrupt(path, "an unknown conversations format").into()),
        };
        let member = Member::from_bytes(&member, device)
            .map_err(|e| StateError::corrupt(path, format!("MLS state: {e}")))?;
        Ok(Some((member, book)))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_file_of_format_1_is_read_with_no_blocks_and_written_again_as_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conversations");
        let device = DeviceKey::generate(&mut rand_core::OsRng);
        let member = Member::new(UserId([1; 32]), &device);
        let conv = ConvId([9; 16]);
        let mut record = ConvRecord::new(GroupKind::Group, 3);
        record.cursor = 7;
        let old = SavedV1 {
            format: 1,
            book: BookV1 {
                last_seq: 5,
                last_resort_uploaded: true,
                convs: [(conv, record)].into_iter().collect(),
                archive: BTreeMap::new(),
            },
            member: member.to_bytes(),
        };
        std::fs::write(&path, postcard::to_allocvec(&old).unwrap()).unwrap();

        let (member, mut book) = Saved::read(&path, &device).unwrap().unwrap();
        assert_eq!(book.last_seq, 5);
        assert_eq!(book.convs[&conv].cursor, 7);
        assert!(book.blocked.is_empty());

        book.blocked.insert(UserId([2; 32]));
        Saved::write(&path, &member, &book).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().first(), Some(&FORMAT));
        let (_, again) = Saved::read(&path, &device).unwrap().unwrap();
        assert_eq!(again.blocked, book.blocked);

        std::fs::write(&path, [FORMAT + 1, 0, 0]).unwrap();
        assert!(
            Saved::read(&path, &device).is_err(),
            "a format from the future"
        );
    }
}

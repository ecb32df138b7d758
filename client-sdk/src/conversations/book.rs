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

use crate::attachments::FileRef;
use crate::calls::CallRecord;
use crate::error::{ClientError, StateError};
use crate::files::{Access, write_atomic};

/// Version of the saved file (1: before [`Book::blocked`]; 2: messages were text only;
/// both read and converted).
const FORMAT: u8 = 3;

/// The start of a log event that archives a conversation message for this user's other
/// devices (see [`crate::conversations`]): a zero byte, then a label an app's own text would
/// not start with. Such events are not handed to the app (see [`is_archive`]).
pub const ARCHIVE_PREFIX: &[u8] = b"\0ferry/conversation-archive/v2\0";

/// What version 1 wrote (text messages only): still read.
const ARCHIVE_PREFIX_V1: &[u8] = b"\0ferry/conversation-archive/v1\0";

/// Whether a log event's plaintext archives a conversation message (of any version).
pub fn is_archive(plaintext: &[u8]) -> bool {
    plaintext.starts_with(ARCHIVE_PREFIX) || plaintext.starts_with(ARCHIVE_PREFIX_V1)
}

/// The log event archiving `message`.
pub(crate) fn archive_record(message: &StoredMessage) -> Vec<u8> {
    let mut record = ARCHIVE_PREFIX.to_vec();
    record.extend_from_slice(&postcard::to_allocvec(message).unwrap_or_default());
    record
}

/// The message an archive event holds; `None` if the plaintext is not one.
pub(crate) fn read_archive(plaintext: &[u8]) -> Option<StoredMessage> {
    if let Some(v1) = plaintext.strip_prefix(ARCHIVE_PREFIX_V1) {
        return postcard::from_bytes::<StoredMessageV1>(v1)
            .ok()
            .map(Into::into);
    }
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
    /// What it says.
    pub content: Content,
}

impl StoredMessage {
    /// The text of a text message; empty for other content.
    pub fn text(&self) -> &str {
        match &self.content {
            Content::Text(text) => text,
            Content::Call(_) | Content::File(_) => "",
        }
    }
}

/// What a message holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Text a person wrote.
    Text(String),
    /// How a call went (written by the caller's device when the call ends; see
    /// [`crate::calls`]).
    Call(CallRecord),
    /// A file: where its encrypted bytes are, and the key to open them (see
    /// [`crate::attachments`]).
    File(FileRef),
}

/// A message as formats 1 and 2 of the saved file, and version 1 archives, kept it.
#[derive(Clone, Serialize, Deserialize)]
struct StoredMessageV1 {
    conv: ConvId,
    conv_seq: u64,
    user: UserId,
    device: DeviceId,
    sent_at: u64,
    text: String,
}

impl From<StoredMessageV1> for StoredMessage {
    fn from(old: StoredMessageV1) -> Self {
        Self {
            conv: old.conv,
            conv_seq: old.conv_seq,
            user: old.user,
            device: old.device,
            sent_at: old.sent_at,
            content: Content::Text(old.text),
        }
    }
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
    /// How a call went (class `Content` for a missed call, which counts as unread,
    /// `Control` otherwise): written by the caller's device.
    Call(CallRecord),
    /// A file (class `Content`); the message refers to its blob at the relay.
    File(FileRef),
}

impl Body {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The attachments (blobs at the relay) the message refers to.
    pub fn attachments(&self) -> Vec<ferry_protocol::attachments::BlobId> {
        match self {
            Self::File(file) => vec![file.blob],
            Self::Text(_) | Self::Title(_) | Self::Call(_) => Vec::new(),
        }
    }

    /// `None` for a body this version does not know (skipped, not an error).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// One conversation of this device (`M`: the message type, older in older formats).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ConvRecordOf<M> {
    pub kind: GroupKind,
    /// The last `conv_seq` processed.
    pub cursor: u64,
    /// The epoch this device joined at (earlier application messages cannot be opened).
    pub joined_epoch: u64,
    /// Messages decrypted or sent, in `conv_seq` order.
    pub messages: Vec<M>,
    /// Its title, if one was given.
    pub title: Option<String>,
    /// A member proposed to leave: commit it after this page.
    #[serde(skip)]
    pub leave_proposed: bool,
    /// A device joined by itself and this one sends it the title: after this catch-up.
    #[serde(skip)]
    pub title_owed: bool,
}

/// One conversation of this device.
pub(crate) type ConvRecord = ConvRecordOf<StoredMessage>;

impl From<ConvRecordOf<StoredMessageV1>> for ConvRecord {
    fn from(old: ConvRecordOf<StoredMessageV1>) -> Self {
        Self {
            kind: old.kind,
            cursor: old.cursor,
            joined_epoch: old.joined_epoch,
            messages: old.messages.into_iter().map(Into::into).collect(),
            title: old.title,
            leave_proposed: false,
            title_owed: false,
        }
    }
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
/// the next catch-up; text messages only).
#[derive(Serialize, Deserialize)]
struct BookV1 {
    last_seq: u64,
    last_resort_uploaded: bool,
    convs: BTreeMap<ConvId, ConvRecordOf<StoredMessageV1>>,
    archive: BTreeMap<ConvId, Vec<StoredMessageV1>>,
}

/// The book as format 2 saved it (text messages only).
#[derive(Serialize, Deserialize)]
struct BookV2 {
    last_seq: u64,
    last_resort_uploaded: bool,
    convs: BTreeMap<ConvId, ConvRecordOf<StoredMessageV1>>,
    archive: BTreeMap<ConvId, Vec<StoredMessageV1>>,
    blocked: BTreeSet<UserId>,
}

impl From<BookV1> for BookV2 {
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

impl From<BookV2> for Book {
    fn from(old: BookV2) -> Self {
        let archive = old.archive.into_iter();
        Self {
            last_seq: old.last_seq,
            last_resort_uploaded: old.last_resort_uploaded,
            convs: old.convs.into_iter().map(|(c, r)| (c, r.into())).collect(),
            archive: archive
                .map(|(c, kept)| (c, kept.into_iter().map(Into::into).collect()))
                .collect(),
            blocked: old.blocked,
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

/// The saved file of an older format, with its book.
#[derive(Serialize, Deserialize)]
struct SavedOld<B> {
    format: u8,
    book: B,
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
            Some(2) => {
                let saved: SavedOld<BookV2> = postcard::from_bytes(&bytes).map_err(corrupt)?;
                (saved.book.into(), saved.member)
            }
            Some(1) => {
                let saved: SavedOld<BookV1> = postcard::from_bytes(&bytes).map_err(corrupt)?;
                (BookV2::from(saved.book).into(), saved.member)
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

    fn old_message(conv: ConvId, conv_seq: u64, text: &str) -> StoredMessageV1 {
        StoredMessageV1 {
            conv,
            conv_seq,
            user: UserId([3; 32]),
            device: DeviceId([4; 32]),
            sent_at: 1_700_000_000_000,
            text: text.into(),
        }
    }

    fn old_record(conv: ConvId) -> ConvRecordOf<StoredMessageV1> {
        ConvRecordOf {
            kind: GroupKind::Group,
            cursor: 7,
            joined_epoch: 3,
            messages: vec![old_message(conv, 7, "hello")],
            title: Some("team".into()),
            leave_proposed: false,
            title_owed: false,
        }
    }

    /// Reads what `old` wrote and checks what formats 1 and 2 kept came through as text.
    fn read_old<B: Serialize>(path: &Path, device: &DeviceKey, format: u8, book: B) -> Book {
        let member = Member::new(UserId([1; 32]), device);
        let old = SavedOld {
            format,
            book,
            member: member.to_bytes(),
        };
        std::fs::write(path, postcard::to_allocvec(&old).unwrap()).unwrap();
        let (_, book) = Saved::read(path, device).unwrap().unwrap();
        let conv = ConvId([9; 16]);
        assert_eq!(book.last_seq, 5);
        let record = &book.convs[&conv];
        assert_eq!((record.cursor, record.joined_epoch), (7, 3));
        assert_eq!(record.title.as_deref(), Some("team"));
        assert_eq!(record.messages[0].content, Content::Text("hello".into()));
        assert_eq!(book.archive[&conv][0].text(), "before");
        book
    }

    #[test]
    fn files_of_formats_1_and_2_are_read_and_written_again_as_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conversations");
        let device = DeviceKey::generate(&mut rand_core::OsRng);
        let conv = ConvId([9; 16]);
        let archive = || {
            [(conv, vec![old_message(conv, 2, "before")])]
                .into_iter()
                .collect()
        };

        let v1 = BookV1 {
            last_seq: 5,
            last_resort_uploaded: true,
            convs: [(conv, old_record(conv))].into_iter().collect(),
            archive: archive(),
        };
        let book = read_old(&path, &device, 1, v1);
        assert!(book.blocked.is_empty());

        let blocked: BTreeSet<UserId> = [UserId([2; 32])].into_iter().collect();
        let v2 = BookV2 {
            last_seq: 5,
            last_resort_uploaded: true,
            convs: [(conv, old_record(conv))].into_iter().collect(),
            archive: archive(),
            blocked: blocked.clone(),
        };
        let mut book = read_old(&path, &device, 2, v2);
        assert_eq!(book.blocked, blocked);

        // Written again as the current format, a call record included.
        let member = Member::new(UserId([1; 32]), &device);
        let record = CallRecord {
            call: crate::calls::CallId([5; 16]),
            video: false,
            outcome: crate::calls::CallOutcome::Missed,
        };
        let mut call = book.convs[&conv].messages[0].clone();
        call.conv_seq = 8;
        call.content = Content::Call(record);
        book.convs.get_mut(&conv).unwrap().keep(call.clone());
        Saved::write(&path, &member, &book).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().first(), Some(&FORMAT));
        let (_, again) = Saved::read(&path, &device).unwrap().unwrap();
        assert_eq!(
            again.convs[&conv].messages,
            [book.convs[&conv].messages[0].clone(), call]
        );
        assert_eq!(again.blocked, blocked);

        std::fs::write(&path, [FORMAT + 1, 0, 0]).unwrap();
        assert!(
            Saved::read(&path, &device).is_err(),
            "a format from the future"
        );
    }

    #[test]
    fn archives_of_version_1_are_read_as_text() {
        let conv = ConvId([9; 16]);
        let mut v1 = ARCHIVE_PREFIX_V1.to_vec();
        v1.extend_from_slice(&postcard::to_allocvec(&old_message(conv, 4, "old")).unwrap());
        assert!(is_archive(&v1));
        let message = read_archive(&v1).unwrap();
        assert_eq!((message.conv_seq, message.text()), (4, "old"));

        let current = archive_record(&message);
        assert!(is_archive(&current) && current.starts_with(ARCHIVE_PREFIX));
        assert_eq!(read_archive(&current), Some(message));
        assert!(!is_archive(b"\0ferry/conversation-archive/v3\0"));
    }
}

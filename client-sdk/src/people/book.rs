//! The contact book: what this device has verified about other users, kept in the state
//! folder (`people`, replaced atomically). It is this device's own trust: the relay's list
//! says who is a contact; the book says which device chain this device pinned for each and
//! which profile key it holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_protocol::people::{ProfileBody, ProfileKey};
use ferry_protocol::{LinkHash, UserId, codec};
use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::files::{self, Access};

/// File name of the book inside the state folder.
pub(crate) const BOOK_FILE: &str = "people";

/// What this device knows of one other user.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The user's device chain as this device last verified it: its length and the hash of
    /// its last link. Every later chain must extend it.
    pub pinned: Option<(u64, LinkHash)>,
    /// The handle this device found the user by, if it did.
    pub handle: Option<String>,
    /// The user's profile key, from its intro.
    pub profile_key: Option<ProfileKey>,
    /// The highest profile version opened, and that profile.
    pub profile_version: u64,
    pub profile: Option<ProfileBody>,
}

/// The book and its file.
#[derive(Debug)]
pub(crate) struct Book {
    path: PathBuf,
    pub entries: BTreeMap<UserId, Entry>,
    /// This user's own profile version last stored.
    pub own_profile_version: u64,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    entries: Vec<(UserId, Entry)>,
    own_profile_version: u64,
}

impl codec::Wire for OnDisk {}

/// Largest book file read back.
const MAX_BOOK_BYTES: usize = 64 * 1024 * 1024;

impl Book {
    /// The book of the state folder `dir` (empty if it has none yet).
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(BOOK_FILE);
        let (entries, own_profile_version) = match std::fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk =
                    codec::decode_with_limit(&bytes, MAX_BOOK_BYTES).map_err(|e| {
                        StateError::Corrupt {
                            path: path.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                (disk.entries.into_iter().collect(), disk.own_profile_version)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), 0),
            Err(e) => {
                return Err(StateError::Io {
                    path,
                    source: std::sync::Arc::new(e),
                });
            }
        };
        Ok(Self {
            path,
            entries,
            own_profile_version,
        })
    }

    /// Writes the book (atomically: a crash leaves the old or the new one).
    pub fn save(&self) -> Result<(), StateError> {
        let disk = OnDisk {
            entries: self
                .entries
                .iter()
                .map(|(user, entry)| (*user, entry.clone()))
                .collect(),
            own_profile_version: self.own_profile_version,
        };
        files::write_atomic(&self.path, &codec::encode(&disk), Access::Private)
    }

    /// The entry of `user`, made if there is none.
    pub fn entry(&mut self, user: UserId) -> &mut Entry {
        self.entries.entry(user).or_default()
    }
}

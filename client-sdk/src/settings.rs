//! Settings of the user that all its devices follow: whether conversation history is
//! archived for devices that join later (see [`crate::conversations`]), and the names the
//! user gave its devices after pairing them.
//!
//! ```text
//!  device A: set ─▶ applied here, saved (`settings` in the state folder)
//!            ─▶ a record in the user's own log (sealed with the data key, like every event)
//!  device B: the record read from the log ─▶ applied if it wins ─▶ ClientEvent::Setting
//! ```
//!
//! Each record carries a version: one more than the highest this device knew for that
//! setting. Of two records the higher version wins, and of two with the same version (set
//! on two devices at once) the one of the higher device id, so every device ends with the
//! same value whatever order it learns them in, its own records included (which the client
//! does not read back from the log unless [`Options::own_events`](crate::Options::own_events)
//! asks for them). The records are hidden from the app, like the conversation archive.
//!
//! A device paired later learns the settings by replaying the log; one the log no longer
//! holds (retention) is not known there, and that device uses its default
//! ([`Options::archive_history`](crate::Options::archive_history)) until it is set again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ferry_protocol::DeviceId;
use serde::{Deserialize, Serialize};

use crate::error::ClientError;
use crate::files::{Access, write_atomic};

/// The start of a log event that records a setting of the user: a zero byte, then a label
/// an app's own text would not start with. Such events are not handed to the app.
pub const SETTINGS_PREFIX: &[u8] = b"\0ferry/user-setting/v1\0";

/// File name of this device's copy of the settings inside the state folder.
const FILE: &str = "settings";
/// Version of that file (1: before device names).
const FORMAT: u8 = 2;

/// A setting of the user, as [`ClientEvent::Setting`](crate::ClientEvent::Setting) reports
/// it when it changes (on any device of the user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Setting {
    /// Whether the user's devices archive conversation messages in its log, so a device
    /// paired later reads the history (see
    /// [`ClientHandle::set_archive_history`](crate::ClientHandle::set_archive_history)).
    ArchiveHistory(bool),
    /// The name the user gave one of its devices (see
    /// [`ClientHandle::rename_device`](crate::ClientHandle::rename_device)), shown instead of
    /// the name it was paired with (which the device chain keeps, signed, for good).
    DeviceName {
        /// The device.
        device: DeviceId,
        /// Its name now.
        name: String,
    },
}

/// One record of the log. Changing it changes every stored record: append variants to
/// [`Setting`], never reorder them.
#[derive(Serialize, Deserialize)]
struct Record {
    version: u64,
    setting: Setting,
}

/// A value with what orders it against others: its version, then the device that set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamped<T> {
    version: u64,
    device: DeviceId,
    value: T,
}

impl<T> Stamped<T> {
    fn beats(&self, other: Option<&Self>) -> bool {
        other.is_none_or(|o| (self.version, self.device) > (o.version, o.device))
    }
}

/// What this device knows of each setting (`None`: never set).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Known {
    archive_history: Option<Stamped<bool>>,
    device_names: BTreeMap<DeviceId, Stamped<String>>,
}

/// The saved file.
#[derive(Serialize, Deserialize)]
struct Saved {
    format: u8,
    known: Known,
}

/// The saved file of format 1.
#[derive(Deserialize)]
struct SavedV1 {
    format: u8,
    archive_history: Option<Stamped<bool>>,
}

/// The settings in a saved file of any format this version reads.
fn decode_saved(bytes: &[u8]) -> Result<Known, String> {
    match bytes.first() {
        Some(1) => postcard::from_bytes::<SavedV1>(bytes)
            .map(|old| {
                debug_assert_eq!(old.format, 1);
                Known {
                    archive_history: old.archive_history,
                    device_names: BTreeMap::new(),
                }
            })
            .map_err(|e| e.to_string()),
        Some(&FORMAT) => postcard::from_bytes::<Saved>(bytes)
            .map(|saved| saved.known)
            .map_err(|e| e.to_string()),
        _ => Err("settings of an unknown format".to_owned()),
    }
}

/// This device's copy of the user's settings, and the changes waiting for the app.
#[derive(Debug)]
pub(crate) struct Settings {
    path: PathBuf,
    device: DeviceId,
    known: Mutex<Known>,
    waiting: Mutex<std::collections::VecDeque<Setting>>,
}

impl Settings {
    /// The settings kept in the state folder `dir` (none yet if it has no file). A file
    /// that cannot be read is logged and taken as empty (the defaults apply until a setting
    /// is read or made again, and the file is replaced then): a setting is a preference, not
    /// worth stopping the client for.
    pub fn open(dir: &Path, device: DeviceId) -> Self {
        let path = dir.join(FILE);
        let known = match std::fs::read(&path) {
            Ok(bytes) => match decode_saved(&bytes) {
                Ok(known) => known,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "the settings cannot be read; ignored");
                    Known::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Known::default(),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the settings cannot be read; ignored");
                Known::default()
            }
        };
        Self {
            path,
            device,
            known: Mutex::new(known),
            waiting: Mutex::default(),
        }
    }

    /// Whether the user archives conversation history, if it ever said.
    pub fn archive_history(&self) -> Option<bool> {
        self.lock().archive_history.as_ref().map(|s| s.value)
    }

    /// The name the user gave `device`, if it renamed it.
    pub fn device_name(&self, device: &DeviceId) -> Option<String> {
        self.lock()
            .device_names
            .get(device)
            .map(|s| s.value.clone())
    }

    /// The next change waiting for the app.
    pub fn take_waiting(&self) -> Option<Setting> {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// Sets `setting` on this device (saved, and a change for the app when it is one);
    /// returns the log record that carries it to the user's other devices.
    pub fn set(&self, setting: Setting) -> Result<Vec<u8>, ClientError> {
        let version = {
            let known = self.lock();
            match &setting {
                Setting::ArchiveHistory(_) => {
                    known.archive_history.as_ref().map_or(0, |s| s.version)
                }
                Setting::DeviceName { device, .. } => {
                    known.device_names.get(device).map_or(0, |s| s.version)
                }
            }
        }
        .saturating_add(1);
        self.apply(self.device, version, setting.clone())?;
        let record = Record { version, setting };
        let mut bytes = SETTINGS_PREFIX.to_vec();
        bytes.extend_from_slice(
            &postcard::to_allocvec(&record)
                .map_err(|e| ClientError::Protocol(format!("cannot encode a setting: {e}")))?,
        );
        Ok(bytes)
    }

    /// A log event of this user's: if it records a setting, applies it (when it wins over
    /// what this device knows). Returns whether it was a settings record (one this version
    /// cannot read included: it is still not the app's).
    pub fn on_log_event(&self, device: DeviceId, plaintext: &[u8]) -> Result<bool, ClientError> {
        let Some(body) = plaintext.strip_prefix(SETTINGS_PREFIX) else {
            return Ok(false);
        };
        match postcard::from_bytes::<Record>(body) {
            Ok(record) => self.apply(device, record.version, record.setting)?,
            Err(error) => tracing::debug!(%error, "a setting this version does not know; skipped"),
        }
        Ok(true)
    }

    /// Takes `setting` from `device` at `version` if it wins; a change of value is queued
    /// for the app.
    fn apply(&self, device: DeviceId, version: u64, setting: Setting) -> Result<(), ClientError> {
        let mut known = self.lock();
        let changed = match setting {
            Setting::ArchiveHistory(value) => {
                let new = Stamped {
                    version,
                    device,
                    value,
                };
                if !new.beats(known.archive_history.as_ref()) {
                    return Ok(());
                }
                let was = known.archive_history.replace(new).map(|s| s.value);
                (was != Some(value)).then_some(Setting::ArchiveHistory(value))
            }
            Setting::DeviceName {
                device: named,
                name,
            } => {
                let new = Stamped {
                    version,
                    device,
                    value: name.clone(),
                };
                if !new.beats(known.device_names.get(&named)) {
                    return Ok(());
                }
                let was = known.device_names.insert(named, new).map(|s| s.value);
                (was.as_ref() != Some(&name)).then_some(Setting::DeviceName {
                    device: named,
                    name,
                })
            }
        };
        let saved = Saved {
            format: FORMAT,
            known: known.clone(),
        };
        let bytes = postcard::to_allocvec(&saved)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the settings: {e}")))?;
        write_atomic(&self.path, &bytes, Access::Private)?;
        drop(known);
        if let Some(change) = changed {
            self.waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(change);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn device(n: u8) -> DeviceId {
        ferry_protocol::DeviceKey::from_secret_bytes(&[n; 32]).id()
    }

    #[test]
    fn every_device_ends_with_the_same_value_whatever_order_it_reads_the_records_in() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (device(1), device(2));
        let a = Settings::open(dir.path(), one);
        let b_dir = dir.path().join("b");
        std::fs::create_dir(&b_dir).unwrap();
        let b = Settings::open(&b_dir, two);
        assert_eq!(a.archive_history(), None);

        // Both set it at once, neither having seen the other's: the same version.
        let from_a = a.set(Setting::ArchiveHistory(false)).unwrap();
        let from_b = b.set(Setting::ArchiveHistory(true)).unwrap();
        assert_eq!(a.take_waiting(), Some(Setting::ArchiveHistory(false)));
        assert!(a.on_log_event(two, &from_b).unwrap());
        assert!(b.on_log_event(one, &from_a).unwrap());
        // The same version: the higher device id's (B set true) wins everywhere.
        let winner = two > one;
        assert_eq!(a.archive_history(), Some(winner));
        assert_eq!(b.archive_history(), Some(winner));

        // A later change (a higher version) wins on both, from either device.
        let later = a.set(Setting::ArchiveHistory(!winner)).unwrap();
        assert!(b.on_log_event(one, &later).unwrap());
        assert_eq!(b.archive_history(), Some(!winner));
        // An old record read again changes nothing.
        assert!(b.on_log_event(one, &from_a).unwrap());
        assert_eq!(b.archive_history(), Some(!winner));

        // Kept across a restart.
        let again = Settings::open(&b_dir, two);
        assert_eq!(again.archive_history(), Some(!winner));

        // Not a setting; a setting this version cannot read is still not the app's.
        assert!(!b.on_log_event(one, b"hello").unwrap());
        let mut unknown = SETTINGS_PREFIX.to_vec();
        unknown.extend_from_slice(&[1, 200]);
        assert!(b.on_log_event(one, &unknown).unwrap());
        assert_eq!(b.archive_history(), Some(!winner));
    }

    #[test]
    fn device_names_are_per_device_and_the_latest_rename_wins_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (device(1), device(2));
        let a = Settings::open(dir.path(), one);
        let b_dir = dir.path().join("b");
        std::fs::create_dir(&b_dir).unwrap();
        let b = Settings::open(&b_dir, two);

        let rename = |device, name: &str| Setting::DeviceName {
            device,
            name: name.to_owned(),
        };
        let first = a.set(rename(one, "laptop")).unwrap();
        let second = a.set(rename(one, "work laptop")).unwrap();
        let other = b.set(rename(two, "phone")).unwrap();
        // B reads A's renames out of order: the later one stays.
        assert!(b.on_log_event(one, &second).unwrap());
        assert!(b.on_log_event(one, &first).unwrap());
        assert!(a.on_log_event(two, &other).unwrap());
        for settings in [&a, &b] {
            assert_eq!(settings.device_name(&one).as_deref(), Some("work laptop"));
            assert_eq!(settings.device_name(&two).as_deref(), Some("phone"));
        }
        assert_eq!(b.take_waiting(), Some(rename(two, "phone")));
        assert_eq!(b.take_waiting(), Some(rename(one, "work laptop")));
        assert_eq!(b.take_waiting(), None);
        // Kept across a restart.
        let again = Settings::open(&b_dir, two);
        assert_eq!(again.device_name(&one).as_deref(), Some("work laptop"));
    }

    #[test]
    fn a_settings_file_of_format_1_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        #[derive(Serialize)]
        struct V1 {
            format: u8,
            archive_history: Option<Stamped<bool>>,
        }
        let old = V1 {
            format: 1,
            archive_history: Some(Stamped {
                version: 3,
                device: device(1),
                value: false,
            }),
        };
        std::fs::write(dir.path().join(FILE), postcard::to_allocvec(&old).unwrap()).unwrap();
        let settings = Settings::open(dir.path(), device(2));
        assert_eq!(settings.archive_history(), Some(false));
        assert_eq!(settings.device_name(&device(1)), None);
    }
}

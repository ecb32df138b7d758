//! The state folder: a device's identity, its pinned relay, its cursor and its outbox.
//!
//! | file | what | written |
//! | --- | --- | --- |
//! | `user.key`, `device.key`, `data.key` | the secrets, 64 hex digits, mode 0600 | at creation |
//! | `certificate` | the user key's certificate for this device (hex of its postcard encoding) | at creation |
//! | `relay` | the relay URL and the pinned relay key, one per line | at creation |
//! | `cursor` | the highest stream sequence the app has received | as the app reads |
//! | `seen` | per device of the user, the highest device sequence read and its stream sequence, to tell a replayed event (see `driver/checks.rs`); absent in folders from before it | as the app reads |
//! | `device_seq`, `outbox` | the next device sequence and the journal of unacknowledged events ([`crate::outbox`]) | as the app appends |
//! | `lock` | held (`flock`) while a client uses the folder | — |
//! | `format` | the format marker, written last, so a half-created folder is not mistaken for one | at creation |
//!
//! Every file but the journal is replaced atomically (temporary file, `fsync`, rename), so a
//! crash never leaves a half-written file. The folder is created with mode 0700.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_protocol::codec::{self, Wire};
use ferry_protocol::seal::DataKey;
use ferry_protocol::{DeviceCertificate, DeviceId, DeviceKey, RelayId, UserId, UserKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use crate::driver::checks::{Marks, decode_marks, encode_marks};
use crate::error::StateError;
use crate::files::{self, Access};
use crate::outbox::Outbox;

const FORMAT_FILE: &str = "format";
const FORMAT: &str = "ferry-client-state 1";
const USER_KEY_FILE: &str = "user.key";
const DEVICE_KEY_FILE: &str = "device.key";
const DATA_KEY_FILE: &str = "data.key";
const CERTIFICATE_FILE: &str = "certificate";
const RELAY_FILE: &str = "relay";
const CURSOR_FILE: &str = "cursor";
const SEEN_FILE: &str = "seen";

/// A device's persistent state, held open (and locked) in its folder.
///
/// Create it once per device with [`create`](Self::create) (a new user) or
/// [`from_parts`](Self::from_parts) (a device joining an existing user, as pairing does),
/// then [`open`](Self::open) it on every start and hand it to [`Client`](crate::Client).
/// Only one `ClientState` may have a folder open at a time, in any process; the lock is
/// released when it is dropped.
#[derive(Debug)]
pub struct ClientState {
    dir: PathBuf,
    relay_url: String,
    relay_key: RelayId,
    keys: Arc<Keys>,
    cursor: u64,
    /// What [`crate::driver`] checks replays against.
    seen: Marks,
    pub(crate) outbox: Outbox,
    _lock: File,
}

/// The secrets and the certificate; never written anywhere but the state folder.
#[derive(Debug)]
pub(crate) struct Keys {
    pub user: UserKey,
    pub device: DeviceKey,
    pub data: DataKey,
    pub certificate: DeviceCertificate,
}

impl ClientState {
    /// Makes a new user on this device: a user key, a device key, the certificate linking
    /// them and a data key, all drawn from the operating system's random number generator,
    /// and writes them to `dir` (created if needed) with the relay to talk to.
    ///
    /// `relay_url` is `ws://HOST:PORT/ws`; `relay_key` is the key the relay printed at its
    /// first start, pinned from now on.
    pub fn create(
        dir: impl AsRef<Path>,
        relay_url: &str,
        relay_key: RelayId,
        device_name: &str,
    ) -> Result<Self, StateError> {
        let user = UserKey::generate(&mut OsRng);
        let device = DeviceKey::generate(&mut OsRng);
        let data = DataKey::generate(&mut OsRng);
        let certificate = DeviceCertificate::issue(&user, device.id(), device_name, unix_now())?;
        Self::from_parts(dir, relay_url, relay_key, user, device, certificate, data)
    }

    /// Writes a state for a device of an existing user, from keys it was given (by pairing)
    /// and a certificate the user key issued for `device_key`.
    pub fn from_parts(
        dir: impl AsRef<Path>,
        relay_url: &str,
        relay_key: RelayId,
        user_key: UserKey,
        device_key: DeviceKey,
        certificate: DeviceCertificate,
        data_key: DataKey,
    ) -> Result<Self, StateError> {
        check_relay_url(relay_url)?;
        certificate.verify()?;
        if certificate.user != user_key.id() || certificate.device != device_key.id() {
            return Err(StateError::CertificateMismatch);
        }
        let dir = dir.as_ref().to_owned();
        files::create_private_dir(&dir)?;
        let lock = files::lock_dir(&dir)?;
        if dir.join(FORMAT_FILE).exists() {
            return Err(StateError::AlreadyExists(dir));
        }
        files::write_secret(&dir.join(USER_KEY_FILE), &user_key.secret_bytes())?;
        files::write_secret(&dir.join(DEVICE_KEY_FILE), &device_key.secret_bytes())?;
        files::write_secret(&dir.join(DATA_KEY_FILE), data_key.bytes())?;
        let encoded = hex::encode(codec::encode(&certificate)) + "\n";
        files::write_atomic(
            &dir.join(CERTIFICATE_FILE),
            encoded.as_bytes(),
            Access::Normal,
        )?;
        let relay = format!("{relay_url}\n{}\n", relay_key.to_hex());
        files::write_atomic(&dir.join(RELAY_FILE), relay.as_bytes(), Access::Normal)?;
        files::write_u64(&dir.join(CURSOR_FILE), 0)?;
        files::write_atomic(&dir.join(SEEN_FILE), b"", Access::Normal)?;
        Outbox::create(&dir)?;
        // Last: only a folder with every file written counts as a state.
        files::write_atomic(
            &dir.join(FORMAT_FILE),
            format!("{FORMAT}\n").as_bytes(),
            Access::Normal,
        )?;
        Self::load(dir, lock)
    }

    /// Opens the state in `dir` and locks it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StateError> {
        let dir = dir.as_ref().to_owned();
        if !dir.join(FORMAT_FILE).exists() {
            return Err(StateError::NotFound(dir));
        }
        // The folder holds keys: owner only, whatever mode it was left with.
        files::make_dir_private(&dir)?;
        let lock = files::lock_dir(&dir)?;
        let format_path = dir.join(FORMAT_FILE);
        if files::read_text(&format_path)?.as_str() != FORMAT {
            return Err(StateError::corrupt(
                format_path,
                format!("unknown format (this client reads {FORMAT:?})"),
            ));
        }
        Self::load(dir, lock)
    }

    /// Fails with [`StateError::AlreadyExists`] if `dir` holds a state: checked before
    /// pairing, so a code is not burned for a folder that cannot take the new device.
    pub(crate) fn check_vacant(dir: &Path) -> Result<(), StateError> {
        if dir.join(FORMAT_FILE).exists() {
            return Err(StateError::AlreadyExists(dir.to_owned()));
        }
        Ok(())
    }

    fn load(dir: PathBuf, lock: File) -> Result<Self, StateError> {
        let user = UserKey::from_secret_bytes(&*files::read_hex32(&dir.join(USER_KEY_FILE))?);
        let device = DeviceKey::from_secret_bytes(&*files::read_hex32(&dir.join(DEVICE_KEY_FILE))?);
        let data = DataKey::from_bytes(&*files::read_hex32(&dir.join(DATA_KEY_FILE))?);

        let certificate_path = dir.join(CERTIFICATE_FILE);
        let certificate = hex::decode(files::read_text(&certificate_path)?.as_bytes())
            .ok()
            .and_then(|bytes| codec::decode::<StoredCertificate>(&bytes).ok())
            .ok_or_else(|| StateError::corrupt(&certificate_path, "not a device certificate"))?
            .0;
        let matches = certificate.verify().is_ok()
            && certificate.user == user.id()
            && certificate.device == device.id();
        if !matches {
            return Err(StateError::corrupt(
                &certificate_path,
                "the certificate does not verify for these keys",
            ));
        }

        let relay_path = dir.join(RELAY_FILE);
        let relay = files::read_text(&relay_path)?;
        let mut lines = relay.lines();
        let (Some(relay_url), Some(relay_key), None) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(StateError::corrupt(
                &relay_path,
                "expected the relay URL and key",
            ));
        };
        let relay_key = RelayId::from_hex(relay_key)
            .map_err(|_| StateError::corrupt(&relay_path, "the relay key is not 64 hex digits"))?;
        check_relay_url(relay_url)?;

        let cursor = files::read_u64(&dir.join(CURSOR_FILE))?;
        let seen_path = dir.join(SEEN_FILE);
        let seen = match std::fs::read_to_string(&seen_path) {
            Ok(text) => decode_marks(&text).ok_or_else(|| {
                StateError::corrupt(&seen_path, "expected DEVICE DEVICE_SEQ SEQ lines")
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Marks::new(),
            Err(e) => return Err(StateError::io(&seen_path, e)),
        };
        let outbox = Outbox::open(&dir)?;
        Ok(Self {
            relay_url: relay_url.to_owned(),
            relay_key,
            keys: Arc::new(Keys {
                user,
                device,
                data,
                certificate,
            }),
            cursor,
            seen,
            outbox,
            dir,
            _lock: lock,
        })
    }

    /// The folder the state lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The relay's WebSocket URL.
    pub fn relay_url(&self) -> &str {
        &self.relay_url
    }

    /// The relay key pinned for this state.
    pub fn relay_key(&self) -> RelayId {
        self.relay_key
    }

    /// The user this device acts for.
    pub fn user_id(&self) -> UserId {
        self.keys.certificate.user
    }

    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.keys.device.id()
    }

    /// This device's name, as its certificate says.
    pub fn device_name(&self) -> &str {
        &self.keys.certificate.name
    }

    /// The user key's certificate for this device.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.keys.certificate
    }

    /// The user key: signs certificates for new devices and revocations. Pairing hands it
    /// to a new device end to end; it never goes to the relay.
    pub fn user_key(&self) -> &UserKey {
        &self.keys.user
    }

    /// The data key that seals event payloads. Pairing hands it to a new device end to
    /// end; it never goes to the relay.
    pub fn data_key(&self) -> &DataKey {
        &self.keys.data
    }

    /// The highest stream sequence the app has received (0: none yet).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Events written to the outbox and not yet acknowledged by the relay.
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// The device sequence the next appended event will get.
    pub fn next_device_seq(&self) -> u64 {
        self.outbox.next_seq()
    }

    /// After [`ClientError::ResyncRequired`](crate::ClientError::ResyncRequired): the next
    /// connection replays the log from `earliest`. The app first discards whatever it
    /// derived from the log.
    ///
    /// The relay asks for it when the events after this device's cursor are gone (retention),
    /// and also when the cursor is *ahead* of the relay's log (its database was restored from
    /// a backup, or failed over to a replica that lost its last commits): then the cursor
    /// moves back, since new events will reuse sequences this device has already seen.
    pub fn resync(&mut self, earliest: u64) -> Result<(), StateError> {
        let cursor = earliest.saturating_sub(1);
        files::write_u64(&self.dir.join(CURSOR_FILE), cursor)?;
        self.cursor = cursor;
        Ok(())
    }

    /// Moves the cursor forward (never back) and writes it.
    pub(crate) fn save_cursor(&mut self, seq: u64) -> Result<(), StateError> {
        if seq > self.cursor {
            files::write_u64(&self.dir.join(CURSOR_FILE), seq)?;
            self.cursor = seq;
        }
        Ok(())
    }

    /// The highest device sequence read from each device, and where.
    pub(crate) fn seen(&self) -> &Marks {
        &self.seen
    }

    /// Replaces the `seen` file.
    pub(crate) fn save_seen(&mut self, seen: Marks) -> Result<(), StateError> {
        files::write_atomic(
            &self.dir.join(SEEN_FILE),
            encode_marks(&seen).as_bytes(),
            Access::Normal,
        )?;
        self.seen = seen;
        Ok(())
    }

    pub(crate) fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys)
    }
}

/// A certificate as stored: the protocol's own encoding.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct StoredCertificate(DeviceCertificate);

// The name's length limit is checked by `DeviceCertificate::verify` right after decoding.
impl Wire for StoredCertificate {}

pub(crate) fn check_relay_url(url: &str) -> Result<(), StateError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or_default();
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(StateError::InvalidRelayUrl(url.to_owned()));
    }
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const URL: &str = "ws://127.0.0.1:7070/ws";

    #[test]
    fn create_then_open_round_trips_and_keeps_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let relay = RelayId([5; 32]);
        let created = ClientState::create(&path, URL, relay, "laptop").unwrap();
        let (user, device) = (created.user_id(), created.device_id());
        let data = *created.data_key().bytes();
        // Locked while open, here or in another process.
        assert!(matches!(
            ClientState::open(&path),
            Err(StateError::Locked(_))
        ));
        assert!(matches!(
            ClientState::create(&path, URL, relay, "again"),
            Err(StateError::Locked(_))
        ));
        drop(created);

        let state = ClientState::open(&path).unwrap();
        assert_eq!((state.user_id(), state.device_id()), (user, device));
        assert_eq!(state.user_key().id(), user);
        assert_eq!(state.data_key().bytes(), &data);
        assert_eq!((state.relay_url(), state.relay_key()), (URL, relay));
        assert_eq!(state.device_name(), "laptop");
        assert_eq!(
            (state.cursor(), state.pending(), state.next_device_seq()),
            (0, 0, 1)
        );
        drop(state);
        assert!(matches!(
            ClientState::create(&path, URL, relay, "again"),
            Err(StateError::AlreadyExists(_))
        ));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [USER_KEY_FILE, DEVICE_KEY_FILE, DATA_KEY_FILE] {
                let mode = std::fs::metadata(path.join(file))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{file}");
            }
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[cfg(unix)]
    #[test]
    fn opening_makes_a_folder_that_was_opened_up_private_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        drop(ClientState::create(&path, URL, RelayId([5; 32]), "laptop").unwrap());
        for loose in [0o755, 0o750, 0o777, 0o711] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
            drop(ClientState::open(&path).unwrap());
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o700, "was {loose:o}");
        }
        // A state written into a folder that exists already, with a loose mode.
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(ClientState::create(&existing, URL, RelayId([5; 32]), "phone").unwrap());
        let mode = std::fs::metadata(&existing).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::create(dir.path(), URL, RelayId([5; 32]), "x").unwrap();
        let shown = format!("{state:?}");
        for secret in [
            hex::encode(*state.user_key().secret_bytes()),
            hex::encode(state.data_key().bytes()),
            hex::encode(*state.keys.device.secret_bytes()),
        ] {
            assert!(!shown.contains(&secret));
            assert!(!shown.contains(&secret[..16]));
        }
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn bad_input_and_damaged_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for url in [
            "http://x/ws",
            "ws://",
            "ws:///ws",
            "ws://a b/ws",
            "wss",
            "wss://",
            "wss:///ws",
            "https://x/ws",
        ] {
            assert!(
                matches!(
                    ClientState::create(dir.path().join("u"), url, RelayId([5; 32]), "x"),
                    Err(StateError::InvalidRelayUrl(_))
                ),
                "{url}"
            );
        }
        assert!(matches!(
            ClientState::open(dir.path().join("missing")),
            Err(StateError::NotFound(_))
        ));

        // A certificate for another device key.
        let user = UserKey::generate(&mut OsRng);
        let device = DeviceKey::generate(&mut OsRng);
        let other = DeviceKey::generate(&mut OsRng);
        let certificate = DeviceCertificate::issue(&user, other.id(), "x", 1).unwrap();
        let data = DataKey::generate(&mut OsRng);
        assert!(matches!(
            ClientState::from_parts(
                dir.path().join("p"),
                URL,
                RelayId([5; 32]),
                user,
                device,
                certificate,
                data
            ),
            Err(StateError::CertificateMismatch)
        ));

        let path = dir.path().join("s");
        drop(ClientState::create(&path, URL, RelayId([5; 32]), "x").unwrap());
        std::fs::write(path.join(DATA_KEY_FILE), "nothex").unwrap();
        assert!(matches!(
            ClientState::open(&path),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_cursor_only_moves_forward_and_resync_sets_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ClientState::create(dir.path(), URL, RelayId([5; 32]), "x").unwrap();
        state.save_cursor(10).unwrap();
        state.save_cursor(4).unwrap();
        assert_eq!(state.cursor(), 10);
        state.resync(100).unwrap();
        drop(state);
        let mut state = ClientState::open(dir.path()).unwrap();
        assert_eq!(state.cursor(), 99);
        // A relay whose log went back in time (restored database) asks for a resync from
        // below the cursor: the cursor moves back.
        state.resync(6).unwrap();
        drop(state);
        assert_eq!(ClientState::open(dir.path()).unwrap().cursor(), 5);
    }
}

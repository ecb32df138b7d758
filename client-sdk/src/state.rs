//! The state folder: a device's identity, its pinned relay, its verified device chain, its
//! cursor and its outbox.
//!
//! | file | what | written |
//! | --- | --- | --- |
//! | `device.key`, `exchange.key` | the device's Ed25519 key and X25519 exchange secret, 64 hex digits, mode 0600 | at creation |
//! | `epochs` | every data-key epoch's key this device holds, `EPOCH HEX` per line, mode 0600 | at creation, and when a revocation or rotation seals a new epoch to this device |
//! | `user` | the user id (public) the chain is pinned to | at creation |
//! | `chain` | the user's device chain as verified, one link per line (hex of its postcard encoding); re-verified from link 1 on every open | at creation, and as the chain grows |
//! | `relay` | the relay URL and the pinned relay key, one per line | at creation |
//! | `cursor` | the highest stream sequence the app has received | as the app reads |
//! | `seen` | per device of the user, the highest device sequence read and its stream sequence, to tell a replayed event (see `driver/checks.rs`) | as the app reads |
//! | `people` | the contact book: per other user, the device chain pinned (length and last link hash), the handle it was found by, its profile key and last profile; this user's profile version ([`crate::people`]) | as contacts change |
//! | `conversations` | the MLS state of each group this device is in, with its book (cursors, messages decrypted, the archive read from the log, the user's blocks), mode 0600 ([`crate::conversations`]) | after every change |
//! | `settings` | the user's settings as this device last heard them, each with its version and the device that set it ([`crate::settings`]) | when a setting changes |
//! | `device_seq`, `outbox` | the next device sequence and the journal of unacknowledged events ([`crate::outbox`]) | as the app appends |
//! | `lock` | held (`flock`) while a client uses the folder | — |
//! | `format` | the format marker, written last, so a half-created folder is not mistaken for one | at creation |
//!
//! No file holds the user key: it exists only while the user types the recovery key (or
//! during `ferry init`, which shows the recovery key once and forgets it).
//!
//! Every file but the journal is replaced atomically (temporary file, `fsync`, rename), so a
//! crash never leaves a half-written file. The folder is created with mode 0700.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use ferry_protocol::codec;
use ferry_protocol::epoch::ExchangeSecret;
use ferry_protocol::seal::DataKey;
use ferry_protocol::{DeviceId, DeviceKey, Link, RelayId, UserId};
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::driver::checks::{Marks, decode_marks, encode_marks};
use crate::error::StateError;
use crate::files::{self, Access};
use crate::outbox::Outbox;
use crate::people::Book;
use crate::trust::Trust;

const FORMAT_FILE: &str = "format";
const FORMAT: &str = "ferry-client-state 2";
/// The format of folders from before the device chain (they held the user key).
const FORMAT_CERTIFICATES: &str = "ferry-client-state 1";
const DEVICE_KEY_FILE: &str = "device.key";
const EXCHANGE_KEY_FILE: &str = "exchange.key";
const EPOCHS_FILE: &str = "epochs";
const USER_FILE: &str = "user";
const CHAIN_FILE: &str = "chain";
const RELAY_FILE: &str = "relay";
const CURSOR_FILE: &str = "cursor";
const SEEN_FILE: &str = "seen";

/// A device's own secrets: its signing key and its X25519 exchange secret (to which new
/// data-key epochs are sealed).
#[derive(Debug)]
pub struct DeviceSecrets {
    /// The device's Ed25519 key; its public half is the device id.
    pub device: DeviceKey,
    /// The device's X25519 exchange secret; its public half is in the chain's `Admit` link.
    pub exchange: ExchangeSecret,
}

impl DeviceSecrets {
    /// New secrets from the operating system's random number generator.
    pub fn generate() -> Self {
        Self {
            device: DeviceKey::generate(&mut OsRng),
            exchange: ExchangeSecret::generate(&mut OsRng),
        }
    }
}

/// A device's persistent state, held open (and locked) in its folder.
///
/// Made once per device by [`account::create`](crate::account::create) (a new user),
/// [`pairing::join`](crate::pairing::join) (a device joining a user) or
/// [`account::recover`](crate::account::recover) (the recovery key typed on a new device),
/// then [`open`](Self::open)ed on every start and handed to [`Client`](crate::Client).
/// Only one `ClientState` may have a folder open at a time, in any process; the lock is
/// released when it is dropped.
#[derive(Debug)]
pub struct ClientState {
    dir: PathBuf,
    relay_url: String,
    relay_key: RelayId,
    keys: Arc<Keys>,
    trust: Arc<RwLock<Trust>>,
    cursor: u64,
    /// What [`crate::driver`] checks replays against.
    seen: Marks,
    pub(crate) outbox: Outbox,
    /// What this device verified about other users (`people`).
    book: Arc<std::sync::Mutex<Book>>,
    _lock: File,
}

/// The device's secrets and the user it acts for; never written anywhere but the state
/// folder.
#[derive(Debug)]
pub(crate) struct Keys {
    pub user: UserId,
    pub device: DeviceKey,
    pub exchange: ExchangeSecret,
}

impl ClientState {
    /// Writes a state for a device of `user`, from its secrets, the epoch keys it holds and
    /// the user's device chain (`links`, from link 1), which must verify for `user` and
    /// admit this device with its exchange key.
    ///
    /// The low-level constructor behind `account::create`, `pairing::join` and
    /// `account::recover`; an app that moves keys between devices by its own means uses it
    /// too. `relay_url` is `ws://HOST:PORT/ws` (or `wss://`); `relay_key` is pinned from now
    /// on.
    pub fn from_parts(
        dir: impl AsRef<Path>,
        relay_url: &str,
        relay_key: RelayId,
        user: UserId,
        secrets: DeviceSecrets,
        epochs: Vec<(u32, DataKey)>,
        links: &[Link],
    ) -> Result<Self, StateError> {
        check_relay_url(relay_url)?;
        let trust = Trust::verify(user, links.to_vec(), epochs.into_iter().collect()).map_err(
            |refused| {
                StateError::ChainMismatch(format!(
                    "link {} of the chain does not verify: {}",
                    refused.seqno, refused.error
                ))
            },
        )?;
        check_member(&trust, &secrets).map_err(StateError::ChainMismatch)?;
        let dir = dir.as_ref().to_owned();
        files::create_private_dir(&dir)?;
        let lock = files::lock_dir(&dir)?;
        if dir.join(FORMAT_FILE).exists() {
            return Err(StateError::AlreadyExists(dir));
        }
        files::write_secret(&dir.join(DEVICE_KEY_FILE), &secrets.device.secret_bytes())?;
        files::write_secret(&dir.join(EXCHANGE_KEY_FILE), secrets.exchange.bytes())?;
        files::write_atomic(
            &dir.join(USER_FILE),
            format!("{}\n", user.to_hex()).as_bytes(),
            Access::Normal,
        )?;
        write_trust(&dir, &trust)?;
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

    /// Opens the state in `dir` and locks it. The stored chain is verified again from its
    /// first link.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StateError> {
        let dir = dir.as_ref().to_owned();
        if !dir.join(FORMAT_FILE).exists() {
            return Err(StateError::NotFound(dir));
        }
        // The folder holds keys: owner only, whatever mode it was left with.
        files::make_dir_private(&dir)?;
        let lock = files::lock_dir(&dir)?;
        let format_path = dir.join(FORMAT_FILE);
        let format = files::read_text(&format_path)?;
        if format.as_str() == FORMAT_CERTIFICATES {
            return Err(StateError::OldFormat(dir));
        }
        if format.as_str() != FORMAT {
            return Err(StateError::corrupt(
                format_path,
                format!("unknown format (this client reads {FORMAT:?})"),
            ));
        }
        Self::load(dir, lock)
    }

    /// Fails with [`StateError::AlreadyExists`] if `dir` holds a state: checked before
    /// pairing or creating a user, so nothing is sent for a folder that cannot take it.
    pub(crate) fn check_vacant(dir: &Path) -> Result<(), StateError> {
        if dir.join(FORMAT_FILE).exists() {
            return Err(StateError::AlreadyExists(dir.to_owned()));
        }
        Ok(())
    }

    fn load(dir: PathBuf, lock: File) -> Result<Self, StateError> {
        let device = DeviceKey::from_secret_bytes(&*files::read_hex32(&dir.join(DEVICE_KEY_FILE))?);
        let exchange =
            ExchangeSecret::from_bytes(&*files::read_hex32(&dir.join(EXCHANGE_KEY_FILE))?);
        let user_path = dir.join(USER_FILE);
        let user = UserId::from_hex(&files::read_text(&user_path)?)
            .map_err(|_| StateError::corrupt(&user_path, "expected the user id, 64 hex digits"))?;
        let epochs = read_epochs(&dir.join(EPOCHS_FILE))?;
        let chain_path = dir.join(CHAIN_FILE);
        let links = read_links(&chain_path)?;
        let trust = Trust::verify(user, links, epochs).map_err(|refused| {
            StateError::corrupt(
                &chain_path,
                format!(
                    "link {} of the stored device chain does not verify: {}",
                    refused.seqno, refused.error
                ),
            )
        })?;
        let secrets = DeviceSecrets { device, exchange };
        check_member(&trust, &secrets).map_err(|why| StateError::corrupt(&chain_path, why))?;
        let DeviceSecrets { device, exchange } = secrets;

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
        let book = Arc::new(std::sync::Mutex::new(Book::load(&dir)?));
        Ok(Self {
            relay_url: relay_url.to_owned(),
            relay_key,
            keys: Arc::new(Keys {
                user,
                device,
                exchange,
            }),
            trust: Arc::new(RwLock::new(trust)),
            cursor,
            seen,
            outbox,
            book,
            dir,
            _lock: lock,
        })
    }

    /// The contact book, shared with the client's people layer.
    pub(crate) fn book(&self) -> Arc<std::sync::Mutex<Book>> {
        Arc::clone(&self.book)
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
        self.keys.user
    }

    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.keys.device.id()
    }

    /// This device's name, as the chain link that admitted it says.
    pub fn device_name(&self) -> String {
        let me = self.device_id();
        self.trust()
            .chain()
            .member(&me)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    }

    /// The number of links in the device chain this device has verified.
    pub fn chain_len(&self) -> u64 {
        self.trust().seqno()
    }

    /// The current data-key epoch, as far as this device knows.
    pub fn epoch(&self) -> u32 {
        self.trust().chain().epoch()
    }

    /// Whether the chain as this device knows it has revoked this device.
    pub fn is_revoked(&self) -> bool {
        let me = self.device_id();
        !self.trust().chain().is_active(&me)
    }

    /// The data-key epochs this device holds, oldest first. Secrets: they open the user's
    /// events. They never go to the relay.
    pub fn epoch_keys(&self) -> Vec<(u32, DataKey)> {
        self.trust()
            .epochs()
            .map(|(n, key)| (n, DataKey::from_bytes(key.bytes())))
            .collect()
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

    /// Writes the chain and the epoch keys as they are in memory.
    pub(crate) fn save_trust(&mut self) -> Result<(), StateError> {
        let trust = self.trust().clone();
        write_trust(&self.dir, &trust)
    }

    pub(crate) fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys)
    }

    /// The chain and epochs, shared with the client's driver and its pairing handle.
    pub(crate) fn shared_trust(&self) -> Arc<RwLock<Trust>> {
        Arc::clone(&self.trust)
    }

    pub(crate) fn trust(&self) -> RwLockReadGuard<'_, Trust> {
        self.trust.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new user's first device, without a relay (for unit tests): the chain's first two
    /// links are made here and never uploaded.
    #[cfg(test)]
    pub(crate) fn create_offline(
        dir: impl AsRef<Path>,
        relay_url: &str,
        relay_key: RelayId,
        device_name: &str,
    ) -> Result<Self, StateError> {
        let genesis = crate::account::Genesis::new(device_name);
        let crate::account::Genesis {
            user,
            secrets,
            epoch0,
            links,
            ..
        } = genesis;
        Self::from_parts(
            dir,
            relay_url,
            relay_key,
            user,
            secrets,
            vec![(0, epoch0)],
            &links,
        )
    }
}

/// Checks that the chain admitted this device with its exchange key.
fn check_member(trust: &Trust, secrets: &DeviceSecrets) -> Result<(), String> {
    match trust.chain().member(&secrets.device.id()) {
        None => Err("the device chain does not admit this device".to_owned()),
        Some(member) if member.exchange != secrets.exchange.public() => {
            Err("the device chain admits this device with another exchange key".to_owned())
        }
        Some(_) => Ok(()),
    }
}

fn write_trust(dir: &Path, trust: &Trust) -> Result<(), StateError> {
    let mut epochs = Zeroizing::new(String::new());
    for (n, key) in trust.epochs() {
        epochs.push_str(&format!("{n} {}\n", hex::encode(key.bytes())));
    }
    files::write_atomic(&dir.join(EPOCHS_FILE), epochs.as_bytes(), Access::Private)?;
    let mut chain = String::new();
    for link in trust.links() {
        chain.push_str(&hex::encode(codec::encode(link)));
        chain.push('\n');
    }
    files::write_atomic(&dir.join(CHAIN_FILE), chain.as_bytes(), Access::Normal)
}

fn read_epochs(path: &Path) -> Result<BTreeMap<u32, DataKey>, StateError> {
    let text = files::read_text(path)?;
    let mut epochs = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = line.split_once(' ').and_then(|(n, key)| {
            let mut bytes = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(key.trim(), bytes.as_mut()).ok()?;
            Some((n.parse::<u32>().ok()?, DataKey::from_bytes(&bytes)))
        });
        let (n, key) =
            parsed.ok_or_else(|| StateError::corrupt(path, "expected EPOCH KEY lines"))?;
        epochs.insert(n, key);
    }
    Ok(epochs)
}

fn read_links(path: &Path) -> Result<Vec<Link>, StateError> {
    let text = std::fs::read_to_string(path).map_err(|e| StateError::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            hex::decode(line.trim())
                .ok()
                .and_then(|bytes| codec::decode::<Link>(&bytes).ok())
                .ok_or_else(|| {
                    StateError::corrupt(path, format!("line {} is not a chain link", i + 1))
                })
        })
        .collect()
}

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
        let created = ClientState::create_offline(&path, URL, relay, "laptop").unwrap();
        let (user, device) = (created.user_id(), created.device_id());
        let data = *created.epoch_keys()[0].1.bytes();
        // Locked while open, here or in another process.
        assert!(matches!(
            ClientState::open(&path),
            Err(StateError::Locked(_))
        ));
        assert!(matches!(
            ClientState::create_offline(&path, URL, relay, "again"),
            Err(StateError::Locked(_))
        ));
        drop(created);

        let state = ClientState::open(&path).unwrap();
        assert_eq!((state.user_id(), state.device_id()), (user, device));
        assert_eq!(state.epoch_keys().len(), 1);
        assert_eq!(state.epoch_keys()[0].1.bytes(), &data);
        assert_eq!(
            (state.chain_len(), state.epoch(), state.is_revoked()),
            (2, 0, false)
        );
        assert_eq!((state.relay_url(), state.relay_key()), (URL, relay));
        assert_eq!(state.device_name(), "laptop");
        assert_eq!(
            (state.cursor(), state.pending(), state.next_device_seq()),
            (0, 0, 1)
        );
        drop(state);
        assert!(matches!(
            ClientState::create_offline(&path, URL, relay, "again"),
            Err(StateError::AlreadyExists(_))
        ));
        // No file holds anything named like a user key.
        assert!(!path.join("user.key").exists());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [DEVICE_KEY_FILE, EXCHANGE_KEY_FILE, EPOCHS_FILE] {
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
        drop(ClientState::create_offline(&path, URL, RelayId([5; 32]), "laptop").unwrap());
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
        drop(ClientState::create_offline(&existing, URL, RelayId([5; 32]), "phone").unwrap());
        let mode = std::fs::metadata(&existing).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::create_offline(dir.path(), URL, RelayId([5; 32]), "x").unwrap();
        let shown = format!("{state:?}");
        for secret in [
            hex::encode(state.epoch_keys()[0].1.bytes()),
            hex::encode(*state.keys.device.secret_bytes()),
            hex::encode(state.keys.exchange.bytes()),
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
                    ClientState::create_offline(dir.path().join("u"), url, RelayId([5; 32]), "x"),
                    Err(StateError::InvalidRelayUrl(_))
                ),
                "{url}"
            );
        }
        assert!(matches!(
            ClientState::open(dir.path().join("missing")),
            Err(StateError::NotFound(_))
        ));

        // A chain that does not admit the device, or admits it with another exchange key.
        let genesis = crate::account::Genesis::new("x");
        let stranger = DeviceSecrets::generate();
        assert!(matches!(
            ClientState::from_parts(
                dir.path().join("p"),
                URL,
                RelayId([5; 32]),
                genesis.user,
                stranger,
                vec![(0, DataKey::from_bytes(genesis.epoch0.bytes()))],
                &genesis.links
            ),
            Err(StateError::ChainMismatch(_))
        ));
        let swapped = DeviceSecrets {
            device: genesis.secrets.device,
            exchange: ExchangeSecret::generate(&mut OsRng),
        };
        assert!(matches!(
            ClientState::from_parts(
                dir.path().join("q"),
                URL,
                RelayId([5; 32]),
                genesis.user,
                swapped,
                vec![],
                &genesis.links
            ),
            Err(StateError::ChainMismatch(_))
        ));

        let path = dir.path().join("s");
        drop(ClientState::create_offline(&path, URL, RelayId([5; 32]), "x").unwrap());
        std::fs::write(path.join(EPOCHS_FILE), "0 nothex").unwrap();
        assert!(matches!(
            ClientState::open(&path),
            Err(StateError::Corrupt { .. })
        ));

        // A chain rewritten in the folder (here: its last link dropped, so the chain no
        // longer admits the device) is caught when opened.
        let path = dir.path().join("t");
        drop(ClientState::create_offline(&path, URL, RelayId([5; 32]), "x").unwrap());
        let chain = std::fs::read_to_string(path.join(CHAIN_FILE)).unwrap();
        let first = chain.lines().next().unwrap();
        std::fs::write(path.join(CHAIN_FILE), format!("{first}\n")).unwrap();
        assert!(matches!(
            ClientState::open(&path),
            Err(StateError::Corrupt { .. })
        ));
        // A link tampered with.
        let mut tampered: Vec<String> = chain.lines().map(str::to_owned).collect();
        let last = tampered.last_mut().unwrap();
        let flipped = if last.ends_with('0') { '1' } else { '0' };
        last.pop();
        last.push(flipped);
        std::fs::write(path.join(CHAIN_FILE), tampered.join("\n")).unwrap();
        assert!(matches!(
            ClientState::open(&path),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_folder_from_before_the_device_chain_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "ferry-client-state 1\n").unwrap();
        let error = ClientState::open(dir.path()).unwrap_err();
        assert!(matches!(error, StateError::OldFormat(_)), "{error:?}");
        let shown = error.to_string();
        assert!(
            shown.contains("ferry init") && shown.contains("pair"),
            "{shown}"
        );
    }

    #[test]
    fn the_cursor_only_moves_forward_and_resync_sets_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut state =
            ClientState::create_offline(dir.path(), URL, RelayId([5; 32]), "x").unwrap();
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

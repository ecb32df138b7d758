//! Pairing a new device through a code such as `7-402913` (client side; the relay only
//! forwards).
//!
//! # Message flow
//!
//! Device A (the **inviter**, an active device of the user's chain) asks the relay
//! for a slot; the relay assigns a short slot number (the *nameplate*, as in Magic Wormhole),
//! which is public and only routes. A then draws six secret digits uniformly from
//! 000000–999999 and shows `SLOT-DDDDDD`; device B (the **joiner**) enters it. The relay
//! forwards the bodies below between the two ends of the slot, opaque.
//!
//! 1. B → A `JoinerHello { pake: SPAKE2 message B }` (in `PairJoin`).
//! 2. A → B `InviterHello { pake: SPAKE2 message A, confirm: confirm_a }`.
//! 3. B checks `confirm_a` (a mismatch means a wrong code: B closes the slot as failed), then
//!    B → A `JoinerRequest { confirm: confirm_b, sealed: seal(k_b2a, JoinRequest) }` with B's
//!    new device key, its X25519 exchange key and its name.
//! 4. A checks `confirm_b` and opens the request. Once its user confirmed, A appends an
//!    `Admit` link for B to the user's device chain (signed with A's own device key), then
//!    A → B `InviterGrant { sealed: seal(k_a2b, Grant) }` carrying the user id and every
//!    data-key epoch's key, so B reads the whole history. A closes the slot as successful.
//!    No device ever hands over the user key: it exists only while the recovery key is typed.
//!
//! Key schedule: SPAKE2 over Ed25519 (RustCrypto `spake2`) with the six secret digits as the
//! password and identities `INVITER_ID ‖ relay key ‖ be16(slot)` / `JOINER_ID ‖ relay key ‖
//! be16(slot)` ([`identities`]), giving `K`;
//! `prk = HKDF-Extract(salt = SHA-256(PAIRING_LABEL ‖ msg_a ‖ msg_b), ikm = K)`, then
//! `confirm_a`, `confirm_b`, `k_a2b`, `k_b2a` and the confirmation string are HKDF-Expand
//! outputs with the labels below. Sealing is ChaCha20-Poly1305 with a zero nonce (each key
//! seals exactly one message).
//!
//! An attacker without the code gets one online guess in 10^6 per pairing: the first join
//! consumes the slot. The routing part is no part of the password, so the relay (which sees
//! it) learns nothing it can use: a relay that substitutes its own SPAKE2 messages gets the
//! same one guess in 10^6, fails visibly otherwise, and would show different confirmation
//! strings. Binding the relay key and the slot into the identities keeps a transcript from
//! one relay or one slot from being replayed into another.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::ErrorCode;
use crate::codec::{self, DecodeError, Wire, check_len};
use crate::identity::{DeviceId, DeviceKey, IdentityError, RelayId, UserId};
use crate::limits::MAX_DEVICE_NAME_LEN;
use crate::seal::DataKey;

/// SPAKE2 identity of the inviter, before the relay key and the slot ([`identities`]).
pub const INVITER_ID: &[u8] = b"ferry/v1/pair/inviter";
/// SPAKE2 identity of the joiner, before the relay key and the slot ([`identities`]).
pub const JOINER_ID: &[u8] = b"ferry/v1/pair/joiner";
/// Prefix of the pairing transcript hash.
pub const PAIRING_LABEL: &[u8] = b"ferry/v1/pair/transcript";
/// HKDF info of the inviter's key confirmation.
pub const CONFIRM_INVITER_LABEL: &[u8] = b"ferry/v1/pair/confirm-inviter";
/// HKDF info of the joiner's key confirmation.
pub const CONFIRM_JOINER_LABEL: &[u8] = b"ferry/v1/pair/confirm-joiner";
/// HKDF info of the key sealing the inviter's grant.
pub const INVITER_KEY_LABEL: &[u8] = b"ferry/v1/pair/key-inviter-to-joiner";
/// HKDF info of the key sealing the joiner's request.
pub const JOINER_KEY_LABEL: &[u8] = b"ferry/v1/pair/key-joiner-to-inviter";
/// HKDF info of the confirmation string both screens show.
pub const CONFIRMATION_LABEL: &[u8] = b"ferry/v1/pair/confirmation-string";

/// Number of secret codes: the six digits, 000000–999999.
pub const SECRETS: u32 = 1_000_000;

/// Why pairing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The text is not a slot number, a dash and six digits.
    #[error("a pairing code is a slot number, a dash and six digits, as in 7-402913")]
    BadCode,
    /// The other side proved a different key: the code was wrong (or someone interfered).
    #[error("the pairing code did not match")]
    WrongCode,
    /// A message did not decode or was not the one expected at this step.
    #[error("unexpected pairing message: {0}")]
    Unexpected(String),
    /// The grant's keys are not a usable set of epochs.
    #[error("the other device sent an invalid grant: {0}")]
    BadGrant(&'static str),
    /// A device name problem.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl PairingError {
    /// The code to report on the wire (in `PairClose`/`PairClosed`).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::PairingFailed
    }
}

impl From<DecodeError> for PairingError {
    fn from(e: DecodeError) -> Self {
        Self::Unexpected(e.to_string())
    }
}

/// A pairing code, `SLOT-DDDDDD`: the slot the relay assigned (public, it only routes) and
/// six secret digits (the PAKE password).
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode {
    slot: u16,
    secret: u32,
}

impl PairingCode {
    /// Draws the six secret digits uniformly from 000000–999999 for the relay-assigned `slot`.
    pub fn generate(slot: u16, rng: &mut impl CryptoRngCore) -> Self {
        // Rejection sampling: 4_294_000_000 is the largest multiple of 10^6 below 2^32.
        loop {
            let n = rng.next_u32();
            if n < 4_294_000_000 {
                return Self {
                    slot,
                    secret: n % SECRETS,
                };
            }
        }
    }

    /// Parses `SLOT-DDDDDD` as people type it: spaces anywhere are ignored, the dash is
    /// required (without it `7402913` could be `74-02913` or `740-2913`: the split would be a
    /// guess), the slot is 1–65535 and the secret exactly six digits.
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        let text: String = text.chars().filter(|c| *c != ' ').collect();
        let (slot, secret) = text.split_once('-').ok_or(PairingError::BadCode)?;
        let digits = |part: &str, max_len| {
            !part.is_empty() && part.len() <= max_len && part.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(slot, 5) || !digits(secret, 6) || secret.len() != 6 {
            return Err(PairingError::BadCode);
        }
        let slot: u16 = slot.parse().map_err(|_| PairingError::BadCode)?;
        let secret: u32 = secret.parse().map_err(|_| PairingError::BadCode)?;
        if slot == 0 {
            return Err(PairingError::BadCode);
        }
        Ok(Self { slot, secret })
    }

    /// The slot the relay routes by (public).
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The six secret digits: the PAKE password.
    pub fn digits(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{:06}", self.secret))
    }

    /// The whole code as shown to the user, `SLOT-DDDDDD`. Secret: show it, do not log it.
    pub fn text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}-{:06}", self.slot, self.secret))
    }
}

impl std::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairingCode(slot {}, <redacted>)", self.slot)
    }
}

/// The SPAKE2 identities of the inviter and the joiner of `slot` on the relay `relay`:
/// `INVITER_ID ‖ relay ‖ be16(slot)` and `JOINER_ID ‖ relay ‖ be16(slot)`. Both devices pin
/// the relay's key, so a transcript made for another relay or slot does not match.
pub fn identities(relay: &RelayId, slot: u16) -> (Vec<u8>, Vec<u8>) {
    let id = |role: &[u8]| [role, relay.as_bytes().as_slice(), &slot.to_be_bytes()].concat();
    (id(INVITER_ID), id(JOINER_ID))
}

/// The bodies carried by `PairJoin`/`PairForward`/`PairPeer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairingMessage {
    /// Step 1.
    JoinerHello {
        /// SPAKE2 message of the joiner.
        #[serde(with = "serde_bytes")]
        pake: Vec<u8>,
    },
    /// Step 2.
    InviterHello {
        /// SPAKE2 message of the inviter.
        #[serde(with = "serde_bytes")]
        pake: Vec<u8>,
        /// The inviter's key confirmation.
        confirm: [u8; 32],
    },
    /// Step 3.
    JoinerRequest {
        /// The joiner's key confirmation.
        confirm: [u8; 32],
        /// `JoinRequest`, sealed with `k_b2a`.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// Step 4.
    InviterGrant {
        /// `Grant`, sealed with `k_a2b`.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
}

impl Wire for PairingMessage {}

/// What the joiner asks for (sealed): the inviter admits exactly this to the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The new device's signing key.
    pub device: DeviceId,
    /// The new device's X25519 exchange key (later epochs are sealed to it).
    pub exchange: [u8; 32],
    /// The name the new device asked for.
    pub name: String,
}

/// Most data-key epochs one grant carries.
pub const MAX_GRANT_EPOCHS: usize = 1024;

impl Wire for JoinRequest {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len("device name", self.name.len(), MAX_DEVICE_NAME_LEN)
    }
}

/// What the inviter grants (sealed). Holds secrets: zeroized when dropped.
#[derive(Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct GrantWire {
    #[zeroize(skip)]
    user: UserId,
    epochs: Vec<(u32, [u8; 32])>,
}

impl Wire for GrantWire {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len("grant epochs", self.epochs.len(), MAX_GRANT_EPOCHS)
    }
}

/// Everything a newly paired device needs besides the chain (which it fetches from the
/// relay and verifies itself): whose device it is, and every data-key epoch's key.
#[derive(Debug)]
pub struct Grant {
    /// The user the device now acts for.
    pub user: UserId,
    /// Every epoch's data key, epoch 0 first, consecutive.
    pub epochs: Vec<(u32, DataKey)>,
}

/// Keys derived once both SPAKE2 messages are known.
struct PairingKeys {
    confirm_inviter: Zeroizing<[u8; 32]>,
    confirm_joiner: Zeroizing<[u8; 32]>,
    inviter_to_joiner: Zeroizing<[u8; 32]>,
    joiner_to_inviter: Zeroizing<[u8; 32]>,
    confirmation: String,
}

impl PairingKeys {
    fn derive(shared: &[u8], msg_inviter: &[u8], msg_joiner: &[u8]) -> Self {
        let mut transcript = Sha256::new();
        transcript.update(PAIRING_LABEL);
        for part in [msg_inviter, msg_joiner] {
            transcript.update((part.len() as u32).to_be_bytes());
            transcript.update(part);
        }
        let salt: [u8; 32] = transcript.finalize().into();
        let hkdf = Hkdf::<Sha256>::new(Some(&salt), shared);
        let expand = |label: &[u8]| {
            let mut out = Zeroizing::new([0u8; 32]);
            if hkdf.expand(label, out.as_mut()).is_err() {
                unreachable!("32 bytes is a valid HKDF-SHA256 output length");
            }
            out
        };
        let words = expand(CONFIRMATION_LABEL);
        let confirmation = format!(
            "{:04}-{:04}",
            u16::from_be_bytes([words[0], words[1]]) % 10_000,
            u16::from_be_bytes([words[2], words[3]]) % 10_000
        );
        Self {
            confirm_inviter: expand(CONFIRM_INVITER_LABEL),
            confirm_joiner: expand(CONFIRM_JOINER_LABEL),
            inviter_to_joiner: expand(INVITER_KEY_LABEL),
            joiner_to_inviter: expand(JOINER_KEY_LABEL),
            confirmation,
        }
    }
}

fn seal_once(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    match cipher.encrypt(&Nonce::default(), plaintext) {
        Ok(sealed) => sealed,
        Err(_) => unreachable!("pairing messages are far below the AEAD length limit"),
    }
}

fn open_once(key: &[u8; 32], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, PairingError> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(&Nonce::default(), sealed)
        .map(Zeroizing::new)
        .map_err(|_| PairingError::WrongCode)
}

fn spake(code: &PairingCode, relay: &RelayId) -> (Password, Identity, Identity) {
    let (inviter, joiner) = identities(relay, code.slot());
    (
        Password::new(code.digits().as_bytes()),
        Identity::new(&inviter),
        Identity::new(&joiner),
    )
}

/// The inviter, waiting for the joiner's hello.
pub struct Inviter {
    state: Spake2<Ed25519Group>,
    message: Vec<u8>,
}

impl std::fmt::Debug for Inviter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inviter(<secret>)")
    }
}

/// The inviter, waiting for the joiner's request.
pub struct InviterAwaitRequest {
    keys: PairingKeys,
}

impl std::fmt::Debug for InviterAwaitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviterAwaitRequest")
            .field("confirmation", &self.keys.confirmation)
            .finish()
    }
}

/// The inviter once the joiner proved the code: it holds the request, and seals the grant
/// once the new device is admitted to the chain.
pub struct InviterReady {
    keys: PairingKeys,
}

impl std::fmt::Debug for InviterReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviterReady")
            .field("confirmation", &self.keys.confirmation)
            .finish()
    }
}

impl Inviter {
    /// Starts pairing with `code` (shown to the user) on the relay whose key is `relay`.
    pub fn start(code: &PairingCode, relay: &RelayId, rng: &mut impl CryptoRngCore) -> Self {
        let (password, inviter, joiner) = spake(code, relay);
        let (state, message) =
            Spake2::<Ed25519Group>::start_a_with_rng(&password, &inviter, &joiner, &mut *rng);
        Self { state, message }
    }

    /// Step 1 → 2: reads the joiner's hello; returns the body to forward and the next state.
    pub fn handle_joiner_hello(
        self,
        body: &[u8],
    ) -> Result<(InviterAwaitRequest, Vec<u8>), PairingError> {
        let PairingMessage::JoinerHello { pake } = codec::decode(body)? else {
            return Err(PairingError::Unexpected("expected JoinerHello".into()));
        };
        let shared = Zeroizing::new(
            self.state
                .finish(&pake)
                .map_err(|e| PairingError::Unexpected(e.to_string()))?,
        );
        let keys = PairingKeys::derive(&shared, &self.message, &pake);
        let reply = PairingMessage::InviterHello {
            pake: self.message,
            confirm: *keys.confirm_inviter,
        };
        Ok((InviterAwaitRequest { keys }, codec::encode(&reply)))
    }
}

impl InviterAwaitRequest {
    /// The short string both screens can show to catch a relay in the middle.
    pub fn confirmation(&self) -> &str {
        &self.keys.confirmation
    }

    /// Step 3: checks the joiner's proof and opens its request. Nothing is granted yet: the
    /// caller shows the confirmation, admits `request` to the chain, then calls
    /// [`InviterReady::grant`].
    pub fn handle_joiner_request(
        self,
        body: &[u8],
    ) -> Result<(JoinRequest, InviterReady), PairingError> {
        let PairingMessage::JoinerRequest { confirm, sealed } = codec::decode(body)? else {
            return Err(PairingError::Unexpected("expected JoinerRequest".into()));
        };
        if !bool::from(confirm.ct_eq(self.keys.confirm_joiner.as_slice())) {
            return Err(PairingError::WrongCode);
        }
        let request: JoinRequest =
            codec::decode(&open_once(&self.keys.joiner_to_inviter, &sealed)?)?;
        crate::identity::check_device_name(&request.name)?;
        Ok((request, InviterReady { keys: self.keys }))
    }
}

impl InviterReady {
    /// The short string both screens can show to catch a relay in the middle.
    pub fn confirmation(&self) -> &str {
        &self.keys.confirmation
    }

    /// Step 4: the sealed grant of `user`'s epoch keys (`epochs`, epoch 0 first,
    /// consecutive), to send once the new device's `Admit` link is in the chain.
    pub fn grant(self, user: UserId, epochs: &[(u32, &DataKey)]) -> Vec<u8> {
        let grant = GrantWire {
            user,
            epochs: epochs.iter().map(|(n, key)| (*n, *key.bytes())).collect(),
        };
        let plain = Zeroizing::new(codec::encode(&grant));
        codec::encode(&PairingMessage::InviterGrant {
            sealed: seal_once(&self.keys.inviter_to_joiner, &plain),
        })
    }
}

/// The joiner, waiting for the inviter's hello.
pub struct Joiner {
    state: Spake2<Ed25519Group>,
    message: Vec<u8>,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Joiner(<secret>)")
    }
}

/// The joiner, waiting for the grant.
pub struct JoinerAwaitGrant {
    keys: PairingKeys,
}

impl std::fmt::Debug for JoinerAwaitGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinerAwaitGrant")
            .field("confirmation", &self.keys.confirmation)
            .finish()
    }
}

impl Joiner {
    /// Step 1: starts pairing with the code the user typed, on the relay whose key is
    /// `relay` (the pinned key); returns the `PairJoin` body.
    pub fn start(
        code: &PairingCode,
        relay: &RelayId,
        rng: &mut impl CryptoRngCore,
    ) -> (Self, Vec<u8>) {
        let (password, inviter, joiner) = spake(code, relay);
        let (state, message) =
            Spake2::<Ed25519Group>::start_b_with_rng(&password, &inviter, &joiner, &mut *rng);
        let body = codec::encode(&PairingMessage::JoinerHello {
            pake: message.clone(),
        });
        (Self { state, message }, body)
    }

    /// Step 2 → 3: checks the inviter's proof and returns the sealed request for `device`,
    /// whose X25519 exchange key is `exchange`.
    pub fn handle_inviter_hello(
        self,
        body: &[u8],
        device: &DeviceKey,
        exchange: [u8; 32],
        name: &str,
    ) -> Result<(JoinerAwaitGrant, Vec<u8>), PairingError> {
        crate::identity::check_device_name(name)?;
        let PairingMessage::InviterHello { pake, confirm } = codec::decode(body)? else {
            return Err(PairingError::Unexpected("expected InviterHello".into()));
        };
        let shared = Zeroizing::new(
            self.state
                .finish(&pake)
                .map_err(|e| PairingError::Unexpected(e.to_string()))?,
        );
        let keys = PairingKeys::derive(&shared, &pake, &self.message);
        if !bool::from(confirm.ct_eq(keys.confirm_inviter.as_slice())) {
            return Err(PairingError::WrongCode);
        }
        let request = codec::encode(&JoinRequest {
            device: device.id(),
            exchange,
            name: name.to_owned(),
        });
        let body = codec::encode(&PairingMessage::JoinerRequest {
            confirm: *keys.confirm_joiner,
            sealed: seal_once(&keys.joiner_to_inviter, &request),
        });
        Ok((JoinerAwaitGrant { keys }, body))
    }
}

impl JoinerAwaitGrant {
    /// The short string both screens can show to catch a relay in the middle.
    pub fn confirmation(&self) -> &str {
        &self.keys.confirmation
    }

    /// Step 4: opens the grant and checks that its epochs are 0, 1, 2… (at least one). That
    /// the chain admits this device is checked against the chain itself, once connected.
    pub fn handle_grant(self, body: &[u8]) -> Result<Grant, PairingError> {
        let PairingMessage::InviterGrant { sealed } = codec::decode(body)? else {
            return Err(PairingError::Unexpected("expected InviterGrant".into()));
        };
        let grant: GrantWire = codec::decode(&open_once(&self.keys.inviter_to_joiner, &sealed)?)?;
        if grant.epochs.is_empty() {
            return Err(PairingError::BadGrant("no data key"));
        }
        if grant
            .epochs
            .iter()
            .enumerate()
            .any(|(i, (n, _))| *n as usize != i)
        {
            return Err(PairingError::BadGrant("epochs are not 0, 1, 2…"));
        }
        Ok(Grant {
            user: grant.user,
            epochs: grant
                .epochs
                .iter()
                .map(|(n, key)| (*n, DataKey::from_bytes(key)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    struct Run {
        inviter_confirmation: String,
        joiner_confirmation: String,
        grant: Grant,
        request: JoinRequest,
    }

    const RELAY: RelayId = RelayId([0xa5; 32]);

    /// Pairs with two epochs (0 and 1), checking what each side learns.
    fn pair(inviter_code: &str, joiner_code: &str) -> Result<Run, PairingError> {
        pair_on(inviter_code, &RELAY, joiner_code, &RELAY)
    }

    /// A pairing where each side may hold another code and pin another relay key.
    fn pair_on(
        inviter_code: &str,
        inviter_relay: &RelayId,
        joiner_code: &str,
        joiner_relay: &RelayId,
    ) -> Result<Run, PairingError> {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let user = crate::identity::UserKey::generate(&mut rng).id();
        let data = [DataKey::generate(&mut rng), DataKey::generate(&mut rng)];
        let device = DeviceKey::generate(&mut rng);
        let inviter = Inviter::start(&PairingCode::parse(inviter_code)?, inviter_relay, &mut rng);
        let (joiner, hello) =
            Joiner::start(&PairingCode::parse(joiner_code)?, joiner_relay, &mut rng);
        let (inviter, reply) = inviter.handle_joiner_hello(&hello)?;
        let (joiner, request) = joiner.handle_inviter_hello(&reply, &device, [5; 32], "tablet")?;
        let inviter_confirmation = inviter.confirmation().to_owned();
        let joiner_confirmation = joiner.confirmation().to_owned();
        let (request, ready) = inviter.handle_joiner_request(&request)?;
        assert_eq!(ready.confirmation(), inviter_confirmation);
        // (The inviter admits `request` to the chain here, then grants.)
        let grant = ready.grant(user, &[(0, &data[0]), (1, &data[1])]);
        let grant = joiner.handle_grant(&grant)?;
        assert_eq!(grant.user, user);
        assert_eq!(grant.epochs.len(), 2);
        for (i, (epoch, key)) in grant.epochs.iter().enumerate() {
            assert_eq!(*epoch as usize, i);
            assert_eq!(key.bytes(), data[i].bytes());
        }
        assert_eq!(request.device, device.id());
        Ok(Run {
            inviter_confirmation,
            joiner_confirmation,
            grant,
            request,
        })
    }

    #[test]
    fn the_right_code_pairs_and_both_screens_agree() {
        let run = pair("7-123456", " 7 - 123 456 ").unwrap();
        assert_eq!(run.inviter_confirmation, run.joiner_confirmation);
        // The inviter learns exactly what it admits: device key, exchange key and name.
        assert_eq!(run.request.exchange, [5; 32]);
        assert_eq!(run.request.name, "tablet");
        assert_eq!(run.grant.epochs[0].0, 0);
    }

    /// Runs a pairing up to the inviter's grant of `epochs`, and returns the joiner's verdict.
    fn grant_of(epochs: &[u32]) -> Result<Grant, PairingError> {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let user = crate::identity::UserKey::generate(&mut rng).id();
        let key = DataKey::generate(&mut rng);
        let device = DeviceKey::generate(&mut rng);
        let code = PairingCode::parse("27-271828").unwrap();
        let inviter = Inviter::start(&code, &RELAY, &mut rng);
        let (joiner, hello) = Joiner::start(&code, &RELAY, &mut rng);
        let (inviter, reply) = inviter.handle_joiner_hello(&hello).unwrap();
        let (joiner, request) = joiner
            .handle_inviter_hello(&reply, &device, [5; 32], "tablet")
            .unwrap();
        let (_, ready) = inviter.handle_joiner_request(&request).unwrap();
        let epochs: Vec<(u32, &DataKey)> = epochs.iter().map(|&n| (n, &key)).collect();
        joiner.handle_grant(&ready.grant(user, &epochs))
    }

    #[test]
    fn a_grant_needs_epochs_zero_one_two_and_so_on() {
        assert_eq!(grant_of(&[0]).unwrap().epochs.len(), 1);
        assert_eq!(grant_of(&[0, 1, 2]).unwrap().epochs.len(), 3);
        assert_eq!(
            grant_of(&[]).err(),
            Some(PairingError::BadGrant("no data key"))
        );
        for epochs in [&[1][..], &[0, 2], &[0, 1, 1], &[1, 0], &[0, 1, 3]] {
            assert_eq!(
                grant_of(epochs).err(),
                Some(PairingError::BadGrant("epochs are not 0, 1, 2…")),
                "{epochs:?}"
            );
        }
    }

    #[test]
    fn a_grant_over_the_epoch_limit_is_refused_when_decoded() {
        let epochs: Vec<u32> = (0..=MAX_GRANT_EPOCHS as u32).collect();
        assert_eq!(
            grant_of(&epochs).err(),
            Some(PairingError::from(DecodeError::FieldTooLarge {
                field: "grant epochs",
                len: MAX_GRANT_EPOCHS + 1,
                limit: MAX_GRANT_EPOCHS,
            }))
        );
        // The largest grant fits in a pairing body.
        let epochs: Vec<u32> = (0..MAX_GRANT_EPOCHS as u32).collect();
        assert_eq!(grant_of(&epochs).unwrap().epochs.len(), MAX_GRANT_EPOCHS);
    }

    #[test]
    fn a_wrong_code_is_detected_before_anything_is_revealed() {
        // Same slot, other digits: the joiner notices at step 2 and sends nothing sealed.
        assert_eq!(
            pair("7-123456", "7-123457").err(),
            Some(PairingError::WrongCode)
        );
    }

    #[test]
    fn another_relay_key_or_slot_makes_the_pake_fail() {
        // The same six digits, but the two sides bind another relay key or another slot
        // into their identities: the keys differ, so the proofs do not match.
        let other_relay = RelayId([0xa6; 32]);
        assert!(pair_on("7-123456", &RELAY, "7-123456", &RELAY).is_ok());
        assert_eq!(
            pair_on("7-123456", &RELAY, "7-123456", &other_relay).err(),
            Some(PairingError::WrongCode)
        );
        assert_eq!(
            pair_on("7-123456", &RELAY, "8-123456", &RELAY).err(),
            Some(PairingError::WrongCode)
        );
        assert_eq!(
            pair_on("256-123456", &RELAY, "1-123456", &RELAY).err(),
            Some(PairingError::WrongCode),
            "the slot is bound as two bytes, not one"
        );
        let (inviter, joiner) = identities(&RELAY, 0x0102);
        assert_eq!(inviter.len(), INVITER_ID.len() + 32 + 2);
        assert!(inviter.starts_with(INVITER_ID) && inviter.ends_with(&[0xa5, 0x01, 0x02]));
        assert!(joiner.starts_with(JOINER_ID) && joiner.ends_with(&[0xa5, 0x01, 0x02]));
    }

    #[test]
    fn codes_parse_strictly_and_generate_uniformly_in_range() {
        for bad in [
            "7402913",
            "402913",
            "7-40291",
            "7-4029133",
            "7-402-913",
            "7--402913",
            "-402913",
            "7-",
            "0-402913",
            "65536-402913",
            "123456-402913",
            "7-40a913",
            "a-402913",
            "+7-402913",
            "7_402913",
            "",
            "-",
            "７-４０２９１３",
            "7\t-402913",
        ] {
            assert_eq!(
                PairingCode::parse(bad),
                Err(PairingError::BadCode),
                "{bad:?}"
            );
        }
        for (text, slot, digits) in [
            ("7-402913", 7, "402913"),
            (" 7 - 402 913 ", 7, "402913"),
            ("1-000000", 1, "000000"),
            ("65535-999999", 65535, "999999"),
            ("007-000042", 7, "000042"),
        ] {
            let code = PairingCode::parse(text).unwrap();
            assert_eq!(
                (code.slot(), code.digits().as_str()),
                (slot, digits),
                "{text:?}"
            );
            assert_eq!(PairingCode::parse(&code.text()).unwrap(), code);
        }
        assert_eq!(
            *PairingCode::parse("007-000042").unwrap().text(),
            "7-000042"
        );
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut buckets = [0u32; 10];
        for _ in 0..20_000 {
            let code = PairingCode::generate(3, &mut rng);
            assert_eq!(code.slot(), 3);
            assert!(code.secret < SECRETS);
            buckets[(code.secret / 100_000) as usize] += 1;
        }
        // Each leading digit about 2000 times.
        assert!(
            buckets.iter().all(|&n| (1700..2300).contains(&n)),
            "{buckets:?}"
        );
        let shown = format!("{:?}", PairingCode::parse("123-456789").unwrap());
        assert!(!shown.contains("456"), "{shown}");
        assert!(shown.contains("slot 123"), "{shown}");
    }

    #[test]
    fn a_requested_name_over_the_limit_is_refused_when_the_request_is_decoded() {
        // Only a joiner that skips its own name check sends one: build its request by hand.
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let device = DeviceKey::generate(&mut rng).id();
        let code = PairingCode::parse("66-662607").unwrap();
        let request = |inviter: &InviterAwaitRequest, name: String| {
            let sealed = seal_once(
                &inviter.keys.joiner_to_inviter,
                &codec::encode(&JoinRequest {
                    device,
                    exchange: [5; 32],
                    name,
                }),
            );
            codec::encode(&PairingMessage::JoinerRequest {
                confirm: *inviter.keys.confirm_joiner,
                sealed,
            })
        };
        for (len, admitted) in [
            (MAX_DEVICE_NAME_LEN, true),
            (MAX_DEVICE_NAME_LEN + 1, false),
        ] {
            let inviter = Inviter::start(&code, &RELAY, &mut rng);
            let (_, hello) = Joiner::start(&code, &RELAY, &mut rng);
            let (inviter, _) = inviter.handle_joiner_hello(&hello).unwrap();
            let body = request(&inviter, "n".repeat(len));
            let result = inviter.handle_joiner_request(&body);
            if admitted {
                assert_eq!(result.unwrap().0.name.len(), len);
            } else {
                assert_eq!(
                    result.err(),
                    Some(PairingError::from(DecodeError::FieldTooLarge {
                        field: "device name",
                        len,
                        limit: MAX_DEVICE_NAME_LEN,
                    }))
                );
            }
        }
    }

    /// Serves the given `u32`s, then fails the test.
    struct Draws(Vec<u32>);

    impl rand_core::RngCore for Draws {
        fn next_u32(&mut self) -> u32 {
            assert!(
                !self.0.is_empty(),
                "the code drew more values than scripted"
            );
            self.0.remove(0)
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(4) {
                let bytes = self.next_u32().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    impl rand_core::CryptoRng for Draws {}

    #[test]
    fn codes_come_only_from_whole_blocks_of_a_million_draws() {
        // 4_294_000_000 is the first value of the partial block at the top of the u32 range
        // (it would make codes 000000–967295 more likely); it and everything above is drawn
        // again.
        let code =
            PairingCode::generate(1, &mut Draws(vec![4_294_000_000, u32::MAX, 4_293_999_999]));
        assert_eq!(*code.digits(), "999999");
        let code = PairingCode::generate(1, &mut Draws(vec![4_294_000_000, 1_000_042]));
        assert_eq!(*code.digits(), "000042");
        let code = PairingCode::generate(12, &mut Draws(vec![0]));
        assert_eq!(*code.text(), "12-000000");
    }

    #[test]
    fn pairing_states_print_the_confirmation_and_nothing_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let code = PairingCode::parse("9-314159").unwrap();
        let inviter = Inviter::start(&code, &RELAY, &mut rng);
        let (joiner, hello) = Joiner::start(&code, &RELAY, &mut rng);
        for shown in [format!("{inviter:?}"), format!("{joiner:?}")] {
            assert!(!shown.contains("314159"), "{shown}");
        }
        let (inviter, reply) = inviter.handle_joiner_hello(&hello).unwrap();
        let device = DeviceKey::generate(&mut rng);
        let (joiner, _) = joiner
            .handle_inviter_hello(&reply, &device, [5; 32], "tablet")
            .unwrap();
        let confirmation = inviter.confirmation().to_owned();
        assert_eq!(
            format!("{inviter:?}"),
            format!("InviterAwaitRequest {{ confirmation: {confirmation:?} }}")
        );
        assert_eq!(
            format!("{joiner:?}"),
            format!("JoinerAwaitGrant {{ confirmation: {confirmation:?} }}")
        );
    }

    #[test]
    fn a_meddling_relay_cannot_swap_messages() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let code = PairingCode::parse("5-555555").unwrap();
        let device = DeviceKey::generate(&mut rng);
        // The relay runs its own joiner against the inviter with a guessed code...
        let inviter = Inviter::start(&code, &RELAY, &mut rng);
        let guess = PairingCode::parse("5-555000").unwrap();
        let (_, relay_hello) = Joiner::start(&guess, &RELAY, &mut rng);
        let (_, reply) = inviter.handle_joiner_hello(&relay_hello).unwrap();
        // ...and forwards the inviter's answer to the real joiner: the proof does not match.
        let (joiner, _) = Joiner::start(&code, &RELAY, &mut rng);
        assert_eq!(
            joiner
                .handle_inviter_hello(&reply, &device, [5; 32], "x")
                .err(),
            Some(PairingError::WrongCode)
        );
    }
}

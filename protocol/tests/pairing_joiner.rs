//! The joiner's side of pairing against an inviter that does not play by the rules.
//!
//! An honest inviter always grants epochs 0, 1, 2… of the user's data key, so the other
//! pairing tests never reach the joiner's own checks of the grant. Here an inviter that knows
//! the code (it follows the documented key schedule, so every message authenticates) grants
//! sets of epochs that are not usable. The joiner must refuse each grant: a device that kept
//! one would miss an epoch's key and fail to read part of the history. (That the chain admits
//! the joiner is checked against the chain itself, once the joiner connects.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ferry_protocol::codec::{self, DecodeError, Wire};
use ferry_protocol::pairing::{
    CONFIRM_INVITER_LABEL, INVITER_ID, INVITER_KEY_LABEL, JOINER_ID, Joiner, JoinerAwaitGrant,
    MAX_GRANT_EPOCHS, PAIRING_LABEL, PairingCode, PairingError, PairingMessage,
};
use ferry_protocol::{DeviceKey, RelayId, UserId, UserKey};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

const CODE: &str = "27-271828";
const RELAY: RelayId = RelayId([0x5a; 32]);

/// What an inviter grants, as the protocol documents it (the crate's own type is private).
#[derive(Serialize, Deserialize)]
struct GrantWire {
    user: UserId,
    epochs: Vec<(u32, [u8; 32])>,
}

impl Wire for GrantWire {}

/// Epoch `n`'s key in these tests.
fn key_of(n: u32) -> [u8; 32] {
    let mut key = [0xd0; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    key
}

/// Runs steps 1–3 between an inviter that knows the code and follows the documented key
/// schedule, and an honest joiner for `device`. Returns the joiner, waiting for its grant, and
/// the key that seals the grant.
fn rogue_inviter(device: &DeviceKey, rng: &mut ChaCha20Rng) -> (JoinerAwaitGrant, [u8; 32]) {
    let code = PairingCode::parse(CODE).unwrap();
    let (joiner, join_body) = Joiner::start(&code, &RELAY, rng);
    let PairingMessage::JoinerHello { pake: msg_joiner } = codec::decode(&join_body).unwrap()
    else {
        panic!("expected JoinerHello")
    };
    // The identities as documented: role ‖ relay key ‖ be16(slot).
    let slot = code.slot().to_be_bytes();
    let (state, msg_inviter) = Spake2::<Ed25519Group>::start_a_with_rng(
        &Password::new(code.digits().as_bytes()),
        &Identity::new(&[INVITER_ID, RELAY.as_bytes(), &slot].concat()),
        &Identity::new(&[JOINER_ID, RELAY.as_bytes(), &slot].concat()),
        &mut *rng,
    );
    let shared = state.finish(&msg_joiner).unwrap();
    let mut transcript = Sha256::new();
    transcript.update(PAIRING_LABEL);
    for part in [&msg_inviter, &msg_joiner] {
        transcript.update((part.len() as u32).to_be_bytes());
        transcript.update(part);
    }
    let salt: [u8; 32] = transcript.finalize().into();
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), &shared);
    let expand = |label: &[u8]| {
        let mut out = [0u8; 32];
        hkdf.expand(label, &mut out).unwrap();
        out
    };
    let hello = codec::encode(&PairingMessage::InviterHello {
        pake: msg_inviter,
        confirm: expand(CONFIRM_INVITER_LABEL),
    });
    let (joiner, _request) = joiner
        .handle_inviter_hello(&hello, device, [0x5e; 32], "tablet")
        .unwrap();
    (joiner, expand(INVITER_KEY_LABEL))
}

/// Seals `plain` as the grant, under `key`.
fn sealed_grant(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(&Nonce::default(), plain)
        .unwrap();
    codec::encode(&PairingMessage::InviterGrant { sealed })
}

/// The grant of `user`'s epochs numbered `epochs`.
fn grant(key: &[u8; 32], user: UserId, epochs: &[u32]) -> Vec<u8> {
    let plain = codec::encode(&GrantWire {
        user,
        epochs: epochs.iter().map(|&n| (n, key_of(n))).collect(),
    });
    sealed_grant(key, &plain)
}

struct Setup {
    rng: ChaCha20Rng,
    device: DeviceKey,
    user: UserId,
}

fn setup(seed: u64) -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let device = DeviceKey::generate(&mut rng);
    let user = UserKey::generate(&mut rng).id();
    Setup { rng, device, user }
}

#[test]
fn a_grant_that_fits_is_accepted() {
    // The rogue inviter is faithful to the protocol: a grant that fits goes through.
    let mut s = setup(1);
    for epochs in [&[0][..], &[0, 1, 2, 3]] {
        let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
        let granted = joiner.handle_grant(&grant(&key, s.user, epochs)).unwrap();
        assert_eq!(granted.user, s.user);
        let got: Vec<(u32, [u8; 32])> = granted
            .epochs
            .iter()
            .map(|(n, key)| (*n, *key.bytes()))
            .collect();
        let want: Vec<(u32, [u8; 32])> = epochs.iter().map(|&n| (n, key_of(n))).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn a_grant_with_no_epoch_is_refused() {
    let mut s = setup(2);
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    assert_eq!(
        joiner.handle_grant(&grant(&key, s.user, &[])).err(),
        Some(PairingError::BadGrant("no data key"))
    );
}

#[test]
fn a_grant_whose_epochs_are_not_consecutive_from_zero_is_refused() {
    let mut s = setup(3);
    for epochs in [
        &[1][..],
        &[0, 2],
        &[0, 0],
        &[1, 0],
        &[0, 1, 3],
        &[0, 1, 2, 1],
        &[u32::MAX],
    ] {
        let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
        assert_eq!(
            joiner.handle_grant(&grant(&key, s.user, epochs)).err(),
            Some(PairingError::BadGrant("epochs are not 0, 1, 2…")),
            "{epochs:?}"
        );
    }
}

#[test]
fn a_grant_over_the_epoch_limit_is_refused_when_decoded() {
    let mut s = setup(4);
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let epochs: Vec<u32> = (0..=MAX_GRANT_EPOCHS as u32).collect();
    assert_eq!(
        joiner.handle_grant(&grant(&key, s.user, &epochs)).err(),
        Some(PairingError::from(DecodeError::FieldTooLarge {
            field: "grant epochs",
            len: MAX_GRANT_EPOCHS + 1,
            limit: MAX_GRANT_EPOCHS,
        }))
    );
}

#[test]
fn a_grant_carrying_more_than_documented_is_refused() {
    // Say a user key appended after the epochs: the joiner takes nothing it does not expect.
    let mut s = setup(5);
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let mut plain = codec::encode(&GrantWire {
        user: s.user,
        epochs: vec![(0, key_of(0))],
    });
    plain.extend_from_slice(&[0x11; 32]);
    assert_eq!(
        joiner.handle_grant(&sealed_grant(&key, &plain)).err(),
        Some(PairingError::from(DecodeError::TrailingBytes(32)))
    );
}

#[test]
fn a_grant_sealed_under_another_key_or_tampered_is_refused() {
    let mut s = setup(6);
    let (joiner, _) = rogue_inviter(&s.device, &mut s.rng);
    assert_eq!(
        joiner.handle_grant(&grant(&[7; 32], s.user, &[0])).err(),
        Some(PairingError::WrongCode)
    );
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let body = grant(&key, s.user, &[0, 1]);
    let PairingMessage::InviterGrant { mut sealed } = codec::decode(&body).unwrap() else {
        panic!("expected InviterGrant")
    };
    sealed[10] ^= 1;
    assert_eq!(
        joiner
            .handle_grant(&codec::encode(&PairingMessage::InviterGrant { sealed }))
            .err(),
        Some(PairingError::WrongCode)
    );
    let (joiner, _) = rogue_inviter(&s.device, &mut s.rng);
    let out_of_place = codec::encode(&PairingMessage::JoinerHello { pake: vec![1; 33] });
    assert!(matches!(
        joiner.handle_grant(&out_of_place),
        Err(PairingError::Unexpected(_))
    ));
}

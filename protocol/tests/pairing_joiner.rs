//! The joiner's side of pairing against an inviter that does not play by the rules.
//!
//! An honest inviter always grants a certificate it just issued with the user key it grants,
//! so the other pairing tests never reach the joiner's own checks of the grant. Here an
//! inviter that knows the code (it follows the documented key schedule, so every message
//! authenticates) grants keys that do not fit together. The joiner must refuse each grant:
//! a device that kept one would hold a certificate the relay refuses, or act for a user whose
//! key does not match its certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ferry_protocol::codec::{self, Wire};
use ferry_protocol::pairing::{
    CONFIRM_INVITER_LABEL, INVITER_ID, INVITER_KEY_LABEL, JOINER_ID, Joiner, JoinerAwaitGrant,
    PAIRING_LABEL, PairingCode, PairingError, PairingMessage,
};
use ferry_protocol::{DeviceCertificate, DeviceKey, IdentityError, RelayId, UserKey};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

const CODE: &str = "27-271828";
const RELAY: RelayId = RelayId([0x5a; 32]);
const NOW: u64 = 1_700_000_000;

/// What an inviter grants, as the protocol documents it (the crate's own type is private).
#[derive(Serialize, Deserialize)]
struct GrantWire {
    certificate: DeviceCertificate,
    user_secret: [u8; 32],
    data_key: [u8; 32],
}

impl Wire for GrantWire {}

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
        .handle_inviter_hello(&hello, device, "tablet")
        .unwrap();
    (joiner, expand(INVITER_KEY_LABEL))
}

fn grant(key: &[u8; 32], certificate: DeviceCertificate, user: &UserKey) -> Vec<u8> {
    let plain = codec::encode(&GrantWire {
        certificate,
        user_secret: *user.secret_bytes(),
        data_key: [0xd0; 32],
    });
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(&Nonce::default(), plain.as_slice())
        .unwrap();
    codec::encode(&PairingMessage::InviterGrant { sealed })
}

struct Setup {
    rng: ChaCha20Rng,
    device: DeviceKey,
    user: UserKey,
}

fn setup(seed: u64) -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let device = DeviceKey::generate(&mut rng);
    let user = UserKey::generate(&mut rng);
    Setup { rng, device, user }
}

#[test]
fn a_grant_that_fits_is_accepted() {
    // The rogue inviter is faithful to the protocol: a grant that fits goes through.
    let mut s = setup(1);
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let certificate = DeviceCertificate::issue(&s.user, s.device.id(), "tablet", NOW).unwrap();
    let granted = joiner
        .handle_grant(&grant(&key, certificate.clone(), &s.user))
        .unwrap();
    assert_eq!(granted.certificate, certificate);
    assert_eq!(granted.user_key.id(), s.user.id());
    assert_eq!(granted.data_key.bytes(), &[0xd0; 32]);
}

#[test]
fn a_certificate_for_another_device_is_refused() {
    let mut s = setup(2);
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let other = DeviceKey::generate(&mut s.rng).id();
    let certificate = DeviceCertificate::issue(&s.user, other, "tablet", NOW).unwrap();
    assert_eq!(
        joiner
            .handle_grant(&grant(&key, certificate, &s.user))
            .err(),
        Some(PairingError::BadGrant("certificate is for another device"))
    );
}

#[test]
fn a_certificate_from_another_user_than_the_granted_key_is_refused() {
    let mut s = setup(3);
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    // Valid, for this device, but by a user key other than the one granted.
    let other_user = UserKey::generate(&mut s.rng);
    let certificate = DeviceCertificate::issue(&other_user, s.device.id(), "tablet", NOW).unwrap();
    assert_eq!(
        joiner
            .handle_grant(&grant(&key, certificate, &s.user))
            .err(),
        Some(PairingError::BadGrant(
            "certificate is not signed by the granted user key"
        ))
    );
}

#[test]
fn a_certificate_the_granted_user_key_did_not_sign_is_refused() {
    let mut s = setup(4);
    // Signed by another key, relabelled as the granted user's.
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let mallory = UserKey::generate(&mut s.rng);
    let mut forged = DeviceCertificate::issue(&mallory, s.device.id(), "tablet", NOW).unwrap();
    forged.user = s.user.id();
    assert_eq!(
        joiner.handle_grant(&grant(&key, forged, &s.user)).err(),
        Some(PairingError::Identity(IdentityError::BadSignature))
    );
    // Signed by the granted key, then altered.
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let mut renamed = DeviceCertificate::issue(&s.user, s.device.id(), "tablet", NOW).unwrap();
    renamed.name = "phone".to_owned();
    assert_eq!(
        joiner.handle_grant(&grant(&key, renamed, &s.user)).err(),
        Some(PairingError::Identity(IdentityError::BadSignature))
    );
}

#[test]
fn a_grant_sealed_under_another_key_or_tampered_is_refused() {
    let mut s = setup(5);
    let certificate = DeviceCertificate::issue(&s.user, s.device.id(), "tablet", NOW).unwrap();
    let (joiner, _) = rogue_inviter(&s.device, &mut s.rng);
    assert_eq!(
        joiner
            .handle_grant(&grant(&[7; 32], certificate.clone(), &s.user))
            .err(),
        Some(PairingError::WrongCode)
    );
    let (joiner, key) = rogue_inviter(&s.device, &mut s.rng);
    let body = grant(&key, certificate, &s.user);
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

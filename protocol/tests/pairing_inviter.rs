//! The inviter's side of pairing against joiners that do not play by the rules.
//!
//! The honest joiner checks the inviter's proof and stops on a wrong code before it sends
//! anything sealed, so the other pairing tests never reach the inviter's own checks. These
//! tests send the inviter a `JoinerRequest` anyway: from a joiner that typed a wrong code and
//! ignores its own check, and from one (or a relay in the middle) that tampers with the
//! request. The inviter must refuse every one with an error, which means nothing to admit to
//! the device chain and no grant: the data keys stay on the inviter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ferry_protocol::codec;
use ferry_protocol::pairing::{
    CONFIRM_INVITER_LABEL, CONFIRM_JOINER_LABEL, Inviter, InviterAwaitRequest, JOINER_ID,
    JOINER_KEY_LABEL, JoinRequest, Joiner, PAIRING_LABEL, PairingCode, PairingError,
    PairingMessage,
};
use ferry_protocol::{DeviceId, DeviceKey, RelayId};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

/// The exchange key every joiner here asks to be admitted with.
const EXCHANGE: [u8; 32] = [0x5e; 32];
const RELAY: RelayId = RelayId([0x5a; 32]);

/// Step 3 on the inviter: `Ok` means the request was accepted (the inviter would admit the
/// device to the chain and grant it the data keys); the device it would admit.
fn answer(inviter: InviterAwaitRequest, request: &[u8]) -> Result<DeviceId, PairingError> {
    inviter
        .handle_joiner_request(request)
        .map(|(request, _ready)| request.device)
}

/// A joiner that follows the documented key schedule but skips every check of its own: it
/// sends a well-formed `JoinerRequest` whatever the inviter proved.
struct RogueJoiner {
    state: Spake2<Ed25519Group>,
    message: Vec<u8>,
}

/// The keys a rogue joiner derived, and the request it sends.
struct RogueRequest {
    confirm_inviter: [u8; 32],
    confirm_joiner: [u8; 32],
    joiner_to_inviter: [u8; 32],
    body: Vec<u8>,
}

impl RogueJoiner {
    fn start(code: &str, rng: &mut ChaCha20Rng) -> (Self, Vec<u8>) {
        let code = PairingCode::parse(code).unwrap();
        // The identities as documented: role ‖ relay key ‖ be16(slot).
        let slot = code.slot().to_be_bytes();
        let (state, message) = Spake2::<Ed25519Group>::start_b_with_rng(
            &Password::new(code.digits().as_bytes()),
            &Identity::new(
                &[ferry_protocol::pairing::INVITER_ID, RELAY.as_bytes(), &slot].concat(),
            ),
            &Identity::new(&[JOINER_ID, RELAY.as_bytes(), &slot].concat()),
            &mut *rng,
        );
        let hello = codec::encode(&PairingMessage::JoinerHello {
            pake: message.clone(),
        });
        (Self { state, message }, hello)
    }

    /// Reads the inviter's hello and, without checking its proof, seals a request for
    /// `device`.
    fn request(self, inviter_hello: &[u8], device: DeviceId) -> RogueRequest {
        let PairingMessage::InviterHello { pake, .. } = codec::decode(inviter_hello).unwrap()
        else {
            panic!("expected InviterHello")
        };
        let shared = self.state.finish(&pake).unwrap();
        let mut transcript = Sha256::new();
        transcript.update(PAIRING_LABEL);
        for part in [&pake, &self.message] {
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
        let confirm_joiner = expand(CONFIRM_JOINER_LABEL);
        let joiner_to_inviter = expand(JOINER_KEY_LABEL);
        let plain = codec::encode(&JoinRequest {
            device,
            exchange: EXCHANGE,
            name: "rogue".to_owned(),
        });
        let body = codec::encode(&PairingMessage::JoinerRequest {
            confirm: confirm_joiner,
            sealed: seal(&joiner_to_inviter, &plain),
        });
        RogueRequest {
            confirm_inviter: expand(CONFIRM_INVITER_LABEL),
            confirm_joiner,
            joiner_to_inviter,
            body,
        }
    }
}

fn seal(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(&Nonce::default(), plain)
        .unwrap()
}

/// Runs steps 1–2 with a rogue joiner that typed `typed` while the inviter holds `code`.
fn rogue_run(
    code: &str,
    typed: &str,
    rng: &mut ChaCha20Rng,
) -> (InviterAwaitRequest, RogueRequest, DeviceId) {
    let inviter = Inviter::start(&PairingCode::parse(code).unwrap(), &RELAY, rng);
    let (rogue, hello) = RogueJoiner::start(typed, rng);
    let (inviter, reply) = inviter.handle_joiner_hello(&hello).unwrap();
    let device = DeviceKey::generate(rng).id();
    (inviter, rogue.request(&reply, device), device)
}

/// Runs steps 1–3 with an honest joiner that typed the right code: the request is valid.
fn honest_run(rng: &mut ChaCha20Rng) -> (InviterAwaitRequest, Vec<u8>, DeviceId) {
    let code = PairingCode::parse("48-482913").unwrap();
    let inviter = Inviter::start(&code, &RELAY, rng);
    let (joiner, hello) = Joiner::start(&code, &RELAY, rng);
    let (inviter, reply) = inviter.handle_joiner_hello(&hello).unwrap();
    let device = DeviceKey::generate(rng);
    let (_, request) = joiner
        .handle_inviter_hello(&reply, &device, EXCHANGE, "tablet")
        .unwrap();
    (inviter, request, device.id())
}

fn parts(request: &[u8]) -> ([u8; 32], Vec<u8>) {
    match codec::decode(request).unwrap() {
        PairingMessage::JoinerRequest { confirm, sealed } => (confirm, sealed),
        other => panic!("expected JoinerRequest, got {other:?}"),
    }
}

fn request(confirm: [u8; 32], sealed: Vec<u8>) -> Vec<u8> {
    codec::encode(&PairingMessage::JoinerRequest { confirm, sealed })
}

#[test]
fn the_rogue_joiner_follows_the_key_schedule_so_with_the_right_code_it_is_admitted() {
    // The control for the tests below: the rogue joiner builds requests exactly as the
    // protocol does, so when the inviter refuses it, the code (or the tampering) is why.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (inviter, rogue, device) = rogue_run("48-482913", "48-482913", &mut rng);
    assert_eq!(answer(inviter, &rogue.body), Ok(device));
}

#[test]
fn the_inviter_learns_exactly_the_device_exchange_key_and_name_it_will_admit() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let (inviter, honest, device) = honest_run(&mut rng);
    let (request, ready) = inviter.handle_joiner_request(&honest).unwrap();
    assert_eq!(
        request,
        JoinRequest {
            device,
            exchange: EXCHANGE,
            name: "tablet".to_owned(),
        }
    );
    // Nothing is granted yet: the grant is a separate step, after the Admit link.
    assert!(format!("{ready:?}").starts_with("InviterReady"));
}

#[test]
fn a_joiner_with_a_wrong_code_that_ignores_its_own_check_gets_no_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    // Same slot (so the relay routes it to the inviter), other digits; one digit off; and
    // the code with its halves swapped.
    for typed in [
        "48-482000",
        "48-482914",
        "48-482912",
        "48-913482",
        "48-000000",
    ] {
        let (inviter, rogue, _) = rogue_run("48-482913", typed, &mut rng);
        assert_eq!(
            answer(inviter, &rogue.body),
            Err(PairingError::WrongCode),
            "typed {typed}"
        );
    }
}

#[test]
fn a_wrong_code_confirmation_is_refused_even_with_a_valid_sealed_request() {
    // A relay in the middle runs a wrong-code joiner of its own and splices its confirmation
    // onto a valid sealed request: the confirmation alone must stop it.
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (_, wrong, _) = rogue_run("48-482913", "48-482914", &mut rng);
    let (inviter, right, _) = rogue_run("48-482913", "48-482913", &mut rng);
    let (_, sealed) = parts(&right.body);
    assert_eq!(
        answer(inviter, &request(wrong.confirm_joiner, sealed)),
        Err(PairingError::WrongCode)
    );
}

#[test]
fn a_wrong_confirmation_is_refused_even_when_the_sealed_request_is_valid() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    // One bit of the confirmation flipped, in every byte.
    for byte in 0..32 {
        let (inviter, honest, _) = honest_run(&mut rng);
        let (mut confirm, sealed) = parts(&honest);
        confirm[byte] ^= 1 << (byte % 8);
        assert_eq!(
            answer(inviter, &request(confirm, sealed)),
            Err(PairingError::WrongCode),
            "byte {byte} flipped"
        );
    }
    // All zeros, and the inviter's own proof reflected back at it (a relay that does not
    // know the code has seen `confirm_a` go by).
    let (inviter, honest, _) = honest_run(&mut rng);
    let (_, sealed) = parts(&honest);
    assert_eq!(
        answer(inviter, &request([0; 32], sealed)),
        Err(PairingError::WrongCode)
    );
    let (inviter, rogue, _) = rogue_run("48-482913", "48-482913", &mut rng);
    let (_, sealed) = parts(&rogue.body);
    assert_ne!(rogue.confirm_inviter, rogue.confirm_joiner);
    assert_eq!(
        answer(inviter, &request(rogue.confirm_inviter, sealed)),
        Err(PairingError::WrongCode)
    );
}

#[test]
fn a_tampered_or_forged_request_is_refused_even_with_the_right_confirmation() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);

    // Every byte of the sealed request flipped in turn (device id, name and tag alike): a
    // relay in the middle cannot redirect the certificate to a key of its own.
    let (_, honest, _) = honest_run(&mut rng);
    let sealed_len = parts(&honest).1.len();
    assert!(
        sealed_len > 32 + 16,
        "the request holds a device id and a tag"
    );
    for byte in 0..sealed_len {
        let (inviter, honest, _) = honest_run(&mut rng);
        let (confirm, mut sealed) = parts(&honest);
        sealed[byte] ^= 0x80;
        assert_eq!(
            answer(inviter, &request(confirm, sealed)),
            Err(PairingError::WrongCode),
            "byte {byte} of {sealed_len} flipped"
        );
    }

    // Shapes a hostile joiner or relay might send with the right confirmation.
    let attacker_device = DeviceKey::generate(&mut rng).id();
    let attacker_plain = codec::encode(&JoinRequest {
        device: attacker_device,
        exchange: [0xa7; 32],
        name: "attacker".to_owned(),
    });
    let mut other_key = [0u8; 32];
    rng.fill_bytes(&mut other_key);
    type Forge<'a> = Box<dyn Fn(&[u8]) -> Vec<u8> + 'a>;
    let forgeries: Vec<(&str, Forge)> = vec![
        ("empty", Box::new(|_| Vec::new())),
        ("tag only", Box::new(|s| s[s.len() - 16..].to_vec())),
        ("truncated", Box::new(|s| s[..s.len() - 1].to_vec())),
        (
            "extended",
            Box::new(|s| {
                let mut s = s.to_vec();
                s.push(0);
                s
            }),
        ),
        ("unsealed request", Box::new(|_| attacker_plain.clone())),
        (
            "sealed under another key",
            Box::new(|_| seal(&other_key, &attacker_plain)),
        ),
        (
            "garbage",
            Box::new(|s| {
                let mut g = vec![0u8; s.len()];
                ChaCha20Rng::seed_from_u64(6).fill_bytes(&mut g);
                g
            }),
        ),
    ];
    for (what, forge) in &forgeries {
        let (inviter, honest, _) = honest_run(&mut rng);
        let (confirm, sealed) = parts(&honest);
        let refused = answer(inviter, &request(confirm, forge(&sealed)));
        assert!(refused.is_err(), "{what}: {refused:?}");
        assert_ne!(refused, Ok(attacker_device), "{what}");
    }

    // The attacker's request sealed under the session's own key needs the code: a rogue
    // joiner with the right code is admitted (the control above), with a wrong one not.
    let (inviter, rogue, _) = rogue_run("48-482913", "48-482913", &mut rng);
    let forged = request(
        rogue.confirm_joiner,
        seal(&rogue.joiner_to_inviter, &attacker_plain),
    );
    assert_eq!(answer(inviter, &forged), Ok(attacker_device));
}

#[test]
fn a_request_from_another_pairing_is_refused() {
    // Replayed from an earlier pairing with the same code: both the confirmation and the
    // sealing key are fresh in every run.
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (_, earlier, _) = honest_run(&mut rng);
    let (inviter, _, _) = honest_run(&mut rng);
    assert_eq!(answer(inviter, &earlier), Err(PairingError::WrongCode));
    // The confirmation of this run with the sealed request of the earlier one.
    let (_, earlier, _) = honest_run(&mut rng);
    let (inviter, now, _) = honest_run(&mut rng);
    let (confirm, _) = parts(&now);
    let (_, sealed) = parts(&earlier);
    assert_eq!(
        answer(inviter, &request(confirm, sealed)),
        Err(PairingError::WrongCode)
    );
}

#[test]
fn messages_out_of_place_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let (_, honest, _) = honest_run(&mut rng);
    let (confirm, sealed) = parts(&honest);
    let out_of_place = [
        Vec::new(),
        vec![0xff; 64],
        codec::encode(&PairingMessage::JoinerHello { pake: vec![0; 33] }),
        codec::encode(&PairingMessage::InviterHello {
            pake: vec![0; 33],
            confirm,
        }),
        codec::encode(&PairingMessage::InviterGrant { sealed }),
    ];
    for body in out_of_place {
        let (inviter, _, _) = honest_run(&mut rng);
        let refused = answer(inviter, &body);
        assert!(
            matches!(refused, Err(PairingError::Unexpected(_))),
            "{body:?}: {refused:?}"
        );
    }
}

//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each takes arbitrary
//! bytes and must never panic. They live here so the fuzzers exercise exactly the code
//! production runs.

use std::sync::OnceLock;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey};

use crate::chain::{Chain, ChainError, EpochKeys, Link, LinkBody, SealedKey, Signer, SigningKey};
use crate::channel::Encoded;
use crate::epoch::ExchangeSecret;
use crate::handshake::{
    AuthBody, ClientAuth, ClientHandshake, ClientHello, ClientStart, Credentials, HandshakeError,
    ServerHandshake, ServerHandshakeMessage, ServerHello, ServerHelloBody, SessionEstablished,
    SessionStart, keys,
};
use crate::pairing::{Inviter, JoinRequest, Joiner, PairingCode};
use crate::seal::DataKey;
use crate::{
    ChannelError, ClientChannel, ClientFrame, DeviceId, DeviceKey, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, RelayKey, ServerChannel, ServerFrame, UserId, UserKey, codec,
};

/// Decodes `data` as every message type a peer accepts.
pub fn decode_frames(data: &[u8]) {
    let _ = codec::decode::<ClientFrame>(data);
    let _ = codec::decode::<ServerFrame>(data);
    let _ = codec::decode::<ClientHello>(data);
    let _ = codec::decode::<ServerHandshakeMessage>(data);
    let _ = codec::decode::<ClientStart>(data);
    let _ = codec::decode::<SessionStart>(data);
    let _ = codec::decode::<AuthBody>(data);
    let _ = codec::decode::<Link>(data);
    let _ = codec::decode::<crate::pairing::PairingMessage>(data);
    let _ = codec::decode::<JoinRequest>(data);
}

/// Drives the relay side of the handshake with `data`, four ways:
/// 1. the first byte splits the rest into a `ClientHello` and an encrypted `ClientStart`;
/// 2. after a genuine `ClientHello`, `data` is the encrypted `ClientStart`;
/// 3. after a genuine `ClientHello`, `data` is sealed under the real key as the `ClientStart`
///    plaintext, so `AuthBody` decoding and the transcript signature check are reached;
/// 4. after a genuine `ClientHello`, an `AuthBody` that a fixed device key signs over the real
///    transcript, so the user proof check is reached: the first byte picks the user (bit 0:
///    32 bytes of `data`, else the fixed user) and the proof (`(byte >> 1) % 4`: none, the
///    fixed user key's genuine proof, its proof for another device, or 64 bytes of `data`).
///
/// Panics if mode 4's verdict is not: accepted (`user_proven` exactly when a proof was sent)
/// when there is no proof or the proof is the genuine one for the claimed user and device,
/// and refused with `BadUserProof` otherwise.
pub fn server_handshake(data: &[u8]) {
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let relay = RelayKey::generate(&mut rng);
    let user = UserKey::generate(&mut rng);
    let device = DeviceKey::generate(&mut rng);
    let other_device = DeviceKey::generate(&mut rng).id();

    if let Some((&split, rest)) = data.split_first() {
        let (hello, start) = rest.split_at((split as usize).min(rest.len()));
        if let Ok((server, _)) = ServerHandshake::handle_client_hello(&relay, hello, &mut rng) {
            let _ = server.handle_client_start(start);
        }
    }

    let (_, hello) = ClientHandshake::start(relay.id(), &mut rng);
    if let Ok((server, _)) = ServerHandshake::handle_client_hello(&relay, &hello, &mut rng) {
        let _ = server.handle_client_start(data);
    }

    let (client, hello) = ClientHandshake::start(relay.id(), &mut rng);
    if let Ok((server, server_hello)) =
        ServerHandshake::handle_client_hello(&relay, &hello, &mut rng)
        && let Some(sealed) = client.seal_raw_start(&server_hello, data)
    {
        let _ = server.handle_client_start(&sealed);
    }

    let mut input = Input(data);
    let choice = input.byte();
    let claimed = if choice & 1 == 0 {
        user.id()
    } else {
        let mut id = [0u8; 32];
        id.iter_mut().for_each(|b| *b = input.byte());
        UserId(id)
    };
    let (client, hello) = ClientHandshake::start(relay.id(), &mut rng);
    let Ok((server, server_hello)) = ServerHandshake::handle_client_hello(&relay, &hello, &mut rng)
    else {
        panic!("the relay refused a genuine ClientHello")
    };
    let Ok(ServerHandshakeMessage::Hello(signed)) = codec::decode(&server_hello) else {
        panic!("the relay's ServerHello does not decode")
    };
    let transcript = keys::transcript_hash(&hello, &signed.body);
    let proof_for = |device: &DeviceId| {
        user.sign(
            keys::USER_PROOF_LABEL,
            &keys::user_proof_message(&transcript, device),
        )
    };
    let genuine = proof_for(&device.id());
    let user_proof = match (choice >> 1) % 4 {
        0 => None,
        1 => Some(genuine),
        2 => Some(proof_for(&other_device)),
        _ => {
            let mut proof = [0u8; 64];
            proof.iter_mut().for_each(|b| *b = input.byte());
            Some(proof)
        }
    };
    let body = codec::encode(&AuthBody {
        user: claimed,
        device: device.id(),
        resume: Some(input.u64()),
        user_proof,
    });
    let signature = device.sign(
        keys::CLIENT_SIGNATURE_LABEL,
        &keys::client_signed_message(&transcript, &body),
    );
    let start = codec::encode(&ClientStart::Auth(ClientAuth { body, signature }));
    let Some(sealed) = client.seal_raw_start(&server_hello, &start) else {
        panic!("a genuine ServerHello was refused")
    };
    let valid = user_proof.is_none_or(|proof| claimed == user.id() && proof == genuine);
    match server.handle_client_start(&sealed) {
        Ok(pending) => {
            assert!(valid, "a user proof that does not verify was accepted");
            let Some(auth) = pending.auth() else {
                panic!("a device's ClientStart opened an anonymous session")
            };
            assert_eq!(auth.user_proven, user_proof.is_some());
            assert_eq!((auth.user, auth.device), (claimed, device.id()));
        }
        Err(failure) => {
            assert!(!valid, "a genuine ClientStart was refused: {failure:?}");
            assert_eq!(failure.error, HandshakeError::BadUserProof);
        }
    }
}

/// Opens `data` as a sequence of channel frames (each prefixed by a one-byte length) on both
/// ends of a real channel, after a genuine handshake.
pub fn channel_open(data: &[u8]) {
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let relay = RelayKey::generate(&mut rng);
    let (client, hello) = ClientHandshake::start(relay.id(), &mut rng);
    let Ok((server, server_hello)) = ServerHandshake::handle_client_hello(&relay, &hello, &mut rng)
    else {
        return;
    };
    let Ok((client, start)) = client.handle_server_hello(&server_hello, Credentials::Anonymous)
    else {
        return;
    };
    let Ok(pending) = server.handle_client_start(&start) else {
        return;
    };
    let (mut server_channel, established) = pending.accept(0, 0);
    let Ok((_, mut client_channel)) = client.handle_session(&established) else {
        return;
    };

    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (frame, tail) = tail.split_at((len as usize).min(tail.len()));
        let _ = server_channel.open(frame);
        let _ = client_channel.open(frame);
        rest = tail;
    }
}

/// Reads the fuzzer's bytes as a sequence of small decisions and chunks. Running out of input
/// gives zeros and empty chunks, so every input is a complete scenario.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.byte();
        }
        u64::from_le_bytes(bytes)
    }

    /// A chunk prefixed by its length (two bytes, little-endian), cut to what is left.
    fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16()).min(self.0.len());
        let (chunk, rest) = self.0.split_at(len);
        self.0 = rest;
        chunk
    }
}

/// Randomness derived from the whole input: deterministic (a crash replays), yet different for
/// every input, so a fuzzer can never replay a genuine message of one run into another run
/// (which in a fixed-seed world would look like forging, and is not).
fn rng_for(data: &[u8], party: u8) -> ChaCha20Rng {
    let mut hash = Sha256::new();
    hash.update([party]);
    hash.update(data);
    ChaCha20Rng::from_seed(hash.finalize().into())
}

/// The secret digits of every pairing run's code (`482-482913`).
const PAIRING_CODE: u32 = 482_913;
/// The slot of every pairing run: public, the relay routes by it.
const PAIRING_SLOT: u16 = 482;
/// The relay's key, which both devices bind into their SPAKE2 identities.
const PAIRING_RELAY: crate::RelayId = crate::RelayId([0x5e; 32]);
/// Wrong codes and the relay's guesses are drawn from the 1000 codes around the right one, so
/// the fuzzer hits the right code often enough to exercise what follows.
const GUESSES: u32 = 1000;

fn pairing_code(n: u32) -> PairingCode {
    match PairingCode::parse(&format!("{PAIRING_SLOT}-{n:06}")) {
        Ok(code) => code,
        Err(_) => unreachable!("a slot and six digits always parse"),
    }
}

/// Keys that do not depend on the input, made once.
struct PairingWorld {
    /// The inviter's user and the data keys of its epochs 0 and 1.
    user: UserId,
    data: [DataKey; 2],
    /// The honest joiner's new device and its exchange key.
    joiner_device: DeviceKey,
    joiner_exchange: [u8; 32],
    /// What a relay in the middle uses for its own joiner and its own inviter.
    relay_device: DeviceKey,
    relay_exchange: [u8; 32],
    relay_user: UserId,
    relay_data: DataKey,
}

fn pairing_world() -> &'static PairingWorld {
    static WORLD: OnceLock<PairingWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        PairingWorld {
            user: UserKey::generate(&mut rng).id(),
            data: [DataKey::generate(&mut rng), DataKey::generate(&mut rng)],
            joiner_device: DeviceKey::generate(&mut rng),
            joiner_exchange: ExchangeSecret::generate(&mut rng).public(),
            relay_device: DeviceKey::generate(&mut rng),
            relay_exchange: ExchangeSecret::generate(&mut rng).public(),
            relay_user: UserKey::generate(&mut rng).id(),
            relay_data: DataKey::generate(&mut rng),
        }
    })
}

/// Runs a pairing between an honest inviter (code [`PAIRING_CODE`]) and an honest joiner
/// (that code, or another one of the same slot: one of [`GUESSES`] around it) through a relay the fuzzer controls. At each
/// of the four steps the relay delivers (choice byte % 3): 0 the genuine message, 1 a message
/// of its own (it runs its own joiner and its own inviter with a guessed code of the slot, one of [`GUESSES`]), or
/// 2 arbitrary bytes.
///
/// Panics if the inviter accepts a request (and so would admit the device to the chain and
/// grant it the data keys) from a device whose owner did not know the code, or reads another
/// exchange key or name than that device sent; if the joiner accepts a grant from anyone who
/// did not know the code it typed; or if an undisturbed pairing with the right code fails.
///
/// Input: `flags` (bit 0: the joiner typed a wrong code, then two bytes pick it; bit 1: the
/// joiner's device name is a chunk), two bytes for the relay's guess, then per step a choice
/// byte followed by a chunk when the choice is 2.
pub fn pairing(data: &[u8]) {
    let world = pairing_world();
    let mut input = Input(data);
    let guess_base = PAIRING_CODE - PAIRING_CODE % GUESSES;
    let flags = input.byte();
    let joiner_n = if flags & 1 == 0 {
        PAIRING_CODE
    } else {
        guess_base + u32::from(input.u16()) % GUESSES
    };
    let guess_n = guess_base + u32::from(input.u16()) % GUESSES;
    let name_bytes = if flags & 2 == 0 {
        &b"tablet"[..]
    } else {
        input.chunk()
    };
    let name = String::from_utf8_lossy(name_bytes);
    // Who knows which code: the honest joiner knows what it typed, the relay its guess.
    let joiner_knows_code = joiner_n == PAIRING_CODE;
    let relay_knows_code = guess_n == PAIRING_CODE;
    let relay_knows_joiner_code = guess_n == joiner_n;

    let relay = &PAIRING_RELAY;
    let inviter = Inviter::start(&pairing_code(PAIRING_CODE), relay, &mut rng_for(data, 1));
    let (joiner, joiner_hello) =
        Joiner::start(&pairing_code(joiner_n), relay, &mut rng_for(data, 2));
    let mut undisturbed = true;

    // Step 1, to the inviter: the joiner's hello.
    let mut relay_joiner = None;
    let step1 = input.byte() % 3;
    let inviter = match step1 {
        0 => inviter.handle_joiner_hello(&joiner_hello),
        1 => {
            undisturbed = false;
            let (own, hello) = Joiner::start(&pairing_code(guess_n), relay, &mut rng_for(data, 3));
            relay_joiner = Some(own);
            inviter.handle_joiner_hello(&hello)
        }
        _ => {
            undisturbed = false;
            inviter.handle_joiner_hello(input.chunk())
        }
    }
    .ok();

    // Step 2, to the joiner: the inviter's hello. The relay's own inviter answers the
    // joiner's genuine hello.
    let inviter_hello = inviter.as_ref().map(|(_, hello)| hello.clone());
    let mut relay_inviter = None;
    let step2 = input.byte() % 3;
    let body = match step2 {
        0 => inviter_hello.clone(),
        1 => {
            undisturbed = false;
            let own = Inviter::start(&pairing_code(guess_n), relay, &mut rng_for(data, 4));
            match own.handle_joiner_hello(&joiner_hello) {
                Ok((own, hello)) => {
                    relay_inviter = Some(own);
                    Some(hello)
                }
                Err(e) => panic!("a genuine JoinerHello was refused: {e}"),
            }
        }
        _ => {
            undisturbed = false;
            Some(input.chunk().to_vec())
        }
    };
    let joiner = body.and_then(|body| {
        joiner
            .handle_inviter_hello(&body, &world.joiner_device, world.joiner_exchange, &name)
            .ok()
    });
    if joiner.is_some() {
        // The hello proves its sender shared this joiner's SPAKE2 run and knew its code.
        let from_inviter = step2 == 0 && step1 == 0 && joiner_knows_code;
        let from_relay = step2 == 1 && relay_knows_joiner_code;
        assert!(
            from_inviter || from_relay,
            "the joiner accepted an InviterHello from someone who did not know its code"
        );
    }
    if let (Some((inviter, _)), Some((joiner, _))) = (&inviter, &joiner)
        && undisturbed
    {
        assert_eq!(inviter.confirmation(), joiner.confirmation());
    }

    // Step 3, to the inviter: the joiner's request. The relay's own joiner answers the
    // inviter's genuine hello; the relay's own inviter reads the joiner's request.
    let joiner_request = joiner.as_ref().map(|(_, request)| request.clone());
    let relay_grant = match (relay_inviter, &joiner_request) {
        (Some(own), Some(request)) => own
            .handle_joiner_request(request)
            .ok()
            .map(|(_, ready)| ready.grant(world.relay_user, &[(0, &world.relay_data)])),
        _ => None,
    };
    let body = match input.byte() % 3 {
        0 => joiner_request,
        1 => {
            undisturbed = false;
            match (relay_joiner, &inviter_hello) {
                (Some(own), Some(hello)) => own
                    .handle_inviter_hello(hello, &world.relay_device, world.relay_exchange, "relay")
                    .ok()
                    .map(|(_, request)| request),
                _ => None,
            }
        }
        _ => {
            undisturbed = false;
            Some(input.chunk().to_vec())
        }
    };
    let grant = match (inviter, body) {
        (Some((inviter, _)), Some(body)) => {
            match inviter.handle_joiner_request(&body) {
                Ok((request, ready)) => {
                    let honest = request.device == world.joiner_device.id() && joiner_knows_code;
                    let guessed = request.device == world.relay_device.id() && relay_knows_code;
                    assert!(
                        honest || guessed,
                        "the inviter would admit {} without proof of the code",
                        request.device
                    );
                    if honest {
                        assert_eq!(
                            (request.exchange, request.name.as_str()),
                            (world.joiner_exchange, &*name)
                        );
                    } else {
                        assert_eq!(
                            (request.exchange, request.name.as_str()),
                            (world.relay_exchange, "relay")
                        );
                    }
                    // (An inviter appends the Admit link here, then grants.)
                    Some(ready.grant(world.user, &[(0, &world.data[0]), (1, &world.data[1])]))
                }
                Err(_) => None,
            }
        }
        _ => None,
    };

    // Step 4, to the joiner: the grant.
    let body = match input.byte() % 3 {
        0 => grant,
        1 => {
            undisturbed = false;
            relay_grant
        }
        _ => {
            undisturbed = false;
            Some(input.chunk().to_vec())
        }
    };
    let paired = match (joiner, body) {
        (Some((joiner, _)), Some(body)) => joiner.handle_grant(&body).ok(),
        _ => None,
    };
    if let Some(grant) = &paired {
        let keys: Vec<[u8; 32]> = grant.epochs.iter().map(|(_, key)| *key.bytes()).collect();
        let from_inviter = grant.user == world.user
            && keys == [*world.data[0].bytes(), *world.data[1].bytes()]
            && joiner_knows_code;
        let from_relay = grant.user == world.relay_user
            && keys == [*world.relay_data.bytes()]
            && relay_knows_joiner_code;
        assert!(
            from_inviter || from_relay,
            "the joiner accepted a grant from someone who did not know its code"
        );
        assert!(
            grant
                .epochs
                .iter()
                .enumerate()
                .all(|(i, (epoch, _))| *epoch as usize == i),
            "the joiner accepted epochs that are not 0, 1, 2…"
        );
    }
    if undisturbed && joiner_knows_code && crate::check_device_name(&name).is_ok() {
        assert!(
            paired.is_some(),
            "an undisturbed pairing with the right code failed"
        );
    }
}

/// Keys that do not depend on the input, made once.
struct ClientWorld {
    relay: RelayKey,
    other_relay: RelayKey,
    device: DeviceKey,
    user: UserId,
}

fn client_world() -> &'static ClientWorld {
    static WORLD: OnceLock<ClientWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let relay = RelayKey::generate(&mut rng);
        let other_relay = RelayKey::generate(&mut rng);
        let user = UserKey::generate(&mut rng).id();
        let device = DeviceKey::generate(&mut rng);
        ClientWorld {
            relay,
            other_relay,
            device,
            user,
        }
    })
}

/// The relay signature an honest relay would put on `body` after `client_hello`.
fn sign_server_hello(relay: &RelayKey, client_hello: &[u8], body: Vec<u8>) -> Vec<u8> {
    let transcript = keys::transcript_hash(client_hello, &body);
    let signature = relay.sign(keys::SERVER_SIGNATURE_LABEL, &transcript);
    codec::encode(&ServerHandshakeMessage::Hello(ServerHello {
        body,
        signature,
    }))
}

/// Drives the client side of the handshake, and then the client's receive half, with a relay
/// the fuzzer controls. `flags` (first byte): bit 0 device credentials (else anonymous),
/// bit 1 a resume cursor (8 bytes follow), bits 2–3 the mode:
/// - 0: a chunk as the `ServerHello` (must be refused: nothing in it is signed for this run);
/// - 1: a chunk as the `ServerHelloBody`, correctly signed by the pinned relay key, so body
///   decoding, the relay key check, the version check and the low-order key check are
///   reached;
/// - 2: a relay emulated here (same key schedule) with a chosen version (bit 4), the wrong
///   relay key (bit 5), a signature by another key (bit 6) or a flipped signature byte
///   (bit 7); then `head`, `acked`, `last_device_seq` and `chain_seqno` (8 bytes each) and a
///   `SessionStart`
///   (a choice byte: 0 genuine, 1 wrong session id, 2 a chunk sealed as its plaintext, 3 a
///   chunk as its ciphertext), then server frames;
/// - 3: the real relay code (`ServerHandshake`), then `head` and `acked` (8 bytes each) and a
///   genuine or arbitrary (choice byte bit 0: a chunk) `SessionStart`, then server frames.
///
/// Server frames are a sequence of a choice byte and a chunk (see [`client_frames`]).
pub fn client_handshake(data: &[u8]) {
    let world = client_world();
    let mut rng = rng_for(data, 0);
    let mut input = Input(data);
    let flags = input.byte();
    let resume = (flags & 2 != 0).then(|| input.u64());
    let device = flags & 1 != 0;
    let credentials = || {
        if device {
            Credentials::Device {
                key: &world.device,
                user: world.user,
                resume,
                recovery: None,
            }
        } else {
            Credentials::Anonymous
        }
    };
    let (client, hello) = ClientHandshake::start(world.relay.id(), &mut rng);

    match (flags >> 2) & 3 {
        0 => {
            let result = client.handle_server_hello(input.chunk(), credentials());
            assert!(result.is_err(), "an unsigned ServerHello was accepted");
        }
        1 => {
            let body = input.chunk();
            let wire = sign_server_hello(&world.relay, &hello, body.to_vec());
            let result = client.handle_server_hello(&wire, credentials());
            let decoded = codec::decode::<ServerHelloBody>(body);
            match &result {
                Ok(_) => {
                    let Ok(decoded) = decoded else {
                        panic!("an undecodable ServerHelloBody was accepted")
                    };
                    assert_eq!(decoded.relay, world.relay.id());
                    assert!((MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&decoded.version));
                }
                Err(HandshakeError::BadRelaySignature) => {
                    panic!("a genuine relay signature was refused")
                }
                Err(_) => {}
            }
        }
        2 => {
            let version = if flags & 0x10 != 0 {
                input.u16()
            } else {
                PROTOCOL_VERSION
            };
            let relay_id = if flags & 0x20 != 0 {
                world.other_relay.id()
            } else {
                world.relay.id()
            };
            let signer = if flags & 0x40 != 0 {
                &world.other_relay
            } else {
                &world.relay
            };
            let flip = (flags & 0x80 != 0).then(|| input.byte());
            let secret = EphemeralSecret::random_from_rng(&mut rng);
            let mut nonce = [0u8; 32];
            rng.fill_bytes(&mut nonce);
            let body = codec::encode(&ServerHelloBody {
                version,
                ephemeral: PublicKey::from(&secret).to_bytes(),
                nonce,
                relay: relay_id,
            });
            let transcript = keys::transcript_hash(&hello, &body);
            let mut signature = signer.sign(keys::SERVER_SIGNATURE_LABEL, &transcript);
            if let Some(at) = flip {
                signature[usize::from(at % 64)] ^= 1 << (at / 64 + 1);
            }
            let wire = codec::encode(&ServerHandshakeMessage::Hello(ServerHello {
                body,
                signature,
            }));
            let honest = relay_id == world.relay.id()
                && flags & 0x40 == 0
                && flip.is_none()
                && (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version);
            let result = client.handle_server_hello(&wire, credentials());
            let Ok((client, start)) = result else {
                assert!(!honest, "an honest ServerHello was refused: {result:?}");
                return;
            };
            assert!(honest, "a dishonest ServerHello was accepted");

            // The relay's side of the key schedule, as `ServerHandshake` does it.
            let Ok(client_hello) = codec::decode::<ClientHello>(&hello) else {
                panic!("the client's own ClientHello does not decode")
            };
            let shared = secret.diffie_hellman(&PublicKey::from(client_hello.ephemeral));
            let session = keys::derive(shared.as_bytes(), &transcript);
            let mut server =
                ServerChannel::new(&session.server_to_client, &session.client_to_server);
            match server.open_value::<ClientStart>(&start) {
                Ok(ClientStart::Anonymous) => assert!(!device),
                Ok(ClientStart::Auth(auth)) => {
                    assert!(device);
                    let Ok(body) = codec::decode::<AuthBody>(&auth.body) else {
                        panic!("the client's AuthBody does not decode")
                    };
                    assert_eq!(
                        (body.user, body.device, body.resume, body.user_proof),
                        (world.user, world.device.id(), resume, None)
                    );
                    assert!(
                        world
                            .device
                            .id()
                            .verify(
                                keys::CLIENT_SIGNATURE_LABEL,
                                &keys::client_signed_message(&transcript, &auth.body),
                                &auth.signature,
                            )
                            .is_ok()
                    );
                }
                Err(e) => panic!("the client's ClientStart does not open: {e}"),
            }

            let head = input.u64();
            let acked = input.u64();
            let last_device_seq = input.u64();
            let chain_seqno = input.u64();
            let choice = input.byte() % 4;
            let established = SessionStart::Established(SessionEstablished {
                session_id: session.session_id,
                version,
                head,
                acked,
                last_device_seq,
                chain_seqno,
            });
            let (wire, expect) = match choice {
                0 => (server.seal_value(&established), Some(established)),
                1 => {
                    let mut session_id = session.session_id;
                    session_id[usize::from(head as u8 % 16)] ^= 1;
                    let wrong = SessionStart::Established(SessionEstablished {
                        session_id,
                        version,
                        head,
                        acked,
                        last_device_seq,
                        chain_seqno,
                    });
                    (server.seal_value(&wrong), None)
                }
                2 => {
                    let plain = input.chunk();
                    let wire = server.seal_encoded(&Encoded::from_raw(plain.to_vec()));
                    let expect = codec::decode::<SessionStart>(plain)
                        .ok()
                        .filter(|s| *s == established);
                    (wire, expect)
                }
                _ => (Ok(input.chunk().to_vec()), None),
            };
            let Ok(wire) = wire else {
                panic!("a SessionStart could not be sealed")
            };
            match client.handle_session(&wire) {
                Ok((opened, channel)) => {
                    assert!(expect.is_some(), "a bad SessionStart was accepted");
                    assert_eq!(opened.session_id, session.session_id);
                    assert_eq!(
                        (
                            opened.version,
                            opened.head,
                            opened.acked,
                            opened.last_device_seq,
                            opened.chain_seqno
                        ),
                        (version, head, acked, last_device_seq, chain_seqno)
                    );
                    client_frames(&mut server, channel, &mut input);
                }
                Err(e) => assert!(expect.is_none(), "a genuine SessionStart was refused: {e}"),
            }
        }
        _ => {
            let Ok((server, server_hello)) =
                ServerHandshake::handle_client_hello(&world.relay, &hello, &mut rng)
            else {
                panic!("the relay refused a genuine ClientHello")
            };
            let (client, start) = match client.handle_server_hello(&server_hello, credentials()) {
                Ok(next) => next,
                Err(e) => panic!("the client refused a genuine ServerHello: {e}"),
            };
            let pending = match server.handle_client_start(&start) {
                Ok(pending) => pending,
                Err(failure) => panic!("the relay refused a genuine ClientStart: {failure:?}"),
            };
            assert_eq!(pending.auth().is_some(), device);
            let head = input.u64();
            let acked = input.u64();
            let (mut server, established) = pending.accept(head, acked);
            let genuine = input.byte() & 1 == 0;
            let wire = if genuine {
                established
            } else {
                input.chunk().to_vec()
            };
            match client.handle_session(&wire) {
                Ok((session, channel)) => {
                    assert!(genuine, "an arbitrary SessionStart ciphertext was accepted");
                    assert_eq!((session.head, session.acked), (head, acked));
                    client_frames(&mut server, channel, &mut input);
                }
                Err(e) => assert!(!genuine, "a genuine SessionStart was refused: {e}"),
            }
        }
    }
}

/// Feeds the client's receive half a sequence of frames: a choice byte and a chunk each.
/// Choice % 4: 0 the chunk sealed by the relay as a frame's plaintext (so the decoding of
/// every `ServerFrame` is reached through the channel); 1 the chunk as ciphertext; 2 the chunk
/// sealed after a frame the relay sealed but that never arrived; 3 the previous ciphertext
/// again. A frame must open exactly when it is the next one sealed and nothing failed before,
/// and then decode as its plaintext does; after a failure everything is refused.
fn client_frames(server: &mut ServerChannel, client: ClientChannel, input: &mut Input<'_>) {
    let (_send, mut receive) = client.split();
    let mut failed = false;
    let mut last: Option<Vec<u8>> = None;
    while !input.is_empty() {
        let choice = input.byte() % 4;
        let chunk = input.chunk();
        let (wire, expect) = match choice {
            0 => match server.seal_encoded(&Encoded::from_raw(chunk.to_vec())) {
                Ok(wire) => (wire, Some(codec::decode::<ServerFrame>(chunk))),
                Err(e) => panic!("the relay could not seal a {}-byte frame: {e}", chunk.len()),
            },
            1 => (chunk.to_vec(), None),
            2 => {
                if server.seal(&ServerFrame::Ping { nonce: 0 }).is_err() {
                    panic!("the relay could not seal a Ping");
                }
                match server.seal_encoded(&Encoded::from_raw(chunk.to_vec())) {
                    Ok(wire) => (wire, None),
                    Err(e) => panic!("the relay could not seal a frame: {e}"),
                }
            }
            _ => (last.clone().unwrap_or_else(|| chunk.to_vec()), None),
        };
        let got = receive.open(&wire);
        if failed {
            assert_eq!(
                got,
                Err(ChannelError::Closed),
                "a frame opened after a failure"
            );
        } else {
            match expect {
                Some(Ok(frame)) => assert_eq!(got, Ok(frame)),
                Some(Err(e)) => assert_eq!(got, Err(ChannelError::Decode(e))),
                None => assert!(got.is_err(), "a frame that was not sealed next opened"),
            }
        }
        failed |= got.is_err();
        last = Some(wire);
    }
}

/// A few well-formed inputs for the `pairing` and `client_handshake` targets, as
/// `(target, input)` pairs: every pairing path (genuine, relay in the middle, wrong code,
/// relay that guessed the code, genuine-shaped messages as arbitrary bytes) and every
/// handshake mode with one of each common `ServerFrame` after it. `fuzz/examples/seeds.rs`
/// writes them into `fuzz/corpus/`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn chunk(out: &mut Vec<u8>, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&bytes[..usize::from(len)]);
    }
    use crate::pairing::PairingMessage;
    let mut seeds = Vec::new();

    // Pairing. The code's last three digits are 913: a guess of 913 is right.
    let right_guess = (PAIRING_CODE % GUESSES) as u16;
    let right = right_guess.to_le_bytes();
    let wrong = 17u16.to_le_bytes();
    for steps in [[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]] {
        for guess in [wrong, right] {
            let mut input = vec![0, guess[0], guess[1]];
            input.extend_from_slice(&steps);
            seeds.push(("pairing", input));
        }
    }
    // The joiner typed 482-482017; the relay guessed that.
    seeds.push((
        "pairing",
        vec![1, wrong[0], wrong[1], wrong[0], wrong[1], 0, 1, 0, 1],
    ));
    // A device name of 65 bytes (one too long).
    let mut input = vec![2, wrong[0], wrong[1]];
    chunk(&mut input, &[b'n'; 65]);
    input.extend_from_slice(&[0, 0, 0, 0]);
    seeds.push(("pairing", input));
    // Genuine-shaped messages as arbitrary bytes, one step at a time.
    let shaped = [
        PairingMessage::JoinerHello {
            pake: vec![0x42; 33],
        },
        PairingMessage::InviterHello {
            pake: vec![0x41; 33],
            confirm: [7; 32],
        },
        PairingMessage::JoinerRequest {
            confirm: [7; 32],
            sealed: vec![9; 16 + 32 + 1 + 6],
        },
        PairingMessage::InviterGrant {
            sealed: vec![9; 200],
        },
    ];
    for (step, message) in shaped.iter().enumerate() {
        let mut input = vec![0, wrong[0], wrong[1]];
        input.extend(std::iter::repeat_n(0, step));
        input.push(2);
        chunk(&mut input, &codec::encode(message));
        input.extend(std::iter::repeat_n(0, 3 - step));
        seeds.push(("pairing", input));
    }

    // Client handshake.
    let world = client_world();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let device = DeviceKey::generate(&mut rng);
    let chain = chain_world();
    let payload = crate::SealedPayload(vec![1; 41]);
    let frames = vec![
        ServerFrame::Appended {
            device_seq: 1,
            seq: 2,
        },
        ServerFrame::Events(vec![crate::Event {
            seq: 2,
            device: device.id(),
            device_seq: 1,
            payload,
        }]),
        ServerFrame::CaughtUp { head: 2 },
        ServerFrame::ResyncRequired { earliest: 3 },
        ServerFrame::Ephemeral {
            from: device.id(),
            body: vec![5; 10],
        },
        ServerFrame::Error(crate::ErrorFrame::new(crate::ErrorCode::Conflict).for_append(1)),
        ServerFrame::Ping { nonce: 9 },
        ServerFrame::ChainAppended { seqno: 6 },
        ServerFrame::ChainGrew { seqno: 6 },
        ServerFrame::ChainLinks {
            links: chain.links[..2].to_vec(),
            more: true,
        },
        ServerFrame::ChainLinks {
            links: chain.links[2..].to_vec(),
            more: false,
        },
        ServerFrame::Devices(vec![crate::DeviceInfo {
            device: device.id(),
            name: "phone".into(),
            last_seen: 1_700_000_000,
            revoked: false,
        }]),
        ServerFrame::PairOpened {
            slot: 482,
            expires_at: 1_700_000_600,
        },
        ServerFrame::PairPeer {
            slot: 482,
            body: vec![3; 40],
        },
        ServerFrame::PairClosed {
            slot: 482,
            code: Some(crate::ErrorCode::PairingFailed),
        },
    ];
    let mut frame_bytes = Vec::new();
    for frame in &frames {
        frame_bytes.push(0);
        chunk(&mut frame_bytes, &codec::encode(frame));
    }
    // A replay, a dropped frame and a forged frame, each after one good frame.
    let mut broken = Vec::new();
    for choice in [3u8, 2, 1] {
        let mut bytes = vec![0];
        chunk(&mut bytes, &codec::encode(&frames[0]));
        bytes.push(choice);
        chunk(&mut bytes, &[0x55; 24]);
        broken.push(bytes);
    }
    let cursors = [
        7u8, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0,
        0, 0,
    ];
    // Mode 3 (the real relay), anonymous and device with a resume cursor.
    for flags in [0b1100u8, 0b1111] {
        let mut input = vec![flags];
        if flags & 2 != 0 {
            input.extend_from_slice(&4u64.to_le_bytes());
        }
        input.extend_from_slice(&cursors[..16]);
        input.push(0);
        input.extend_from_slice(&frame_bytes);
        seeds.push(("client_handshake", input));
    }
    for tail in &broken {
        let mut input = vec![0b1100];
        input.extend_from_slice(&cursors[..16]);
        input.push(0);
        input.extend_from_slice(tail);
        seeds.push(("client_handshake", input));
    }
    // Mode 2 (the emulated relay): honest, then each SessionStart choice, then the dishonest
    // variants.
    for choice in 0..4u8 {
        let mut input = vec![0b1000];
        input.extend_from_slice(&cursors);
        input.push(choice);
        if choice >= 2 {
            let established =
                SessionStart::Rejected(crate::ErrorFrame::new(crate::ErrorCode::HandshakeFailed));
            chunk(&mut input, &codec::encode(&established));
        }
        input.extend_from_slice(&frame_bytes);
        seeds.push(("client_handshake", input));
    }
    for flags in [0b1_1000u8, 0b10_1000, 0b100_1000, 0b1000_1000] {
        let mut input = vec![flags];
        if flags & 0x10 != 0 {
            input.extend_from_slice(&2u16.to_le_bytes());
        }
        if flags & 0x80 != 0 {
            input.push(70);
        }
        input.extend_from_slice(&cursors);
        input.push(0);
        seeds.push(("client_handshake", input));
    }
    // Mode 1: a well-formed body for the pinned relay (X25519's base point as the key).
    let mut basepoint = [0u8; 32];
    basepoint[0] = 9;
    for (version, ephemeral) in [(1u16, basepoint), (1, [0; 32]), (2, basepoint)] {
        let mut input = vec![0b0100];
        chunk(
            &mut input,
            &codec::encode(&ServerHelloBody {
                version,
                ephemeral,
                nonce: [1; 32],
                relay: world.relay.id(),
            }),
        );
        seeds.push(("client_handshake", input));
    }
    // Mode 0: a plaintext refusal.
    let mut input = vec![0];
    chunk(
        &mut input,
        &codec::encode(&ServerHandshakeMessage::Reject(crate::ErrorFrame::new(
            crate::ErrorCode::UnsupportedVersion,
        ))),
    );
    seeds.push(("client_handshake", input));

    // Chain links: the links that extend the fixed chain, once as they are (mode 0), once to
    // be signed by each key (mode 1: the user, the two active devices, the revoked one, one
    // never admitted), once placed at the chain's head with their own signature (mode 2).
    let state = &chain.chain;
    let fresh = DeviceKey::generate(&mut rng);
    let by = SigningKey::Device(&chain.devices[0]);
    let bodies = [
        LinkBody::Admit {
            device: fresh.id(),
            exchange: [0x5e; 32],
            name: "tablet".into(),
            created_at: 1_700_000_300,
        },
        LinkBody::Revoke {
            devices: vec![chain.devices[1].id()],
            epoch: next_epoch(state, &[chain.devices[1].id()]),
        },
        LinkBody::Rotate {
            epoch: next_epoch(state, &[]),
        },
    ];
    for body in bodies {
        let link = codec::encode(&state.sign(body, by));
        for mode in [0u8, 1, 4, 7, 10, 13, 2] {
            let mut input = vec![mode];
            input.extend_from_slice(&link);
            seeds.push(("chain_link", input));
        }
    }
    // A link of the chain itself (a replay), and one by the revoked device.
    let mut input = vec![0];
    input.extend_from_slice(&codec::encode(&chain.links[3]));
    seeds.push(("chain_link", input));
    seeds
}

/// The epoch after `chain`'s, sealed (with placeholder bytes: the relay's checks do not open
/// it) to the recovery key and to every active device except `leaving`.
fn next_epoch(chain: &Chain, leaving: &[DeviceId]) -> EpochKeys {
    EpochKeys {
        epoch: chain.epoch().saturating_add(1),
        recovery: SealedKey(vec![0x5c; 104]),
        devices: chain
            .active_devices()
            .map(|(device, _)| *device)
            .filter(|device| !leaving.contains(device))
            .map(|device| (device, SealedKey(vec![0x5d; 104])))
            .collect(),
    }
}

/// A small chain that does not depend on the input, made once: created by the user key,
/// device 0 admitted by the user key, devices 1 and 2 admitted by device 0, device 2 revoked
/// by device 1 (epoch 1). Device 3 is never admitted.
struct ChainWorld {
    user: UserKey,
    devices: [DeviceKey; 4],
    links: Vec<Link>,
    chain: Chain,
}

fn chain_world() -> &'static ChainWorld {
    static WORLD: OnceLock<ChainWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let user = UserKey::generate(&mut rng);
        let devices = [(); 4].map(|()| DeviceKey::generate(&mut rng));
        let mut chain = Chain::new(user.id());
        let mut links = Vec::new();
        let admit = |device: &DeviceKey, name: &str| LinkBody::Admit {
            device: device.id(),
            exchange: [0x5e; 32],
            name: name.to_owned(),
            created_at: 1_700_000_000,
        };
        let mut extend = |chain: &mut Chain, body: LinkBody, key: SigningKey<'_>| {
            let link = chain.sign(body, key);
            if let Err(e) = chain.apply(&link) {
                unreachable!("the fixed chain is valid: {e}");
            }
            links.push(link);
        };
        let create = LinkBody::Create {
            recovery_exchange: [0x5f; 32],
            epoch_key: SealedKey(vec![0x5c; 104]),
        };
        extend(&mut chain, create, SigningKey::User(&user));
        extend(
            &mut chain,
            admit(&devices[0], "laptop"),
            SigningKey::User(&user),
        );
        for (device, name) in [(&devices[1], "phone"), (&devices[2], "old")] {
            extend(
                &mut chain,
                admit(device, name),
                SigningKey::Device(&devices[0]),
            );
        }
        let revoke = LinkBody::Revoke {
            devices: vec![devices[2].id()],
            epoch: next_epoch(&chain, &[devices[2].id()]),
        };
        extend(&mut chain, revoke, SigningKey::Device(&devices[1]));
        ChainWorld {
            user,
            devices,
            links,
            chain,
        }
    })
}

/// Decodes a [`Link`] from `data[1..]` and applies it to a small fixed chain (see
/// [`chain_world`]), the way the relay and the clients apply links. The first byte picks how
/// (`% 3`): 0 the link as decoded; 1 its body signed as the chain's next link by the key
/// `(byte / 3) % 5` picks (the user key, active devices 0 and 1, revoked device 2, device 3
/// that was never admitted); 2 its body, signer and signature placed at the chain's head
/// (right user, position and predecessor), so that the signature check is reached.
///
/// Panics if `check` and `apply` disagree, if a refused link changes the chain, if a link in
/// the right place signed by a revoked or unknown device is refused for another reason than
/// its signer, or if an accepted link: was signed by a device that was not active, carries a
/// signature its signer's key did not make, does not have the effect its body says, makes a
/// chain that verifying every link from the first does not give, or is accepted twice.
pub fn chain_link(data: &[u8]) {
    let world = chain_world();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(decoded) = codec::decode::<Link>(rest) else {
        return;
    };
    let before = &world.chain;
    let key_for = |signer: &Signer| match signer {
        Signer::User => Some(SigningKey::User(&world.user)),
        Signer::Device(id) => world
            .devices
            .iter()
            .find(|d| d.id() == *id)
            .map(SigningKey::Device),
    };
    let link = match mode % 3 {
        0 => decoded,
        1 => {
            let key = match (mode / 3) % 5 {
                0 => SigningKey::User(&world.user),
                n => SigningKey::Device(&world.devices[usize::from(n) - 1]),
            };
            before.sign(decoded.body, key)
        }
        _ => Link {
            user: before.user(),
            seqno: before.seqno() + 1,
            prev: before.head(),
            ..decoded
        },
    };
    let mut chain = before.clone();
    let checked = chain.check(&link);
    let applied = chain.apply(&link);
    assert_eq!(checked, applied, "check and apply disagree");
    let in_place = link.user == before.user()
        && link.seqno == before.seqno() + 1
        && link.prev == before.head();
    let Ok(()) = applied else {
        assert_eq!(&chain, before, "a refused link changed the chain");
        if let Signer::Device(device) = &link.signer
            && in_place
            && !before.is_active(device)
        {
            assert_eq!(applied, Err(ChainError::SignerNotActive));
        }
        return;
    };
    if let Signer::Device(device) = &link.signer {
        assert!(
            before.is_active(device),
            "a link by an inactive device was accepted"
        );
    }
    let Some(key) = key_for(&link.signer) else {
        panic!("a link by a signer whose key nobody holds was accepted")
    };
    assert_eq!(
        before.sign(link.body.clone(), key).signature,
        link.signature,
        "an accepted signature was not made by the signer's key"
    );
    assert_eq!(
        (chain.seqno(), chain.head()),
        (before.seqno() + 1, link.hash())
    );
    let recipients = |epoch: &EpochKeys| {
        let sealed: Vec<&DeviceId> = epoch.devices.iter().map(|(device, _)| device).collect();
        let active: Vec<&DeviceId> = chain.active_devices().map(|(device, _)| device).collect();
        assert_eq!(
            sealed, active,
            "a new epoch is not sealed to the active devices"
        );
        assert_eq!(
            (epoch.epoch, chain.epoch()),
            (before.epoch() + 1, epoch.epoch)
        );
    };
    match &link.body {
        LinkBody::Create { .. } => panic!("a second Create was accepted"),
        LinkBody::Admit { device, .. } => {
            assert!(before.member(device).is_none() && chain.is_active(device));
        }
        LinkBody::Revoke { devices, epoch } => {
            assert!(!devices.is_empty());
            for device in devices {
                assert!(before.is_active(device) && !chain.is_active(device));
            }
            recipients(epoch);
        }
        LinkBody::Rotate { epoch } => recipients(epoch),
    }
    let mut links = world.links.clone();
    links.push(link.clone());
    assert_eq!(
        Chain::verify(before.user(), &links).as_ref(),
        Ok(&chain),
        "verifying from the first link gives another chain"
    );
    assert!(
        matches!(chain.apply(&link), Err(ChainError::OutOfOrder { .. })),
        "a link was accepted twice"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry point of a target that takes protocol seeds.
    fn entry(target: &str) -> fn(&[u8]) {
        match target {
            "pairing" => pairing,
            "client_handshake" => client_handshake,
            "chain_link" => chain_link,
            other => panic!("no entry point for {other}"),
        }
    }

    #[test]
    fn every_seed_runs_and_holds_the_oracles() {
        let seeds = seeds();
        for target in ["pairing", "client_handshake", "chain_link"] {
            assert!(
                seeds.iter().any(|(t, _)| *t == target),
                "no seed for {target}"
            );
        }
        for (target, input) in &seeds {
            entry(target)(input);
        }
    }

    #[test]
    fn the_chain_link_seeds_reach_acceptance_and_each_refusal_of_a_signer() {
        let world = chain_world();
        // Mode 0 of each extending seed is accepted, as is mode 1 signed by the user key and
        // by either active device; the revoked and the unknown device are refused.
        let seeds: Vec<Vec<u8>> = seeds()
            .into_iter()
            .filter(|(t, input)| *t == "chain_link" && input[0] == 0)
            .map(|(_, input)| input)
            .collect();
        for input in &seeds[..3] {
            let link: Link = codec::decode(&input[1..]).unwrap();
            let mut chain = world.chain.clone();
            assert_eq!(chain.apply(&link), Ok(()));
            for (signer, ok) in [(0, true), (1, true), (2, true), (3, false), (4, false)] {
                let key = match signer {
                    0 => SigningKey::User(&world.user),
                    n => SigningKey::Device(&world.devices[n - 1]),
                };
                let resigned = world.chain.sign(link.body.clone(), key);
                let verdict = world.chain.check(&resigned);
                if ok {
                    assert_eq!(verdict, Ok(()));
                } else {
                    assert_eq!(verdict, Err(ChainError::SignerNotActive));
                }
            }
        }
        // The replayed link of the chain is refused.
        let replay: Link = codec::decode(&seeds[3][1..]).unwrap();
        assert!(world.chain.check(&replay).is_err());
    }

    #[test]
    fn arbitrary_inputs_hold_the_oracles() {
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        let targets: [fn(&[u8]); 7] = [
            decode_frames,
            server_handshake,
            channel_open,
            pairing,
            client_handshake,
            chain_link,
            |data| {
                // Mutated seeds: arbitrary bytes rarely reach past the first checks.
                for (target, mut input) in seeds() {
                    if let Some(at) = data.first() {
                        let i = usize::from(*at) % input.len().max(1);
                        if let Some(byte) = input.get_mut(i) {
                            *byte ^= data.get(1).copied().unwrap_or(1) | 1;
                        }
                    }
                    entry(target)(&input);
                }
            },
        ];
        for target in targets {
            for len in [0usize, 1, 2, 7, 33, 100, 300] {
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                target(&data);
            }
        }
    }
}

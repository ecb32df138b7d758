//! Micro-benchmarks of the protocol's hot paths, one core, no IO:
//!
//! - `handshake/full`: both sides of a complete handshake, from `ClientHello` to the client
//!   opening `SessionEstablished`, for a device of a user (two X25519 key pairs and
//!   exchanges, two Ed25519 signatures, two verifications, the key schedule; no user proof,
//!   and the relay's device-chain lookup is outside this crate). Its inverse is the
//!   crypto-bound ceiling of handshakes per second per core.
//! - `seal/*`, `open/*`: end-to-end payload sealing (XChaCha20-Poly1305, format 2 with the
//!   epoch) at 256 B and 64 KiB.
//! - `channel/append_256B`: one `Append` with a 256-byte payload sealed by the client's
//!   channel and opened by the relay's (ChaCha20-Poly1305 plus the codec, both ways).
//! - `codec/*`: postcard encoding and decoding of a `ClientFrame::Append` (256-byte payload)
//!   and of a `ServerFrame::Events` batch (32 events of 256 bytes).
//!
//! Randomness comes from a seeded `ChaCha20Rng`, so runs are repeatable. Run with
//! `cargo bench -p ferry-protocol --bench protocol`; figures go to `docs/benchmarks.md`.

// Benchmark code: a panic is how a broken setup reports itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_protocol::handshake::{ClientHandshake, Credentials, ServerHandshake};
use ferry_protocol::seal::{self, DataKey, EventSlot};
use ferry_protocol::{
    Append, ClientChannel, ClientFrame, DeviceId, DeviceKey, Event, RelayKey, SealedPayload,
    ServerChannel, ServerFrame, UserId, UserKey, codec,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The long-lived keys of one relay and one device of one user.
struct Identities {
    relay: RelayKey,
    device: DeviceKey,
    user: UserId,
}

impl Identities {
    fn new(rng: &mut ChaCha20Rng) -> Self {
        let relay = RelayKey::generate(rng);
        let user = UserKey::generate(rng);
        let device = DeviceKey::generate(rng);
        Self {
            relay,
            device,
            user: user.id(),
        }
    }
}

/// Runs a complete handshake, both sides, and returns the two ends of the channel.
fn handshake(ids: &Identities, rng: &mut ChaCha20Rng) -> (ClientChannel, ServerChannel) {
    let (client, hello) = ClientHandshake::start(ids.relay.id(), rng);
    let (server, server_hello) =
        ServerHandshake::handle_client_hello(&ids.relay, &hello, rng).unwrap();
    let credentials = Credentials::Device {
        key: &ids.device,
        user: ids.user,
        resume: Some(41),
        recovery: None,
    };
    let (client, start) = client
        .handle_server_hello(&server_hello, credentials)
        .unwrap();
    let pending = server
        .handle_client_start(&start)
        .expect("the relay accepts the device");
    let (server_channel, established) = pending.accept(42, 41);
    let (_, client_channel) = client.handle_session(&established).unwrap();
    (client_channel, server_channel)
}

fn slot() -> EventSlot {
    EventSlot {
        user: UserId([1; 32]),
        device: DeviceId([2; 32]),
        device_seq: 7,
    }
}

fn bench_handshake(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let ids = Identities::new(&mut rng);
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full", |b| b.iter(|| black_box(handshake(&ids, &mut rng))));
    group.finish();
}

fn bench_seal(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let key = DataKey::generate(&mut rng);
    let slot = slot();
    for (name, len) in [("256B", 256), ("64KiB", 64 * 1024)] {
        let plaintext = vec![0x5a; len];
        let sealed = seal::seal(&key, 3, &slot, &plaintext, &mut rng).unwrap();

        let mut group = c.benchmark_group("seal");
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(name),
            &plaintext,
            |b, plaintext| {
                b.iter(|| seal::seal(&key, 3, &slot, black_box(plaintext), &mut rng).unwrap())
            },
        );
        group.finish();

        let mut group = c.benchmark_group("open");
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &sealed, |b, sealed| {
            b.iter(|| seal::open(&key, &slot, black_box(sealed)).unwrap())
        });
        group.finish();
    }
}

fn append_256() -> ClientFrame {
    ClientFrame::Append(Append {
        device_seq: 7,
        payload: SealedPayload(vec![0xa5; 256]),
    })
}

fn bench_channel(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let ids = Identities::new(&mut rng);
    let (mut client, mut server) = handshake(&ids, &mut rng);
    let frame = append_256();

    let mut group = c.benchmark_group("channel");
    group.throughput(Throughput::Bytes(256));
    // Sealing and opening stay in step, so the per-direction counters always agree.
    group.bench_function("append_256B", |b| {
        b.iter(|| {
            let wire = client.seal(black_box(&frame)).unwrap();
            server.open(&wire).unwrap()
        })
    });
    group.finish();
}

fn bench_codec(c: &mut Criterion) {
    let append = append_256();
    let events = ServerFrame::Events(
        (1..=32)
            .map(|seq| Event {
                seq,
                device: DeviceId([3; 32]),
                device_seq: seq,
                payload: SealedPayload(vec![0xa5; 256]),
            })
            .collect(),
    );

    let mut group = c.benchmark_group("codec");
    let bytes = codec::encode(&append);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode/append_256B", |b| {
        b.iter(|| codec::encode(black_box(&append)))
    });
    group.bench_function("decode/append_256B", |b| {
        b.iter(|| codec::decode::<ClientFrame>(black_box(&bytes)).unwrap())
    });

    let bytes = codec::encode(&events);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode/events_32x256B", |b| {
        b.iter(|| codec::encode(black_box(&events)))
    });
    group.bench_function("decode/events_32x256B", |b| {
        b.iter(|| codec::decode::<ServerFrame>(black_box(&bytes)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Shorter than criterion's defaults (100 samples, 5 s) so the run fits a 2-core machine;
    // the spread this leaves is reported with the figures.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(4));
    targets = bench_handshake, bench_seal, bench_channel, bench_codec
}
criterion_main!(benches);

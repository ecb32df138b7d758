//! Micro-benchmarks of Ferry's MLS operations (openmls 0.9.2, ciphersuite
//! `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`), one core, no IO:
//!
//! - `application/encrypt_256B/{2,200}`, `application/decrypt_256B/{2,200}`: a 256-byte
//!   application message in a group of 2 (and of 200) devices, [`Member::encrypt`] on one and
//!   [`Member::process`] on another.
//! - `commit_add/*/{2,10,100,1000}`: a commit adding one device (one KeyPackage) to a group of
//!   that many leaves, four ways:
//!   - `member_add`: the committer's [`Member::add`] (validating the KeyPackage, a fresh path,
//!     the Welcome, the new epoch's GroupInfo with the whole ratchet tree, signed); the pending
//!     commit is discarded after each iteration, untimed, so every iteration starts at the
//!     same state;
//!   - `member_process`: another member's [`Member::process`] of that commit (validating and
//!     merging it), on a fresh copy of that member restored from bytes before each iteration
//!     (untimed);
//!   - `ds_process_commit`: the relay's [`DsGroup::process_commit`] of the commit, on a fresh
//!     copy from [`DsGroup::from_bytes`] (untimed);
//!   - `ds_round_trip`: [`DsGroup::from_bytes`] then [`DsGroup::to_bytes`] of the group's
//!     state, which the relay pays around every commit it validates.
//!
//! Each group is built once, outside the measurement: its creator adds every other device with
//! one commit of all their KeyPackages (999 for the 1,000-leaf group), the relay's copy
//! processes it, and one of the added devices joins from the Welcome. Device keys come from a
//! seeded `ChaCha20Rng`; openmls draws its own randomness from the OS. Run with
//! `cargo bench -p ferry-mls --bench mls`; figures go to `docs/benchmarks.md`.

// Benchmark code: a panic is how a broken setup reports itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ferry_mls::{DsGroup, GroupKind, GroupPolicy, Incoming, Member};
use ferry_protocol::identity::{DeviceKey, UserKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The conversation id every benchmark group uses.
const GROUP: &[u8] = b"bench-conversation";
/// Group sizes (leaves before the add).
const SIZES: [usize; 4] = [2, 10, 100, 1_000];
/// Group sizes of the application-message benchmarks (200: the `conversations` scenario's).
const APPLICATION_SIZES: [usize; 2] = [2, 200];
/// The application message's size.
const MESSAGE: usize = 256;

/// A device: its key (to restore its state from bytes) and its MLS state.
struct Device {
    key: DeviceKey,
    member: Member,
}

impl Device {
    fn new(rng: &mut ChaCha20Rng) -> Device {
        let user = UserKey::generate(rng).id();
        let key = DeviceKey::generate(rng);
        let member = Member::new(user, &key);
        Device { key, member }
    }
}

/// A group of `leaves` devices as its creator, one other member and the relay hold it.
struct Built {
    creator: Device,
    other: Device,
    ds: DsGroup,
}

/// Builds a group of `leaves` (≥ 2) leaves: one add commit of all but the creator.
fn build(leaves: usize, rng: &mut ChaCha20Rng) -> Built {
    let mut creator = Device::new(rng);
    let policy = GroupPolicy {
        kind: GroupKind::Group,
        admins: Vec::new(),
    };
    let info = creator.member.create_group(GROUP, policy).unwrap();
    let mut ds = DsGroup::start(&info, GROUP).unwrap();
    let mut other = Device::new(rng);
    let mut packages = other.member.key_packages(1).unwrap();
    for _ in 2..leaves {
        packages.extend(Device::new(rng).member.key_packages(1).unwrap());
    }
    let out = creator.member.add(GROUP, &packages).unwrap();
    ds.process_commit(&out.commit).unwrap();
    creator.member.merge_pending(GROUP).unwrap();
    other.member.join(&out.welcome.unwrap()).unwrap();
    assert_eq!(ds.members().len(), leaves);
    Built { creator, other, ds }
}

fn application(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let plaintext = vec![0x5a; MESSAGE];
    let mut group = c.benchmark_group("application");
    group.throughput(Throughput::Bytes(MESSAGE as u64));
    for leaves in APPLICATION_SIZES {
        let Built { mut creator, .. } = build(leaves, &mut rng);
        group.bench_with_input(BenchmarkId::new("encrypt_256B", leaves), &leaves, |b, _| {
            b.iter(|| {
                creator
                    .member
                    .encrypt(GROUP, black_box(&plaintext))
                    .unwrap()
            })
        });
        // Each message opens once, in order: encrypt a batch (untimed), then process it. A
        // fresh pair: the receiver refuses generations too far ahead of the last it opened,
        // and the encryption benchmark used up many.
        let Built {
            mut creator,
            mut other,
            ..
        } = build(leaves, &mut rng);
        group.bench_with_input(BenchmarkId::new("decrypt_256B", leaves), &leaves, |b, _| {
            b.iter_batched(
                || creator.member.encrypt(GROUP, &plaintext).unwrap(),
                |sealed| match other.member.process(GROUP, &sealed).unwrap() {
                    Incoming::Application { plaintext, .. } => plaintext,
                    incoming => panic!("expected an application message, got {incoming:?}"),
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn commit_add(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut group = c.benchmark_group("commit_add");
    for leaves in SIZES {
        let Built {
            mut creator,
            other,
            ds,
        } = build(leaves, &mut rng);
        let mut joiner = Device::new(&mut rng);
        let package = joiner.member.key_packages(1).unwrap();
        // Large groups: few samples, each of the same number of iterations (the 1,000-leaf
        // cases take tens of milliseconds per iteration, plus an untimed restore).
        if leaves >= 100 {
            group.sample_size(10);
            group.sampling_mode(SamplingMode::Flat);
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(if leaves >= 1_000 { 8 } else { 4 }));
        } else {
            group.sample_size(30);
            group.sampling_mode(SamplingMode::Auto);
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(3));
        }

        group.bench_with_input(BenchmarkId::new("member_add", leaves), &leaves, |b, _| {
            b.iter_custom(|iterations| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    let out = creator.member.add(GROUP, black_box(&package)).unwrap();
                    elapsed += started.elapsed();
                    black_box(out);
                    creator.member.discard_pending(GROUP).unwrap();
                }
                elapsed
            })
        });

        // One commit, processed on fresh copies of the other member and of the relay's group.
        let out = creator.member.add(GROUP, &package).unwrap();
        creator.member.discard_pending(GROUP).unwrap();
        let other_state = other.member.to_bytes();
        let ds_state = ds.to_bytes();

        group.bench_with_input(
            BenchmarkId::new("member_process", leaves),
            &leaves,
            |b, _| {
                b.iter_batched(
                    || Member::from_bytes(&other_state, &other.key).unwrap(),
                    |mut member| {
                        let incoming = member.process(GROUP, black_box(&out.commit)).unwrap();
                        assert!(matches!(incoming, Incoming::Commit { .. }));
                        member
                    },
                    BatchSize::PerIteration,
                )
            },
        );
        group.bench_with_input(
            BenchmarkId::new("ds_process_commit", leaves),
            &leaves,
            |b, _| {
                b.iter_batched(
                    || DsGroup::from_bytes(&ds_state).unwrap(),
                    |mut ds| {
                        ds.process_commit(black_box(&out.commit)).unwrap();
                        ds
                    },
                    BatchSize::PerIteration,
                )
            },
        );
        group.bench_with_input(
            BenchmarkId::new("ds_round_trip", leaves),
            &leaves,
            |b, _| {
                b.iter(|| {
                    DsGroup::from_bytes(black_box(&ds_state))
                        .unwrap()
                        .to_bytes()
                })
            },
        );
        eprintln!(
            "commit_add/{leaves}: commit {} B, welcome {} B, group info {} B, relay state {} B, \
             member state {} B",
            out.commit.len(),
            out.welcome.as_ref().map_or(0, Vec::len),
            out.group_info.len(),
            ds_state.len(),
            other_state.len(),
        );
    }
    group.finish();
}

criterion_group!(benches, application, commit_add);
criterion_main!(benches);

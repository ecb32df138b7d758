//! Ferry's conventions for MLS (RFC 9420) on `openmls`.
//!
//! Conversations (1:1 and groups) are MLS groups with one leaf per device. This crate is the
//! one place that says how Ferry uses MLS, shared by both ends:
//!
//! - the **relay**, MLS's Delivery Service, which validates handshake messages with openmls's
//!   `PublicGroup` and never reads content ([`ds`]: [`check_key_package`], [`DsGroup`],
//!   [`check_membership_change`], [`inspect_application`], ...);
//! - the **device** (the client SDK), which owns its groups ([`Member`]).
//!
//! It does no IO; openmls draws randomness from the OS through `openmls_rust_crypto`.
//!
//! # Conventions
//!
//! - Ciphersuite [`CIPHERSUITE`] (X25519, ChaCha20-Poly1305, SHA-256, Ed25519).
//! - A leaf's credential names `user || device`; its signature key is the device's Ferry key
//!   ([`credential`]).
//! - The group context carries Ferry's [`GroupPolicy`] in a private-use extension that every
//!   leaf must support ([`policy`]).
//! - Every MLS object travels as an `MLSMessage`: KeyPackages, GroupInfos (with the ratchet
//!   tree and external public key), Welcomes; commits and proposals as PublicMessages (so the
//!   relay can validate them), application messages as PrivateMessages.
//!
//! # Data flow
//!
//! ```text
//! device                                   relay
//! Member::key_packages ───────────────────▶ check_key_package → pool
//! Member::create_group → GroupInfo ───────▶ DsGroup::start
//! Member::add(claimed packages)
//!   → commit, welcome, group info ────────▶ DsGroup::stage_commit → check_membership_change
//!                                            → DsGroup::apply (first commit per epoch wins)
//! Member::merge_pending  ◀── accepted       check_group_info (kept for rejoins)
//! Member::discard_pending ◀─ StaleEpoch     welcome → the added users' logs
//! Member::join(welcome)
//! Member::encrypt ────────────────────────▶ inspect_application (group, epoch) → stream
//! Member::process ◀──────────────────────── stream, in order
//! Member::leave → remove proposal ────────▶ DsGroup::process_proposal
//! Member::join_external(stored GroupInfo) ▶ DsGroup::process_commit (device fell behind)
//! ```
//!
//! ```
//! use ferry_mls::{DsGroup, GroupKind, GroupPolicy, Member};
//! use ferry_protocol::identity::{DeviceKey, UserKey};
//! # let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
//! # use rand_core::SeedableRng;
//! let (alice, bob) = (UserKey::generate(&mut rng), UserKey::generate(&mut rng));
//! let mut alice_phone = Member::new(alice.id(), &DeviceKey::generate(&mut rng));
//! let mut bob_phone = Member::new(bob.id(), &DeviceKey::generate(&mut rng));
//!
//! let policy = GroupPolicy { kind: GroupKind::OneToOne, admins: vec![] };
//! let info = alice_phone.create_group(b"conv-1", policy)?;
//! let mut ds = DsGroup::start(&info, b"conv-1")?;
//!
//! let package = bob_phone.key_packages(1)?.remove(0);
//! let out = alice_phone.add(b"conv-1", &[package])?;
//! ds.process_commit(&out.commit)?;
//! alice_phone.merge_pending(b"conv-1")?;
//! bob_phone.join(&out.welcome.unwrap())?;
//!
//! let sealed = alice_phone.encrypt(b"conv-1", b"hi Bob")?;
//! assert_eq!(ds_sees(&sealed), (b"conv-1".to_vec(), 1));
//! # fn ds_sees(m: &[u8]) -> (Vec<u8>, u64) { ferry_mls::inspect_application(m).unwrap() }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod credential;
pub mod ds;
mod error;
mod member;
pub mod policy;
mod provider;
mod wire;

use openmls::prelude::Ciphersuite;

pub use credential::{credential_with_key, leaf_owner, signer};
pub use ds::{
    CommitSummary, Device, DsCommit, DsGroup, KeyPackageInfo, ProposalSummary, check_group_info,
    check_key_package, check_membership_change, check_welcome, inspect_application,
};
pub use error::MlsRefusal;
pub use member::{CommitOut, Incoming, Member, MemberError, PAST_EPOCHS};
pub use policy::{FERRY_POLICY_EXTENSION, GroupKind, GroupPolicy};
pub use wire::MAX_MLS_MESSAGE_LEN;

/// The one ciphersuite Ferry uses: the primitives the rest of Ferry already relies on.
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

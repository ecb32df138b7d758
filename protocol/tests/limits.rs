//! The decoding limits: the numbers in `docs/protocol.md` are the ones the code enforces, and
//! every limited field of every message a peer decodes is accepted at its limit and refused
//! one past it. Two peers that disagree on a limit refuse each other's frames, so the limits
//! are part of the wire format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;

use ferry_protocol::chain::{EpochKeys, MAX_CHAIN_DEVICES, MAX_SEALED_KEY_LEN, SealedKey};
use ferry_protocol::codec::{self, DecodeError, Wire};
use ferry_protocol::frames::MAX_LINKS_PER_FRAME;
use ferry_protocol::handshake::{ServerHandshakeMessage, SessionStart};
use ferry_protocol::limits::*;
use ferry_protocol::seal::SEAL_OVERHEAD;
use ferry_protocol::*;

const KIB: usize = 1024;

/// `n` in KiB; `n` must be a whole number of KiB.
fn kib(n: usize) -> usize {
    assert_eq!(n % KIB, 0, "{n} is not a whole number of KiB");
    n / KIB
}

#[test]
fn the_documented_limits_are_the_enforced_ones() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    assert_eq!(MAX_FRAME_LEN % (KIB * KIB), 0);
    let payload = kib(MAX_PAYLOAD_LEN);
    for row in [
        format!(
            "| frame (one WebSocket message, plaintext) | {} MiB |",
            MAX_FRAME_LEN / (KIB * KIB)
        ),
        format!(
            "| sealed event payload | {payload} KiB (plaintext up to {payload} KiB \u{2212} {SEAL_OVERHEAD} B) |"
        ),
        format!("| ephemeral body | {} KiB |", kib(MAX_EPHEMERAL_LEN)),
        format!(
            "| pairing message body | {} KiB |",
            kib(MAX_PAIRING_BODY_LEN)
        ),
        format!("| device name | {MAX_DEVICE_NAME_LEN} bytes UTF-8 |"),
        format!("| error message | {MAX_ERROR_MESSAGE_LEN} bytes |"),
        format!("| events per `Events` frame | {MAX_EVENTS_PER_FRAME} |"),
        format!("| devices per `Devices` frame | {MAX_DEVICES_PER_FRAME} |"),
        format!("| links per `ChainLinks` frame | {MAX_LINKS_PER_FRAME} |"),
        format!("| sealed epoch key (in a chain link) | {MAX_SEALED_KEY_LEN} bytes |"),
        format!("| devices named by one link (revoked, or sealed to) | {MAX_CHAIN_DEVICES} |"),
    ] {
        assert!(doc.contains(&row), "docs/protocol.md lacks the row:\n{row}");
    }
}

/// `make(limit)` decodes to itself; `make(limit + 1)` is refused naming `field`.
fn enforced_at<T: Wire + Debug + PartialEq>(
    field: &'static str,
    limit: usize,
    make: impl Fn(usize) -> T,
) {
    let at = make(limit);
    assert_eq!(codec::decode::<T>(&codec::encode(&at)), Ok(at), "{field}");
    let over = codec::encode(&make(limit + 1));
    assert_eq!(
        codec::decode::<T>(&over),
        Err(DecodeError::FieldTooLarge {
            field,
            len: limit + 1,
            limit
        }),
        "{field}"
    );
}

fn payload(len: usize) -> SealedPayload {
    SealedPayload(vec![0x5a; len])
}

fn event(seq: u64, len: usize) -> Event {
    Event {
        seq,
        device: DeviceId([3; 32]),
        device_seq: seq,
        payload: payload(len),
    }
}

/// A chain link as it arrives: decoding checks its sizes, not its signature or its place in
/// a chain.
fn link(body: LinkBody) -> Link {
    Link {
        user: UserId([1; 32]),
        seqno: 2,
        prev: LinkHash([6; 32]),
        body,
        signer: Signer::Device(DeviceId([2; 32])),
        signature: [9; 64],
    }
}

fn admit(name_len: usize) -> LinkBody {
    LinkBody::Admit {
        device: DeviceId([3; 32]),
        exchange: [4; 32],
        name: "n".repeat(name_len),
        created_at: 5,
    }
}

fn sealed(len: usize) -> SealedKey {
    SealedKey(vec![7; len])
}

fn epoch(recipients: usize, key_len: usize) -> EpochKeys {
    EpochKeys {
        epoch: 1,
        recovery: sealed(1),
        devices: (0..recipients)
            .map(|i| {
                let mut id = [0; 32];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                (DeviceId(id), sealed(key_len))
            })
            .collect(),
    }
}

/// Every size limit of a link, each as `(field, limit, make)`.
type LinkLimit = (&'static str, usize, Box<dyn Fn(usize) -> Link>);

fn link_limits() -> Vec<LinkLimit> {
    vec![
        (
            "device name",
            MAX_DEVICE_NAME_LEN,
            Box::new(|n| link(admit(n))),
        ),
        (
            "sealed key",
            MAX_SEALED_KEY_LEN,
            Box::new(|n| {
                link(LinkBody::Create {
                    recovery_exchange: [8; 32],
                    epoch_key: sealed(n),
                })
            }),
        ),
        (
            "sealed key",
            MAX_SEALED_KEY_LEN,
            Box::new(|n| {
                let mut keys = epoch(2, 1);
                keys.recovery = sealed(n);
                link(LinkBody::Rotate { epoch: keys })
            }),
        ),
        (
            "sealed key",
            MAX_SEALED_KEY_LEN,
            Box::new(|n| {
                link(LinkBody::Revoke {
                    devices: vec![DeviceId([3; 32])],
                    epoch: epoch(2, n),
                })
            }),
        ),
        (
            "epoch recipients",
            MAX_CHAIN_DEVICES,
            Box::new(|n| link(LinkBody::Rotate { epoch: epoch(n, 1) })),
        ),
        (
            "revoked devices",
            MAX_CHAIN_DEVICES,
            Box::new(|n| {
                link(LinkBody::Revoke {
                    devices: (0..n).map(|_| DeviceId([3; 32])).collect(),
                    epoch: epoch(0, 1),
                })
            }),
        ),
    ]
}

fn error(len: usize) -> ErrorFrame {
    ErrorFrame {
        code: ErrorCode::Internal,
        message: "m".repeat(len),
        device_seq: None,
    }
}

#[test]
fn client_frames_are_checked_at_every_limit() {
    enforced_at("payload", MAX_PAYLOAD_LEN, |n| {
        ClientFrame::Append(Append {
            device_seq: 1,
            payload: payload(n),
        })
    });
    enforced_at("ephemeral body", MAX_EPHEMERAL_LEN, |n| {
        ClientFrame::Ephemeral { body: vec![1; n] }
    });
    enforced_at("pairing body", MAX_PAIRING_BODY_LEN, |n| {
        ClientFrame::PairJoin {
            slot: 7,
            body: vec![2; n],
        }
    });
    enforced_at("pairing body", MAX_PAIRING_BODY_LEN, |n| {
        ClientFrame::PairForward {
            slot: 7,
            body: vec![3; n],
        }
    });
    // A link with an oversized field inside `ChainAppend` is refused when the frame decodes.
    for (field, limit, make) in link_limits() {
        enforced_at(field, limit, |n| {
            ClientFrame::ChainAppend(Box::new(make(n)))
        });
    }
}

#[test]
fn links_are_checked_at_every_limit() {
    for (field, limit, make) in link_limits() {
        enforced_at(field, limit, &make);
    }
}

#[test]
fn server_frames_are_checked_at_every_limit() {
    enforced_at("events", MAX_EVENTS_PER_FRAME, |n| {
        ServerFrame::Events((1..=n as u64).map(|seq| event(seq, 1)).collect())
    });
    enforced_at("payload", MAX_PAYLOAD_LEN, |n| {
        ServerFrame::Events(vec![event(1, 0), event(2, n)])
    });
    enforced_at("ephemeral body", MAX_EPHEMERAL_LEN, |n| {
        ServerFrame::Ephemeral {
            from: DeviceId([4; 32]),
            body: vec![4; n],
        }
    });
    enforced_at("error message", MAX_ERROR_MESSAGE_LEN, |n| {
        ServerFrame::Error(error(n))
    });
    let device = |name_len| DeviceInfo {
        device: DeviceId([2; 32]),
        name: "n".repeat(name_len),
        last_seen: 0,
        revoked: false,
    };
    enforced_at("devices", MAX_DEVICES_PER_FRAME, |n| {
        ServerFrame::Devices((0..n).map(|_| device(1)).collect())
    });
    enforced_at("device name", MAX_DEVICE_NAME_LEN, |n| {
        ServerFrame::Devices(vec![device(0), device(n)])
    });
    enforced_at("pairing body", MAX_PAIRING_BODY_LEN, |n| {
        ServerFrame::PairPeer {
            slot: 7,
            body: vec![5; n],
        }
    });
    enforced_at("links", MAX_LINKS_PER_FRAME, |n| ServerFrame::ChainLinks {
        links: (0..n).map(|_| link(admit(1))).collect(),
        more: true,
    });
    // A link with an oversized field inside `ChainLinks` (after a valid one) is refused.
    for (field, limit, make) in link_limits() {
        enforced_at(field, limit, |n| ServerFrame::ChainLinks {
            links: vec![link(admit(0)), make(n)],
            more: false,
        });
    }
}

#[test]
fn handshake_messages_are_checked_at_every_limit() {
    enforced_at("error message", MAX_ERROR_MESSAGE_LEN, |n| {
        ServerHandshakeMessage::Reject(error(n))
    });
    enforced_at("error message", MAX_ERROR_MESSAGE_LEN, |n| {
        SessionStart::Rejected(error(n))
    });
    // `AuthBody` has no field of variable length any more (the user proof is 64 bytes or
    // absent; the handshake tests check that).
}

// ---------------------------------------------------------------------------------------------
// People: every limited field of the people types, alone and inside the frames and notices
// that carry them.

mod people_limits {
    use super::*;
    use ferry_protocol::people::card::MAX_CARD_CIPHERTEXT_LEN;
    use ferry_protocol::people::handle::MAX_HANDLE_INPUT_LEN;
    use ferry_protocol::people::intro::{MAX_INTRO_CIPHERTEXT_LEN, MAX_NOTE_LEN};
    use ferry_protocol::people::profile::{
        MAX_AVATAR_REF_LEN, MAX_DISPLAY_NAME_LEN, MAX_PROFILE_CIPHERTEXT_LEN,
    };
    use ferry_protocol::people::{
        CardBody, Handle, HandleError, Intro, IntroBody, Notice, ProfileBody, ProfileKey,
        SealedCard, SealedProfile,
    };

    fn intro(recipients: usize, key_len: usize, ciphertext: usize) -> Intro {
        Intro {
            from: UserId([1; 32]),
            device: DeviceId([2; 32]),
            to: UserId([3; 32]),
            recipients: (0..recipients)
                .map(|i| (DeviceId([(i % 250) as u8; 32]), SealedKey(vec![4; key_len])))
                .collect(),
            nonce: [5; 24],
            ciphertext: vec![6; ciphertext],
            signature: [7; 64],
        }
    }

    fn card(len: usize) -> SealedCard {
        SealedCard {
            epoch: 1,
            nonce: [8; 24],
            ciphertext: vec![9; len],
        }
    }

    fn profile(len: usize) -> SealedProfile {
        SealedProfile {
            version: 2,
            nonce: [1; 24],
            ciphertext: vec![2; len],
        }
    }

    #[test]
    fn intros_profiles_cards_and_their_bodies_are_checked_at_every_limit() {
        enforced_at("intro recipients", MAX_CHAIN_DEVICES, |n| intro(n, 104, 10));
        enforced_at("sealed key", MAX_SEALED_KEY_LEN, |n| intro(1, n, 10));
        enforced_at("intro ciphertext", MAX_INTRO_CIPHERTEXT_LEN, |n| {
            intro(1, 104, n)
        });
        enforced_at("note", MAX_NOTE_LEN, |n| IntroBody {
            note: "n".repeat(n),
            profile_key: ProfileKey::from_bytes(&[1; 32]),
        });
        enforced_at("profile ciphertext", MAX_PROFILE_CIPHERTEXT_LEN, profile);
        enforced_at("display name", MAX_DISPLAY_NAME_LEN, |n| ProfileBody {
            display_name: "d".repeat(n),
            avatar: None,
        });
        enforced_at("avatar reference", MAX_AVATAR_REF_LEN, |n| ProfileBody {
            display_name: String::new(),
            avatar: Some("a".repeat(n)),
        });
        enforced_at("card ciphertext", MAX_CARD_CIPHERTEXT_LEN, card);
        enforced_at("handle", MAX_HANDLE_INPUT_LEN, |n| CardBody {
            profile_key: None,
            pinned: None,
            handle: Some("h".repeat(n)),
        });
    }

    #[test]
    fn people_frames_and_notices_are_checked_at_every_limit() {
        let user = UserId([3; 32]);
        enforced_at("intro ciphertext", MAX_INTRO_CIPHERTEXT_LEN, |n| {
            ClientFrame::ContactRequest(Box::new(intro(1, 104, n)))
        });
        enforced_at("intro ciphertext", MAX_INTRO_CIPHERTEXT_LEN, |n| {
            ClientFrame::ContactAccept(Box::new(intro(1, 104, n)))
        });
        enforced_at("profile ciphertext", MAX_PROFILE_CIPHERTEXT_LEN, |n| {
            ClientFrame::ProfileSet(profile(n))
        });
        enforced_at("card ciphertext", MAX_CARD_CIPHERTEXT_LEN, |n| {
            ClientFrame::ContactCard {
                peer: user,
                card: card(n),
            }
        });
        enforced_at("handle name", MAX_HANDLE_INPUT_LEN, |n| {
            ClientFrame::HandleSet {
                name: Some("x".repeat(n)),
            }
        });
        enforced_at("handle", MAX_HANDLE_INPUT_LEN, |n| ClientFrame::Whois {
            handle: "x".repeat(n),
        });
        enforced_at("handle", MAX_HANDLE_INPUT_LEN, |n| ServerFrame::HandleIs {
            handle: Some("x".repeat(n)),
        });
        enforced_at("handle", MAX_HANDLE_INPUT_LEN, |n| {
            ServerFrame::WhoisResult {
                handle: "x".repeat(n),
                user: None,
            }
        });
        enforced_at("profile ciphertext", MAX_PROFILE_CIPHERTEXT_LEN, |n| {
            ServerFrame::Profile {
                user,
                profile: Some(profile(n)),
            }
        });
        enforced_at("card ciphertext", MAX_CARD_CIPHERTEXT_LEN, |n| {
            ServerFrame::Contacts {
                contacts: vec![people::ContactInfo {
                    user,
                    state: people::ContactState::Contact,
                    profile_version: 1,
                    last_seen: None,
                    since: 0,
                    card: Some(card(n)),
                }],
                presence_visible: true,
                more: false,
            }
        });
        enforced_at("intro ciphertext", MAX_INTRO_CIPHERTEXT_LEN, |n| {
            Notice::RequestReceived {
                intro: Box::new(intro(1, 104, n)),
            }
        });
        enforced_at("handle", MAX_HANDLE_INPUT_LEN, |n| Notice::HandleChanged {
            handle: Some("x".repeat(n)),
        });
    }

    #[test]
    fn handle_input_is_bounded_before_spaces_are_trimmed() {
        // 128 bytes with the spaces around it: fine; 129: refused before anything else.
        let padded = |len: usize| format!("{:>len$}", "alice.07");
        assert_eq!(padded(MAX_HANDLE_INPUT_LEN).len(), MAX_HANDLE_INPUT_LEN);
        assert_eq!(
            padded(MAX_HANDLE_INPUT_LEN)
                .parse::<Handle>()
                .unwrap()
                .to_string(),
            "alice.07"
        );
        assert_eq!(
            padded(MAX_HANDLE_INPUT_LEN + 1).parse::<Handle>(),
            Err(HandleError::TooLong)
        );
        let name = |len: usize| format!("{:>len$}", "alice");
        assert_eq!(
            people::normalize_name(&name(MAX_HANDLE_INPUT_LEN)).unwrap(),
            "alice"
        );
        assert_eq!(
            people::normalize_name(&name(MAX_HANDLE_INPUT_LEN + 1)),
            Err(HandleError::TooLong)
        );
    }
}

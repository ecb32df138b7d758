//! The decoding limits: the numbers in `docs/protocol.md` are the ones the code enforces, and
//! every limited field of every message a peer decodes is accepted at its limit and refused
//! one past it. Two peers that disagree on a limit refuse each other's frames, so the limits
//! are part of the wire format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;

use ferry_protocol::codec::{self, DecodeError, Wire};
use ferry_protocol::handshake::{AuthBody, ServerHandshakeMessage, SessionStart};
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

/// A certificate as it arrives: decoding checks its length limit, not its signature.
fn certificate(name_len: usize) -> DeviceCertificate {
    DeviceCertificate {
        user: UserId([1; 32]),
        device: DeviceId([2; 32]),
        name: "n".repeat(name_len),
        created_at: 5,
        signature: [9; 64],
    }
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
        certificate: certificate(name_len),
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
}

#[test]
fn handshake_messages_are_checked_at_every_limit() {
    enforced_at("error message", MAX_ERROR_MESSAGE_LEN, |n| {
        ServerHandshakeMessage::Reject(error(n))
    });
    enforced_at("error message", MAX_ERROR_MESSAGE_LEN, |n| {
        SessionStart::Rejected(error(n))
    });
    enforced_at("device name", MAX_DEVICE_NAME_LEN, |n| AuthBody {
        user: UserId([1; 32]),
        device: DeviceId([2; 32]),
        certificate: certificate(n),
        resume: Some(3),
    });
}

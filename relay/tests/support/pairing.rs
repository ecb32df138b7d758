//! One whole pairing through relays, as a honest inviter and joiner run it.

use std::sync::Arc;

use ferry_protocol::epoch::ExchangeSecret;
use ferry_protocol::pairing::{Inviter, Joiner, PairingCode};
use ferry_protocol::seal::DataKey;
use ferry_protocol::{ClientFrame, DeviceKey, LinkBody, ServerFrame, SigningKey};
use rand_core::OsRng;

use super::client::{Client, Identity};

/// `inviter` (a session of `laptop`) opens a slot and draws a fresh code, `joiner` (an anonymous session, on
/// the same node or another) types it, and the PAKE runs to the request; the inviter admits the
/// joiner in the chain (an `Admit` signed by its own device key) and only then grants it the
/// data key, and the slot closes. Returns the code (now used) and the new device's identity
/// (admitted).
pub async fn pair(
    inviter: &mut Client,
    joiner: &mut Client,
    laptop: &Identity,
    data_key: &DataKey,
) -> (PairingCode, Identity) {
    // The relay assigns the slot; the inviter draws the secret digits.
    let slot = inviter.open_pairing().await.expect("a slot opens");
    let code = PairingCode::generate(slot, &mut OsRng);
    let pake = Inviter::start(&code, &inviter.relay, &mut OsRng);

    // The joiner types the code, and pins the same relay key (a node of the same relay).
    let typed = PairingCode::parse(&code.text()).unwrap();
    let (peer, hello) = Joiner::start(&typed, &joiner.relay, &mut OsRng);
    joiner
        .send(&ClientFrame::PairJoin {
            slot: typed.slot(),
            body: hello,
        })
        .await;

    let ServerFrame::PairPeer { body, .. } = inviter.pairing_frame().await else {
        panic!("joiner hello")
    };
    let (pake, reply) = pake.handle_joiner_hello(&body).unwrap();
    inviter
        .send(&ClientFrame::PairForward {
            slot: code.slot(),
            body: reply,
        })
        .await;

    let tablet = DeviceKey::generate(&mut OsRng);
    let exchange = ExchangeSecret::generate(&mut OsRng).public();
    let ServerFrame::PairPeer { body, .. } = joiner.pairing_frame().await else {
        panic!("inviter hello")
    };
    let (peer, request) = peer
        .handle_inviter_hello(&body, &tablet, exchange, "tablet")
        .unwrap();
    assert_eq!(peer.confirmation(), pake.confirmation());
    joiner
        .send(&ClientFrame::PairForward {
            slot: code.slot(),
            body: request,
        })
        .await;

    let ServerFrame::PairPeer { body, .. } = inviter.pairing_frame().await else {
        panic!("joiner request")
    };
    let (request, ready) = pake.handle_joiner_request(&body).unwrap();
    assert_eq!((request.device, request.exchange), (tablet.id(), exchange));
    // The user confirmed the strings match: the inviter admits exactly what was asked, and
    // grants the data key only once the relay stored the link.
    let admit = LinkBody::Admit {
        device: request.device,
        exchange: request.exchange,
        name: request.name.clone(),
        created_at: 1_700_000_000,
    };
    inviter
        .sign_and_append(laptop.user.id(), admit, SigningKey::Device(&laptop.device))
        .await
        .expect("the inviter's Admit is stored");
    let grant = ready.grant(laptop.user.id(), &[(0, data_key)]);
    inviter
        .send(&ClientFrame::PairForward {
            slot: code.slot(),
            body: grant,
        })
        .await;
    inviter
        .send(&ClientFrame::PairClose {
            slot: code.slot(),
            success: true,
        })
        .await;

    let ServerFrame::PairPeer { body, .. } = joiner.pairing_frame().await else {
        panic!("grant")
    };
    let grant = peer.handle_grant(&body).unwrap();
    assert_eq!(grant.user, laptop.user.id());
    assert_eq!(grant.epochs.len(), 1);
    assert_eq!(grant.epochs[0].1.bytes(), data_key.bytes());
    assert_eq!(
        joiner.pairing_frame().await,
        ServerFrame::PairClosed {
            slot: code.slot(),
            code: None
        }
    );
    let paired = Identity::admitted(Arc::clone(&laptop.user), tablet, exchange, &request.name);
    (code, paired)
}

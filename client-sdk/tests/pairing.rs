//! Pairing against a real relay started in-process: devices join through `SLOT-DDDDDD` codes,
//! then sync through the ordinary client; wrong, expired, unknown and raced codes fail with
//! the error a user can act on; the relay never holds a key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_client::pairing::{self, Invitation, Join, Paired};
use ferry_client::{Client, ClientState, PairingError, RelayId, StateError};
use ferry_protocol::codec;
use ferry_protocol::pairing::{Joiner, PairingCode, PairingMessage};
use ferry_protocol::{ClientFrame, DeviceKey, ErrorCode, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Runs the inviter's side in the background: waits for a device and admits it.
fn admit_in_background(invitation: Invitation) -> JoinHandle<Result<Paired, PairingError>> {
    tokio::spawn(async move {
        tokio::time::timeout(WAIT, invitation.wait())
            .await
            .expect("the inviter finished")
    })
}

async fn join_with(
    dir: &Path,
    relay: &TestRelay,
    code: &str,
    name: &str,
) -> Result<ClientState, PairingError> {
    tokio::time::timeout(
        WAIT,
        pairing::join(dir, &relay.url(), relay.relay_id, code, name, &fast()),
    )
    .await
    .expect("the joiner finished")
}

/// The same slot (before the dash), other digits: reaches the inviter, fails the PAKE.
fn wrong_code(code: &str) -> String {
    let (slot, digits) = code.split_once('-').unwrap();
    let digits: u32 = digits.parse().unwrap();
    format!("{slot}-{:06}", (digits + 1) % 1_000_000)
}

/// The six secret digits of a code.
fn secret(code: &str) -> &str {
    code.split_once('-').unwrap().1
}

/// The inviter's user takes longer than the relay's idle timeout to compare the strings: the
/// pairing's session stays alive meanwhile and the device is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_takes_longer_than_the_idle_timeout_to_answer_still_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(
        &dir.path().join("relay"),
        free_addr(),
        Arc::new(|config: &mut ferry_relay::config::Config| {
            config.limits.idle_timeout_ms = 1_000;
            config.limits.pairing_idle_timeout_ms = 1_000;
        }),
    );
    let options = fast().ping_interval(Duration::from_millis(200));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let invitation = pairing::invite(&laptop_state, &options).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = tokio::spawn(async move {
        let mut pending = invitation.joined().await?;
        // Three idle timeouts of thinking.
        pending
            .while_deciding(tokio::time::sleep(Duration::from_secs(3)))
            .await?;
        pending.admit().await
    });
    let join = Join::start(
        dir.path().join("phone"),
        &relay.url(),
        relay.relay_id,
        &code,
        "phone",
        &options,
    )
    .await
    .unwrap();
    let phone = join.finish().await.unwrap();
    let paired = inviter.await.unwrap().unwrap();
    assert_eq!(paired.device, phone.device_id());
}

#[tokio::test]
async fn a_new_device_pairs_syncs_both_ways_and_pairs_a_third() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let relay = TestRelay::start(&relay_dir);
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    // The data key of epoch 0 (the only one so far); no device has the user key.
    let secrets = [laptop_state.epoch_keys()[0].1.bytes().to_vec()];
    let mut laptop = Client::connect(laptop_state, fast()).await.unwrap();
    laptop.append(b"before pairing").await.unwrap();

    // The laptop invites while it keeps syncing; the phone types the code.
    let invitation = laptop.invite().await.unwrap();
    let code = invitation.code().to_string();
    // The relay assigned slot 1 (the first free); six secret digits follow.
    let (slot, digits) = code.split_once('-').unwrap();
    assert_eq!(slot, "1", "{code}");
    assert_eq!(digits.len(), 6);
    assert!(digits.bytes().all(|b| b.is_ascii_digit()));
    assert!(
        !format!("{invitation:?}").contains(digits),
        "Debug hides the code"
    );
    let inviter = tokio::spawn(async move {
        let pending = invitation.joined().await?;
        let shown = pending.confirmation().to_owned();
        let paired = pending.admit().await?;
        assert_eq!(paired.confirmation, shown);
        Ok::<_, PairingError>(paired)
    });
    let typed = format!("{slot} - {} {}", &digits[..3], &digits[3..]);
    let join = Join::start(
        dir.path().join("phone"),
        &relay.url(),
        relay.relay_id,
        &typed,
        "phone",
        &fast(),
    )
    .await
    .unwrap();
    let phone_confirmation = join.confirmation().to_owned();
    let phone_id = join.device_id();
    let phone_state = join.finish().await.unwrap();
    let paired = inviter.await.unwrap().unwrap();
    assert_eq!(paired.confirmation, phone_confirmation);
    assert_eq!(phone_confirmation.len(), 9, "{phone_confirmation}");
    assert_eq!((paired.device, paired.name.as_str()), (phone_id, "phone"));
    assert_eq!(phone_state.device_id(), phone_id);
    assert_eq!(phone_state.user_id(), laptop.user_id());
    assert_eq!(phone_state.device_name(), "phone");
    let granted = phone_state.epoch_keys();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].1.bytes().as_slice(), &secrets[0][..]);
    // Admitted by the laptop's link: the chain is Create, the laptop, the phone.
    assert_eq!(phone_state.chain_len(), 3);
    assert_eq!(
        (phone_state.relay_url(), phone_state.relay_key()),
        (relay.url().as_str(), relay.relay_id)
    );

    // The phone is a device of the user like any other: both ways through the client.
    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    assert_eq!(
        texts(&until_caught_up(&mut phone).await),
        ["before pairing"]
    );
    phone.append(b"from the phone").await.unwrap();
    laptop.append(b"from the laptop").await.unwrap();
    assert_eq!(
        texts(&events(&mut laptop, 3).await),
        ["before pairing", "from the phone", "from the laptop"]
    );
    assert_eq!(
        texts(&events(&mut phone, 2).await),
        ["from the phone", "from the laptop"]
    );

    // A paired device can invite in turn: a third device sees the whole log.
    let invitation = phone.invite().await.unwrap();
    let code = invitation.code().to_string();
    let inviter = admit_in_background(invitation);
    let tablet_state = join_with(&dir.path().join("tablet"), &relay, &code, "tablet")
        .await
        .unwrap();
    assert_eq!(inviter.await.unwrap().unwrap().name, "tablet");
    let mut tablet = Client::connect(tablet_state, fast()).await.unwrap();
    assert_eq!(
        texts(&until_caught_up(&mut tablet).await),
        ["before pairing", "from the phone", "from the laptop"]
    );
    let devices = laptop.list_devices().await.unwrap();
    let mut names: Vec<_> = devices.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["laptop", "phone", "tablet"]);

    // The relay forwarded the keys sealed: no trace of them in its files, raw or in hex.
    tablet.close().await.unwrap();
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
    let mut scanned = 0;
    for file in walk(&relay_dir) {
        let bytes = std::fs::read(&file).unwrap();
        scanned += bytes.len();
        for secret in &secrets {
            for needle in [secret.clone(), hex::encode(secret).into_bytes()] {
                assert!(!contains(&bytes, &needle), "{} holds a key", file.display());
            }
        }
    }
    assert!(scanned > 0, "the relay has files");
    assert!(
        walk(&relay_dir)
            .iter()
            .any(|f| f.to_string_lossy().contains("ferry.db"))
    );
}

#[tokio::test]
async fn a_wrong_code_burns_the_slot_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = admit_in_background(invitation);

    let phone = dir.path().join("phone");
    let error = join_with(&phone, &relay, &wrong_code(&code), "phone")
        .await
        .unwrap_err();
    assert!(matches!(error, PairingError::WrongCode), "{error:?}");
    assert!(error.to_string().contains("burned"), "{error}");
    let error = inviter.await.unwrap().unwrap_err();
    assert!(matches!(error, PairingError::WrongCode), "{error:?}");
    assert!(matches!(
        ClientState::open(&phone),
        Err(StateError::NotFound(_))
    ));

    // Even the right code is refused now.
    let error = join_with(&phone, &relay, &code, "phone").await.unwrap_err();
    assert!(matches!(error, PairingError::CodeUsed), "{error:?}");
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let adjust: Adjust = Arc::new(|config| config.limits.pairing_ttl_secs = 1);
    let relay = TestRelay::start_with(&dir.path().join("relay"), free_addr(), adjust);
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let left = invitation
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(left <= Duration::from_secs(1), "{left:?}");
    let code = invitation.code().to_string();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let error = join_with(&dir.path().join("phone"), &relay, &code, "phone")
        .await
        .unwrap_err();
    assert!(matches!(error, PairingError::Expired), "{error:?}");
    // The inviter stops waiting when the code expires.
    let error = tokio::time::timeout(WAIT, invitation.wait())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, PairingError::Expired), "{error:?}");
}

#[tokio::test]
async fn two_devices_racing_for_one_code_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = admit_in_background(invitation);

    let (phone, tablet) = (dir.path().join("phone"), dir.path().join("tablet"));
    let (a, b) = tokio::join!(
        join_with(&phone, &relay, &code, "phone"),
        join_with(&tablet, &relay, &code, "tablet")
    );
    let paired = inviter.await.unwrap().unwrap();
    let (winner, loser) = match (a, b) {
        (Ok(state), Err(e)) | (Err(e), Ok(state)) => (state, e),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert_eq!(winner.device_id(), paired.device);
    // Both typed the right code: the loser is told the code is used, never that it is wrong
    // (which would mean the relay passed its messages to the inviter).
    assert!(matches!(loser, PairingError::CodeUsed), "{loser:?}");
}

/// A joiner that speaks the wire protocol itself, so it can send the inviter what an
/// honest [`Join`] never would.
struct RawJoiner {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    channel: ferry_protocol::ClientChannel,
}

impl RawJoiner {
    async fn connect(relay: &TestRelay) -> Self {
        use ferry_protocol::handshake::{ClientHandshake, Credentials};
        let (mut ws, _) = tokio_tungstenite::connect_async(relay.url()).await.unwrap();
        let (state, hello) = ClientHandshake::start(relay.relay_id, &mut rand_core::OsRng);
        ws.send(Message::Binary(hello.into())).await.unwrap();
        let server_hello = Self::binary(&mut ws).await;
        let (state, start) = state
            .handle_server_hello(&server_hello, Credentials::Anonymous)
            .unwrap();
        ws.send(Message::Binary(start.into())).await.unwrap();
        let established = Self::binary(&mut ws).await;
        let (_, channel) = state.handle_session(&established).unwrap();
        Self { ws, channel }
    }

    async fn binary(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Vec<u8> {
        loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("relay answered")
            {
                Some(Ok(Message::Binary(bytes))) => return bytes.to_vec(),
                Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    async fn send(&mut self, frame: ClientFrame) {
        let bytes = self.channel.seal(&frame).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next pairing frame (pings and other traffic skipped).
    async fn pairing_frame(&mut self) -> ServerFrame {
        loop {
            let bytes = Self::binary(&mut self.ws).await;
            match self.channel.open(&bytes).unwrap() {
                frame @ (ServerFrame::PairPeer { .. }
                | ServerFrame::PairClosed { .. }
                | ServerFrame::Error(_)) => return frame,
                _ => continue,
            }
        }
    }
}

/// Runs steps 1–2 with a raw joiner that typed `typed`; returns the inviter's hello.
async fn raw_join(relay: &TestRelay, typed: &str) -> (RawJoiner, Joiner, u16, Vec<u8>) {
    let code = PairingCode::parse(typed).unwrap();
    let mut raw = RawJoiner::connect(relay).await;
    let (joiner, hello) = Joiner::start(&code, &relay.relay_id, &mut rand_core::OsRng);
    raw.send(ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello,
    })
    .await;
    let ServerFrame::PairPeer { body, .. } = raw.pairing_frame().await else {
        panic!("the inviter's hello")
    };
    (raw, joiner, code.slot(), body)
}

#[tokio::test]
async fn the_inviter_hands_no_keys_to_a_joiner_that_did_not_prove_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let device = DeviceKey::generate(&mut rand_core::OsRng);

    // A joiner with a wrong code ignores its own check and sends a request anyway (it cannot
    // make a valid one: random confirmation, random sealed bytes).
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = admit_in_background(invitation);
    let (mut raw, joiner, slot, inviter_hello) = raw_join(&relay, &wrong_code(&code)).await;
    assert!(
        joiner
            .handle_inviter_hello(&inviter_hello, &device, [5; 32], "rogue")
            .is_err()
    );
    let mut confirm = [0u8; 32];
    let mut sealed = vec![0u8; 120];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut confirm);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut sealed);
    raw.send(ClientFrame::PairForward {
        slot,
        body: codec::encode(&PairingMessage::JoinerRequest { confirm, sealed }),
    })
    .await;
    let error = inviter.await.unwrap().unwrap_err();
    assert!(matches!(error, PairingError::WrongCode), "{error:?}");
    // The joiner gets the failure, never a grant.
    assert_eq!(
        raw.pairing_frame().await,
        ServerFrame::PairClosed {
            slot,
            code: Some(ErrorCode::PairingFailed)
        }
    );

    // A joiner with the right code whose request is tampered with on the way (one bit of the
    // sealed part): the inviter refuses it too.
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = admit_in_background(invitation);
    let (mut raw, joiner, slot, inviter_hello) = raw_join(&relay, &code).await;
    let (_, request) = joiner
        .handle_inviter_hello(&inviter_hello, &device, [5; 32], "phone")
        .unwrap();
    let PairingMessage::JoinerRequest {
        confirm,
        mut sealed,
    } = codec::decode(&request).unwrap()
    else {
        panic!("a JoinerRequest")
    };
    sealed[0] ^= 1;
    raw.send(ClientFrame::PairForward {
        slot,
        body: codec::encode(&PairingMessage::JoinerRequest { confirm, sealed }),
    })
    .await;
    let error = inviter.await.unwrap().unwrap_err();
    assert!(
        matches!(error, PairingError::WrongCode | PairingError::Protocol(_)),
        "{error:?}"
    );
    assert_eq!(
        raw.pairing_frame().await,
        ServerFrame::PairClosed {
            slot,
            code: Some(ErrorCode::PairingFailed)
        }
    );
    // Nothing is registered for either key.
    let devices = Client::connect(laptop, fast())
        .await
        .unwrap()
        .list_devices()
        .await
        .unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
}

#[tokio::test]
async fn unknown_codes_bad_input_and_wrong_relays_fail_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone = dir.path().join("phone");

    // No pairing waits: whatever code is typed is unknown.
    let error = join_with(&phone, &relay, "1-123456", "phone")
        .await
        .unwrap_err();
    assert!(matches!(error, PairingError::UnknownCode), "{error:?}");
    assert!(error.to_string().contains("check the code"), "{error}");

    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = admit_in_background(invitation);

    // Refused before anything is sent, so the code survives every one of these.
    let undashed = code.replace('-', "");
    let slot_zero = format!("0-{}", secret(&code));
    for typed in [
        "12345",
        "12345a",
        "1234567",
        secret(&code),
        &undashed,
        &slot_zero,
    ] {
        let name = "phone";
        let error = join_with(&phone, &relay, typed, name).await.unwrap_err();
        assert!(matches!(error, PairingError::BadCode), "{typed}: {error:?}");
    }
    let error = join_with(&phone, &relay, &code, &"x".repeat(65))
        .await
        .unwrap_err();
    assert!(matches!(error, PairingError::NameTooLong), "{error:?}");
    let laptop_dir = dir.path().join("laptop");
    let error = join_with(&laptop_dir, &relay, &code, "phone")
        .await
        .unwrap_err();
    assert!(
        matches!(error, PairingError::State(StateError::AlreadyExists(_))),
        "{error:?}"
    );
    let wrong_key = RelayId([7; 32]);
    let error = pairing::join(&phone, &relay.url(), wrong_key, &code, "phone", &fast())
        .await
        .unwrap_err();
    assert!(
        matches!(error, PairingError::WrongRelayKey { found, .. } if found == relay.relay_id),
        "{error:?}"
    );
    let nowhere = format!("ws://{}/ws", free_addr());
    let error = pairing::join(&phone, &nowhere, relay.relay_id, &code, "phone", &fast())
        .await
        .unwrap_err();
    assert!(
        matches!(error, PairingError::RelayUnreachable(_)),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with("relay unreachable"),
        "{error}"
    );

    // The code still works.
    let state = join_with(&phone, &relay, &code, "phone").await.unwrap();
    assert_eq!(inviter.await.unwrap().unwrap().device, state.device_id());
}

#[tokio::test]
async fn the_inviter_can_refuse_and_a_joiner_that_leaves_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone = dir.path().join("phone");

    // The confirmation strings did not match (say): the inviter refuses; nothing is written.
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = tokio::spawn(async move { invitation.joined().await.unwrap().refuse().await });
    let join = Join::start(
        &phone,
        &relay.url(),
        relay.relay_id,
        &code,
        "phone",
        &fast(),
    )
    .await
    .unwrap();
    inviter.await.unwrap().unwrap();
    let error = join.finish().await.unwrap_err();
    assert!(matches!(error, PairingError::Refused), "{error:?}");
    assert!(matches!(
        ClientState::open(&phone),
        Err(StateError::NotFound(_))
    ));

    // The new device goes away before the grant: the inviter is told, not left believing.
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    // The inviter's is the only connection now (the ones above have ended).
    wait_until("only the inviter is connected", || {
        gauge(&relay, "ferry_connections") == 1
    })
    .await;
    let inviter = tokio::spawn(async move { invitation.joined().await });
    let join = Join::start(
        &phone,
        &relay.url(),
        relay.relay_id,
        &code,
        "phone",
        &fast(),
    )
    .await
    .unwrap();
    let pending = inviter.await.unwrap().unwrap();
    assert_eq!(pending.confirmation(), join.confirmation());
    // Once the relay has seen the joiner's connection end (only the inviter's is left), the
    // grant has nowhere to go.
    drop(join);
    wait_until("the relay noticed the joiner left", || {
        gauge(&relay, "ferry_connections") == 1
    })
    .await;
    let error = pending.admit().await.unwrap_err();
    assert!(matches!(error, PairingError::PeerLeft), "{error:?}");

    // The inviter goes away: the joiner is told.
    let invitation = pairing::invite(&laptop, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = tokio::spawn(async move { invitation.joined().await });
    let join = Join::start(
        &phone,
        &relay.url(),
        relay.relay_id,
        &code,
        "phone",
        &fast(),
    )
    .await
    .unwrap();
    drop(inviter.await.unwrap().unwrap());
    let error = tokio::time::timeout(WAIT, join.finish())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, PairingError::PeerLeft), "{error:?}");
}

/// The value of the gauge `name` in the relay's metrics.
fn gauge(relay: &TestRelay, name: &str) -> i64 {
    let metrics = relay.metrics();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn join_attempts_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    // A burst of one join (a quarter of four a minute).
    let adjust: Adjust = Arc::new(|config| config.limits.pair_joins_per_ip_per_minute = 4);
    let relay = TestRelay::start_with(&dir.path().join("relay"), free_addr(), adjust);
    let phone = dir.path().join("phone");
    let error = join_with(&phone, &relay, "1-123456", "phone")
        .await
        .unwrap_err();
    assert!(matches!(error, PairingError::UnknownCode), "{error:?}");
    let error = join_with(&phone, &relay, "2-654321", "phone")
        .await
        .unwrap_err();
    assert!(matches!(error, PairingError::RateLimited), "{error:?}");
    assert!(error.to_string().contains("wait"), "{error}");
}

#[tokio::test]
async fn a_device_behind_the_relay_retention_can_still_invite() {
    let dir = tempfile::tempdir().unwrap();
    let adjust: Adjust = Arc::new(|config| {
        config.log.retention_max_events = Some(3);
        config.log.retention_interval_secs = 1;
    });
    let relay = TestRelay::start_with(&dir.path().join("relay"), free_addr(), adjust);
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    for i in 0..10 {
        laptop.append(format!("{i}").as_bytes()).await.unwrap();
    }
    laptop.close().await.unwrap();
    wait_until("retention trimmed the log to 3 events", || {
        relay.metrics().contains("ferry_trimmed_events_total 7\n")
    })
    .await;

    // The phone's cursor (0) is below what the relay keeps: its sessions are told to resync.
    // Pairing does not read the log, so it goes ahead, and the phone's cursor stays.
    let invitation = pairing::invite(&phone, &fast()).await.unwrap();
    let code = invitation.code().to_string();
    let inviter = admit_in_background(invitation);
    let tablet = join_with(&dir.path().join("tablet"), &relay, &code, "tablet")
        .await
        .unwrap();
    inviter.await.unwrap().unwrap();
    let mut tablet = Client::connect(tablet, fast()).await.unwrap();
    let error = tokio::time::timeout(WAIT, tablet.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, ferry_client::ClientError::ResyncRequired { .. }),
        "{error:?}"
    );
    let error = Client::connect(phone, fast())
        .await
        .unwrap()
        .next_event()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ferry_client::ClientError::ResyncRequired { .. }),
        "{error:?}"
    );
}

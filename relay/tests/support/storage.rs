//! The storage story harness: one suite written against `Arc<dyn Store>`, run against SQLite
//! (a fresh file in a temporary folder) and PostgreSQL (`FERRY_TEST_POSTGRES_URL`, shared
//! with other tests, so every story uses fresh random users and never truncates anything).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferry_protocol::{
    Chain, DeviceId, Event, Link, LinkBody, SealedPayload, SigningKey, UserId, UserKey,
};
use ferry_relay::store::{self, AppendOutcome, AppendRequest, Store, StoreError, StoreOptions};
use rand_core::OsRng;

use super::client::{Identity, sealed_key};

/// A realistic commit time (Unix milliseconds).
pub const NOW_MS: u64 = 1_700_000_000_000;

/// One backend under test (the folder of a SQLite database lives as long as it).
pub struct Db {
    pub store: Arc<dyn Store>,
    pub url: String,
    pub dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("ferry.db").display()
    );
    let store = store::open(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    Db {
        store,
        url,
        dir: Some(dir),
    }
}

pub async fn postgres() -> Option<Db> {
    let url = super::postgres_url().await?;
    let options = StoreOptions {
        max_connections: 4,
        ..StoreOptions::default()
    };
    let store = store::open_with(&url, &options).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    Some(Db {
        store,
        url,
        dir: None,
    })
}

/// Every story runs once per backend: `sqlite::<story>` and `postgres::<story>`.
#[macro_export]
macro_rules! storage_story {
    ($($story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    super::$story($crate::support::storage::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    if let Some(db) = $crate::support::storage::postgres().await {
                        super::$story(db).await;
                    }
                }
            )*
        }
    };
}

/// The user keys of the users made by [`user`], so that stories can sign their chains.
fn user_keys() -> &'static Mutex<HashMap<UserId, [u8; 32]>> {
    static KEYS: OnceLock<Mutex<HashMap<UserId, [u8; 32]>>> = OnceLock::new();
    KEYS.get_or_init(Mutex::default)
}

/// A fresh user whose user key the stories hold (see [`admit`]).
pub fn user() -> UserId {
    let key = UserKey::generate(&mut OsRng);
    let id = key.id();
    user_keys().lock().unwrap().insert(id, *key.secret_bytes());
    id
}

/// The user key of a user made by [`user`].
pub fn user_key(user: UserId) -> UserKey {
    let secret = user_keys().lock().unwrap()[&user];
    UserKey::from_secret_bytes(&secret)
}

/// Seconds since the Unix epoch that stories store as admission and revocation times.
pub const NOW_S: u64 = NOW_MS / 1000;

/// The user's chain as the store holds it (every page), verified.
pub async fn stored_chain(store: &dyn Store, user: UserId) -> Chain {
    let mut links: Vec<Link> = Vec::new();
    loop {
        let after = links.last().map_or(0, |link| link.seqno);
        let page = store.chain_links(user, after, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        links.extend(page);
    }
    Chain::verify(user, &links).expect("the stored chain verifies")
}

/// Signs `body` with `key` as the next link of the stored chain and appends it, signing again
/// when a concurrent link took the position first.
pub async fn append_body(
    store: &dyn Store,
    user: UserId,
    body: LinkBody,
    key: SigningKey<'_>,
    max_devices: usize,
) -> Result<Link, StoreError> {
    loop {
        let link = stored_chain(store, user).await.sign(body.clone(), key);
        match store.append_link(&link, max_devices, NOW_S).await {
            Ok(appended) => {
                assert_eq!(appended.seqno, link.seqno);
                return Ok(link);
            }
            Err(StoreError::ChainLinkRefused(_))
                if stored_chain(store, user).await.seqno() >= link.seqno => {}
            Err(e) => return Err(e),
        }
    }
}

/// The `Admit` body of `device` (any id: admitting needs no device key).
pub fn admit_body(device: DeviceId) -> LinkBody {
    LinkBody::Admit {
        device,
        exchange: [5; 32],
        name: format!("device {}", &device.to_hex()[..8]),
        created_at: NOW_S,
    }
}

/// Admits `devices` in the chain of `user` (a user made by [`user`]), creating the chain
/// first if there is none: only admitted devices may append.
pub async fn admit(store: &dyn Store, user: UserId, devices: &[DeviceId]) {
    admit_with(store, &user_key(user), devices).await;
}

/// Admits the test device `id` straight in the store (the user key signs, as in a recovery
/// session), for stories that fill a log before any device connects.
pub async fn admit_identity(store: &dyn Store, id: &Identity) {
    admit_with(store, &id.user.key, &[id.device.id()]).await;
    id.mark_admitted();
}

/// [`admit`] with the user key at hand.
pub async fn admit_with(store: &dyn Store, key: &UserKey, devices: &[DeviceId]) {
    let user = key.id();
    if stored_chain(store, user).await.seqno() == 0 {
        let create = LinkBody::Create {
            recovery_exchange: [9; 32],
            epoch_key: sealed_key(),
        };
        match append_body(store, user, create, SigningKey::User(key), 1000).await {
            // A concurrent admission created it.
            Ok(_) | Err(StoreError::ChainLinkRefused(_)) => {}
            Err(e) => panic!("Create refused: {e}"),
        }
    }
    for device in devices {
        append_body(
            store,
            user,
            admit_body(*device),
            SigningKey::User(key),
            1000,
        )
        .await
        .unwrap();
    }
}

pub fn device() -> DeviceId {
    DeviceId(super::random_bytes())
}

pub fn payload(text: &str) -> SealedPayload {
    SealedPayload(text.as_bytes().to_vec())
}

pub fn req(user: UserId, device: DeviceId, device_seq: u64, text: &str) -> AppendRequest {
    AppendRequest {
        user,
        device,
        device_seq,
        payload: payload(text),
    }
}

pub fn appended(seq: u64) -> AppendOutcome {
    AppendOutcome::Appended { seq }
}

pub async fn append(store: &dyn Store, request: AppendRequest) -> AppendOutcome {
    store.append(&request, NOW_MS).await.unwrap()
}

/// The whole log of `user`, read in one page.
pub async fn all_events(store: &dyn Store, user: UserId) -> Vec<Event> {
    store.read_events(user, 0, 100_000).await.unwrap()
}

pub fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Polls `condition` until it holds, failing the test after 10 s.
pub async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

//! The storage story harness: one suite written against `Arc<dyn Store>`, run against SQLite
//! (a fresh file in a temporary folder) and PostgreSQL (`FERRY_TEST_POSTGRES_URL`, shared
//! with other tests, so every story uses fresh random users and never truncates anything).

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{DeviceId, Event, SealedPayload, UserId};
use ferry_relay::store::{self, AppendOutcome, AppendRequest, Store, StoreOptions};

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

pub fn user() -> UserId {
    UserId(super::random_bytes())
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

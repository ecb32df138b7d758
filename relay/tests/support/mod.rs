//! Helpers shared by the relay's integration tests: the PostgreSQL service, random ids and
//! (in [`client`]) a minimal Ferry client for driving a relay over real sockets.
//!
//! Tests share one PostgreSQL database with other tests running at the same time, so they
//! use fresh random user ids and never truncate or drop anything.

#![allow(dead_code)] // Each test crate uses its own subset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod apns_service;
pub mod client;
pub mod conversation;
pub mod device;
pub mod http;
pub mod node;
pub mod pairing;
pub mod proxy;
pub mod push_service;
pub mod redis;
pub mod storage;

use ferry_relay::redact_url;
use rand_core::{OsRng, RngCore};
use sqlx::Connection;

/// The database used when `FERRY_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The PostgreSQL URL to test against, or `None` when it is not reachable and not required.
///
/// With `FERRY_REQUIRE_SERVICES=1` an unreachable database fails the test instead, so CI
/// cannot pass by skipping.
pub async fn postgres_url() -> Option<String> {
    let url = std::env::var("FERRY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sqlx::PgConnection::connect(&url),
    );
    let why = match probe.await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            return Some(url);
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 5 s".to_owned(),
    };
    let shown = redact_url(&url);
    if std::env::var("FERRY_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("PostgreSQL not reachable at {shown} and FERRY_REQUIRE_SERVICES=1: {why}");
    }
    eprintln!("skipped: PostgreSQL not reachable at {shown}: {why}");
    None
}

/// A PostgreSQL database of a test's own, for a test whose jobs walk a whole database
/// (retention, deleting dead attachments) and must not touch the tests running beside it on
/// the shared one. `None` as [`postgres_url`]; drop it with [`PrivateDatabase::drop`].
pub async fn private_postgres(tag: &str) -> Option<PrivateDatabase> {
    let shared = postgres_url().await?;
    let name = format!("ferry_{tag}_{}", hex::encode(&random_bytes()[..6]));
    let mut admin = sqlx::PgConnection::connect(&shared).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    let url = match shared.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("a database URL ends with its name: {shared}"),
    };
    Some(PrivateDatabase { url, shared, name })
}

/// See [`private_postgres`].
pub struct PrivateDatabase {
    /// Its URL.
    pub url: String,
    shared: String,
    name: String,
}

impl PrivateDatabase {
    /// Drops the database (its connections closed by force).
    pub async fn drop(self) {
        let mut admin = sqlx::PgConnection::connect(&self.shared).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

/// 32 bytes from the OS RNG (fresh user and device ids).
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

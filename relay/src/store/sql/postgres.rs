//! Connecting to PostgreSQL: for production and for more than one relay node.
//!
//! Transactions run at the default READ COMMITTED isolation: each statement sees everything
//! committed before it started, in particular what the previous holder of a row lock
//! committed. What must stay stable inside a transaction is protected by locking the user's
//! row first ([`super::Tx::lock_user`]), in user order when a transaction locks several, so
//! two transactions, on this node or another, never wait on each other in a cycle.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::Db;
use crate::store::{StoreError, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Connects to the database at `url` and runs the migrations (under PostgreSQL's advisory
/// lock, so relay nodes starting together do not race).
pub(super) async fn connect(url: &str, options: &StoreOptions) -> Result<Db, StoreError> {
    let connect = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(Db::Postgres { pool })
}

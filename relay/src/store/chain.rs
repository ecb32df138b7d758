//! The device-chain domain of storage: each user's chain of signed links (admit, revoke,
//! rotate), and its mirror in `devices`.
//!
//! [`ChainStore::append_link`] is the only writer of both. In ONE transaction it locks the
//! user's row ([`Tx::lock_user`], the lock every append batch takes too), reads and verifies
//! the stored links ([`Chain::verify`]), applies the new link ([`Chain::apply`]: order, hash,
//! signature, signer status, epoch recipients), stores it, and mirrors it into `devices`: an
//! Admit inserts the device's row, a Revoke sets `revoked_at` on the devices it names. Because
//! an append batch checks, under the same lock, that each sender has an active row, an append
//! committed after a revocation is always refused: there is no window between the two. The
//! same transaction raises `users.chain_epoch` to the chain's data-key epoch (a Revoke or
//! Rotate starts a new one), which the append batch reads under the same lock to refuse
//! payloads sealed under a replaced epoch ([`AppendOutcome::StaleEpoch`]).
//! Every statement here is written once for both backends.

use async_trait::async_trait;
use ferry_protocol::chain::{Chain, Link, LinkBody};
use ferry_protocol::codec;
use ferry_protocol::{DeviceId, UserId};

#[cfg(doc)]
use super::AppendOutcome;
use super::StoreError;
use super::sql::{SqlStore, db_int, from_db_int, in_tx, on_reader};

/// Most encoded link bytes one [`ChainStore::chain_links`] page holds before the link that
/// passes it (one link is at most about 340 KiB), so a page always fits a frame.
pub const LINK_PAGE_BYTES: usize = 384 * 1024;

/// Storage of the users' device chains.
#[async_trait]
pub trait ChainStore: Send + Sync {
    /// Appends `link` to its user's chain (see the module docs) and returns its position and
    /// the devices it revoked.
    ///
    /// Fails with [`StoreError::ChainLinkRefused`] when the link does not extend the stored
    /// chain, and with [`StoreError::TooManyDevices`] when it admits a device beyond
    /// `max_devices` active ones; nothing is stored then. `now_s` (Unix seconds) becomes the
    /// admitted device's `registered_at` and `last_seen`, or the revoked devices'
    /// `revoked_at`.
    async fn append_link(
        &self,
        link: &Link,
        max_devices: usize,
        now_s: u64,
    ) -> Result<LinkAppended, StoreError>;

    /// Up to `limit` of the user's links after position `after`, in order; a page stops
    /// before its links pass [`LINK_PAGE_BYTES`] (but holds at least one link when there is
    /// one).
    async fn chain_links(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Link>, StoreError>;

    /// The number of links in the user's chain (0: no chain yet).
    async fn chain_seqno(&self, user: UserId) -> Result<u64, StoreError>;
}

/// A link stored by [`ChainStore::append_link`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkAppended {
    /// Its position: the chain's new length.
    pub seqno: u64,
    /// The devices it revoked (empty unless it is a Revoke).
    pub revoked: Vec<DeviceId>,
}

/// The SQL of [`ChainStore::chain_links`]: the first `$3` links after `$2`, then only those
/// whose encoded links before them sum to less than `$4`.
const CHAIN_PAGE_SQL: &str = "SELECT link FROM (
         SELECT seqno, link,
                SUM(LENGTH(link)) OVER (ORDER BY seqno ROWS UNBOUNDED PRECEDING)
                    - LENGTH(link) AS before
         FROM (SELECT seqno, link FROM chain_links
               WHERE user_id = $1 AND seqno > $2 ORDER BY seqno LIMIT $3) AS next
     ) AS page
     WHERE before < $4
     ORDER BY seqno";

fn decode_link(bytes: &[u8]) -> Result<Link, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt(format!("stored chain link: {e}")))
}

/// The length of user `$1`'s chain (NULL before its first link). Read by
/// [`ChainStore::chain_seqno`] and, with the other reads of a reconnect, by
/// [`Store::session_start`](super::Store::session_start).
pub(crate) const CHAIN_SEQNO_COLUMN: &str =
    "(SELECT MAX(seqno) FROM chain_links WHERE user_id = $1)";

/// [`ChainStore::chain_seqno`] from [`CHAIN_SEQNO_COLUMN`].
pub(crate) fn chain_seqno_from(seqno: Option<i64>) -> Result<u64, StoreError> {
    from_db_int(seqno.unwrap_or(0), "seqno")
}

#[async_trait]
impl ChainStore for SqlStore {
    async fn append_link(
        &self,
        link: &Link,
        max_devices: usize,
        now_s: u64,
    ) -> Result<LinkAppended, StoreError> {
        let user = link.user.as_bytes().as_slice();
        let mut tx = self.db.begin().await?;
        // The same lock as an append batch: a batch that commits after this transaction sees
        // its revocations.
        tx.lock_user(user).await?;
        let stored: Vec<Vec<u8>> = in_tx!(&mut tx, |conn| {
            sqlx::query_scalar("SELECT link FROM chain_links WHERE user_id = $1 ORDER BY seqno")
                .bind(user)
                .fetch_all(&mut *conn)
                .await?
        });
        let links = stored
            .iter()
            .map(|bytes| decode_link(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let mut chain = Chain::verify(link.user, &links).map_err(|(i, e)| {
            StoreError::Corrupt(format!("stored chain link {} does not verify: {e}", i + 1))
        })?;
        chain.apply(link).map_err(StoreError::ChainLinkRefused)?;
        if matches!(link.body, LinkBody::Admit { .. })
            && chain.active_devices().count() > max_devices
        {
            return Err(StoreError::TooManyDevices { max: max_devices });
        }
        let seqno = db_int(link.seqno);
        let signature = link.signature.as_slice();
        // The chain's data-key epoch after this link (raised by a Revoke or Rotate), for the
        // append batch's stale-epoch check under the same lock. Written with every link, so a
        // chain stored before the column existed catches up at its next link.
        let raise_epoch = format!(
            "UPDATE users SET chain_epoch = {}(chain_epoch, $2) WHERE user_id = $1",
            self.dialect().greatest()
        );
        let epoch = i64::from(chain.epoch());
        let revoked = in_tx!(&mut tx, |conn| {
            sqlx::query(&raise_epoch)
                .bind(user)
                .bind(epoch)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO chain_links (user_id, seqno, hash, link, stored_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user)
            .bind(seqno)
            .bind(link.hash().0.as_slice())
            .bind(codec::encode(link))
            .bind(db_int(now_s))
            .execute(&mut *conn)
            .await?;
            match &link.body {
                LinkBody::Admit {
                    device,
                    name,
                    created_at,
                    ..
                } => {
                    // A row without `admitted_seqno` predates the chain (a certificate
                    // registration): the chain admits it now, and it keeps its cursor.
                    sqlx::query(
                        "INSERT INTO devices (user_id, device_id, name, created_at, signature,
                                              registered_at, last_seen, admitted_seqno)
                         VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
                         ON CONFLICT (user_id, device_id) DO UPDATE SET
                             name = excluded.name, created_at = excluded.created_at,
                             signature = excluded.signature,
                             registered_at = excluded.registered_at,
                             last_seen = excluded.last_seen,
                             admitted_seqno = excluded.admitted_seqno,
                             revoked_at = NULL, revocation_signature = NULL",
                    )
                    .bind(user)
                    .bind(device.as_bytes().as_slice())
                    .bind(name.as_str())
                    .bind(db_int(*created_at))
                    .bind(signature)
                    .bind(db_int(now_s))
                    .bind(seqno)
                    .execute(&mut *conn)
                    .await?;
                    Vec::new()
                }
                LinkBody::Revoke { devices, .. } => {
                    for device in devices {
                        sqlx::query(
                            "UPDATE devices
                             SET revoked_at = COALESCE(revoked_at, $3),
                                 revocation_signature = COALESCE(revocation_signature, $4)
                             WHERE user_id = $1 AND device_id = $2",
                        )
                        .bind(user)
                        .bind(device.as_bytes().as_slice())
                        .bind(db_int(now_s))
                        .bind(signature)
                        .execute(&mut *conn)
                        .await?;
                        // A revoked device is never woken again: its push target goes with
                        // it (registering one takes this lock and checks the device).
                        for table in ["push_queue", "push_targets"] {
                            sqlx::query(&format!("DELETE FROM {table} WHERE device_id = $1"))
                                .bind(device.as_bytes().as_slice())
                                .execute(&mut *conn)
                                .await?;
                        }
                    }
                    devices.clone()
                }
                LinkBody::Create { .. } | LinkBody::Rotate { .. } => Vec::new(),
            }
        });
        tx.commit().await?;
        Ok(LinkAppended {
            seqno: link.seqno,
            revoked,
        })
    }

    async fn chain_links(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Link>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<Vec<u8>> = on_reader!(&self.db, |pool| {
            sqlx::query_scalar(CHAIN_PAGE_SQL)
                .bind(user.as_bytes().as_slice())
                .bind(db_int(after))
                .bind(db_int(limit as u64))
                .bind(db_int(LINK_PAGE_BYTES as u64))
                .fetch_all(pool)
                .await?
        });
        rows.iter().map(|bytes| decode_link(bytes)).collect()
    }

    async fn chain_seqno(&self, user: UserId) -> Result<u64, StoreError> {
        let seqno: Option<i64> = on_reader!(&self.db, |pool| {
            sqlx::query_scalar(&format!("SELECT {CHAIN_SEQNO_COLUMN}"))
                .bind(user.as_bytes().as_slice())
                .fetch_one(pool)
                .await?
        });
        chain_seqno_from(seqno)
    }
}

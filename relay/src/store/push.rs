//! The push domain of storage: each device's push target and the queue of pending wake-ups
//! (docs/protocol.md §15). The queue lives here so that it survives a restart and is shared
//! by every node; a device has at most one pending wake-up, which later ones coalesce into.
//! Every statement is written once for both backends.

use async_trait::async_trait;
use ferry_protocol::{DeviceId, UserId};

use super::StoreError;
use super::sql::{SqlStore, db_int, from_db_int, in_tx, key32, on_reader, on_writer};

/// A device's push target, as stored: a Web Push subscription, or an APNs device token.
#[derive(Clone, PartialEq, Eq)]
pub struct PushTargetRow {
    /// Which push service.
    pub kind: PushKind,
    /// Web Push: the push service URL; APNs: the device token in hex (a capability either
    /// way: never logged).
    pub endpoint: String,
    /// Web Push: the subscription's P-256 public key, uncompressed (APNs: empty).
    pub p256dh: Vec<u8>,
    /// Web Push: the subscription's authentication secret (APNs: empty).
    pub auth: Vec<u8>,
}

impl PushTargetRow {
    /// A Web Push subscription.
    pub fn web_push(endpoint: String, p256dh: Vec<u8>, auth: Vec<u8>) -> Self {
        Self {
            kind: PushKind::WebPush,
            endpoint,
            p256dh,
            auth,
        }
    }

    /// An APNs device token, of a production or a development (`sandbox`) build.
    pub fn apns(token: &[u8], sandbox: bool) -> Self {
        Self {
            kind: if sandbox {
                PushKind::ApnsSandbox
            } else {
                PushKind::Apns
            },
            endpoint: hex::encode(token),
            p256dh: Vec::new(),
            auth: Vec::new(),
        }
    }
}

/// Which push service a target is at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PushKind {
    /// Web Push (RFC 8030): the endpoint's own push service.
    WebPush,
    /// Apple's APNs, production environment.
    Apns,
    /// Apple's APNs, development environment.
    ApnsSandbox,
}

impl PushKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::WebPush => "web_push",
            Self::Apns => "apns",
            Self::ApnsSandbox => "apns_sandbox",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "web_push" => Ok(Self::WebPush),
            "apns" => Ok(Self::Apns),
            "apns_sandbox" => Ok(Self::ApnsSandbox),
            other => Err(StoreError::Corrupt(format!("push target kind {other:?}"))),
        }
    }
}

impl std::fmt::Debug for PushTargetRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTargetRow")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A pending wake-up claimed for sending, with where to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeUp {
    /// The device's user.
    pub user: UserId,
    /// The device to wake.
    pub device: DeviceId,
    /// A call rings (sent with high urgency, whether or not the device has read everything).
    pub urgent: bool,
    /// Sends tried before this one.
    pub attempts: u32,
    /// Where.
    pub target: PushTargetRow,
}

/// Storage of push targets and pending wake-ups.
#[async_trait]
pub trait PushStore: Send + Sync {
    /// Sets the device's push target (replacing any), if the device is active: under the
    /// user's row lock, as a revocation (which removes the device's target), so a device
    /// revoked meanwhile never keeps one. Refused with `device_revoked` otherwise.
    async fn set_push_target(
        &self,
        user: UserId,
        device: DeviceId,
        target: &PushTargetRow,
        now_ms: u64,
    ) -> Result<(), StoreError>;

    /// Removes the device's push target and its pending wake-up; returns whether it had one.
    async fn remove_push_target(&self, device: DeviceId) -> Result<bool, StoreError>;

    /// The device's push target, if it has one.
    async fn push_target(&self, device: DeviceId) -> Result<Option<PushTargetRow>, StoreError>;

    /// Queues a wake-up, due at `due_at_ms`, for every device of `users` that has a push
    /// target, except the devices in `except` (the senders, online a moment ago). A device
    /// with a pending wake-up keeps one: urgent if either is, due at the earlier time. When
    /// `max_queued` wake-ups are pending already, nothing is queued. Returns how many devices
    /// had none pending (new) and how many had one (coalesced).
    async fn queue_wake_ups(
        &self,
        users: &[UserId],
        except: &[DeviceId],
        urgent: bool,
        due_at_ms: u64,
        max_queued: u64,
    ) -> Result<QueuedWakeUps, StoreError>;

    /// Claims up to `limit` wake-ups due at `now_ms` that no node is sending, for `lease_ms`
    /// (a node that dies while sending leaves them to be claimed again after that), oldest due
    /// first.
    async fn claim_wake_ups(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<WakeUp>, StoreError>;

    /// The wake-up was sent, or given up: it is no longer pending.
    async fn finish_wake_up(&self, device: DeviceId) -> Result<(), StoreError>;

    /// Sending failed for now: tried again at `due_at_ms`, one more attempt counted.
    async fn retry_wake_up(&self, device: DeviceId, due_at_ms: u64) -> Result<(), StoreError>;

    /// Not sent now (its push service is busy): due again at `due_at_ms`, no attempt
    /// counted.
    async fn defer_wake_up(&self, device: DeviceId, due_at_ms: u64) -> Result<(), StoreError>;

    /// Whether the device has not acknowledged everything it has to read: events of its
    /// user's log, or messages of a conversation it is in.
    async fn has_unread(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError>;

    /// Wake-ups pending.
    async fn queued_wake_ups(&self) -> Result<u64, StoreError>;
}

/// What [`PushStore::queue_wake_ups`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuedWakeUps {
    /// Devices that had no wake-up pending.
    pub new: u64,
    /// Devices whose pending wake-up took this one in.
    pub coalesced: u64,
    /// Devices skipped because the queue was full.
    pub dropped: u64,
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    user_id: Vec<u8>,
    device_id: Vec<u8>,
    urgent: bool,
    attempts: i64,
    kind: String,
    endpoint: String,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
}

#[async_trait]
impl PushStore for SqlStore {
    async fn set_push_target(
        &self,
        user: UserId,
        device: DeviceId,
        target: &PushTargetRow,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        tx.lock_user(user.as_bytes()).await?;
        let stored = in_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO push_targets
                   (device_id, user_id, endpoint, p256dh, auth, created_at, kind)
                 SELECT $1, $2, $3, $4, $5, $6, $7
                 WHERE EXISTS (SELECT 1 FROM devices
                               WHERE user_id = $2 AND device_id = $1 AND revoked_at IS NULL)
                 ON CONFLICT (device_id) DO UPDATE SET user_id = excluded.user_id,
                     endpoint = excluded.endpoint, p256dh = excluded.p256dh,
                     auth = excluded.auth, created_at = excluded.created_at,
                     kind = excluded.kind",
            )
            .bind(device.as_bytes().as_slice())
            .bind(user.as_bytes().as_slice())
            .bind(&target.endpoint)
            .bind(target.p256dh.as_slice())
            .bind(target.auth.as_slice())
            .bind(db_int(now_ms))
            .bind(target.kind.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        if stored == 0 {
            return Err(StoreError::Refused(
                ferry_protocol::ErrorCode::DeviceRevoked,
            ));
        }
        tx.commit().await
    }

    async fn remove_push_target(&self, device: DeviceId) -> Result<bool, StoreError> {
        let removed = on_writer!(&self.db, |pool| {
            sqlx::query("DELETE FROM push_queue WHERE device_id = $1")
                .bind(device.as_bytes().as_slice())
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM push_targets WHERE device_id = $1")
                .bind(device.as_bytes().as_slice())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(removed > 0)
    }

    async fn push_target(&self, device: DeviceId) -> Result<Option<PushTargetRow>, StoreError> {
        let row: Option<(String, String, Vec<u8>, Vec<u8>)> = on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT kind, endpoint, p256dh, auth FROM push_targets WHERE device_id = $1",
            )
            .bind(device.as_bytes().as_slice())
            .fetch_optional(pool)
            .await?
        });
        row.map(|(kind, endpoint, p256dh, auth)| {
            Ok(PushTargetRow {
                kind: PushKind::parse(&kind)?,
                endpoint,
                p256dh,
                auth,
            })
        })
        .transpose()
    }

    async fn queue_wake_ups(
        &self,
        users: &[UserId],
        except: &[DeviceId],
        urgent: bool,
        due_at_ms: u64,
        max_queued: u64,
    ) -> Result<QueuedWakeUps, StoreError> {
        if users.is_empty() {
            return Ok(QueuedWakeUps::default());
        }
        // The devices: `FROM push_targets t WHERE …`, its lists bound from `$first` on.
        let targets = |first: usize| {
            let mut clause = format!(
                "FROM push_targets t WHERE t.user_id IN ({})",
                placeholders(first, users.len())
            );
            if !except.is_empty() {
                clause += &format!(
                    " AND t.device_id NOT IN ({})",
                    placeholders(first + users.len(), except.len())
                );
            }
            clause
        };
        let count_targets = format!("SELECT COUNT(*) {}", targets(1));
        let count_pending = format!(
            "SELECT COUNT(*) {} AND t.device_id IN (SELECT device_id FROM push_queue)",
            targets(1)
        );
        let upsert = format!(
            "INSERT INTO push_queue (device_id, user_id, urgent, due_at, attempts, claimed_until)
             SELECT t.device_id, t.user_id, $1, $2, 0, 0 {}
               AND (SELECT COUNT(*) FROM push_queue) < $3
             ON CONFLICT (device_id) DO UPDATE SET
                 urgent = (push_queue.urgent OR excluded.urgent),
                 due_at = {least}(push_queue.due_at, excluded.due_at)",
            targets(4),
            least = self.dialect().least(),
        );
        let keys: Vec<Vec<u8>> = users
            .iter()
            .map(|u| u.as_bytes().to_vec())
            .chain(except.iter().map(|d| d.as_bytes().to_vec()))
            .collect();
        // Counted first (for the metrics: a race with another node makes them approximate,
        // never the queue), then one upsert.
        let (targets_n, pending_n, written): (i64, i64, u64) = on_writer!(&self.db, |pool| {
            let mut count = sqlx::query_scalar(&count_targets);
            for key in &keys {
                count = count.bind(key.as_slice());
            }
            let targets_n: i64 = count.fetch_one(pool).await?;
            let mut count = sqlx::query_scalar(&count_pending);
            for key in &keys {
                count = count.bind(key.as_slice());
            }
            let pending_n: i64 = count.fetch_one(pool).await?;
            let mut insert = sqlx::query(&upsert)
                .bind(urgent)
                .bind(db_int(due_at_ms))
                .bind(db_int(max_queued));
            for key in &keys {
                insert = insert.bind(key.as_slice());
            }
            let written = insert.execute(pool).await?.rows_affected();
            (targets_n, pending_n, written)
        });
        let targets_n = from_db_int(targets_n, "count")?;
        let pending_n = from_db_int(pending_n, "count")?.min(targets_n);
        let written = written.min(targets_n);
        Ok(QueuedWakeUps {
            new: written.saturating_sub(pending_n),
            coalesced: pending_n.min(written),
            dropped: targets_n - written,
        })
    }

    async fn claim_wake_ups(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<WakeUp>, StoreError> {
        // Claimed in one statement, so two nodes never claim the same wake-up (the outer
        // conditions are checked again on a row another node updated meanwhile).
        let claim = "UPDATE push_queue SET claimed_until = $2
             WHERE device_id IN (
                 SELECT device_id FROM push_queue
                 WHERE due_at <= $1 AND claimed_until <= $1
                 ORDER BY due_at LIMIT $3)
               AND due_at <= $1 AND claimed_until <= $1
             RETURNING device_id";
        let claimed: Vec<Vec<u8>> = on_writer!(&self.db, |pool| {
            sqlx::query_scalar(claim)
                .bind(db_int(now_ms))
                .bind(db_int(now_ms.saturating_add(lease_ms)))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!(
            "SELECT q.user_id, q.device_id, q.urgent, q.attempts, t.kind, t.endpoint, t.p256dh,
                    t.auth
             FROM push_queue q JOIN push_targets t ON t.device_id = q.device_id
             WHERE q.device_id IN ({})
             ORDER BY q.due_at",
            placeholders(1, claimed.len())
        );
        let rows: Vec<ClaimedRow> = on_writer!(&self.db, |pool| {
            let mut query = sqlx::query_as(&select);
            for device in &claimed {
                query = query.bind(device.as_slice());
            }
            query.fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|row| {
                Ok(WakeUp {
                    user: UserId(key32(&row.user_id, "user_id")?),
                    device: DeviceId(key32(&row.device_id, "device_id")?),
                    urgent: row.urgent,
                    attempts: u32::try_from(from_db_int(row.attempts, "attempts")?)
                        .unwrap_or(u32::MAX),
                    target: PushTargetRow {
                        kind: PushKind::parse(&row.kind)?,
                        endpoint: row.endpoint,
                        p256dh: row.p256dh,
                        auth: row.auth,
                    },
                })
            })
            .collect()
    }

    async fn finish_wake_up(&self, device: DeviceId) -> Result<(), StoreError> {
        on_writer!(&self.db, |pool| {
            sqlx::query("DELETE FROM push_queue WHERE device_id = $1")
                .bind(device.as_bytes().as_slice())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn retry_wake_up(&self, device: DeviceId, due_at_ms: u64) -> Result<(), StoreError> {
        self.reschedule_wake_up(device, due_at_ms, 1).await
    }

    async fn defer_wake_up(&self, device: DeviceId, due_at_ms: u64) -> Result<(), StoreError> {
        self.reschedule_wake_up(device, due_at_ms, 0).await
    }

    async fn has_unread(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        let unread: bool = on_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM devices d JOIN users u ON u.user_id = d.user_id
                                WHERE d.user_id = $1 AND d.device_id = $2 AND d.acked < u.head)
                     OR EXISTS (SELECT 1 FROM conv_leaves l
                                JOIN conversations c ON c.conv_id = l.conv_id
                                WHERE l.device_id = $2 AND l.acked < c.head)",
            )
            .bind(user.as_bytes().as_slice())
            .bind(device.as_bytes().as_slice())
            .fetch_one(pool)
            .await?
        });
        Ok(unread)
    }

    async fn queued_wake_ups(&self) -> Result<u64, StoreError> {
        let n: i64 = on_reader!(&self.db, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM push_queue")
                .fetch_one(pool)
                .await?
        });
        from_db_int(n, "count")
    }
}

impl SqlStore {
    /// Releases a claimed wake-up, due again at `due_at_ms`, counting `attempts` more.
    async fn reschedule_wake_up(
        &self,
        device: DeviceId,
        due_at_ms: u64,
        attempts: i64,
    ) -> Result<(), StoreError> {
        on_writer!(&self.db, |pool| {
            sqlx::query(
                "UPDATE push_queue SET attempts = attempts + $3, due_at = $2, claimed_until = 0
                 WHERE device_id = $1",
            )
            .bind(device.as_bytes().as_slice())
            .bind(db_int(due_at_ms))
            .bind(attempts)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

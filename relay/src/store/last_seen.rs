//! `last_seen` write-behind: sessions starting and ending note the time here, and one task
//! writes what was noted about once a second, in a statement per few hundred rows.
//!
//! Written at once, every session start and end was a write of its own on the store's
//! writer: on SQLite a transaction with its own `fsync`, queued ahead of the append batches.
//! In a reconnect storm those writes delayed live events by seconds (docs/benchmarks.md,
//! the storm). `last_seen` is shown coarse (`LAST_SEEN_GRANULARITY_S`, a minute) and the
//! presence hints that go with it travel through the hub, not the store, so writing it up to
//! [`FLUSH_INTERVAL`] late changes nothing a user sees.
//!
//! Nothing noted is lost but on a crash: a failed write keeps what it held for the next one
//! (merged, the latest time winning), and the server writes what is pending when it shuts
//! down, after its sessions have ended.

use std::collections::HashMap;
use std::mem;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_protocol::{DeviceId, UserId};
use tokio::sync::{Notify, watch};

use super::{Store, StoreError};

/// How often pending times are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Pending users and devices past which a write starts at once instead of at the next tick
/// (a burst of sessions does not wait for the tick with an ever larger map).
pub const FLUSH_AT: usize = 20_000;

/// The times noted since the last write.
#[derive(Debug, Default)]
struct Pending {
    users: HashMap<UserId, u64>,
    devices: HashMap<(UserId, DeviceId), u64>,
}

impl Pending {
    fn len(&self) -> usize {
        self.users.len() + self.devices.len()
    }

    /// Takes in `other`, the latest time of each winning.
    fn merge(&mut self, other: Pending) {
        for (user, at) in other.users {
            raise(self.users.entry(user).or_default(), at);
        }
        for (device, at) in other.devices {
            raise(self.devices.entry(device).or_default(), at);
        }
    }
}

fn raise(slot: &mut u64, at: u64) {
    *slot = (*slot).max(at);
}

/// The relay's pending `last_seen` times (see the module docs).
#[derive(Debug, Default)]
pub struct LastSeenWrites {
    pending: Mutex<Pending>,
    /// Wakes the writer early when [`FLUSH_AT`] is passed.
    full: Notify,
}

impl LastSeenWrites {
    /// Notes that `user` was online at `now_s` (Unix seconds).
    pub fn user_seen(&self, user: UserId, now_s: u64) {
        self.note(|pending| raise(pending.users.entry(user).or_default(), now_s));
    }

    /// Notes that `device` of `user` was connected at `now_s` (Unix seconds).
    pub fn device_seen(&self, user: UserId, device: DeviceId, now_s: u64) {
        self.note(|pending| raise(pending.devices.entry((user, device)).or_default(), now_s));
    }

    fn note(&self, change: impl FnOnce(&mut Pending)) {
        let mut pending = self.lock();
        change(&mut pending);
        if pending.len() >= FLUSH_AT {
            self.full.notify_one();
        }
    }

    /// How many users and devices wait to be written.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what is pending now. On failure what it took is pending again (merged with
    /// what was noted meanwhile), for the next write.
    pub async fn flush(&self, store: &dyn Store) -> Result<(), StoreError> {
        let taken = mem::take(&mut *self.lock());
        if taken.len() == 0 {
            return Ok(());
        }
        let users: Vec<(UserId, u64)> = taken.users.iter().map(|(u, at)| (*u, *at)).collect();
        let devices: Vec<(UserId, DeviceId, u64)> = taken
            .devices
            .iter()
            .map(|((u, d), at)| (*u, *d, *at))
            .collect();
        let written = async {
            if !users.is_empty() {
                store.touch_last_seen(&users).await?;
            }
            if !devices.is_empty() {
                store.touch_devices(&devices).await?;
            }
            Ok(())
        }
        .await;
        if written.is_err() {
            // Users written before a device write failed are written again: harmless, a
            // time never moves back.
            self.lock().merge(taken);
        }
        written
    }

    /// Writes pending times every [`FLUSH_INTERVAL`] (sooner past [`FLUSH_AT`]) until `stop`
    /// turns true. A failed write is logged and tried again at the next tick. The final write
    /// is the server's, once its sessions have ended ([`LastSeenWrites::flush`]).
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.full.notified() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            if let Err(e) = self.flush(store.as_ref()).await {
                tracing::warn!(error = %e, pending = self.pending(), "could not write last-seen times; trying again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_time_of_each_user_and_device_is_kept() {
        let writes = LastSeenWrites::default();
        let (a, b) = (UserId([1; 32]), UserId([2; 32]));
        writes.user_seen(a, 10);
        writes.user_seen(a, 7);
        writes.user_seen(b, 3);
        writes.device_seen(a, DeviceId([9; 32]), 5);
        writes.device_seen(a, DeviceId([9; 32]), 8);
        assert_eq!(writes.pending(), 3);
        let pending = writes.lock();
        assert_eq!(pending.users[&a], 10);
        assert_eq!(pending.devices[&(a, DeviceId([9; 32]))], 8);
    }

    #[test]
    fn a_merge_keeps_the_latest_of_both() {
        let mut now = Pending::default();
        now.users.insert(UserId([1; 32]), 5);
        let mut failed = Pending::default();
        failed.users.insert(UserId([1; 32]), 9);
        failed.users.insert(UserId([2; 32]), 1);
        now.merge(failed);
        assert_eq!(now.users[&UserId([1; 32])], 9);
        assert_eq!(now.users[&UserId([2; 32])], 1);
    }
}

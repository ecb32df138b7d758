//! Planning an append batch, in memory: once a transaction holds the users' rows and knows
//! which of the batch's keys are stored already, which appends are new, repeated, refused,
//! and which sequences the new ones get. Pure and backend-free, so both backends share it and
//! its rules are unit-tested without a database.

use std::collections::{HashMap, HashSet};

use ferry_protocol::seal::FORMAT_V2;
use ferry_protocol::{DeviceId, UserId};

#[cfg(doc)]
use super::LogStore;
use super::{AppendOutcome, AppendRequest, LogBounds};
use crate::store::{Quota, StoreError};

/// What makes an append unique.
pub(super) type AppendKey = (UserId, DeviceId, u64);

/// A device, as retention's watermarks are keyed.
pub(super) type DeviceKey = (UserId, DeviceId);

/// The distinct devices of a batch, in first-seen order.
pub(super) fn batch_devices(requests: &[AppendRequest]) -> Vec<DeviceKey> {
    let mut seen = HashSet::with_capacity(requests.len());
    requests
        .iter()
        .map(|r| (r.user, r.device))
        .filter(|key| seen.insert(*key))
        .collect()
}

/// An event already stored under an [`AppendKey`].
pub(super) struct Stored {
    pub(super) seq: u64,
    pub(super) payload: Vec<u8>,
}

/// A user's row as an append batch locks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct UserHead {
    pub(super) head: u64,
    pub(super) earliest: u64,
    /// Payload bytes stored.
    pub(super) bytes: u64,
    /// The user's current data-key epoch (`users.chain_epoch`): new payloads sealed (format
    /// 2) under an older one are refused.
    pub(super) chain_epoch: u32,
}

impl UserHead {
    fn events(&self) -> u64 {
        self.head.saturating_add(1).saturating_sub(self.earliest)
    }
}

/// The writes one batch needs, decided in memory once the heads are locked and the
/// already-stored keys are known.
pub(super) struct BatchPlan<'a> {
    /// One outcome per request, in request order.
    pub(super) outcomes: Vec<AppendOutcome>,
    /// New events: their sequence and request, in request order.
    pub(super) inserts: Vec<(u64, &'a AppendRequest)>,
    /// New head of every user that got events, and the payload bytes added, sorted by user.
    pub(super) heads: Vec<(UserId, u64, u64)>,
}

/// The distinct users of a batch, sorted (the order in which their head rows are locked,
/// so two concurrent batches can never wait on each other in a cycle).
pub(crate) fn batch_users(requests: &[AppendRequest]) -> Vec<UserId> {
    distinct_users(requests.iter().map(|r| r.user))
}

/// The distinct users among `users`, sorted.
pub(crate) fn distinct_users(users: impl Iterator<Item = UserId>) -> Vec<UserId> {
    let mut users: Vec<UserId> = users.collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// A run of consecutive `device_seq`s of one device, `first..=last`, every one of them a key
/// of the batch.
pub(super) type KeyRun = (UserId, DeviceId, u64, u64);

/// The distinct keys of a batch as runs of consecutive `device_seq`s, sorted: a device
/// sending in order gives one run per batch, so the stored keys are found with one range
/// read per device rather than one lookup per append. Keys that are not consecutive (a
/// hostile or restored device) give a run each, no more reads than one per key.
pub(super) fn batch_key_runs(requests: &[AppendRequest]) -> Vec<KeyRun> {
    let mut keys: Vec<AppendKey> = requests
        .iter()
        .map(|r| (r.user, r.device, r.device_seq))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut runs: Vec<KeyRun> = Vec::new();
    for (user, device, seq) in keys {
        match runs.last_mut() {
            Some((u, d, _, last))
                if *u == user && *d == device && last.checked_add(1) == Some(seq) =>
            {
                *last = seq;
            }
            _ => runs.push((user, device, seq, seq)),
        }
    }
    runs
}

/// The data-key epoch a payload names, if it starts with a well-formed format-2 header
/// (`0x02 ‖ epoch u32 BE`, protocol §7). Other payloads are opaque to the relay: `None`.
pub(super) fn sealed_epoch(payload: &[u8]) -> Option<u32> {
    match payload {
        [FORMAT_V2, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Assigns sequences: the pure heart of [`LogStore::append_batch`], shared by both backends.
///
/// `heads` holds the locked head of every user in the batch; `stored` the events already
/// stored under any of the batch's keys; `trimmed` the highest `device_seq` retention has
/// deleted for any of the batch's devices; `active` the batch's devices that the chain
/// admits and has not revoked (the others' appends are [`AppendOutcome::Revoked`], before
/// anything else is looked at: a revoked device learns nothing, not even of a duplicate).
///
/// A new append whose payload names (format 2, [`sealed_epoch`]) an epoch below its user's
/// `chain_epoch` is [`AppendOutcome::StaleEpoch`]. A new append refused for its epoch or for
/// the quota holds back the device's later new appends in the batch, which get the same
/// outcome: a device's appends are stored in the order it sent them.
pub(super) fn plan_batch<'a>(
    requests: &'a [AppendRequest],
    heads: &HashMap<UserId, UserHead>,
    stored: &HashMap<AppendKey, Stored>,
    trimmed: &HashMap<DeviceKey, u64>,
    active: &HashSet<DeviceKey>,
    quota: Quota,
) -> Result<BatchPlan<'a>, StoreError> {
    // Per user: the row as it will be after this batch's inserts so far.
    let mut next: HashMap<UserId, UserHead> = HashMap::with_capacity(heads.len());
    // Devices with a new append refused (quota, stale epoch) in this batch, and how: their
    // later new appends are refused the same way.
    let mut held: HashMap<DeviceKey, AppendOutcome> = HashMap::new();
    // Keys appended earlier in this batch; keys stored before are looked up in `stored`.
    let mut appended: HashMap<AppendKey, (u64, &[u8])> = HashMap::with_capacity(requests.len());
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut inserts = Vec::with_capacity(requests.len());
    for request in requests {
        let key = (request.user, request.device, request.device_seq);
        let earlier = appended
            .get(&key)
            .copied()
            .or_else(|| stored.get(&key).map(|s| (s.seq, s.payload.as_slice())));
        let outcome = match earlier {
            _ if !active.contains(&(request.user, request.device)) => AppendOutcome::Revoked,
            Some((seq, payload)) if payload == request.payload.0.as_slice() => {
                AppendOutcome::Duplicate { seq }
            }
            Some((seq, _)) => AppendOutcome::Conflict { seq },
            None if trimmed
                .get(&(request.user, request.device))
                .is_some_and(|&upto| request.device_seq <= upto) =>
            {
                AppendOutcome::Expired
            }
            None => {
                let now = match next.get(&request.user) {
                    Some(now) => *now,
                    None => *heads.get(&request.user).ok_or_else(|| {
                        StoreError::Corrupt("user head row was not locked".into())
                    })?,
                };
                let len = request.payload.0.len() as u64;
                let device = (request.user, request.device);
                let refused = if let Some(earlier) = held.get(&device) {
                    Some(*earlier)
                } else if sealed_epoch(&request.payload.0).is_some_and(|e| e < now.chain_epoch) {
                    Some(AppendOutcome::StaleEpoch {
                        current: now.chain_epoch,
                    })
                } else if now.events() >= quota.max_events
                    || now.bytes.saturating_add(len) > quota.max_bytes
                {
                    Some(AppendOutcome::QuotaExceeded)
                } else {
                    None
                };
                if let Some(refused) = refused {
                    held.insert(device, refused);
                    refused
                } else {
                    let seq = now.head + 1;
                    next.insert(
                        request.user,
                        UserHead {
                            head: seq,
                            bytes: now.bytes + len,
                            ..now
                        },
                    );
                    appended.insert(key, (seq, request.payload.0.as_slice()));
                    inserts.push((seq, request));
                    AppendOutcome::Appended { seq }
                }
            }
        };
        outcomes.push(outcome);
    }
    let mut heads: Vec<(UserId, u64, u64)> = next
        .into_iter()
        .map(|(user, now)| {
            let before = heads.get(&user).map_or(0, |h| h.bytes);
            (user, now.head, now.bytes - before)
        })
        .collect();
    heads.sort_unstable();
    Ok(BatchPlan {
        outcomes,
        inserts,
        heads,
    })
}

/// The sequence below which a user's events go, given its bounds and the retention rules
/// (`first_young` is the first kept sequence committed at or after the age cutoff, if any).
pub(super) fn trim_target(
    bounds: LogBounds,
    max_count: Option<u64>,
    age: Option<Option<u64>>,
) -> u64 {
    let past_head = bounds.head + 1;
    let by_count = max_count.map_or(0, |max| past_head.saturating_sub(max));
    let by_age = match age {
        None => 0,
        Some(first_young) => first_young.unwrap_or(past_head),
    };
    by_count.max(by_age).min(past_head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::SealedPayload;

    fn request(user: u8, device: u8, device_seq: u64, payload: u8) -> AppendRequest {
        AppendRequest {
            user: UserId([user; 32]),
            device: DeviceId([device; 32]),
            device_seq,
            payload: SealedPayload(vec![payload]),
        }
    }

    #[test]
    fn key_runs_cover_exactly_the_batch_keys_one_run_per_consecutive_stretch() {
        let requests = [
            request(1, 1, 3, 0),
            request(2, 1, 1, 0),
            request(1, 1, 1, 0),
            request(1, 1, 2, 0),
            request(1, 1, 2, 0), // a repeat
            request(1, 2, 4, 0), // another device of the same user, same numbers nearby
            request(1, 1, 7, 0), // a gap
            request(1, 2, 5, 0),
            request(1, 1, u64::MAX, 0),
            request(1, 1, u64::MAX - 1, 0),
        ];
        let (u1, u2) = (UserId([1; 32]), UserId([2; 32]));
        let (d1, d2) = (DeviceId([1; 32]), DeviceId([2; 32]));
        assert_eq!(
            batch_key_runs(&requests),
            [
                (u1, d1, 1, 3),
                (u1, d1, 7, 7),
                (u1, d1, u64::MAX - 1, u64::MAX),
                (u1, d2, 4, 5),
                (u2, d1, 1, 1),
            ]
        );
        assert!(batch_key_runs(&[]).is_empty());
    }

    fn all_active(requests: &[AppendRequest]) -> HashSet<DeviceKey> {
        batch_devices(requests).into_iter().collect()
    }

    #[test]
    fn appends_of_inactive_devices_are_refused_before_anything_else() {
        // Device 2 is not active: its new append, its retry of a stored event and its
        // conflicting one are all Revoked, and nothing of it is numbered.
        let requests = [
            request(1, 1, 1, 10),
            request(1, 2, 1, 10),
            request(1, 2, 7, 99),
            request(1, 2, 7, 98),
            request(1, 1, 2, 10),
        ];
        let heads = HashMap::from([(
            UserId([1; 32]),
            UserHead {
                head: 4,
                earliest: 1,
                bytes: 0,
                chain_epoch: 0,
            },
        )]);
        let stored = HashMap::from([(
            (UserId([1; 32]), DeviceId([2; 32]), 7),
            Stored {
                seq: 3,
                payload: vec![99],
            },
        )]);
        let active = HashSet::from([(UserId([1; 32]), DeviceId([1; 32]))]);
        let plan = plan_batch(
            &requests,
            &heads,
            &stored,
            &HashMap::new(),
            &active,
            Quota::UNLIMITED,
        )
        .unwrap();
        assert_eq!(
            plan.outcomes,
            [
                AppendOutcome::Appended { seq: 5 },
                AppendOutcome::Revoked,
                AppendOutcome::Revoked,
                AppendOutcome::Revoked,
                AppendOutcome::Appended { seq: 6 },
            ]
        );
        assert_eq!(plan.heads, [(UserId([1; 32]), 6, 2)]);
    }

    #[test]
    fn plan_numbers_per_user_and_resolves_repeats_in_the_batch() {
        let requests = [
            request(1, 1, 1, 10),
            request(2, 1, 1, 10),
            request(1, 1, 1, 10),
            request(1, 1, 1, 11),
            request(1, 1, 2, 12),
            request(1, 2, 7, 13),
            request(1, 3, 4, 14),
            request(1, 3, 5, 15),
        ];
        let head = |head| UserHead {
            head,
            earliest: 1,
            bytes: 0,
            chain_epoch: 0,
        };
        let heads = HashMap::from([(UserId([1; 32]), head(4)), (UserId([2; 32]), head(0))]);
        let stored = HashMap::from([(
            (UserId([1; 32]), DeviceId([2; 32]), 7),
            Stored {
                seq: 3,
                payload: vec![99],
            },
        )]);
        let trimmed = HashMap::from([((UserId([1; 32]), DeviceId([3; 32])), 4)]);
        let active = all_active(&requests);
        let plan = plan_batch(
            &requests,
            &heads,
            &stored,
            &trimmed,
            &active,
            Quota::UNLIMITED,
        )
        .unwrap();
        assert_eq!(
            plan.outcomes,
            [
                AppendOutcome::Appended { seq: 5 },
                AppendOutcome::Appended { seq: 1 },
                AppendOutcome::Duplicate { seq: 5 },
                AppendOutcome::Conflict { seq: 5 },
                AppendOutcome::Appended { seq: 6 },
                AppendOutcome::Conflict { seq: 3 },
                AppendOutcome::Expired,
                AppendOutcome::Appended { seq: 7 },
            ]
        );
        assert_eq!(
            plan.inserts.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [5, 1, 6, 7]
        );
        assert_eq!(
            plan.heads,
            [(UserId([1; 32]), 7, 3), (UserId([2; 32]), 1, 1)]
        );
    }

    #[test]
    fn the_quota_refuses_what_does_not_fit_and_what_the_device_sent_after_it() {
        let heads = HashMap::from([(
            UserId([1; 32]),
            UserHead {
                head: 10,
                earliest: 8,
                bytes: 250,
                chain_epoch: 0,
            },
        )]);
        let quota = Quota {
            max_events: 5,
            max_bytes: 300,
        };
        // 3 events and 250 bytes stored: a 1-byte append fits, a 60-byte one does not, and
        // the device's next append is refused after it even though it would fit.
        let big = AppendRequest {
            payload: SealedPayload(vec![0; 60]),
            ..request(1, 1, 2, 0)
        };
        let requests = [
            request(1, 1, 1, 10),
            big,
            request(1, 1, 3, 12),
            request(1, 2, 1, 13),
        ];
        let active = all_active(&requests);
        let plan = plan_batch(
            &requests,
            &heads,
            &HashMap::new(),
            &HashMap::new(),
            &active,
            quota,
        )
        .unwrap();
        assert_eq!(
            plan.outcomes,
            [
                AppendOutcome::Appended { seq: 11 },
                AppendOutcome::QuotaExceeded,
                AppendOutcome::QuotaExceeded,
                AppendOutcome::Appended { seq: 12 },
            ]
        );
        assert_eq!(plan.heads, [(UserId([1; 32]), 12, 2)]);
        // Counting events: 5 kept at most.
        let three = [
            request(1, 3, 1, 1),
            request(1, 3, 2, 1),
            request(1, 3, 3, 1),
        ];
        let active = all_active(&three);
        let full = plan_batch(
            &three,
            &heads,
            &HashMap::new(),
            &HashMap::new(),
            &active,
            quota,
        )
        .unwrap();
        assert_eq!(
            full.outcomes,
            [
                AppendOutcome::Appended { seq: 11 },
                AppendOutcome::Appended { seq: 12 },
                AppendOutcome::QuotaExceeded,
            ]
        );
    }

    #[test]
    fn payloads_under_a_replaced_epoch_are_refused_and_hold_the_device_back() {
        fn sealed(user: u8, device: u8, device_seq: u64, epoch: u32) -> AppendRequest {
            let mut payload = vec![FORMAT_V2];
            payload.extend_from_slice(&epoch.to_be_bytes());
            payload.extend_from_slice(&[7; 40]);
            AppendRequest {
                payload: SealedPayload(payload),
                ..request(user, device, device_seq, 0)
            }
        }
        let heads = HashMap::from([(
            UserId([1; 32]),
            UserHead {
                head: 3,
                earliest: 1,
                bytes: 0,
                chain_epoch: 2,
            },
        )]);
        let stored_old = sealed(1, 3, 4, 1);
        let stored = HashMap::from([(
            (UserId([1; 32]), DeviceId([3; 32]), 4),
            Stored {
                seq: 2,
                payload: stored_old.payload.0.clone(),
            },
        )]);
        let requests = [
            sealed(1, 1, 1, 2),
            // Epoch 1 < 2: refused, and device 1's later appends with it, even under epoch 2.
            sealed(1, 1, 2, 1),
            sealed(1, 1, 3, 2),
            // Another device is not held back; a newer epoch than the relay knows is not its
            // business either, and payloads without a format-2 header stay opaque.
            sealed(1, 2, 1, 3),
            request(1, 2, 2, 2),
            AppendRequest {
                payload: SealedPayload(vec![FORMAT_V2, 0, 0, 0]),
                ..request(1, 2, 3, 0)
            },
            sealed(1, 2, 4, 0),
            // A retry of an old-epoch event stored before the revocation is still a duplicate.
            stored_old,
        ];
        let plan = plan_batch(
            &requests,
            &heads,
            &stored,
            &HashMap::new(),
            &all_active(&requests),
            Quota::UNLIMITED,
        )
        .unwrap();
        let stale = AppendOutcome::StaleEpoch { current: 2 };
        assert_eq!(
            plan.outcomes,
            [
                AppendOutcome::Appended { seq: 4 },
                stale,
                stale,
                AppendOutcome::Appended { seq: 5 },
                AppendOutcome::Appended { seq: 6 },
                AppendOutcome::Appended { seq: 7 },
                stale,
                AppendOutcome::Duplicate { seq: 2 },
            ]
        );
        assert_eq!(sealed_epoch(&[FORMAT_V2, 0, 0, 1, 0]), Some(256));
        assert_eq!(sealed_epoch(&[FORMAT_V2, 0, 0, 1]), None);
        assert_eq!(sealed_epoch(&[1, 0, 0, 0, 9]), None);
        assert_eq!(sealed_epoch(&[]), None);
    }

    #[test]
    fn a_missing_head_is_an_error_not_a_guess() {
        let requests = [request(1, 1, 1, 10)];
        assert!(
            plan_batch(
                &requests,
                &HashMap::new(),
                &HashMap::new(),
                &HashMap::new(),
                &all_active(&requests),
                Quota::UNLIMITED
            )
            .is_err()
        );
    }

    #[test]
    fn trim_targets() {
        let bounds = LogBounds {
            earliest: 1,
            head: 20,
        };
        assert_eq!(trim_target(bounds, None, None), 0);
        assert_eq!(trim_target(bounds, Some(15), None), 6);
        assert_eq!(trim_target(bounds, Some(50), None), 0);
        assert_eq!(trim_target(bounds, Some(0), None), 21);
        assert_eq!(trim_target(bounds, None, Some(Some(11))), 11);
        assert_eq!(trim_target(bounds, Some(15), Some(Some(3))), 6);
        assert_eq!(trim_target(bounds, None, Some(None)), 21);
    }
}

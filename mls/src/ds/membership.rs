//! Ferry's whole-user rule: a user is in a conversation with all its active devices or not
//! at all.
//!
//! MLS knows leaves, not users; this rule, applied by the relay to every commit's before and
//! after member lists ([`crate::CommitSummary`]), keeps the two views aligned:
//!
//! 1. The committer's user must already be in the group: a user cannot put itself in (an
//!    external commit only lets a device of a member rejoin).
//! 2. A device added for a user must be an active device of that user.
//! 3. A user new to the group comes in with exactly all its active devices.
//! 4. A user keeps all its leaves, or loses all of them, or loses only devices that are no
//!    longer active (revoked).
//!
//! `active` is the relay's view of each user's device chain.

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::identity::{DeviceId, UserId};

use crate::MlsRefusal;

/// Checks a membership change against the whole-user rule (see the module docs).
pub fn check_membership_change(
    before: &[(UserId, DeviceId)],
    after: &[(UserId, DeviceId)],
    sender_user: UserId,
    active: impl Fn(&UserId) -> BTreeSet<DeviceId>,
) -> Result<(), MlsRefusal> {
    let before = by_user(before);
    let after = by_user(after);
    if !before.contains_key(&sender_user) {
        return Err(MlsRefusal::NotAMember);
    }
    let empty = BTreeSet::new();
    let users: BTreeSet<&UserId> = before.keys().chain(after.keys()).collect();
    for user in users {
        let was = before.get(user).unwrap_or(&empty);
        let is = after.get(user).unwrap_or(&empty);
        if was == is {
            continue;
        }
        let active = active(user);
        if let Some(device) = is.difference(was).find(|device| !active.contains(device)) {
            return Err(MlsRefusal::InactiveDevice {
                user: *user,
                device: *device,
            });
        }
        if was.is_empty() && *is != active {
            return Err(MlsRefusal::PartialUser { user: *user });
        }
        let leaves_entirely = is.is_empty();
        if !leaves_entirely && was.difference(is).any(|device| active.contains(device)) {
            return Err(MlsRefusal::PartialUser { user: *user });
        }
    }
    Ok(())
}

fn by_user(devices: &[(UserId, DeviceId)]) -> BTreeMap<UserId, BTreeSet<DeviceId>> {
    let mut out: BTreeMap<UserId, BTreeSet<DeviceId>> = BTreeMap::new();
    for (user, device) in devices {
        out.entry(*user).or_default().insert(*device);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const A: UserId = UserId([0xA; 32]);
    const B: UserId = UserId([0xB; 32]);
    const C: UserId = UserId([0xC; 32]);

    /// Name, members before, members after, committer's user, expected verdict.
    type Case = (
        &'static str,
        Vec<(UserId, DeviceId)>,
        Vec<(UserId, DeviceId)>,
        UserId,
        Result<(), MlsRefusal>,
    );

    fn d(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    /// A's devices 1, 2 (3 revoked); B's 4, 5; C's 6, 7.
    fn active(user: &UserId) -> BTreeSet<DeviceId> {
        let devices: &[u8] = match *user {
            A => &[1, 2],
            B => &[4, 5],
            C => &[6, 7],
            _ => &[],
        };
        devices.iter().map(|n| d(*n)).collect()
    }

    #[test]
    fn the_whole_user_rule() {
        let a = [(A, d(1)), (A, d(2))];
        let b = [(B, d(4)), (B, d(5))];
        let ab: Vec<_> = a.iter().chain(&b).copied().collect();
        let c_all = [(C, d(6)), (C, d(7))];
        let abc: Vec<_> = ab.iter().chain(&c_all).copied().collect();
        let cases: Vec<Case> = vec![
            ("nothing changes", ab.clone(), ab.clone(), A, Ok(())),
            (
                "a new user with all its devices",
                ab.clone(),
                abc.clone(),
                A,
                Ok(()),
            ),
            (
                "a new user with part of its devices",
                ab.clone(),
                [ab.clone(), vec![(C, d(6))]].concat(),
                A,
                Err(MlsRefusal::PartialUser { user: C }),
            ),
            (
                "a new user with a device it does not have",
                ab.clone(),
                [abc.clone(), vec![(C, d(9))]].concat(),
                A,
                Err(MlsRefusal::InactiveDevice {
                    user: C,
                    device: d(9),
                }),
            ),
            (
                "a user removed entirely",
                abc.clone(),
                ab.clone(),
                A,
                Ok(()),
            ),
            (
                "a user removed in part",
                abc.clone(),
                [ab.clone(), vec![(C, d(6))]].concat(),
                A,
                Err(MlsRefusal::PartialUser { user: C }),
            ),
            (
                "a revoked device removed alone",
                [ab.clone(), vec![(A, d(3))]].concat(),
                ab.clone(),
                B,
                Ok(()),
            ),
            (
                "a user's new active device added",
                [vec![(A, d(1))], b.to_vec()].concat(),
                ab.clone(),
                A,
                Ok(()),
            ),
            (
                "a revoked device added",
                ab.clone(),
                [ab.clone(), vec![(A, d(3))]].concat(),
                A,
                Err(MlsRefusal::InactiveDevice {
                    user: A,
                    device: d(3),
                }),
            ),
            (
                "a device rejoins (same set)",
                ab.clone(),
                ab.iter().rev().copied().collect(),
                A,
                Ok(()),
            ),
            (
                "a non-member puts itself in",
                ab.clone(),
                abc.clone(),
                C,
                Err(MlsRefusal::NotAMember),
            ),
            (
                "one user leaves, another comes in whole",
                abc.clone(),
                [a.to_vec(), c_all.to_vec()].concat(),
                C,
                Ok(()),
            ),
        ];
        for (name, before, after, sender, expected) in cases {
            assert_eq!(
                check_membership_change(&before, &after, sender, active),
                expected,
                "{name}"
            );
        }
    }
}

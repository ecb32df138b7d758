//! Conversations through the SDK across two relay nodes on one PostgreSQL database and one
//! Redis: three users with two devices each, every user with a device on each node. In a
//! 1:1 and a group of three, every device of every member is given every message exactly
//! once, in order, and all hold the same epoch and epoch authenticator; two devices on
//! different nodes that change the group at the same epoch (one adds, one removes) both
//! get their change through, and nobody's group diverges.
//!
//! The tests run when PostgreSQL and Redis are reachable (`FERRY_TEST_POSTGRES_URL`,
//! `FERRY_TEST_REDIS_URL`, local defaults otherwise) and print "skipped" otherwise, unless
//! `FERRY_REQUIRE_SERVICES=1` (what `.ci/run` sets) or `CI=true`: then they fail. The
//! database is shared with other suites and runs: everything here is new (users, devices,
//! handles with a random part, conversations), and nothing is deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use ferry_client::{ConvId, ConversationEvent, UserId};
use support::conversations::{Dev, Person, Transcript, befriend, person, same_epoch};
use support::*;

/// PostgreSQL and Redis URLs, or `None` (skipped) when they are unreachable and neither
/// `FERRY_REQUIRE_SERVICES=1` nor `CI=true` asks for them.
async fn services() -> Option<(String, String)> {
    let found = match postgres_url().await {
        Some(database) => redis_url().await.map(|redis| (database, redis)),
        None => None,
    };
    assert!(
        found.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "PostgreSQL or Redis not reachable and CI=true"
    );
    found
}

/// Two relay nodes of one cluster (one relay key, from the shared data folder) on the
/// database and Redis; `None` when skipped.
async fn two_nodes(dir: &std::path::Path) -> Option<(TestRelay, TestRelay)> {
    let (database, redis) = services().await?;
    let data = dir.join("relay");
    let adjust: Adjust = Arc::new(move |config| {
        config.database_url = Some(database.clone());
        config.redis_url = Some(redis.clone());
    });
    let first = TestRelay::start_with(&data, free_addr(), Arc::clone(&adjust));
    let second = TestRelay::start_with(&data, free_addr(), adjust);
    assert_eq!(
        first.relay_id, second.relay_id,
        "one cluster, one relay key"
    );
    Some((first, second))
}

/// Alice, Bob and Carol, all contacts, each with a device on either node of
/// [`two_nodes`] (Bob's first device on the second node, the others' on the first); with
/// the folder of the nodes and devices (bind it: dropped, it goes), and the nodes. `None`
/// when skipped.
async fn three_users() -> Option<(tempfile::TempDir, [TestRelay; 2], [Person; 3])> {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = two_nodes(dir.path()).await?;
    let mut alice = person(dir.path(), &first, &second, "alice").await;
    let mut bob = person(dir.path(), &second, &first, "bob").await;
    let mut carol = person(dir.path(), &first, &second, "carol").await;
    befriend(&mut alice, &mut bob).await;
    befriend(&mut alice, &mut carol).await;
    befriend(&mut bob, &mut carol).await;
    Some((dir, [first, second], [alice, bob, carol]))
}

/// Every device of `people` was given every message of `conv` it did not send itself (from
/// the start), once and in order, holds all of them in its history, and all are in one epoch.
async fn all_agree(people: &mut [&mut Person], conv: ConvId, said: &Transcript) {
    for person in people.iter_mut() {
        person.read_all(conv, said, 0).await;
    }
    let devs: Vec<&Dev> = people.iter().flat_map(|p| p.devs()).collect();
    for dev in &devs {
        assert_eq!(
            dev.heard_messages(conv),
            said.heard_by(dev, 0),
            "{}: every message once, in order",
            dev.name
        );
        assert_eq!(dev.history(conv).await, said.all(), "{}", dev.name);
    }
    same_epoch(&devs, conv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_every_member_reads_every_message_once_in_order_across_two_nodes() {
    let Some((_dir, _nodes, [mut alice, mut bob, mut carol])) = three_users().await else {
        return;
    };

    // A 1:1 Alice opens from the first node; all four devices talk, from both nodes.
    let chat = alice.one.handle().start_chat(bob.user).await.unwrap();
    for dev in [&mut alice.two, &mut bob.one, &mut bob.two] {
        dev.joined(chat).await;
    }
    let mut said = Transcript::default();
    for round in 0..3 {
        for dev in [&alice.one, &bob.one, &alice.two, &bob.two] {
            said.say(dev, chat, &format!("{} says {round}", dev.name))
                .await;
        }
    }
    all_agree(&mut [&mut alice, &mut bob], chat, &said).await;
    // Carol is not in it: nothing of it reached her.
    for dev in [&carol.one, &carol.two] {
        assert!(dev.history(chat).await.is_empty());
        assert!(dev.heard_messages(chat).is_empty());
    }

    // A group of the three, made by Bob on the second node.
    let group = bob
        .one
        .handle()
        .create_group(Some("three of us"), &[alice.user, carol.user])
        .await
        .unwrap();
    for dev in [
        &mut bob.two,
        &mut alice.one,
        &mut alice.two,
        &mut carol.one,
        &mut carol.two,
    ] {
        dev.joined(group).await;
        let renamed = dev
            .until("Renamed", |e| {
                matches!(e, ConversationEvent::Renamed { .. })
            })
            .await;
        assert_eq!(
            renamed,
            ConversationEvent::Renamed {
                conv: group,
                title: "three of us".into()
            }
        );
    }
    let mut in_group = Transcript::default();
    for round in 0..3 {
        for dev in [
            &carol.one, &alice.two, &bob.one, &carol.two, &alice.one, &bob.two,
        ] {
            in_group
                .say(dev, group, &format!("{} in the group, {round}", dev.name))
                .await;
        }
    }
    all_agree(&mut [&mut alice, &mut bob, &mut carol], group, &in_group).await;

    // Later messages in both, then nothing was given twice (a late copy would show here).
    said.say(&bob.two, chat, "one more").await;
    in_group.say(&carol.one, group, "and here").await;
    all_agree(&mut [&mut alice, &mut bob], chat, &said).await;
    all_agree(&mut [&mut alice, &mut bob, &mut carol], group, &in_group).await;
}

/// The sum of a counter over both nodes' metrics (every line of that name and label).
fn counted(nodes: [&TestRelay; 2], line_start: &str) -> u64 {
    nodes
        .iter()
        .flat_map(|node| {
            node.metrics()
                .lines()
                .filter(|line| line.starts_with(line_start))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commits_at_one_epoch_from_two_nodes_both_land_and_nobody_diverges() {
    let Some((_dir, nodes, [mut alice, mut bob, mut carol])) = three_users().await else {
        return;
    };
    let stale = || counted(nodes.each_ref(), "ferry_errors_total{code=\"stale_epoch\"}");
    let stale_before = stale();

    // Bob's group with Alice. Bob's two devices (on different nodes) then change it at the
    // same time: the first adds one user while the second removes the other. The relay
    // takes the first commit of the epoch; the other is told `ConvStale`, catches up and
    // commits again. Rounds swap who is added and who removed, until at least one commit
    // lost the race (almost always the first round: the add claims KeyPackages first).
    let group = bob
        .one
        .handle()
        .create_group(Some("race"), &[alice.user])
        .await
        .unwrap();
    for dev in [&mut bob.two, &mut alice.one, &mut alice.two] {
        dev.joined(group).await;
    }
    let mut said = Transcript::default();
    said.say(&alice.two, group, "hello").await;
    said.say(&bob.one, group, "hi").await;
    let (mut inside, mut outside) = (&mut alice, &mut carol);
    // The last message before the members inside joined.
    let mut inside_since = 0;
    let mut rounds = 0;
    while rounds < 2 || (stale() == stale_before && rounds < 6) {
        rounds += 1;
        bob.read_all(group, &said, 0).await;
        inside.read_all(group, &said, inside_since).await;
        let since = said.last();
        let (epoch, _) = bob.one.epoch(group);
        let (adder, remover) = (bob.one.handle(), bob.two.handle());
        let (added, removed) = ([outside.user], [inside.user]);
        let (add, remove) = tokio::join!(
            adder.add_members(group, &added),
            remover.remove_members(group, &removed),
        );
        add.unwrap();
        remove.unwrap();
        for dev in [&mut inside.one, &mut inside.two] {
            dev.left(group).await;
            assert!(dev.handle().send_text(group, "still here?").await.is_err());
        }
        outside.joined(group).await;
        std::mem::swap(&mut inside, &mut outside);
        inside_since = since;
        // The members now talk, from both nodes; all read it all, in one epoch.
        let first_said = said
            .say(&inside.two, group, &format!("round {rounds}: in"))
            .await;
        said.say(&bob.two, group, &format!("round {rounds}: welcome"))
            .await;
        said.say(&inside.one, group, &format!("round {rounds}: thanks"))
            .await;
        bob.read_all(group, &said, 0).await;
        inside.read_all(group, &said, since).await;
        let now = same_epoch(&[&bob.one, &bob.two, &inside.one, &inside.two], group);
        assert_eq!(now, epoch + 2, "both commits, and nothing else");
        for dev in [&inside.one, &inside.two] {
            let heard: Vec<u64> = dev
                .heard_messages(group)
                .into_iter()
                .map(|(seq, _)| seq)
                .filter(|seq| *seq >= first_said)
                .collect();
            let want: Vec<u64> = said
                .heard_by(dev, first_said - 1)
                .into_iter()
                .map(|(seq, _)| seq)
                .collect();
            assert_eq!(heard, want, "{}: this round's messages", dev.name);
        }
        // The relay agrees: the members are Bob and who is inside; who is out is not told
        // of the group any more.
        let listed = bob.one.handle().conversations().await.unwrap();
        let info = listed.into_iter().find(|i| i.conv == group).unwrap();
        let members: BTreeSet<UserId> = info.summary.members.iter().map(|m| m.user).collect();
        assert_eq!(members, BTreeSet::from([bob.user, inside.user]));
        for dev in [&outside.one, &outside.two] {
            let theirs = dev.handle().conversations().await.unwrap();
            assert!(theirs.iter().all(|i| i.conv != group), "{}", dev.name);
        }
    }
    assert!(
        stale() > stale_before,
        "in {rounds} rounds no commit lost the race: the case was not exercised"
    );

    // Bob's devices, in all along, were given every message once, in order.
    for dev in [&bob.one, &bob.two] {
        assert_eq!(
            dev.heard_messages(group),
            said.heard_by(dev, 0),
            "{}",
            dev.name
        );
    }
    // Every device of Alice and Carol was given each message at most once, in order.
    for dev in [&alice.one, &alice.two, &carol.one, &carol.two] {
        let heard = dev.heard_messages(group);
        assert!(
            heard.windows(2).all(|w| w[0].0 < w[1].0),
            "{}: {heard:?}",
            dev.name
        );
        for (seq, text) in &heard {
            assert_eq!(Some(text), said.0.get(seq).map(|(_, t)| t));
        }
    }
}

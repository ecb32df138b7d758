//! The building blocks of `ferry-bench all --quick` against a real in-process relay: each
//! scenario here runs tiny and must produce sane figures. Kept to a few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_bench::relay::{
    Backend, DEFAULT_NATS_URL, DEFAULT_POSTGRES_URL, DEFAULT_REDIS_URL, Services,
};
use ferry_bench::report::Report;
use ferry_bench::scenarios::{Options, Scenario};

fn tiny() -> Options {
    Options {
        quick: true,
        services: Services {
            backend: Backend::Sqlite,
            postgres_url: DEFAULT_POSTGRES_URL.to_owned(),
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            nats_url: DEFAULT_NATS_URL.to_owned(),
        },
        duration: Some(Duration::from_millis(300)),
        users: Some(2),
        window: Some(4),
        rate: Some(200.0),
        concurrency: Some(4),
        events: Some(300),
        requests: Some(20),
        connections: None,
        sources: 4,
        relay_bin: None,
        relay_process: false,
        push_delay_ms: None,
        file_mib: Some(1),
    }
}

fn value(report: &Report, measure_starts: &str) -> f64 {
    report
        .figures
        .iter()
        .find(|f| f.measure.starts_with(measure_starts))
        .unwrap_or_else(|| panic!("no figure {measure_starts:?} in {report:?}"))
        .value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_scenarios_measure_real_traffic() {
    let options = tiny();

    let wire = Scenario::Wire.run(&options).await.unwrap();
    // An Append of a 256-byte payload cannot cost less than the payload.
    assert!(value(&wire, "device → relay") > 256.0);
    assert!(value(&wire, "relay → other device") > 256.0);

    let replay = Scenario::Replay.run(&options).await.unwrap();
    assert!(value(&replay, "300 events") > 0.0);

    let appends = Scenario::Appends.run(&options).await.unwrap();
    assert!(value(&appends, "group commit") > 0.0);
    assert!(value(&appends, "commit_max_batch = 1") > 0.0);

    let latency = Scenario::Latency.run(&options).await.unwrap();
    assert_eq!(value(&latency, "events not delivered"), 0.0);
    assert!(value(&latency, "append → event p50") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_times_both_kinds_of_request() {
    // 20 requests of each kind per configuration; the scenario itself checks that the
    // not-blocked target got the request and the blocking one did not.
    let people = Scenario::People.run(&tiny()).await.unwrap();
    for measure in [
        "first request, not blocked: median",
        "first request, blocked: median",
        "repeat, not blocked: median",
        "repeat, blocked: median",
    ] {
        assert!(value(&people, measure) > 0.0, "{measure}");
    }
    assert!(value(&people, "first request: ratio of medians").is_finite());
    assert_eq!(value(&people, "first request: requests retried"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_wakes_each_offline_device_once() {
    // Two users: device B of each registers on the local push service and goes offline,
    // device A appends a burst; one wake-up per user, on one push service and on four.
    let push = Scenario::Push.run(&tiny()).await.unwrap();
    for services in ["1 push service", "4 push services"] {
        assert_eq!(value(&push, &format!("{services}: users not woken")), 0.0);
        assert_eq!(
            value(&push, &format!("{services}: duplicate wake-ups")),
            0.0
        );
        assert_eq!(value(&push, &format!("{services}: requests refused")), 0.0);
        let sent = format!("{services}: relay ferry_push_wake_ups_total{{outcome=\"sent\"}}");
        assert_eq!(value(&push, &sent), 2.0);
        assert!(value(&push, &format!("{services}: first append → last wake-up")) > 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_go_through_the_relay_and_come_back_whole() {
    // A 1 MiB file, 3 rounds: the scenario itself fails unless every download equals the
    // original.
    let attachments = Scenario::Attachments.run(&tiny()).await.unwrap();
    for measure in [
        "plain copy",
        "sealing only",
        "relay storage alone",
        "relay digest check alone",
        "upload through the relay",
        "download through the relay",
        "upload ÷ plain copy",
        "download ÷ plain copy",
    ] {
        let value = value(&attachments, measure);
        assert!(value.is_finite() && value > 0.0, "{measure}: {value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_delivers_every_event_once() {
    // `--users 2 --window 4`: one configuration, 300 ms measured; device B must see every
    // event A sent in the window, none twice and no seq skipped.
    let window = Scenario::Window.run(&tiny()).await.unwrap();
    let prefix = "2 users × 2, W=4: ";
    assert!(value(&window, &format!("{prefix}events/s to B")) > 0.0);
    assert!(value(&window, &format!("{prefix}A→B p50")) > 0.0);
    for measure in [
        "duplicates seen by B",
        "events not delivered within 5 s",
        "seq gaps at B",
        "repeated Appended at A",
    ] {
        assert_eq!(
            value(&window, &format!("{prefix}{measure}")),
            0.0,
            "{measure}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_without_nats_fails_with_a_message() {
    // Nothing listens on port 1: the scenario must fail, and say that NATS is missing.
    let mut options = tiny();
    options.services.nats_url = "nats://127.0.0.1:1".to_owned();
    let error = Scenario::Jetstream.run(&options).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("NATS is not reachable at nats://127.0.0.1:1"),
        "{error:#}"
    );
}

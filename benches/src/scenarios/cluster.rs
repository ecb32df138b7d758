//! `cluster`: delivery latency between two relay nodes sharing PostgreSQL and Redis.
//!
//! Two in-process nodes share one relay key, one PostgreSQL database and one Redis. Half the
//! users have both devices on node 1 (same node); the other half send on node 1 and receive
//! on node 2 (cross node, woken through Redis pub/sub). Both halves run at once under the
//! same open-loop load (the [`super::latency`] engine), so the ratio cross ÷ same is the
//! price of the hop, measured side by side.

use std::time::Duration;

use anyhow::bail;

use super::Options;
use super::latency::{Load, Placement, add_percentiles, measure};
use crate::progress::step;
use crate::relay::{Backend, BenchRelay, NodeOptions, Services, reachable};
use crate::report::Report;

const NAME: &str = "cluster";

/// Runs the scenario (or reports it skipped when PostgreSQL or Redis is not reachable,
/// unless `FERRY_REQUIRE_SERVICES=1`).
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let services = Services {
        backend: Backend::Postgres,
        ..options.services.clone()
    };
    for (what, url) in [
        ("PostgreSQL", &services.postgres_url),
        ("Redis", &services.redis_url),
    ] {
        if !reachable(url) {
            if std::env::var("FERRY_REQUIRE_SERVICES").as_deref() == Ok("1") {
                bail!("{what} is not reachable and FERRY_REQUIRE_SERVICES=1");
            }
            step(NAME, format_args!("skipped: {what} is not reachable"));
            report.note(format!("cluster: skipped, {what} was not reachable"));
            return Ok(report);
        }
    }
    let load = Load {
        rate: options.pick(options.rate, 1_000.0, 200.0),
        warmup: if options.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        },
        duration: options.duration(Duration::from_secs(10), Duration::from_secs(1)),
    };
    let users = options.pick(options.users, 40, 8).max(2);

    step(NAME, "starting two nodes (PostgreSQL + Redis)");
    let dir = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
    let node = |_: ()| NodeOptions {
        redis: true,
        data_dir: Some(dir.path().to_owned()),
        ..NodeOptions::default()
    };
    // One after the other: the first creates the relay key the second loads.
    let first = BenchRelay::spawn(&services, node(())).await?;
    let second = BenchRelay::spawn(&services, node(())).await?;
    let placements: Vec<Placement> = (0..users)
        .map(|i| {
            let cross = i % 2 == 1;
            Placement {
                sender: first.target(),
                receiver: if cross {
                    second.target()
                } else {
                    first.target()
                },
                group: usize::from(cross),
            }
        })
        .collect();
    step(
        NAME,
        format_args!(
            "{} ev/s over {users} users for {:?}",
            load.rate, load.duration
        ),
    );
    let results = measure(NAME, load, &placements, 2, options.sources).await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
    let [same, cross] =
        <[_; 2]>::try_from(results?).map_err(|_| anyhow::anyhow!("expected two latency groups"))?;

    add_percentiles(&mut report, NAME, "cross-node ", &cross, None);
    add_percentiles(&mut report, NAME, "same-node ", &same, None);
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64;
    report.add(
        NAME,
        "cross ÷ same, p50",
        ms(&cross.actual, 0.5) / ms(&same.actual, 0.5).max(1.0),
        "×",
    );
    report.add(
        NAME,
        "cross ÷ same, p99",
        ms(&cross.actual, 0.99) / ms(&same.actual, 0.99).max(1.0),
        "×",
    );
    report.add(
        NAME,
        "events not delivered within 5 s",
        (same.sent + cross.sent).saturating_sub(same.received + cross.received) as f64,
        "ev",
    );
    report.note(format!(
        "cluster: two in-process nodes on PostgreSQL and Redis, {} ev/s open-loop over {users} \
         users, half with the receiver on the other node, half on the same node, {:?} measured",
        load.rate, load.duration
    ));
    Ok(report)
}

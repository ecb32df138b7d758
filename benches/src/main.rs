//! `ferry-bench`: run the relay load scenarios and print a markdown table of the figures.
//! See the library documentation (`benches/src/lib.rs`) for the scenarios and their method.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ferry_bench::relay::{
    Backend, DEFAULT_NATS_URL, DEFAULT_POSTGRES_URL, DEFAULT_REDIS_URL, Services,
};
use ferry_bench::report::{Report, Table};
use ferry_bench::scenarios::{Options, Scenario, cores};

#[derive(Parser)]
#[command(
    name = "ferry-bench",
    version,
    about = "Ferry's load generator: the relay measured as users feel it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario, in order.
    All,
    /// Handshakes per second vs the sans-IO crypto ceiling.
    Handshakes,
    /// Durable append throughput: group commit vs one transaction per event.
    Appends,
    /// Append-to-delivery latency at a fixed offered load.
    Latency,
    /// Relay memory per idle authenticated connection (separate relay process).
    Idle,
    /// A fresh device catching up a long log.
    Replay,
    /// Bytes on the wire per event.
    Wire,
    /// 1, 2 and 3 relay processes on PostgreSQL and Redis: appends/s, cross-node latency and
    /// where the CPU went.
    Cluster,
    /// A contact request's answer time: to a user who blocked the sender vs one who did not.
    People,
    /// An MLS group conversation (users × 2 devices, every device decrypting) at a fixed
    /// message rate, beside the per-user sync log at the same rate.
    Conversations,
    /// Push wake-ups per second to a local push service: users × 2 devices, device B offline
    /// with a Web Push target, device A appending a burst.
    Push,
    /// A file's upload and download through the relay (MiB/s) against a plain copy of the
    /// same bytes on the same disk.
    Attachments,
    /// Closed-loop sync with a window of unacknowledged appends (device A → device B):
    /// events/s delivered, A→B latency, duplicates; 1 user W=50, 200 users W=1 and W=10.
    Window,
    /// A relay restart with every registered device reconnecting at once (separate relay
    /// process): time until all are caught up, retries, and a live event's latency meanwhile.
    Storm,
    /// NATS JetStream (file storage) under the `appends` load and a replay of its stream,
    /// against Ferry's durable appends and replay in the same run (needs nats-server -js;
    /// not part of `all`).
    Jetstream,
}

/// `ferry-bench serve-relay FLAGS…`: runs a relay in this process until killed, for the
/// scenarios that start relay processes (idle, cluster, storm, latency --relay-process) when
/// no `ferry-relay` binary is next to this one. It takes the relay's own flags, parsed by a
/// parser of their own (`main` checks for it before the bench's parser): some share a name
/// with the bench's global flags, such as `--push-delay-ms`.
#[derive(Parser)]
#[command(name = "ferry-bench serve-relay")]
struct ServeRelay {
    #[command(flatten)]
    config: ferry_relay::Config,
}

#[derive(Args)]
struct Common {
    /// Tiny runs: every scenario in a few seconds (`all --quick` within a minute), for CI.
    #[arg(long, global = true)]
    quick: bool,
    /// Runs of each scenario; the table shows medians and ranges.
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    /// Where relays keep their log.
    #[arg(long, global = true, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// PostgreSQL URL, for `--backend postgres` and `cluster`.
    #[arg(long = "postgres", global = true, env = "FERRY_BENCH_POSTGRES_URL", default_value = DEFAULT_POSTGRES_URL)]
    postgres_url: String,
    /// Redis URL, for `cluster`.
    #[arg(long = "redis", global = true, env = "FERRY_BENCH_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis_url: String,
    /// NATS server with JetStream, for `jetstream`.
    #[arg(long = "nats", global = true, env = "FERRY_BENCH_NATS_URL", default_value = DEFAULT_NATS_URL)]
    nats_url: String,
    /// Measured seconds of time-bounded scenarios (default 10, quick 1).
    #[arg(long, global = true)]
    duration_secs: Option<f64>,
    /// Users, two devices each (appends and jetstream 64, latency 100, cluster 64 for
    /// throughput and 40 for latency, conversations 100, push 1,000; window: only this many, instead of its three
    /// configurations).
    #[arg(long, global = true)]
    users: Option<usize>,
    /// Appends in flight per device (appends, cluster and jetstream: 32; window: only this window,
    /// instead of its three configurations).
    #[arg(long, global = true)]
    window: Option<usize>,
    /// Offered load in events per second (latency 5,000, cluster 2,000; conversations:
    /// messages per second, 5).
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// Concurrent clients (handshakes: 64).
    #[arg(long, global = true)]
    concurrency: Option<usize>,
    /// Events pre-filled (replay: 100,000) or sent one by one (wire: 1,000).
    #[arg(long, global = true)]
    events: Option<usize>,
    /// Contact requests of each kind measured after the warm-up (people: 1,000).
    #[arg(long, global = true)]
    requests: Option<usize>,
    /// Connection counts at which idle memory is measured (default 10000,50000).
    #[arg(long, global = true, value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// Loopback source addresses (127.0.0.2, …) to spread connections over.
    #[arg(long, global = true, default_value_t = 16)]
    sources: usize,
    /// The relay binary that idle, cluster, storm and `latency --relay-process` start
    /// (default: ferry-relay next to this binary, else this binary as `serve-relay`).
    #[arg(long, global = true)]
    relay_bin: Option<PathBuf>,
    /// latency: run the relay as a separate process (its CPU shared by the OS scheduler, not
    /// the generator's runtime) and report where the CPU went.
    #[arg(long, global = true)]
    relay_process: bool,
    /// The relay's push delay in ms (push: 200; the relay's own default is 2,000).
    #[arg(long, global = true)]
    push_delay_ms: Option<u64>,
    /// The file's size in MiB (attachments: 64, quick 2).
    #[arg(long, global = true)]
    file_mib: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "serve-relay")
    {
        let relay = ServeRelay::parse_from(std::env::args_os().skip(1));
        return serve_relay(relay.config);
    }
    let cli = Cli::parse();
    let scenarios: Vec<Scenario> = match cli.command {
        Command::All => Scenario::ALL.to_vec(),
        Command::Handshakes => vec![Scenario::Handshakes],
        Command::Appends => vec![Scenario::Appends],
        Command::Latency => vec![Scenario::Latency],
        Command::Idle => vec![Scenario::Idle],
        Command::Replay => vec![Scenario::Replay],
        Command::Wire => vec![Scenario::Wire],
        Command::Cluster => vec![Scenario::Cluster],
        Command::People => vec![Scenario::People],
        Command::Conversations => vec![Scenario::Conversations],
        Command::Push => vec![Scenario::Push],
        Command::Attachments => vec![Scenario::Attachments],
        Command::Window => vec![Scenario::Window],
        Command::Storm => vec![Scenario::Storm],
        Command::Jetstream => vec![Scenario::Jetstream],
    };
    let common = cli.common;
    let options = Options {
        quick: common.quick,
        services: Services {
            backend: common.backend,
            postgres_url: common.postgres_url,
            redis_url: common.redis_url,
            nats_url: common.nats_url,
        },
        duration: common.duration_secs.map(Duration::from_secs_f64),
        users: common.users,
        window: common.window,
        rate: common.rate,
        concurrency: common.concurrency,
        events: common.events,
        requests: common.requests,
        connections: common.connections,
        sources: common.sources.max(1),
        relay_bin: common.relay_bin,
        relay_process: common.relay_process,
        push_delay_ms: common.push_delay_ms,
        file_mib: common.file_mib,
    };
    // Many sockets at once: up to the hard limit (the idle scenario's relay inherits it).
    ferry_bench::scenarios::idle::raise_nofile();

    let limit = if options.quick {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(20 * 60)
    };
    let load_before = load_average();
    let mut table = Table::default();
    let mut failed = Vec::new();
    for scenario in scenarios {
        for run in 1..=common.runs.max(1) {
            eprintln!(
                "== {} (run {run} of {})",
                scenario.name(),
                common.runs.max(1)
            );
            match run_once(scenario, &options, limit) {
                Ok(report) => table.add_run(&report),
                Err(e) => {
                    eprintln!("{} failed: {e:#}", scenario.name());
                    let mut report = Report::default();
                    report.note(format!("{}: run {run} FAILED: {e:#}", scenario.name()));
                    table.add_run(&report);
                    failed.push(scenario.name());
                }
            }
        }
    }
    println!("{}", machine(&load_before));
    println!("{}", table.markdown());
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("failed: {}", failed.join(", "))
    }
}

/// One run of one scenario on a fresh runtime (so nothing of a run outlives it).
fn run_once(scenario: Scenario, options: &Options, limit: Duration) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    let result = runtime.block_on(async {
        tokio::time::timeout(limit, scenario.run(options))
            .await
            .with_context(|| format!("gave up after {limit:?}"))?
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// What the figures were measured on.
fn machine(load_before: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or_else(
            || "unknown memory".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        );
    let profile = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "rustc unknown".to_owned(), |v| v.trim().to_owned());
    format!(
        "Machine: {} cores ({cpu}), {memory}; {rustc}; ferry-bench {} ({profile}); \
         load average (1 min) {load_before} before, {} after\n",
        cores(),
        env!("CARGO_PKG_VERSION"),
        load_average(),
    )
}

/// `serve-relay`: what `ferry-relay serve` does, printing the same two lines.
fn serve_relay(config: ferry_relay::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = ferry_relay::Server::spawn(config)
            .await
            .context("starting the relay")?;
        println!("ferry-relay listening on ws://{}/ws", server.local_addr());
        println!("relay key (pin this in clients): {}", server.relay_id());
        // Serves until the bench kills this process.
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

/// The 1-minute load average (other work on the machine skews every figure).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

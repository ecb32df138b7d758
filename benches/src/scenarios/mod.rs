//! The scenarios, one file each, and what they share: options, connecting many devices,
//! payloads and latency histograms.

pub mod appends;
pub mod attachments;
pub mod cluster;
pub mod conversations;
pub mod handshakes;
pub mod idle;
pub mod jetstream;
pub mod latency;
pub mod people;
pub mod push;
pub mod replay;
pub mod storm;
pub mod window;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;

use crate::client::{ClientError, Connection, Identity, Target, source_address};
use crate::progress::Progress;
use crate::relay::Services;

/// Settings shared by every scenario; `None` means the scenario's own default (which
/// `--quick` makes tiny).
#[derive(Clone, Debug)]
pub struct Options {
    /// Tiny runs (the whole `all --quick` within a minute), for CI.
    pub quick: bool,
    /// Backend and service URLs.
    pub services: Services,
    /// Measured time of time-bounded scenarios.
    pub duration: Option<Duration>,
    /// Users (each with two devices) in appends, latency, cluster, conversations, push,
    /// window and jetstream.
    pub users: Option<usize>,
    /// Appends in flight per device (appends, window, jetstream).
    pub window: Option<usize>,
    /// Offered load in events (messages) per second (latency, cluster, conversations).
    pub rate: Option<f64>,
    /// Concurrent clients (handshakes).
    pub concurrency: Option<usize>,
    /// Events in the log (replay) or sent one by one (wire).
    pub events: Option<usize>,
    /// Contact requests of each kind measured (people).
    pub requests: Option<usize>,
    /// Connection counts at which to measure memory (idle).
    pub connections: Option<Vec<usize>>,
    /// Loopback source addresses (127.0.0.2, …) connections are spread over.
    pub sources: usize,
    /// The relay binary for the scenarios that start relay processes (idle, cluster, storm,
    /// latency with `relay_process`; default: `ferry-relay` next to this binary).
    pub relay_bin: Option<PathBuf>,
    /// Run latency's relay as a separate process instead of in the generator's.
    pub relay_process: bool,
    /// The relay's `--push-delay-ms` in push (default [`push::DELAY_MS`]).
    pub push_delay_ms: Option<u64>,
    /// The file's size in MiB (attachments: 64).
    pub file_mib: Option<u64>,
}

impl Options {
    /// `over` if set, else the quick or the full default.
    pub fn pick<T>(&self, over: Option<T>, full: T, quick: T) -> T {
        over.unwrap_or(if self.quick { quick } else { full })
    }

    /// The measured duration: `--duration-secs`, else `full` or `quick`.
    pub fn duration(&self, full: Duration, quick: Duration) -> Duration {
        self.pick(self.duration, full, quick)
    }
}

/// The scenarios (`all` runs those in [`Scenario::ALL`], in that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Handshakes per second vs the sans-IO crypto ceiling.
    Handshakes,
    /// Durable append throughput, group commit vs one transaction per event.
    Appends,
    /// Append-to-delivery latency at a fixed offered load.
    Latency,
    /// Relay memory per idle authenticated connection (separate relay process).
    Idle,
    /// A fresh device catching up a long log.
    Replay,
    /// Bytes on the wire per event.
    Wire,
    /// Cross-node delivery latency over Redis and PostgreSQL.
    Cluster,
    /// A contact request's answer time: to a user who blocked the sender vs one who did not.
    People,
    /// An MLS group conversation (users × 2 devices) at a fixed message rate, beside the
    /// sync log at the same rate.
    Conversations,
    /// Push wake-ups per second to a local push service (users × 2 devices, one offline).
    Push,
    /// A file's upload and download through the relay vs a plain copy on the same disk.
    Attachments,
    /// Closed-loop sync with a window of unacknowledged appends: events/s to device B,
    /// A→B latency and duplicates.
    Window,
    /// A relay restart: every registered device reconnects at once; time until all are
    /// caught up, and a live event's latency during the storm.
    Storm,
    /// NATS JetStream under the `appends` load, and a replay of its stream, against Ferry's
    /// appends and replay (not in [`Scenario::ALL`]: it needs a NATS server).
    Jetstream,
}

impl Scenario {
    /// Every scenario `all` runs, in order (all but `jetstream`, which needs a NATS server
    /// and is run on its own).
    pub const ALL: [Self; 13] = [
        Self::Handshakes,
        Self::Appends,
        Self::Latency,
        Self::Idle,
        Self::Replay,
        Self::Wire,
        Self::Cluster,
        Self::People,
        Self::Conversations,
        Self::Push,
        Self::Attachments,
        Self::Window,
        Self::Storm,
    ];

    /// The name used in commands and tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Handshakes => "handshakes",
            Self::Appends => "appends",
            Self::Latency => "latency",
            Self::Idle => "idle",
            Self::Replay => "replay",
            Self::Wire => "wire",
            Self::Cluster => "cluster",
            Self::People => "people",
            Self::Conversations => "conversations",
            Self::Push => "push",
            Self::Attachments => "attachments",
            Self::Window => "window",
            Self::Storm => "storm",
            Self::Jetstream => "jetstream",
        }
    }

    /// Runs the scenario once (on the current Tokio runtime).
    pub async fn run(self, options: &Options) -> anyhow::Result<crate::report::Report> {
        match self {
            Self::Handshakes => handshakes::run(options).await,
            Self::Appends => appends::run(options).await,
            Self::Latency => latency::run(options).await,
            Self::Idle => idle::run(options).await,
            Self::Replay => replay::run(options).await,
            Self::Wire => wire::run(options).await,
            Self::Cluster => cluster::run(options).await,
            Self::People => people::run(options).await,
            Self::Conversations => conversations::run(options).await,
            Self::Push => push::run(options).await,
            Self::Attachments => attachments::run(options).await,
            Self::Window => window::run(options).await,
            Self::Storm => storm::run(options).await,
            Self::Jetstream => jetstream::run(options).await,
        }
    }
}

/// Connects every identity to its target (`concurrency` handshakes at a time, spread over
/// `sources` loopback addresses), returning the connections in identity order.
pub async fn connect_all(
    label: &str,
    devices: &[(Target, &Identity)],
    concurrency: usize,
    sources: usize,
) -> Result<Vec<Connection>, ClientError> {
    let connected = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(
        format!("{label}: connecting"),
        Arc::clone(&connected),
        "devices",
    );
    let results: Vec<Result<Connection, ClientError>> =
        futures_util::stream::iter(devices.iter().enumerate().map(|(i, (target, id))| {
            let connected = Arc::clone(&connected);
            async move {
                let source = Some(source_address(i, sources));
                let connection = Connection::connect(*target, id, None, source).await?;
                connected.fetch_add(1, Ordering::Relaxed);
                Ok(connection)
            }
        }))
        .buffered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// A payload of `len` bytes (opaque to the relay; see [`crate::client`]).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31)).collect()
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|e| unreachable!("valid histogram bounds: {e}"))
}

/// Records `elapsed` in microseconds (saturating at the histogram's top).
pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// The `q` quantile of a microsecond histogram, in milliseconds.
pub fn quantile_ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1000.0
}

/// The number of cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

//! Configuration: one struct with defaults, command-line flags and `FERRY_*` environment
//! overrides. `relay/ferry-relay.example.env` lists every setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Default listen address: loopback only, so a relay started without configuration is not
/// exposed by accident. Use `--listen 0.0.0.0:7070` behind a load balancer.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Everything the relay needs to run.
#[derive(Args, Clone)]
pub struct Config {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, global = true, env = "FERRY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Folder for the relay identity key and the embedded SQLite database.
    #[arg(
        long,
        global = true,
        env = "FERRY_DATA_DIR",
        default_value = "ferry-data"
    )]
    pub data_dir: PathBuf,

    /// `sqlite://PATH` or `postgres://USER@HOST/DB`. Default: SQLite in the data folder.
    #[arg(long, global = true, env = "FERRY_DATABASE_URL")]
    pub database_url: Option<String>,

    /// `redis://HOST:PORT` for wake-ups between relay nodes. Default: in-process (one node).
    #[arg(long, global = true, env = "FERRY_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Limits on what clients may do.
    #[command(flatten)]
    pub limits: Limits,

    /// Tuning of the log.
    #[command(flatten)]
    pub log: LogConfig,
}

/// Limits. Each answers with a stable error code when hit.
#[derive(Args, Clone, Debug)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes (at most the protocol's 1 MiB).
    #[arg(long, global = true, env = "FERRY_MAX_FRAME_BYTES", default_value_t = ferry_protocol::limits::MAX_FRAME_LEN)]
    pub max_frame_bytes: usize,

    /// Time a client has to finish the handshake, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "FERRY_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub handshake_timeout_ms: u64,

    /// Handshakes per minute allowed from one IP address (bursts up to a quarter of it).
    #[arg(
        long,
        global = true,
        env = "FERRY_HANDSHAKES_PER_IP_PER_MINUTE",
        default_value_t = 600
    )]
    pub handshakes_per_ip_per_minute: u32,

    /// Appends per second allowed from one device (bursts up to twice that).
    #[arg(
        long,
        global = true,
        env = "FERRY_APPENDS_PER_DEVICE_PER_SECOND",
        default_value_t = 2_000
    )]
    pub appends_per_device_per_second: u32,

    /// Devices a user may register (revoked devices do not count).
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_DEVICES_PER_USER",
        default_value_t = 64
    )]
    pub max_devices_per_user: usize,

    /// WebSocket connections open at once, in total.
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Time a write to a client may take before the client is dropped as too slow, in ms.
    #[arg(
        long,
        global = true,
        env = "FERRY_WRITE_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub write_timeout_ms: u64,

    /// Pairing joins allowed per minute from one IP address (bursts up to a quarter of it).
    #[arg(
        long,
        global = true,
        env = "FERRY_PAIR_JOINS_PER_IP_PER_MINUTE",
        default_value_t = 20
    )]
    pub pair_joins_per_ip_per_minute: u32,

    /// How long a pairing code stays valid, in seconds.
    #[arg(
        long,
        global = true,
        env = "FERRY_PAIRING_TTL_SECS",
        default_value_t = 600
    )]
    pub pairing_ttl_secs: u64,

    /// A connection with no frame from the client for this long is closed, in ms.
    #[arg(
        long,
        global = true,
        env = "FERRY_IDLE_TIMEOUT_MS",
        default_value_t = 120_000
    )]
    pub idle_timeout_ms: u64,
}

/// How the log is committed, replayed and trimmed.
#[derive(Args, Clone, Debug)]
pub struct LogConfig {
    /// Most appends committed in one transaction (1 = one transaction per event).
    #[arg(
        long,
        global = true,
        env = "FERRY_COMMIT_MAX_BATCH",
        default_value_t = 1024
    )]
    pub commit_max_batch: usize,

    /// Events per page when replaying from the database.
    #[arg(long, global = true, env = "FERRY_REPLAY_PAGE", default_value_t = 512)]
    pub replay_page: u32,

    /// How often connected devices check the log while the wake-up bus is down, in ms.
    #[arg(
        long,
        global = true,
        env = "FERRY_POLL_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub poll_interval_ms: u64,

    /// How often every connected device checks the log even while the bus is up, in seconds:
    /// a safety net for wake-ups Redis dropped (pub/sub is at-most-once).
    #[arg(
        long,
        global = true,
        env = "FERRY_SAFETY_POLL_SECS",
        default_value_t = 30
    )]
    pub safety_poll_secs: u64,

    /// Delete events older than this many seconds (off by default).
    #[arg(long, global = true, env = "FERRY_RETENTION_MAX_AGE_SECS")]
    pub retention_max_age_secs: Option<u64>,

    /// Keep at most this many events per user (off by default).
    #[arg(long, global = true, env = "FERRY_RETENTION_MAX_EVENTS")]
    pub retention_max_events: Option<u64>,

    /// How often the retention job runs, in seconds.
    #[arg(
        long,
        global = true,
        env = "FERRY_RETENTION_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub retention_interval_secs: u64,
}

impl Config {
    /// A configuration with every default, serving on `listen` with data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        // Parsing no arguments cannot fail: every field has a default or is optional. Any
        // FERRY_* variables in the environment apply, as they would on the command line.
        let mut config = match Defaults::try_parse_from(["ferry-relay"]) {
            Ok(defaults) => defaults.config,
            Err(e) => unreachable!("defaults parse: {e}"),
        };
        config.listen = listen;
        config.data_dir = data_dir.into();
        config
    }

    /// The database URL in force: the flag, or SQLite in the data folder.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("ferry.db").display()
            ),
        }
    }
}

impl Limits {
    /// [`Self::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Self::write_timeout_ms`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// [`Self::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Connection strings may carry passwords: print them redacted.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &crate::redact_url(&self.database_url()))
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(crate::redact_url),
            )
            .field("limits", &self.limits)
            .field("log", &self.log)
            .finish()
    }
}

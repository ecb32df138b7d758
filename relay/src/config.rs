//! Configuration: one struct with defaults, command-line flags and `FERRY_*` environment
//! overrides. `relay/ferry-relay.example.env` lists every setting.

use std::net::IpAddr;
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

    /// Prefix of the Redis keys and channels holding pairing slots (with `--redis-url`, pairing
    /// slots are shared by every node on that Redis). Relay clusters sharing one Redis need
    /// different prefixes; the braces are a Redis Cluster hash tag.
    #[arg(
        long,
        global = true,
        env = "FERRY_REDIS_PAIRING_PREFIX",
        default_value = crate::pairing::DEFAULT_KEY_PREFIX
    )]
    pub redis_pairing_prefix: String,

    /// Address to serve `/metrics` and `/readyz` on. When set, the client port answers 404
    /// for them (it keeps `/healthz`). Default: everything on the client port.
    #[arg(long, global = true, env = "FERRY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// A load balancer (address or CIDR, repeatable) whose `X-Forwarded-For` header is
    /// believed: the client is the rightmost address in it that is not a trusted proxy.
    /// From any other peer the header is ignored and the TCP peer address is the client.
    #[arg(
        long = "trusted-proxy",
        global = true,
        env = "FERRY_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Expect a PROXY protocol header (v1 text or v2 binary, as HAProxy's `send-proxy` /
    /// `send-proxy-v2` or an AWS NLB send it) at the start of every connection from a
    /// `--trusted-proxy`, before TLS and HTTP: the client address it names is the one the
    /// per-address limits, rate limits and logs use (`LOCAL`/`UNKNOWN`: the proxy's own).
    /// A trusted peer that sends no valid header within `--http-header-timeout-ms` is
    /// closed; other peers are served as without this flag and their headers not believed.
    /// Enable only when every trusted proxy sends the header.
    #[arg(long, global = true, env = "FERRY_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// TLS certificate chain (PEM) for the client port: the relay serves `wss://` itself.
    /// Needs `--tls-key`. Default: plain `ws://` (terminate TLS in a reverse proxy).
    #[arg(
        long,
        global = true,
        env = "FERRY_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(
        long,
        global = true,
        env = "FERRY_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Limits on what clients may do.
    #[command(flatten)]
    pub limits: Limits,

    /// Tuning of the log.
    #[command(flatten)]
    pub log: LogConfig,

    /// TURN credentials for calls.
    #[command(flatten)]
    pub turn: TurnConfig,

    /// Push wake-ups.
    #[command(flatten)]
    pub push: PushConfig,

    /// Attachments (encrypted files).
    #[command(flatten)]
    pub attachments: AttachmentConfig,
}

/// Attachments: where the relay keeps blobs, and how much (see [`crate::attachments`]).
#[derive(Args, Clone, Debug)]
pub struct AttachmentConfig {
    /// Where blobs are kept: a folder (`PATH` or `file://PATH`), S3-compatible object
    /// storage (`s3://BUCKET/PREFIX`; region, endpoint and credentials from the `AWS_*`
    /// environment variables), or `memory://` (lost at exit: tests only). Default: the
    /// `blobs` folder in the data folder.
    #[arg(
        long = "blob-store",
        global = true,
        env = "FERRY_BLOB_STORE",
        value_name = "URL"
    )]
    pub store: Option<String>,

    /// Largest attachment (sealed file) stored, in bytes.
    #[arg(
        long = "attachment-max-bytes",
        global = true,
        env = "FERRY_ATTACHMENT_MAX_BYTES",
        value_name = "BYTES",
        default_value_t = 100 * 1024 * 1024
    )]
    pub max_bytes: u64,

    /// Bytes of attachments a user may have stored at once (every blob it uploaded counts
    /// until it is deleted).
    #[arg(
        long = "attachment-quota-bytes",
        global = true,
        env = "FERRY_ATTACHMENT_QUOTA_BYTES",
        value_name = "BYTES",
        default_value_t = 1024 * 1024 * 1024
    )]
    pub quota_bytes: u64,

    /// Attachments older than this are deleted, whatever refers to them.
    #[arg(
        long = "attachment-max-age-secs",
        global = true,
        env = "FERRY_ATTACHMENT_MAX_AGE_SECS",
        value_name = "SECS",
        default_value_t = 30 * 86_400
    )]
    pub max_age_secs: u64,

    /// An attachment no message refers to this long after its upload started is deleted.
    #[arg(
        long = "attachment-unreferenced-secs",
        global = true,
        env = "FERRY_ATTACHMENT_UNREFERENCED_SECS",
        value_name = "SECS",
        default_value_t = 86_400
    )]
    pub unreferenced_secs: u64,

    /// Parts (256 KiB each) a device may upload or download per second, with as many in a
    /// burst: its attachment bandwidth.
    #[arg(
        long = "attachment-parts-per-device-per-second",
        global = true,
        env = "FERRY_ATTACHMENT_PARTS_PER_DEVICE_PER_SECOND",
        value_name = "N",
        default_value_t = 400
    )]
    pub parts_per_device_per_second: u32,
}

/// Push wake-ups (Web Push with the relay's VAPID key, `DATA_DIR/vapid.key`): see
/// [`crate::push`].
#[derive(Args, Clone, Debug)]
pub struct PushConfig {
    /// The contact the push services are given with every wake-up (VAPID `sub`): a
    /// `mailto:` or `https:` URL of the relay's operator.
    #[arg(
        long = "push-subject",
        global = true,
        env = "FERRY_PUSH_SUBJECT",
        value_name = "URL",
        default_value = "mailto:postmaster@localhost"
    )]
    pub subject: String,

    /// How long a message wake-up waits, in ms, for the device to read by itself (a device
    /// with a session does, and gets none); a call's is sent at once.
    #[arg(
        long = "push-delay-ms",
        global = true,
        env = "FERRY_PUSH_DELAY_MS",
        value_name = "MS",
        default_value_t = 2000
    )]
    pub delay_ms: u64,

    /// Time one request to a push service may take, in ms.
    #[arg(
        long = "push-timeout-ms",
        global = true,
        env = "FERRY_PUSH_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,

    /// Wake-ups pending at most (one per device at most); beyond, new ones are dropped and
    /// counted.
    #[arg(
        long = "push-max-queued",
        global = true,
        env = "FERRY_PUSH_MAX_QUEUED",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    pub max_queued: u64,

    /// Accept `http://` push endpoints on this machine (127.0.0.1, localhost): for tests
    /// and a local push service only. Off: endpoints must be `https://` to a public host.
    #[arg(
        long = "push-allow-loopback",
        global = true,
        env = "FERRY_PUSH_ALLOW_LOOPBACK"
    )]
    pub allow_loopback: bool,

    /// The team's APNs key (`AuthKey_<KEY ID>.p8`, from Apple's developer site) for iOS and
    /// macOS apps; with `--apns-key-id`, `--apns-team-id` and `--apns-topic`. Without it,
    /// APNs targets are refused (`push_target_invalid`).
    #[arg(
        long = "apns-key-file",
        global = true,
        env = "FERRY_APNS_KEY_FILE",
        value_name = "PATH",
        requires_all = ["apns_key_id", "apns_team_id", "apns_topic"]
    )]
    pub apns_key_file: Option<PathBuf>,

    /// The APNs key's id (10 characters).
    #[arg(
        long = "apns-key-id",
        id = "apns_key_id",
        global = true,
        env = "FERRY_APNS_KEY_ID",
        requires = "apns_key_file"
    )]
    pub apns_key_id: Option<String>,

    /// The Apple developer team id.
    #[arg(
        long = "apns-team-id",
        id = "apns_team_id",
        global = true,
        env = "FERRY_APNS_TEAM_ID",
        requires = "apns_key_file"
    )]
    pub apns_team_id: Option<String>,

    /// The app's bundle id (the `apns-topic` of every push).
    #[arg(
        long = "apns-topic",
        id = "apns_topic",
        global = true,
        env = "FERRY_APNS_TOPIC",
        requires = "apns_key_file"
    )]
    pub apns_topic: Option<String>,

    /// APNs's URL instead of Apple's (`https://api.push.apple.com`, and the sandbox's for
    /// development tokens): a test service; `http://` (HTTP/2 without TLS) only with
    /// `--push-allow-loopback`.
    #[arg(long = "apns-url", global = true, env = "FERRY_APNS_URL", hide = true)]
    pub apns_url: Option<String>,
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

    /// Cursor writes (`Ack`) per second from one device (bursts up to twice that); acks
    /// beyond it are merged into the next one written, never lost.
    #[arg(
        long,
        global = true,
        env = "FERRY_ACKS_PER_DEVICE_PER_SECOND",
        default_value_t = 20
    )]
    pub acks_per_device_per_second: u32,

    /// Events kept for one user at most; appends beyond it are refused with `quota_exceeded`
    /// (405) until retention frees space.
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_EVENTS_PER_USER",
        default_value_t = 1_000_000
    )]
    pub max_events_per_user: u64,

    /// Payload bytes kept for one user at most (1 GiB by default); as `--max-events-per-user`.
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_BYTES_PER_USER",
        default_value_t = 1 << 30
    )]
    pub max_bytes_per_user: u64,

    /// Ephemeral frames per second from one device (bursts up to twice that); beyond it
    /// they are dropped (ephemerals are best effort) and counted.
    #[arg(
        long,
        global = true,
        env = "FERRY_EPHEMERALS_PER_DEVICE_PER_SECOND",
        default_value_t = 50
    )]
    pub ephemerals_per_device_per_second: u32,

    /// Active devices a user's device chain may admit (revoked devices do not count): an
    /// `Admit` link beyond it is refused with `too_many_devices`.
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

    /// Failed pairing joins allowed per minute on this node from all addresses together
    /// (bursts up to a quarter of it). Every join takes a token and a pairing that succeeds
    /// gives it back, so this bounds the guesses at pairing codes (one in 10^6 each) however
    /// many addresses they come from. Once spent, joins are refused with `rate_limited`.
    #[arg(
        long,
        global = true,
        env = "FERRY_PAIR_FAILED_JOINS_PER_MINUTE",
        default_value_t = 60
    )]
    pub pair_failed_joins_per_minute: u32,

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

    /// Time a client has to send a request's headers, in ms; also how long an idle
    /// keep-alive HTTP connection is kept.
    #[arg(
        long,
        global = true,
        env = "FERRY_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub http_header_timeout_ms: u64,

    /// Connections open at once from one client address (an IPv6 /64 counts as one).
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 256
    )]
    pub max_connections_per_ip: usize,

    /// Sessions open at once for one user on this node.
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_SESSIONS_PER_USER",
        default_value_t = 64
    )]
    pub max_sessions_per_user: usize,

    /// Contact requests one user may send per UTC day (repeats included); beyond it
    /// requests are refused with `request_limit` (603).
    #[arg(
        long,
        global = true,
        env = "FERRY_CONTACT_REQUESTS_PER_DAY",
        default_value_t = 100
    )]
    pub contact_requests_per_day: u64,

    /// Unanswered outgoing contact requests one user may have; beyond it new requests are
    /// refused with `pending_limit` (604).
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_PENDING_REQUESTS",
        default_value_t = 200
    )]
    pub max_pending_requests: u64,

    /// Contacts one user may have; beyond it accepting is refused with `contact_limit` (605).
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_CONTACTS",
        default_value_t = 2_000
    )]
    pub max_contacts: u64,

    /// Users one user may block; beyond it blocks are refused with `block_limit` (609).
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_BLOCKS",
        default_value_t = 10_000
    )]
    pub max_blocks: u64,

    /// One-use MLS KeyPackages one device may keep at the relay (its last-resort package not
    /// counted); beyond it uploads are refused with `key_package_limit` (704).
    #[arg(
        long,
        global = true,
        env = "FERRY_KEY_PACKAGES_PER_DEVICE",
        default_value_t = 100
    )]
    pub key_packages_per_device: u64,

    /// People requests that write (handles, contact requests and answers, blocks, profiles,
    /// presence settings, contact cards) per second from one device (bursts up to twice
    /// that); beyond it they are refused with `rate_limited` (400).
    #[arg(
        long,
        global = true,
        env = "FERRY_PEOPLE_WRITES_PER_DEVICE_PER_SECOND",
        default_value_t = 20
    )]
    pub people_writes_per_device_per_second: u32,

    /// Handle lookups (`whois`) per minute from one device, and from one client address
    /// (bursts up to a third of it); beyond it lookups are refused with `lookup_limit` (606).
    #[arg(
        long,
        global = true,
        env = "FERRY_LOOKUPS_PER_MINUTE",
        default_value_t = 30
    )]
    pub lookups_per_minute: u32,

    /// An anonymous (pairing) session not taking part in a pairing is closed after this
    /// long, in ms; pings do not count.
    #[arg(
        long,
        global = true,
        env = "FERRY_PAIRING_IDLE_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub pairing_idle_timeout_ms: u64,
}

/// TURN servers for calls: the relay hands out short-lived credentials for them (coturn's
/// `use-auth-secret` REST scheme, see [`crate::turn`]). Off unless URLs and a secret are set.
#[derive(Args, Clone)]
pub struct TurnConfig {
    /// A TURN or STUN server clients may use for calls (`turn:`, `turns:` or `stun:`, as WebRTC
    /// takes it; repeatable, at most 8), such as `turns:turn.example.org:5349?transport=tcp`.
    /// Needs a secret (`--turn-secret-file` or `--turn-secret`). Default: none (clients asking
    /// for TURN credentials get `turn_unavailable`).
    #[arg(
        id = "turn_urls",
        long = "turn-url",
        global = true,
        env = "FERRY_TURN_URLS",
        value_name = "URL",
        value_delimiter = ',',
        value_parser = parse_turn_url
    )]
    pub urls: Vec<String>,

    /// The secret shared with the TURN servers (coturn's `static-auth-secret`). Visible to
    /// other local users in the process list: prefer `--turn-secret-file` or the environment.
    #[arg(
        id = "turn_secret",
        long = "turn-secret",
        global = true,
        env = "FERRY_TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        conflicts_with = "turn_secret_file"
    )]
    pub secret: Option<String>,

    /// A file holding the TURN secret, read at start (a trailing newline is ignored).
    #[arg(
        id = "turn_secret_file",
        long = "turn-secret-file",
        global = true,
        env = "FERRY_TURN_SECRET_FILE",
        value_name = "PATH"
    )]
    pub secret_file: Option<PathBuf>,

    /// How long TURN credentials stay valid, in seconds (60 to 86400): a call that outlasts
    /// them fetches new ones.
    #[arg(
        id = "turn_ttl_secs",
        long = "turn-ttl-secs",
        global = true,
        env = "FERRY_TURN_TTL_SECS",
        value_name = "SECONDS",
        default_value_t = crate::turn::DEFAULT_TTL_SECS,
        value_parser = clap::value_parser!(u64).range(crate::turn::MIN_TTL_SECS..=crate::turn::MAX_TTL_SECS)
    )]
    pub ttl_secs: u64,

    /// TURN credentials one device may fetch per minute (bursts up to that many); beyond it
    /// requests are refused with `rate_limited` (400).
    #[arg(
        id = "turn_credentials_per_device_per_minute",
        long = "turn-credentials-per-device-per-minute",
        global = true,
        env = "FERRY_TURN_CREDENTIALS_PER_DEVICE_PER_MINUTE",
        value_name = "N",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub credentials_per_device_per_minute: u32,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed, only whether it is set.
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("ttl_secs", &self.ttl_secs)
            .field(
                "credentials_per_device_per_minute",
                &self.credentials_per_device_per_minute,
            )
            .finish()
    }
}

fn parse_turn_url(url: &str) -> Result<String, String> {
    crate::turn::check_url(url)?;
    Ok(url.to_owned())
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

    /// Payload bytes per replay page (a page always holds at least one event): bounds what
    /// a session holds in memory while a slow device reads it.
    #[arg(
        long,
        global = true,
        env = "FERRY_REPLAY_PAGE_BYTES",
        default_value_t = 2 * 1024 * 1024
    )]
    pub replay_page_bytes: usize,

    /// Sessions replaying from the database at once on this node; more wait their turn.
    #[arg(
        long,
        global = true,
        env = "FERRY_MAX_CONCURRENT_REPLAYS",
        default_value_t = 64
    )]
    pub max_concurrent_replays: usize,

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

    /// Delete conversation messages older than this many seconds (off by default). Commits
    /// and proposals a member device has not read are kept up to
    /// `--conv-retention-lag-secs` longer.
    #[arg(long, global = true, env = "FERRY_CONV_RETENTION_MAX_AGE_SECS")]
    pub conv_retention_max_age_secs: Option<u64>,

    /// How long a conversation's commits and proposals wait for a member device that has not
    /// read them before retention deletes them anyway (that device then rejoins by external
    /// commit). 30 days by default.
    #[arg(
        long,
        global = true,
        env = "FERRY_CONV_RETENTION_LAG_SECS",
        default_value_t = 30 * 86_400
    )]
    pub conv_retention_lag_secs: u64,

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

    /// How the store is opened: pools as by default, the per-user quota from the limits.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            quota: crate::store::Quota {
                max_events: self.limits.max_events_per_user,
                max_bytes: self.limits.max_bytes_per_user,
            },
            ..crate::store::StoreOptions::default()
        }
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
    /// The people-domain limits the store enforces.
    pub fn people(&self) -> crate::store::PeopleLimits {
        crate::store::PeopleLimits {
            requests_per_day: self.contact_requests_per_day,
            pending_requests: self.max_pending_requests,
            contacts: self.max_contacts,
            blocks: self.max_blocks,
        }
    }

    /// The conversation-domain limits the store enforces.
    pub fn conversations(&self) -> crate::store::ConvLimits {
        crate::store::ConvLimits {
            key_packages_per_device: self.key_packages_per_device,
        }
    }

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

    /// [`Self::http_header_timeout_ms`] as a duration.
    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_ms)
    }

    /// [`Self::pairing_idle_timeout_ms`] as a duration.
    pub fn pairing_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pairing_idle_timeout_ms)
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
            .field("redis_pairing_prefix", &self.redis_pairing_prefix)
            .field("limits", &self.limits)
            .field("admin_listen", &self.admin_listen)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("log", &self.log)
            .field("turn", &self.turn)
            .field("push", &self.push)
            .field("attachments", &self.attachments)
            .finish()
    }
}

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address (`192.0.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let args = std::iter::once("ferry-relay").chain(args.iter().copied());
        Cli::try_parse_from(args).map(|cli| cli.config)
    }

    #[test]
    fn turn_flags_parse_and_the_secret_is_never_printed() {
        let config = parse(&[
            "--turn-url",
            "turn:turn.example:3478",
            "--turn-url",
            "turns:turn.example:5349?transport=tcp",
            "--turn-secret",
            "hunter2-turn-secret",
            "--turn-ttl-secs",
            "600",
        ])
        .unwrap();
        assert_eq!(config.turn.urls.len(), 2);
        assert_eq!(config.turn.secret.as_deref(), Some("hunter2-turn-secret"));
        assert_eq!(config.turn.ttl_secs, 600);
        assert_eq!(config.turn.credentials_per_device_per_minute, 10);
        let printed = format!("{config:?}");
        assert!(printed.contains("turn.example"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn bad_turn_flags_are_refused() {
        let refused = [
            &["--turn-url", "https://turn.example"][..],
            &["--turn-ttl-secs", "59"],
            &["--turn-ttl-secs", "86401"],
            &["--turn-credentials-per-device-per-minute", "0"],
        ];
        for args in refused {
            assert!(parse(args).is_err(), "{args:?}");
        }
        let both = parse(&["--turn-secret", "s", "--turn-secret-file", "/run/secret"]);
        let kind = both.err().map(|e| e.kind());
        assert_eq!(kind, Some(clap::error::ErrorKind::ArgumentConflict));
        let defaults = parse(&[]).unwrap();
        assert!(defaults.turn.urls.is_empty());
        assert_eq!(defaults.turn.ttl_secs, crate::turn::DEFAULT_TTL_SECS);
    }
}

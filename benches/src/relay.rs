//! Relays under test: in-process nodes ([`BenchRelay`]) and a separate relay process
//! ([`RelayProcess`], for clean memory figures).
//!
//! Every relay serves on 127.0.0.1 with a fresh temporary data folder and limits raised far
//! above what the bench sends, so the figures show the relay's capacity, not its rate
//! limiting. The backend is embedded SQLite, or PostgreSQL (+ Redis between nodes).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_protocol::RelayId;
use ferry_relay::{Config, Server};
use tempfile::TempDir;

use crate::client::Target;

/// Default PostgreSQL for `--backend postgres` and the cluster scenario.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Default Redis for the cluster scenario.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default NATS server (with JetStream) for the jetstream scenario.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Where a relay keeps its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Embedded SQLite in the temporary data folder (the relay's default).
    Sqlite,
    /// PostgreSQL at `--postgres-url`.
    Postgres,
}

/// What a bench relay runs on.
#[derive(Clone, Debug)]
pub struct Services {
    /// The log's backend.
    pub backend: Backend,
    /// PostgreSQL URL (used by `Backend::Postgres` and the cluster).
    pub postgres_url: String,
    /// Redis URL (used by the cluster).
    pub redis_url: String,
    /// NATS URL (used by the jetstream scenario, not by any relay).
    pub nats_url: String,
}

/// How to start one in-process node.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// `Config::log.commit_max_batch`; `None` keeps the relay's default (group commit).
    pub commit_max_batch: Option<usize>,
    /// Wake other nodes through Redis instead of the in-process bus.
    pub redis: bool,
    /// Use this data folder (shared relay key between nodes) instead of a fresh one.
    pub data_dir: Option<PathBuf>,
    /// `Config::limits.people_writes_per_device_per_second`; `None` keeps the relay's default
    /// (the `people` scenario measures within it; `conversations` sets a group up faster).
    pub people_writes_per_second: Option<u32>,
    /// `Config::push.allow_loopback`: devices may register, and the relay sends to,
    /// `http://127.0.0.1` push endpoints (the `push` scenario's local push service).
    pub push_allow_loopback: bool,
    /// `Config::push.delay_ms`; `None` keeps the relay's default (2 s).
    pub push_delay_ms: Option<u64>,
    /// `Config::push.timeout_ms`; `None` keeps the relay's default (10 s).
    pub push_timeout_ms: Option<u64>,
}

/// The limits every bench relay runs with: far above what any scenario sends.
pub fn generous(config: &mut Config) {
    let limits = &mut config.limits;
    limits.handshakes_per_ip_per_minute = 100_000_000;
    limits.appends_per_device_per_second = 10_000_000;
    limits.max_connections = 1_000_000;
    limits.max_devices_per_user = 100_000;
    limits.idle_timeout_ms = 3_600_000;
    limits.handshake_timeout_ms = 60_000;
    limits.write_timeout_ms = 60_000;
    limits.max_connections_per_ip = 1_000_000;
    limits.max_sessions_per_user = 1_000_000;
    limits.acks_per_device_per_second = 10_000_000;
    limits.ephemerals_per_device_per_second = 10_000_000;
    limits.max_events_per_user = u64::MAX;
    limits.max_bytes_per_user = u64::MAX;
    limits.contact_requests_per_day = 1_000_000;
    limits.max_pending_requests = 1_000_000;
    limits.max_contacts = 1_000_000;
    config.log.max_concurrent_replays = 100_000;
    let attachments = &mut config.attachments;
    attachments.max_bytes = 1 << 40;
    attachments.quota_bytes = 1 << 50;
    attachments.parts_per_device_per_second = 1_000_000;
}

/// The same limits as `ferry-relay` flags, for a relay process.
pub fn generous_flags() -> Vec<String> {
    [
        "--handshakes-per-ip-per-minute=100000000",
        "--appends-per-device-per-second=10000000",
        "--max-connections=1000000",
        "--max-devices-per-user=100000",
        "--idle-timeout-ms=3600000",
        "--handshake-timeout-ms=60000",
        "--write-timeout-ms=60000",
        "--max-connections-per-ip=1000000",
        "--max-sessions-per-user=1000000",
        "--acks-per-device-per-second=10000000",
        "--ephemerals-per-device-per-second=10000000",
        "--max-events-per-user=18446744073709551615",
        "--max-bytes-per-user=18446744073709551615",
        "--contact-requests-per-day=1000000",
        "--max-pending-requests=1000000",
        "--max-contacts=1000000",
        "--max-concurrent-replays=100000",
        "--attachment-max-bytes=1099511627776",
        "--attachment-quota-bytes=1125899906842624",
        "--attachment-parts-per-device-per-second=1000000",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A relay node running in this process.
#[derive(Debug)]
pub struct BenchRelay {
    server: Server,
    // Removed when the relay is dropped; `None` when the caller owns the folder.
    _dir: Option<TempDir>,
}

impl BenchRelay {
    /// Starts a node on 127.0.0.1:0 with generous limits.
    pub async fn spawn(services: &Services, options: NodeOptions) -> anyhow::Result<Self> {
        let (dir, data_dir) = match options.data_dir {
            Some(path) => (None, path),
            None => {
                let dir = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
                let path = dir.path().to_owned();
                (Some(dir), path)
            }
        };
        let mut config = Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), data_dir);
        generous(&mut config);
        if services.backend == Backend::Postgres {
            config.database_url = Some(services.postgres_url.clone());
        }
        if options.redis {
            config.redis_url = Some(services.redis_url.clone());
        }
        if let Some(rate) = options.people_writes_per_second {
            config.limits.people_writes_per_device_per_second = rate;
        }
        if let Some(max_batch) = options.commit_max_batch {
            config.log.commit_max_batch = max_batch;
        }
        config.push.allow_loopback = options.push_allow_loopback;
        if let Some(delay_ms) = options.push_delay_ms {
            config.push.delay_ms = delay_ms;
        }
        if let Some(timeout_ms) = options.push_timeout_ms {
            config.push.timeout_ms = timeout_ms;
        }
        let server = Server::spawn(config)
            .await
            .context("starting an in-process relay")?;
        Ok(Self { server, _dir: dir })
    }

    /// Where clients connect.
    pub fn target(&self) -> Target {
        Target {
            addr: self.server.local_addr(),
            relay: self.server.relay_id(),
        }
    }

    /// The node's Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.server.metrics().render()
    }

    /// Stops the node gracefully, giving up after `within` (left-over tasks die with the
    /// scenario's runtime).
    pub async fn shutdown(self, within: Duration) -> bool {
        tokio::time::timeout(within, self.server.shutdown())
            .await
            .is_ok()
    }
}

/// The value of a counter or the `_sum`/`_count` of a histogram in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let key = key.split('{').next()?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
}

/// A relay running as its own process (the `ferry-relay` binary), killed on drop.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    target: Target,
    /// What was started, for the report.
    pub program: String,
}

impl RelayProcess {
    /// Starts `program args…` and waits for it to print its address and key.
    pub fn spawn(program: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut relay = None;
        while addr.is_none() || relay.is_none() {
            let Some(line) = lines.next().transpose()? else {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} exited before it served", program.display());
            };
            if let Some(rest) = line.strip_prefix("ferry-relay listening on ws://") {
                let text = rest.trim_end_matches("/ws");
                addr = Some(text.parse::<SocketAddr>().context("relay address")?);
            } else if let Some((_, key)) = line.split_once("relay key (pin this in clients): ") {
                relay = Some(RelayId::from_hex(key.trim()).context("relay key")?);
            }
        }
        let (Some(addr), Some(relay)) = (addr, relay) else {
            unreachable!("the loop ends only with both");
        };
        // Keep reading stdout so the relay never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            target: Target { addr, relay },
            program: program.display().to_string(),
        })
    }

    /// Where clients connect.
    pub fn target(&self) -> Target {
        self.target
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// The relay's Prometheus text, from `GET /metrics` on its client port.
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut stream = TcpStream::connect_timeout(&self.target.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.target.addr
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .context("no end of headers in the /metrics answer")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("/metrics answered {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    }
}

/// How to start a relay as its own process ([`spawn_process`]).
#[derive(Clone, Debug, Default)]
pub struct ProcessOptions {
    /// The `ferry-relay` binary; `None`: the one next to this binary, else this binary as
    /// `ferry-bench serve-relay`.
    pub program: Option<PathBuf>,
    /// The data folder (holds the relay key; nodes of one cluster share it).
    pub data_dir: PathBuf,
    /// Keep the log in PostgreSQL (`Services::postgres_url`) instead of SQLite.
    pub postgres: bool,
    /// Wake other nodes through Redis (`Services::redis_url`).
    pub redis: bool,
}

/// Starts a `ferry-relay` process on 127.0.0.1:0 with [`generous_flags`] and waits until it
/// serves (on a blocking thread: it reads the process's first lines).
pub async fn spawn_process(
    services: &Services,
    options: &ProcessOptions,
) -> anyhow::Result<RelayProcess> {
    let (services, options) = (services.clone(), options.clone());
    tokio::task::spawn_blocking(move || start_process(&services, &options)).await?
}

fn start_process(services: &Services, options: &ProcessOptions) -> anyhow::Result<RelayProcess> {
    let (program, mut args) = relay_program(options.program.as_deref())?;
    args.extend([
        "--listen=127.0.0.1:0".to_owned(),
        format!("--data-dir={}", options.data_dir.display()),
    ]);
    if options.postgres {
        args.push(format!("--database-url={}", services.postgres_url));
    }
    if options.redis {
        args.push(format!("--redis-url={}", services.redis_url));
    }
    args.extend(generous_flags());
    RelayProcess::spawn(&program, &args)
}

/// The relay program to start, and the arguments that come before the relay's flags: `given`,
/// else `ferry-relay` next to this binary, else this binary as `ferry-bench serve-relay`
/// (which runs the same library).
pub fn relay_program(given: Option<&Path>) -> anyhow::Result<(PathBuf, Vec<String>)> {
    if let Some(path) = given {
        return Ok((path.to_owned(), Vec::new()));
    }
    let me = std::env::current_exe().context("locating this binary")?;
    let beside = me.with_file_name("ferry-relay");
    if beside.is_file() {
        return Ok((beside, Vec::new()));
    }
    Ok((me, vec!["serve-relay".to_owned()]))
}

/// A fresh data folder on tmpfs when `/dev/shm` exists (many first handshakes each register
/// a device with a synced write, which a slow disk turns into minutes), else in the
/// temporary folder.
pub fn tmpfs_folder(prefix: &str) -> anyhow::Result<TempDir> {
    let shm = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    Ok(if shm.is_dir() {
        builder.tempdir_in(shm)?
    } else {
        builder.tempdir()?
    })
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// Whether something accepts TCP connections at `host:port` of `url` within 2 s.
pub fn reachable(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let default_port = if url.starts_with("redis") { 6379 } else { 5432 };
    let with_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    use std::net::ToSocketAddrs;
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metrics() {
        let text = "# HELP x\nferry_commit_batch_size_sum 42.0\nferry_commit_batch_size_count 2\n\
                    ferry_handshakes_total{outcome=\"ok\"} 7\n";
        assert_eq!(metric(text, "ferry_commit_batch_size_sum"), Some(42.0));
        assert_eq!(metric(text, "ferry_commit_batch_size_count"), Some(2.0));
        assert_eq!(metric(text, "ferry_handshakes_total"), Some(7.0));
        assert_eq!(metric(text, "missing"), None);
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_kib(std::process::id()).is_ok_and(|kib| kib > 0));
    }
}

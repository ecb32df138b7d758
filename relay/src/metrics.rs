//! Prometheus metrics, served as text at `/metrics`.
//!
//! Names are prefixed `ferry_`. Labels are small fixed sets (handshake outcome, error code
//! name), never user or device ids, so cardinality stays bounded.

use std::sync::atomic::AtomicU64;

use ferry_protocol::ErrorCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Authenticated sessions open now.
    pub sessions: Gauge,
    handshakes: Family<Labels, Counter>,
    /// Events committed (new, not retries).
    pub appends: Counter,
    /// Appends answered with the original sequence (retries).
    pub duplicate_appends: Counter,
    /// Events per committed transaction.
    pub commit_batch_size: Histogram,
    /// Time to commit one batch, in seconds.
    pub commit_seconds: Histogram,
    /// Time from commit to the event being written to another device's socket, in seconds.
    pub delivery_seconds: Histogram,
    /// Events sent to devices catching up from the database.
    pub replayed_events: Counter,
    /// Events sent live.
    pub live_events: Counter<u64, AtomicU64>,
    errors: Family<Labels, Counter>,
    /// 1 when the wake-up bus delivers messages, 0 while it is down (the relay polls then).
    pub bus_up: Gauge,
    /// Events deleted by retention.
    pub trimmed_events: Counter,
    /// Bus messages dropped because the publish queue was full.
    pub bus_dropped: Counter,
    /// Conversation messages stored (new, not retries).
    pub conv_messages: Counter,
    /// Conversation messages per batch of sends.
    pub conv_batch_size: Histogram,
    limit_refusals: Family<Labels, Counter>,
    /// TURN credentials handed out (refusals are counted in `errors`).
    pub turn_credentials_issued: Counter,
    proxy_header_errors: Family<Labels, Counter>,
    push_wake_ups: Family<Labels, Counter>,
    attachment_bytes: Family<Labels, Counter>,
    attachments_deleted: Counter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let metrics = Self {
            connections: Gauge::default(),
            sessions: Gauge::default(),
            handshakes: Family::default(),
            appends: Counter::default(),
            duplicate_appends: Counter::default(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            delivery_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            replayed_events: Counter::default(),
            live_events: Counter::default(),
            errors: Family::default(),
            bus_up: Gauge::default(),
            trimmed_events: Counter::default(),
            bus_dropped: Counter::default(),
            conv_messages: Counter::default(),
            conv_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            limit_refusals: Family::default(),
            turn_credentials_issued: Counter::default(),
            proxy_header_errors: Family::default(),
            push_wake_ups: Family::default(),
            attachment_bytes: Family::default(),
            attachments_deleted: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "sessions",
            "Authenticated device sessions",
            metrics.sessions.clone(),
        );
        registry.register(
            "handshakes",
            "Handshakes by outcome",
            metrics.handshakes.clone(),
        );
        registry.register("appends", "Events committed", metrics.appends.clone());
        registry.register(
            "duplicate_appends",
            "Retried appends answered from the log",
            metrics.duplicate_appends.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Events per commit",
            metrics.commit_batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Commit latency",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "delivery_seconds",
            "Commit to live delivery latency",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "replayed_events",
            "Events replayed from the database",
            metrics.replayed_events.clone(),
        );
        registry.register(
            "live_events",
            "Events delivered live",
            metrics.live_events.clone(),
        );
        registry.register(
            "errors",
            "Errors reported to clients, by code",
            metrics.errors.clone(),
        );
        registry.register(
            "bus_up",
            "Whether the wake-up bus is up",
            metrics.bus_up.clone(),
        );
        registry.register(
            "trimmed_events",
            "Events deleted by retention",
            metrics.trimmed_events.clone(),
        );
        registry.register(
            "bus_dropped",
            "Bus messages dropped (publish queue full)",
            metrics.bus_dropped.clone(),
        );
        registry.register(
            "conversation_messages",
            "Conversation messages stored (new, not retries)",
            metrics.conv_messages.clone(),
        );
        registry.register(
            "conversation_batch_size",
            "Conversation messages per batch of sends",
            metrics.conv_batch_size.clone(),
        );
        registry.register(
            "limit_refusals",
            "Connections and sessions refused or closed by a connection limit, by limit",
            metrics.limit_refusals.clone(),
        );
        registry.register(
            "turn_credentials_issued",
            "TURN credentials handed out (refusals are counted in errors)",
            metrics.turn_credentials_issued.clone(),
        );
        registry.register(
            "push_wake_ups",
            "Push wake-ups by outcome: queued, coalesced (into one pending), skipped (the device read everything), sent, retried, failed, unregistered (404/410), dropped (queue full)",
            metrics.push_wake_ups.clone(),
        );
        registry.register(
            "attachment_bytes",
            "Attachment bytes stored (direction=up) and served (direction=down)",
            metrics.attachment_bytes.clone(),
        );
        registry.register(
            "attachments_deleted",
            "Attachments deleted: expired, unreferenced, trimmed with their messages, or corrupt",
            metrics.attachments_deleted.clone(),
        );
        registry.register(
            "proxy_header_errors",
            "Connections from a trusted proxy closed for their PROXY protocol header, by reason",
            metrics.proxy_header_errors.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a handshake by outcome (`ok`, or an error code name).
    pub fn handshake(&self, outcome: &'static str) {
        self.handshakes.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Counts an error reported to a client.
    pub fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&[("code", code.name())]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts a connection or session refused or closed by a limit (`connections`,
    /// `connections_per_ip`, `sessions_per_user`, `http_header_timeout`, `pairing_idle`).
    pub fn limit_refusal(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&[("limit", limit)]).inc();
    }

    /// Counts `n` push wake-ups with this outcome (see the metric's help).
    pub fn push_wake_ups(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.push_wake_ups
                .get_or_create(&[("outcome", outcome)])
                .inc_by(n);
        }
    }

    /// Counts attachment bytes stored (`up`) or served (`down`).
    pub fn attachment_bytes(&self, direction: &'static str, n: usize) {
        self.attachment_bytes
            .get_or_create(&[("direction", direction)])
            .inc_by(n as u64);
    }

    /// Counts attachments deleted.
    pub fn attachments_deleted(&self, n: u64) {
        self.attachments_deleted.inc_by(n);
    }

    /// Counts a connection from a trusted proxy closed for its PROXY protocol header
    /// (`missing`, `invalid`, `too_long`, `closed`, `timeout`).
    pub fn proxy_header_error(&self, reason: &'static str) {
        self.proxy_header_errors
            .get_or_create(&[("reason", reason)])
            .inc();
    }
}

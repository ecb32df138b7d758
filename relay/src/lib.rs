//! The Ferry relay: stores and forwards end-to-end encrypted events it can never read.
//!
//! A user's devices connect over WebSocket (`/ws`), authenticate with the handshake of
//! [`ferry_protocol::handshake`], and exchange sealed events through a per-user append-only
//! log. This crate is a library with a thin `main.rs`: tests and benchmarks start a node with
//! [`Server::spawn`] on `127.0.0.1:0` and stop it with [`Server::shutdown`].
//!
//! # Code map
//!
//! - [`server`]: start-up, HTTP routes (`/ws`, `/healthz`, `/readyz`, `/metrics`), shutdown.
//! - `connection`: one socket: the handshake driver, then a session's reader and writer tasks.
//! - [`hub`]: this node's sessions by user; live wake-ups; the bridge to the bus.
//! - [`bus`]: wake-ups between nodes: in-process, or Redis pub/sub.
//! - [`store`]: the log: one trait, SQLite and PostgreSQL backends, group commit.
//! - [`pairing`]: pairing slots, routing opaque PAKE messages between two devices: in this
//!   node's memory, or shared by every node through Redis.
//! - [`tls`]: TLS termination on the client port (`--tls-cert`, `--tls-key`).
//! - [`proxy_protocol`]: the client address from a TCP load balancer's PROXY protocol
//!   header (`--proxy-protocol`).
//! - [`turn`]: short-lived TURN credentials for calls (coturn's `use-auth-secret` scheme).
//! - [`config`], [`metrics`], [`rate_limit`], [`relay_key`]: the supporting pieces.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), ferry_relay::server::StartError> {
//! let config = ferry_relay::Config::new("127.0.0.1:0".parse().unwrap(), "/tmp/ferry-example");
//! let server = ferry_relay::Server::spawn(config).await?;
//! println!("pin this relay key: {}", server.relay_id());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod attachments;
pub mod bus;
pub mod config;
mod connection;
pub mod context;
pub mod handles;
pub mod hub;
pub mod mailbox;
pub mod metrics;
pub mod pairing;
pub mod proxy_protocol;
pub mod push;
pub mod rate_limit;
mod redact;
pub mod relay_key;
pub mod server;
pub mod store;
mod sync;
pub mod tls;
pub mod turn;

pub use config::Config;
pub use redact::redact_url;
pub use server::Server;

//! `ferry-bench`: a load generator that measures the Ferry relay as its users feel it.
//!
//! Every scenario starts its own relay (in this process with `ferry_relay::Server::spawn`
//! on 127.0.0.1:0 and a temporary data folder; `idle`, `cluster`, `storm` and `latency
//! --relay-process` start separate `ferry-relay` processes instead), drives it with real clients speaking `ferry_protocol` over tokio-tungstenite
//! ([`client`]), prints a progress line on stderr, and returns figures ([`report`]). All
//! traffic stays on 127.0.0.0/8; every run is bounded in count and time.
//!
//! | scenario | what it measures | goal |
//! | --- | --- | --- |
//! | `handshakes` | handshakes/s through the relay (64 concurrent clients) ÷ sans-IO crypto ceiling × cores | ≥ 60% |
//! | `appends` | durable appends/s, group commit vs `commit_max_batch = 1`, same workload | ≥ 50,000 ev/s and ≥ 3× |
//! | `latency` | Append on device A → Events on device B at 5,000 ev/s offered, p50/p99/p99.9/max | p99 < 10 ms |
//! | `idle` | relay RSS per idle authenticated connection at 10,000 and 50,000 | ≤ 8 KiB |
//! | `replay` | a fresh device catching up 100,000 events | ≥ 200,000 ev/s |
//! | `wire` | bytes on the wire per event (256 B payload), each direction | |
//! | `cluster` | 1, 2 and 3 `ferry-relay` processes on one PostgreSQL and Redis, the same load: durable appends/s (a user's devices on different nodes), cross-node and same-node latency at 2,000 ev/s, and where the CPU went (relays, PostgreSQL, Redis, generator, other) | |
//! | `people` | a contact request's answer time to a user who blocked the sender vs one who did not (fresh targets; and repeats to the same target) | |
//! | `conversations` | an MLS group of 100 users × 2 devices at 5 msg/s: delivered to all devices, send → decrypted on each device p50/p99; the sync log at the same send rate and at the same deliveries beside it | |
//! | `push` | Web Push wake-ups per second to a local push service (push delay 200 ms): 1,000 users, device B offline with a target, device A appends a burst of 5; first append → last wake-up and the steady rate, on 1 push service and on 4 (the per-service cap), one wake-up per user (duplicates must be 0), the relay's outcomes and CPU per wake-up | |
//! | `attachments` | a 64 MiB file uploaded (`upload_file`) and downloaded (`save_file`) through the relay, MiB/s, 3 rounds, each ÷ a plain copy (`fs::copy` + fsync) of the same bytes on the same disk; beside them sealing alone, and the relay's folder storage and digest check alone; the download must equal the original | |
//! | `window` | closed loop, device A keeps W appends awaiting `Appended`, device B reads: events/s to B, A→B p50/p99/p99.9/max, duplicates and gaps seen by B, events not delivered within 5 s; 1 user W=50, 200 users W=1 and W=10, each on a fresh relay (beside PocketBridge's own figures, in a note) | |
//! | `storm` | a relay restart (separate process, killed and started again on its folder): 20,000 registered devices (capped by the fd limit), device B of each user with 5 unacknowledged events, reconnect at once with jittered exponential backoff (100 ms → 5 s); time until all are caught up, each device's p50/p99, handshakes/s, retries and failures, a probe's live A→B p50/p99/max at 200 ev/s during the storm vs a quiet window, relay RSS and CPU | |
//! | `jetstream` (not in `all`) | NATS JetStream (file storage, `--nats`) under the `appends` load, acked publishes/s, and ordered-consumer replays of its stream, against Ferry's group-commit appends and a Ferry replay of a log as long, same run | appends ÷ acks ≥ 0.5, replay ratio > 1 |
//!
//! Comparisons (group vs single commit, relay vs ceiling, cross vs same node, blocked vs not
//! blocked) are measured side by side in the same run and reported as ratios. Each scenario's
//! module documents its method.
//!
//! # Running
//!
//! ```text
//! cargo build --release -p ferry-relay -p ferry-bench     # ferry-relay: idle, cluster, storm
//! target/release/ferry-bench all                          # every scenario, SQLite
//! target/release/ferry-bench appends --runs 3             # one scenario, median of 3
//! target/release/ferry-bench all --backend postgres       # PostgreSQL (+ plain-insert reference)
//! target/release/ferry-bench all --quick                  # tiny: under a minute, for CI
//! target/release/ferry-bench people --runs 3              # blocked or not: 1,000 requests each
//! target/release/ferry-bench conversations --rate 10      # a 200-device MLS group at 10 msg/s
//! target/release/ferry-bench push --runs 3                # 1,000 wake-ups to a local push service
//! target/release/ferry-bench attachments --file-mib 256   # a 256 MiB file up and down, 3 rounds
//! target/release/ferry-bench window --users 50 --window 5 # one closed-loop configuration only
//! target/release/ferry-bench jetstream                    # needs nats-server -js on 127.0.0.1:4222
//! ```
//!
//! The table (markdown) goes to stdout, progress to stderr. `--postgres URL` and `--redis
//! URL` point at the services (defaults: the local test services); `cluster` is skipped
//! when they are not reachable, unless `FERRY_REQUIRE_SERVICES=1`. Missed goals do not
//! change the exit status; a scenario that fails does.

#![forbid(unsafe_code)]

pub mod client;
pub mod counting;
pub mod cpu;
pub mod progress;
pub mod relay;
pub mod report;
pub mod scenarios;

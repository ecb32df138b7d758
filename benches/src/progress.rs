//! The progress line on stderr while a scenario runs: a count, its rate over the last
//! interval and the time elapsed. On a terminal it rewrites one line; otherwise (CI logs)
//! it prints a line every few seconds.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::report::number;

/// A running progress line; stops when dropped.
#[derive(Debug)]
pub struct Progress {
    task: JoinHandle<()>,
    tty: bool,
}

impl Progress {
    /// Starts reporting `counter` (in `unit`s) under `label`.
    pub fn start(label: impl Into<String>, counter: Arc<AtomicU64>, unit: &'static str) -> Self {
        let label = label.into();
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        };
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (started, counter.load(Ordering::Relaxed));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let count = counter.load(Ordering::Relaxed);
                let rate = (count - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, count);
                let line = format!(
                    "[{label}] {} {unit}, {} {unit}/s, {:.1} s",
                    number(count as f64),
                    number(rate),
                    started.elapsed().as_secs_f64()
                );
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r\x1b[K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        });
        Self { task, tty }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// Says on stderr what the bench is doing now.
pub fn step(scenario: &str, what: impl std::fmt::Display) {
    eprintln!("[{scenario}] {what}");
}

//! A device driven in the background, for tests that pipeline appends and watch deliveries
//! at the same time: frames go out through a queue, and everything the relay sends back is
//! recorded in a [`Seen`] that the test can wait on.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_protocol::{
    Append, ClientFrame, DeviceId, ErrorFrame, Event, SealedPayload, ServerFrame,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::client::Client;

/// Everything a device received, in arrival order.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Every event, replayed or live, in the order it arrived.
    pub events: Vec<Event>,
    /// Answers to appends: `(device_seq, Ok(seq))` or the error.
    pub answers: Vec<(u64, Result<u64, ErrorFrame>)>,
    /// The heads reported by `CaughtUp`, and how many events had arrived at that point.
    pub caught_up: Vec<(u64, usize)>,
    /// Any other frame.
    pub other: Vec<ServerFrame>,
    /// Set when the connection ended: `Some(close code)` (or `Some(None)` without one).
    pub closed: Option<Option<u16>>,
    /// A frame that failed to decrypt or decode: always a test failure.
    pub broken: Option<String>,
}

impl Seen {
    /// The stream sequences received, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.seq).collect()
    }

    /// The highest stream sequence received (0 for none).
    pub fn last_seq(&self) -> u64 {
        self.events.iter().map(|e| e.seq).max().unwrap_or(0)
    }

    /// Successful answers: device sequence → stream sequence. Panics if one was answered
    /// twice with different sequences.
    pub fn acked(&self) -> HashMap<u64, u64> {
        let mut acked = HashMap::new();
        for (device_seq, answer) in &self.answers {
            if let Ok(seq) = answer
                && let Some(previous) = acked.insert(*device_seq, *seq)
            {
                assert_eq!(
                    previous, *seq,
                    "device_seq {device_seq} answered with two different sequences"
                );
            }
        }
        acked
    }

    /// Error answers to appends.
    pub fn errors(&self) -> Vec<&ErrorFrame> {
        self.answers
            .iter()
            .filter_map(|(_, answer)| answer.as_ref().err())
            .collect()
    }

    fn summary(&self) -> String {
        format!(
            "{} events (last seq {}), {} answers ({} errors), caught up {:?}, closed {:?}, broken {:?}",
            self.events.len(),
            self.last_seq(),
            self.answers.len(),
            self.errors().len(),
            self.caught_up,
            self.closed,
            self.broken,
        )
    }
}

/// Checks that `events` are exactly the sequences `from..=to`, each once, in order; says
/// what is wrong otherwise (a duplicate, a gap, a reordering, something extra).
pub fn exactly_once_in_order(events: &[Event], from: u64, to: u64) -> Result<(), String> {
    let mut seen = HashSet::new();
    for event in events {
        if !seen.insert(event.seq) {
            return Err(format!("seq {} delivered twice", event.seq));
        }
    }
    let expected: Vec<u64> = (from..=to).collect();
    let got: Vec<u64> = events.iter().map(|e| e.seq).collect();
    if got == expected {
        return Ok(());
    }
    let missing: Vec<u64> = expected
        .iter()
        .filter(|s| !seen.contains(s))
        .copied()
        .collect();
    let extra: Vec<u64> = got
        .iter()
        .filter(|s| !(from..=to).contains(*s))
        .copied()
        .collect();
    Err(format!(
        "expected seqs {from}..={to} in order; missing {missing:?}, unexpected {extra:?}, \
         got {} events (first differences: {:?})",
        got.len(),
        got.iter()
            .zip(&expected)
            .filter(|(g, e)| g != e)
            .take(5)
            .collect::<Vec<_>>()
    ))
}

/// A connected device whose socket is served by background tasks.
#[derive(Debug)]
pub struct Device {
    /// The device's id.
    pub id: DeviceId,
    /// The head the relay reported at the handshake.
    pub head_at_connect: u64,
    /// The cursor the relay held for this device at the handshake.
    pub acked_at_connect: u64,
    out: mpsc::UnboundedSender<ClientFrame>,
    seen: watch::Receiver<Seen>,
    highest_sent: AtomicU64,
    tasks: [JoinHandle<()>; 2],
}

impl Device {
    /// Takes over an authenticated client (anything it buffered counts as received).
    pub fn spawn(client: Client, id: DeviceId) -> Self {
        let Client {
            ws,
            channel,
            session,
            backlog,
            answers,
            ..
        } = client;
        let (mut seal, mut open) = channel.split();
        let (mut sink, mut stream) = ws.split();
        let (out, mut queue) = mpsc::unbounded_channel::<ClientFrame>();
        let initial = Seen {
            events: backlog,
            answers: answers.into_iter().collect(),
            ..Seen::default()
        };
        let (record, seen) = watch::channel(initial);
        let writer = tokio::spawn(async move {
            while let Some(frame) = queue.recv().await {
                let Ok(bytes) = seal.seal(&frame) else {
                    return;
                };
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let reader = tokio::spawn(async move {
            loop {
                let ended = match stream.next().await {
                    Some(Ok(Message::Binary(bytes))) => match open.open(&bytes) {
                        Ok(frame) => {
                            record.send_modify(|seen| receive(seen, frame));
                            continue;
                        }
                        Err(e) => {
                            record.send_modify(|seen| seen.broken = Some(e.to_string()));
                            None
                        }
                    },
                    Some(Ok(Message::Close(frame))) => frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => None,
                };
                record.send_modify(|seen| seen.closed = Some(ended));
                return;
            }
        });
        Self {
            id,
            head_at_connect: session.head,
            acked_at_connect: session.acked,
            out,
            seen,
            highest_sent: AtomicU64::new(0),
            tasks: [writer, reader],
        }
    }

    /// Queues a frame (sent in queue order; nothing is awaited).
    pub fn send(&self, frame: ClientFrame) {
        // After the connection ended the frame is simply not sent.
        let _ = self.out.send(frame);
    }

    /// Queues an append without waiting for its answer.
    pub fn append(&self, device_seq: u64, payload: &[u8]) {
        self.highest_sent.fetch_max(device_seq, Ordering::Relaxed);
        self.send(ClientFrame::Append(Append {
            device_seq,
            payload: SealedPayload(payload.to_vec()),
        }));
    }

    /// The highest device sequence appended through this handle so far.
    pub fn highest_sent(&self) -> u64 {
        self.highest_sent.load(Ordering::Relaxed)
    }

    /// What was received so far.
    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// A watch on what was received, to wait for changes.
    pub fn watch(&self) -> watch::Receiver<Seen> {
        self.seen.clone()
    }

    /// Waits until `done` holds, for at most `within`; panics with `what` otherwise, or as soon
    /// as a frame fails to open.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&Seen) -> bool,
    ) -> Seen {
        let mut seen = self.seen.clone();
        // The guard `wait_for` returns is a read lock on the watch: drop it at once. Taking
        // a second read lock below while holding it deadlocks as soon as the device's reader
        // task queues a write in between (std's RwLock makes new readers wait for writers).
        let waited = tokio::time::timeout(
            within,
            seen.wait_for(|seen| seen.broken.is_some() || done(seen)),
        )
        .await
        .map(|result| result.map(|_| ()));
        let current = self.seen();
        if let Some(broken) = &current.broken {
            panic!("a frame from the relay did not open while waiting for {what}: {broken}");
        }
        match waited {
            Ok(Ok(_)) => current,
            // The sender lives in the reader task, which ends only with the test.
            Ok(Err(_)) | Err(_) => panic!(
                "timed out after {within:?} waiting for {what}; the device has {}",
                current.summary()
            ),
        }
    }

    /// Waits for `CaughtUp` and returns the head it reported.
    pub async fn caught_up(&self, within: Duration) -> u64 {
        let seen = self
            .wait_for("CaughtUp", within, |seen| !seen.caught_up.is_empty())
            .await;
        seen.caught_up[0].0
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self, within: Duration) -> Seen {
        self.wait_for("the connection to end", within, |seen| {
            seen.closed.is_some()
        })
        .await
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn receive(seen: &mut Seen, frame: ServerFrame) {
    match frame {
        ServerFrame::Events(events) => seen.events.extend(events),
        ServerFrame::Appended { device_seq, seq } => seen.answers.push((device_seq, Ok(seq))),
        ServerFrame::Error(error) if error.device_seq.is_some() => {
            let device_seq = error.device_seq.unwrap_or_default();
            seen.answers.push((device_seq, Err(error)));
        }
        ServerFrame::CaughtUp { head } => seen.caught_up.push((head, seen.events.len())),
        other => seen.other.push(other),
    }
}

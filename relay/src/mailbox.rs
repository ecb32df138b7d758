//! A session's mailbox: frames addressed to it from elsewhere on the node (ephemerals, calls,
//! presence, pairing), bounded, dropped when full.
//!
//! Every connected session has one, and almost all of them stay empty for the session's whole
//! life, so it costs what an empty queue costs: a lock, a `Notify` and an unallocated
//! `VecDeque`, inside the session's `Peer`. A tokio channel would allocate its shared state
//! and a first block of 32 slots up front, about 800 bytes per idle connection
//! (docs/benchmarks.md, idle memory).
//!
//! One reader (the session's writer), any number of senders. Senders never wait: a full or
//! closed mailbox refuses the frame, as `mpsc::Sender::try_send` would.

use std::collections::VecDeque;
use std::sync::Mutex;

use ferry_protocol::ServerFrame;
use tokio::sync::Notify;

use crate::sync::lock;

/// Why a frame was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The mailbox holds its capacity already: the reader is not keeping up.
    Full,
    /// The session has ended.
    Closed,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct Mailbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Box<ServerFrame>>,
    closed: bool,
}

impl Mailbox {
    /// An empty mailbox that holds at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            capacity,
        }
    }

    /// Queues `frame` for the reader, unless the mailbox is full or closed. Frames are kept
    /// boxed, so that the reader's future, which lives as long as its session, holds a pointer
    /// and not a frame.
    pub fn try_send(&self, frame: ServerFrame) -> Result<(), Refused> {
        {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.frames.len() >= self.capacity {
                return Err(Refused::Full);
            }
            state.frames.push_back(Box::new(frame));
        }
        // One reader: a permit stored while it is not waiting wakes its next `recv`.
        self.ready.notify_one();
        Ok(())
    }

    /// The next frame, waiting for one. Cancel-safe: a frame is taken only when returned.
    pub async fn recv(&self) -> Box<ServerFrame> {
        loop {
            if let Some(frame) = self.try_recv() {
                return frame;
            }
            self.ready.notified().await;
        }
    }

    /// The next frame, if one is waiting.
    pub fn try_recv(&self) -> Option<Box<ServerFrame>> {
        lock(&self.state).frames.pop_front()
    }

    /// Refuses every later frame and drops those waiting (the session has ended).
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn frame(n: u64) -> ServerFrame {
        ServerFrame::CaughtUp { head: n }
    }

    #[test]
    fn keeps_order_and_refuses_beyond_capacity() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.try_send(frame(1)), Ok(()));
        assert_eq!(mailbox.try_send(frame(2)), Ok(()));
        assert_eq!(mailbox.try_send(frame(3)), Err(Refused::Full));
        assert_eq!(*mailbox.try_recv().unwrap(), frame(1));
        assert_eq!(mailbox.try_send(frame(4)), Ok(()));
        assert_eq!(*mailbox.try_recv().unwrap(), frame(2));
        assert_eq!(*mailbox.try_recv().unwrap(), frame(4));
        assert!(mailbox.try_recv().is_none());
    }

    #[test]
    fn a_closed_mailbox_refuses_and_drops_what_waited() {
        let mailbox = Mailbox::new(4);
        assert_eq!(mailbox.try_send(frame(1)), Ok(()));
        mailbox.close();
        assert!(mailbox.try_recv().is_none());
        assert_eq!(mailbox.try_send(frame(2)), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn wakes_a_waiting_reader_and_one_that_was_not_waiting_yet() {
        let mailbox = Arc::new(Mailbox::new(4));
        let reader = {
            let mailbox = Arc::clone(&mailbox);
            tokio::spawn(async move { mailbox.recv().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        mailbox.try_send(frame(7)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader).await;
        assert_eq!(*got.unwrap().unwrap(), frame(7));
        // Sent before the reader waits: the stored permit (or the queue) must not lose it.
        mailbox.try_send(frame(8)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), mailbox.recv()).await;
        assert_eq!(*got.unwrap(), frame(8));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let mailbox = Mailbox::new(4);
        // A receive that is dropped while waiting, as in a `select!` another arm won.
        let waited = tokio::time::timeout(Duration::from_millis(10), mailbox.recv()).await;
        assert!(waited.is_err());
        mailbox.try_send(frame(9)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), mailbox.recv()).await;
        assert_eq!(*got.unwrap(), frame(9));
    }
}

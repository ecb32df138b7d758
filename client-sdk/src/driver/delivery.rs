//! Events to the app, and the cursor back: decrypt and queue in order, each once; save and
//! acknowledge what the app has received.

use std::sync::atomic::Ordering;

use ferry_protocol::seal::{self, EventSlot};
use ferry_protocol::{ClientFrame, Event};
use tokio::time::Instant;

use super::{Delivery, Driver, Link};
use crate::error::ClientError;
use crate::event::{ClientEvent, ReceivedEvent};

impl Driver {
    /// Hands events to the app's queue, in order, each once.
    pub(super) fn deliver(&mut self, events: Vec<Event>) -> Result<(), ClientError> {
        for event in events {
            if event.seq <= self.received || self.overflowed {
                continue;
            }
            if event.seq != self.received + 1 {
                return Err(ClientError::Protocol(format!(
                    "event {} follows event {}: the relay skipped some",
                    event.seq, self.received
                )));
            }
            // This device's own events are acknowledged in their turn but not shown, unless
            // the app asked for them (Options::own_events).
            let shown = event.device != self.device || self.options.own_events;
            let delivery = Delivery {
                seq: Some(event.seq),
                item: shown.then(|| self.open(&event)),
            };
            match self.deliveries.try_send(delivery) {
                Ok(()) => self.received = event.seq,
                // Full (or the app let go of its Client): not acknowledged, fetched again later.
                Err(_) => self.overflowed = true,
            }
        }
        Ok(())
    }

    /// Decrypts one event for the app.
    fn open(&self, event: &Event) -> Result<ClientEvent, ClientError> {
        let slot = EventSlot {
            user: self.user,
            device: event.device,
            device_seq: event.device_seq,
        };
        match seal::open(&self.keys.data, &slot, &event.payload) {
            Ok(plaintext) => Ok(ClientEvent::Event(ReceivedEvent {
                seq: event.seq,
                device: event.device,
                device_seq: event.device_seq,
                plaintext,
            })),
            Err(error) => {
                tracing::warn!(seq = event.seq, %error, "event does not open with the data key");
                Err(ClientError::Undecryptable {
                    seq: event.seq,
                    device: event.device,
                    device_seq: event.device_seq,
                })
            }
        }
    }

    /// The app took from its queue: schedule a save; refetch if events were dropped and
    /// the app has made room. Returns whether to reconnect for that.
    pub(super) fn consumed(&mut self) -> bool {
        let received = self.shared.received.load(Ordering::Acquire);
        if received > self.cursor_saved {
            self.schedule_save();
        }
        self.overflowed && self.deliveries.capacity() * 2 >= self.deliveries.max_capacity()
    }

    pub(super) fn schedule_save(&mut self) {
        if self.save_at.is_none() {
            self.save_at = Some(Instant::now() + self.options.ack_delay);
        }
    }

    /// Writes the cursor and the done marks, then acknowledges the cursor to the relay.
    pub(super) async fn save(&mut self, link: Option<&mut Link>) -> Result<(), ClientError> {
        self.save_at = None;
        let cursor = self
            .shared
            .received
            .load(Ordering::Acquire)
            .min(self.received);
        let done = std::mem::take(&mut self.done);
        if cursor > self.cursor_saved || !done.is_empty() {
            self.on_disk(move |state| {
                state.outbox.remove(&done)?;
                state.save_cursor(cursor)
            })
            .await??;
            self.cursor_saved = self.cursor_saved.max(cursor);
        }
        if let Some(link) = link
            && self.cursor_saved > link.ack_sent
        {
            link.ack_sent = self.cursor_saved;
            link.control.push_back(ClientFrame::Ack {
                seq: self.cursor_saved,
            });
        }
        Ok(())
    }
}

//! Events to the app, and the cursor back: decrypt and queue in order, each once; save and
//! acknowledge what the app has received.

use std::sync::atomic::Ordering;

use ferry_protocol::seal::{self, EventSlot};
use ferry_protocol::{ClientFrame, Event};
use tokio::time::Instant;

use super::checks::Verdict;
use super::{Delivery, Driver, Item, Link};
use crate::error::ClientError;
use crate::event::{ClientEvent, ReceivedEvent};
use ferry_protocol::people::{Notice, RELAY_DEVICE};

impl Driver {
    /// Hands events to the app's queue, in order, each once; replays are acknowledged but
    /// not shown (see `checks.rs`).
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
            let own = event.device == self.device;
            let verdict = self.checks.judge(event.device, event.device_seq, event.seq);
            let misplaced = self.checks.misplaced(event.seq, own, event.device_seq);
            let replay = matches!(verdict, Verdict::Replay { .. });
            // This device's own events are acknowledged in their turn but not shown, unless
            // the app asked for them (Options::own_events).
            let shown = !replay && (!own || self.options.own_events);
            let delivery = Delivery {
                seq: Some(event.seq),
                item: shown.then(|| self.open(&event)),
            };
            match self.deliveries.try_send(delivery) {
                Ok(()) => self.received = event.seq,
                // Full (or the app let go of its Client): not acknowledged, fetched again later.
                Err(_) => {
                    self.overflowed = true;
                    continue;
                }
            }
            self.checks
                .read(event.device, event.device_seq, event.seq, verdict);
            if let Verdict::Replay { mark } = verdict {
                tracing::warn!(
                    seq = event.seq,
                    device = %event.device,
                    device_seq = event.device_seq,
                    read_up_to = mark.device_seq,
                    read_at = mark.seq,
                    "the relay served an old event again at a new place; dropped"
                );
                self.shared.status.send_modify(|s| s.replayed_events += 1);
            }
            if let Some(device_seq) = misplaced {
                self.misplaced_append(device_seq, event.seq);
            }
        }
        Ok(())
    }

    /// The relay answered `Appended { seq }` for this device's `device_seq`: check it now if
    /// the event at `seq` was read moments ago, else when it is read.
    pub(super) fn appended(&mut self, device_seq: u64, seq: u64) {
        if self
            .checks
            .appended(self.device, device_seq, seq, self.received)
            == Some(false)
        {
            self.misplaced_append(device_seq, seq);
        }
    }

    /// The event at `seq` is not this device's append `device_seq`, where the relay said it
    /// stored it: a warning, a count, and an error item for the app. The client goes on.
    fn misplaced_append(&mut self, device_seq: u64, seq: u64) {
        tracing::warn!(
            device_seq,
            seq,
            "the relay said this append was stored at seq, but the log holds another event there"
        );
        self.shared.status.send_modify(|s| s.misplaced_appends += 1);
        // Best effort: when the app's queue is full the warning and the count remain.
        let _ = self.deliveries.try_send(Delivery {
            seq: None,
            item: Some(Item::App(Err(ClientError::MisplacedAppend {
                device_seq,
                seq,
            }))),
        });
    }

    /// Decrypts one event for the app (or reads the relay's notice).
    fn open(&self, event: &Event) -> Item {
        if event.device == RELAY_DEVICE {
            return match Notice::from_payload(&event.payload.0) {
                Ok(notice) => Item::Notice(notice),
                Err(error) => {
                    tracing::warn!(seq = event.seq, %error, "the relay's notice does not decode");
                    Item::App(Err(ClientError::Protocol(format!(
                        "the relay's notice at {} does not decode: {error}",
                        event.seq
                    ))))
                }
            };
        }
        Item::App(self.open_sealed(event))
    }

    /// Decrypts one event of a device for the app.
    fn open_sealed(&self, event: &Event) -> Result<ClientEvent, ClientError> {
        let slot = EventSlot {
            user: self.user,
            device: event.device,
            device_seq: event.device_seq,
        };
        let opened = seal::epoch_of(&event.payload).ok().and_then(|epoch| {
            let trust = self.trust();
            trust
                .key(epoch)
                .and_then(|key| seal::open(key, &slot, &event.payload).ok())
        });
        match opened.ok_or(seal::SealError::Authentication) {
            Ok(plaintext) => Ok(ClientEvent::Event(ReceivedEvent {
                seq: event.seq,
                device: event.device,
                device_seq: event.device_seq,
                plaintext,
            })),
            Err(error) => {
                tracing::warn!(seq = event.seq, %error, "event does not open with the data key of its epoch");
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
        let seen = self.checks.take_dirty();
        if cursor > self.cursor_saved || !done.is_empty() || seen.is_some() {
            self.on_disk(move |state| {
                state.outbox.remove(&done)?;
                if let Some(seen) = seen {
                    state.save_seen(seen)?;
                }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, PoisonError};

    use ferry_protocol::{DeviceId, RelayId};
    use rand_core::OsRng;
    use tokio::sync::mpsc;

    use super::*;
    use crate::driver::Shared;
    use crate::options::Options;
    use crate::state::ClientState;

    const OTHER: DeviceId = DeviceId([9; 32]);

    struct Harness {
        driver: Driver,
        deliveries: mpsc::Receiver<Delivery>,
        shared: Arc<Shared>,
    }

    impl Harness {
        fn new(state: ClientState) -> Self {
            let (_commands, command_rx) = mpsc::channel(1);
            let (deliveries, delivery_rx) = mpsc::channel(64);
            let shared = Arc::new(Shared::new(0));
            let options = Options::default().own_events(true);
            let driver = Driver::new(state, options, command_rx, deliveries, Arc::clone(&shared));
            Self {
                driver,
                deliveries: delivery_rx,
                shared,
            }
        }

        /// An event of the log, sealed as `device` would.
        fn event(&self, seq: u64, device: DeviceId, device_seq: u64) -> Event {
            let slot = EventSlot {
                user: self.driver.user,
                device,
                device_seq,
            };
            let text = format!("{device:?} #{device_seq}");
            let trust = self.driver.trust();
            let (epoch, key) = trust.newest();
            let payload = seal::seal(key.unwrap(), epoch, &slot, text.as_bytes(), &mut OsRng);
            Event {
                seq,
                device,
                device_seq,
                payload: payload.unwrap(),
            }
        }

        fn feed(&mut self, events: &[(u64, DeviceId, u64)]) {
            let events = events
                .iter()
                .map(|&(seq, device, device_seq)| self.event(seq, device, device_seq))
                .collect();
            self.driver.deliver(events).unwrap();
        }

        /// What the app got: `Some((seq, device_seq))` per event shown, `None` per event
        /// acknowledged unseen, and the errors.
        fn taken(&mut self) -> Vec<Got> {
            let mut taken = Vec::new();
            while let Ok(delivery) = self.deliveries.try_recv() {
                if let Some(seq) = delivery.seq {
                    self.shared.received.fetch_max(seq, Ordering::AcqRel);
                }
                taken.push(match delivery.item {
                    None => Unseen,
                    Some(Item::App(Ok(ClientEvent::Event(e)))) => Shown(e.seq, e.device_seq),
                    Some(Item::App(Err(ClientError::MisplacedAppend { device_seq, seq }))) => {
                        Misplaced(device_seq, seq)
                    }
                    other => panic!("unexpected {other:?}"),
                });
            }
            taken
        }

        fn status(&self) -> (u64, u64) {
            let status = self.shared.status.borrow();
            (status.replayed_events, status.misplaced_appends)
        }

        /// Saves (cursor and marks) and hands the state back, as `Client::close` does.
        async fn close(mut self) -> ClientState {
            self.driver.save(None).await.unwrap();
            let state = Arc::try_unwrap(self.driver.state).unwrap();
            state.into_inner().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// What the app got, item by item.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        /// An event shown: (seq, device_seq).
        Shown(u64, u64),
        /// An event acknowledged without being shown.
        Unseen,
        /// `ClientError::MisplacedAppend { device_seq, seq }`.
        Misplaced(u64, u64),
    }
    use Got::{Misplaced, Shown, Unseen};

    fn shown(events: &[(u64, u64)]) -> Vec<Got> {
        events.iter().map(|&(seq, ds)| Shown(seq, ds)).collect()
    }

    fn new_state(dir: &std::path::Path) -> ClientState {
        ClientState::create_offline(dir, "ws://127.0.0.1:9/ws", RelayId([7; 32]), "me").unwrap()
    }

    #[tokio::test]
    async fn a_replayed_event_is_dropped_and_counted_but_a_resync_reading_again_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Harness::new(new_state(dir.path()));
        let me = app.driver.device;
        app.feed(&[(1, OTHER, 1), (2, me, 1), (3, OTHER, 2)]);
        assert_eq!(app.taken(), shown(&[(1, 1), (2, 1), (3, 2)]));
        assert_eq!(app.status(), (0, 0));

        // The relay serves OTHER's #1 and this device's #1 again, under new stream seqs.
        app.feed(&[(4, OTHER, 1), (5, me, 1), (6, OTHER, 3)]);
        assert_eq!(app.taken(), vec![Unseen, Unseen, Shown(6, 3)]);
        assert_eq!(app.status(), (2, 0));
        let mut state = app.close().await;
        assert_eq!(state.cursor(), 6);

        // A resync: the cursor goes back and the same places come again: not replays.
        state.resync(1).unwrap();
        let mut app = Harness::new(state);
        app.feed(&[(1, OTHER, 1), (2, me, 1), (3, OTHER, 2)]);
        assert_eq!(app.taken(), shown(&[(1, 1), (2, 1), (3, 2)]));
        assert_eq!(app.status(), (0, 0));
        // Past a device's mark, an old device sequence is a replay still. (At or before the
        // mark's place it cannot be told from a re-read: OTHER's #1 at 4, before OTHER's mark
        // at 6, passes. Documented in checks.rs.)
        app.feed(&[(4, OTHER, 1), (5, me, 1), (6, OTHER, 3), (7, OTHER, 2)]);
        assert_eq!(app.taken(), vec![Shown(4, 1), Unseen, Shown(6, 3), Unseen]);
        assert_eq!(app.status(), (2, 0));
        drop(app.close().await);

        // The marks are in the state folder: a new client knows them.
        let mut app = Harness::new(ClientState::open(dir.path()).unwrap());
        app.feed(&[(8, OTHER, 3), (9, OTHER, 4)]);
        assert_eq!(app.taken(), vec![Unseen, Shown(9, 4)]);
        assert_eq!(app.status(), (1, 0));
    }

    #[tokio::test]
    async fn an_own_append_found_elsewhere_than_the_relay_said_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Harness::new(new_state(dir.path()));
        let me = app.driver.device;
        // The relay says #1 is at 2 and #2 at 3; it put another device's event at 2.
        app.driver.appended(1, 2);
        app.driver.appended(2, 3);
        app.feed(&[(1, me, 1), (2, OTHER, 1), (3, me, 2)]);
        assert_eq!(
            app.taken(),
            vec![Shown(1, 1), Shown(2, 1), Misplaced(1, 2), Shown(3, 2)]
        );
        assert_eq!(app.status(), (0, 1));

        // An answer that comes after its event was read is checked at once.
        app.feed(&[(4, me, 3)]);
        app.driver.appended(3, 4);
        assert_eq!(app.status(), (0, 1));
        app.driver.appended(4, 4);
        assert_eq!(app.status(), (0, 2));
        assert_eq!(app.taken(), vec![Shown(4, 3), Misplaced(4, 4)]);
    }
}

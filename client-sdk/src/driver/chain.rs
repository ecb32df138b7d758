//! The device chain on a session: fetch what the relay has beyond the verified copy, verify
//! every link, keep the epoch keys sealed to this device, and hold events of epochs not
//! known yet until the fetch is done.

use std::sync::PoisonError;

use ferry_protocol::seal;
use ferry_protocol::{ClientFrame, Event, Link as ChainLink};

use super::requests::Reply;
use super::{Driver, Ended, Link};
use crate::error::ClientError;

impl Driver {
    /// Sends a `ChainFetch` if the relay holds more links than this device verified (or a
    /// fetch is wanted), unless a fetch or a link of ours is in flight.
    pub(super) fn maybe_fetch(&mut self, link: &mut Link) {
        if link.fetching || self.revoke_in_flight() {
            return;
        }
        let seqno = self.trust().seqno();
        if link.want_fetch || link.relay_chain > seqno {
            link.want_fetch = false;
            link.fetching = true;
            link.control
                .push_back(ClientFrame::ChainFetch { after: seqno });
        }
    }

    /// Whether the chain is as long as the relay said and no fetch is in flight: device
    /// requests wait for it.
    pub(super) fn chain_current(&self, link: &Link) -> bool {
        !link.fetching && !link.want_fetch && link.relay_chain <= self.trust().seqno()
    }

    /// A revocation of ours was sent and is not answered.
    pub(super) fn revoke_in_flight(&self) -> bool {
        self.requests
            .iter()
            .take(self.requests_sent)
            .any(|r| matches!(r.reply, Reply::Revoke { sent: Some(_), .. }))
    }

    /// Links answering our `ChainFetch`: verified and applied one by one.
    pub(super) fn chain_links(
        &mut self,
        links: Vec<ChainLink>,
        more: bool,
        link: &mut Link,
    ) -> Result<(), Ended> {
        if !link.fetching {
            tracing::warn!("the relay sent chain links nobody asked for; ignoring them");
            return Ok(());
        }
        self.apply_links(&links)?;
        if more {
            return Ok(());
        }
        link.fetching = false;
        link.unknown_fetched = true;
        // What the relay serves is what it has: it does not make us fetch again.
        let seqno = self.trust().seqno();
        if link.relay_chain > seqno {
            tracing::warn!(
                announced = link.relay_chain,
                served = seqno,
                "the relay announced a longer chain than it served"
            );
            link.relay_chain = seqno;
        }
        let held: Vec<Event> = link.held.drain(..).collect();
        if !held.is_empty() {
            self.deliver(held).map_err(Ended::Failed)?;
        }
        self.maybe_fetch(link);
        Ok(())
    }

    /// Verifies and applies links to the chain; a link that does not verify, or one that
    /// revokes this device, ends the client.
    fn apply_links(&mut self, links: &[ChainLink]) -> Result<(), Ended> {
        if links.is_empty() {
            return Ok(());
        }
        let applied = {
            let mut trust = self.trust.write().unwrap_or_else(PoisonError::into_inner);
            trust.apply(links, self.device, &self.keys.exchange)
        };
        self.trust_dirty = true;
        let applied = applied.map_err(|refused| {
            tracing::error!(seqno = refused.seqno, error = %refused.error, "the relay served a chain link that does not verify");
            Ended::Failed(refused.into())
        })?;
        if applied.revoked {
            tracing::warn!("the device chain revokes this device");
            return Err(Ended::Failed(ClientError::Revoked));
        }
        Ok(())
    }

    /// The relay stored our link (a revocation) at `seqno`.
    pub(super) fn chain_appended(&mut self, seqno: u64, link: &mut Link) -> Result<(), Ended> {
        let Some(request) = self.take_request(|r| matches!(r, Reply::Revoke { .. })) else {
            return Ok(());
        };
        let Reply::Revoke {
            reply,
            sent: Some(sent),
            ..
        } = request.reply
        else {
            request
                .reply
                .fail(ClientError::Protocol("unexpected ChainAppended".to_owned()));
            return Ok(());
        };
        if sent.seqno != seqno {
            let _ = reply.send(Err(ClientError::Protocol(format!(
                "the relay stored link {} at position {seqno}",
                sent.seqno
            ))));
            return Err(Ended::Failed(ClientError::Protocol(
                "the relay misplaced a chain link".to_owned(),
            )));
        }
        let known = self.trust().seqno();
        if known < seqno {
            self.apply_links(std::slice::from_ref(&sent))?;
        } else if self.trust().links().get(seqno as usize - 1) != Some(&*sent) {
            return Err(Ended::Failed(ClientError::ChainRejected {
                seqno,
                reason: "the relay stored our link where another one is".to_owned(),
            }));
        }
        let _ = reply.send(Ok(()));
        link.relay_chain = link.relay_chain.max(seqno);
        self.maybe_fetch(link);
        Ok(())
    }

    /// Events from the relay: those of an epoch not known yet wait for the chain (and every
    /// event after them, to keep the order).
    pub(super) fn receive(
        &mut self,
        events: Vec<Event>,
        link: &mut Link,
    ) -> Result<(), ClientError> {
        let mut ready = Vec::with_capacity(events.len());
        for event in events {
            if link.held.is_empty() && !self.needs_chain(&event, link) {
                ready.push(event);
                continue;
            }
            if link.held.is_empty() {
                // Deliver what came before, in order, then hold.
                self.deliver(std::mem::take(&mut ready))?;
                link.want_fetch = true;
                self.maybe_fetch(link);
            }
            link.held.push_back(event);
        }
        self.deliver(ready)
    }

    /// Whether `event` names an epoch whose key this device lacks and a fetch may bring.
    fn needs_chain(&self, event: &Event, link: &Link) -> bool {
        let Ok(epoch) = seal::epoch_of(&event.payload) else {
            return false;
        };
        let trust = self.trust();
        trust.key(epoch).is_none()
            && (link.fetching || (epoch > trust.chain().epoch() && !link.unknown_fetched))
    }

    /// Writes the chain and the epochs.
    pub(super) async fn save_trust(&mut self) -> Result<(), ClientError> {
        self.trust_dirty = false;
        self.on_disk(|state| state.save_trust()).await??;
        Ok(())
    }
}

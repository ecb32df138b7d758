//! The calls API of [`ClientHandle`]: what the app asks, and what the client does with
//! signals heard and deadlines passed. The state machine decides; this seals and sends.

use rand_core::{OsRng, RngCore};
use tokio::time::Instant;

use ferry_protocol::conversations::ConvId;
use ferry_protocol::{ClientFrame, ServerFrame, TurnCredentials};

use super::{CallId, CallInfo, Calls, Out};
use crate::client::ClientHandle;
use crate::conversations::{HeardSignal, now_ms};
use crate::error::ClientError;
use crate::people::{Ask, unexpected};

impl ClientHandle {
    pub(crate) fn lock_calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls the other user of the 1:1 conversation `conv` with the session description
    /// `offer` (from the app's WebRTC stack): every online device of that user rings
    /// ([`CallEvent::Incoming`](crate::CallEvent::Incoming)). Answers and the call's end come
    /// as [`ClientEvent::Call`](crate::ClientEvent::Call) events; unanswered, it ends after
    /// [`Options::ring_timeout`](crate::Options::ring_timeout) and is recorded as missed.
    pub async fn place_call(
        &self,
        conv: ConvId,
        video: bool,
        offer: String,
    ) -> Result<CallId, ClientError> {
        let peer = self.conversations.one_to_one_peer(conv).await?;
        let mut id = [0; 16];
        OsRng.fill_bytes(&mut id);
        let call = CallId(id);
        let out =
            self.lock_calls()
                .place(call, conv, peer, video, offer, Instant::now(), now_ms())?;
        self.perform(out).await?;
        // The callee's devices with no session are woken by push (urgently): the offer
        // itself reaches only those online.
        self.tell(ClientFrame::ConvWake { conv }).await?;
        Ok(call)
    }

    /// Accepts a ringing call with the session description `answer`; the call is on when
    /// [`CallEvent::Connected`](crate::CallEvent::Connected) comes (the caller picks the
    /// first device that accepted).
    pub async fn accept_call(&self, call: CallId, answer: String) -> Result<(), ClientError> {
        let out = self.lock_calls().accept(call, answer, Instant::now())?;
        self.perform(out).await
    }

    /// Declines a ringing call: every device of this user stops ringing.
    pub async fn decline_call(&self, call: CallId) -> Result<(), ClientError> {
        let out = self.lock_calls().decline(call)?;
        self.perform(out).await
    }

    /// Ends a call (or cancels one that still rings; a ringing incoming call is declined).
    pub async fn hang_up(&self, call: CallId) -> Result<(), ClientError> {
        let out = self.lock_calls().hang_up(call, Instant::now())?;
        self.perform(out).await
    }

    /// Sends one of this device's ICE candidates to the other device of the call.
    pub async fn send_ice_candidate(
        &self,
        call: CallId,
        candidate: String,
    ) -> Result<(), ClientError> {
        let out = self.lock_calls().candidate(call, candidate)?;
        self.perform(out).await
    }

    /// This device's calls that are not over.
    pub fn calls(&self) -> Vec<CallInfo> {
        self.lock_calls().list()
    }

    /// Short-lived credentials for the relay's TURN servers (ask once per call): give them
    /// to the WebRTC stack as its ICE servers. Fails with
    /// [`ErrorCode::TurnUnavailable`](ferry_protocol::ErrorCode::TurnUnavailable) when the
    /// relay has none configured, and is rate-limited.
    pub async fn turn_credentials(&self) -> Result<TurnCredentials, ClientError> {
        match self.ask(ClientFrame::TurnCredentialsFetch).await? {
            ServerFrame::TurnCredentials(credentials) => Ok(credentials),
            ServerFrame::Error(e) => Err(ClientError::from_code(e.code, e.message)),
            other => Err(unexpected(&other)),
        }
    }

    /// A signal another device sent.
    pub(crate) async fn on_call_signal(&self, heard: HeardSignal) {
        let out = self.lock_calls().on_signal(
            heard.conv,
            heard.peer,
            heard.user,
            heard.device,
            heard.signal,
            Instant::now(),
            now_ms(),
        );
        if let Err(error) = self.perform(out).await {
            tracing::warn!(%error, "could not answer a call signal");
        }
    }

    /// Ends the calls whose time is up.
    pub(crate) async fn expire_calls(&self, now: Instant) {
        let out = self.lock_calls().expire(now);
        if let Err(error) = self.perform(out).await {
            tracing::warn!(%error, "could not end a call");
        }
    }

    /// Sends the signals and stores the records, in order; every one is tried, the first
    /// failure is returned.
    async fn perform(&self, out: Vec<Out>) -> Result<(), ClientError> {
        let mut first_error = None;
        for out in out {
            let done = match out {
                Out::Signal(conv, signal) => {
                    self.conversations.signal_call(self, conv, signal).await
                }
                Out::Record(conv, record) => self
                    .conversations
                    .send_call_record(self, conv, record)
                    .await
                    .map(drop),
            };
            if let Err(error) = done {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

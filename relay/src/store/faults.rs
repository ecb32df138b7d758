//! A [`Store`] wrapper that fails, holds or delays on purpose: the seam fault-injection tests
//! use to start a real [`Server`](crate::Server) over a store that misbehaves
//! ([`Server::spawn_with_store`](crate::Server::spawn_with_store)).
//!
//! Everything passes through to the wrapped store except what a test asked for:
//!
//! - [`FaultyStore::hold`]: append batches wait at a gate while the returned guard lives
//!   ([`FaultyStore::wait_arrived`] tells when one is waiting there);
//! - [`FaultyStore::fail_next_batches`]: the next batches fail before touching the database
//!   (nothing stored: a refused transaction);
//! - [`FaultyStore::lose_next_replies`]: the next batches commit, then report a failure (the
//!   outcome a lost COMMIT reply leaves the relay with);
//! - [`FaultyStore::delay_batches`]: every batch takes at least this long;
//! - [`FaultyStore::pause_reads_after`]: after `n` more event reads, reads wait until
//!   [`FaultyStore::resume_reads`] (to act between two pages of a replay);
//! - [`FaultyStore::pause_device_reads_after`]: the same for reads of one device's record
//!   ([`DeviceStore::device`] and [`Store::session_start`]: a session's admission check, then
//!   its re-checks), until
//!   [`FaultyStore::resume_device_reads`] (to act between a session's admission and its
//!   re-check after joining the hub);
//! - [`FaultyStore::batch_sizes`]: the size of every batch that reached the gate;
//! - [`FaultyStore::acks_written`]: how many cursor writes reached the store;
//! - [`FaultyStore::fail_next_acks`]: the next cursor writes fail;
//! - [`FaultyStore::fail_next_people_ops`]: the next people operations that write fail before
//!   touching the database;
//! - [`FaultyStore::fail_next_blob_forgets`]: the next deletions of a blob's row fail after
//!   its parts were deleted (the relay stopping between the two).
//! - [`FaultyStore::fail_next_last_seen_writes`]: the next `last_seen` writes of the
//!   write-behind fail ([`FaultyStore::last_seen_writes`] counts them).
//!
//! It is part of the library (not only of the tests) so that chaos experiments against a
//! running node can use it too; nothing in a normal start-up wraps the store with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::conversations::{ConvId, ConvSummary, Direction};
use ferry_protocol::{ClaimedKeyPackage, DeviceId, DeviceInfo, Event, Link, UserId};
use tokio::sync::{Notify, OwnedMutexGuard};

use super::attachments::{AttachmentStore, BlobRow, DoomedBlob, NewBlob};
use super::conversations::{
    ConvCursor, ConvLimits, ConvPage, ConvSendRequest, ConversationStore, KeyPackageRow,
    SendOutcome,
};
use super::people::{ContactChange, ContactList, Notified, PeopleLimits, PeopleStore};
use super::push::{PushStore, PushTargetRow, QueuedWakeUps, WakeUp};
use super::{
    AppendOutcome, AppendRequest, ChainStore, DeviceRecord, DeviceStore, LinkAppended, LogBounds,
    LogStore, SessionStart, Store, StoreError,
};
use crate::sync::lock;
use ferry_protocol::people::{Intro, SealedCard, SealedProfile};

/// A [`Store`] that misbehaves when told to (see the module docs).
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    gate: Arc<tokio::sync::Mutex<()>>,
    fail_next: AtomicUsize,
    lose_next: AtomicUsize,
    delay: Mutex<Duration>,
    /// Batches that reached the gate (committed, failed or waiting).
    arrived: AtomicUsize,
    arrival: Notify,
    batch_sizes: Mutex<Vec<usize>>,
    /// Event reads ([`LogStore::read_page`]).
    event_reads: ReadGate,
    /// Device record reads ([`DeviceStore::device`]).
    device_reads: ReadGate,
    acks: AtomicUsize,
    fail_people: AtomicUsize,
    fail_acks: AtomicUsize,
    fail_conv: AtomicUsize,
    fail_forgets: AtomicUsize,
    fail_last_seen: AtomicUsize,
    last_seen_writes: AtomicUsize,
}

/// Lets a budget of reads through, then holds the rest until resumed.
#[derive(Debug, Default)]
struct ReadGate {
    /// Reads that may still pass before reads pause; `None`: never pause.
    budget: Mutex<Option<usize>>,
    /// Reads waiting to be resumed.
    waiting: AtomicUsize,
    resumed: Notify,
}

impl ReadGate {
    fn pause_after(&self, n: usize) {
        *lock(&self.budget) = Some(n);
    }

    fn resume(&self) {
        *lock(&self.budget) = None;
        self.resumed.notify_waiters();
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        loop {
            let resumed = self.resumed.notified();
            {
                let mut budget = lock(&self.budget);
                match *budget {
                    None => return,
                    Some(0) => {}
                    Some(n) => {
                        *budget = Some(n - 1);
                        return;
                    }
                }
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            resumed.await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Holds append batches at the gate until dropped.
pub type HeldBatches = OwnedMutexGuard<()>;

impl FaultyStore {
    /// Wraps `inner`; it behaves exactly like `inner` until told otherwise.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            gate: Arc::new(tokio::sync::Mutex::new(())),
            fail_next: AtomicUsize::new(0),
            lose_next: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
            arrived: AtomicUsize::new(0),
            arrival: Notify::new(),
            batch_sizes: Mutex::default(),
            event_reads: ReadGate::default(),
            device_reads: ReadGate::default(),
            acks: AtomicUsize::new(0),
            fail_people: AtomicUsize::new(0),
            fail_acks: AtomicUsize::new(0),
            fail_conv: AtomicUsize::new(0),
            fail_forgets: AtomicUsize::new(0),
            fail_last_seen: AtomicUsize::new(0),
            last_seen_writes: AtomicUsize::new(0),
        })
    }

    /// Lets `n` more event reads through, then makes every read wait until
    /// [`resume_reads`](Self::resume_reads).
    pub fn pause_reads_after(&self, n: usize) {
        self.event_reads.pause_after(n);
    }

    /// Lets every waiting and future event read through.
    pub fn resume_reads(&self) {
        self.event_reads.resume();
    }

    /// The next `n` cursor writes fail before touching the database.
    pub fn fail_next_acks(&self, n: usize) {
        self.fail_acks.store(n, Ordering::SeqCst);
    }

    /// Cursor writes ([`DeviceStore::set_ack`]) that reached the store so far.
    pub fn acks_written(&self) -> usize {
        self.acks.load(Ordering::SeqCst)
    }

    /// Event reads waiting for [`resume_reads`](Self::resume_reads) right now.
    pub fn reads_waiting(&self) -> usize {
        self.event_reads.waiting()
    }

    /// Lets `n` more device record reads through, then makes every one wait until
    /// [`resume_device_reads`](Self::resume_device_reads).
    pub fn pause_device_reads_after(&self, n: usize) {
        self.device_reads.pause_after(n);
    }

    /// Lets every waiting and future device record read through.
    pub fn resume_device_reads(&self) {
        self.device_reads.resume();
    }

    /// Device record reads waiting for [`resume_device_reads`](Self::resume_device_reads).
    pub fn device_reads_waiting(&self) -> usize {
        self.device_reads.waiting()
    }

    /// The next `n` deletions of a blob's row ([`AttachmentStore::forget_blob`]) fail
    /// without touching the database.
    pub fn fail_next_blob_forgets(&self, n: usize) {
        self.fail_forgets.store(n, Ordering::SeqCst);
    }

    /// The wrapped store (to act on the database behind the relay's back, like another node).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Append batches wait at the gate until the returned guard is dropped.
    pub async fn hold(&self) -> HeldBatches {
        Arc::clone(&self.gate).lock_owned().await
    }

    /// The next `n` batches fail without touching the database.
    pub fn fail_next_batches(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` batches are committed, then reported as failed (unknown outcome).
    pub fn lose_next_replies(&self, n: usize) {
        self.lose_next.store(n, Ordering::SeqCst);
    }

    /// Every batch takes at least `delay` (zero turns it off).
    pub fn delay_batches(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    /// Batches that have reached the gate so far.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` batches have reached the gate.
    pub async fn wait_arrived(&self, n: usize) {
        loop {
            let notified = self.arrival.notified();
            if self.arrived() >= n {
                return;
            }
            notified.await;
        }
    }

    /// The size of every batch that reached the gate, in order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        lock(&self.batch_sizes).clone()
    }

    /// The next `n` people operations that write (handles, requests, contacts, profiles,
    /// presence settings) fail before touching the database.
    pub fn fail_next_people_ops(&self, n: usize) {
        self.fail_people.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` conversation writes (create, send, KeyPackage upload or claim)
    /// fail with a database error before they reach the store (nothing stored).
    pub fn fail_next_conv_ops(&self, n: usize) {
        self.fail_conv.store(n, Ordering::SeqCst);
    }

    fn conv_fault(&self) -> Result<(), StoreError> {
        if Self::take_one(&self.fail_conv) {
            return Err(injected("conversation operation refused"));
        }
        Ok(())
    }

    /// The next `n` `last_seen` writes (a user batch or a device batch of the write-behind)
    /// fail before touching the database.
    pub fn fail_next_last_seen_writes(&self, n: usize) {
        self.fail_last_seen.store(n, Ordering::SeqCst);
    }

    /// How many `last_seen` writes (user or device batches) reached this store, failed ones
    /// included.
    pub fn last_seen_writes(&self) -> usize {
        self.last_seen_writes.load(Ordering::SeqCst)
    }

    fn last_seen_fault(&self) -> Result<(), StoreError> {
        self.last_seen_writes.fetch_add(1, Ordering::SeqCst);
        if Self::take_one(&self.fail_last_seen) {
            return Err(injected("last-seen write refused"));
        }
        Ok(())
    }

    fn people_fault(&self) -> Result<(), StoreError> {
        if Self::take_one(&self.fail_people) {
            return Err(injected("people operation refused"));
        }
        Ok(())
    }

    fn take_one(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::from(sqlx::Error::Protocol(format!("injected fault: {what}")))
}

#[async_trait]
impl LogStore for FaultyStore {
    async fn append_batch(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        lock(&self.batch_sizes).push(requests.len());
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.arrival.notify_waiters();
        let _open = self.gate.lock().await;
        let delay = *lock(&self.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if Self::take_one(&self.fail_next) {
            return Err(injected("batch refused"));
        }
        let outcomes = self.inner.append_batch(requests, now_ms).await?;
        if Self::take_one(&self.lose_next) {
            return Err(injected("commit reply lost"));
        }
        Ok(outcomes)
    }

    async fn read_page(
        &self,
        user: UserId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.event_reads.pass().await;
        self.inner
            .read_page(user, after_seq, limit, max_bytes)
            .await
    }

    async fn last_device_seq(&self, user: UserId, device: DeviceId) -> Result<u64, StoreError> {
        self.inner.last_device_seq(user, device).await
    }

    async fn log_bounds(&self, user: UserId) -> Result<LogBounds, StoreError> {
        self.inner.log_bounds(user).await
    }

    async fn trim_user(
        &self,
        user: UserId,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.inner
            .trim_user(user, max_age_ms, max_count, now_ms)
            .await
    }

    async fn trim(
        &self,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.inner.trim(max_age_ms, max_count, now_ms).await
    }
}

#[async_trait]
impl DeviceStore for FaultyStore {
    async fn set_ack(&self, user: UserId, device: DeviceId, seq: u64) -> Result<u64, StoreError> {
        self.acks.fetch_add(1, Ordering::SeqCst);
        if Self::take_one(&self.fail_acks) {
            return Err(injected("cursor write refused"));
        }
        self.inner.set_ack(user, device, seq).await
    }

    async fn device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.device_reads.pass().await;
        self.inner.device(user, device).await
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, StoreError> {
        self.inner.list_devices(user).await
    }

    async fn touch_devices(&self, seen: &[(UserId, DeviceId, u64)]) -> Result<(), StoreError> {
        self.last_seen_fault()?;
        self.inner.touch_devices(seen).await
    }
}

#[async_trait]
impl ChainStore for FaultyStore {
    async fn append_link(
        &self,
        link: &Link,
        max_devices: usize,
        now_s: u64,
    ) -> Result<LinkAppended, StoreError> {
        self.inner.append_link(link, max_devices, now_s).await
    }

    async fn chain_links(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Link>, StoreError> {
        self.inner.chain_links(user, after, limit).await
    }

    async fn chain_seqno(&self, user: UserId) -> Result<u64, StoreError> {
        self.inner.chain_seqno(user).await
    }
}

#[async_trait]
impl PeopleStore for FaultyStore {
    async fn set_handle(
        &self,
        user: UserId,
        name: &str,
        candidates: &[(u8, [u8; 32])],
        now_ms: u64,
    ) -> Result<(u8, Notified), StoreError> {
        self.people_fault()?;
        self.inner.set_handle(user, name, candidates, now_ms).await
    }

    async fn clear_handle(&self, user: UserId, now_ms: u64) -> Result<Notified, StoreError> {
        self.people_fault()?;
        self.inner.clear_handle(user, now_ms).await
    }

    async fn find_handle(&self, hash: &[u8; 32]) -> Result<Option<UserId>, StoreError> {
        self.inner.find_handle(hash).await
    }

    async fn chain_visible(&self, viewer: UserId, user: UserId) -> Result<bool, StoreError> {
        self.inner.chain_visible(viewer, user).await
    }

    async fn request_contact(
        &self,
        intro: &Intro,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        self.people_fault()?;
        self.inner.request_contact(intro, limits, now_ms).await
    }

    async fn accept_contact(
        &self,
        intro: &Intro,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        self.people_fault()?;
        self.inner.accept_contact(intro, limits, now_ms).await
    }

    async fn change_contact(
        &self,
        user: UserId,
        peer: UserId,
        change: ContactChange,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        self.people_fault()?;
        self.inner
            .change_contact(user, peer, change, limits, now_ms)
            .await
    }

    async fn set_card(
        &self,
        owner: UserId,
        peer: UserId,
        card: &SealedCard,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.people_fault()?;
        self.inner.set_card(owner, peer, card, now_ms).await
    }

    async fn is_blocked(&self, owner: UserId, peer: UserId) -> Result<bool, StoreError> {
        self.inner.is_blocked(owner, peer).await
    }

    async fn contacts(&self, user: UserId) -> Result<ContactList, StoreError> {
        self.inner.contacts(user).await
    }

    async fn set_profile(
        &self,
        user: UserId,
        profile: &SealedProfile,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        self.people_fault()?;
        self.inner.set_profile(user, profile, now_ms).await
    }

    async fn profile(
        &self,
        viewer: UserId,
        user: UserId,
    ) -> Result<Option<SealedProfile>, StoreError> {
        self.inner.profile(viewer, user).await
    }

    async fn set_presence_visible(
        &self,
        user: UserId,
        visible: bool,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        self.people_fault()?;
        self.inner.set_presence_visible(user, visible, now_ms).await
    }

    async fn presence_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.inner.presence_peers(user).await
    }

    async fn touch_last_seen(&self, seen: &[(UserId, u64)]) -> Result<(), StoreError> {
        self.last_seen_fault()?;
        self.inner.touch_last_seen(seen).await
    }
}

#[async_trait]
impl ConversationStore for FaultyStore {
    async fn put_key_packages(
        &self,
        user: UserId,
        device: DeviceId,
        packages: &[KeyPackageRow],
        last_resort: Option<&KeyPackageRow>,
        limits: &ConvLimits,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.conv_fault()?;
        self.inner
            .put_key_packages(user, device, packages, last_resort, limits, now_ms)
            .await
    }

    async fn claim_key_packages(
        &self,
        claimer: UserId,
        claimer_device: DeviceId,
        target: UserId,
    ) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        self.conv_fault()?;
        self.inner
            .claim_key_packages(claimer, claimer_device, target)
            .await
    }

    async fn create_conversation(
        &self,
        conv: ConvId,
        group: &ferry_mls::DsGroup,
        group_info: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conv_fault()?;
        self.inner
            .create_conversation(conv, group, group_info, now_ms)
            .await
    }

    async fn send_batch(
        &self,
        sends: &[ConvSendRequest],
        now_ms: u64,
    ) -> Vec<Result<SendOutcome, StoreError>> {
        // An injected fault fails the batch's transaction: every message in it.
        if let Err(fault) = self.conv_fault() {
            return sends.iter().map(|_| Err(fault.clone())).collect();
        }
        self.inner.send_batch(sends, now_ms).await
    }

    async fn read_messages(
        &self,
        conv: ConvId,
        device: DeviceId,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<ConvPage, StoreError> {
        self.inner
            .read_messages(conv, device, from, direction, limit)
            .await
    }

    async fn trim_conversations(
        &self,
        max_age_ms: u64,
        lag_ms: u64,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.inner
            .trim_conversations(max_age_ms, lag_ms, now_ms)
            .await
    }

    async fn ack_conversations(&self, cursors: &[ConvCursor]) -> Result<(), StoreError> {
        self.inner.ack_conversations(cursors).await
    }

    async fn mark_read(
        &self,
        conv: ConvId,
        user: UserId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.mark_read(conv, user, seq).await
    }

    async fn conversations(&self, user: UserId) -> Result<Vec<ConvSummary>, StoreError> {
        self.inner.conversations(user).await
    }

    async fn conversation_members(
        &self,
        conv: ConvId,
        device: DeviceId,
        unblocked_by: Option<UserId>,
    ) -> Result<Vec<UserId>, StoreError> {
        self.inner
            .conversation_members(conv, device, unblocked_by)
            .await
    }

    async fn group_info(
        &self,
        conv: ConvId,
        device: DeviceId,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        self.inner.group_info(conv, device).await
    }
}

#[async_trait]
impl PushStore for FaultyStore {
    async fn set_push_target(
        &self,
        user: UserId,
        device: DeviceId,
        target: &PushTargetRow,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.inner
            .set_push_target(user, device, target, now_ms)
            .await
    }

    async fn remove_push_target(&self, device: DeviceId) -> Result<bool, StoreError> {
        self.inner.remove_push_target(device).await
    }

    async fn push_target(&self, device: DeviceId) -> Result<Option<PushTargetRow>, StoreError> {
        self.inner.push_target(device).await
    }

    async fn queue_wake_ups(
        &self,
        users: &[UserId],
        except: &[DeviceId],
        urgent: bool,
        due_at_ms: u64,
        max_queued: u64,
    ) -> Result<QueuedWakeUps, StoreError> {
        self.inner
            .queue_wake_ups(users, except, urgent, due_at_ms, max_queued)
            .await
    }

    async fn claim_wake_ups(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<WakeUp>, StoreError> {
        self.inner.claim_wake_ups(now_ms, lease_ms, limit).await
    }

    async fn finish_wake_up(&self, device: DeviceId) -> Result<(), StoreError> {
        self.inner.finish_wake_up(device).await
    }

    async fn retry_wake_up(&self, device: DeviceId, due_at_ms: u64) -> Result<(), StoreError> {
        self.inner.retry_wake_up(device, due_at_ms).await
    }

    async fn defer_wake_up(&self, device: DeviceId, due_at_ms: u64) -> Result<(), StoreError> {
        self.inner.defer_wake_up(device, due_at_ms).await
    }

    async fn has_unread(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        self.inner.has_unread(user, device).await
    }

    async fn queued_wake_ups(&self) -> Result<u64, StoreError> {
        self.inner.queued_wake_ups().await
    }
}

#[async_trait]
impl AttachmentStore for FaultyStore {
    async fn create_blob(&self, new: &NewBlob, quota_bytes: u64) -> Result<(), StoreError> {
        self.inner.create_blob(new, quota_bytes).await
    }

    async fn blob(
        &self,
        blob: ferry_protocol::attachments::BlobId,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<BlobRow>, StoreError> {
        self.inner.blob(blob, user, device).await
    }

    async fn record_parts(
        &self,
        blob: ferry_protocol::attachments::BlobId,
        from: u32,
        to: u32,
        complete: bool,
    ) -> Result<bool, StoreError> {
        self.inner.record_parts(blob, from, to, complete).await
    }

    async fn doom_blob(
        &self,
        blob: ferry_protocol::attachments::BlobId,
    ) -> Result<Option<DoomedBlob>, StoreError> {
        self.inner.doom_blob(blob).await
    }

    async fn forget_trimmed_refs(&self) -> Result<(), StoreError> {
        self.inner.forget_trimmed_refs().await
    }

    async fn doom_dead_blobs(
        &self,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<DoomedBlob>, StoreError> {
        self.inner.doom_dead_blobs(now_ms, limit).await
    }

    async fn forget_blob(
        &self,
        blob: ferry_protocol::attachments::BlobId,
    ) -> Result<(), StoreError> {
        if Self::take_one(&self.fail_forgets) {
            return Err(injected("blob row not deleted"));
        }
        self.inner.forget_blob(blob).await
    }

    async fn attachment_usage(&self, user: UserId) -> Result<u64, StoreError> {
        self.inner.attachment_usage(user).await
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    async fn session_start(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<SessionStart, StoreError> {
        // It reads the device's record: the same gate as `device`.
        self.device_reads.pass().await;
        self.inner.session_start(user, device).await
    }
}

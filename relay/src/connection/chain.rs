//! The device-chain frames, answered the same way in a device session and in a recovery
//! session: `ChainAppend` stores a link (the store checks it against the user's chain, see
//! [`crate::store::ChainStore`]) and tells the user's other sessions, `ChainFetch` pages the
//! chain out.

use ferry_protocol::frames::MAX_LINKS_PER_FRAME;
use ferry_protocol::{ChainError, ErrorCode, ErrorFrame, Link, ServerFrame, UserId};

use crate::context::{Context, now_s};
use crate::store::{Store, StoreError};

/// Stores `link` in `user`'s chain and returns the answer: `ChainAppended`, or an error
/// (207 `chain_link_refused` with the reason, 401 `too_many_devices`, or a storage error).
///
/// Once stored, every session of the user on every node hears `ChainGrew` (but `sender`, the
/// hub id of the session that sent it, which gets `ChainAppended`), and the sessions of the
/// devices it revoked are closed (an encrypted `Error(203)`, then 4203).
pub(super) async fn append(
    ctx: &Context,
    user: UserId,
    link: &Link,
    sender: Option<u64>,
) -> ServerFrame {
    if link.user != user {
        return refused(&ChainError::WrongUser);
    }
    let max = ctx.config.limits.max_devices_per_user;
    match ctx.store.append_link(link, max, now_s()).await {
        Ok(appended) => {
            if !appended.revoked.is_empty() {
                tracing::info!(%user, seqno = appended.seqno, devices = appended.revoked.len(), "devices revoked by the chain");
            }
            ctx.hub
                .chain_grew(user, appended.seqno, &appended.revoked, sender)
                .await;
            ServerFrame::ChainAppended {
                seqno: appended.seqno,
            }
        }
        Err(StoreError::ChainLinkRefused(error)) => refused(&error),
        Err(e) => {
            let code = e.code();
            if code == ErrorCode::Internal || code == ErrorCode::Unavailable {
                tracing::warn!(error = %e, "storage error storing a chain link");
            }
            ServerFrame::Error(ErrorFrame::with_message(code, e.to_string()))
        }
    }
}

fn refused(error: &ChainError) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::with_message(
        ErrorCode::ChainLinkRefused,
        error.to_string(),
    ))
}

/// The `ChainLinks` pages answering one `ChainFetch { after }`: consecutive links, at most
/// [`MAX_LINKS_PER_FRAME`] and about [`crate::store::LINK_PAGE_BYTES`] of them a frame, `more`
/// on all but the last; one empty page when nothing follows `after`. The last page reaches
/// the chain's length when the fetch started (later links are announced by `ChainGrew`).
pub(super) struct Fetch {
    user: UserId,
    after: u64,
    head: Option<u64>,
    done: bool,
}

impl Fetch {
    pub(super) fn new(user: UserId, after: u64) -> Self {
        Self {
            user,
            after,
            head: None,
            done: false,
        }
    }

    /// The next page, or `None` once the last was returned.
    pub(super) async fn next_page(
        &mut self,
        store: &dyn Store,
    ) -> Result<Option<ServerFrame>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let head = match self.head {
            Some(head) => head,
            None => *self.head.insert(store.chain_seqno(self.user).await?),
        };
        let links = if self.after >= head {
            Vec::new()
        } else {
            store
                .chain_links(self.user, self.after, MAX_LINKS_PER_FRAME)
                .await?
        };
        let last = links.last().map_or(self.after, |link| link.seqno);
        let more = !links.is_empty() && last < head;
        self.after = last;
        self.done = !more;
        Ok(Some(ServerFrame::ChainLinks { links, more }))
    }
}

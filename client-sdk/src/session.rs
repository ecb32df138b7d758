//! Device chain requests on a short session of their own (creating a user, recovering,
//! checking a new device's admission, admitting a paired device): fetch the chain, append a
//! link, and wait for the answer, ignoring the log's traffic.

use std::time::Duration;

use ferry_protocol::handshake::Credentials;
use ferry_protocol::{ClientFrame, ErrorCode, Link, RelayId, ServerFrame};
use tokio::time::{Instant, sleep_until};

use crate::connection::{self, Connection};
use crate::error::ClientError;
use crate::options::Options;

/// How long closing may take once the last frame is queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with `credentials` within [`Options::connect_timeout`].
pub(crate) async fn connect(
    url: &str,
    relay_key: RelayId,
    credentials: Credentials<'_>,
    options: &Options,
) -> Result<Connection, ClientError> {
    let timeout = options.connect_timeout;
    match tokio::time::timeout(
        timeout,
        connection::open_as(url, relay_key, credentials, options.ca_file.as_deref()),
    )
    .await
    {
        Ok(opened) => opened,
        Err(_) => Err(ClientError::RelayUnreachable(format!(
            "{url}: no session within {timeout:?}"
        ))),
    }
}

/// A chain answer.
enum Answer {
    Links(Vec<Link>, bool),
    Appended(u64),
}

/// The next chain answer (or error) within `deadline`; pings are answered, the log's
/// traffic is ignored.
async fn answer(connection: &mut Connection, deadline: Instant) -> Result<Answer, ClientError> {
    loop {
        let frame = tokio::select! {
            frame = connection.incoming.next() => frame?,
            () = sleep_until(deadline) => {
                return Err(ClientError::RelayUnreachable(
                    "the relay did not answer the device chain request in time".to_owned(),
                ));
            }
        };
        match frame {
            ServerFrame::ChainLinks { links, more } => return Ok(Answer::Links(links, more)),
            ServerFrame::ChainAppended { seqno } => return Ok(Answer::Appended(seqno)),
            ServerFrame::Error(error) if error.device_seq.is_none() => {
                return Err(ClientError::from_code(error.code, error.message));
            }
            ServerFrame::ResyncRequired { earliest } => {
                return Err(ClientError::ResyncRequired { earliest });
            }
            ServerFrame::Ping { nonce } => {
                let _ = connection.outgoing.send(ClientFrame::Pong { nonce }).await;
            }
            _ => {}
        }
    }
}

async fn send(connection: &Connection, frame: ClientFrame) -> Result<(), ClientError> {
    connection
        .outgoing
        .send(frame)
        .await
        .map_err(|_| ClientError::RelayUnreachable("the connection closed".to_owned()))
}

/// Every link of the chain after position `after`, in order.
pub(crate) async fn fetch_chain(
    connection: &mut Connection,
    after: u64,
    timeout: Duration,
) -> Result<Vec<Link>, ClientError> {
    send(connection, ClientFrame::ChainFetch { after }).await?;
    let deadline = Instant::now() + timeout;
    let mut fetched = Vec::new();
    loop {
        match answer(connection, deadline).await? {
            Answer::Links(links, more) => {
                fetched.extend(links);
                if !more {
                    return Ok(fetched);
                }
            }
            Answer::Appended(_) => {
                return Err(ClientError::Protocol(
                    "the relay answered a chain fetch with ChainAppended".to_owned(),
                ));
            }
        }
    }
}

/// Appends `link` and waits for the relay to store it.
pub(crate) async fn append_link(
    connection: &mut Connection,
    link: &Link,
    timeout: Duration,
) -> Result<(), ClientError> {
    send(connection, ClientFrame::ChainAppend(Box::new(link.clone()))).await?;
    let deadline = Instant::now() + timeout;
    match answer(connection, deadline).await? {
        Answer::Appended(seqno) if seqno == link.seqno => Ok(()),
        Answer::Appended(seqno) => Err(ClientError::Protocol(format!(
            "the relay stored link {} at position {seqno}",
            link.seqno
        ))),
        Answer::Links(..) => Err(ClientError::Protocol(
            "the relay answered a chain append with links".to_owned(),
        )),
    }
}

/// Sends what is queued, then closes the connection.
pub(crate) async fn close(connection: Connection) {
    let Connection {
        outgoing, writer, ..
    } = connection;
    drop(outgoing);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
}

/// Whether `error` is the relay's refusal of a chain link.
pub(crate) fn is_refused_link(error: &ClientError) -> bool {
    matches!(error, ClientError::ChainLinkRefused(_))
        || matches!(error, ClientError::Relay { code, .. } if *code == ErrorCode::ChainLinkRefused)
}

//! The PROXY protocol on the client port (`--proxy-protocol`): a TCP load balancer (HAProxy
//! in TCP mode, an AWS Network Load Balancer) names the client in a header it sends before
//! the client's bytes, since no HTTP header can carry it through TLS.
//!
//! 1. A connection is accepted. Only when `--proxy-protocol` is on and its TCP peer is a
//!    `--trusted-proxy` is a header expected; from any other peer nothing is read here and a
//!    header, if sent, is not believed (it fails as HTTP).
//! 2. [`read`] reads until [`header::decode`] answers, within the HTTP header deadline: a
//!    slow proxy peer cannot hold a connection slot longer than a slow client can.
//! 3. The client address is the header's source, or the peer for `LOCAL` / `UNKNOWN`
//!    (health checks). It replaces the peer address for the per-address limits, the
//!    handshake and pairing rate limits and the logs.
//! 4. The bytes read past the header are handed back through [`Rewind`], in front of the
//!    socket, to TLS or HTTP.
//!
//! A missing, malformed, over-long or unfinished header closes the connection; the server
//! counts it in `ferry_proxy_header_errors_total{reason}` and logs it at debug level.

pub mod header;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

pub use header::{Decoded, HeaderError, ProxyHeader};

/// Why no header was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes are not a valid header.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The peer closed the connection (or it failed) before the header was complete.
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    /// The header did not arrive within the deadline.
    #[error("PROXY protocol header not received in time")]
    Timeout,
}

impl ReadError {
    /// A short stable name, for a metric label: `missing`, `invalid`, `too_long`, `closed`
    /// or `timeout`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Header(e) => e.reason(),
            Self::Closed => "closed",
            Self::Timeout => "timeout",
        }
    }
}

/// Reads the PROXY protocol header at the start of `stream`, within `deadline`. Returns what
/// it says and the stream with the bytes read past it put back in front.
pub async fn read<S>(
    mut stream: S,
    deadline: Duration,
) -> Result<(ProxyHeader, Rewind<S>), ReadError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(256);
    let decoded = tokio::time::timeout(deadline, async {
        loop {
            if let Decoded::Complete { header, len } = header::decode(&buf)? {
                return Ok((header, len));
            }
            // `decode` answers within MAX_LEN bytes: the buffer stays bounded by that plus
            // one read.
            let mut chunk = [0u8; 512];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let (header, len) = decoded.map_err(|_| ReadError::Timeout)??;
    let rest = Bytes::from(buf).slice(len..);
    Ok((header, Rewind::new(rest, stream)))
}

/// A stream that first yields bytes already taken from it (those that followed the PROXY
/// header), then reads on from it. Writes go straight through.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, with `prefix` to be read before it.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() && buf.remaining() > 0 {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_bytes_after_the_header_are_read_back_in_order() {
        let (mut client, server) = tokio::io::duplex(64);
        let reader = tokio::spawn(read(server, Duration::from_secs(5)));
        // The header arrives in pieces, with the client's first bytes right behind it.
        client.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
        tokio::task::yield_now().await;
        client
            .write_all(b"192.0.2.1 56324 443\r\nGET /healthz")
            .await
            .unwrap();
        let (header, mut rest) = reader.await.unwrap().unwrap();
        assert_eq!(
            header.client("10.0.0.1:1".parse().unwrap()),
            "203.0.113.7:56324".parse().unwrap()
        );
        client.write_all(b" HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let mut after = String::new();
        rest.read_to_string(&mut after).await.unwrap();
        assert_eq!(after, "GET /healthz HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_peer_that_stops_early_or_stalls_is_refused() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        drop(client);
        let closed = read(server, Duration::from_secs(5)).await.err().unwrap();
        assert_eq!(closed.reason(), "closed");

        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"\r\n\r\n\0\r\nQUIT\n").await.unwrap();
        let stalled = read(server, Duration::from_millis(50)).await.err().unwrap();
        assert_eq!(stalled.reason(), "timeout");
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let missing = read(server, Duration::from_secs(5)).await.err().unwrap();
        assert_eq!(missing.reason(), "missing");
    }
}

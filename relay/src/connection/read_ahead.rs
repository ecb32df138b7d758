//! Reads the socket in large pieces without a large buffer per connection.
//!
//! tungstenite reads at most its `read_buffer_size` per read call, and the server keeps that
//! at 512 B because the buffer lives as long as the connection (idle memory per connection,
//! docs/benchmarks.md). Under load that is a system call for every one or two appends (about
//! 300 B each) and 512 of them for a 256 KiB attachment part. [`ReadAhead`] reads up to
//! [`READ_AHEAD`] at once into a buffer that belongs to the thread, hands the caller what it
//! asked for, and keeps the rest in a buffer of the connection's own that exists only while
//! it holds bytes: a burst costs one read, an idle connection holds one pointer more.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most read from the socket at once: a client's write buffer (16 KiB) of appends, or a
/// sixteenth of a 256 KiB attachment part.
pub const READ_AHEAD: usize = 16 * 1024;

thread_local! {
    /// Where a read lands before it is handed out: one per worker thread, not per connection
    /// (a poll runs on one thread from start to end, and nothing in it reads another socket).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_AHEAD].into_boxed_slice());
}

/// An `AsyncRead + AsyncWrite` that reads ahead of its caller (see the module doc); writes go
/// straight through.
pub struct ReadAhead<S> {
    inner: S,
    /// Read from `inner`, not handed out yet. `None` whenever empty, so that an idle
    /// connection holds no buffer.
    ahead: Option<Box<Ahead>>,
}

struct Ahead {
    bytes: Box<[u8]>,
    /// How much of `bytes` has been handed out.
    taken: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, ahead: None }
    }

    /// Bytes read from the socket and not handed out yet.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.ahead.as_ref().map_or(0, |a| a.bytes.len() - a.taken)
    }

    /// Hands out what was read ahead, as much as fits; frees the buffer once it is empty.
    fn take_ahead(&mut self, buf: &mut ReadBuf<'_>) {
        let Some(ahead) = &mut self.ahead else { return };
        let rest = &ahead.bytes[ahead.taken..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        ahead.taken += n;
        if ahead.taken == ahead.bytes.len() {
            self.ahead = None;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            // Nothing asked for: reading the socket now would only move bytes into `ahead`.
            return Poll::Ready(Ok(()));
        }
        if this.ahead.is_some() {
            this.take_ahead(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD {
            // The caller asked for as much as a read ahead would take: no copy.
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let filled = read.filled();
            let n = filled.len().min(buf.remaining());
            buf.put_slice(&filled[..n]);
            if n < filled.len() {
                this.ahead = Some(Box::new(Ahead {
                    bytes: filled[n..].into(),
                    taken: 0,
                }));
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A socket that returns its chunks one per read (as much of one as the read can take),
    /// counts the reads that reached it, and says `Pending` once between chunks.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        reads: usize,
        pending_next: bool,
    }

    impl Chunks {
        fn new(chunks: &[&[u8]]) -> Self {
            Self {
                chunks: chunks.iter().map(|c| c.to_vec()).collect(),
                reads: 0,
                pending_next: true,
            }
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.pending_next {
                self.pending_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending_next = true;
            self.reads += 1;
            if let Some(chunk) = self.chunks.front_mut() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    self.chunks.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Reads everything in reads of at most `step` bytes, as tungstenite does.
    async fn read_all(socket: &mut ReadAhead<Chunks>, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0; step];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_from_one_read_of_the_socket() {
        let burst = bytes(READ_AHEAD, 7);
        let mut socket = ReadAhead::new(Chunks::new(&[&burst]));
        let got = read_all(&mut socket, 512).await;
        assert_eq!(got, burst);
        // One read for the burst, one for the end of the stream.
        assert_eq!(socket.inner.reads, 2);
        assert!(socket.ahead.is_none());
    }

    #[tokio::test]
    async fn what_is_read_ahead_comes_before_the_next_read_of_the_socket() {
        let (first, second, third) = (bytes(3000, 1), bytes(700, 2), bytes(20_000, 3));
        let mut socket = ReadAhead::new(Chunks::new(&[&first, &second, &third]));
        let mut buf = [0; 512];
        let n = socket.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &first[..512]);
        assert_eq!(socket.buffered(), 3000 - 512);
        let got = read_all(&mut socket, 512).await;
        let expected: Vec<u8> = [&first[512..], &second[..], &third[..]].concat();
        assert_eq!(got, expected);
        // 3,000 B, 700 B, 20,000 B in two reads of at most 16 KiB, and the end.
        assert_eq!(socket.inner.reads, 5);
    }

    #[tokio::test]
    async fn a_read_as_large_as_the_read_ahead_goes_straight_to_the_socket() {
        let burst = bytes(2 * READ_AHEAD, 9);
        let mut socket = ReadAhead::new(Chunks::new(&[&burst]));
        let mut buf = vec![0; 2 * READ_AHEAD];
        let n = socket.read(&mut buf).await.unwrap();
        assert_eq!(n, 2 * READ_AHEAD);
        assert_eq!(buf, burst);
        assert!(socket.ahead.is_none());
    }

    #[tokio::test]
    async fn the_end_of_the_stream_comes_after_what_was_read_ahead() {
        let mut socket = ReadAhead::new(Chunks::new(&[b"hello, ferry"]));
        let mut buf = [0; 5];
        assert_eq!(socket.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(socket.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf, b", fer");
        assert_eq!(socket.read(&mut buf).await.unwrap(), 2);
        assert_eq!(&buf[..2], b"ry");
        assert_eq!(socket.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn websocket_frames_split_and_joined_across_reads_arrive_whole() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

        let (client, server) = tokio::io::duplex(64 * 1024);
        let messages: Vec<Vec<u8>> = (0..200)
            .map(|i| bytes(1 + (i * 37) % 1500, i as u8))
            .chain([bytes(100_000, 5)])
            .collect();
        let sent = messages.clone();
        let writer = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            for message in sent {
                ws.feed(Message::Binary(message.into())).await.unwrap();
            }
            ws.flush().await.unwrap();
            ws.close(None).await.unwrap();
        });
        let config = WebSocketConfig::default().read_buffer_size(512);
        let mut ws =
            WebSocketStream::from_raw_socket(ReadAhead::new(server), Role::Server, Some(config))
                .await;
        let mut got = Vec::new();
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                Message::Binary(bytes) => got.push(bytes.to_vec()),
                Message::Close(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        writer.await.unwrap();
        assert_eq!(got, messages);
    }

    #[tokio::test]
    async fn writes_go_straight_through() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut socket = ReadAhead::new(near);
        socket.write_all(b"appended").await.unwrap();
        socket.flush().await.unwrap();
        let mut buf = [0; 8];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"appended");
    }
}

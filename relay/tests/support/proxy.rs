//! A TCP proxy that a test can cut, restore or slow down, to play a service outage (Redis
//! going away) or a slow link without touching the shared service itself.
//!
//! [`Proxy::cut`] drops every live connection and closes each new one as soon as it is
//! accepted, so clients see their connections end and their reconnections fail, exactly as
//! when the service is gone; [`Proxy::restore`] lets new connections through again.
//! [`Proxy::delay_upstream`] holds every byte going to the service for a while (in order, as a
//! delay line), so that its commands take effect late.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A proxy from `127.0.0.1:<ephemeral port>` to a target address.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    /// `true` while cut. Every forwarding task watches it and ends when it turns `true`.
    cut: watch::Sender<bool>,
    /// Connections forwarded so far (accepted while not cut).
    forwarded: Arc<AtomicU64>,
    /// How long bytes towards the target are held, in milliseconds.
    upstream_delay_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let forwarded = Arc::new(AtomicU64::new(0));
        let upstream_delay_ms = Arc::new(AtomicU64::new(0));
        let (count, delay) = (Arc::clone(&forwarded), Arc::clone(&upstream_delay_ms));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if *cut_rx.borrow() {
                    // Refused: the client sees its connection end before any answer.
                    drop(client);
                    continue;
                }
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(client, target, cut_rx.clone(), Arc::clone(&delay)));
            }
        });
        Self {
            addr,
            cut,
            forwarded,
            upstream_delay_ms,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every live connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Holds every byte read from a client from now on for `delay` before passing it to the
    /// target (answers come back at once).
    pub fn delay_upstream(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.upstream_delay_ms.store(millis, Ordering::Relaxed);
    }

    /// How many connections were forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Forwarding tasks end with the cut.
        self.cut.send_replace(true);
    }
}

/// Copies both ways until either side closes or the proxy is cut; then both sockets close.
async fn forward(
    client: TcpStream,
    target: SocketAddr,
    mut cut: watch::Receiver<bool>,
    delay_ms: Arc<AtomicU64>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Upstream goes through a delay line: each chunk is due `delay` after it was read.
    let (line, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read_upstream = async move {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read @ 1..) = client_read.read(&mut buffer).await {
            let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            if line
                .send((Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let write_upstream = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if server_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        _ = cut.wait_for(|cut| *cut) => {}
        _ = async { tokio::join!(read_upstream, write_upstream) } => {}
        _ = downstream => {}
    }
    // Dropping every half closes both connections.
}

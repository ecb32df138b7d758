//! `wire`: bytes on the wire per event with a 256-byte payload, each direction.
//!
//! Bytes are counted on the TCP stream of each client connection (WebSocket framing and
//! masking included; TCP/IP headers, which depend on segmentation, are not). One user has
//! devices A, B and C. A appends `events` events one at a time (each answered before the
//! next, so every frame carries one event: the worst case for framing overhead); B receives
//! them live. Then C, a fresh device, replays them all (pages of many events per frame).
//! Counting starts after each device's `CaughtUp`, so the handshake is not included.

use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_protocol::ServerFrame;

use super::{Options, payload};
use crate::client::{Connection, Identity, append};
use crate::progress::step;
use crate::relay::{BenchRelay, NodeOptions};
use crate::report::Report;

const NAME: &str = "wire";
/// The payload size the issue asks about.
pub const PAYLOAD: usize = 256;
const WAIT: Duration = Duration::from_secs(30);

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let events = options.pick(options.events, 1_000, 100) as u64;
    step(NAME, "starting the relay");
    let relay = BenchRelay::spawn(&options.services, NodeOptions::default()).await?;
    let target = relay.target();
    let ids = Identity::new_user(3);
    let mut a = Connection::connect(target, &ids[0], None, None).await?;
    let mut b = Connection::connect(target, &ids[1], None, None).await?;
    caught_up(&mut a).await?;
    caught_up(&mut b).await?;
    let (a_read_0, a_written_0) = a.traffic.snapshot();
    let (b_read_0, _) = b.traffic.snapshot();

    step(NAME, format_args!("{events} events sent one at a time"));
    let body = payload(PAYLOAD);
    let mut answer_bytes = 0;
    for device_seq in 1..=events {
        a.send(&append(device_seq, body.clone())).await?;
        // A gets its answer and, like every device of the user, the event itself.
        let mut answered = false;
        let mut echoed = false;
        while !(answered && echoed) {
            let message = tokio::time::timeout(WAIT, crate::client::next_binary(&mut a.ws))
                .await
                .context("no answer")??;
            match a.channel.open(&message)? {
                ServerFrame::Appended { .. } => {
                    answered = true;
                    answer_bytes += message.len() + header_len(message.len(), false);
                }
                ServerFrame::Events(_) => echoed = true,
                other => bail!("unexpected frame: {other:?}"),
            }
        }
        let mut delivered = 0;
        while delivered < 1 {
            match tokio::time::timeout(WAIT, b.recv())
                .await
                .context("no delivery")??
            {
                ServerFrame::Events(page) => delivered += page.len(),
                other => bail!("unexpected frame: {other:?}"),
            }
        }
    }
    let (a_read_1, a_written_1) = a.traffic.snapshot();
    let (b_read_1, _) = b.traffic.snapshot();

    step(NAME, "a fresh device replays them");
    let mut c = Connection::connect(target, &ids[2], None, None).await?;
    let (c_read_0, _) = c.traffic.snapshot();
    let mut replayed = 0;
    loop {
        match tokio::time::timeout(WAIT, c.recv())
            .await
            .context("replay stalled")??
        {
            ServerFrame::Events(page) => replayed += page.len() as u64,
            ServerFrame::CaughtUp { .. } => break,
            other => bail!("unexpected frame: {other:?}"),
        }
    }
    let (c_read_1, _) = c.traffic.snapshot();
    relay.shutdown(Duration::from_secs(5)).await;
    if replayed != events {
        bail!("replayed {replayed} of {events} events");
    }

    let per = |bytes: u64| bytes as f64 / events as f64;
    let upload = per(a_written_1 - a_written_0);
    let answer = answer_bytes as f64 / events as f64;
    let live = per(b_read_1 - b_read_0);
    let replay = per(c_read_1 - c_read_0);
    let mut report = Report::default();
    report.add(NAME, "device → relay, Append", upload, "B/ev");
    report.add(NAME, "relay → sender, Appended", answer, "B/ev");
    report.add(NAME, "relay → other device, live Events", live, "B/ev");
    report.add(NAME, "relay → fresh device, replay", replay, "B/ev");
    report.add(
        NAME,
        "round trip A → relay → B (Append + Appended + Events)",
        upload + answer + live,
        "B/ev",
    );
    report.add(
        NAME,
        "(Append + Appended + Events) ÷ 256 B payload",
        (upload + answer + live) / PAYLOAD as f64,
        "×",
    );
    report.add(
        NAME,
        "sender's own echo (read − Appended)",
        per(a_read_1 - a_read_0) - answer,
        "B/ev",
    );
    report.note(format!(
        "wire: bytes on each client's TCP stream after CaughtUp (WebSocket framing and client \
         masking included, TCP/IP headers not), {events} events of {PAYLOAD} B sent one at a \
         time so live frames carry one event each; the Appended size is the WebSocket message \
         plus its 2-byte header; every device of a user, the sender included, receives each \
         event"
    ));
    Ok(report)
}

/// Waits for `CaughtUp`.
async fn caught_up(connection: &mut Connection) -> anyhow::Result<()> {
    loop {
        let frame = tokio::time::timeout(WAIT, connection.recv())
            .await
            .context("no CaughtUp")??;
        if let ServerFrame::CaughtUp { .. } = frame {
            return Ok(());
        }
    }
}

/// Bytes of a WebSocket frame header (RFC 6455 §5.2) for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let length = match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    length + if masked { 4 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::header_len;

    #[test]
    fn websocket_headers() {
        assert_eq!(header_len(19, false), 2);
        assert_eq!(header_len(300, true), 8);
        assert_eq!(header_len(70_000, false), 10);
    }
}

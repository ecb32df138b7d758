//! A tiny sync app: every line typed is appended to the user's log, and every event of the
//! log (from any of the user's devices) is printed as it arrives.
//!
//! ```text
//! cargo run -p ferry-relay -- serve            # prints the relay key at first start
//! cargo run -p ferry-client --example sync -- laptop ws://127.0.0.1:7070/ws RELAY_KEY
//! cargo run -p ferry-client --example sync -- laptop   # later: the state is kept in ./laptop
//! ```
//!
//! Lines typed while the relay is down wait in the outbox and leave when it is back.

use ferry_client::{Client, ClientEvent, ClientState, Options, account};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let state = match args.as_slice() {
        [dir] => ClientState::open(dir)?,
        [dir, url, key] => {
            let created =
                account::create(dir, url, key.parse()?, "sync example", &Options::default())
                    .await?;
            // Shown once: the only way back to the account when every device is lost.
            println!(
                "recovery key (write it down; it is never shown again): {}",
                created.recovery_key.display().as_str()
            );
            created.state
        }
        _ => {
            eprintln!("usage: sync STATE_DIR [RELAY_URL RELAY_KEY]");
            std::process::exit(2);
        }
    };
    println!("user {} / device {}", state.user_id(), state.device_id());

    // Start without waiting: typing works offline, the outbox delivers later.
    let mut client = Client::start(state, Options::default());

    // Lines from stdin (read on a thread: reading a terminal blocks)...
    let (lines, mut typed) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
    // ...appended from another task, through a handle.
    let writer = client.handle();
    tokio::spawn(async move {
        while let Some(line) = typed.recv().await {
            match writer.append(line.as_bytes()).await {
                Ok(seq) => eprintln!("(stored as event {seq})"),
                Err(e) => eprintln!("(not stored: {e})"),
            }
        }
    });

    loop {
        tokio::select! {
            event = client.next_event() => match event {
                Ok(ClientEvent::Event(event)) => {
                    let from = if event.device == client.device_id() { "me" } else { "other" };
                    println!("#{} [{from}] {}", event.seq, String::from_utf8_lossy(&event.plaintext));
                }
                Ok(ClientEvent::CaughtUp { head }) => eprintln!("(caught up at {head})"),
                Ok(_) => {}
                Err(e) if e.is_permanent() => return Err(e.into()),
                Err(e) => eprintln!("({e})"),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Saves the cursor, so the next run starts after the last event printed.
    let state = client.close().await?;
    if state.pending() > 0 {
        eprintln!("({} event(s) wait in the outbox)", state.pending());
    }
    Ok(())
}

//! `ferry`: the Ferry command-line client, a thin shell over the `ferry-client` library.
//!
//! ```text
//! ferry --state DIR init --relay ws[s]://HOST:PORT/ws --relay-key HEX [--name NAME]
//! ferry --state DIR recover --relay ws[s]://HOST:PORT/ws --relay-key HEX [--name NAME] [--revoke-all]
//!                                      # reads the recovery key from stdin
//! ferry --state DIR send TEXT          # `send -`: each line of stdin is one event
//! ferry --state DIR tail [--follow] [--limit N]
//! ferry --state DIR devices
//! ferry --state DIR revoke DEVICE      # a device id, or a unique prefix of one
//! ferry --state DIR pair [--yes]       # prints `code: SLOT-DDDDDD`, waits for the new device
//! ferry --state DIR join --relay ws[s]://HOST:PORT/ws --relay-key HEX [CODE] [--name NAME]
//! ```
//!
//! Exit status 0 on success, 1 on any failure (the reason goes to stderr). Event text goes
//! to stdout, one event per line; everything else goes to stderr, except what a command
//! exists to print (`init`'s recovery key, `devices`' list, pairing's lines).
//!
//! `init` prints the recovery key once, on stdout, in a line `recovery key: XXXXX-…`, with
//! how to keep it. It is stored nowhere: it is the only way back to the account once every
//! device is lost (`recover`), and whoever has it controls the account.
//!
//! Pairing, on stdout: `pair` prints `code: SLOT-DDDDDD` (as `code: 7-402913`), then `confirm:
//! XXXX-XXXX` once a device joined with the right code, asks `Admit this device? [y/N]` on
//! stderr and reads the answer from stdin (`--yes` skips the question), then prints `paired:
//! DEVICE NAME`; `join` prints `confirm: XXXX-XXXX`, then `joined: DEVICE`. Both screens show
//! the same confirmation string. `join` reads the code from stdin when it is not an argument
//! (other local users can see a command's arguments).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ferry_client::pairing::{self, Join};
use ferry_client::{
    Client, ClientError, ClientEvent, ClientState, Device, Options, RecoveryKey, RecoveryKeyError,
    RelayId, account,
};
use zeroize::Zeroizing;

/// Ferry: end-to-end encrypted sync between your devices, through a relay that cannot read it.
#[derive(Parser, Debug)]
#[command(name = "ferry", version)]
struct Cli {
    /// Folder holding this device's keys, cursor and outbox (created by `init`).
    #[arg(long, env = "FERRY_STATE", value_name = "DIR")]
    state: PathBuf,

    /// Seconds to wait for the relay before giving up.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    timeout: u64,

    /// CA certificate (PEM) to trust for a wss:// relay of a private deployment, instead of
    /// the system's root certificates.
    #[arg(long, global = true, env = "FERRY_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new user on this device, pinned to a relay, and print its recovery key once.
    ///
    /// The recovery key is the only way back to the account when every device is lost
    /// (`ferry recover`); it is stored nowhere, not even in the state folder.
    Init {
        /// The relay's WebSocket URL, ws://HOST:PORT/ws or wss://HOST:PORT/ws.
        #[arg(long, value_name = "URL")]
        relay: String,
        /// The relay's public key, as it printed at its first start (64 hex digits).
        #[arg(long, value_name = "HEX")]
        relay_key: RelayId,
        /// A name for this device, shown by `devices` (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Recover the account on this new folder with the recovery key (read from stdin, one
    /// line; never give it as an argument): a new device, admitted with the recovery key,
    /// that reads the whole history.
    Recover {
        /// The relay's WebSocket URL, ws://HOST:PORT/ws or wss://HOST:PORT/ws.
        #[arg(long, value_name = "URL")]
        relay: String,
        /// The relay's public key (64 hex digits), pinned from now on.
        #[arg(long, value_name = "HEX")]
        relay_key: RelayId,
        /// A name for this device, shown by `devices` (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Revoke every other device of the account first (lost or stolen ones): none of
        /// them can act for the account or read anything written after this.
        #[arg(long)]
        revoke_all: bool,
    },
    /// Append an event and wait until the relay has stored it.
    ///
    /// If the relay cannot be reached the event stays in the outbox and the command fails;
    /// the next command that reaches the relay sends it.
    Send {
        /// The event's text; `-` sends each line of stdin as one event.
        text: String,
    },
    /// Print the events that arrived after this device's cursor, one per line.
    Tail {
        /// Keep printing new events as they arrive (until Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// List the user's devices.
    Devices,
    /// Revoke a device: it can no longer connect, and reads nothing written after this (the
    /// data key moves to a new epoch it never gets).
    Revoke {
        /// The device id (or a unique prefix of it), as `devices` shows it.
        device: String,
    },
    /// Add a new device to this user: print a code to type on it (`ferry join`), and wait
    /// for it.
    ///
    /// Prints `code: SLOT-DDDDDD` (for example `code: 7-402913`); once the device joined with
    /// the right code, `confirm: XXXX-XXXX` and asks `Admit this device? [y/N]`: answer `y`
    /// only if the new device shows the same confirmation. Then prints `paired: DEVICE NAME`.
    /// Any other answer turns the device down and fails. The code works once and expires
    /// after ten minutes (the relay's setting).
    Pair {
        /// Admit the device without asking (for scripts): the confirmation is not compared.
        #[arg(long)]
        yes: bool,
    },
    /// Make this folder a new device of a user who has another device: run `ferry pair`
    /// there and give the code it prints.
    ///
    /// Prints `confirm: XXXX-XXXX` (the other device shows the same) and `joined: DEVICE`.
    Join {
        /// The relay's WebSocket URL, ws://HOST:PORT/ws or wss://HOST:PORT/ws (the one the other device uses).
        #[arg(long, value_name = "URL")]
        relay: String,
        /// The relay's public key (64 hex digits), pinned from now on.
        #[arg(long, value_name = "HEX")]
        relay_key: RelayId,
        /// The code `ferry pair` printed on the other device (as 7-402913). Leave it out to
        /// type it when asked: a command's arguments are visible to other users of this
        /// computer.
        code: Option<String>,
        /// A name for this device, shown by `devices` (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A question left unanswered (Ctrl-C) leaves a thread reading stdin: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(cli.timeout);
    let mut options = Options::default()
        .connect_timeout(timeout)
        .backoff(Duration::from_millis(200), Duration::from_secs(2));
    if let Some(ca_file) = cli.ca_file {
        options = options.ca_file(ca_file);
    }
    match cli.command {
        Command::Init {
            relay,
            relay_key,
            name,
        } => init(&cli.state, &relay, relay_key, name, options).await,
        Command::Recover {
            relay,
            relay_key,
            name,
            revoke_all,
        } => recover(&cli.state, &relay, relay_key, name, revoke_all, options).await,
        Command::Send { text } => send(&cli.state, &text, options, timeout).await,
        // A log viewer: this device's own events included (the library hides them by default).
        Command::Tail { follow, limit } => {
            tail(&cli.state, follow, limit, options.own_events(true)).await
        }
        Command::Devices => devices(&cli.state, options, timeout).await,
        Command::Revoke { device } => revoke(&cli.state, &device, options, timeout).await,
        Command::Pair { yes } => pair(&cli.state, yes, options).await,
        Command::Join {
            relay,
            relay_key,
            code,
            name,
        } => join(&cli.state, &relay, relay_key, code, name, options).await,
    }
}

async fn init(
    dir: &std::path::Path,
    relay: &str,
    relay_key: RelayId,
    name: Option<String>,
    options: Options,
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(default_name);
    let created = account::create(dir, relay, relay_key, &name, &options).await?;
    let state = created.state;
    let mut out = std::io::stdout().lock();
    writeln!(out, "user   {}", state.user_id())?;
    writeln!(
        out,
        "device {} ({})",
        state.device_id(),
        printable(&state.device_name())
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "recovery key: {}",
        created.recovery_key.display().as_str()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "This is your recovery key. It is shown this once and never again, and it is stored\n\
         nowhere, not even on this device. Write it down on paper, or keep it in a password\n\
         manager. With it you can get your account and your whole history back on a new\n\
         device if you lose every device (`ferry recover`), and revoke a lost one.\n\
         Anyone who has it controls your account: keep it secret. If you lose it, nobody,\n\
         Ferry included, can make it again or recover the account without it."
    )?;
    out.flush()?;
    drop(created.recovery_key);
    eprintln!(
        "ferry: new user created in {}; keep this folder private",
        dir.display()
    );
    Ok(())
}

async fn recover(
    dir: &std::path::Path,
    relay: &str,
    relay_key: RelayId,
    name: Option<String>,
    revoke_all: bool,
    options: Options,
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(default_name);
    if std::io::stdin().is_terminal() {
        eprint!("ferry: type the recovery key, then Enter: ");
    }
    let mut typed = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut typed)
        .context("reading the recovery key from stdin")?;
    let recovery = match RecoveryKey::parse(typed.trim()) {
        Ok(key) => key,
        Err(RecoveryKeyError::Checksum) => bail!(
            "the recovery key does not check out: a character is mistyped (nothing was sent); \
             check it against what you wrote down"
        ),
        Err(e) => bail!("that is not a recovery key: {e} (nothing was sent)"),
    };
    let recovered = account::recover(
        dir, relay, relay_key, &name, &recovery, revoke_all, &options,
    )
    .await?;
    drop(recovery);
    let state = recovered.state;
    line(&format!("user   {}", state.user_id()))?;
    line(&format!(
        "device {} ({})",
        state.device_id(),
        printable(&state.device_name())
    ))?;
    for device in &recovered.revoked {
        line(&format!("revoked: {device}"))?;
    }
    // The relay admits the new device as one of the user's now.
    let client = Client::connect(state, options).await?;
    client.close().await?;
    eprintln!(
        "ferry: {} is a device of the account again; it reads the whole history",
        dir.display()
    );
    Ok(())
}

async fn send(
    dir: &std::path::Path,
    text: &str,
    options: Options,
    timeout: Duration,
) -> anyhow::Result<()> {
    let texts = if text == "-" {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .context("reading stdin")?
    } else {
        vec![text.to_owned()]
    };
    let client = Client::start(ClientState::open(dir)?, options);
    for text in &texts {
        client.enqueue(text.as_bytes()).await?;
    }
    let flushed = client.flush(timeout).await;
    let pending = client.status().pending;
    client.close().await?;
    match flushed {
        Ok(()) => {
            eprintln!("ferry: sent {} event(s)", texts.len());
            Ok(())
        }
        Err(e) => bail!(
            "{e}\n{pending} event(s) kept in the outbox; the next command that reaches the relay sends them"
        ),
    }
}

async fn tail(
    dir: &std::path::Path,
    follow: bool,
    limit: Option<u64>,
    options: Options,
) -> anyhow::Result<()> {
    let mut client = Client::connect(ClientState::open(dir)?, options).await?;
    let mut stdout = std::io::stdout();
    let mut printed = 0;
    let result = loop {
        if limit.is_some_and(|limit| printed >= limit) {
            break Ok(());
        }
        let next = tokio::select! {
            next = client.next_event() => next,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        match next {
            Ok(ClientEvent::Event(event)) => {
                let mut line = event.plaintext.to_vec();
                line.push(b'\n');
                stdout.write_all(&line)?;
                stdout.flush()?;
                printed += 1;
            }
            Ok(ClientEvent::CaughtUp { .. }) if !follow => break Ok(()),
            Ok(_) => {}
            Err(e) if !e.is_permanent() => eprintln!("ferry: skipped: {e}"),
            Err(e) => break Err(e),
        }
    };
    // Saves the cursor: what was printed will not be printed again.
    client.close().await?;
    Ok(result?)
}

async fn devices(dir: &std::path::Path, options: Options, timeout: Duration) -> anyhow::Result<()> {
    let client = Client::connect(ClientState::open(dir)?, options).await?;
    let listed = within(timeout, client.list_devices()).await;
    let this = client.device_id();
    client.close().await?;
    for device in listed? {
        let seen = device.last_seen.map_or_else(|| "never".to_owned(), date);
        let mut line = format!(
            "{}  {:<20}  added {}  last seen {}",
            device.id,
            printable(&device.name),
            date(device.created_at),
            seen,
        );
        if device.revoked {
            line.push_str("  revoked");
        }
        if device.id == this {
            line.push_str("  (this device)");
        }
        println!("{line}");
    }
    Ok(())
}

async fn revoke(
    dir: &std::path::Path,
    prefix: &str,
    options: Options,
    timeout: Duration,
) -> anyhow::Result<()> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.is_empty() {
        bail!("name the device to revoke");
    }
    let client = Client::connect(ClientState::open(dir)?, options).await?;
    let outcome = async {
        let devices = within(timeout, client.list_devices()).await?;
        let found: Vec<&Device> = devices
            .iter()
            .filter(|d| d.id.to_hex().starts_with(&prefix))
            .collect();
        let device = match found.as_slice() {
            [device] => *device,
            [] => bail!("no device of this user has an id starting with {prefix}"),
            _ => bail!("{prefix} matches several devices; give more of the id"),
        };
        within(timeout, client.revoke(device.id)).await?;
        Ok(device.clone())
    }
    .await;
    client.close().await?;
    let device = outcome?;
    println!("revoked {} ({})", device.id, printable(&device.name));
    Ok(())
}

async fn pair(dir: &std::path::Path, yes: bool, options: Options) -> anyhow::Result<()> {
    let state = ClientState::open(dir)?;
    let invitation = pairing::invite(&state, &options).await?;
    let (relay, relay_key) = (state.relay_url().to_owned(), state.relay_key());
    // The pairing holds the keys it needs: other commands may use the folder meanwhile.
    drop(state);
    let code = invitation.code();
    line(&format!("code: {}", code.as_str()))?;
    let minutes = invitation
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |left| left.as_secs().div_ceil(60));
    eprintln!(
        "ferry: on the new device run: ferry --state DIR join --relay {relay} --relay-key {relay_key}"
    );
    eprintln!("ferry: and type the code when it asks");
    eprintln!("ferry: the code works once and expires in about {minutes} minute(s); waiting");
    let mut pending = tokio::select! {
        pending = invitation.joined() => pending?,
        _ = tokio::signal::ctrl_c() => bail!("cancelled; the code is burned"),
    };
    line(&format!("confirm: {}", pending.confirmation()))?;
    if !yes {
        // The keys leave only once the user saw the same string on both screens: a relay in
        // the middle that guessed the code would show another.
        eprint!(
            "ferry: the other device should show the same confirmation.\nAdmit this device? [y/N] "
        );
        // The session stays alive while the user reads and answers (pings go on).
        let answer = pending
            .while_deciding(async {
                tokio::select! {
                    answer = read_line() => answer,
                    _ = tokio::signal::ctrl_c() => Ok(None),
                }
            })
            .await??;
        let admitted = answer
            .map(|a| a.trim().to_ascii_lowercase())
            .is_some_and(|a| a == "y" || a == "yes");
        if !admitted {
            let _ = pending.refuse().await;
            bail!(
                "the device was not admitted; the code is burned, run `ferry pair` again for a new one"
            );
        }
    }
    let paired = pending.admit().await?;
    line(&format!(
        "paired: {} {}",
        paired.device,
        printable(&paired.name)
    ))?;
    Ok(())
}

async fn join(
    dir: &std::path::Path,
    relay: &str,
    relay_key: RelayId,
    code: Option<String>,
    name: Option<String>,
    options: Options,
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(default_name);
    let code = match code {
        Some(code) => Zeroizing::new(code),
        None => {
            eprint!("Pairing code (as shown by `ferry pair`, like 7-402913): ");
            let typed = read_line()
                .await?
                .context("no pairing code given on stdin")?;
            Zeroizing::new(typed)
        }
    };
    let join = Join::start(dir, relay, relay_key, code.trim(), &name, &options).await?;
    line(&format!("confirm: {}", join.confirmation()))?;
    eprintln!("ferry: the other device should show the same confirmation");
    let state = join.finish().await?;
    line(&format!("joined: {}", state.device_id()))?;
    eprintln!(
        "ferry: {} is now device {:?} of user {}",
        dir.display(),
        printable(&state.device_name()),
        state.user_id()
    );
    Ok(())
}

/// Reads one line from stdin (without its line break); `None` at the end of input.
async fn read_line() -> anyhow::Result<Option<String>> {
    let _ = std::io::stderr().flush();
    let read = tokio::task::spawn_blocking(|| {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut text)
            .map(|n| (n > 0).then_some(text))
    });
    let text = read
        .await
        .context("reading stdin")?
        .context("reading stdin")?;
    Ok(text.map(|t| t.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Prints a line on stdout at once: a script reading it may be waiting for it.
fn line(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()
}

/// Runs a request with a deadline.
async fn within<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or(Err(ClientError::Timeout { pending: 0 }))
}

/// The host name, cut to the 64 bytes a device name may have.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry-cli".to_owned());
    let mut end = host.len().min(ferry_client::limits::MAX_DEVICE_NAME_LEN);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    host[..end].to_owned()
}

/// A device name as it may be shown on a terminal.
///
/// Names come from other devices (an admission names whatever its device asked for), so
/// a name could carry terminal escape sequences, or characters that reorder the line.
/// Control characters (C0, DEL, C1) and the bidirectional overrides are shown escaped
/// (`\u{1b}`), and so is a backslash (`\\`), so an escaped name cannot pass for another.
fn printable(name: &str) -> String {
    let mut shown = String::with_capacity(name.len());
    for c in name.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c == '\\' {
            shown.push_str("\\\\");
        } else if c.is_control() || bidi {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// A Unix time as `YYYY-MM-DD HH:MM UTC`.
fn date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let minutes = unix_seconds % 86_400 / 60;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes / 60,
        minutes % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printed_without_terminal_escapes() {
        assert_eq!(printable("laptop"), "laptop");
        assert_eq!(printable("Zoë's phone 📱"), "Zoë's phone 📱");
        // Colour, cursor movement, a title change, a bell, a line break, DEL, a C1 CSI.
        let hostile = "a\u{1b}[31mred\u{1b}[2J\u{1b}]0;title\u{7}\r\nb\u{7f}\u{9b}1m";
        let shown = printable(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "a\\u{1b}[31mred\\u{1b}[2J\\u{1b}]0;title\\u{7}\\u{d}\\u{a}b\\u{7f}\\u{9b}1m"
        );
        // Right-to-left override (the rest of the line shown reversed).
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        // A backslash is escaped too, so no name looks like another's escaped form.
        assert_eq!(printable("a\\u{1b}"), "a\\\\u{1b}");
        assert_ne!(printable("a\\u{1b}"), printable("a\u{1b}"));
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn the_command_line_parses() {
        let cli =
            Cli::try_parse_from(["ferry", "--state", "s", "tail", "--follow", "--limit", "3"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Tail {
                follow: true,
                limit: Some(3)
            })
        ));
        let cli = Cli::try_parse_from([
            "ferry",
            "--state",
            "s",
            "join",
            "--relay",
            "ws://x/ws",
            "--relay-key",
            &"ab".repeat(32),
            "123 456",
        ]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Join { code: Some(code), name: None, .. }) if code == "123 456"
        ));
        let cli = Cli::try_parse_from([
            "ferry",
            "--state",
            "s",
            "join",
            "--relay",
            "ws://x/ws",
            "--relay-key",
            &"ab".repeat(32),
        ]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Join { code: None, .. })
        ));
        assert!(matches!(
            Cli::try_parse_from(["ferry", "--state", "s", "pair"]).map(|c| c.command),
            Ok(Command::Pair { yes: false })
        ));
        assert!(matches!(
            Cli::try_parse_from(["ferry", "--state", "s", "pair", "--yes"]).map(|c| c.command),
            Ok(Command::Pair { yes: true })
        ));
        // The recovery key is never an argument.
        let recover = [
            "ferry",
            "--state",
            "s",
            "recover",
            "--relay",
            "ws://x/ws",
            "--relay-key",
            &"ab".repeat(32),
            "--revoke-all",
        ];
        assert!(matches!(
            Cli::try_parse_from(recover).map(|c| c.command),
            Ok(Command::Recover {
                revoke_all: true,
                name: None,
                ..
            })
        ));
        let mut with_key = recover.to_vec();
        with_key.push("ABCDE-FGHJK");
        assert!(Cli::try_parse_from(with_key).is_err());
        assert!(
            Cli::try_parse_from([
                "ferry",
                "--state",
                "s",
                "init",
                "--relay",
                "ws://x/ws",
                "--relay-key",
                "zz"
            ])
            .is_err()
        );
    }
}

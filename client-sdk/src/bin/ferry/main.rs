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
//!
//! ferry --state DIR handle set NAME     # prints `handle: NAME.NN`; `handle clear`
//! ferry --state DIR whois HANDLE        # prints the user id; exit status 1 when nobody has it
//! ferry --state DIR contact add WHO [NOTE]
//! ferry --state DIR contact accept|decline|cancel|remove|show WHO
//! ferry --state DIR contacts
//! ferry --state DIR block|unblock WHO
//! ferry --state DIR profile set --name NAME [--avatar REF]
//! ferry --state DIR profile show [WHO]
//! ferry --state DIR presence show|hide
//!
//! ferry --state DIR chat WHO [TEXT]     # no TEXT: an interactive chat
//! ferry --state DIR say CONV TEXT
//! ferry --state DIR group create NAME --with WHO[,WHO…]
//! ferry --state DIR group add|remove CONV WHO[,WHO…]; group rename CONV NAME; group leave CONV
//! ferry --state DIR convs
//! ferry --state DIR read CONV [--before SEQ] [--limit N]
//!
//! ferry --state DIR settings archive [on|off]   # without on|off: prints it
//!
//! ferry --state DIR ui [--listen 127.0.0.1:0] [--relay URL --relay-key HEX] [--no-open]
//!                                      # the app in the browser (docs/web-app.md)
//! ```
//!
//! WHO is a handle (`alice.07`), a user id (64 hex digits), or at least 8 leading hex digits
//! of the id of someone in `contacts` (which shows 16 when it knows no handle).
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
//!
//! People commands first read the log up to date (so requests that arrived are verified and
//! their profile keys kept), showing on stderr what they read on the way (people changes,
//! identity warnings, and events, which `tail` then does not show again), then act, then
//! show on stderr what the action brought up (an identity change a lookup noticed).

mod chat;
mod ui;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use ferry_client::pairing::{self, Join};
use ferry_client::people::safety_number;
use ferry_client::{
    Client, ClientError, ClientEvent, ClientHandle, ClientState, Contact, ContactState, Device,
    IdentityChange, Options, PeopleError, PeopleEvent, ProfileBody, RecoveryKey, RecoveryKeyError,
    RelayId, Setting, StateError, UserId, account,
};
use ferry_protocol::people::intro::MAX_NOTE_LEN;
use ferry_protocol::people::{Handle, normalize_name};
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
    /// Print the events that arrived after this device's cursor, one per line, and what
    /// changed about people (requests, contacts, presence, identity warnings) as lines of
    /// text.
    Tail {
        /// Keep printing new events as they arrive (until Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// Stop after this many events (people lines are not counted).
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
    #[command(flatten)]
    People(PeopleCommand),
    #[command(flatten)]
    Chat(chat::ChatCommand),
    /// Settings of your user, which all your devices follow.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// The Ferry app in the browser: serves it on 127.0.0.1 and prints its address (with a
    /// secret token); creates or joins a user on first start. See docs/web-app.md.
    Ui(ui::UiArgs),
}

#[derive(Subcommand, Debug)]
enum SettingsCommand {
    /// Whether your devices archive your conversations' messages in your own log (sealed
    /// with your data key), so a device you pair later reads what was said before it. On
    /// unless you turn it off; without ON|OFF, print it.
    Archive {
        /// `on` or `off`, for all your devices from now on.
        #[arg(value_enum)]
        value: Option<OnOff>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

/// The people commands: handles, contacts, blocks, profiles, presence.
#[derive(Subcommand, Debug)]
enum PeopleCommand {
    /// Your handle, `name.NN`: what other people type to find you.
    #[command(subcommand)]
    Handle(HandleCommand),
    /// Print the user id a handle (`name.NN`) names; fails when nobody has it.
    Whois {
        /// The handle, as `alice.07`.
        handle: String,
    },
    /// Ask someone to be a contact, answer a request, or look at a contact.
    #[command(subcommand)]
    Contact(ContactCommand),
    /// List contacts, requests both ways and blocked users, one per line.
    Contacts,
    /// Block someone: nothing they send reaches you any more, and they are not told.
    Block {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
    },
    /// Unblock someone (they are not a contact again until one of you asks).
    Unblock {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
    },
    /// Your profile (the name your contacts see), or a contact's.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Show or hide when you are online; hidden, you see nobody's presence either.
    #[command(subcommand)]
    Presence(PresenceCommand),
}

#[derive(Subcommand, Debug)]
enum HandleCommand {
    /// Take the handle NAME.NN (the relay picks the number; the same name keeps its
    /// number) and print it.
    Set {
        /// 3 to 24 letters a-z, digits and `_`.
        name: String,
    },
    /// Drop your handle: nobody finds you by it any more (contacts stay).
    Clear,
}

#[derive(Subcommand, Debug)]
enum ContactCommand {
    /// Ask someone to be a contact, with a note only their devices can read.
    Add {
        /// A handle (`alice.07`) or a user id.
        who: String,
        /// A short note (at most 280 bytes).
        note: Option<String>,
    },
    /// Accept someone's request: you become contacts and see each other's profile.
    Accept {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
    },
    /// Decline someone's request (they are told).
    Decline {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
    },
    /// Withdraw your request to someone.
    Cancel {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
    },
    /// Stop being contacts (they are told).
    Remove {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
    },
    /// Show a contact: state, handle, profile, the safety number to compare with them, and
    /// their devices (their device chain verified on this device).
    Show {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
    },
}

#[derive(Subcommand, Debug)]
enum ProfileCommand {
    /// Replace your profile (sealed: only your contacts can read it).
    Set {
        /// The name your contacts see.
        #[arg(long)]
        name: String,
        /// A reference to your avatar picture (left out: none).
        #[arg(long, value_name = "REF")]
        avatar: Option<String>,
    },
    /// Print your profile, or a contact's.
    Show {
        /// A handle, a user id, or the start of one as `contacts` shows it (default: you).
        who: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PresenceCommand {
    /// Let your contacts see when you are online (and see theirs).
    Show,
    /// Hide when you are online; you see nobody's presence either.
    Hide,
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
        Command::People(command) => people_command(&cli.state, command, options, timeout).await,
        Command::Chat(command) => {
            let mut people = People::open(&cli.state, options, timeout).await?;
            let done = chat::run(&mut people, command).await;
            people.finish(done).await
        }
        Command::Ui(args) => ui::run(cli.state, args, options).await,
        Command::Settings(command) => {
            // The log read first: the setting shown is the one the user's devices follow.
            let mut people = People::open(&cli.state, options, timeout).await?;
            let done = settings(&mut people, command).await;
            people.finish(done).await
        }
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
    let mut names = Names::new(client.user_id());
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
            // People changes as lines of text (not counted by --limit).
            Ok(ClientEvent::People(event)) => {
                let text = names.describe(&client.handle(), &event).await;
                writeln!(stdout, "{text}")?;
                stdout.flush()?;
            }
            Ok(ClientEvent::Setting(setting)) => {
                writeln!(stdout, "{}", describe_setting(&setting))?;
                stdout.flush()?;
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

// ----------------------------------------------------------------------------------------
// People.

/// How long a people command goes on reading once it acted, for what the action brought up
/// (an identity change a lookup noticed, a contact's new profile found at the catch-up).
const SETTLE: Duration = Duration::from_millis(150);
/// The fewest leading hex digits of a user id taken in place of the whole id.
const MIN_ID_PREFIX: usize = 8;
/// Hex digits of a user id shown where no handle is known (a prefix WHO accepts).
const SHORT_ID: usize = 16;
/// How long naming a user on screen may wait for the contact list.
const NAME_WAIT: Duration = Duration::from_secs(2);

async fn people_command(
    dir: &std::path::Path,
    command: PeopleCommand,
    options: Options,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut people = People::open(dir, options, timeout).await?;
    let done = match command {
        PeopleCommand::Handle(command) => handle(&mut people, command).await,
        PeopleCommand::Whois { handle } => whois(&mut people, &handle).await,
        PeopleCommand::Contact(command) => contact(&mut people, command).await,
        PeopleCommand::Contacts => contacts(&mut people).await,
        PeopleCommand::Block { who } => block(&mut people, &who, true).await,
        PeopleCommand::Unblock { who } => block(&mut people, &who, false).await,
        PeopleCommand::Profile(command) => profile(&mut people, command).await,
        PeopleCommand::Presence(command) => presence(&mut people, command).await,
    };
    people.finish(done).await
}

/// A people command's client, connected, with the log read up to date: requests that
/// arrived are verified and their profile keys kept in the contact book before it acts.
struct People {
    client: Client,
    dir: PathBuf,
    timeout: Duration,
    names: Names,
    /// The event the action's own notice becomes, which says nothing its output did not.
    echo: Option<PeopleEvent>,
    /// The same for a setting the action made.
    echo_setting: Option<Setting>,
}

impl People {
    /// Connects and reads the log up to date, showing on stderr what it reads on the way:
    /// the cursor moves past it, so `tail` does not show it again.
    async fn open(
        dir: &std::path::Path,
        options: Options,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        // This device's own events too, as `tail` would show them.
        let options = options.own_events(true);
        let client = Client::connect(ClientState::open(dir)?, options).await?;
        let mut people = Self {
            names: Names::new(client.user_id()),
            client,
            dir: dir.to_owned(),
            timeout,
            echo: None,
            echo_setting: None,
        };
        loop {
            match tokio::time::timeout(timeout, people.client.next_event()).await {
                Ok(Ok(ClientEvent::CaughtUp { .. })) => return Ok(people),
                Ok(Ok(event)) => people.note(&event).await,
                Ok(Err(e)) if !e.is_permanent() => eprintln!("ferry: skipped: {e}"),
                Ok(Err(e)) => {
                    people.let_go().await;
                    return Err(e.into());
                }
                Err(_) => {
                    people.let_go().await;
                    bail!(
                        "the relay did not send this user's log within {timeout:?}; \
                         nothing was done, try again"
                    );
                }
            }
        }
    }

    /// Shows on stderr an item read on the way.
    async fn note(&mut self, event: &ClientEvent) {
        match event {
            ClientEvent::Event(event) => eprintln!(
                "ferry: event: {}",
                printable(&String::from_utf8_lossy(&event.plaintext))
            ),
            ClientEvent::People(event) if self.echo.as_ref() == Some(event) => self.echo = None,
            ClientEvent::People(event) => {
                let text = self.names.describe(&self.client.handle(), event).await;
                eprintln!("ferry: {text}");
            }
            ClientEvent::Setting(setting) if self.echo_setting.as_ref() == Some(setting) => {
                self.echo_setting = None;
            }
            ClientEvent::Setting(setting) => eprintln!("ferry: {}", describe_setting(setting)),
            _ => {}
        }
    }

    /// Shows what the action brought up, then lets go of the folder; returns `done`.
    async fn finish(mut self, done: anyhow::Result<()>) -> anyhow::Result<()> {
        // Events found outside the log wait in the client and come first, at once.
        let deadline = tokio::time::Instant::now() + self.timeout;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(SETTLE, self.client.next_event()).await {
                Ok(Ok(event)) => self.note(&event).await,
                Ok(Err(e)) if !e.is_permanent() => eprintln!("ferry: skipped: {e}"),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        self.let_go().await;
        done
    }

    /// Stops the client without `Client::close`, and waits until it let go of the folder.
    ///
    /// A `next_event` cut short by a timeout may have taken a contact notice whose checks
    /// it had not finished; `close` would acknowledge that notice, and it would never be
    /// checked or shown. Dropped, the client saves the cursor of what was shown (every item
    /// but the unfinished one) and stops, releasing the folder's lock.
    async fn let_go(self) {
        let Self {
            client,
            dir,
            timeout,
            ..
        } = self;
        drop(client);
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            match ClientState::open(&dir) {
                Err(StateError::Locked(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => break,
            }
        }
    }

    fn api(&self) -> ClientHandle {
        self.client.handle()
    }

    fn me(&self) -> UserId {
        self.client.user_id()
    }

    /// How `user` is named on screen.
    async fn who(&mut self, user: UserId) -> String {
        self.names.who(&self.client.handle(), user).await
    }

    /// The contact list (contacts, requests both ways, blocks).
    async fn list(&mut self) -> anyhow::Result<Vec<Contact>> {
        let list = within(self.timeout, self.api().contacts()).await?;
        self.names.learn(&list);
        Ok(list)
    }

    /// The user WHO names: a user id (64 hex digits) as it is; a handle (`name.NN`) as the
    /// contact list knows it, else looked up; the start of the id of someone in the list.
    async fn resolve(&mut self, who: &str) -> anyhow::Result<UserId> {
        let text = who.trim();
        let hex = !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
        if hex && text.len() == 64 {
            return Ok(UserId::from_hex(text)?);
        }
        if text.contains('.') {
            let handle = parse_handle(text)?;
            let list = self.list().await?;
            if let Some(known) = list
                .iter()
                .find(|c| c.handle.as_deref() == Some(handle.as_str()))
            {
                return Ok(known.user);
            }
            return within(self.timeout, self.api().whois(&handle))
                .await?
                .ok_or_else(|| PeopleError::NoSuchHandle(handle).into());
        }
        if hex && text.len() >= MIN_ID_PREFIX {
            let prefix = text.to_ascii_lowercase();
            let list = self.list().await?;
            let found: Vec<UserId> = list
                .iter()
                .map(|c| c.user)
                .filter(|user| user.to_hex().starts_with(&prefix))
                .collect();
            return match found.as_slice() {
                [user] => Ok(*user),
                [] => bail!(
                    "nobody among your contacts, requests and blocks has an id starting with \
                     {prefix}; give the whole id (64 hex digits) or their handle"
                ),
                _ => bail!("{prefix} starts several ids; give more of it"),
            };
        }
        if normalize_name(text).is_ok() {
            bail!(
                "give the whole handle, number included (as {text}.07): the name alone finds nobody"
            );
        }
        bail!(
            "{text:?} is neither a handle (name.NN, as alice.07) nor a user id (64 hex digits, \
             or at least {MIN_ID_PREFIX} of them as `ferry contacts` shows)"
        )
    }
}

/// How users are named on screen: by the handle this device found them by, else by the
/// start of their id (which WHO accepts). Handles come from the contact list, asked again
/// (once) for a user not known yet.
struct Names {
    me: UserId,
    handles: BTreeMap<UserId, String>,
    asked: BTreeSet<UserId>,
}

impl Names {
    fn new(me: UserId) -> Self {
        Self {
            me,
            handles: BTreeMap::new(),
            asked: BTreeSet::new(),
        }
    }

    fn learn(&mut self, list: &[Contact]) {
        for contact in list {
            if let Some(handle) = &contact.handle {
                self.handles.insert(contact.user, handle.clone());
            }
        }
    }

    async fn who(&mut self, client: &ClientHandle, user: UserId) -> String {
        if user == self.me {
            return "you".to_owned();
        }
        if !self.handles.contains_key(&user)
            && self.asked.insert(user)
            && let Ok(Ok(list)) = tokio::time::timeout(NAME_WAIT, client.contacts()).await
        {
            self.learn(&list);
        }
        match self.handles.get(&user) {
            Some(handle) => format!("{} ({}…)", printable(handle), &user.to_hex()[..8]),
            None => short_id(user),
        }
    }

    /// A people event as a line of text.
    async fn describe(&mut self, client: &ClientHandle, event: &PeopleEvent) -> String {
        match event {
            PeopleEvent::RequestReceived { from, note } => {
                let who = self.who(client, *from).await;
                match note.as_deref() {
                    Some("") => format!("request from {who}"),
                    Some(note) => format!("request from {who}: \"{}\"", printable(note)),
                    None => format!(
                        "request from {who} (its note is sealed to the devices you had then)"
                    ),
                }
            }
            PeopleEvent::RequestSent { to } => {
                format!("request sent to {}", self.who(client, *to).await)
            }
            PeopleEvent::Accepted { user } => {
                format!("{} is a contact now", self.who(client, *user).await)
            }
            PeopleEvent::Declined { user, by_me } => {
                let who = self.who(client, *user).await;
                if *by_me {
                    format!("you declined the request of {who}")
                } else {
                    format!("{who} declined your request")
                }
            }
            PeopleEvent::Cancelled { user, by_me } => {
                let who = self.who(client, *user).await;
                if *by_me {
                    format!("you withdrew your request to {who}")
                } else {
                    format!("{who} withdrew their request")
                }
            }
            PeopleEvent::Removed { user, by_me } => {
                let who = self.who(client, *user).await;
                if *by_me {
                    format!("you removed {who} from your contacts")
                } else {
                    format!("{who} removed you from their contacts")
                }
            }
            PeopleEvent::Blocked { user } => {
                format!("you blocked {}", self.who(client, *user).await)
            }
            PeopleEvent::Unblocked { user } => {
                format!("you unblocked {}", self.who(client, *user).await)
            }
            PeopleEvent::HandleChanged {
                handle: Some(handle),
            } => format!("your handle is now {}", printable(handle)),
            PeopleEvent::HandleChanged { handle: None } => "you have no handle now".to_owned(),
            PeopleEvent::ProfileChanged { user, profile } if *user == self.me => {
                format!("your profile: {}", shown_profile(profile))
            }
            PeopleEvent::ProfileChanged { user, profile } => format!(
                "profile of {}: {}",
                self.who(client, *user).await,
                shown_profile(profile)
            ),
            PeopleEvent::PresenceVisibility { visible: true } => "presence: shown".to_owned(),
            PeopleEvent::PresenceVisibility { visible: false } => {
                "presence: hidden (you see nobody's either)".to_owned()
            }
            PeopleEvent::PresenceChanged {
                user,
                online,
                last_seen,
            } => {
                let who = self.who(client, *user).await;
                match (online, last_seen) {
                    (true, _) => format!("presence: {who} online"),
                    (false, Some(seen)) => {
                        format!("presence: {who} offline, last seen {}", date(*seen))
                    }
                    (false, None) => format!("presence: {who} offline"),
                }
            }
            PeopleEvent::IdentityChanged { user, change } => {
                let who = self.who(client, *user).await;
                format!(
                    "WARNING: the identity of {who} changed: {}",
                    identity_change(change)
                )
            }
            PeopleEvent::Unverified { user, reason } => format!(
                "WARNING: something claiming to come from {} did not verify and was ignored: {}",
                self.who(client, *user).await,
                printable(reason)
            ),
            other => format!("{other:?}"),
        }
    }
}

/// What an identity change means, for the person reading it.
fn identity_change(change: &IdentityChange) -> String {
    match change {
        IdentityChange::ChainMismatch => "the relay shows a history of their devices that does \
             not extend the one this device verified before; nothing of it was accepted. Ask \
             them, and compare safety numbers (`ferry contact show`)"
            .to_owned(),
        IdentityChange::Recovered { seqno } => format!(
            "they recovered their account with their recovery key (link {seqno} of their \
             device chain), so their devices may be new; make sure with them that it was them"
        ),
        IdentityChange::HandleMoved { handle, now } => format!(
            "the handle {} you knew them by now names {}",
            printable(handle),
            now.map_or_else(
                || "nobody".to_owned(),
                |user| format!("another user, {user}")
            )
        ),
        other => format!("{other:?}"),
    }
}

/// A user id's first hex digits, as `contacts` shows it.
fn short_id(user: UserId) -> String {
    user.to_hex()[..SHORT_ID].to_owned()
}

/// A handle as typed, normalised (`ALICE.07` is `alice.07`), or why it is none.
fn parse_handle(text: &str) -> anyhow::Result<String> {
    let handle: Handle = text
        .parse()
        .map_err(|e| anyhow!("{text:?} is not a handle: {e}"))?;
    Ok(handle.to_string())
}

fn shown_profile(profile: &ProfileBody) -> String {
    let mut shown = format!("\"{}\"", printable(&profile.display_name));
    if let Some(avatar) = &profile.avatar {
        shown.push_str(&format!(", avatar {}", printable(avatar)));
    }
    shown
}

fn display_name(contact: &Contact) -> String {
    contact
        .profile
        .as_ref()
        .map(|p| p.display_name.as_str())
        .filter(|name| !name.is_empty())
        .map_or_else(|| "—".to_owned(), printable)
}

fn presence_of(contact: &Contact) -> String {
    if contact.online {
        "online".to_owned()
    } else if let Some(seen) = contact.last_seen {
        format!("last seen {}", date(seen))
    } else {
        "—".to_owned()
    }
}

fn state_word(state: ContactState) -> &'static str {
    match state {
        ContactState::Contact => "contact",
        ContactState::Incoming => "incoming",
        ContactState::Outgoing => "outgoing",
        ContactState::Blocked => "blocked",
    }
}

async fn handle(people: &mut People, command: HandleCommand) -> anyhow::Result<()> {
    match command {
        HandleCommand::Set { name } => {
            let handle = within(people.timeout, people.api().set_handle(&name)).await?;
            people.echo = Some(PeopleEvent::HandleChanged {
                handle: Some(handle.clone()),
            });
            line(&format!("handle: {handle}"))?;
            eprintln!(
                "ferry: share {handle} with the people who should find you; they type it whole, \
                 number included: ferry contact add {handle}"
            );
        }
        HandleCommand::Clear => {
            within(people.timeout, people.api().clear_handle()).await?;
            people.echo = Some(PeopleEvent::HandleChanged { handle: None });
            line("handle cleared")?;
            eprintln!("ferry: nobody finds you by a handle any more; your contacts stay");
        }
    }
    Ok(())
}

async fn whois(people: &mut People, handle: &str) -> anyhow::Result<()> {
    let handle = parse_handle(handle)?;
    match within(people.timeout, people.api().whois(&handle)).await? {
        Some(user) => line(&user.to_hex())?,
        None => return Err(PeopleError::NoSuchHandle(handle).into()),
    }
    Ok(())
}

async fn contact(people: &mut People, command: ContactCommand) -> anyhow::Result<()> {
    let timeout = people.timeout;
    match command {
        ContactCommand::Add { who, note } => {
            let note = note.unwrap_or_default();
            if note.len() > MAX_NOTE_LEN {
                bail!(
                    "the note is {} bytes; a note has at most {MAX_NOTE_LEN} (nothing was sent)",
                    note.len()
                );
            }
            let user = if who.contains('.') {
                // Found by handle: the contact book keeps the handle for later commands.
                let handle = parse_handle(&who)?;
                within(
                    timeout,
                    people.api().request_contact_by_handle(&handle, &note),
                )
                .await?
            } else {
                let user = people.resolve(&who).await?;
                within(timeout, people.api().request_contact(user, &note)).await?;
                user
            };
            let now = people.list().await?.into_iter().find(|c| c.user == user);
            let shown = people.who(user).await;
            if now.is_some_and(|c| c.state == ContactState::Contact) {
                people.echo = Some(PeopleEvent::Accepted { user });
                line(&format!("{shown} is a contact now"))?;
                eprintln!("ferry: they had asked you too, so this accepted their request");
            } else {
                people.echo = Some(PeopleEvent::RequestSent { to: user });
                line(&format!("request sent to {shown}"))?;
                eprintln!(
                    "ferry: once they accept, you are contacts; `ferry contacts` shows where it stands"
                );
            }
        }
        ContactCommand::Accept { who } => {
            // Accepted by handle, the contact is named by it on every device.
            let user = if who.contains('.') {
                let handle = parse_handle(&who)?;
                within(timeout, people.api().accept_contact_by_handle(&handle)).await?
            } else {
                let user = people.resolve(&who).await?;
                within(timeout, people.api().accept_contact(user)).await?;
                user
            };
            people.echo = Some(PeopleEvent::Accepted { user });
            line(&format!("{} is a contact now", people.who(user).await))?;
        }
        ContactCommand::Decline { who } => {
            let user = people.resolve(&who).await?;
            within(timeout, people.api().decline_contact(user)).await?;
            people.echo = Some(PeopleEvent::Declined { user, by_me: true });
            line(&format!(
                "declined the request of {}",
                people.who(user).await
            ))?;
            eprintln!("ferry: they are told");
        }
        ContactCommand::Cancel { who } => {
            let user = people.resolve(&who).await?;
            within(timeout, people.api().cancel_request(user)).await?;
            people.echo = Some(PeopleEvent::Cancelled { user, by_me: true });
            line(&format!(
                "withdrew your request to {}",
                people.who(user).await
            ))?;
        }
        ContactCommand::Remove { who } => {
            let user = people.resolve(&who).await?;
            within(timeout, people.api().remove_contact(user)).await?;
            people.echo = Some(PeopleEvent::Removed { user, by_me: true });
            line(&format!(
                "removed {} from your contacts",
                people.who(user).await
            ))?;
            eprintln!("ferry: they are told");
        }
        ContactCommand::Show { who } => return show(people, &who).await,
    }
    Ok(())
}

/// `contact show`: what this device knows of one user, the safety number, their devices.
async fn show(people: &mut People, who: &str) -> anyhow::Result<()> {
    const INDENT: usize = 15;
    let user = people.resolve(who).await?;
    let entry = people.list().await?.into_iter().find(|c| c.user == user);
    let verified = within(people.timeout, people.api().verify_contact(user)).await;
    let mut out = Vec::new();
    let mut field = |label: &str, value: &str| out.push(format!("{label:<INDENT$}{value}"));
    field("user", &user.to_hex());
    let handle = entry.as_ref().and_then(|c| c.handle.as_deref());
    field("handle", &handle.map_or_else(|| "—".to_owned(), printable));
    let state = match entry.as_ref().map(|c| c.state) {
        Some(ContactState::Contact) => "contact",
        Some(ContactState::Incoming) => "incoming: they asked you (ferry contact accept)",
        Some(ContactState::Outgoing) => "outgoing: you asked them, no answer yet",
        Some(ContactState::Blocked) => "blocked by you",
        None => "none: not a contact",
    };
    field("state", state);
    if let Some(contact) = &entry {
        field("name", &display_name(contact));
        if let Some(avatar) = contact.profile.as_ref().and_then(|p| p.avatar.as_deref()) {
            field("avatar", &printable(avatar));
        }
        field("presence", &presence_of(contact));
    }
    // Twelve groups of five digits, four to a line, as both screens show them.
    let number = safety_number(&people.me(), &user);
    let groups: Vec<&str> = number.split(' ').collect();
    for (i, row) in groups.chunks(4).enumerate() {
        field(if i == 0 { "safety number" } else { "" }, &row.join(" "));
    }
    match &verified {
        Ok(devices) if devices.is_empty() => field("devices", "— (no active device)"),
        Ok(devices) => {
            for (i, device) in devices.iter().enumerate() {
                field(if i == 0 { "devices" } else { "" }, &device.to_hex());
            }
        }
        Err(_) => field("devices", "NOT VERIFIED (see below)"),
    }
    for text in &out {
        line(text.trim_end())?;
    }
    verified?;
    eprintln!(
        "ferry: compare the safety number with theirs (in person, or on a call you trust): the \
         same digits on both screens mean each of you holds the other's real key"
    );
    Ok(())
}

async fn contacts(people: &mut People) -> anyhow::Result<()> {
    let list = people.list().await?;
    if list.is_empty() {
        eprintln!("ferry: no contacts or requests yet; `ferry contact add HANDLE` asks someone");
    }
    for contact in &list {
        let who = contact
            .handle
            .as_deref()
            .map_or_else(|| short_id(contact.user), printable);
        line(&format!(
            "{:<8}  {who:<24}  {:<24}  {}",
            state_word(contact.state),
            display_name(contact),
            presence_of(contact)
        ))?;
    }
    if list.iter().any(|c| c.state == ContactState::Incoming) {
        eprintln!(
            "ferry: answer a request with `ferry contact accept WHO` or `ferry contact decline WHO`"
        );
    }
    Ok(())
}

async fn block(people: &mut People, who: &str, block: bool) -> anyhow::Result<()> {
    let user = people.resolve(who).await?;
    let shown = people.who(user).await;
    if block {
        within(people.timeout, people.api().block(user)).await?;
        people.echo = Some(PeopleEvent::Blocked { user });
        line(&format!("blocked {shown}"))?;
        eprintln!(
            "ferry: nothing of theirs reaches you now (requests, profile, presence), and they are \
             not told: to them you look like someone who does not answer"
        );
    } else {
        within(people.timeout, people.api().unblock(user)).await?;
        people.echo = Some(PeopleEvent::Unblocked { user });
        line(&format!("unblocked {shown}"))?;
        eprintln!("ferry: to be contacts again, one of you asks (ferry contact add)");
    }
    Ok(())
}

async fn profile(people: &mut People, command: ProfileCommand) -> anyhow::Result<()> {
    match command {
        ProfileCommand::Set { name, avatar } => {
            let body = ProfileBody {
                display_name: name,
                avatar,
            };
            body.check()
                .map_err(|e| anyhow!("{e} (nothing was sent)"))?;
            within(people.timeout, people.api().set_profile(&body)).await?;
            people.echo = Some(PeopleEvent::ProfileChanged {
                user: people.me(),
                profile: body.clone(),
            });
            line(&format!("profile saved: {}", shown_profile(&body)))?;
            eprintln!("ferry: it is sealed with your profile key: only your contacts read it");
        }
        ProfileCommand::Show { who } => {
            let user = match who {
                Some(who) => people.resolve(&who).await?,
                None => people.me(),
            };
            match within(people.timeout, people.api().profile(user)).await? {
                Some(body) => {
                    let name = Some(body.display_name.as_str()).filter(|n| !n.is_empty());
                    line(&format!(
                        "name    {}",
                        name.map_or_else(|| "—".to_owned(), printable)
                    ))?;
                    if let Some(avatar) = &body.avatar {
                        line(&format!("avatar  {}", printable(avatar)))?;
                    }
                }
                None if user == people.me() => {
                    eprintln!(
                        "ferry: you have no profile yet; `ferry profile set --name NAME` makes one"
                    );
                }
                None => eprintln!(
                    "ferry: no profile of {} to show: they have none yet, or this device does not \
                     hold their profile key (it comes with their request or their acceptance)",
                    people.who(user).await
                ),
            }
        }
    }
    Ok(())
}

async fn presence(people: &mut People, command: PresenceCommand) -> anyhow::Result<()> {
    let visible = matches!(command, PresenceCommand::Show);
    within(people.timeout, people.api().set_presence_visible(visible)).await?;
    people.echo = Some(PeopleEvent::PresenceVisibility { visible });
    if visible {
        line("presence shown")?;
        eprintln!("ferry: contacts who show theirs see when you are online, and you see theirs");
    } else {
        line("presence hidden")?;
        eprintln!("ferry: nobody sees when you are online, and you see nobody's presence either");
    }
    Ok(())
}

async fn settings(people: &mut People, command: SettingsCommand) -> anyhow::Result<()> {
    match command {
        SettingsCommand::Archive { value: None } => {
            line(&format!(
                "archive {}",
                on_off(people.api().archive_history())
            ))?;
        }
        SettingsCommand::Archive { value: Some(value) } => {
            let archive = value == OnOff::On;
            within(people.timeout, people.api().set_archive_history(archive)).await?;
            people.echo_setting = Some(Setting::ArchiveHistory(archive));
            line(&format!("archive {}", on_off(archive)))?;
            if archive {
                eprintln!(
                    "ferry: your devices archive your conversations' messages from now on; a \
                     device you pair later reads them"
                );
            } else {
                eprintln!(
                    "ferry: your devices stop archiving your conversations' messages (what is \
                     archived stays); a device you pair later reads only what is said after it \
                     joins"
                );
            }
        }
    }
    Ok(())
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// A setting changed on another device, as a line of text.
fn describe_setting(setting: &Setting) -> String {
    match setting {
        Setting::ArchiveHistory(on) => format!(
            "your devices archive your conversations: {} (set on one of them)",
            on_off(*on)
        ),
        Setting::DeviceName { device, name } => format!(
            "device {} is called {} now (renamed on one of your devices)",
            &device.to_string()[..16],
            printable(name)
        ),
        other => format!("a setting changed: {other:?}"),
    }
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
    fn handles_are_normalised_and_identity_changes_say_what_to_do() {
        assert_eq!(parse_handle(" @ALICE.07 ").unwrap(), "alice.07");
        assert!(parse_handle("alice").is_err());
        assert!(parse_handle("b\u{43e}b.01").is_err());
        let user = UserId([7; 32]);
        assert_eq!(short_id(user), "0707070707070707");
        let moved = identity_change(&IdentityChange::HandleMoved {
            handle: "alice.07".into(),
            now: Some(user),
        });
        assert!(
            moved.contains("alice.07") && moved.contains(&user.to_hex()),
            "{moved}"
        );
        let recovered = identity_change(&IdentityChange::Recovered { seqno: 3 });
        assert!(recovered.contains("recovery key"), "{recovered}");
        assert!(identity_change(&IdentityChange::ChainMismatch).contains("safety numbers"));
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
        // The people commands.
        let parse = |args: &[&str]| {
            let mut all = vec!["ferry", "--state", "s"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|c| c.command)
        };
        assert!(matches!(
            parse(&["contact", "add", "alice.07", "hi there"]),
            Ok(Command::People(PeopleCommand::Contact(ContactCommand::Add { who, note: Some(note) })))
                if who == "alice.07" && note == "hi there"
        ));
        assert!(matches!(
            parse(&["contact", "add", "alice.07"]),
            Ok(Command::People(PeopleCommand::Contact(
                ContactCommand::Add { note: None, .. }
            )))
        ));
        assert!(matches!(
            parse(&["handle", "set", "alice"]),
            Ok(Command::People(PeopleCommand::Handle(HandleCommand::Set { name }))) if name == "alice"
        ));
        assert!(matches!(
            parse(&["profile", "set", "--name", "Alice", "--avatar", "blob:1"]),
            Ok(Command::People(PeopleCommand::Profile(ProfileCommand::Set { name, avatar: Some(avatar) })))
                if name == "Alice" && avatar == "blob:1"
        ));
        assert!(parse(&["profile", "set"]).is_err(), "--name is required");
        assert!(matches!(
            parse(&["profile", "show"]),
            Ok(Command::People(PeopleCommand::Profile(
                ProfileCommand::Show { who: None }
            )))
        ));
        assert!(matches!(
            parse(&["presence", "hide"]),
            Ok(Command::People(PeopleCommand::Presence(
                PresenceCommand::Hide
            )))
        ));
        assert!(matches!(
            parse(&["contacts"]),
            Ok(Command::People(PeopleCommand::Contacts))
        ));
        assert!(matches!(
            parse(&["unblock", "bob.12"]),
            Ok(Command::People(PeopleCommand::Unblock { who })) if who == "bob.12"
        ));
        assert!(parse(&["presence"]).is_err());
        assert!(matches!(
            parse(&["settings", "archive", "off"]),
            Ok(Command::Settings(SettingsCommand::Archive {
                value: Some(OnOff::Off)
            }))
        ));
        assert!(matches!(
            parse(&["settings", "archive"]),
            Ok(Command::Settings(SettingsCommand::Archive { value: None }))
        ));
        assert!(parse(&["settings", "archive", "maybe"]).is_err());

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

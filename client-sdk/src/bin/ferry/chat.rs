//! The conversation commands: 1:1 chats, groups, the conversation list and history.
//!
//! ```text
//! ferry --state DIR chat WHO [TEXT]            # TEXT: send and exit; none: interactive
//! ferry --state DIR say CONV TEXT              # to any conversation (a group)
//! ferry --state DIR group create NAME --with WHO[,WHO…]
//! ferry --state DIR group add|remove CONV WHO[,WHO…]
//! ferry --state DIR group rename CONV NAME
//! ferry --state DIR group leave CONV
//! ferry --state DIR convs                      # id, unread, title or peer, members
//! ferry --state DIR read CONV [--before SEQ] [--limit N]
//! ferry --state DIR send-file CONV PATH        # encrypted here, then uploaded
//! ferry --state DIR get-file CONV SEQ [--out PATH] [--force]
//! ```
//!
//! CONV is a conversation id (32 hex digits), at least 6 leading digits of one as `convs`
//! shows it, or a group's title. Like the people commands, these first read the log and
//! every conversation up to date. Messages print as `SEQ  WHO: TEXT`; the interactive chat
//! also shows typing and read markers as they happen, on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use ferry_client::{
    CallEvent, CallOutcome, CallRecord, ClientEvent, Content, ConvId, ConversationEvent,
    ConversationInfo, GroupKind, Progress, StoredMessage, UserId,
};

use super::{People, line, printable, within};

/// The fewest leading hex digits of a conversation id taken in place of the whole id.
const MIN_CONV_PREFIX: usize = 6;
/// Hex digits of a conversation id shown by `convs`.
const SHORT_CONV: usize = 12;
/// Lines of history the interactive chat shows first.
const BACKLOG: usize = 20;

#[derive(Subcommand, Debug)]
pub(crate) enum ChatCommand {
    /// Talk with a contact: with TEXT, send it and exit; without, an interactive chat
    /// (each line you type is sent; Ctrl-D or Ctrl-C ends it).
    Chat {
        /// A handle, a user id, or the start of one as `contacts` shows it.
        who: String,
        /// The message (several words are joined with spaces).
        text: Vec<String>,
    },
    /// Send a message to a conversation (a group, say).
    Say {
        /// A conversation id, its start as `convs` shows it, or a group's title.
        conv: String,
        /// The message.
        text: Vec<String>,
    },
    /// Create a group, add or remove members, rename it, leave it.
    #[command(subcommand)]
    Group(GroupCommand),
    /// List your conversations: id, unread messages, title or peer, members.
    Convs,
    /// Print a conversation's messages that this device holds, oldest first.
    Read {
        /// A conversation id, its start as `convs` shows it, or a group's title.
        conv: String,
        /// Only messages before this one (a SEQ as printed).
        #[arg(long)]
        before: Option<u64>,
        /// At most this many (the newest of them).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Send a file to a conversation: encrypted on this device, uploaded, then announced in
    /// a message (`read` shows it as `[file NAME, SIZE]`).
    SendFile {
        /// A conversation id, its start as `convs` shows it, or a group's title.
        conv: String,
        /// The file.
        path: PathBuf,
    },
    /// Save the file of a message (its SEQ as `read` prints it); it is written only once
    /// it is downloaded whole and checked.
    GetFile {
        /// A conversation id, its start as `convs` shows it, or a group's title.
        conv: String,
        /// The message.
        seq: u64,
        /// Where: a file, or a folder to save it in under the sender's name for it
        /// (default: the current folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum GroupCommand {
    /// Create a group named NAME with the contacts given (you are its admin).
    Create {
        /// The group's title, which every member sees (encrypted like messages).
        name: String,
        /// Contacts to add, separated by commas.
        #[arg(long, value_delimiter = ',', required = true)]
        with: Vec<String>,
    },
    /// Add contacts (all their devices) to a group you administer.
    Add {
        /// The group.
        conv: String,
        /// Contacts, separated by commas.
        #[arg(value_delimiter = ',', required = true)]
        who: Vec<String>,
    },
    /// Remove members (all their devices) from a group you administer.
    Remove {
        /// The group.
        conv: String,
        /// Members, separated by commas.
        #[arg(value_delimiter = ',', required = true)]
        who: Vec<String>,
    },
    /// Give a group a new title.
    Rename {
        /// The group.
        conv: String,
        /// The title.
        name: String,
    },
    /// Leave a group, with all your devices.
    Leave {
        /// The group.
        conv: String,
    },
}

/// Runs a conversation command on a connected, caught-up client.
pub(crate) async fn run(people: &mut People, command: ChatCommand) -> anyhow::Result<()> {
    // Members are named by the handles the contact list knows.
    people.list().await?;
    match command {
        ChatCommand::Chat { who, text } => {
            let user = people.resolve(&who).await?;
            let conv = one_to_one(people, user).await?;
            if text.is_empty() {
                interactive(people, conv).await
            } else {
                say(people, conv, &text.join(" ")).await
            }
        }
        ChatCommand::Say { conv, text } => {
            let conv = find(people, &conv).await?;
            say(people, conv, &text.join(" ")).await
        }
        ChatCommand::Group(command) => group(people, command).await,
        ChatCommand::Convs => convs(people).await,
        ChatCommand::Read {
            conv,
            before,
            limit,
        } => {
            let conv = find(people, &conv).await?;
            let messages = people.api().history(conv, before.unwrap_or(0), limit).await;
            if messages.is_empty() {
                eprintln!("ferry: no messages on this device for this conversation");
            }
            for message in &messages {
                let shown = shown_message(people, message).await;
                line(&shown)?;
            }
            Ok(())
        }
        ChatCommand::SendFile { conv, path } => {
            let conv = find(people, &conv).await?;
            send_file(people, conv, &path).await
        }
        ChatCommand::GetFile {
            conv,
            seq,
            out,
            force,
        } => {
            let conv = find(people, &conv).await?;
            get_file(people, conv, seq, out, force).await
        }
    }
}

async fn send_file(people: &mut People, conv: ConvId, path: &Path) -> anyhow::Result<()> {
    let name = path.display().to_string();
    let shown = ShownProgress::new(format!("sending {name}"));
    let seq = people
        .api()
        .send_file(conv, path, |p| shown.show(p))
        .await
        .with_context(|| format!("sending {name}"))?;
    line(&format!("sent: {} {seq}", conv.to_hex()))?;
    Ok(())
}

async fn get_file(
    people: &mut People,
    conv: ConvId,
    seq: u64,
    out: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let message = people
        .api()
        .history(conv, seq.saturating_add(1), 1)
        .await
        .into_iter()
        .find(|m| m.conv_seq == seq);
    let Some(message) = message else {
        bail!("no message {seq} on this device in this conversation (see `ferry read`)");
    };
    let Content::File(file) = &message.content else {
        bail!("message {seq} holds no file");
    };
    let out = out.unwrap_or_else(|| PathBuf::from("."));
    let dest = if out.is_dir() {
        out.join(file.safe_name())
    } else {
        out
    };
    if dest.exists() && !force {
        bail!("{} exists already (--force replaces it)", dest.display());
    }
    let shown = ShownProgress::new(format!("receiving {}", file.safe_name()));
    people
        .api()
        .save_file(file, &dest, |p| shown.show(p))
        .await
        .with_context(|| format!("receiving {}", file.safe_name()))?;
    line(&format!(
        "saved: {} ({})",
        dest.display(),
        size_in_words(file.size)
    ))?;
    Ok(())
}

/// Progress on stderr, a line every tenth of the way.
struct ShownProgress {
    what: String,
    shown: std::sync::atomic::AtomicU64,
}

impl ShownProgress {
    fn new(what: String) -> Self {
        Self {
            what,
            shown: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    fn show(&self, progress: Progress) {
        let tenth = (progress.done * 10)
            .checked_div(progress.total)
            .unwrap_or(10);
        if self.shown.swap(tenth, std::sync::atomic::Ordering::Relaxed) != tenth {
            eprintln!(
                "ferry: {}: {}% of {}",
                self.what,
                tenth * 10,
                size_in_words(progress.total)
            );
        }
    }
}

/// A byte count as people read it.
fn size_in_words(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else {
        format!("{:.1} GiB", b / KIB / KIB / KIB)
    }
}

async fn say(people: &mut People, conv: ConvId, text: &str) -> anyhow::Result<()> {
    if text.trim().is_empty() {
        bail!("nothing to send: give the message after the conversation");
    }
    let seq = within(people.timeout, people.api().send_text(conv, text)).await?;
    line(&format!("sent: {} {seq}", conv.to_hex()))?;
    Ok(())
}

async fn group(people: &mut People, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { name, with } => {
            let users = resolve_all(people, &with).await?;
            let conv = within(
                people.timeout,
                people.api().create_group(Some(&name), &users),
            )
            .await?;
            line(&format!("conversation: {}", conv.to_hex()))?;
        }
        GroupCommand::Add { conv, who } => {
            let conv = find(people, &conv).await?;
            let users = resolve_all(people, &who).await?;
            within(people.timeout, people.api().add_members(conv, &users)).await?;
            eprintln!("ferry: added");
        }
        GroupCommand::Remove { conv, who } => {
            let conv = find(people, &conv).await?;
            let users = resolve_all(people, &who).await?;
            within(people.timeout, people.api().remove_members(conv, &users)).await?;
            eprintln!("ferry: removed");
        }
        GroupCommand::Rename { conv, name } => {
            let conv = find(people, &conv).await?;
            within(people.timeout, people.api().rename(conv, &name)).await?;
            eprintln!("ferry: renamed");
        }
        GroupCommand::Leave { conv } => {
            let conv = find(people, &conv).await?;
            within(people.timeout, people.api().leave(conv)).await?;
            eprintln!(
                "ferry: leaving; another member's device takes you out of the group when it \
                 next reads it"
            );
        }
    }
    Ok(())
}

async fn resolve_all(people: &mut People, who: &[String]) -> anyhow::Result<Vec<UserId>> {
    let mut users = Vec::with_capacity(who.len());
    for one in who.iter().filter(|w| !w.trim().is_empty()) {
        users.push(people.resolve(one).await?);
    }
    if users.is_empty() {
        bail!("name at least one contact");
    }
    Ok(users)
}

async fn list(people: &mut People) -> anyhow::Result<Vec<ConversationInfo>> {
    Ok(within(people.timeout, people.api().conversations()).await?)
}

/// The 1:1 with `user`, opened if there is none.
async fn one_to_one(people: &mut People, user: UserId) -> anyhow::Result<ConvId> {
    if let Some(conv) = within(people.timeout, people.api().find_chat(user)).await? {
        return Ok(conv);
    }
    let conv = within(people.timeout, people.api().start_chat(user))
        .await
        .context("opening the conversation (is this user a contact?)")?;
    eprintln!("ferry: new conversation {}", conv.to_hex());
    Ok(conv)
}

/// The conversation CONV names: an id, the start of one, or a title.
async fn find(people: &mut People, conv: &str) -> anyhow::Result<ConvId> {
    let text = conv.trim();
    let infos = list(people).await?;
    let hex = text.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && text.len() == 32 {
        return Ok(ConvId::from_hex(text)?);
    }
    let found: Vec<ConvId> = if hex && text.len() >= MIN_CONV_PREFIX {
        let prefix = text.to_ascii_lowercase();
        infos
            .iter()
            .filter(|i| i.conv.to_hex().starts_with(&prefix))
            .map(|i| i.conv)
            .collect()
    } else {
        infos
            .iter()
            .filter(|i| i.title.as_deref() == Some(text))
            .map(|i| i.conv)
            .collect()
    };
    match found.as_slice() {
        [conv] => Ok(*conv),
        [] => bail!(
            "no conversation of yours is {text:?}: give its id (at least {MIN_CONV_PREFIX} hex \
             digits as `ferry convs` shows them) or a group's title"
        ),
        _ => bail!("{text:?} names several conversations; give more of the id"),
    }
}

async fn convs(people: &mut People) -> anyhow::Result<()> {
    let infos = list(people).await?;
    if infos.is_empty() {
        eprintln!("ferry: no conversations yet; `ferry chat WHO TEXT` starts one");
    }
    let me = people.me();
    for info in infos {
        let mut others = Vec::new();
        for member in info.summary.members.iter().filter(|m| m.user != me) {
            others.push(people.who(member.user).await);
        }
        let name = match (&info.title, info.policy.as_ref().map(|p| p.kind)) {
            (Some(title), _) => printable(title),
            (None, Some(GroupKind::OneToOne)) => others.join(", "),
            (None, _) => "(untitled group)".to_owned(),
        };
        line(&format!(
            "{}  {:>4} unread  {name:<24}  {}",
            &info.conv.to_hex()[..SHORT_CONV],
            info.summary.unread,
            others.join(", ")
        ))?;
    }
    Ok(())
}

async fn shown_message(people: &mut People, message: &StoredMessage) -> String {
    let who = people.who(message.user).await;
    let said = match &message.content {
        Content::Text(text) => printable(text),
        Content::Call(record) => format!("[{}]", describe_call(record)),
        Content::File(file) => format!(
            "[file {}, {}]",
            printable(&file.safe_name()),
            size_in_words(file.size)
        ),
    };
    format!("{:>5}  {who}: {said}", message.conv_seq)
}

/// A call record in words (calls themselves need an app with WebRTC).
fn describe_call(record: &CallRecord) -> String {
    let kind = if record.video { "video call" } else { "call" };
    match record.outcome {
        CallOutcome::Missed => format!("missed {kind}"),
        CallOutcome::Declined => format!("{kind}, declined"),
        CallOutcome::Busy => format!("{kind}, busy"),
        CallOutcome::Completed { seconds } => {
            format!("{kind}, {}:{:02}", seconds / 60, seconds % 60)
        }
    }
}

/// The interactive chat: the last lines, then what arrives as it arrives, and every line
/// typed sent. Messages shown are marked read.
async fn interactive(people: &mut People, conv: ConvId) -> anyhow::Result<()> {
    let backlog = people.api().history(conv, 0, BACKLOG).await;
    for message in &backlog {
        let shown = shown_message(people, message).await;
        line(&shown)?;
    }
    if let Some(last) = backlog.last() {
        people.api().mark_read(conv, last.conv_seq).await?;
    }
    eprintln!("ferry: type a message and press Enter to send it; Ctrl-D ends the chat");
    let mut lines = stdin_lines();
    loop {
        tokio::select! {
            typed = lines.recv() => {
                let Some(text) = typed else { break };
                if text.trim().is_empty() {
                    continue;
                }
                let api = people.api();
                match within(people.timeout, api.send_text(conv, &text)).await {
                    Ok(seq) => line(&format!("{seq:>5}  you: {}", printable(&text)))?,
                    Err(e) => eprintln!("ferry: not sent: {e}"),
                }
            }
            event = people.client.next_event() => match event {
                Ok(ClientEvent::Conversation(event)) => show(people, conv, event).await?,
                Ok(ClientEvent::Call(CallEvent::Incoming { from, video, .. })) => {
                    // The terminal has no microphone or camera: say so, let it ring out.
                    let who = people.who(from).await;
                    let kind = if video { "a video call" } else { "a call" };
                    eprintln!("ferry: {who} is calling ({kind}); answer in an app with calls");
                }
                Ok(other) => people.note(&other).await,
                Err(e) if !e.is_permanent() => eprintln!("ferry: {e}"),
                Err(e) => return Err(e.into()),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

/// What the interactive chat shows of an event of its conversation.
async fn show(people: &mut People, conv: ConvId, event: ConversationEvent) -> anyhow::Result<()> {
    let me = people.me();
    match event {
        ConversationEvent::Message(message) if message.conv == conv => {
            let shown = shown_message(people, &message).await;
            line(&shown)?;
            if message.user != me {
                people.api().mark_read(conv, message.conv_seq).await?;
            }
        }
        ConversationEvent::Typing {
            conv: c,
            user,
            typing,
        } if c == conv && user != me => {
            let who = people.who(user).await;
            let state = if typing {
                "is typing…"
            } else {
                "stopped typing"
            };
            eprintln!("ferry: {who} {state}");
        }
        ConversationEvent::ReadBy { conv: c, user, seq } if c == conv && user != me => {
            let who = people.who(user).await;
            eprintln!("ferry: {who} read up to {seq}");
        }
        ConversationEvent::MembersChanged {
            conv: c,
            added,
            removed,
        } if c == conv => {
            for user in added {
                let who = people.who(user).await;
                eprintln!("ferry: {who} joined");
            }
            for user in removed {
                let who = people.who(user).await;
                eprintln!("ferry: {who} left");
            }
        }
        ConversationEvent::Left { conv: c } if c == conv => {
            bail!("you are no longer in this conversation");
        }
        _ => {}
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Lines typed on stdin, read by a thread of their own (a read cannot be cancelled).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (send, receive) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut text = String::new();
        while let Ok(n) = std::io::BufRead::read_line(&mut stdin.lock(), &mut text) {
            if n == 0 {
                break;
            }
            let line = text.trim_end_matches(['\r', '\n']).to_owned();
            text.clear();
            if send.blocking_send(line).is_err() {
                break;
            }
        }
    });
    receive
}

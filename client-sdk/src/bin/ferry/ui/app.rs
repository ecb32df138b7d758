//! What `ferry ui` holds while it runs: the mode (first start, joining, running), the client,
//! the event stream to the page, the sync log shown, pairing in progress and names to show.
//!
//! ```text
//!  Client::next_event ─▶ pump ─▶ json::event ─▶ broadcast ─▶ every open /api/events
//!  Client status      ─▶ watch (every 250 ms, on change) ─┘
//!  page ─POST /api/…─▶ api ─▶ ClientHandle (the SDK does every bit of cryptography)
//! ```

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::pairing::{Join, PendingDevice};
use ferry_client::{Client, ClientEvent, ClientHandle, ClientState, Options, ProfileBody};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::guard::Guard;
use super::http::sse_message;
use super::json::{self, Names};

/// Log events kept for the sync view.
const LOG_KEPT: usize = 500;
/// How often the connection status is looked at.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Where the app stands.
#[derive(Clone)]
pub enum Mode {
    /// No state folder yet: the page offers to create a user or join one.
    Setup,
    /// A pairing code was typed; the other device has not admitted this one yet.
    Joining,
    /// A device of a user, with its client running.
    Running(ClientHandle),
}

/// Values the page fills the first-start forms with (`--relay`, `--relay-key`).
#[derive(Debug, Default, Clone)]
pub struct Defaults {
    pub relay_url: Option<String>,
    pub relay_key: Option<String>,
}

/// What this device knows of its own user that the SDK does not keep for the app: kept in
/// `ui.json` in the state folder (nothing secret).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Prefs {
    pub handle: Option<String>,
    pub name: Option<String>,
    pub presence_visible: Option<bool>,
}

/// This device as its state folder says.
#[derive(Debug, Clone)]
pub struct ThisDevice {
    pub relay_url: String,
    pub relay_key: String,
    pub name: String,
}

/// A pairing this device started (`POST /api/pair/invite`).
#[derive(Default)]
pub struct Pairing {
    pub join_uri: Option<String>,
    pub waiting: Option<tokio::task::AbortHandle>,
    pub pending: Option<PendingDevice>,
}

pub struct App {
    pub dir: PathBuf,
    pub options: Options,
    pub defaults: Defaults,
    pub guard: Guard,
    mode: Mutex<Mode>,
    events: broadcast::Sender<Bytes>,
    status: Mutex<Value>,
    log: Mutex<VecDeque<Value>>,
    names: Mutex<Names>,
    prefs: Mutex<Prefs>,
    this: Mutex<Option<ThisDevice>>,
    pub pairing: Mutex<Pairing>,
    uploads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A std mutex whose holder never panics mid-change here: a poisoned one is used as is.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    pub fn new(dir: PathBuf, options: Options, defaults: Defaults, guard: Guard) -> Arc<Self> {
        let prefs = std::fs::read(dir.join("ui.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            dir,
            options,
            defaults,
            guard,
            mode: Mutex::new(Mode::Setup),
            events,
            status: Mutex::new(
                json!({ "connected": false, "pending": 0, "last_error": null, "stopped": null }),
            ),
            log: Mutex::new(VecDeque::new()),
            names: Mutex::new(Names::default()),
            prefs: Mutex::new(prefs),
            this: Mutex::new(None),
            pairing: Mutex::new(Pairing::default()),
            uploads: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn mode(&self) -> Mode {
        lock(&self.mode).clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }

    /// Sends `value` to every open event stream.
    pub fn publish(&self, value: &Value) {
        // No page listening is fine: it fetches what it shows when it opens.
        let _ = self.events.send(sse_message(value));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.events.subscribe()
    }

    pub fn status(&self) -> Value {
        lock(&self.status).clone()
    }

    /// The connection status as the event stream says it.
    pub fn status_event(&self) -> Value {
        status_event(self.status())
    }

    pub fn log(&self) -> Vec<Value> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Names to show: contacts' as learned, and this user's own from its preferences.
    pub fn names(&self) -> Names {
        Names {
            my_name: lock(&self.prefs).name.clone(),
            ..lock(&self.names).clone()
        }
    }

    /// Learns the names of `contacts` (profile names, handles); returns all names known.
    pub fn learn_names(&self, contacts: &[ferry_client::Contact]) -> Names {
        lock(&self.names).learn(contacts);
        self.names()
    }

    pub fn prefs(&self) -> Prefs {
        lock(&self.prefs).clone()
    }

    pub fn this_device(&self) -> Option<ThisDevice> {
        lock(&self.this).clone()
    }

    pub fn renamed(&self, name: &str) {
        if let Some(this) = lock(&self.this).as_mut() {
            name.clone_into(&mut this.name);
        }
    }

    pub fn next_upload(&self) -> u64 {
        self.uploads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// Changes the saved preferences and writes them (a failure is logged: they are a
    /// convenience, learned again from the log's events).
    pub fn update_prefs(&self, change: impl FnOnce(&mut Prefs)) {
        let prefs = {
            let mut prefs = lock(&self.prefs);
            change(&mut prefs);
            prefs.clone()
        };
        let path = self.dir.join("ui.json");
        if let Err(error) = serde_json::to_vec(&prefs)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&path, bytes))
        {
            eprintln!("ferry: could not save ui.json: {error}");
        }
    }

    /// Opens the state folder if there is one and starts its client.
    pub fn open_existing(self: &Arc<Self>) -> anyhow::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let state = ClientState::open(&self.dir)?;
        self.start_client(state);
        Ok(())
    }

    /// Runs the client of `state` and switches to [`Mode::Running`].
    pub fn start_client(self: &Arc<Self>, state: ClientState) {
        *lock(&self.this) = Some(ThisDevice {
            relay_url: state.relay_url().to_owned(),
            relay_key: state.relay_key().to_string(),
            name: state.device_name(),
        });
        // A log viewer shows this device's own events too.
        let client = Client::start(state, self.options.clone().own_events(true));
        let handle = client.handle();
        lock(&self.names).me = Some(handle.user_id());
        self.set_mode(Mode::Running(handle.clone()));
        tokio::spawn(pump(Arc::clone(self), client));
        tokio::spawn(watch_status(Arc::clone(self), handle.clone()));
        tokio::spawn(refresh_names(Arc::clone(self), handle));
    }

    /// Creates a user on this device; returns its user, device and recovery key (the one
    /// time it is shown).
    pub async fn create(
        self: &Arc<Self>,
        relay_url: &str,
        relay_key: ferry_client::RelayId,
        device_name: &str,
        name: &str,
    ) -> anyhow::Result<Value> {
        let created = ferry_client::account::create(
            &self.dir,
            relay_url,
            relay_key,
            device_name,
            &self.options,
        )
        .await?;
        let answer = json!({
            "user": created.state.user_id().to_string(),
            "device": created.state.device_id().to_string(),
            "recovery_key": created.recovery_key.display().as_str(),
        });
        let name = name.trim().to_owned();
        if !name.is_empty() {
            self.update_prefs(|prefs| prefs.name = Some(name.clone()));
        }
        self.start_client(created.state);
        if !name.is_empty()
            && let Mode::Running(handle) = self.mode()
        {
            // Sealed for contacts; sent once the client is connected.
            tokio::spawn(async move {
                let profile = ProfileBody {
                    display_name: name,
                    avatar: None,
                };
                if let Err(error) = handle.set_profile(&profile).await {
                    eprintln!("ferry: could not set the profile name: {error}");
                }
            });
        }
        Ok(answer)
    }

    /// Starts joining a user with a pairing code; returns the confirmation to compare. The
    /// rest (the other device admits this one) goes on in the background and ends with a
    /// `setup` event.
    pub async fn join(
        self: &Arc<Self>,
        relay_url: &str,
        relay_key: ferry_client::RelayId,
        code: &str,
        device_name: &str,
    ) -> Result<String, ferry_client::PairingError> {
        let join = Join::start(
            &self.dir,
            relay_url,
            relay_key,
            code,
            device_name,
            &self.options,
        )
        .await?;
        let confirmation = join.confirmation().to_owned();
        self.set_mode(Mode::Joining);
        let app = Arc::clone(self);
        tokio::spawn(async move {
            match join.finish().await {
                Ok(state) => {
                    app.start_client(state);
                    app.publish(&json!({ "type": "setup", "kind": "joined" }));
                }
                Err(error) => {
                    app.set_mode(Mode::Setup);
                    app.publish(&json!({
                        "type": "setup", "kind": "failed", "error": error.to_string(),
                    }));
                }
            }
        });
        Ok(confirmation)
    }
}

/// Hands the client's events to the page, keeps the sync log, and learns names.
async fn pump(app: Arc<App>, mut client: Client) {
    loop {
        match client.next_event().await {
            Ok(event) => {
                if let ClientEvent::People(people) = &event {
                    learn_own(&app, people);
                    if let Mode::Running(handle) = app.mode() {
                        tokio::spawn(refresh_names(Arc::clone(&app), handle));
                    }
                }
                let Some(value) = json::event(&event, &app.names()) else {
                    continue;
                };
                if let ClientEvent::Event(_) = event {
                    let mut log = lock(&app.log);
                    if log.len() == LOG_KEPT {
                        log.pop_front();
                    }
                    log.push_back(value.clone());
                }
                app.publish(&value);
            }
            Err(error) if error.is_permanent() => {
                eprintln!("ferry: the client stopped: {error}");
                break;
            }
            Err(error) => {
                eprintln!("ferry: {error}");
                app.publish(&json!({ "type": "warning", "error": json::words(&error) }));
            }
        }
    }
}

/// This user's own handle and name, as its devices learn them from the log.
fn learn_own(app: &App, event: &ferry_client::PeopleEvent) {
    use ferry_client::PeopleEvent;
    match event {
        PeopleEvent::HandleChanged { handle } => {
            let handle = handle.clone();
            app.update_prefs(|prefs| prefs.handle = handle);
        }
        PeopleEvent::ProfileChanged { user, profile } if app.names().me == Some(*user) => {
            let name = profile.display_name.clone();
            app.update_prefs(|prefs| prefs.name = Some(name));
        }
        PeopleEvent::PresenceVisibility { visible } => {
            let visible = *visible;
            app.update_prefs(|prefs| prefs.presence_visible = Some(visible));
        }
        _ => {}
    }
}

/// Tells the page when the connection comes and goes.
async fn watch_status(app: Arc<App>, handle: ClientHandle) {
    loop {
        let status = handle.status();
        let now = json::status(&status);
        let changed = {
            let mut last = lock(&app.status);
            let changed = *last != now;
            *last = now.clone();
            changed
        };
        if changed {
            app.publish(&status_event(now));
        }
        if status.stopped.is_some() {
            return;
        }
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// Learns the names of contacts (profile names, handles) for what the page shows.
pub async fn refresh_names(app: Arc<App>, handle: ClientHandle) {
    if let Ok(contacts) = handle.contacts().await {
        app.learn_names(&contacts);
    }
}

/// `status` with the event stream's `"type": "status"`.
fn status_event(mut status: Value) -> Value {
    if let Value::Object(fields) = &mut status {
        fields.insert("type".into(), "status".into());
    }
    status
}

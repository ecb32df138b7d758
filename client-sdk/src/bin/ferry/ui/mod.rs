//! `ferry ui`: the Ferry app in the browser. The SDK runs here, natively; the page talks to
//! it over a local HTTP API with a server-sent-events stream (docs/web-app.md) and never
//! sees a key.
//!
//! ```text
//!  browser ──HTTP, 127.0.0.1 only──▶ guard (Host, Origin, token cookie) ─▶ assets | api
//!                                                                            │
//!                                      app (mode, client, event stream) ◀───┘ ─▶ relay
//! ```

mod api;
mod app;
mod assets;
mod guard;
mod http;
mod json;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use ferry_client::{Options, RelayId};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand_core::{OsRng, RngCore};

use app::{App, Defaults};
use guard::Guard;
use http::{Reply, problem};

/// `ferry ui`'s arguments.
#[derive(Debug, clap::Args)]
pub struct UiArgs {
    /// Where to serve the app: a loopback address (any other is refused); port 0 picks a
    /// free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The relay the first-start screen offers (`ws[s]://HOST:PORT/ws`).
    #[arg(long)]
    relay: Option<String>,
    /// The relay's public key the first-start screen offers (64 hex digits).
    #[arg(long)]
    relay_key: Option<RelayId>,
    /// Do not open a browser; only print the address.
    #[arg(long)]
    no_open: bool,
}

/// Serves the app until interrupted.
pub async fn run(dir: PathBuf, args: UiArgs, options: Options) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "ferry ui serves this machine only: --listen must be a loopback address such as \
             127.0.0.1:0, not {}",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let mut token = [0u8; 32];
    OsRng.fill_bytes(&mut token);
    let guard = Guard::new(port, hex::encode(token));
    let url = guard.login_url();
    let defaults = Defaults {
        relay_url: args.relay,
        relay_key: args.relay_key.map(|key| key.to_string()),
    };
    // Files a crashed upload left behind.
    let _ = std::fs::remove_dir_all(dir.join("ui-uploads"));
    let app = App::new(dir, options, defaults, guard);
    app.open_existing()?;

    println!("ui: {url}");
    eprintln!(
        "ferry: the app is at the address above; it is for you only (it carries a secret \
         token): Ctrl-C stops it"
    );
    if !args.no_open {
        open_browser(&url);
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        eprintln!("ferry: ui: {error}");
                        continue;
                    }
                };
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let app = Arc::clone(&app);
                        async move { Ok::<_, std::convert::Infallible>(answer(&app, request).await) }
                    });
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%error, "ui connection");
                    }
                });
            }
            () = stop_signal() => {
                eprintln!("ferry: ui stopped");
                return Ok(());
            }
        }
    }
}

/// Ctrl-C, or SIGTERM (a service manager, a test harness): the client's state is on disk
/// after every change, so stopping at any point loses nothing.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// One request: the guard first, then the login, the assets or the API.
async fn answer(app: &Arc<App>, request: Request<Incoming>) -> Reply {
    let mut reply = route(app, request).await;
    guard::harden(reply.headers_mut());
    reply
}

async fn route(app: &Arc<App>, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let token = (path == "/").then(|| api::query_token(&request)).flatten();
    if let Some(token) = token {
        return match app.guard.check_host_and_origin(&request) {
            Ok(()) => app.guard.login(&token),
            Err(refusal) => *refusal,
        };
    }
    if let Err(refusal) = app.guard.check(&request) {
        return *refusal;
    }
    if path.starts_with("/api/") {
        return api::route(app, request).await;
    }
    match (request.method(), assets::get(&path)) {
        (&Method::GET | &Method::HEAD, Some(asset)) => asset,
        _ => problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "The Ferry app has no such page.",
        ),
    }
}

/// Opens the app in the browser through a private file that forwards to it, so the token
/// never appears in a process's arguments, which other users of the machine can read.
fn open_browser(url: &str) {
    let mut name = [0u8; 12];
    OsRng.fill_bytes(&mut name);
    let page = std::env::temp_dir().join(format!("ferry-ui-{}.html", hex::encode(name)));
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" \
         content=\"0;url={url}\"><title>Ferry</title><a href=\"{url}\">Open Ferry</a>"
    );
    let written = {
        use std::io::Write;
        let mut open = std::fs::OpenOptions::new();
        // A new file under a random name: nothing another user placed there is followed.
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        open.open(&page)
            .and_then(|mut file| file.write_all(html.as_bytes()))
    };
    if written.is_err() {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if std::process::Command::new(opener)
        .arg(&page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_err()
    {
        eprintln!("ferry: could not open a browser; open the address above yourself");
    }
}

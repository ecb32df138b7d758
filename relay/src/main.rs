//! `ferry-relay`: run the relay, apply migrations, or print the relay key.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_relay::{Config, Server, relay_key, store};

#[derive(Parser)]
#[command(
    name = "ferry-relay",
    version,
    about = "The Ferry relay: stores and forwards end-to-end encrypted events"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default): apply migrations, then accept clients.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the relay's public key (creating the key if needed) and exit.
    Key,
    /// Print the relay's VAPID public key for Web Push (creating it if needed), base64url, as
    /// client apps give it to `pushManager.subscribe({ applicationServerKey })`, and exit.
    VapidKey,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Key => {
            let (key, created) =
                relay_key::load_or_create(&config.data_dir).context("loading the relay key")?;
            if created {
                eprintln!("created a new relay key in {}", config.data_dir.display());
            }
            println!("{}", key.id());
        }
        Command::VapidKey => {
            let (key, created) = ferry_relay::push::load_or_create_vapid_key(&config.data_dir)
                .context("loading the VAPID key")?;
            if created {
                eprintln!("created a new VAPID key in {}", config.data_dir.display());
            }
            println!("{}", key.public());
        }
        Command::Migrate => {
            let url = config.database_url();
            let store = store::open(&url)
                .await
                .with_context(|| format!("migrating {}", ferry_relay::redact_url(&url)))?;
            store.close().await;
            eprintln!("migrations applied to {}", ferry_relay::redact_url(&url));
        }
        Command::Serve => serve(config).await?,
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    let scheme = if config.tls_cert.is_some() {
        "wss"
    } else {
        "ws"
    };
    let server = Server::spawn(config).await.context("starting the relay")?;
    if server.key_created() {
        eprintln!("created a new relay key");
    }
    println!(
        "ferry-relay listening on {scheme}://{}/ws",
        server.local_addr()
    );
    println!("relay key (pin this in clients): {}", server.relay_id());
    if let Some(admin) = server.admin_addr() {
        println!("admin endpoints on http://{admin}/metrics and /readyz");
    }
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

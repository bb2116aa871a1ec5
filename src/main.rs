//! The `herald` command: `serve` runs the server, `token` mints an HS256 token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::config::{check_secret, read_dev_secret, ServeArgs};

/// mimalloc instead of the system allocator: a request allocates and frees many small
/// buffers, and glibc's malloc/free (with its chunk consolidation) was ~14% of a publish's
/// CPU in a profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Herald: events to subscribers over SSE, long-poll, WebSocket and webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print an HS256 token signed with the server's secret.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The subject: the client, instance or access id the token speaks for.
    #[arg(long)]
    sub: String,
    /// A permission to grant; repeat for several.
    #[arg(long = "permission")]
    permissions: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The secret to sign with; defaults to the `--dev` secret kept in the data dir.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Where a `--dev` server keeps its secret.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    data_dir: PathBuf,
}

/// A refusal to start is one line on stderr, whatever `RUST_BACKTRACE` says: each error's
/// message already names its cause and what to change.
fn main() -> std::process::ExitCode {
    herald::logs::init();
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args),
        Command::Token(args) => {
            if let Some(secret) = &args.jwt_secret {
                check_secret(secret, "--jwt-secret (HERALD_JWT_SECRET)")?;
            }
            let secret = args
                .jwt_secret
                .or_else(|| read_dev_secret(&args.data_dir))
                .with_context(|| {
                    format!(
                        "no secret: set --jwt-secret (HERALD_JWT_SECRET), or run `herald serve --dev` once so {} holds one",
                        args.data_dir.display()
                    )
                })?;
            println!(
                "{}",
                herald::auth::mint(&secret, &args.sub, &args.permissions, args.ttl)
            );
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    actix_web::rt::System::new().block_on(async move {
        // Watched before the server announces its address: a SIGTERM that arrives as soon as
        // it is up must drain it, not kill it.
        let signal = shutdown_signal()?;
        let herald = herald::start(config).await?;
        signal.await;
        log::info!("signal received; draining");
        herald.shutdown().await;
        Ok(())
    })
}

/// Completes on the first SIGINT or SIGTERM after it is called.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

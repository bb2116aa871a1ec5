//! The `herald` command: `serve` runs the server, `token` mints an HS256 token, `config`
//! checks or prints a configuration file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use herald::config::file::{self, ParseError};
use herald::config::{check_secret, read_dev_secret, SecretFile, ServeArgs};

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
    /// Check a configuration file, or print one with every key.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check FILE as `herald serve --config FILE` would read it here (with the flags'
    /// variables set in this environment), without starting: prints `FILE: ok`, or what is
    /// wrong in one line and fails.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a configuration file with every key, commented out at its default.
    Example,
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
    /// The secret read from this file.
    #[arg(long, env = "HERALD_JWT_SECRET_FILE", value_name = "FILE", value_parser = herald::config::read_secret_file, conflicts_with = "jwt_secret")]
    jwt_secret_file: Option<SecretFile>,
    /// Take the secret (`auth.jwt_secret` or `auth.jwt_secret_file`) and `data_dir` from the
    /// server's configuration file.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where a `--dev` server keeps its secret.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    data_dir: PathBuf,
}

/// A refusal to start is one line on stderr, whatever `RUST_BACKTRACE` says: each error's
/// message already names its cause and what to change.
fn main() -> std::process::ExitCode {
    herald::logs::init();
    let cli = match file::parse::<Cli>(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::File(e)) => return refuse(e),
    };
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => refuse(e),
    }
}

fn refuse(error: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("error: {error}");
    std::process::ExitCode::FAILURE
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args),
        Command::Config(ConfigCommand::Check { file }) => check(file),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", file::example(&serve_command()));
            Ok(())
        }
        Command::Token(args) => {
            if let Some(secret) = &args.jwt_secret {
                check_secret(secret, "--jwt-secret (HERALD_JWT_SECRET)")?;
            }
            let secret = args
                .jwt_secret
                .or(args.jwt_secret_file.map(|f| f.secret))
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

/// `herald serve`'s flags, for `config example`.
fn serve_command() -> clap::Command {
    Cli::command()
        .find_subcommand("serve")
        .expect("serve is a subcommand")
        .clone()
}

/// `herald config check FILE`: the parse and checks of `serve --config FILE`, the TLS pair
/// loaded, nothing written or bound.
fn check(path: PathBuf) -> anyhow::Result<()> {
    let argv = [
        "herald".into(),
        "serve".into(),
        "--config".into(),
        path.clone().into(),
    ];
    let args = match file::parse::<Cli>(argv.to_vec()) {
        Ok(Cli {
            command: Command::Serve(args),
        }) => *args,
        Ok(_) => unreachable!("parsed as serve"),
        Err(ParseError::File(e)) => return Err(e.into()),
        Err(ParseError::Clap(e)) => {
            // clap's own rendering has a usage block; keep the refusal to one line.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or_default();
            anyhow::bail!("{}: {}", path.display(), line.trim_start_matches("error: "));
        }
    };
    args.check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("{}: ok", path.display());
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = args.config.clone();
    let config = args.into_config()?;
    if let Some(path) = file {
        log::info!("configuration file {}", path.display());
    }
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

//! The `hubcast` command (contract section 7).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use hubcast::auth::{mint_token, KeyId};
use hubcast::config::Config;
use hubcast::server::Roles;

#[derive(Parser)]
#[command(
    name = "hubcast",
    version,
    about = "SignalR hubs fed by RabbitMQ: fan-out for Conduit's real-time layer"
)]
struct Cli {
    /// Configuration file (default: ./hubcast.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Edge and router in one process; the embedded bus unless bus.amqp_url is set.
    Serve,
    /// The edge role alone, for scaled deployments (RabbitMQ).
    Edge,
    /// The router role alone, for scaled deployments (RabbitMQ).
    Router,
    /// Validate and publish one event.
    Publish {
        #[arg(long)]
        hub: String,
        #[arg(long)]
        routing_key: String,
        #[arg(long)]
        message_id: Option<String>,
        /// The event body, JSON.
        json: String,
    },
    /// Mint a development token with the configured secret.
    Token {
        /// Virtual key id (the token's `sub`).
        #[arg(long, required_unless_present = "admin")]
        vkey: Option<String>,
        /// Lifetime, e.g. 90s, 15m, 1h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// An admin token instead of a virtual-key one.
        #[arg(long, conflicts_with = "vkey")]
        admin: bool,
        /// The `max_connections` claim.
        #[arg(long)]
        max_connections: Option<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command {
        Command::Token { vkey, ttl, admin: _, max_connections } => {
            let key = vkey
                .map(|id| {
                    KeyId::parse(&id)
                        .with_context(|| format!("'{id}' is not a virtual key id ([A-Za-z0-9_-], 1 to 64)"))
                })
                .transpose()?;
            println!("{}", mint_token(&config.auth, key.as_ref(), ttl, max_connections)?);
            Ok(())
        }
        Command::Serve => {
            let _telemetry = hubcast::telemetry::init(&config.log, &config.tracing);
            let config = with_development_credentials(config);
            run(config, Roles { edge: true, router: true })
        }
        Command::Edge => {
            let _telemetry = hubcast::telemetry::init(&config.log, &config.tracing);
            require_amqp(&config, "edge")?;
            run(config, Roles { edge: true, router: false })
        }
        Command::Router => {
            let _telemetry = hubcast::telemetry::init(&config.log, &config.tracing);
            require_amqp(&config, "router")?;
            run(config, Roles { edge: false, router: true })
        }
        Command::Publish { hub, routing_key, message_id, json } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let answer = runtime.block_on(hubcast::publish::run(
                &config,
                &hub,
                &routing_key,
                message_id.as_deref(),
                &json,
            ))?;
            println!("{answer}");
            Ok(())
        }
    }
}

fn run(config: Config, roles: Roles) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(hubcast::server::run(config, roles))
}

fn require_amqp(config: &Config, role: &str) -> anyhow::Result<()> {
    if config.bus.amqp_url.is_none() {
        bail!("`hubcast {role}` runs on RabbitMQ: set bus.amqp_url (HUBCAST_BUS__AMQP_URL), or use `hubcast serve`");
    }
    Ok(())
}

/// `serve` with no credentials configured is a development server: it makes up a secret and a master
/// key and prints them, so a newcomer can connect at once. Configured values are never replaced.
fn with_development_credentials(mut config: Config) -> Config {
    if config.auth.jwt_secret.is_some() || config.auth.jwt_public_key_file.is_some() {
        return config;
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    config.auth.jwt_secret = Some(secret.clone());
    let mut banner = format!(
        "\nNo auth.jwt_secret configured: this is a development server with a secret made up for this run.\n\n  \
         HUBCAST_AUTH__JWT_SECRET={secret}\n"
    );
    // A configured master key is never printed; one made up here is, or nobody could use it.
    if config.auth.master_key.is_none() {
        let master_key = hex::encode(rand::random::<[u8; 16]>());
        banner.push_str(&format!("  HUBCAST_AUTH__MASTER_KEY={master_key}\n"));
        config.auth.master_key = Some(master_key);
    }
    let key = KeyId::parse("1").expect("1 is a valid key id");
    if let Ok(token) = mint_token(&config.auth, Some(&key), Duration::from_secs(24 * 3600), None) {
        banner.push_str(&format!("\nA token for virtual key 1, valid 24 h:\n  {token}\n"));
    }
    banner
        .push_str(&format!("\nMint more with: HUBCAST_AUTH__JWT_SECRET={secret} hubcast token --vkey 42\n"));
    eprintln!("{banner}");
    config
}

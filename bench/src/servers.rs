//! Starting and stopping what the generator talks to: the bare broadcaster, `hubcast serve` on the
//! embedded bus, or `hubcast router` plus `hubcast edge` on RabbitMQ.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::process::{Child, Command};

use crate::procfs;

/// What serves the connections of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The bare reference broadcaster.
    Bare,
    /// `hubcast serve` on the embedded bus, events through `POST /api/v1/publish`.
    Embedded,
    /// `hubcast router` + `hubcast edge`, events published to RabbitMQ.
    Rabbitmq,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Bare => "bare",
            Target::Embedded => "hubcast embedded",
            Target::Rabbitmq => "hubcast RabbitMQ",
        }
    }
}

/// Where events go in.
#[derive(Debug, Clone)]
pub enum Ingress {
    /// `POST /publish` of the bare broadcaster.
    Bare { address: String },
    /// `POST /api/v1/publish` with the master key.
    HubcastApi { address: String, master_key: String },
    /// The hub exchange on RabbitMQ.
    Amqp { url: String, exchange: String },
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub hubcast_bin: PathBuf,
    pub amqp_url: String,
    pub log_dir: PathBuf,
    pub rust_log: String,
    /// Extra `HUBCAST_*` settings, e.g. `HUBCAST_LIMITS__WRITE_TIMEOUT`.
    pub env: Vec<(String, String)>,
    /// A command the servers run under, for profiling (`heaptrack`, `perf record -g --`).
    pub wrapper: Vec<String>,
}

pub struct Servers {
    pub target: Target,
    /// Where the WebSockets connect.
    pub address: String,
    pub ingress: Ingress,
    pub jwt_secret: String,
    /// The process holding the connections, whose memory is measured.
    pub edge_pid: u32,
    /// Every server process, whose CPU time counts as the server's.
    pub pids: Vec<u32>,
    children: Vec<Child>,
    amqp: Option<(String, String)>,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn random_hex(bytes: usize) -> String {
    // Good enough for a bench secret: time and pid through a few rounds of xorshift.
    let mut x = crate::worker::now_ns() ^ (u64::from(std::process::id()) << 32);
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:02x}", x as u8)
        })
        .collect()
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.log"));
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

fn command(wrapper: &[String], program: &Path, args: &[&str], log: std::fs::File) -> anyhow::Result<Command> {
    let mut command = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    };
    command.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
    // Only our settings: the server refuses unknown HUBCAST_* keys, and a stray one would change the run.
    for (name, _) in std::env::vars() {
        if name.starts_with("HUBCAST_") {
            command.env_remove(name);
        }
    }
    Ok(command)
}

pub async fn start(target: Target, options: &ServerOptions, run_name: &str) -> anyhow::Result<Servers> {
    let jwt_secret = random_hex(32);
    match target {
        Target::Bare => {
            let port = free_port()?;
            let address = format!("127.0.0.1:{port}");
            let exe = std::env::current_exe()?;
            let log = log_file(&options.log_dir, &format!("{run_name}-bare"))?;
            let mut child = command(&options.wrapper, &exe, &["bare", "--listen", &address], log)?.spawn()?;
            wait_ready(&address, &mut child).await?;
            let pid = child.id().context("the bare broadcaster exited")?;
            Ok(Servers {
                target,
                address: address.clone(),
                ingress: Ingress::Bare { address },
                jwt_secret,
                edge_pid: pid,
                pids: vec![pid],
                children: vec![child],
                amqp: None,
            })
        }
        Target::Embedded => {
            let address = format!("127.0.0.1:{}", free_port()?);
            let master_key = random_hex(16);
            let log = log_file(&options.log_dir, &format!("{run_name}-serve"))?;
            let mut serve = command(&options.wrapper, &options.hubcast_bin, &["serve"], log)?;
            hubcast_env(&mut serve, options, &address, &jwt_secret, &master_key);
            let mut child =
                serve.spawn().with_context(|| format!("starting {}", options.hubcast_bin.display()))?;
            wait_ready(&address, &mut child).await?;
            let pid = child.id().context("hubcast exited")?;
            Ok(Servers {
                target,
                address: address.clone(),
                ingress: Ingress::HubcastApi { address, master_key },
                jwt_secret,
                edge_pid: pid,
                pids: vec![pid],
                children: vec![child],
                amqp: None,
            })
        }
        Target::Rabbitmq => {
            let prefix = format!("hubcast-bench-{}-{}.", std::process::id(), random_hex(3));
            let master_key = random_hex(16);
            let router_address = format!("127.0.0.1:{}", free_port()?);
            let edge_address = format!("127.0.0.1:{}", free_port()?);
            let mut children = Vec::new();
            for (role, address) in [("router", &router_address), ("edge", &edge_address)] {
                let log = log_file(&options.log_dir, &format!("{run_name}-{role}"))?;
                let mut process = command(&options.wrapper, &options.hubcast_bin, &[role], log)?;
                hubcast_env(&mut process, options, address, &jwt_secret, &master_key);
                process
                    .env("HUBCAST_BUS__AMQP_URL", &options.amqp_url)
                    .env("HUBCAST_BUS__EXCHANGE_PREFIX", &prefix);
                if role == "edge" {
                    process.env("HUBCAST_BUS__NODE_ID", "bench");
                }
                children.push(process.spawn().with_context(|| format!("starting hubcast {role}"))?);
            }
            let mut servers = Servers {
                target,
                address: edge_address.clone(),
                ingress: Ingress::Amqp { url: options.amqp_url.clone(), exchange: format!("{prefix}tasks") },
                jwt_secret,
                edge_pid: 0,
                pids: Vec::new(),
                children: Vec::new(),
                amqp: Some((options.amqp_url.clone(), prefix)),
            };
            let (router, edge) = children.split_at_mut(1);
            let ready = async {
                wait_ready(&router_address, &mut router[0]).await?;
                wait_ready(&edge_address, &mut edge[0]).await
            }
            .await;
            servers.pids = children.iter().filter_map(Child::id).collect();
            servers.edge_pid = children[1].id().unwrap_or(0);
            servers.children = children;
            if let Err(error) = ready {
                servers.stop().await;
                return Err(error);
            }
            Ok(servers)
        }
    }
}

fn hubcast_env(command: &mut Command, options: &ServerOptions, listen: &str, secret: &str, master_key: &str) {
    command
        .env("HUBCAST_LISTEN", listen)
        .env("HUBCAST_AUTH__JWT_SECRET", secret)
        .env("HUBCAST_AUTH__MASTER_KEY", master_key)
        .env("HUBCAST_LIMITS__CONNECTIONS_PER_KEY", "1000000")
        .env("HUBCAST_LIMITS__INVOCATIONS_PER_SECOND", "1000")
        .env("HUBCAST_LIMITS__INVOCATION_BURST", "1000")
        .env("RUST_LOG", &options.rust_log);
    for (name, value) in &options.env {
        command.env(name, value);
    }
}

/// Waits until `GET /readyz` answers 200, failing early if the process exits.
async fn wait_ready(address: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server on {address} exited during start-up ({status}); see its log");
        }
        if let Ok((200, _)) = crate::http::get(address, "/readyz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server on {address} was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Servers {
    pub fn rss(&self) -> u64 {
        procfs::rss_bytes(self.edge_pid).unwrap_or(0)
    }

    pub fn cpu(&self) -> f64 {
        procfs::cpu_total(&self.pids)
    }

    /// The server's own count of open connections (hubcast's `connections` gauge).
    pub async fn open_connections(&self) -> Option<u64> {
        if self.target == Target::Bare {
            return None;
        }
        let (status, text) = crate::http::get(&self.address, "/metrics").await.ok()?;
        if status != 200 {
            return None;
        }
        let total = text
            .lines()
            .filter(|line| line.starts_with("hubcast_connections{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        Some(total as u64)
    }

    /// Messages waiting in the router's tasks queue (RabbitMQ only).
    pub async fn router_backlog(&self, channel: &lapin::Channel) -> Option<u32> {
        let (_, prefix) = self.amqp.as_ref()?;
        let queue = channel
            .queue_declare(
                format!("{prefix}tasks.router").as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .ok()?;
        Some(queue.message_count())
    }

    /// Kills the processes and removes the run's RabbitMQ topology.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
        if let Some((url, prefix)) = self.amqp.take() {
            if let Err(error) = delete_topology(&url, &prefix).await {
                eprintln!("warning: could not remove the RabbitMQ topology {prefix}*: {error:#}");
            }
        }
    }
}

async fn delete_topology(url: &str, prefix: &str) -> anyhow::Result<()> {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    const HUBS: [&str; 7] = [
        "tasks",
        "video-generation",
        "image-generation",
        "notifications",
        "spend",
        "webhooks",
        "admin-notifications",
    ];
    let mut queues: Vec<String> = HUBS.iter().map(|hub| format!("{prefix}{hub}.router")).collect();
    queues.push(format!("{prefix}dead-letter"));
    queues.push(format!("{prefix}hubcast.state"));
    let mut exchanges: Vec<String> = HUBS.iter().map(|hub| format!("{prefix}{hub}")).collect();
    exchanges.push(format!("{prefix}dead-letter"));
    exchanges.push(format!("{prefix}hubcast.edges"));
    for queue in queues {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for exchange in exchanges {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

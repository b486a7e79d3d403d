//! `hubcast-bench`: the benchmark harness of hubcast.
//!
//! - `all`: the short version of every scenario (what `make bench` runs), written to
//!   `bench/results/latest.md`.
//! - `run`: chosen scenarios, sizes and durations, for longer runs.
//! - `bare`: the bare reference broadcaster on its own.
//! - `worker`: a generator process (started by the other commands).

mod bare;
mod generators;
mod http;
mod jwt;
mod layout;
mod procfs;
mod proto;
mod publish;
mod report;
mod scenarios;
mod servers;
mod worker;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use proto::Proto;
use scenarios::{Bench, Options, Scenario};
use servers::{ServerOptions, Target};

#[derive(Parser)]
#[command(name = "hubcast-bench", about = "Benchmarks of hubcast against a bare WebSocket broadcaster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The short version of every scenario; writes bench/results/latest.md.
    All(RunArgs),
    /// Chosen scenarios at chosen sizes; long durations unless --quick.
    Run {
        /// Scenarios to run, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        scenario: Vec<Scenario>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Opens connections to a server started by hand (for profiling it) and holds them.
    Hold {
        /// hubcast's (or the bare broadcaster's) address.
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// HS256 secret of the hubcast server (`HUBCAST_AUTH__JWT_SECRET`); none for the bare broadcaster.
        #[arg(long)]
        jwt_secret: Option<String>,
        /// Seconds to hold the connections open.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        #[arg(long, value_enum, default_value = "json")]
        protocol: Proto,
        /// Every connection in one group (key 1, task `b`) instead of 10 per key (keys `k0`..., task `t`).
        #[arg(long)]
        broadcast: bool,
    },
    /// The bare reference broadcaster.
    Bare {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: String,
    },
    /// A generator process, driven over stdin/stdout by the other commands.
    #[command(hide = true)]
    Worker {
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Connections per scenario (default 10 000; the slow-consumer case always uses 200).
    #[arg(long)]
    connections: Option<usize>,
    /// Seconds per measured step or phase (default: short for `all` and --quick, longer otherwise).
    #[arg(long)]
    seconds: Option<f64>,
    /// Publish rates in events/s for the stepped scenarios, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Hub protocol of the generated connections.
    #[arg(long, value_enum, default_value = "json")]
    protocol: Proto,
    /// Targets, comma-separated (default: bare, embedded and rabbitmq where the scenario has them).
    #[arg(long, value_delimiter = ',')]
    target: Vec<Target>,
    /// Short steps, as `make bench` runs them.
    #[arg(long)]
    quick: bool,
    /// Runtime threads of each generator process.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connection attempts in flight, shared out among the generator processes. Far more than 64 overflows
    /// the server's accept queue here, and the dropped SYNs come back a second later.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Client keep-alive Ping interval, seconds.
    #[arg(long, default_value_t = 15.0)]
    ping_interval: f64,
    /// Number of 127.0.0.x source addresses the generators spread their connections over.
    #[arg(long, default_value_t = 16)]
    source_addresses: u8,
    /// Concurrent publishing connections over HTTP (RabbitMQ publishing is pipelined on one channel).
    #[arg(long, default_value_t = 4)]
    publish_lanes: usize,
    /// Connections per generator process at most (a process may hold 20 000 open files here).
    #[arg(long, default_value_t = generators::MAX_PER_PROCESS)]
    per_generator: usize,
    /// The hubcast binary (default: next to this one, so target/release/hubcast).
    #[arg(long)]
    hubcast_bin: Option<PathBuf>,
    #[arg(long, env = "HUBCAST_BENCH_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// RUST_LOG of the hubcast processes (their logs go to the log directory).
    #[arg(long, default_value = "info")]
    server_log: String,
    /// Extra settings of the hubcast processes, KEY=VALUE (repeatable), e.g. HUBCAST_BUS__QUEUE_TYPE=classic.
    #[arg(long = "server-env", value_parser = parse_key_value)]
    server_env: Vec<(String, String)>,
    /// Run the servers under this command, for profiling, e.g. "heaptrack -o /tmp/ht" (memory figures are
    /// then the wrapper's).
    #[arg(long, allow_hyphen_values = true)]
    server_wrapper: Option<String>,
    /// Where to write the Markdown results (default: bench/results/latest.md for `all`, last-run.md for `run`).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Worker { threads } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            runtime.block_on(worker::run())
        }
        Command::Bare { listen } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(bare::serve(&listen))
        }
        Command::Hold { address, connections, jwt_secret, seconds, protocol, broadcast } => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let layout =
                if broadcast { layout::Layout::Broadcast } else { layout::Layout::Tenant { per_key: 10 } };
            runtime.block_on(hold(address, connections, layout, jwt_secret, seconds, protocol))
        }
        Command::All(args) => {
            let out = args.out.clone().unwrap_or_else(|| results_dir().join("latest.md"));
            coordinate(Scenario::ALL.to_vec(), RunArgs { quick: true, ..args }, out)
        }
        Command::Run { scenario, args } => {
            let scenarios = if scenario.is_empty() { Scenario::ALL.to_vec() } else { scenario };
            let out = args.out.clone().unwrap_or_else(|| results_dir().join("last-run.md"));
            coordinate(scenarios, args, out)
        }
    }
}

async fn hold(
    address: String,
    connections: usize,
    layout: layout::Layout,
    jwt_secret: Option<String>,
    seconds: f64,
    protocol: Proto,
) -> anyhow::Result<()> {
    let log_dir = std::env::temp_dir().join(format!("hubcast-bench-{}", std::process::id()));
    let mut generators =
        generators::Generators::spawn(connections, generators::MAX_PER_PROCESS, layout, 2, &log_dir).await?;
    let peer = if jwt_secret.is_some() { layout::Peer::Hubcast } else { layout::Peer::Bare };
    let source_ips: Vec<String> = (2..18).map(|i| format!("127.0.0.{i}")).collect();
    let connected = generators
        .connect(
            &address,
            peer,
            protocol,
            jwt_secret.as_deref().unwrap_or(""),
            64,
            Duration::from_secs(15),
            &source_ips,
        )
        .await?;
    eprintln!(
        "{} connected in {:.1} s ({} failed) {:?}",
        connected.established, connected.seconds, connected.failed, connected.errors
    );
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let stats = generators.stats().await?;
    eprintln!("{} still connected; closing", stats.alive);
    generators.quit().await;
    Ok(())
}

fn results_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"))
}

fn coordinate(scenarios: Vec<Scenario>, args: RunArgs, out: PathBuf) -> anyhow::Result<()> {
    // The coordinator publishes; give it both cores' worth of threads.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let started = Instant::now();
        let hubcast_bin = match args.hubcast_bin.clone() {
            Some(path) => path,
            None => std::env::current_exe()?.parent().context("no directory of the bench binary")?.join("hubcast"),
        };
        anyhow::ensure!(hubcast_bin.exists(), "{} not found: run `cargo build --release` first, or pass --hubcast-bin", hubcast_bin.display());
        let log_dir = std::env::temp_dir().join(format!("hubcast-bench-{}", std::process::id()));
        let rabbitmq = match lapin::Connection::connect(&args.amqp_url, lapin::ConnectionProperties::default()).await {
            Ok(connection) => {
                let _ = connection.close(200, "probe".into()).await;
                true
            }
            Err(error) => {
                eprintln!("RabbitMQ is not reachable ({error}); the RabbitMQ targets are skipped");
                false
            }
        };
        let bench = Bench {
            options: Options {
                connections: args.connections,
                seconds: args.seconds,
                rates: args.rates.clone(),
                proto: args.protocol,
                targets: args.target.clone(),
                threads: args.threads,
                concurrency: args.concurrency,
                ping_interval: Duration::from_secs_f64(args.ping_interval),
                quick: args.quick,
                source_ips: (0..args.source_addresses.max(1)).map(|i| format!("127.0.0.{}", 2 + u32::from(i))).collect(),
                publish_lanes: args.publish_lanes,
                per_generator: args.per_generator,
            },
            servers: ServerOptions {
                hubcast_bin: hubcast_bin.clone(),
                amqp_url: args.amqp_url.clone(),
                log_dir: log_dir.clone(),
                rust_log: args.server_log.clone(),
                env: args.server_env.clone(),
                wrapper: args.server_wrapper.as_deref().map_or_else(Vec::new, |w| w.split_whitespace().map(str::to_owned).collect()),
            },
            broker_pid: procfs::broker_pid(),
            log_dir: log_dir.clone(),
            rabbitmq,
        };
        eprintln!("server and generator logs in {}", log_dir.display());
        let mut sections = Vec::new();
        for scenario in scenarios {
            let begun = Instant::now();
            match bench.run(scenario).await {
                Ok(section) => sections.push(section),
                Err(error) => {
                    eprintln!("scenario {scenario:?} failed: {error:#}");
                    sections.push(report::Section {
                        name: format!("{scenario:?}").to_lowercase(),
                        about: format!("**failed**: {error:#}"),
                        ..Default::default()
                    });
                }
            }
            eprintln!("scenario {scenario:?} took {:.0} s", begun.elapsed().as_secs_f64());
        }
        // Zero lost or duplicated frames everywhere (the slow-consumer rows count only the healthy clients).
        let (lost, duplicated): (u64, u64) =
            sections.iter().flat_map(|s| &s.rows).fold((0, 0), |(l, d), r| (l + r.lost, d + r.duplicated));
        if let Some(first) = sections.first_mut() {
            first.floors.insert(
                0,
                report::Floor {
                    name: "zero lost or duplicated frames (except the stalled clients of the slow-consumer case)".into(),
                    met: Some(lost == 0 && duplicated == 0),
                    detail: format!("{lost} lost, {duplicated} duplicated over all rows"),
                },
            );
        }
        let settings = vec![
            format!(
                "machine: {} cores, {}; generators on the same machine",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                kernel()
            ),
            format!(
                "protocol {}; generator processes of at most {} connections, {} runtime threads each, {} connects in flight; client ping every {} s; {} source addresses",
                args.protocol,
                args.per_generator.clamp(1, generators::MAX_PER_PROCESS),
                args.threads,
                args.concurrency,
                args.ping_interval,
                args.source_addresses
            ),
            format!(
                "hubcast: {} (RUST_LOG={}{}), RabbitMQ at {}",
                hubcast_bin.display(),
                args.server_log,
                args.server_env.iter().map(|(k, v)| format!(", {k}={v}")).collect::<String>(),
                redact(&args.amqp_url)
            ),
            format!("mode: {}; total time {:.0} s", if args.quick { "short (make bench)" } else { "long" }, started.elapsed().as_secs_f64()),
        ];
        let markdown = report::render("hubcast benchmarks", &settings, &sections);
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
        println!("{markdown}");
        eprintln!("results written to {}", out.display());
        Ok(())
    })
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "Linux".into(), |v| format!("Linux {}", v.trim()))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

//! The coordinator's side of the generator processes: spawn them, split the connections among them, send
//! each the same command and merge their answers.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::layout::{ConnectSpec, Layout, Peer, Reply, Request, Stats};
use crate::proto::Proto;
use crate::worker::new_histogram;

/// A process may hold 20 000 open files here; leave room for the rest.
pub const MAX_PER_PROCESS: usize = 15_000;

/// How many generator processes `connections` need, at most `per_process` each.
pub fn process_count(connections: usize, per_process: usize) -> usize {
    connections.div_ceil(per_process.clamp(1, MAX_PER_PROCESS)).max(1)
}

struct Process {
    _child: Child,
    pid: u32,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    first: usize,
    count: usize,
}

impl Process {
    async fn call(&mut self, request: &Request, limit: Duration) -> anyhow::Result<Reply> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .map_err(|_| anyhow!("generator {} did not answer within {limit:?}", self.pid))??
            .ok_or_else(|| anyhow!("generator {} exited", self.pid))?;
        match serde_json::from_str(&answer)? {
            Reply::Error { message } => bail!("generator {}: {message}", self.pid),
            reply => Ok(reply),
        }
    }
}

/// The merged answer of every generator.
#[derive(Debug, Default)]
pub struct Connected {
    pub established: u64,
    pub failed: u64,
    /// The slowest generator's time.
    pub seconds: f64,
    pub errors: Vec<String>,
}

pub struct Merged {
    pub stats: Stats,
    pub latency: Histogram<u64>,
    pub lost: u64,
    pub stalled_lost: u64,
    pub duplicated: u64,
    pub closes: Vec<(String, u64)>,
    pub errors: Vec<String>,
}

pub struct Generators {
    processes: Vec<Process>,
    pub layout: Layout,
}

impl Generators {
    /// Starts enough generator processes for `connections`, each with `threads` runtime threads.
    pub async fn spawn(
        connections: usize,
        per_process: usize,
        layout: Layout,
        threads: usize,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let count = process_count(connections, per_process);
        let per_process = connections.div_ceil(count);
        let exe = std::env::current_exe()?;
        std::fs::create_dir_all(log_dir)?;
        let mut processes = Vec::new();
        for index in 0..count {
            let first = index * per_process;
            let share = per_process.min(connections - first);
            let log = std::fs::File::create(log_dir.join(format!("generator-{index}.log")))?;
            let mut child = tokio::process::Command::new(&exe)
                .args(["worker", "--threads", &threads.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting a generator process")?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let pid = child.id().unwrap_or(0);
            processes.push(Process {
                _child: child,
                pid,
                stdin,
                lines: BufReader::new(stdout).lines(),
                first,
                count: share,
            });
        }
        Ok(Self { processes, layout })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// CPU seconds of the generator processes and of this one (which publishes).
    pub fn cpu(&self) -> f64 {
        crate::procfs::cpu_total(&self.pids()) + crate::procfs::cpu_seconds(std::process::id()).unwrap_or(0.0)
    }

    async fn call_each(&mut self, requests: Vec<Request>, limit: Duration) -> anyhow::Result<Vec<Reply>> {
        let calls = self
            .processes
            .iter_mut()
            .zip(requests.iter())
            .map(|(process, request)| process.call(request, limit));
        join_all(calls).await.into_iter().collect()
    }

    async fn call_all(&mut self, request: Request, limit: Duration) -> anyhow::Result<Vec<Reply>> {
        let requests = vec![request; self.processes.len()];
        self.call_each(requests, limit).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        &mut self,
        address: &str,
        peer: Peer,
        proto: Proto,
        jwt_secret: &str,
        concurrency: usize,
        ping_interval: Duration,
        source_ips: &[String],
    ) -> anyhow::Result<Connected> {
        let requests = self
            .processes
            .iter()
            .map(|process| {
                Request::Connect(ConnectSpec {
                    address: address.to_owned(),
                    peer,
                    proto,
                    layout: self.layout,
                    first: process.first,
                    count: process.count,
                    source_ips: source_ips.to_vec(),
                    // The attempts in flight are shared out, so more processes do not mean a bigger burst.
                    concurrency: concurrency.div_ceil(self.processes.len()),
                    jwt_secret: jwt_secret.to_owned(),
                    ping_interval_ms: ping_interval.as_millis() as u64,
                })
            })
            .collect();
        let replies = self.call_each(requests, Duration::from_secs(600)).await?;
        Ok(merge_connected(replies))
    }

    pub async fn reconnect(&mut self) -> anyhow::Result<Connected> {
        let replies = self.call_all(Request::Reconnect, Duration::from_secs(600)).await?;
        Ok(merge_connected(replies))
    }

    pub async fn reset(&mut self) -> anyhow::Result<()> {
        self.call_all(Request::Reset, Duration::from_secs(30)).await?;
        Ok(())
    }

    pub async fn stats(&mut self) -> anyhow::Result<Stats> {
        let replies = self.call_all(Request::Stats, Duration::from_secs(30)).await?;
        let mut total = Stats::default();
        for reply in replies {
            if let Reply::Stats(stats) = reply {
                add_stats(&mut total, &stats);
            }
        }
        Ok(total)
    }

    pub async fn report(&mut self, expected: &[u64]) -> anyhow::Result<Merged> {
        let replies =
            self.call_all(Request::Report { expected: expected.to_vec() }, Duration::from_secs(60)).await?;
        let mut merged = Merged {
            stats: Stats::default(),
            latency: new_histogram(),
            lost: 0,
            stalled_lost: 0,
            duplicated: 0,
            closes: Vec::new(),
            errors: Vec::new(),
        };
        for reply in replies {
            let Reply::Report(report) = reply else { continue };
            add_stats(&mut merged.stats, &report.stats);
            for (value, count) in report.latency {
                merged.latency.saturating_record_n(value, count);
            }
            merged.lost += report.lost;
            merged.stalled_lost += report.stalled_lost;
            merged.duplicated += report.duplicated;
            for (reason, count) in report.closes {
                match merged.closes.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, total)) => *total += count,
                    None => merged.closes.push((reason, count)),
                }
            }
            merged.errors.extend(report.errors);
        }
        Ok(merged)
    }

    /// The first `count` connections (of the first generator) stop reading.
    pub async fn stall(&mut self, count: usize) -> anyhow::Result<()> {
        let mut requests = vec![Request::Stall { count: 0 }; self.processes.len()];
        requests[0] = Request::Stall { count };
        self.call_each(requests, Duration::from_secs(30)).await?;
        Ok(())
    }

    pub async fn release(&mut self) -> anyhow::Result<()> {
        self.call_all(Request::Release, Duration::from_secs(30)).await?;
        Ok(())
    }

    pub async fn quit(mut self) {
        let _ = self.call_all(Request::Quit, Duration::from_secs(10)).await;
    }
}

fn add_stats(total: &mut Stats, stats: &Stats) {
    total.established += stats.established;
    total.failed += stats.failed;
    total.alive += stats.alive;
    total.frames += stats.frames;
    if stats.first_ns != 0 && (total.first_ns == 0 || stats.first_ns < total.first_ns) {
        total.first_ns = stats.first_ns;
    }
    total.last_ns = total.last_ns.max(stats.last_ns);
}

fn merge_connected(replies: Vec<Reply>) -> Connected {
    let mut merged = Connected::default();
    for reply in replies {
        if let Reply::Connected { established, failed, seconds, errors } = reply {
            merged.established += established;
            merged.failed += failed;
            merged.seconds = merged.seconds.max(seconds);
            merged.errors.extend(errors);
        }
    }
    merged
}

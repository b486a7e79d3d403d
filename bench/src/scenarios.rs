//! The scenarios: broadcast, tenant fan-out, task progress storm, idle, reconnect storm and the deliberate
//! slow consumer. Each runs against the bare broadcaster and hubcast in the same invocation, one target
//! at a time, and returns a report section with its floors.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::generators::{Connected, Generators, Merged};
use crate::layout::{Layout, Peer, Stats};
use crate::proto::Proto;
use crate::publish::{Published, Publisher};
use crate::report::{ms, Cpu, Floor, Latency, Row, Section};
use crate::servers::{self, ServerOptions, Servers, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Broadcast,
    Tenant,
    Tasks,
    Idle,
    Reconnect,
    Slow,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Broadcast,
        Scenario::Tenant,
        Scenario::Tasks,
        Scenario::Idle,
        Scenario::Reconnect,
        Scenario::Slow,
    ];
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Connections per scenario (the slow-consumer case keeps its own small size).
    pub connections: Option<usize>,
    /// Seconds of each measured phase or step.
    pub seconds: Option<f64>,
    pub rates: Option<Vec<f64>>,
    pub proto: Proto,
    /// Targets to run; empty means each scenario's own list.
    pub targets: Vec<Target>,
    pub threads: usize,
    pub concurrency: usize,
    pub ping_interval: Duration,
    /// The short version of `make bench`.
    pub quick: bool,
    pub source_ips: Vec<String>,
    pub publish_lanes: usize,
    pub per_generator: usize,
}

pub struct Bench {
    pub options: Options,
    pub servers: ServerOptions,
    pub broker_pid: Option<u32>,
    pub log_dir: PathBuf,
    /// Whether RabbitMQ answered at start.
    pub rabbitmq: bool,
}

/// One target with its connections open.
struct Run {
    servers: Servers,
    generators: Generators,
    connected: Connected,
    connections: usize,
    rss_before: u64,
    rss_after: u64,
    /// For passive declares of the router queue (RabbitMQ only).
    probe: Option<(lapin::Connection, lapin::Channel)>,
}

impl Run {
    fn rss_per_connection(&self, rss: u64) -> f64 {
        rss.saturating_sub(self.rss_before) as f64 / self.connections.max(1) as f64
    }

    fn connect_rate(&self) -> f64 {
        self.connected.established as f64 / self.connected.seconds.max(1e-9)
    }

    async fn close(self) {
        self.generators.quit().await;
        if let Some((connection, _)) = self.probe {
            let _ = connection.close(200, "done".into()).await;
        }
        self.servers.stop().await;
    }

    async fn router_backlog(&self) -> Option<u32> {
        let (_, channel) = self.probe.as_ref()?;
        self.servers.router_backlog(channel).await
    }
}

struct Meter {
    server: f64,
    broker: Option<f64>,
    generator: f64,
    start: Instant,
}

/// One measured publishing phase.
struct Step {
    rate: f64,
    published: Published,
    /// Frames the phase's events had to produce, and what arrived.
    want: u64,
    stats: Stats,
    drained: bool,
    report: Merged,
    cpu: Cpu,
    /// Largest number of frames published but not yet received, sampled during the phase.
    max_pending: u64,
    /// Largest router queue depth seen (RabbitMQ).
    max_router_backlog: Option<u32>,
    /// Frames published but not received yet, sampled every 250 ms: (seconds into the phase, frames).
    backlog: Vec<(f64, u64)>,
}

impl Step {
    /// Frames delivered per second, from the first publish to the last receipt.
    fn delivered_rate(&self) -> f64 {
        // At least the time the events took to publish at their rate, so that a phase that keeps up
        // reports its offered rate.
        let span = self.stats.last_ns.saturating_sub(self.published.first_ns) as f64 / 1e9;
        let span = span.max(self.published.events as f64 / self.rate);
        if span > 0.0 {
            self.stats.frames as f64 / span
        } else {
            0.0
        }
    }

    fn offered_rate(&self) -> f64 {
        let per_event = self.want as f64 / self.published.events.max(1) as f64;
        self.rate * per_event
    }

    /// Time from the last publish to the last receipt.
    fn drain_ms(&self) -> f64 {
        self.stats.last_ns.saturating_sub(self.published.last_ns) as f64 / 1e6
    }

    fn latency(&self) -> Option<Latency> {
        Latency::of(&self.report.latency)
    }

    /// How fast the backlog grew, in frames per second: the least-squares slope of the samples after the
    /// first second. Zero or noise when delivery keeps up; a steady rise when it does not.
    fn backlog_growth(&self) -> Option<f64> {
        let samples: Vec<(f64, f64)> =
            self.backlog.iter().filter(|(t, _)| *t >= 1.0).map(|&(t, b)| (t, b as f64)).collect();
        if samples.len() < 4 {
            return None;
        }
        let n = samples.len() as f64;
        let (mean_t, mean_b) = samples.iter().fold((0.0, 0.0), |(t, b), &(st, sb)| (t + st / n, b + sb / n));
        let covariance: f64 = samples.iter().map(|&(t, b)| (t - mean_t) * (b - mean_b)).sum();
        let variance: f64 = samples.iter().map(|&(t, _)| (t - mean_t).powi(2)).sum();
        (variance > 0.0).then(|| covariance / variance)
    }

    /// No backlog growth worth the name: under 1% of the offered frames a second, and the backlog gone
    /// within a second of the last publish.
    fn steady(&self) -> bool {
        self.sustained()
            && self.drain_ms() < 1000.0
            && self.backlog_growth().is_none_or(|growth| growth <= 0.01 * self.offered_rate())
    }

    /// Everything arrived, at (nearly) the rate it was offered.
    fn sustained(&self) -> bool {
        self.drained
            && self.published.failed == 0
            && self.published.rate >= 0.9 * self.rate
            && self.delivered_rate() >= 0.85 * self.offered_rate()
    }
}

/// A small xorshift generator: events go to random groups, reproducibly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

impl Bench {
    fn seconds(&self, quick: f64, long: f64) -> f64 {
        self.options.seconds.unwrap_or(if self.options.quick { quick } else { long })
    }

    fn connections(&self, default: usize) -> usize {
        self.options.connections.unwrap_or(default)
    }

    fn targets(&self, defaults: &[Target]) -> Vec<Target> {
        let wanted: Vec<Target> = if self.options.targets.is_empty() {
            defaults.to_vec()
        } else {
            defaults.iter().copied().filter(|t| self.options.targets.contains(t)).collect()
        };
        wanted.into_iter().filter(|t| *t != Target::Rabbitmq || self.rabbitmq).collect()
    }

    async fn open(
        &self,
        target: Target,
        layout: Layout,
        connections: usize,
        name: &str,
    ) -> anyhow::Result<Run> {
        eprintln!("[{name}] {}: starting, {connections} connections", target.label());
        let servers = servers::start(target, &self.servers, name).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = servers.rss();
        let generators = Generators::spawn(
            connections,
            self.options.per_generator,
            layout,
            self.options.threads,
            &self.log_dir,
        )
        .await?;
        let peer = if target == Target::Bare { Peer::Bare } else { Peer::Hubcast };
        let connected = generators_connect(generators, &servers, peer, self).await;
        let (generators, connected) = match connected {
            Ok(pair) => pair,
            Err(error) => {
                servers.stop().await;
                return Err(error);
            }
        };
        // Let allocations settle before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_after = servers.rss();
        let probe = match (&servers.ingress, target) {
            (servers::Ingress::Amqp { url, .. }, Target::Rabbitmq) => {
                let connection =
                    lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                Some((connection, channel))
            }
            _ => None,
        };
        eprintln!(
            "[{name}] {}: {} connected in {:.1} s ({} failed), server RSS {:.1} -> {:.1} MiB",
            target.label(),
            connected.established,
            connected.seconds,
            connected.failed,
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0
        );
        Ok(Run { servers, generators, connected, connections, rss_before, rss_after, probe })
    }

    fn meter(&self, run: &Run) -> Meter {
        Meter {
            server: run.servers.cpu(),
            broker: self.broker_cpu(run),
            generator: run.generators.cpu(),
            start: Instant::now(),
        }
    }

    fn broker_cpu(&self, run: &Run) -> Option<f64> {
        if run.servers.target != Target::Rabbitmq {
            return None;
        }
        self.broker_pid.and_then(crate::procfs::cpu_seconds)
    }

    fn cpu(&self, run: &Run, meter: &Meter) -> Cpu {
        Cpu {
            server: run.servers.cpu() - meter.server,
            broker: self.broker_cpu(run).zip(meter.broker).map(|(now, then)| now - then),
            generator: run.generators.cpu() - meter.generator,
            wall: meter.start.elapsed().as_secs_f64(),
        }
    }

    /// Publishes `rate` events a second for `seconds` to the groups `pick` chooses, waits for them to
    /// arrive, and measures. Samples the backlog every 250 ms meanwhile.
    async fn step(
        &self,
        run: &mut Run,
        publisher: Publisher,
        rate: f64,
        count: u64,
        pick: impl FnMut() -> usize + Send + 'static,
    ) -> anyhow::Result<(Publisher, Step)> {
        run.generators.reset().await?;
        let frames_before = publisher.frames_expected();
        let progress = publisher.progress();
        let meter = self.meter(run);
        let mut publishing = tokio::spawn(async move {
            let mut publisher = publisher;
            let published = publisher.publish(rate, count, pick).await;
            (publisher, published)
        });
        let mut max_pending = 0u64;
        let mut max_router_backlog: Option<u32> = None;
        let mut backlog = Vec::new();
        let started = Instant::now();
        let (publisher, published) = loop {
            tokio::select! {
                done = &mut publishing => break done.context("the publisher panicked")?,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let stats = run.generators.stats().await?;
            let expected = progress.frames_expected() - frames_before;
            let pending = expected.saturating_sub(stats.frames);
            max_pending = max_pending.max(pending);
            backlog.push((started.elapsed().as_secs_f64(), pending));
            if let Some(backlog) = run.router_backlog().await {
                max_router_backlog = Some(max_router_backlog.unwrap_or(0).max(backlog));
            }
        };
        let want = publisher.frames_expected() - frames_before;
        let (stats, drained) = drain(&mut run.generators, want).await?;
        let cpu = self.cpu(run, &meter);
        let report = run.generators.report(&publisher.sequences).await?;
        Ok((
            publisher,
            Step {
                rate,
                published,
                want,
                stats,
                drained,
                report,
                cpu,
                max_pending,
                max_router_backlog,
                backlog,
            },
        ))
    }

    pub async fn run(&self, scenario: Scenario) -> anyhow::Result<Section> {
        match scenario {
            Scenario::Broadcast => self.broadcast().await,
            Scenario::Tenant => self.tenant().await,
            Scenario::Tasks => self.tasks().await,
            Scenario::Idle => self.idle().await,
            Scenario::Reconnect => self.reconnect().await,
            Scenario::Slow => self.slow().await,
        }
    }

    fn row(&self, phase: &str, run: &Run, step: &Step) -> Row {
        let mut row = Row::new(phase, run.servers.target, run.connected.established);
        row.connect_rate = Some(run.connect_rate());
        row.events_per_s = Some(step.published.rate);
        row.frames_per_s = Some(step.delivered_rate());
        row.latency = step.latency();
        row.cpu = step.cpu;
        row.rss_per_connection = Some(run.rss_per_connection(run.rss_after));
        row.lost = step.report.lost;
        row.duplicated = step.report.duplicated;
        if step.published.failed > 0 {
            row.notes
                .push(format!("{} publishes failed: {:?}", step.published.failed, step.published.errors));
        }
        if !step.drained {
            row.notes.push(format!("only {} of {} frames arrived", step.stats.frames, step.want));
        }
        if !step.report.closes.is_empty() {
            row.notes.push(format!("server closes: {:?}", step.report.closes));
        }
        row
    }

    /// One group of every connection; publish rates stepped up until delivery saturates.
    async fn broadcast(&self) -> anyhow::Result<Section> {
        let connections = self.connections(10_000);
        let seconds = self.seconds(2.0, 5.0);
        let rates =
            self.options.rates.clone().unwrap_or_else(|| vec![5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0]);
        let mut section = Section {
            name: "broadcast".into(),
            about: format!(
                "One group of {connections} connections (key 1, `SubscribeToTask(\"b\")`). Events are published \
                 at stepped rates of {rates:?} events/s, {seconds} s per step, until delivery saturates (under 85% \
                 of the offered frames/s, or frames still missing 3 s after the last publish). The table row shows \
                 the best delivered frames/s (saturation) and the latency of the highest sustained step."
            ),
            ..Default::default()
        };
        let mut all_steps: Vec<(Target, Vec<Step>)> = Vec::new();
        for target in self.targets(&[Target::Bare, Target::Embedded, Target::Rabbitmq]) {
            let mut run = self.open(target, Layout::Broadcast, connections, "broadcast").await?;
            let mut publisher = Publisher::connect(
                &run.servers.ingress,
                Layout::Broadcast,
                connections,
                self.options.publish_lanes,
                0,
            )
            .await?;
            let mut steps = Vec::new();
            for &rate in &rates {
                let count = (rate * seconds).round().max(1.0) as u64;
                let (back, step) = self.step(&mut run, publisher, rate, count, || 0).await?;
                publisher = back;
                eprintln!(
                    "[broadcast] {}: {rate} ev/s -> {} frames/s delivered, p99 {} ms, drained {}",
                    target.label(),
                    step.delivered_rate().round(),
                    step.latency().map_or("-".into(), |l| ms(l.p99)),
                    step.drained
                );
                let saturated = !step.sustained();
                steps.push(step);
                if saturated {
                    break;
                }
            }
            let best = steps
                .iter()
                .max_by(|a, b| a.delivered_rate().total_cmp(&b.delivered_rate()))
                .context("no broadcast step ran")?;
            let sustained = steps.iter().rev().find(|s| s.sustained()).unwrap_or(best);
            let mut row = self.row("", &run, best);
            row.events_per_s = Some(best.published.rate);
            row.latency = sustained.latency();
            let last = steps.last().expect("at least one step");
            row.lost = last.report.lost;
            row.duplicated = last.report.duplicated;
            row.notes.push(format!(
                "saturation {:.0} frames/s at {} ev/s; latency of the highest sustained step ({} ev/s); server RSS {} per connection after the steps",
                best.delivered_rate(),
                best.rate,
                sustained.rate,
                format_kib(run.rss_per_connection(run.servers.rss()))
            ));
            section.rows.push(row);
            run.close().await;
            all_steps.push((target, steps));
        }

        let mut table = vec![
            "| target | ev/s | offered frames/s | delivered frames/s | p50 | p99 | p99.9 | max | drain ms | CPU server | CPU generator | sustained |".to_owned(),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".to_owned(),
        ];
        for (target, steps) in &all_steps {
            for step in steps {
                let latency = step.latency().unwrap_or_default();
                table.push(format!(
                    "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} | {:.2} s | {:.2} s | {} |",
                    target.label(),
                    step.rate,
                    step.offered_rate(),
                    step.delivered_rate(),
                    ms(latency.p50),
                    ms(latency.p99),
                    ms(latency.p999),
                    ms(latency.max),
                    step.drain_ms(),
                    step.cpu.server,
                    step.cpu.generator,
                    if step.sustained() { "yes" } else { "no" }
                ));
            }
        }
        section.details.push("Steps:\n".into());
        section.details.extend(table);

        let saturation = |target: Target| {
            all_steps
                .iter()
                .find(|(t, _)| *t == target)
                .map(|(_, steps)| steps.iter().map(Step::delivered_rate).fold(0.0, f64::max))
        };
        let bare = saturation(Target::Bare);
        for (target, share, name) in [
            (Target::Embedded, 0.6, "broadcast 10k, embedded bus: ≥ 60% of bare frames/s at saturation, p99 ≤ 2× bare at the same rate"),
            (Target::Rabbitmq, 0.5, "broadcast 10k, RabbitMQ: ≥ 50% of bare frames/s at saturation"),
        ] {
            let floor = match (bare, saturation(target)) {
                (Some(bare), Some(ours)) => {
                    let mut met = ours >= share * bare;
                    let mut detail = format!("{:.0} vs {:.0} frames/s ({:.0}%)", ours, bare, ours / bare * 100.0);
                    if target == Target::Embedded {
                        match common_p99(&all_steps, Target::Bare, target) {
                            Some((rate, ours_p99, bare_p99)) => {
                                met &= ours_p99 <= 2.0 * bare_p99;
                                detail.push_str(&format!(
                                    "; p99 at {rate} ev/s {} ms vs {} ms ({:.2}×)",
                                    ms(ours_p99),
                                    ms(bare_p99),
                                    ours_p99 / bare_p99
                                ));
                            }
                            None => {
                                met = false;
                                detail.push_str("; no rate both sustained");
                            }
                        }
                    }
                    if connections < 10_000 {
                        detail.push_str(&format!(" (at {connections} connections, not 10k)"));
                    }
                    Floor { name: name.into(), met: Some(met), detail }
                }
                _ => Floor { name: name.into(), met: None, detail: "target not run".into() },
            };
            section.floors.push(floor);
        }
        Ok(section)
    }

    /// 10k connections over 1k keys, events to random keys at 1k and 5k events/s.
    async fn tenant(&self) -> anyhow::Result<Section> {
        let connections = self.connections(10_000);
        let layout = Layout::Tenant { per_key: 10 };
        let keys = layout.group_count(connections);
        let seconds = self.seconds(12.0, 30.0);
        let rates = self.options.rates.clone().unwrap_or_else(|| vec![1000.0, 5000.0]);
        let mut section = Section {
            name: "tenant fan-out".into(),
            about: format!(
                "{connections} connections over {keys} keys, 10 per key, all subscribed to task `t` of their key. \
                 Events go to random keys at {rates:?} events/s for {seconds} s each, so each event reaches 10 \
                 connections. Backlog is the largest number of frames published but not yet received, sampled \
                 every 250 ms, and its growth the least-squares slope of those samples after the first second \
                 (steady: under 1% of the offered frames/s); drain is the time from the last publish to the last \
                 receipt."
            ),
            ..Default::default()
        };
        let mut rabbit_steps = Vec::new();
        for target in self.targets(&[Target::Bare, Target::Embedded, Target::Rabbitmq]) {
            let mut run = self.open(target, layout, connections, "tenant").await?;
            let mut publisher =
                Publisher::connect(&run.servers.ingress, layout, connections, self.options.publish_lanes, 0)
                    .await?;
            let mut lost_before = 0;
            let mut duplicated_before = 0;
            for (index, &rate) in rates.iter().enumerate() {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
                let count = (rate * seconds).round() as u64;
                let (back, step) =
                    self.step(&mut run, publisher, rate, count, move || rng.below(keys)).await?;
                publisher = back;
                eprintln!(
                    "[tenant] {}: {rate} ev/s -> published {:.0}/s, p99 {} ms, drain {:.0} ms, backlog {} frames, router queue {:?}",
                    target.label(),
                    step.published.rate,
                    step.latency().map_or("-".into(), |l| ms(l.p99)),
                    step.drain_ms(),
                    step.max_pending,
                    step.max_router_backlog
                );
                let mut row = self.row(&format!("{} ev/s", short(rate)), &run, &step);
                row.lost = step.report.lost - lost_before;
                row.duplicated = step.report.duplicated - duplicated_before;
                lost_before = step.report.lost;
                duplicated_before = step.report.duplicated;
                let mut note = format!(
                    "backlog max {} frames, growing {:.0} frames/s, drain {:.0} ms",
                    step.max_pending,
                    step.backlog_growth().unwrap_or(0.0),
                    step.drain_ms()
                );
                if let Some(backlog) = step.max_router_backlog {
                    note.push_str(&format!(", router queue max {backlog}"));
                }
                row.notes.insert(0, note);
                section.rows.push(row);
                if target == Target::Rabbitmq {
                    rabbit_steps.push(step);
                }
            }
            run.close().await;
        }
        let find = |rate: f64| rabbit_steps.iter().find(|s| s.rate == rate);
        section.floors.push(match find(1000.0) {
            Some(step) => {
                let p99 = step.latency().map_or(f64::INFINITY, |l| l.p99);
                Floor {
                    name: "tenant fan-out, RabbitMQ, 1k events/s: p99 < 20 ms".into(),
                    met: Some(p99 < 20.0 && step.sustained()),
                    detail: format!("p99 {} ms", ms(p99)),
                }
            }
            None => Floor {
                name: "tenant fan-out, RabbitMQ, 1k events/s: p99 < 20 ms".into(),
                met: None,
                detail: "not run".into(),
            },
        });
        section.floors.push(match find(5000.0) {
            Some(step) => Floor {
                name: "tenant fan-out, RabbitMQ, 5k events/s sustained, no backlog growth".into(),
                met: Some(step.steady()),
                detail: format!(
                    "published {:.0}/s, delivered {:.0} frames/s, backlog growing {:.0} frames/s (max {} frames), drain {:.0} ms, router queue max {}, p99 {} ms",
                    step.published.rate,
                    step.delivered_rate(),
                    step.backlog_growth().unwrap_or(0.0),
                    step.max_pending,
                    step.drain_ms(),
                    step.max_router_backlog.unwrap_or(0),
                    step.latency().map_or("-".into(), |l| ms(l.p99)),
                ),
            },
            None => Floor {
                name: "tenant fan-out, RabbitMQ, 5k events/s sustained, no backlog growth".into(),
                met: None,
                detail: "not run".into(),
            },
        });
        Ok(section)
    }

    /// Many tasks with one subscriber each, at high event rates.
    async fn tasks(&self) -> anyhow::Result<Section> {
        let connections = self.connections(10_000);
        let layout = Layout::Tasks { per_key: 10 };
        let seconds = self.seconds(3.0, 15.0);
        let rates = self.options.rates.clone().unwrap_or_else(|| vec![2000.0, 5000.0, 10000.0]);
        let mut section = Section {
            name: "task progress storm".into(),
            about: format!(
                "{connections} tasks with one subscriber each (10 connections per key, each subscribed to its own \
                 task). Events go to random tasks at stepped rates of {rates:?} events/s, {seconds} s each, so \
                 every event is one frame: this measures the per-event cost (publish API or RabbitMQ, routing, \
                 one delivery). Stepping stops at the first rate not sustained."
            ),
            ..Default::default()
        };
        for target in self.targets(&[Target::Bare, Target::Embedded, Target::Rabbitmq]) {
            let mut run = self.open(target, layout, connections, "tasks").await?;
            let mut publisher =
                Publisher::connect(&run.servers.ingress, layout, connections, self.options.publish_lanes, 0)
                    .await?;
            let (mut lost_before, mut duplicated_before) = (0, 0);
            for (index, &rate) in rates.iter().enumerate() {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (index as u64 + 7));
                let count = (rate * seconds).round() as u64;
                let (back, step) =
                    self.step(&mut run, publisher, rate, count, move || rng.below(connections)).await?;
                publisher = back;
                eprintln!(
                    "[tasks] {}: {rate} ev/s -> published {:.0}/s, delivered {:.0}/s, p99 {} ms",
                    target.label(),
                    step.published.rate,
                    step.delivered_rate(),
                    step.latency().map_or("-".into(), |l| ms(l.p99)),
                );
                let mut row = self.row(&format!("{} ev/s", short(rate)), &run, &step);
                row.lost = step.report.lost - lost_before;
                row.duplicated = step.report.duplicated - duplicated_before;
                lost_before = step.report.lost;
                duplicated_before = step.report.duplicated;
                let mut note =
                    format!("drain {:.0} ms, backlog max {} frames", step.drain_ms(), step.max_pending);
                if let Some(backlog) = step.max_router_backlog {
                    note.push_str(&format!(", router queue max {backlog}"));
                }
                if step.published.max_lag > Duration::from_millis(100) {
                    note.push_str(&format!(
                        ", publisher fell {} ms behind",
                        step.published.max_lag.as_millis()
                    ));
                }
                if !step.sustained() {
                    note.push_str(", not sustained");
                }
                row.notes.insert(0, note);
                let sustained = step.sustained();
                section.rows.push(row);
                if !sustained {
                    break;
                }
            }
            run.close().await;
        }
        Ok(section)
    }

    /// Connections open, nothing published: the memory and CPU of keep-alives.
    async fn idle(&self) -> anyhow::Result<Section> {
        let connections = self.connections(10_000);
        let layout = Layout::Tenant { per_key: 10 };
        let seconds = self.seconds(16.0, 60.0);
        let mut section = Section {
            name: "idle".into(),
            about: format!(
                "{connections} connections (10 per key, each subscribed to a task), nothing published, for {seconds} s. \
                 Clients send a Ping every {} s as the JS client does; hubcast sends its own after 15 s of silence \
                 (the bare broadcaster sends none). RSS/conn is the server's resident memory growth per \
                 connection at the end of the idle period.",
                self.options.ping_interval.as_secs_f64()
            ),
            ..Default::default()
        };
        let mut embedded = None;
        for target in self.targets(&[Target::Bare, Target::Embedded, Target::Rabbitmq]) {
            let mut run = self.open(target, layout, connections, "idle").await?;
            let meter = self.meter(&run);
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            let cpu = self.cpu(&run, &meter);
            let rss = run.servers.rss();
            let stats = run.generators.stats().await?;
            let mut row = Row::new("", target, run.connected.established);
            row.connect_rate = Some(run.connect_rate());
            row.cpu = cpu;
            row.rss_per_connection = Some(run.rss_per_connection(rss));
            row.notes.push(format!(
                "RSS {:.1} MiB before connecting, {:.1} MiB after, {:.1} MiB after idling ({} per connection right after connecting); {} of {} still connected",
                run.rss_before as f64 / 1048576.0,
                run.rss_after as f64 / 1048576.0,
                rss as f64 / 1048576.0,
                format_kib(run.rss_per_connection(run.rss_after)),
                stats.alive,
                connections
            ));
            if stats.alive < connections as u64 {
                row.lost = connections as u64 - stats.alive;
                row.notes.push("connections were lost while idle".into());
            }
            if target == Target::Embedded {
                embedded = Some((run.rss_per_connection(rss), stats.alive));
            }
            section.rows.push(row);
            run.close().await;
        }
        let name = "idle: ≤ 6 KiB resident per connection at 10k connections (embedded bus)";
        section.floors.push(match embedded {
            Some((per, alive)) => Floor {
                name: name.into(),
                met: Some(per <= 6.0 * 1024.0 && alive as usize == connections),
                detail: format!(
                    "{}{}",
                    format_kib(per),
                    if connections < 10_000 {
                        format!(" (at {connections} connections, not 10k)")
                    } else {
                        String::new()
                    }
                ),
            },
            None => Floor { name: name.into(), met: None, detail: "not run".into() },
        });
        Ok(section)
    }

    /// Every client drops its socket at once and connects again.
    async fn reconnect(&self) -> anyhow::Result<Section> {
        let connections = self.connections(10_000);
        let layout = Layout::Tenant { per_key: 10 };
        let keys = layout.group_count(connections);
        let mut section = Section {
            name: "reconnect storm".into(),
            about: format!(
                "{connections} connections (10 per key, subscribed). One event per key is delivered, then every \
                 client drops its TCP connection without a close and immediately connects, handshakes and \
                 subscribes again ({} attempts in flight). conn/s is the reconnect rate; one event \
                 per key is then published again and must reach every connection exactly once. CPU covers the \
                 storm only.",
                self.options.concurrency
            ),
            ..Default::default()
        };
        for target in self.targets(&[Target::Bare, Target::Embedded, Target::Rabbitmq]) {
            let mut run = self.open(target, layout, connections, "reconnect").await?;
            let mut publisher =
                Publisher::connect(&run.servers.ingress, layout, connections, self.options.publish_lanes, 0)
                    .await?;
            let rate = 2000.0;
            let mut next = 0;
            let (back, before) = self
                .step(&mut run, publisher, rate, keys as u64, move || {
                    next += 1;
                    (next - 1) % keys
                })
                .await?;
            publisher = back;
            let rss_before_storm = run.servers.rss();
            let meter = self.meter(&run);
            let storm = run.generators.reconnect().await?;
            // The server notices the dropped sockets on its own time; wait until its count is right again.
            let settle = Instant::now();
            let mut server_count = run.servers.open_connections().await;
            while server_count.is_some_and(|c| c != connections as u64)
                && settle.elapsed() < Duration::from_secs(20)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                server_count = run.servers.open_connections().await;
            }
            let cpu = self.cpu(&run, &meter);
            let rss_after_storm = run.servers.rss();
            let mut next = 0;
            let (_publisher, after) = self
                .step(&mut run, publisher, rate, keys as u64, move || {
                    next += 1;
                    (next - 1) % keys
                })
                .await?;
            eprintln!(
                "[reconnect] {}: {} back in {:.1} s ({} failed), server count {:?}, lost {}",
                target.label(),
                storm.established,
                storm.seconds,
                storm.failed,
                server_count,
                after.report.lost
            );
            let mut row = Row::new("", target, storm.established);
            row.connect_rate = Some(storm.established as f64 / storm.seconds.max(1e-9));
            row.events_per_s = Some(after.published.rate);
            row.frames_per_s = Some(after.delivered_rate());
            row.latency = after.latency();
            row.lost = after.report.lost;
            row.duplicated = after.report.duplicated;
            row.cpu = cpu;
            row.rss_per_connection = Some(run.rss_per_connection(rss_after_storm));
            row.notes.push(format!(
                "all back in {:.1} s ({} failed); first connect {:.0} conn/s; server RSS {:.1} MiB before the storm, {:.1} MiB after{}",
                storm.seconds,
                storm.failed,
                run.connect_rate(),
                rss_before_storm as f64 / 1048576.0,
                rss_after_storm as f64 / 1048576.0,
                match server_count {
                    Some(count) => format!(
                        "; server counted {count} connections {:.1} s after the storm",
                        settle.elapsed().as_secs_f64()
                    ),
                    None => String::new(),
                }
            ));
            if before.report.lost > 0 {
                row.notes.push(format!("{} frames lost before the storm", before.report.lost));
            }
            if !storm.errors.is_empty() {
                row.notes.push(format!("errors: {:?}", &storm.errors[..storm.errors.len().min(3)]));
            }
            section.rows.push(row);
            run.close().await;
        }
        Ok(section)
    }

    /// A few clients stop reading while large events flow: they must be closed as slow consumers, and the
    /// others must not notice.
    async fn slow(&self) -> anyhow::Result<Section> {
        let connections = 200;
        let stalled = 5;
        let padding = 8192;
        let rate = 200.0;
        let seconds = 4.0;
        let mut section = Section {
            name: "slow consumer".into(),
            about: format!(
                "The deliberate slow-consumer case: {connections} connections in one group, {stalled} of which stop \
                 reading, while {rate} events/s of {} KiB each are broadcast for {seconds} s. hubcast must close \
                 the stalled ones (`limits.outbound_buffer_bytes`, 1 MiB) and deliver everything to the others; the \
                 stalled clients' losses are expected and not counted in `lost`.",
                padding / 1024
            ),
            ..Default::default()
        };
        for target in self.targets(&[Target::Embedded]) {
            let mut run = self.open(target, Layout::Broadcast, connections, "slow").await?;
            let publisher = Publisher::connect(
                &run.servers.ingress,
                Layout::Broadcast,
                connections,
                self.options.publish_lanes,
                padding,
            )
            .await?;
            run.generators.stall(stalled).await?;
            let metrics_before = slow_closes(&run.servers).await;
            let count = (rate * seconds) as u64;
            run.generators.reset().await?;
            let meter = self.meter(&run);
            let mut publisher = publisher;
            let published = publisher.publish(rate, count, || 0).await;
            let healthy_want = published.events * (connections - stalled) as u64;
            let (stats, drained) = drain(&mut run.generators, healthy_want).await?;
            let cpu = self.cpu(&run, &meter);
            let closed = slow_closes(&run.servers).await.zip(metrics_before).map(|(a, b)| a - b);
            run.generators.release().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let report = run.generators.report(&publisher.sequences).await?;
            let alive = run.generators.stats().await?.alive;
            let mut row = Row::new("", target, run.connected.established);
            row.events_per_s = Some(published.rate);
            let span = stats.last_ns.saturating_sub(published.first_ns) as f64 / 1e9;
            row.frames_per_s = Some(stats.frames as f64 / span.max(1e-9));
            row.latency = Latency::of(&report.latency);
            row.lost = report.lost - report.stalled_lost;
            row.duplicated = report.duplicated;
            row.cpu = cpu;
            row.notes.push(format!(
                "{stalled} stalled clients: {} closed as slow consumers (server metric), they missed {} frames; {} of {connections} connections left; the others missed {}{}",
                closed.map_or("?".into(), |c| c.to_string()),
                report.stalled_lost,
                alive,
                row.lost,
                if drained { "" } else { " (not everything arrived)" }
            ));
            section.floors.push(Floor {
                name: "slow consumer: stalled clients closed, the others lose nothing".into(),
                met: Some(closed == Some(stalled as u64) && row.lost == 0 && row.duplicated == 0),
                detail: format!(
                    "{} of {stalled} closed, {} frames lost by the others",
                    closed.unwrap_or(0),
                    row.lost
                ),
            });
            section.rows.push(row);
            run.close().await;
        }
        Ok(section)
    }
}

async fn generators_connect(
    mut generators: Generators,
    servers: &Servers,
    peer: Peer,
    bench: &Bench,
) -> anyhow::Result<(Generators, Connected)> {
    let connected = generators
        .connect(
            &servers.address,
            peer,
            bench.options.proto,
            &servers.jwt_secret,
            bench.options.concurrency,
            bench.options.ping_interval,
            &bench.options.source_ips,
        )
        .await?;
    if connected.established == 0 {
        anyhow::bail!("no connection could be established: {:?}", connected.errors);
    }
    Ok((generators, connected))
}

/// Waits until `want` frames arrived, or nothing arrived for 3 s (30 s at most).
async fn drain(generators: &mut Generators, want: u64) -> anyhow::Result<(Stats, bool)> {
    let start = Instant::now();
    let mut last = u64::MAX;
    let mut progress = Instant::now();
    loop {
        let stats = generators.stats().await?;
        if stats.frames >= want {
            return Ok((stats, true));
        }
        if stats.frames != last {
            last = stats.frames;
            progress = Instant::now();
        }
        if progress.elapsed() > Duration::from_secs(3) || start.elapsed() > Duration::from_secs(30) {
            return Ok((stats, false));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// hubcast's count of slow-consumer closes.
async fn slow_closes(servers: &Servers) -> Option<u64> {
    let (_, text) = crate::http::get(&servers.address, "/metrics").await.ok()?;
    text.lines()
        .find(|line| line.starts_with("hubcast_slow_consumer_closes_total"))
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The p99 of two targets at the highest rate both sustained: (rate, ours, bare).
fn common_p99(all: &[(Target, Vec<Step>)], bare: Target, ours: Target) -> Option<(f64, f64, f64)> {
    let steps = |target: Target| all.iter().find(|(t, _)| *t == target).map(|(_, s)| s);
    let (bare_steps, our_steps) = (steps(bare)?, steps(ours)?);
    our_steps.iter().rev().filter(|s| s.sustained()).find_map(|ours| {
        let bare = bare_steps.iter().find(|b| b.rate == ours.rate && b.sustained())?;
        Some((ours.rate, ours.latency()?.p99, bare.latency()?.p99))
    })
}

fn short(rate: f64) -> String {
    if rate >= 1000.0 && rate % 1000.0 == 0.0 {
        format!("{}k", rate / 1000.0)
    } else {
        format!("{rate}")
    }
}

fn format_kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

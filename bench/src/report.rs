//! Results and their Markdown rendering.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::servers::Target;

/// Publish-to-receive latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }
}

/// CPU seconds spent over a measured window of `wall` seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub server: f64,
    pub broker: Option<f64>,
    pub generator: f64,
    pub wall: f64,
}

#[derive(Debug, Clone)]
pub struct Row {
    /// The phase within the scenario, e.g. `1000 ev/s`.
    pub phase: String,
    pub target: Target,
    pub connections: u64,
    pub connect_rate: Option<f64>,
    pub events_per_s: Option<f64>,
    pub frames_per_s: Option<f64>,
    pub latency: Option<Latency>,
    pub lost: u64,
    pub duplicated: u64,
    pub cpu: Cpu,
    pub rss_per_connection: Option<f64>,
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(phase: impl Into<String>, target: Target, connections: u64) -> Self {
        Self {
            phase: phase.into(),
            target,
            connections,
            connect_rate: None,
            events_per_s: None,
            frames_per_s: None,
            latency: None,
            lost: 0,
            duplicated: 0,
            cpu: Cpu::default(),
            rss_per_connection: None,
            notes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Floor {
    pub name: String,
    /// `None` when the run did not measure it (a target or scenario was left out).
    pub met: Option<bool>,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct Section {
    pub name: String,
    pub about: String,
    pub rows: Vec<Row>,
    /// Further Markdown (step tables, observations).
    pub details: Vec<String>,
    pub floors: Vec<Floor>,
}

fn num(value: f64) -> String {
    if value >= 100_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

pub fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn opt(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "–".into(), format)
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// CPU seconds as a share of one core over the window.
fn cpu(seconds: f64, wall: f64) -> String {
    if wall <= 0.0 {
        return "–".into();
    }
    format!("{seconds:.1} s ({:.0}%)", seconds / wall * 100.0)
}

/// hubcast against the bare broadcaster of the same section and phase.
fn ratio(row: &Row, bare: Option<&Row>) -> String {
    let Some(bare) = bare else { return "–".into() };
    if row.target == Target::Bare {
        return "1".into();
    }
    let mut parts = Vec::new();
    if let (Some(a), Some(b)) = (row.frames_per_s, bare.frames_per_s) {
        if b > 0.0 {
            parts.push(format!("frames/s {:.2}", a / b));
        }
    }
    if let (Some(a), Some(b)) = (row.latency, bare.latency) {
        if b.p99 > 0.0 {
            parts.push(format!("p99 {:.2}", a.p99 / b.p99));
        }
    }
    if bare.cpu.server > 0.05 && row.cpu.server > 0.0 {
        // CPU per delivered frame when frames flowed, plain CPU time otherwise.
        let per = |r: &Row| {
            r.frames_per_s.filter(|f| *f > 0.0).map_or(r.cpu.server, |f| r.cpu.server / (f * r.cpu.wall))
        };
        parts.push(format!("CPU {:.2}", per(row) / per(bare)));
    }
    if let (Some(a), Some(b)) = (row.rss_per_connection, bare.rss_per_connection) {
        if b > 0.0 {
            parts.push(format!("RSS {:.2}", a / b));
        }
    }
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join(" · ")
    }
}

pub fn render(title: &str, settings: &[String], sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {title}\n");
    for setting in settings {
        let _ = writeln!(out, "- {setting}");
    }
    let _ = writeln!(out);

    let floors: Vec<&Floor> = sections.iter().flat_map(|s| &s.floors).collect();
    if !floors.is_empty() {
        let _ = writeln!(out, "## Floors\n");
        let _ = writeln!(out, "| floor | result | measured |");
        let _ = writeln!(out, "|---|---|---|");
        for floor in floors {
            let result = match floor.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let _ = writeln!(out, "| {} | {result} | {} |", floor.name, floor.detail);
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "Latency is publish-to-receive in ms. CPU is seconds over the measured window (share of one core). \
         RSS/conn is the server's resident memory growth per connection. The last column is hubcast as a \
         ratio to the bare broadcaster in the same run (frames/s and RSS: higher/lower is better; CPU is per \
         delivered frame).\n"
    );
    let _ = writeln!(
        out,
        "| scenario | target | conns | conn/s | events/s | frames/s | p50 | p99 | p99.9 | max | lost | dup | CPU server | CPU broker | CPU generator | RSS/conn | vs bare |"
    );
    let _ =
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for section in sections {
        for row in &section.rows {
            let bare = section.rows.iter().find(|r| r.target == Target::Bare && r.phase == row.phase);
            let latency = row.latency;
            let scenario = if row.phase.is_empty() {
                section.name.clone()
            } else {
                format!("{} {}", section.name, row.phase)
            };
            let _ = writeln!(
                out,
                "| {scenario} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.target.label(),
                row.connections,
                opt(row.connect_rate, num),
                opt(row.events_per_s, num),
                opt(row.frames_per_s, num),
                opt(latency.map(|l| l.p50), ms),
                opt(latency.map(|l| l.p99), ms),
                opt(latency.map(|l| l.p999), ms),
                opt(latency.map(|l| l.max), ms),
                row.lost,
                row.duplicated,
                cpu(row.cpu.server, row.cpu.wall),
                row.cpu.broker.map_or_else(|| "–".into(), |b| cpu(b, row.cpu.wall)),
                cpu(row.cpu.generator, row.cpu.wall),
                opt(row.rss_per_connection, kib),
                ratio(row, bare),
            );
        }
    }
    let _ = writeln!(out);

    for section in sections {
        let _ = writeln!(out, "## {}\n", section.name);
        let _ = writeln!(out, "{}\n", section.about);
        for row in &section.rows {
            if !row.notes.is_empty() {
                let phase = if row.phase.is_empty() { String::new() } else { format!(" ({})", row.phase) };
                let _ = writeln!(out, "- {}{phase}: {}", row.target.label(), row.notes.join("; "));
            }
        }
        if section.rows.iter().any(|r| !r.notes.is_empty()) {
            let _ = writeln!(out);
        }
        for detail in &section.details {
            let _ = writeln!(out, "{detail}");
        }
        if !section.details.is_empty() {
            let _ = writeln!(out);
        }
    }
    out
}

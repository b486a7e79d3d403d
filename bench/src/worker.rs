//! A generator process: opens its share of the connections and records what they receive.
//!
//! The coordinator drives it with one JSON [`Request`] per line on stdin and reads one JSON [`Reply`] per
//! line on stdout. A process may hold at most 20 000 open files here, so large runs use several of these.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::layout::{ConnectSpec, Peer, Reply, Report, Request, Stats};
use crate::proto::{self, Incoming};

const SHARDS: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_ATTEMPTS: u32 = 5;

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// A latency histogram in nanoseconds, from 1 µs to 100 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The sequence numbers one connection has seen of its group's events.
#[derive(Debug, Default)]
struct Tracker {
    /// Every sequence number below this was seen.
    next: u64,
    /// Seen, above `next` (out of order or after a gap).
    ahead: BTreeSet<u64>,
    duplicated: u64,
}

impl Tracker {
    fn record(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        } else if seq < self.next || !self.ahead.insert(seq) {
            self.duplicated += 1;
        }
    }

    fn distinct(&self) -> u64 {
        self.next + self.ahead.len() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Run,
    Reconnect,
    Stall(usize),
    Release,
    Quit,
}

struct Shared {
    spec: ConnectSpec,
    tokens: HashMap<String, String>,
    histograms: Vec<Mutex<Histogram<u64>>>,
    frames: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
    alive: AtomicU64,
    trackers: Vec<Mutex<Tracker>>,
    closes: Mutex<HashMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    control: watch::Sender<Command>,
    gate: Semaphore,
    /// How many of the first connections were last told to stall.
    stalled: AtomicU64,
}

impl Shared {
    fn note_error(&self, error: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 10 {
            errors.push(error);
        }
    }

    fn stats(&self) -> Stats {
        let first = self.first_ns.load(Ordering::Relaxed);
        Stats {
            established: self.established.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            alive: self.alive.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            first_ns: if first == u64::MAX { 0 } else { first },
            last_ns: self.last_ns.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for histogram in &self.histograms {
            histogram.lock().unwrap().reset();
        }
        self.frames.store(0, Ordering::Relaxed);
        self.first_ns.store(u64::MAX, Ordering::Relaxed);
        self.last_ns.store(0, Ordering::Relaxed);
    }

    fn report(&self, expected: &[u64]) -> Report {
        let mut merged = new_histogram();
        for histogram in &self.histograms {
            merged.add(&*histogram.lock().unwrap()).expect("histograms of equal bounds");
        }
        let latency = merged.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        let (mut lost, mut stalled_lost, mut duplicated) = (0, 0, 0);
        let stalled = self.stalled.load(Ordering::Relaxed) as usize;
        for (local, tracker) in self.trackers.iter().enumerate() {
            let tracker = tracker.lock().unwrap();
            let group = self.spec.layout.group_of(self.spec.first + local);
            let want = expected.get(group).copied().unwrap_or(0);
            let missing = want.saturating_sub(tracker.distinct());
            lost += missing;
            if local < stalled {
                stalled_lost += missing;
            }
            // Sequence numbers never published count as duplicates: something made them up.
            duplicated += tracker.duplicated + tracker.distinct().saturating_sub(want);
        }
        let closes = self.closes.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
        Report {
            stats: self.stats(),
            latency,
            lost,
            stalled_lost,
            duplicated,
            closes,
            errors: self.errors.lock().unwrap().clone(),
        }
    }

    /// Records the events of one WebSocket message; returns a server Close if there was one.
    fn receive(&self, local: usize, payload: &[u8], handshake_pending: &mut bool) -> Receipt {
        let now = now_ns();
        // A client told to stall reads stale frames once released: they count for loss, not for latency.
        let stalled = local < self.stalled.load(Ordering::Relaxed) as usize;
        let mut events = 0u64;
        let mut receipt = Receipt::default();
        let mut tracker = None;
        let mut histogram = None;
        proto::parse(self.spec.proto, payload, handshake_pending, &mut |message| match message {
            Incoming::Event { seq, sent_ns } => {
                tracker.get_or_insert_with(|| self.trackers[local].lock().unwrap()).record(seq);
                if stalled {
                    return;
                }
                events += 1;
                histogram
                    .get_or_insert_with(|| self.histograms[local % SHARDS].lock().unwrap())
                    .saturating_record(now.saturating_sub(sent_ns).max(1_000));
            }
            Incoming::HandshakeOk => receipt.handshake_ok = true,
            Incoming::HandshakeError(error) => receipt.error = Some(format!("handshake refused: {error}")),
            Incoming::Completion(None) => receipt.completed = true,
            Incoming::Completion(Some(error)) => receipt.error = Some(format!("subscribe failed: {error}")),
            Incoming::Close(error) => {
                let error = error.unwrap_or_else(|| "(none)".into());
                *self.closes.lock().unwrap().entry(error.clone()).or_default() += 1;
                receipt.error = Some(format!("closed by the server: {error}"));
                receipt.closed = true;
            }
            Incoming::Ping | Incoming::Other => {}
        });
        if events > 0 {
            self.frames.fetch_add(events, Ordering::Relaxed);
            self.first_ns.fetch_min(now, Ordering::Relaxed);
            self.last_ns.fetch_max(now, Ordering::Relaxed);
        }
        receipt
    }
}

#[derive(Default)]
struct Receipt {
    handshake_ok: bool,
    completed: bool,
    closed: bool,
    error: Option<String>,
}

/// Runs the worker until `quit` or the end of stdin.
pub async fn run() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut shared: Option<Arc<Shared>> = None;
    while let Some(line) = lines.next_line().await? {
        let request: Request = serde_json::from_str(&line).context("reading a request")?;
        let quit = matches!(request, Request::Quit);
        let reply = match handle(&mut shared, request).await {
            Ok(reply) => reply,
            Err(error) => Reply::Error { message: format!("{error:#}") },
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        stdout.write_all(text.as_bytes()).await?;
        stdout.flush().await?;
        if quit {
            break;
        }
    }
    Ok(())
}

async fn handle(shared: &mut Option<Arc<Shared>>, request: Request) -> anyhow::Result<Reply> {
    let state = || shared.as_ref().ok_or_else(|| anyhow!("not connected yet"));
    Ok(match request {
        Request::Connect(spec) => {
            if shared.is_some() {
                bail!("already connected");
            }
            let started = Instant::now();
            let state = Arc::new(new_shared(spec));
            for local in 0..state.spec.count {
                tokio::spawn(connection(Arc::clone(&state), local));
            }
            *shared = Some(Arc::clone(&state));
            wait_for_connections(&state).await;
            let errors = state.errors.lock().unwrap().clone();
            Reply::Connected {
                established: state.established.load(Ordering::Relaxed),
                failed: state.failed.load(Ordering::Relaxed),
                seconds: started.elapsed().as_secs_f64(),
                errors,
            }
        }
        Request::Reset => {
            state()?.reset();
            Reply::Done
        }
        Request::Stats => Reply::Stats(state()?.stats()),
        Request::Report { expected } => Reply::Report(state()?.report(&expected)),
        Request::Reconnect => {
            let state = state()?;
            let started = Instant::now();
            state.established.store(0, Ordering::Relaxed);
            state.failed.store(0, Ordering::Relaxed);
            // The command stays current: a watch keeps only the latest value, and every task must see it.
            state.control.send_replace(Command::Reconnect);
            wait_for_connections(state).await;
            Reply::Connected {
                established: state.established.load(Ordering::Relaxed),
                failed: state.failed.load(Ordering::Relaxed),
                seconds: started.elapsed().as_secs_f64(),
                errors: state.errors.lock().unwrap().clone(),
            }
        }
        Request::Stall { count } => {
            let state = state()?;
            state.stalled.store(count as u64, Ordering::Relaxed);
            state.control.send_replace(Command::Stall(count));
            Reply::Done
        }
        Request::Release => {
            state()?.control.send_replace(Command::Release);
            Reply::Done
        }
        Request::Quit => {
            if let Some(state) = shared {
                state.control.send_replace(Command::Quit);
            }
            Reply::Done
        }
    })
}

fn new_shared(spec: ConnectSpec) -> Shared {
    let mut tokens = HashMap::new();
    if spec.peer == Peer::Hubcast {
        for local in 0..spec.count {
            let key = spec.layout.key_of(spec.first + local);
            tokens
                .entry(key.clone())
                .or_insert_with(|| crate::jwt::vkey_token(&spec.jwt_secret, &key, 6 * 3600));
        }
    }
    let (control, _) = watch::channel(Command::Run);
    Shared {
        tokens,
        histograms: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        frames: AtomicU64::new(0),
        first_ns: AtomicU64::new(u64::MAX),
        last_ns: AtomicU64::new(0),
        established: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        alive: AtomicU64::new(0),
        trackers: (0..spec.count).map(|_| Mutex::default()).collect(),
        closes: Mutex::default(),
        errors: Mutex::default(),
        control,
        gate: Semaphore::new(spec.concurrency.max(1)),
        stalled: AtomicU64::new(0),
        spec,
    }
}

async fn wait_for_connections(state: &Shared) {
    let count = state.spec.count as u64;
    while state.established.load(Ordering::Relaxed) + state.failed.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

enum End {
    Reconnect,
    Quit,
    Closed,
}

/// One connection for the life of the worker: connect, receive, and connect again when told to.
async fn connection(shared: Arc<Shared>, local: usize) {
    let mut control = shared.control.subscribe();
    control.borrow_and_update();
    loop {
        let mut attempt = 0;
        let ws = loop {
            attempt += 1;
            let result = {
                let _permit = shared.gate.acquire().await.expect("the gate is never closed");
                connect(&shared, local).await
            };
            match result {
                Ok(ws) => break Some(ws),
                Err(error) if attempt >= CONNECT_ATTEMPTS => {
                    shared.note_error(format!("{error:#}"));
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await,
            }
        };
        let end = match ws {
            Some(mut ws) => {
                shared.established.fetch_add(1, Ordering::Relaxed);
                shared.alive.fetch_add(1, Ordering::Relaxed);
                let end = serve(&shared, local, &mut ws, &mut control).await;
                shared.alive.fetch_sub(1, Ordering::Relaxed);
                // Dropped without a Close: the server sees the socket go, as when a network drops.
                drop(ws);
                end
            }
            None => End::Closed,
        };
        match end {
            End::Reconnect => continue,
            End::Quit => return,
            End::Closed => loop {
                // Wait to be told to come back (or to quit).
                if control.changed().await.is_err() {
                    return;
                }
                match *control.borrow_and_update() {
                    Command::Reconnect => break,
                    Command::Quit => return,
                    _ => {}
                }
            },
        }
    }
}

async fn connect(shared: &Shared, local: usize) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let spec = &shared.spec;
    let global = spec.first + local;
    let ip: IpAddr = spec.source_ips[global % spec.source_ips.len()].parse()?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}"))?;
    let server: SocketAddr = spec.address.parse()?;
    let stream =
        timeout(CONNECT_TIMEOUT, socket.connect(server)).await.context("TCP connect timed out")??;
    stream.set_nodelay(true)?;
    let url = match spec.peer {
        Peer::Hubcast => {
            let token = &shared.tokens[&spec.layout.key_of(global)];
            format!("ws://{}/hubs/tasks?access_token={token}", spec.address)
        }
        Peer::Bare => {
            format!("ws://{}/ws?group={}&protocol={}", spec.address, spec.layout.group_of(global), spec.proto)
        }
    };
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) =
        timeout(CONNECT_TIMEOUT, tokio_tungstenite::client_async_with_config(url, stream, Some(config)))
            .await
            .context("WebSocket upgrade timed out")??;
    if spec.peer == Peer::Bare {
        return Ok(ws);
    }
    let (_, task) = spec.layout.address(spec.layout.group_of(global));
    ws.send(spec.proto.handshake()).await?;
    ws.send(spec.proto.subscribe(&task)).await?;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut handshake_pending = true;
    let mut subscribed = false;
    while !subscribed {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no subscription completion in time")?
            .ok_or_else(|| anyhow!("closed during the handshake"))??;
        let payload: &[u8] = match &message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
            Message::Close(frame) => bail!("closed during the handshake: {frame:?}"),
            _ => continue,
        };
        let receipt = shared.receive(local, payload, &mut handshake_pending);
        if let Some(error) = receipt.error {
            bail!(error);
        }
        subscribed = receipt.completed && !handshake_pending;
    }
    Ok(ws)
}

/// Receives until told otherwise or the server goes away. Pings like the JS client does.
async fn serve(
    shared: &Shared,
    local: usize,
    ws: &mut WebSocketStream<TcpStream>,
    control: &mut watch::Receiver<Command>,
) -> End {
    let spec = &shared.spec;
    let interval = Duration::from_millis(spec.ping_interval_ms.max(100));
    // Clients are not in step: spread the first pings over one interval.
    let phase = interval.mul_f64(((spec.first + local) % 997) as f64 / 997.0);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
    let pings = spec.peer == Peer::Hubcast;
    let mut stalled = false;
    let mut handshake_pending = false;
    loop {
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return End::Quit;
                }
                match *control.borrow_and_update() {
                    Command::Reconnect => return End::Reconnect,
                    Command::Quit => return End::Quit,
                    Command::Stall(count) => stalled = local < count,
                    Command::Release => stalled = false,
                    Command::Run => {}
                }
            }
            message = ws.next(), if !stalled => {
                let receipt = match &message {
                    Some(Ok(Message::Text(text))) => shared.receive(local, text.as_bytes(), &mut handshake_pending),
                    Some(Ok(Message::Binary(bytes))) => shared.receive(local, bytes, &mut handshake_pending),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return End::Closed,
                    Some(Ok(_)) => Receipt::default(),
                };
                if receipt.closed {
                    return End::Closed;
                }
            }
            _ = ping.tick(), if pings && !stalled => {
                if ws.send(spec.proto.ping()).await.is_err() {
                    return End::Closed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_gaps_reorders_and_repeats() {
        let mut tracker = Tracker::default();
        for seq in [0, 1, 3, 2, 2, 5, 0] {
            tracker.record(seq);
        }
        assert_eq!(tracker.distinct(), 5, "0, 1, 2, 3 and 5");
        assert_eq!(tracker.next, 4);
        assert_eq!(tracker.duplicated, 2);
    }
}

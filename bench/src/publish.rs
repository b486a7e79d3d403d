//! Publishing benchmark events at a steady rate: over HTTP (hubcast's publish API, the bare broadcaster)
//! or to RabbitMQ with publisher confirms.
//!
//! The pacing loop hands events to a few lanes; each lane stamps an event with the current time right
//! before it goes out, so latency runs from the moment the event is published to the moment a client has
//! read it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::http::HttpConnection;
use crate::layout::Layout;
use crate::servers::Ingress;
use crate::worker::now_ns;

#[derive(Debug, Clone, Copy)]
struct Job {
    group: usize,
    seq: u64,
}

#[derive(Default)]
struct Counters {
    /// Events handed to a lane.
    submitted: AtomicU64,
    /// Events accepted (HTTP 202, or confirmed by the broker).
    accepted: AtomicU64,
    failed: AtomicU64,
    /// Frames the accepted events must produce.
    frames_expected: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counters {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 5 {
            errors.push(error);
        }
    }
}

/// What one publishing run did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub events: u64,
    pub failed: u64,
    /// Events per second actually achieved, from the first send to the last.
    pub rate: f64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// How far the pacing loop fell behind its schedule at worst.
    pub max_lag: Duration,
    pub errors: Vec<String>,
}

/// Read-only view of a publisher's counters.
pub struct Progress(Arc<Counters>);

impl Progress {
    pub fn frames_expected(&self) -> u64 {
        self.0.frames_expected.load(Ordering::Relaxed)
    }
}

pub struct Publisher {
    lanes: Vec<mpsc::Sender<Job>>,
    counters: Arc<Counters>,
    /// Events published per group so far: the next sequence number of each.
    pub sequences: Vec<u64>,
    _amqp: Option<lapin::Connection>,
}

struct Lane {
    layout: Layout,
    padding: Arc<str>,
    counters: Arc<Counters>,
    group_sizes: Arc<Vec<u64>>,
}

impl Lane {
    fn message(&self, job: Job, sent_ns: u64) -> String {
        format!("{}:{sent_ns}{}", job.seq, self.padding)
    }

    fn accepted(&self, job: Job) {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        self.counters.frames_expected.fetch_add(self.group_sizes[job.group], Ordering::Relaxed);
    }

    fn stamp(&self) -> u64 {
        let now = now_ns();
        self.counters.first_ns.fetch_min(now, Ordering::Relaxed);
        self.counters.last_ns.fetch_max(now, Ordering::Relaxed);
        now
    }
}

impl Publisher {
    /// Connects `lanes` publishing connections (HTTP) or channels (RabbitMQ). `padding` bytes are appended
    /// to every event's message.
    pub async fn connect(
        ingress: &Ingress,
        layout: Layout,
        connections: usize,
        lanes: usize,
        padding: usize,
    ) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters { first_ns: AtomicU64::new(u64::MAX), ..Default::default() });
        let group_sizes = Arc::new(layout.group_sizes(connections));
        let padding: Arc<str> =
            if padding == 0 { "".into() } else { format!(":{}", "x".repeat(padding)).into() };
        let lane = || Lane {
            layout,
            padding: Arc::clone(&padding),
            counters: Arc::clone(&counters),
            group_sizes: Arc::clone(&group_sizes),
        };
        let mut senders = Vec::new();
        let mut amqp = None;
        match ingress {
            Ingress::Bare { address } | Ingress::HubcastApi { address, .. } => {
                for _ in 0..lanes.max(1) {
                    let (sender, receiver) = mpsc::channel(4096);
                    tokio::spawn(http_lane(lane(), ingress.clone(), HttpConnection::new(address), receiver));
                    senders.push(sender);
                }
            }
            Ingress::Amqp { url, exchange, .. } => {
                let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
                    .await
                    .context("connecting to RabbitMQ")?;
                // Pipelined, one channel keeps up with any rate here, as a producer's would.
                for _ in 0..1 {
                    let channel = connection.create_channel().await?;
                    channel.confirm_select(ConfirmSelectOptions::default()).await?;
                    let (sender, receiver) = mpsc::channel(4096);
                    tokio::spawn(amqp_lane(lane(), channel, exchange.clone(), receiver));
                    senders.push(sender);
                }
                amqp = Some(connection);
            }
        }
        Ok(Self { lanes: senders, counters, sequences: vec![0; group_sizes.len()], _amqp: amqp })
    }

    /// A handle that follows the publisher while it runs elsewhere.
    pub fn progress(&self) -> Progress {
        Progress(Arc::clone(&self.counters))
    }

    /// Frames that the events accepted so far must produce, in total.
    pub fn frames_expected(&self) -> u64 {
        self.counters.frames_expected.load(Ordering::Relaxed)
    }

    /// Publishes `count` events at `rate` a second to the groups `pick` chooses, and waits until every one
    /// was accepted or refused.
    pub async fn publish(&mut self, rate: f64, count: u64, mut pick: impl FnMut() -> usize) -> Published {
        let counters = &self.counters;
        let (accepted0, failed0) =
            (counters.accepted.load(Ordering::Relaxed), counters.failed.load(Ordering::Relaxed));
        counters.first_ns.store(u64::MAX, Ordering::Relaxed);
        counters.last_ns.store(0, Ordering::Relaxed);
        counters.errors.lock().unwrap().clear();
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let start = Instant::now();
        let mut max_lag = Duration::ZERO;
        for i in 0..count {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep_until(due).await;
            } else {
                max_lag = max_lag.max(now - due);
            }
            let group = pick();
            let seq = self.sequences[group];
            self.sequences[group] += 1;
            counters.submitted.fetch_add(1, Ordering::Relaxed);
            let lane = &self.lanes[(i as usize) % self.lanes.len()];
            if lane.send(Job { group, seq }).await.is_err() {
                counters.fail("a publishing lane ended".into());
            }
        }
        let submitted = counters.submitted.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while counters.accepted.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed) < submitted
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let events = counters.accepted.load(Ordering::Relaxed) - accepted0;
        let first_ns = counters.first_ns.load(Ordering::Relaxed);
        let last_ns = counters.last_ns.load(Ordering::Relaxed);
        let span = last_ns.saturating_sub(first_ns) as f64 / 1e9;
        Published {
            events,
            failed: counters.failed.load(Ordering::Relaxed) - failed0,
            rate: if count > 1 && span > 0.0 { (count - 1) as f64 / span } else { 0.0 },
            first_ns: if first_ns == u64::MAX { 0 } else { first_ns },
            last_ns,
            max_lag,
            errors: counters.errors.lock().unwrap().clone(),
        }
    }
}

async fn http_lane(lane: Lane, ingress: Ingress, mut http: HttpConnection, mut jobs: mpsc::Receiver<Job>) {
    let (path, headers) = match &ingress {
        Ingress::HubcastApi { master_key, .. } => {
            ("/api/v1/publish", format!("X-API-Key: {master_key}\r\nContent-Type: application/json\r\n"))
        }
        _ => ("/publish", "Content-Type: application/json\r\n".to_owned()),
    };
    while let Some(job) = jobs.recv().await {
        let (key, task) = lane.layout.address(job.group);
        let sent_ns = lane.stamp();
        let message = lane.message(job, sent_ns);
        let body = match &ingress {
            Ingress::HubcastApi { .. } => format!(
                r#"{{"hub":"tasks","routingKey":"vkey.{key}.TaskProgress","payload":{{"taskId":"{task}","taskType":"bench","percentComplete":50,"message":"{message}"}}}}"#
            ),
            _ => format!(r#"{{"group":{},"taskId":"{task}","percent":50,"message":"{message}"}}"#, job.group),
        };
        match http.request("POST", path, &headers, body.as_bytes()).await {
            Ok((202, _)) => lane.accepted(job),
            Ok((status, answer)) => {
                lane.counters.fail(format!("{status}: {}", String::from_utf8_lossy(&answer)))
            }
            Err(error) => lane.counters.fail(format!("{error:#}")),
        }
    }
}

type Publishing = Pin<Box<dyn Future<Output = lapin::Result<lapin::PublisherConfirm>> + Send>>;

async fn amqp_lane(lane: Lane, channel: lapin::Channel, exchange: String, mut jobs: mpsc::Receiver<Job>) {
    let lane = Arc::new(lane);
    // Writes and confirms are awaited in order by a second task, so publishing never waits for a round trip
    // to lapin's I/O thread, let alone the broker.
    let (confirms, mut pending) = mpsc::unbounded_channel::<(Job, Publishing)>();
    let confirmer = {
        let lane = Arc::clone(&lane);
        tokio::spawn(async move {
            while let Some((job, publishing)) = pending.recv().await {
                let confirm = match publishing.await {
                    Ok(confirm) => confirm.await,
                    Err(error) => Err(error),
                };
                match confirm {
                    Ok(Confirmation::Ack(_)) => lane.accepted(job),
                    Ok(other) => lane.counters.fail(format!("the broker did not confirm: {other:?}")),
                    Err(error) => lane.counters.fail(format!("{error:#}")),
                }
            }
        })
    };
    while let Some(job) = jobs.recv().await {
        let (key, task) = lane.layout.address(job.group);
        let sent_ns = lane.stamp();
        let message = lane.message(job, sent_ns);
        let body =
            format!(r#"{{"taskId":"{task}","taskType":"bench","percentComplete":50,"message":"{message}"}}"#);
        let mut headers = FieldTable::default();
        headers.insert("x-hubcast-published-ms".into(), AMQPValue::LongLongInt((sent_ns / 1_000_000) as i64));
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(format!("bench-{}-{}-{}", job.group, job.seq, sent_ns).as_str().into())
            .with_type("TaskProgress".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let routing_key = format!("vkey.{key}.TaskProgress");
        let channel = channel.clone();
        let exchange = exchange.clone();
        let mut publishing: Publishing = Box::pin(async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    properties,
                )
                .await
        });
        // The first poll queues the frames: the event is published now, in order.
        if let Poll::Ready(result) =
            publishing.as_mut().poll(&mut std::task::Context::from_waker(Waker::noop()))
        {
            publishing = Box::pin(std::future::ready(result));
        }
        let _ = confirms.send((job, publishing));
    }
    drop(confirms);
    let _ = confirmer.await;
}

//! The RabbitMQ bus: producers publish to one topic exchange per hub; routers consume the hub queues and
//! forward pre-encoded deliveries to the edges that have interested connections.
//!
//! Topology (prefix `conduit.` by default):
//! - `conduit.<hub>`: durable topic exchange per hub, where producers publish `<audience>.<Event>`.
//! - `conduit.<hub>.router`: the routers' durable queue per hub (quorum by default), bound with `#`. The
//!   spend queue has a single active consumer, so budget alert cooldowns hold with any number of routers.
//! - `conduit.dead-letter`: durable fanout exchange and queue for what cannot be delivered.
//! - `conduit.hubcast.edges`: topic exchange of deliveries, routing key `d.<hub>.<scope>`; each edge binds
//!   its own exclusive queue to the scopes (tenant, `admin`, `all`) its connections belong to.
//! - `conduit.hubcast.state`: a stream of state changes (revocations, provider health, webhook outcomes)
//!   that every edge replays at start and follows after, so every edge answers alike and a restarted edge
//!   knows what happened before it.

pub mod edge;
pub mod publisher;
pub mod router;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::KeyId;
use crate::config::BusConfig;
use crate::delivery::Delivery;
use crate::delivery::DeliveryOutcome;
use crate::delivery::Dispatch;
use crate::delivery::EventFilter;
use crate::delivery::Scope;
use crate::events::types::Severity;
use crate::events::HUBS;
use crate::protocol::{EncodedMessage, Protocol};

/// Exchange and queue names under the configured prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn hub_exchange(&self, hub: &str) -> String {
        format!("{}{hub}", self.prefix)
    }

    pub fn router_queue(&self, hub: &str) -> String {
        format!("{}{hub}.router", self.prefix)
    }

    pub fn dead_letter(&self) -> String {
        format!("{}dead-letter", self.prefix)
    }

    pub fn edges_exchange(&self) -> String {
        format!("{}hubcast.edges", self.prefix)
    }

    pub fn state_stream(&self) -> String {
        format!("{}hubcast.state", self.prefix)
    }

    pub fn edge_queue(&self, node: &str) -> String {
        format!("{}hubcast.edge.{node}", self.prefix)
    }

    /// The hub whose exchange this is.
    pub fn hub_of_exchange(&self, exchange: &str) -> Option<&'static str> {
        let hub = exchange.strip_prefix(&self.prefix)?;
        HUBS.into_iter().find(|name| *name == hub)
    }
}

pub use crate::delivery::interest_key as delivery_key;

/// Whether the bus is connected with its topology in place: `/readyz` answers from this.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Exponential backoff for reconnecting: 100 ms doubling to 5 s.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        delay
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

pub async fn connect(config: &BusConfig, name: &str) -> anyhow::Result<Connection> {
    let url = config.amqp_url.as_deref().context("bus.amqp_url is not set")?;
    Connection::connect(url, ConnectionProperties::default().with_connection_name(name.into()))
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", redact(url)))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares what producers and routers share: the hub exchanges, their router queues and the
/// dead-letter exchange and queue. Idempotent, as RabbitMQ declarations with equal arguments are.
pub async fn declare_hub_topology(channel: &Channel, config: &BusConfig) -> anyhow::Result<()> {
    let names = Names::new(&config.exchange_prefix);
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for hub in HUBS {
        channel
            .exchange_declare(
                names.hub_exchange(hub).into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {}", names.hub_exchange(hub)))?;
        let mut arguments = vec![("x-queue-type", long_string(&config.queue_type))];
        if hub == "spend" {
            // One router at a time holds the spend queue, so cooldowns are decided in one place.
            arguments.push(("x-single-active-consumer", AMQPValue::Boolean(true)));
        }
        channel
            .queue_declare(
                names.router_queue(hub).into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                table(&arguments),
            )
            .await
            .with_context(|| format!("declaring queue {}", names.router_queue(hub)))?;
        channel
            .queue_bind(
                names.router_queue(hub).into(),
                names.hub_exchange(hub).into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .exchange_declare(names.dead_letter().into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await
        .context("declaring the dead-letter exchange")?;
    channel
        .queue_declare(
            names.dead_letter().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .context("declaring the dead-letter queue")?;
    channel
        .queue_bind(
            names.dead_letter().into(),
            names.dead_letter().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares what routers and edges share: the deliveries exchange and the state stream.
pub async fn declare_edge_topology(channel: &Channel, config: &BusConfig) -> anyhow::Result<()> {
    let names = Names::new(&config.exchange_prefix);
    channel
        .exchange_declare(
            names.edges_exchange().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .context("declaring the edges exchange")?;
    channel
        .queue_declare(
            names.state_stream().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            table(&[
                ("x-queue-type", long_string("stream")),
                ("x-max-length-bytes", AMQPValue::LongLongInt(config.state_stream_max_bytes as i64)),
                ("x-stream-max-segment-size-bytes", AMQPValue::LongLongInt(8 * 1024 * 1024)),
            ]),
        )
        .await
        .context("declaring the state stream")?;
    Ok(())
}

/// The metadata travelling with a delivery.
#[derive(Debug, Serialize, Deserialize)]
struct DeliveryMeta {
    hub: String,
    scope: String,
    groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<(u8, Severity)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published_ms: Option<u64>,
    /// The trace the edge continues; carried per delivery, as a batch holds several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

/// Version byte of one delivery, and of several in one message.
const SINGLE: u8 = 1;
const BATCH: u8 = 2;
/// A batch holds at most this many deliveries (each adds a routing key) ...
const MAX_BATCH_DELIVERIES: usize = 64;
/// ... and stops taking more once its deliveries reach this size.
const MAX_BATCH_BYTES: usize = 128 * 1024;

/// Deliveries gathered into one AMQP message for the edges. The router gathers what it has ready, so a
/// backlog costs one publish, one confirm and one edge wake-up per batch rather than per event; an event
/// with nothing queued behind it goes alone, in the single form, without waiting.
///
/// The message is routed by every scope it carries (the first as its routing key, the others in `BCC`,
/// which the broker routes by and then strips), so it reaches each edge that serves any of them. An edge
/// hands a delivery only to the groups it names, so one for a scope the edge does not serve reaches no one.
#[derive(Debug, Default)]
pub struct DeliveryBatch {
    keys: Vec<String>,
    /// The batch form as it goes out; deliveries are encoded straight into it.
    body: Vec<u8>,
    deliveries: usize,
}

/// A batch ready to publish.
pub struct Forward {
    pub routing_key: String,
    /// The batch's other routing keys, for the `BCC` header.
    pub more_keys: Vec<String>,
    pub body: Vec<u8>,
    /// How many deliveries it carries.
    pub deliveries: usize,
}

impl DeliveryBatch {
    /// Adds a delivery routed by `key`, with the id and trace it carries (see [`encode_delivery`]).
    pub fn push(
        &mut self,
        key: String,
        delivery: &Delivery,
        message_id: Option<&str>,
        traceparent: Option<&str>,
    ) {
        if self.body.is_empty() {
            self.body.push(BATCH);
        }
        let length_at = self.body.len();
        self.body.put_u32(0);
        encode_delivery_into(&mut self.body, delivery, message_id, traceparent);
        let length = (self.body.len() - length_at - 4) as u32;
        self.body[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
        self.deliveries += 1;
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    pub fn is_full(&self) -> bool {
        self.deliveries >= MAX_BATCH_DELIVERIES || self.body.len() >= MAX_BATCH_BYTES
    }

    /// What to publish, leaving the batch empty; `None` when there is nothing.
    pub fn take(&mut self) -> Option<Forward> {
        let mut keys = std::mem::take(&mut self.keys).into_iter();
        let routing_key = keys.next()?;
        let mut body = std::mem::take(&mut self.body);
        let deliveries = std::mem::take(&mut self.deliveries);
        if deliveries == 1 {
            // Alone, it goes in the single form: without the batch's version byte and length.
            body.drain(..5);
        }
        Some(Forward { routing_key, more_keys: keys.collect(), body, deliveries })
    }
}

/// The deliveries of a message from the router, each still encoded; `None` if the batch is malformed.
pub fn split_deliveries(mut body: Bytes) -> Option<Vec<Bytes>> {
    match body.first()? {
        &BATCH => {
            body.advance(1);
            let mut entries = Vec::new();
            while body.has_remaining() {
                if body.remaining() < 4 {
                    return None;
                }
                let len = body.get_u32() as usize;
                if body.remaining() < len {
                    return None;
                }
                entries.push(body.split_to(len));
            }
            Some(entries)
        }
        _ => Some(vec![body]),
    }
}

/// A delivery as an edge reads it back.
pub struct ReceivedDelivery {
    pub delivery: Delivery,
    pub message_id: Option<String>,
    pub traceparent: Option<String>,
}

/// A delivery as it travels from router to edges: its metadata, then the message encoded in each protocol.
/// Encoding happens once, in the router; edges share the received bytes among their connections.
pub fn encode_delivery(delivery: &Delivery, message_id: Option<&str>, traceparent: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_delivery_into(&mut out, delivery, message_id, traceparent);
    out
}

fn encode_delivery_into(
    out: &mut Vec<u8>,
    delivery: &Delivery,
    message_id: Option<&str>,
    traceparent: Option<&str>,
) {
    let meta = DeliveryMeta {
        hub: delivery.hub.to_owned(),
        scope: match &delivery.scope {
            Scope::Tenant(key) => format!("t.{key}"),
            Scope::Admin => "admin".into(),
            Scope::Everyone => "all".into(),
        },
        groups: delivery.groups.clone(),
        filter: delivery.filter.map(|f| (f.event, f.severity)),
        message_id: message_id.map(str::to_owned),
        published_ms: delivery.published_ms,
        traceparent: traceparent.map(str::to_owned),
    };
    let meta = serde_json::to_vec(&meta).expect("delivery metadata serializes");
    let json = delivery.message.bytes(Protocol::Json);
    let msgpack = delivery.message.bytes(Protocol::MessagePack);
    out.reserve(9 + meta.len() + json.len() + msgpack.len());
    out.put_u8(SINGLE);
    out.put_u32(meta.len() as u32);
    out.put_slice(&meta);
    out.put_u32(json.len() as u32);
    out.put_slice(json);
    out.put_slice(msgpack);
}

/// Reads a delivery back; `None` for anything malformed (logged by the caller).
pub fn decode_delivery(bytes: Bytes) -> Option<ReceivedDelivery> {
    let mut cursor = bytes;
    if cursor.remaining() < 5 || cursor.get_u8() != SINGLE {
        return None;
    }
    let meta_len = cursor.get_u32() as usize;
    if cursor.remaining() < meta_len + 4 {
        return None;
    }
    let meta: DeliveryMeta = serde_json::from_slice(&cursor[..meta_len]).ok()?;
    cursor.advance(meta_len);
    let json_len = cursor.get_u32() as usize;
    if cursor.remaining() < json_len {
        return None;
    }
    let json = cursor.split_to(json_len);
    let msgpack = cursor;
    let scope = match meta.scope.as_str() {
        "admin" => Scope::Admin,
        "all" => Scope::Everyone,
        tenant => Scope::Tenant(KeyId::parse(tenant.strip_prefix("t.")?)?),
    };
    let hub = HUBS.into_iter().find(|name| *name == meta.hub)?;
    let delivery = Delivery {
        hub,
        scope,
        groups: meta.groups,
        filter: meta.filter.map(|(event, severity)| EventFilter { event, severity }),
        published_ms: meta.published_ms,
        message: std::sync::Arc::new(EncodedMessage::preencoded(json, msgpack)),
    };
    Some(ReceivedDelivery { delivery, message_id: meta.message_id, traceparent: meta.traceparent })
}

/// A state change as it travels on the state stream: with the id of the event that caused it (and its
/// index among that event's effects), so a redelivered event does not count twice.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct StateMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub change: StateChange,
}

/// A state change on the state stream.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StateChange {
    Revoke { key: String },
    Restore { key: String },
    ProviderHealth { provider: String, status: Value, message: Value, checked_at: String },
    WebhookOutcome { key: String, url: String, outcome: String, response_time_ms: Option<f64>, at_ms: u64 },
    AlertSent { key: String, alert_type: String, at_ms: u64 },
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl StateChange {
    /// The stream form of a dispatch; `None` for deliveries, which go to the edges exchange instead.
    pub fn from_dispatch(dispatch: &Dispatch) -> Option<Self> {
        Some(match dispatch {
            Dispatch::Deliver(_) => return None,
            Dispatch::Revoke(key) => StateChange::Revoke { key: key.to_string() },
            Dispatch::Restore(key) => StateChange::Restore { key: key.to_string() },
            Dispatch::ProviderHealth { provider, status, message, checked_at } => {
                StateChange::ProviderHealth {
                    provider: provider.clone(),
                    status: status.clone(),
                    message: message.clone(),
                    checked_at: checked_at.clone(),
                }
            }
            Dispatch::WebhookOutcome { key, url, outcome, at } => {
                let (outcome, response_time_ms) = match outcome {
                    DeliveryOutcome::Attempted => ("attempted", None),
                    DeliveryOutcome::Succeeded { response_time_ms } => ("succeeded", *response_time_ms),
                    DeliveryOutcome::Failed => ("failed", None),
                    DeliveryOutcome::RetryScheduled => ("retryScheduled", None),
                };
                StateChange::WebhookOutcome {
                    key: key.to_string(),
                    url: url.clone(),
                    outcome: outcome.into(),
                    response_time_ms,
                    at_ms: unix_millis(*at),
                }
            }
            Dispatch::AlertSent { key, alert_type, at } => StateChange::AlertSent {
                key: key.to_string(),
                alert_type: alert_type.clone(),
                at_ms: unix_millis(*at),
            },
        })
    }

    /// The dispatch an edge applies.
    pub fn into_dispatch(self) -> Option<Dispatch> {
        Some(match self {
            StateChange::Revoke { key } => Dispatch::Revoke(KeyId::parse(&key)?),
            StateChange::Restore { key } => Dispatch::Restore(KeyId::parse(&key)?),
            StateChange::ProviderHealth { provider, status, message, checked_at } => {
                Dispatch::ProviderHealth { provider, status, message, checked_at }
            }
            StateChange::WebhookOutcome { key, url, outcome, response_time_ms, at_ms } => {
                Dispatch::WebhookOutcome {
                    key: KeyId::parse(&key)?,
                    url,
                    outcome: match outcome.as_str() {
                        "attempted" => DeliveryOutcome::Attempted,
                        "succeeded" => DeliveryOutcome::Succeeded { response_time_ms },
                        "failed" => DeliveryOutcome::Failed,
                        "retryScheduled" => DeliveryOutcome::RetryScheduled,
                        _ => return None,
                    },
                    at: UNIX_EPOCH + Duration::from_millis(at_ms),
                }
            }
            StateChange::AlertSent { key, alert_type, at_ms } => Dispatch::AlertSent {
                key: KeyId::parse(&key)?,
                alert_type,
                at: UNIX_EPOCH + Duration::from_millis(at_ms),
            },
        })
    }
}

/// A string header of a message, such as `traceparent`.
pub fn header(properties: &lapin::BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// Milliseconds since the epoch, for the delivery latency.
pub fn now_unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Seconds since the epoch, as AMQP timestamps count.
pub fn now_unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HubMessage;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn deliveries_survive_the_trip_with_both_encodings() {
        let message =
            Arc::new(EncodedMessage::new(HubMessage::event("TaskProgress", vec![json!("a"), json!(5)])));
        let delivery = Delivery {
            hub: "tasks",
            scope: Scope::Tenant(KeyId::parse("7").unwrap()),
            groups: vec!["task-a".into(), "task-type-v".into()],
            filter: Some(EventFilter { event: 3, severity: Severity::Warning }),
            published_ms: Some(1),
            message: Arc::clone(&message),
        };
        let received =
            decode_delivery(Bytes::from(encode_delivery(&delivery, Some("m1"), Some("00-a-b-01")))).unwrap();
        assert_eq!(received.message_id.as_deref(), Some("m1"));
        assert_eq!(received.traceparent.as_deref(), Some("00-a-b-01"));
        let decoded = received.delivery;
        assert_eq!(decoded.hub, "tasks");
        assert_eq!(decoded.scope, delivery.scope);
        assert_eq!(decoded.groups, delivery.groups);
        assert_eq!(decoded.filter, delivery.filter);
        for protocol in Protocol::ALL {
            assert_eq!(decoded.message.bytes(protocol), message.bytes(protocol));
        }
        assert!(decode_delivery(Bytes::from_static(b"\x02garbage")).is_none());
        assert!(decode_delivery(Bytes::from_static(b"\x01\x00\x00\x10\x00")).is_none());
    }

    fn tenant_delivery(key: &str, task: &str) -> Delivery {
        let message = HubMessage::event("TaskProgress", vec![json!(task), json!(5)]);
        Delivery {
            hub: "tasks",
            scope: Scope::Tenant(KeyId::parse(key).unwrap()),
            groups: vec![format!("task-{task}")],
            filter: None,
            published_ms: None,
            message: Arc::new(EncodedMessage::new(message)),
        }
    }

    #[test]
    fn a_lone_delivery_goes_in_the_single_form() {
        let mut batch = DeliveryBatch::default();
        assert!(batch.take().is_none(), "an empty batch publishes nothing");
        let delivery = tenant_delivery("7", "a");
        batch.push("d.tasks.t.7".into(), &delivery, Some("m1#0"), None);
        let encoded = encode_delivery(&delivery, Some("m1#0"), None);
        let forward = batch.take().unwrap();
        assert_eq!(forward.routing_key, "d.tasks.t.7");
        assert!(forward.more_keys.is_empty());
        assert_eq!(forward.deliveries, 1);
        assert_eq!(forward.body, encoded, "exactly the single form, readable by edges that predate batches");
        assert_eq!(split_deliveries(Bytes::from(forward.body)).unwrap().len(), 1);
        assert!(batch.take().is_none(), "taking empties the batch");
    }

    #[test]
    fn a_batch_routes_by_each_scope_once_and_splits_back_in_order() {
        let mut batch = DeliveryBatch::default();
        let keys = ["7", "9", "7", "12"];
        for (index, key) in keys.iter().enumerate() {
            let delivery = tenant_delivery(key, &format!("t{index}"));
            batch.push(format!("d.tasks.t.{key}"), &delivery, Some(&format!("m{index}")), None);
        }
        let forward = batch.take().unwrap();
        assert_eq!(forward.routing_key, "d.tasks.t.7");
        assert_eq!(forward.more_keys, ["d.tasks.t.9", "d.tasks.t.12"]);
        assert_eq!(forward.deliveries, 4);
        let entries = split_deliveries(Bytes::from(forward.body.clone())).unwrap();
        let received: Vec<_> = entries.into_iter().map(|entry| decode_delivery(entry).unwrap()).collect();
        let ids: Vec<_> = received.iter().map(|r| r.message_id.clone().unwrap()).collect();
        assert_eq!(ids, ["m0", "m1", "m2", "m3"]);
        let scopes: Vec<_> = received.iter().map(|r| r.delivery.scope.clone()).collect();
        let expected: Vec<_> = keys.iter().map(|key| Scope::Tenant(KeyId::parse(key).unwrap())).collect();
        assert_eq!(scopes, expected);

        // A truncated batch is refused whole rather than read in part.
        for cut in [2, 5, forward.body.len() - 1] {
            assert!(split_deliveries(Bytes::copy_from_slice(&forward.body[..cut])).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn a_batch_is_full_at_its_count_or_size() {
        let mut batch = DeliveryBatch::default();
        let small = tenant_delivery("7", "a");
        for _ in 0..MAX_BATCH_DELIVERIES - 1 {
            batch.push("d.tasks.t.7".into(), &small, None, None);
        }
        assert!(!batch.is_full());
        batch.push("d.tasks.t.7".into(), &small, None, None);
        assert!(batch.is_full());
        assert_eq!(batch.take().unwrap().deliveries, MAX_BATCH_DELIVERIES);
        batch.push("d.tasks.t.7".into(), &tenant_delivery("7", &"x".repeat(MAX_BATCH_BYTES / 2)), None, None);
        assert!(
            batch.is_full(),
            "one delivery of the size limit fills it (its task id goes in both encodings)"
        );
    }

    #[test]
    fn state_changes_round_trip() {
        let key = KeyId::parse("7").unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let dispatch = Dispatch::WebhookOutcome {
            key,
            url: "https://a/h".into(),
            outcome: DeliveryOutcome::Succeeded { response_time_ms: Some(12.5) },
            at,
        };
        let message =
            StateMessage { id: Some("m1#2".into()), change: StateChange::from_dispatch(&dispatch).unwrap() };
        let text = serde_json::to_string(&message).unwrap();
        let back: StateMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id.as_deref(), Some("m1#2"));
        match back.change.into_dispatch().unwrap() {
            Dispatch::WebhookOutcome { outcome, at: back_at, .. } => {
                assert_eq!(outcome, DeliveryOutcome::Succeeded { response_time_ms: Some(12.5) });
                assert_eq!(back_at, at);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_and_keys() {
        let names = Names::new("conduit.");
        assert_eq!(names.hub_exchange("tasks"), "conduit.tasks");
        assert_eq!(names.hub_of_exchange("conduit.admin-notifications"), Some("admin-notifications"));
        assert_eq!(names.hub_of_exchange("other.tasks"), None);
        assert_eq!(delivery_key("tasks", &Scope::Tenant(KeyId::parse("7").unwrap())), "d.tasks.t.7");
        assert_eq!(redact("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
    }
}

//! `hubcast router`: consumes the hub queues, routes each event, forwards deliveries to the edges and state
//! changes to the state stream, dead-letters what cannot be delivered, and acks a message only once all
//! of that is confirmed by the broker, so a router that dies mid-way loses nothing (RabbitMQ redelivers,
//! and the edges drop the repeat by its message id).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Waker};

use anyhow::{bail, Context};
use futures_util::stream::{FuturesOrdered, SelectAll};
use futures_util::{Stream, StreamExt};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    connect, declare_edge_topology, declare_hub_topology, delivery_key, Backoff, DeliveryBatch, Names,
    Readiness, StateChange, StateMessage,
};
use crate::config::Config;
use crate::delivery::{Delivery, Dispatch};
use crate::router::Router;

/// Runs the router role until `shutdown`, reconnecting with backoff whenever the broker goes away.
pub async fn run(config: Config, ready: Arc<Readiness>, shutdown: CancellationToken) {
    let router = Router::new(&config);
    let mut backoff = Backoff::default();
    loop {
        match session(&config, &router, &ready, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(error) => {
                ready.set(false);
                crate::metrics::metrics()
                    .amqp_reconnects
                    .get_or_create(&crate::metrics::RoleLabels { role: "router" })
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(error = format!("{error:#}"), ?delay, "router lost RabbitMQ; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// One connection's worth of routing. Returns `Ok` only on shutdown.
async fn session(
    config: &Config,
    router: &Router,
    ready: &Readiness,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let names = Names::new(&config.bus.exchange_prefix);
    let connection = connect(&config.bus, "hubcast-router").await?;
    let setup = connection.create_channel().await?;
    declare_hub_topology(&setup, &config.bus).await?;
    declare_edge_topology(&setup, &config.bus).await?;
    let publish = connection.create_channel().await?;
    publish.confirm_select(ConfirmSelectOptions::default()).await?;
    let consume = connection.create_channel().await?;
    consume.basic_qos(config.bus.prefetch, BasicQosOptions::default()).await?;
    let mut consumers = SelectAll::new();
    for hub in crate::events::HUBS {
        let consumer = consume
            .basic_consume(
                names.router_queue(hub).into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {}", names.router_queue(hub)))?;
        consumers.push(consumer);
    }
    // Alerts other routers sent within the cooldown window: a router taking over the spend queue
    // continues their cooldowns instead of starting afresh.
    let alerts_channel = connection.create_channel().await?;
    alerts_channel.basic_qos(500, BasicQosOptions::default()).await?;
    let since =
        super::now_unix_seconds().saturating_sub(config.spend.alert_cooldown.as_secs().saturating_add(1));
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), AMQPValue::Timestamp(since));
    let mut alerts = alerts_channel
        .basic_consume(names.state_stream().into(), "".into(), BasicConsumeOptions::default(), arguments)
        .await
        .context("following the state stream")?;
    ready.set(true);
    backoff.reset();
    tracing::info!("router connected to RabbitMQ");

    // Acks wait for the confirms of what each run of messages caused; runs settle in the order they were
    // taken, and `settled` turns them into the delivery tag that all before it are settled up to.
    let mut pending = FuturesOrdered::new();
    let mut settled = Settled::default();
    // One ack in flight at a time: lapin may send concurrent acks in any order, and a multiple ack must not
    // overtake an earlier one. Meanwhile the latest tag to ack waits in `ack_next` (it covers the rest).
    let mut ack_in_flight: Option<Acking> = None;
    let mut ack_next: Option<u64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Stop taking messages; finish what is in flight so nothing is redelivered needlessly.
                if let Some(acking) = ack_in_flight.take() {
                    acking.await?;
                }
                let mut last = ack_next.take();
                while let Some(result) = pending.next().await {
                    last = settled.record(result?).or(last);
                }
                if let Some(tag) = last {
                    ack_up_to(&consume, tag).await?;
                }
                let _ = connection.close(200, "shutdown".into()).await;
                return Ok(());
            }
            Some(result) = pending.next(), if !pending.is_empty() => {
                // One multiple ack for every run settled by now: fewer acks for the broker (each one a log
                // entry on a quorum queue).
                let mut tag = settled.record(result?);
                while let Some(result) = ready_now(&mut pending).await {
                    tag = settled.record(result?).or(tag);
                }
                if let Some(tag) = tag {
                    match ack_in_flight {
                        None => ack_in_flight = Some(ack_up_to(&consume, tag)),
                        Some(_) => ack_next = Some(tag),
                    }
                }
            }
            result = async { ack_in_flight.as_mut().expect("checked").await }, if ack_in_flight.is_some() => {
                result?;
                ack_in_flight = ack_next.take().map(|tag| ack_up_to(&consume, tag));
            }
            next = alerts.next() => {
                let message = next.context("the broker cancelled the state stream consumer")??;
                if let Ok(StateMessage { change: StateChange::AlertSent { key, alert_type, at_ms }, .. }) =
                    serde_json::from_slice(&message.data)
                {
                    let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(at_ms));
                    if let (Some(key), Some(at)) = (crate::auth::KeyId::parse(&key), at) {
                        router.record_alert(&key, &alert_type, at);
                    }
                }
                message.ack(BasicAckOptions::default()).await?;
            }
            next = consumers.next() => {
                // This message and those already waiting behind it (a backlog) go out together: their
                // deliveries in as few batches as the limits allow, settled and acked as one.
                let mut last = next.context("the broker cancelled the router's consumers")??;
                let mut routed = Routed::default();
                handle(&names, router, &publish, &last, config.bus.max_event_bytes, &mut routed)?;
                for _ in 1..MAX_MESSAGES_AT_ONCE {
                    let Some(next) = ready_now(&mut consumers).await else { break };
                    last = next?;
                    handle(&names, router, &publish, &last, config.bus.max_event_bytes, &mut routed)?;
                }
                routed.flush(&names, &publish);
                pending.push_back(settle(last, routed.tags, routed.publishing));
            }
        }
    }
}

/// A publish whose frames are already queued on the channel; awaiting it waits for the I/O thread to write
/// them and yields the confirm to wait for.
type Publishing = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// Polls a future once, so what it does before its first wait (queueing frames or commands for lapin's I/O
/// thread) happens now, in call order; the rest is awaited later.
fn started<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Pin<Box<dyn Future<Output = T> + Send>> {
    let mut future: Pin<Box<dyn Future<Output = T> + Send>> = Box::pin(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Box::pin(std::future::ready(output)),
        Poll::Pending => future,
    }
}

/// The next item of a stream if it is ready now, without waiting.
async fn ready_now<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match stream.poll_next_unpin(cx) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        })
    })
    .await
}

/// An ack on its way; it resolves once lapin has sent it.
type Acking = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Acks a delivery tag of the consuming channel and every one before it.
fn ack_up_to(channel: &Channel, tag: u64) -> Acking {
    let channel = channel.clone();
    started(async move {
        channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
        Ok(())
    })
}

/// The delivery tags settled so far on the consuming channel, and the one that every tag up to is settled.
/// The hubs' consumers share the channel and its tag sequence, and nothing promises that their messages
/// are taken in tag order; a multiple ack goes only as far as every earlier tag is settled.
#[derive(Debug, Default)]
struct Settled {
    /// Every tag up to this one is settled (tags start at 1).
    through: u64,
    /// Settled tags beyond a gap.
    beyond: std::collections::BTreeSet<u64>,
}

impl Settled {
    /// Records settled tags; returns the tag to ack up to when that has moved.
    fn record(&mut self, tags: Vec<u64>) -> Option<u64> {
        let before = self.through;
        self.beyond.extend(tags);
        while self.beyond.first() == Some(&(self.through + 1)) {
            self.beyond.pop_first();
            self.through += 1;
        }
        (self.through > before).then_some(self.through)
    }
}

/// Starts a publish without waiting for it to be written. Polled once here, `basic_publish` queues its
/// frames on the channel at once, so frames keep the order of the messages that caused them; the round
/// trip to lapin's I/O thread (and then the broker's confirm) is awaited later, in `settle`, so the router
/// goes on to the next message meanwhile instead of waiting for one round trip per message.
fn start_publish(
    channel: &Channel,
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
) -> Publishing {
    let channel = channel.clone();
    started(async move {
        channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
    })
}

/// How many ready messages the router takes in one go.
const MAX_MESSAGES_AT_ONCE: usize = 64;

/// What routing a run of messages produced: publishes started (state changes, dead letters, full
/// batches) and the batch of deliveries still being gathered.
#[derive(Default)]
struct Routed {
    /// The delivery tags of the messages routed.
    tags: Vec<u64>,
    publishing: Vec<Publishing>,
    batch: DeliveryBatch,
    /// The AMQP timestamp of the batch's first event.
    batch_timestamp: Option<u64>,
}

impl Routed {
    /// Adds a delivery to the batch; a full batch starts publishing.
    fn forward(
        &mut self,
        names: &Names,
        publish: &Channel,
        delivery: &Delivery,
        id: Option<&str>,
        traceparent: Option<&str>,
        timestamp: u64,
    ) {
        self.batch_timestamp.get_or_insert(timestamp);
        self.batch.push(delivery_key(delivery.hub, &delivery.scope), delivery, id, traceparent);
        if self.batch.is_full() {
            self.flush(names, publish);
        }
    }

    /// Starts publishing the batch gathered so far.
    fn flush(&mut self, names: &Names, publish: &Channel) {
        let Some(forward) = self.batch.take() else { return };
        crate::metrics::metrics().forward_messages.inc();
        let mut headers = FieldTable::default();
        if !forward.more_keys.is_empty() {
            let keys =
                forward.more_keys.iter().map(|key| AMQPValue::LongString(LongString::from(key.as_str())));
            headers.insert("BCC".into(), AMQPValue::FieldArray(keys.collect::<Vec<_>>().into()));
        }
        let timestamp = self.batch_timestamp.take().unwrap_or_else(super::now_unix_seconds);
        let properties = BasicProperties::default().with_timestamp(timestamp).with_headers(headers);
        self.publishing.push(start_publish(
            publish,
            names.edges_exchange(),
            forward.routing_key,
            forward.body,
            properties,
        ));
    }
}

/// Routes one message: its deliveries join the batch, its state changes (or its dead letter) start
/// publishing at once.
fn handle(
    names: &Names,
    router: &Router,
    publish: &Channel,
    delivery: &AmqpDelivery,
    max_event_bytes: usize,
    routed: &mut Routed,
) -> anyhow::Result<()> {
    routed.tags.push(delivery.delivery_tag);
    let routing_key = delivery.routing_key.as_str();
    let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
    let traceparent = super::header(&delivery.properties, "traceparent");
    let published_ms = published_ms(delivery);
    let event = routing_key.rsplit('.').next().unwrap_or_default();
    let hub_name = names.hub_of_exchange(delivery.exchange.as_str()).unwrap_or(crate::metrics::UNKNOWN);
    let metrics = crate::metrics::metrics();
    metrics.events_consumed.get_or_create(&crate::metrics::hub_event(hub_name, event)).inc();
    let span = tracing::info_span!(
        "route",
        routing_key,
        message_id = message_id.as_deref(),
        traceparent = traceparent.as_deref()
    );
    crate::telemetry::continue_trace(&span, traceparent.as_deref());
    let _entered = span.enter();
    let traceparent = crate::telemetry::traceparent_for(&span, traceparent.as_deref());
    let dispatches =
        match validate(names, delivery, message_id.as_deref(), max_event_bytes).and_then(|(hub, body)| {
            router.route(hub, routing_key, message_id.as_deref(), &body).map_err(|e| e.to_string())
        }) {
            Ok(dispatches) => dispatches,
            Err(reason) => {
                let reason = bounded_reason(&reason);
                tracing::info!(%reason, "dead-lettering");
                metrics.events_dead_lettered.get_or_create(&crate::metrics::hub(hub_name)).inc();
                routed.publishing.push(dead_letter(names, publish, delivery, &reason));
                return Ok(());
            }
        };
    let timestamp = delivery.properties.timestamp().unwrap_or_else(super::now_unix_seconds);
    for (index, dispatch) in dispatches.into_iter().enumerate() {
        match dispatch {
            Dispatch::Deliver(mut deliver) => {
                // One event can cause several deliveries (an alert, an admin mirror); each has its own id.
                let delivery_id = message_id.as_ref().map(|id| format!("{id}#{index}"));
                metrics.events_forwarded.get_or_create(&crate::metrics::delivery(&deliver)).inc();
                deliver.published_ms = published_ms;
                let (id, traceparent) = (delivery_id.as_deref(), traceparent.as_deref());
                routed.forward(names, publish, &deliver, id, traceparent, timestamp);
            }
            state => {
                let change = StateChange::from_dispatch(&state).expect("every non-delivery has a state form");
                let id = message_id.as_ref().map(|id| format!("{id}#{index}"));
                let body = serde_json::to_vec(&StateMessage { id, change })?;
                routed.publishing.push(start_publish(
                    publish,
                    String::new(),
                    names.state_stream(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                ));
            }
        }
    }
    Ok(())
}

/// When the producer published: its millisecond header, else the AMQP timestamp (whole seconds).
fn published_ms(delivery: &AmqpDelivery) -> Option<u64> {
    let header = delivery.properties.headers().as_ref().and_then(|headers| {
        match headers.inner().get(&lapin::types::ShortString::from("x-hubcast-published-ms"))? {
            AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok(),
            AMQPValue::Timestamp(ms) => Some(*ms),
            _ => None,
        }
    });
    // The timestamp is the producer's: an absurd one saturates rather than overflowing.
    header.or_else(|| delivery.properties.timestamp().map(|seconds| seconds.saturating_mul(1000)))
}

/// Checks what the router can check before routing: size and message id (the checks of every ingress),
/// the `type` property, JSON.
fn validate(
    names: &Names,
    delivery: &AmqpDelivery,
    message_id: Option<&str>,
    max_event_bytes: usize,
) -> Result<(&'static str, Value), String> {
    let hub = names
        .hub_of_exchange(delivery.exchange.as_str())
        .ok_or_else(|| format!("exchange '{}' is not a hub exchange", delivery.exchange))?;
    crate::events::check_envelope(delivery.data.len(), message_id, max_event_bytes)
        .map_err(|e| e.to_string())?;
    if let Some(kind) = delivery.properties.kind() {
        let event = delivery.routing_key.as_str().rsplit('.').next().unwrap_or_default();
        if kind.as_str() != event {
            return Err(format!("type '{kind}' does not match the routing key's event '{event}'"));
        }
    }
    let body = serde_json::from_slice(&delivery.data).map_err(|e| format!("invalid JSON: {e}"))?;
    Ok((hub, body))
}

/// The longest reason that goes into `x-hubcast-error` (and the log). A reason may quote the event's
/// fields, which can be as large as the event; AMQP properties must fit in one frame (128 KiB by default),
/// and a larger header makes the broker close the router's connection (FRAME_ERROR), after which the same
/// message comes back and does it again.
const MAX_REASON_BYTES: usize = 1024;

/// The reason, cut at a character boundary to at most [`MAX_REASON_BYTES`] in all, saying how long it was.
fn bounded_reason(reason: &str) -> std::borrow::Cow<'_, str> {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.into();
    }
    let suffix = format!("... ({} bytes in all)", reason.len());
    let room = MAX_REASON_BYTES.saturating_sub(suffix.len());
    let cut = (0..=room).rev().find(|&at| reason.is_char_boundary(at)).unwrap_or(0);
    format!("{}{suffix}", &reason[..cut]).into()
}

/// Sends a message to the dead-letter exchange with the reason, keeping its body and properties.
fn dead_letter(names: &Names, publish: &Channel, delivery: &AmqpDelivery, reason: &str) -> Publishing {
    let properties = dead_letter_properties(delivery, reason);
    start_publish(publish, names.dead_letter(), String::new(), delivery.data.clone(), properties)
}

/// The message's properties with the reason and where it came from added to its headers.
fn dead_letter_properties(delivery: &AmqpDelivery, reason: &str) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert("x-hubcast-error".into(), text(&bounded_reason(reason)));
    headers.insert("x-hubcast-original-exchange".into(), text(delivery.exchange.as_str()));
    headers.insert("x-hubcast-original-routing-key".into(), text(delivery.routing_key.as_str()));
    delivery.properties.clone().with_headers(headers).with_delivery_mode(2)
}

/// Waits until everything a run of messages caused is confirmed, and returns their tags for acking; a
/// refused publish sends them back to the queue.
async fn settle(last: AmqpDelivery, tags: Vec<u64>, publishing: Vec<Publishing>) -> anyhow::Result<Vec<u64>> {
    for publish in publishing {
        let confirm = publish.await.context("publishing to RabbitMQ")?;
        if let Confirmation::Nack(_) = confirm.await? {
            // Whatever else is unacked goes back too, when the session ends on this error.
            last.nack(BasicNackOptions { requeue: true, multiple: true }).await?;
            bail!("the broker refused a forward; the events go back to their queue");
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the router's consumer receives it from the tasks exchange.
    fn received(routing_key: &str, body: &[u8], properties: BasicProperties) -> AmqpDelivery {
        let mut delivery =
            AmqpDelivery::mock(1, "conduit.tasks".into(), routing_key.into(), false, body.to_vec());
        delivery.properties = properties;
        delivery
    }

    #[test]
    fn an_oversized_message_is_refused_with_the_reason_every_ingress_gives() {
        let names = Names::new("conduit.");
        let body = serde_json::json!({"taskId": "t", "taskType": "v", "percentComplete": 1, "message": "x".repeat(300_000)});
        let body = serde_json::to_vec(&body).unwrap();
        let message = received("vkey.1.TaskProgress", &body, BasicProperties::default());
        let reason = validate(&names, &message, None, 262_144).unwrap_err();
        assert_eq!(
            reason,
            format!("event body of {} bytes is over the limit of bus.max_event_bytes (262144)", body.len())
        );
        assert_eq!(reason, crate::events::check_envelope(body.len(), None, 262_144).unwrap_err().to_string());
        let (hub, parsed) = validate(&names, &message, None, body.len()).unwrap();
        assert_eq!((hub, parsed["taskId"].as_str()), ("tasks", Some("t")));
        let typed =
            received("vkey.1.TaskProgress", b"{}", BasicProperties::default().with_type("TaskFailed".into()));
        assert!(validate(&names, &typed, None, 262_144).unwrap_err().contains("does not match"));
    }

    /// An invalid event may be as large as `bus.max_event_bytes`, and its reason quotes the offending
    /// field. The dead letter's header stays small: the broker refuses properties larger than a frame
    /// (FRAME_ERROR, closing the router's connection), and the message would come back forever.
    #[test]
    fn a_dead_letter_reason_stays_within_a_frame() {
        let names = Names::new("conduit.");
        let router = Router::new(&Config::default());
        let task_id = "x y".repeat(80_000);
        let body = serde_json::to_vec(
            &serde_json::json!({"taskId": task_id, "taskType": "v", "percentComplete": 1}),
        );
        let message = received("vkey.1.TaskProgress", &body.unwrap(), BasicProperties::default());
        let (hub, body) = validate(&names, &message, None, 262_144).expect("within the size limit");
        let reason = router.route(hub, "vkey.1.TaskProgress", None, &body).unwrap_err().to_string();
        assert!(reason.len() > 200_000, "the reason quotes the id");
        let properties = dead_letter_properties(&message, &reason);
        let headers = properties.headers().as_ref().unwrap().inner();
        let Some(AMQPValue::LongString(header)) =
            headers.get(&lapin::types::ShortString::from("x-hubcast-error"))
        else {
            panic!("no x-hubcast-error header")
        };
        let header = String::from_utf8(header.as_bytes().to_vec()).unwrap();
        assert!(header.len() <= MAX_REASON_BYTES, "{} bytes", header.len());
        assert!(header.starts_with("invalid TaskProgress body: taskId: 'x yx y"), "{header}");
        assert!(header.ends_with(&format!("... ({} bytes in all)", reason.len())), "{header}");
        // Cut at a character boundary, whatever the characters.
        let wide = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_reason(&wide);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.starts_with(&"é".repeat(400)), "{cut}");
        assert_eq!(bounded_reason(&cut), cut, "cutting again changes nothing");
        assert_eq!(bounded_reason("short"), "short");
    }

    /// The producer's timestamp and `x-hubcast-published-ms` header are whatever it sent: absurd values
    /// give an absurd latency (clamped at zero by the edge), never an overflow.
    #[test]
    fn absurd_publish_times_do_not_overflow() {
        let at =
            |properties: BasicProperties| published_ms(&received("vkey.1.TaskProgress", b"{}", properties));
        assert_eq!(at(BasicProperties::default().with_timestamp(u64::MAX)), Some(u64::MAX));
        assert_eq!(at(BasicProperties::default().with_timestamp(1_700_000_000)), Some(1_700_000_000_000));
        let header = |value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert("x-hubcast-published-ms".into(), value);
            BasicProperties::default().with_headers(headers).with_timestamp(7)
        };
        assert_eq!(
            at(header(AMQPValue::LongLongInt(i64::MIN))),
            Some(7_000),
            "negative: the timestamp instead"
        );
        assert_eq!(at(header(AMQPValue::LongLongInt(i64::MAX))), Some(i64::MAX as u64));
        assert_eq!(at(header(AMQPValue::Timestamp(u64::MAX))), Some(u64::MAX));
        assert_eq!(at(BasicProperties::default()), None);
    }

    #[test]
    fn acks_go_only_as_far_as_every_earlier_tag_is_settled() {
        let mut settled = Settled::default();
        assert_eq!(settled.record(vec![1, 2]), Some(2));
        assert_eq!(settled.record(vec![4, 5]), None, "3 is not settled yet");
        assert_eq!(settled.record(vec![7]), None);
        assert_eq!(settled.record(vec![3]), Some(5), "3 closes the gap up to 5; 7 waits for 6");
        assert_eq!(settled.record(vec![]), None);
        assert_eq!(settled.record(vec![6, 8]), Some(8));
        assert!(settled.beyond.is_empty());
    }
}

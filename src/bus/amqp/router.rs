//! `hubcast router`: consumes the hub queues, routes each event, forwards deliveries to the edges and state
//! changes to the state stream, dead-letters what cannot be delivered, and acks a message only once all
//! of that is confirmed by the broker, so a router that dies mid-way loses nothing (RabbitMQ redelivers,
//! and the edges drop the repeat by its message id).

use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::stream::{FuturesOrdered, SelectAll};
use futures_util::StreamExt;
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
    connect, declare_edge_topology, declare_hub_topology, delivery_key, encode_delivery, Backoff, Names,
    Readiness, StateChange, StateMessage,
};
use crate::config::Config;
use crate::router::{Dispatch, Router};

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
                    .get_or_create(&crate::metrics::RoleLabels { role: "router".into() })
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
    let since = super::now_unix_seconds().saturating_sub(config.spend.alert_cooldown.as_secs() + 1);
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), AMQPValue::Timestamp(since));
    let mut alerts = alerts_channel
        .basic_consume(names.state_stream().into(), "".into(), BasicConsumeOptions::default(), arguments)
        .await
        .context("following the state stream")?;
    ready.set(true);
    backoff.reset();
    tracing::info!("router connected to RabbitMQ");

    // Acks wait for the confirms of what each message caused; they complete in order, as they were queued.
    let mut pending = FuturesOrdered::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Stop taking messages; finish what is in flight so nothing is redelivered needlessly.
                while let Some(result) = pending.next().await {
                    result?;
                }
                let _ = connection.close(200, "shutdown".into()).await;
                return Ok(());
            }
            Some(result) = pending.next(), if !pending.is_empty() => result?,
            next = alerts.next() => {
                let message = next.context("the broker cancelled the state stream consumer")??;
                if let Ok(StateMessage { change: StateChange::AlertSent { key, alert_type, at_ms }, .. }) =
                    serde_json::from_slice(&message.data)
                {
                    if let Some(key) = crate::auth::KeyId::parse(&key) {
                        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
                        router.record_alert(&key, &alert_type, at);
                    }
                }
                message.ack(BasicAckOptions::default()).await?;
            }
            next = consumers.next() => {
                let delivery = next.context("the broker cancelled the router's consumers")??;
                let confirms = handle(&names, router, &publish, &delivery, config.bus.max_event_bytes).await?;
                pending.push_back(settle(delivery, confirms));
            }
        }
    }
}

/// Routes one message and publishes what it causes; returns the confirms to wait for before acking.
async fn handle(
    names: &Names,
    router: &Router,
    publish: &Channel,
    delivery: &AmqpDelivery,
    max_event_bytes: usize,
) -> anyhow::Result<Vec<PublisherConfirm>> {
    let routing_key = delivery.routing_key.as_str();
    let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
    let traceparent = super::header(&delivery.properties, "traceparent");
    let published_ms = published_ms(delivery);
    let event = routing_key.rsplit('.').next().unwrap_or_default();
    let hub_name = names.hub_of_exchange(delivery.exchange.as_str()).unwrap_or("unknown");
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
    let dispatches = match validate(names, delivery, max_event_bytes).and_then(|(hub, body)| {
        router.route(hub, routing_key, message_id.as_deref(), &body).map_err(|e| e.to_string())
    }) {
        Ok(dispatches) => dispatches,
        Err(reason) => {
            tracing::info!(%reason, "dead-lettering");
            metrics.events_dead_lettered.get_or_create(&crate::metrics::hub(hub_name)).inc();
            return Ok(vec![dead_letter(names, publish, delivery, &reason).await?]);
        }
    };
    let mut confirms = Vec::with_capacity(dispatches.len());
    for (index, dispatch) in dispatches.iter().enumerate() {
        let confirm = match dispatch {
            Dispatch::Deliver(deliver) => {
                // One event can cause several deliveries (an alert, an admin mirror); each has its own id.
                let delivery_id = message_id.as_ref().map(|id| format!("{id}#{index}"));
                metrics.events_forwarded.get_or_create(&crate::metrics::hub_event(deliver.hub, event)).inc();
                let mut deliver = deliver.clone();
                deliver.published_ms = published_ms;
                let body = encode_delivery(&deliver, delivery_id.as_deref());
                let mut headers = FieldTable::default();
                if let Some(traceparent) = &traceparent {
                    headers.insert(
                        "traceparent".into(),
                        AMQPValue::LongString(LongString::from(traceparent.as_str())),
                    );
                }
                let properties = BasicProperties::default()
                    .with_timestamp(delivery.properties.timestamp().unwrap_or_else(super::now_unix_seconds))
                    .with_headers(headers);
                publish
                    .basic_publish(
                        names.edges_exchange().into(),
                        delivery_key(deliver.hub, &deliver.scope).into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?
            }
            state => {
                let change = StateChange::from_dispatch(state).expect("every non-delivery has a state form");
                let id = message_id.as_ref().map(|id| format!("{id}#{index}"));
                let body = serde_json::to_vec(&StateMessage { id, change })?;
                publish
                    .basic_publish(
                        "".into(),
                        names.state_stream().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
            }
        };
        confirms.push(confirm);
    }
    Ok(confirms)
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
    header.or_else(|| delivery.properties.timestamp().map(|seconds| seconds * 1000))
}

/// Checks what the router can check before routing: size, the `type` property, JSON.
fn validate(
    names: &Names,
    delivery: &AmqpDelivery,
    max_event_bytes: usize,
) -> Result<(&'static str, Value), String> {
    let hub = names
        .hub_of_exchange(delivery.exchange.as_str())
        .ok_or_else(|| format!("exchange '{}' is not a hub exchange", delivery.exchange))?;
    if delivery.data.len() > max_event_bytes {
        return Err(format!("body of {} bytes is over the limit of {max_event_bytes}", delivery.data.len()));
    }
    if let Some(kind) = delivery.properties.kind() {
        let event = delivery.routing_key.as_str().rsplit('.').next().unwrap_or_default();
        if kind.as_str() != event {
            return Err(format!("type '{kind}' does not match the routing key's event '{event}'"));
        }
    }
    let body = serde_json::from_slice(&delivery.data).map_err(|e| format!("invalid JSON: {e}"))?;
    Ok((hub, body))
}

/// Sends a message to the dead-letter exchange with the reason, keeping its body and properties.
async fn dead_letter(
    names: &Names,
    publish: &Channel,
    delivery: &AmqpDelivery,
    reason: &str,
) -> anyhow::Result<PublisherConfirm> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert("x-hubcast-error".into(), text(reason));
    headers.insert("x-hubcast-original-exchange".into(), text(delivery.exchange.as_str()));
    headers.insert("x-hubcast-original-routing-key".into(), text(delivery.routing_key.as_str()));
    let properties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
    Ok(publish
        .basic_publish(
            names.dead_letter().into(),
            "".into(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await?)
}

/// Acks the message once everything it caused is confirmed; a refused publish sends it back to the queue.
async fn settle(delivery: AmqpDelivery, confirms: Vec<PublisherConfirm>) -> anyhow::Result<()> {
    for confirm in confirms {
        if let Confirmation::Nack(_) = confirm.await? {
            delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
            bail!("the broker refused a forward; the event goes back to its queue");
        }
    }
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

//! `hubcast edge`: receives deliveries for the scopes its connections belong to, and follows the state
//! stream.
//!
//! Interest is per (hub, scope): an edge binds `d.tasks.t.7` when its first connection of key 7 on the
//! tasks hub opens and unbinds when the last one closes. Binding per scope rather than per group keeps
//! binding churn at connection rate instead of subscription rate, and lets one message per event reach an
//! edge however many of the event's groups it serves, so no connection can get a duplicate.

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    connect, declare_edge_topology, decode_delivery, delivery_key, split_deliveries, Backoff, Names,
    Readiness, StateMessage,
};
use crate::config::Config;
use crate::edge::{Edge, InterestChange};
use crate::state::dedupe::Dedupe;

/// How many delivered message ids an edge remembers to drop redeliveries.
const DEDUPE_CAPACITY: usize = 100_000;

/// Runs the edge side of the bus until `shutdown`, reconnecting with backoff.
pub async fn run(
    edge: Arc<Edge>,
    config: Config,
    node: String,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
    mut changes: mpsc::UnboundedReceiver<InterestChange>,
) {
    let mut backoff = Backoff::default();
    let mut follower = StateFollower { next_offset: None };
    let dedupe = Dedupe::new(DEDUPE_CAPACITY);
    loop {
        let result = session(
            &edge,
            &config,
            &node,
            &ready,
            &shutdown,
            &mut changes,
            &mut follower,
            &dedupe,
            &mut backoff,
        )
        .await;
        match result {
            Ok(()) => return,
            Err(error) => {
                ready.set(false);
                crate::metrics::metrics()
                    .amqp_reconnects
                    .get_or_create(&crate::metrics::RoleLabels { role: "edge" })
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(error = format!("{error:#}"), ?delay, "edge lost RabbitMQ; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Where the edge is in the state stream, so a reconnect resumes rather than replaying twice.
struct StateFollower {
    next_offset: Option<i64>,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    edge: &Arc<Edge>,
    config: &Config,
    node: &str,
    ready: &Readiness,
    shutdown: &CancellationToken,
    changes: &mut mpsc::UnboundedReceiver<InterestChange>,
    follower: &mut StateFollower,
    dedupe: &Dedupe,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let names = Names::new(&config.bus.exchange_prefix);
    let connection = connect(&config.bus, &format!("hubcast-edge-{node}")).await?;
    let channel = connection.create_channel().await?;
    declare_edge_topology(&channel, &config.bus).await?;
    let queue = names.edge_queue(node);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring {queue}"))?;
    for key in edge.interest_keys() {
        bind(&channel, &names, &queue, &key).await?;
    }
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;

    let state_channel = connection.create_channel().await?;
    state_channel.basic_qos(500, BasicQosOptions::default()).await?;
    let offset = match follower.next_offset {
        Some(offset) => AMQPValue::LongLongInt(offset),
        None => AMQPValue::LongString(LongString::from("first")),
    };
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), offset);
    let mut state = state_channel
        .basic_consume(names.state_stream().into(), "".into(), BasicConsumeOptions::default(), arguments)
        .await
        .context("following the state stream")?;
    ready.set(true);
    backoff.reset();
    tracing::info!(queue, "edge connected to RabbitMQ");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = connection.close(200, "shutdown".into()).await;
                return Ok(());
            }
            Some(change) = changes.recv() => match change {
                InterestChange::Bind { key, done } => {
                    bind(&channel, &names, &queue, &key).await?;
                    let _ = done.send(());
                }
                InterestChange::Unbind { key } => {
                    channel
                        .queue_unbind(queue.as_str().into(), names.edges_exchange().into(), key.into(), FieldTable::default())
                        .await?;
                }
            },
            next = deliveries.next() => {
                let message = next.context("the broker cancelled the edge's consumer")??;
                let Some(encoded) = split_deliveries(Bytes::from(message.data)) else {
                    tracing::warn!("dropping a malformed batch of deliveries");
                    continue;
                };
                // A lone delivery came by this edge's own binding; only a batch carries other scopes.
                let batched = encoded.len() > 1;
                for encoded in encoded {
                    receive(edge, dedupe, encoded, batched);
                }
            }
            next = state.next() => {
                let message = next.context("the broker cancelled the state stream consumer")??;
                if let Some(offset) = stream_offset(&message) {
                    follower.next_offset = Some(offset + 1);
                }
                match serde_json::from_slice::<StateMessage>(&message.data) {
                    Ok(StateMessage { id: Some(id), .. }) if !dedupe.first_time(&id) => {
                        tracing::debug!(id, "dropping a repeated state change");
                    }
                    Ok(StateMessage { change, .. }) => match change.into_dispatch() {
                        Some(dispatch) => {
                            edge.apply(&dispatch);
                        }
                        None => tracing::warn!("ignoring a state change with invalid fields"),
                    },
                    Err(error) => tracing::warn!(%error, "ignoring a malformed state change"),
                }
                message.ack(BasicAckOptions::default()).await?;
            }
        }
    }
}

/// Hands one delivery to the local groups it names, unless it was delivered before. A batch also carries
/// deliveries for scopes this edge does not serve; those are passed over before anything is recorded.
fn receive(edge: &Edge, dedupe: &Dedupe, encoded: Bytes, batched: bool) {
    let Some(received) = decode_delivery(encoded) else {
        tracing::warn!("dropping a malformed delivery");
        return;
    };
    if batched && !edge.serves(&delivery_key(received.delivery.hub, &received.delivery.scope)) {
        return;
    }
    // The producer's trace continues here when it sent one.
    let span = received.traceparent.as_deref().map(|traceparent| {
        let span = tracing::info_span!("deliver", traceparent);
        crate::telemetry::continue_trace(&span, Some(traceparent));
        span
    });
    let _entered = span.as_ref().map(tracing::Span::enter);
    match received.message_id {
        Some(id) if !dedupe.first_time(&id) => {
            tracing::debug!(hub = received.delivery.hub, id, "dropping a redelivered event");
        }
        _ => {
            edge.deliver(&received.delivery);
        }
    }
}

async fn bind(channel: &lapin::Channel, names: &Names, queue: &str, key: &str) -> anyhow::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            names.edges_exchange().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding {queue} to {key}"))
}

fn stream_offset(message: &lapin::message::Delivery) -> Option<i64> {
    match message.properties.headers().as_ref()?.inner().get(&ShortString::from("x-stream-offset"))? {
        AMQPValue::LongLongInt(offset) => Some(*offset),
        AMQPValue::LongInt(offset) => Some(i64::from(*offset)),
        _ => None,
    }
}

//! Publishing events to RabbitMQ with publisher confirms: `hubcast publish`, and the publish API of
//! `serve` and `edge` when they run on RabbitMQ.

use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::{connect, declare_hub_topology, now_unix_seconds, Names};
use crate::config::BusConfig;

pub struct Publisher {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
    names: Names,
}

impl Publisher {
    /// Connects and declares the hub topology, so an event published before any router ever ran still
    /// lands in the durable router queue instead of being dropped by an exchange with no queue.
    pub async fn connect(config: &BusConfig) -> anyhow::Result<Self> {
        let connection = connect(config, "hubcast-publisher").await?;
        let channel = connection.create_channel().await?;
        declare_hub_topology(&channel, config).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { _connection: connection, channel, names: Names::new(&config.exchange_prefix) })
    }

    /// Publishes one event and waits until the broker has taken responsibility for it.
    pub async fn publish(
        &self,
        hub: &str,
        routing_key: &str,
        message_id: Option<&str>,
        body: &[u8],
        traceparent: Option<&str>,
    ) -> anyhow::Result<String> {
        let message_id = message_id.map_or_else(crate::ids::random_id, str::to_owned);
        let event = routing_key.rsplit('.').next().unwrap_or_default();
        let exchange = short_string("exchange name", &self.names.hub_exchange(hub))?;
        let routing_key = short_string("routing key", routing_key)?;
        let message_id_property = short_string("message id", &message_id)?;
        let kind = short_string("event name", event)?;
        let mut headers = FieldTable::default();
        if let Some(traceparent) = traceparent {
            headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(traceparent)));
        }
        // AMQP timestamps are whole seconds; latency wants milliseconds.
        let published_ms = i64::try_from(super::now_unix_millis()).unwrap_or(i64::MAX);
        headers.insert("x-hubcast-published-ms".into(), AMQPValue::LongLongInt(published_ms));
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(message_id_property)
            .with_timestamp(now_unix_seconds())
            .with_type(kind)
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirmation = self
            .channel
            .basic_publish(exchange, routing_key, BasicPublishOptions::default(), body, properties)
            .await
            .context("publishing to RabbitMQ")?
            .await
            .context("waiting for the broker's confirm")?;
        match confirmation {
            Confirmation::Ack(_) => Ok(message_id),
            other => bail!("the broker did not accept the event: {other:?}"),
        }
    }
}

/// The longest AMQP short string (exchange, routing key, message id, type).
const MAX_SHORT_STRING: usize = 255;

/// A short string, refused when longer than 255 bytes: lapin would write it with a wrong length byte,
/// breaking the frame (and panicking in debug builds). Callers validate before publishing
/// ([`crate::events::validate_incoming`]); this keeps the publisher safe anyway.
fn short_string(what: &str, value: &str) -> anyhow::Result<ShortString> {
    if value.len() > MAX_SHORT_STRING {
        bail!("the {what} is {} bytes; AMQP allows at most 255", value.len());
    }
    Ok(ShortString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_over_255_bytes_are_refused_not_sent() {
        assert_eq!(short_string("message id", &"m".repeat(255)).unwrap().as_str().len(), 255);
        let error = short_string("message id", &"m".repeat(256)).unwrap_err();
        assert_eq!(error.to_string(), "the message id is 256 bytes; AMQP allows at most 255");
    }
}

//! Buses carry events from producers to edges. The embedded bus routes and delivers in this process; the
//! RabbitMQ bus (a later step) carries them between router and edge processes.

pub mod amqp;

use std::sync::Arc;

use serde_json::Value;

use crate::edge::Edge;
use crate::events::EventError;
use crate::router::Router;

/// The in-process bus of `hubcast serve` without an AMQP URL: publishing is routing plus delivery.
#[derive(Clone)]
pub struct EmbeddedBus {
    edge: Arc<Edge>,
    router: Arc<Router>,
}

impl EmbeddedBus {
    pub fn new(edge: Arc<Edge>) -> Self {
        let router = Router::new(&edge.config);
        Self { edge, router: Arc::new(router) }
    }

    /// Validates and delivers one event; returns how many local connections received something.
    pub fn publish(
        &self,
        hub: &str,
        routing_key: &str,
        message_id: Option<&str>,
        body: &Value,
    ) -> Result<usize, EventError> {
        let event = routing_key.rsplit('.').next().unwrap_or_default();
        let metrics = crate::metrics::metrics();
        metrics.events_consumed.get_or_create(&crate::metrics::hub_event(hub, event)).inc();
        let published_ms = crate::bus::amqp::now_unix_millis();
        let limit = self.edge.config.bus.max_event_bytes;
        crate::events::check_envelope(crate::events::encoded_len(body), message_id, limit)?;
        let mut dispatches = self.router.route(hub, routing_key, message_id, body)?;
        let mut delivered = 0;
        for dispatch in &mut dispatches {
            if let crate::delivery::Dispatch::Deliver(delivery) = dispatch {
                delivery.published_ms = Some(published_ms);
                metrics.events_forwarded.get_or_create(&crate::metrics::delivery(delivery)).inc();
            }
            delivered += self.edge.apply(dispatch);
        }
        Ok(delivered)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }
}

/// Why the publish API could not take an event.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// 400: the event is invalid; the reason says why. 413 when it is [`EventError::TooLarge`].
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// 503: the bus cannot take it right now.
    #[error("the bus is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

impl PublishError {
    /// The HTTP status the publish API answers with.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            PublishError::Invalid(EventError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
            PublishError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Room in a publish request for what surrounds the payload: `hub`, `routingKey`, `messageId` (at most
/// 255 bytes) and the JSON around them, with plenty left for whitespace in a pretty-printed payload.
pub const PUBLISH_ENVELOPE_BYTES: usize = 64 * 1024;

/// The largest `POST /api/v1/publish` body worth reading: the event size limit plus the envelope. Bigger
/// requests are refused before they are buffered; an event within it is then checked exactly.
pub fn publish_body_limit(config: &crate::config::BusConfig) -> usize {
    config.max_event_bytes.saturating_add(PUBLISH_ENVELOPE_BYTES)
}

/// Where the publish API sends events: straight to this process's edge, or to RabbitMQ.
pub enum Bus {
    Embedded(EmbeddedBus),
    Amqp(Box<AmqpPublishing>),
}

impl Bus {
    /// Validates and publishes one event. The embedded bus says how many local connections it reached.
    pub async fn publish(
        &self,
        hub: &str,
        routing_key: &str,
        message_id: Option<&str>,
        body: &Value,
    ) -> Result<Option<usize>, PublishError> {
        match self {
            Bus::Embedded(bus) => Ok(Some(bus.publish(hub, routing_key, message_id, body)?)),
            Bus::Amqp(bus) => {
                crate::events::validate_incoming(
                    hub,
                    routing_key,
                    message_id,
                    body,
                    bus.config.max_event_bytes,
                )?;
                bus.publish(hub, routing_key, message_id, body).await.map_err(PublishError::Unavailable)?;
                Ok(None)
            }
        }
    }
}

/// Publishing to RabbitMQ from the HTTP API: one connection, made on first use and again after a failure.
pub struct AmqpPublishing {
    config: crate::config::BusConfig,
    publisher: tokio::sync::Mutex<Option<amqp::publisher::Publisher>>,
}

impl AmqpPublishing {
    pub fn new(config: crate::config::BusConfig) -> Self {
        Self { config, publisher: tokio::sync::Mutex::new(None) }
    }

    async fn publish(
        &self,
        hub: &str,
        routing_key: &str,
        message_id: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(body)?;
        let mut publisher = self.publisher.lock().await;
        for attempt in 0..2 {
            if publisher.is_none() {
                *publisher = Some(amqp::publisher::Publisher::connect(&self.config).await?);
            }
            let result = publisher
                .as_ref()
                .expect("connected just above")
                .publish(hub, routing_key, message_id, &body, None)
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(error) if attempt == 0 => {
                    tracing::warn!(error = format!("{error:#}"), "publishing failed; reconnecting once");
                    *publisher = None;
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

    use crate::auth::Authenticator;
    use crate::config::Config;

    fn embedded() -> EmbeddedBus {
        let mut config = Config::default();
        config.auth.jwt_secret = Some("unit-test-secret".into());
        let auth = Authenticator::new(&config.auth).unwrap();
        EmbeddedBus::new(Arc::new(Edge::new(config, auth, crate::hubs::all())))
    }

    /// RabbitMQ that is not there: a publish that gets as far as connecting fails with `Unavailable`.
    fn unreachable_amqp() -> Bus {
        let mut config = Config::default().bus;
        config.amqp_url = Some("amqp://guest:guest@127.0.0.1:1/%2f".into());
        Bus::Amqp(Box::new(AmqpPublishing::new(config)))
    }

    /// A TaskProgress of about 1.1 MB, over the default `bus.max_event_bytes` of 256 KiB.
    fn oversized() -> Value {
        json!({"taskId": "t1", "taskType": "video", "percentComplete": 5, "message": "x".repeat(1_100_000)})
    }

    fn too_large(body: &Value) -> String {
        let bytes = serde_json::to_vec(body).unwrap().len();
        format!("event body of {bytes} bytes is over the limit of bus.max_event_bytes (262144)")
    }

    #[tokio::test]
    async fn the_publish_api_refuses_an_event_over_max_event_bytes_on_either_bus() {
        let body = oversized();
        for bus in [Bus::Embedded(embedded()), unreachable_amqp()] {
            let error = bus.publish("tasks", "vkey.1.TaskProgress", Some("m1"), &body).await.unwrap_err();
            assert_eq!(error.to_string(), too_large(&body));
            assert!(matches!(error, PublishError::Invalid(EventError::TooLarge { limit: 262_144, .. })));
            assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
        }
        // Right at the limit is fine: the embedded bus routes it.
        let mut body = json!({"taskId": "t1", "taskType": "video", "percentComplete": 5, "message": ""});
        let room = 262_144 - serde_json::to_vec(&body).unwrap().len();
        body["message"] = json!("x".repeat(room));
        assert_eq!(crate::events::encoded_len(&body), 262_144);
        assert_eq!(
            Bus::Embedded(embedded()).publish("tasks", "vkey.1.TaskProgress", None, &body).await.unwrap(),
            Some(0)
        );
    }

    /// A message id travels as an AMQP short string: a longer one would break the publisher's frame.
    #[tokio::test]
    async fn the_publish_api_refuses_a_message_id_over_255_bytes() {
        let body = json!({"taskId": "t1", "taskType": "video", "percentComplete": 5});
        for bus in [Bus::Embedded(embedded()), unreachable_amqp()] {
            let error =
                bus.publish("tasks", "vkey.1.TaskProgress", Some(&"m".repeat(300)), &body).await.unwrap_err();
            assert!(matches!(error, PublishError::Invalid(EventError::MessageIdTooLong(300))), "{error}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn the_request_body_limit_leaves_room_for_the_envelope() {
        let config = Config::default().bus;
        assert_eq!(publish_body_limit(&config), 262_144 + PUBLISH_ENVELOPE_BYTES);
        let huge = crate::config::BusConfig { max_event_bytes: usize::MAX, ..config };
        assert_eq!(publish_body_limit(&huge), usize::MAX);
    }

    /// 5000 publishes with made-up hub and event names (all refused) leave `/metrics` as small as before.
    #[test]
    fn refused_publishes_with_made_up_names_do_not_grow_the_metrics() {
        let bus = embedded();
        let body = json!({"taskId": "t1", "taskType": "video", "percentComplete": 5});
        for i in 0..5000 {
            let (hub, routing_key) = match i % 3 {
                0 => (format!("nohub{i}"), format!("vkey.1.TaskProgress{i}")),
                1 => ("tasks".to_owned(), format!("vkey.1.NoSuchEvent{i}")),
                _ => ("spend".to_owned(), format!("vkey.1.Bad-Event-{i}")),
            };
            assert!(bus.publish(&hub, &routing_key, None, &body).is_err());
        }
        let text = crate::metrics::metrics().encode();
        for bogus in ["nohub", "NoSuchEvent", "TaskProgress1", "Bad-Event"] {
            assert!(!text.contains(bogus), "{bogus} became a label");
        }
        assert!(text.len() < 64 * 1024, "{} bytes of metrics", text.len());
    }
}

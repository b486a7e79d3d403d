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
        let mut dispatches = self.router.route(hub, routing_key, message_id, body)?;
        let mut delivered = 0;
        for dispatch in &mut dispatches {
            if let crate::router::Dispatch::Deliver(delivery) = dispatch {
                delivery.published_ms = Some(published_ms);
                metrics.events_forwarded.get_or_create(&crate::metrics::hub_event(delivery.hub, event)).inc();
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
    /// 400: the event is invalid; the reason says why.
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// 503: the bus cannot take it right now.
    #[error("the bus is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
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
                crate::events::validate(hub, routing_key, body)?;
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

//! Buses carry events from producers to edges. The embedded bus routes and delivers in this process; the
//! RabbitMQ bus (a later step) carries them between router and edge processes.

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
        let dispatches = self.router.route(hub, routing_key, message_id, body)?;
        Ok(dispatches.iter().map(|dispatch| self.edge.apply(dispatch)).sum())
    }

    pub fn router(&self) -> &Router {
        &self.router
    }
}

//! Buses carry validated deliveries from producers to edges. The embedded bus hands them straight to
//! this process's edge; the RabbitMQ bus (a later step) carries them between router and edge processes.

use std::sync::Arc;

use crate::edge::{Delivery, Edge};

/// The in-process bus of `hubcast serve` without an AMQP URL: publish is delivery.
#[derive(Clone)]
pub struct EmbeddedBus {
    edge: Arc<Edge>,
}

impl EmbeddedBus {
    pub fn new(edge: Arc<Edge>) -> Self {
        Self { edge }
    }

    /// Delivers to local members; returns how many connections the event reached.
    pub fn publish(&self, delivery: &Delivery) -> usize {
        self.edge.deliver(delivery)
    }
}

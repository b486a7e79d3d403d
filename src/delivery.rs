//! What travels from the router to the edges, and the names both sides agree on: whose groups an event
//! is for ([`Scope`]), the event's groups and encoded frames ([`Delivery`]), what an edge must do
//! ([`Dispatch`]), and the routing key of a hub's deliveries to one scope ([`interest_key`]).
//!
//! Below the edge, the router and the buses, so each of them can use it without using the others.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use crate::auth::{KeyId, Principal};
use crate::events::types::Severity;
use crate::protocol::EncodedMessage;

/// Whose groups: a tenant's (its virtual key), the admins', or everyone's (`all` notifications).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant(KeyId),
    Admin,
    Everyone,
}

impl Scope {
    /// The scope of a connection: its verified credential decides, never anything the client says.
    pub fn of(principal: &Principal) -> Self {
        match principal {
            Principal::VirtualKey(key) => Scope::Tenant(key.id.clone()),
            Principal::Admin { .. } => Scope::Admin,
        }
    }
}

/// What a connection's notification preferences are checked against: the event (its index among the
/// notification events) and its severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter {
    pub event: u8,
    pub severity: Severity,
}

/// One event on its way to the connections of some groups of one hub and scope.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub hub: &'static str,
    pub scope: Scope,
    pub groups: Vec<String>,
    /// Set for notifications: checked against each connection's preferences.
    pub filter: Option<EventFilter>,
    /// When the producer published the event (Unix milliseconds), for the delivery latency metric.
    pub published_ms: Option<u64>,
    pub message: Arc<EncodedMessage>,
}

/// The routing key of deliveries for one hub and scope; an edge is interested in those of its connections.
pub fn interest_key(hub: &str, scope: &Scope) -> String {
    match scope {
        Scope::Tenant(key) => format!("d.{hub}.t.{key}"),
        Scope::Admin => format!("d.{hub}.admin"),
        Scope::Everyone => format!("d.{hub}.all"),
    }
}

/// What a webhook event reports; one per `DeliveryAttempted`, `DeliverySucceeded`, `DeliveryFailed` and
/// `RetryScheduled`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeliveryOutcome {
    Attempted,
    Succeeded { response_time_ms: Option<f64> },
    Failed,
    RetryScheduled,
}

/// What the edges must do for one event. Deliveries go to the edges with interested connections; state
/// changes go to every edge, which keeps its own copy of that state.
#[derive(Debug, Clone)]
pub enum Dispatch {
    Deliver(Delivery),
    /// Close every connection of the key and refuse new ones.
    Revoke(KeyId),
    /// Accept the key's connections again.
    Restore(KeyId),
    /// The latest health report of a provider, for `InitialProviderHealth`.
    ProviderHealth {
        provider: String,
        status: Value,
        message: Value,
        checked_at: String,
    },
    /// One webhook delivery outcome, for `RequestStatistics`.
    WebhookOutcome {
        key: KeyId,
        url: String,
        outcome: DeliveryOutcome,
        at: SystemTime,
    },
    /// A budget alert went out: routers that take over the spend queue must know its cooldown runs.
    AlertSent {
        key: KeyId,
        alert_type: String,
        at: SystemTime,
    },
}

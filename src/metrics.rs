//! Prometheus metrics, all named `hubcast_*`, served at `/metrics` by every role.
//!
//! Counters move once per connection, invocation or event, never once per delivered frame: fan-out adds its
//! count in one step. Gauges of the current state (connections, groups, bindings, buffered bytes) are read
//! at scrape time from the edge itself, so they cannot drift.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

// Every label value is a `&'static str`: it comes from a fixed list (hub names, event names, method
// names, reasons) and never from input, so nothing a client or producer sends can grow the label set.
// Names that are not on the list share the value `unknown` (see [`hub`], [`hub_event`]).

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubLabels {
    pub hub: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubProtocolLabels {
    pub hub: &'static str,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubReasonLabels {
    pub hub: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubMethodLabels {
    pub hub: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubEventLabels {
    pub hub: &'static str,
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<HubProtocolLabels, Gauge>,
    pub connects: Family<HubProtocolLabels, Counter>,
    pub disconnects: Family<HubReasonLabels, Counter>,
    pub invocations: Family<HubMethodLabels, Counter>,
    pub invocation_refusals: Family<HubReasonLabels, Counter>,
    pub events_consumed: Family<HubEventLabels, Counter>,
    pub events_forwarded: Family<HubEventLabels, Counter>,
    pub forward_messages: Counter,
    pub events_dead_lettered: Family<HubLabels, Counter>,
    pub frames_delivered: Family<HubLabels, Counter>,
    pub slow_consumer_closes: Counter,
    pub amqp_reconnects: Family<RoleLabels, Counter>,
    pub delivery_latency: Histogram,
    pub groups: Gauge,
    pub bindings: Gauge,
    pub outbound_buffer_bytes: Gauge,
    pub outbound_buffer_max_bytes: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("hubcast");
        let metrics = Self {
            connections: Family::default(),
            connects: Family::default(),
            disconnects: Family::default(),
            invocations: Family::default(),
            invocation_refusals: Family::default(),
            events_consumed: Family::default(),
            events_forwarded: Family::default(),
            forward_messages: Counter::default(),
            events_dead_lettered: Family::default(),
            frames_delivered: Family::default(),
            slow_consumer_closes: Counter::default(),
            amqp_reconnects: Family::default(),
            // 0.5 ms to about 16 s.
            delivery_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            groups: Gauge::default(),
            bindings: Gauge::default(),
            outbound_buffer_bytes: Gauge::default(),
            outbound_buffer_max_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open client connections", metrics.connections.clone());
        registry.register("connects", "Connections that completed the handshake", metrics.connects.clone());
        registry.register("disconnects", "Connections that ended, by reason", metrics.disconnects.clone());
        registry.register("invocations", "Hub method invocations", metrics.invocations.clone());
        registry.register(
            "invocation_refusals",
            "Invocations that failed, by reason",
            metrics.invocation_refusals.clone(),
        );
        registry.register(
            "events_consumed",
            "Events taken from the bus, by hub and event",
            metrics.events_consumed.clone(),
        );
        registry.register(
            "events_forwarded",
            "Deliveries sent on to the edges",
            metrics.events_forwarded.clone(),
        );
        registry.register(
            "forward_messages",
            "AMQP messages carrying deliveries to the edges; under a backlog one carries several",
            metrics.forward_messages.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events that could not be delivered",
            metrics.events_dead_lettered.clone(),
        );
        registry.register(
            "frames_delivered",
            "Frames queued to client connections",
            metrics.frames_delivered.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed as slow consumers",
            metrics.slow_consumer_closes.clone(),
        );
        registry.register(
            "amqp_reconnects",
            "Reconnections to RabbitMQ, by role",
            metrics.amqp_reconnects.clone(),
        );
        registry.register(
            "publish_to_delivery_seconds",
            "Time from publishing an event to queueing it to clients",
            metrics.delivery_latency.clone(),
        );
        registry.register("groups", "Groups with at least one local member", metrics.groups.clone());
        registry.register(
            "bindings",
            "Delivery bindings this edge holds on RabbitMQ",
            metrics.bindings.clone(),
        );
        registry.register(
            "outbound_buffer_bytes",
            "Bytes queued to all client connections",
            metrics.outbound_buffer_bytes.clone(),
        );
        registry.register(
            "outbound_buffer_max_bytes",
            "Bytes queued to the most backed-up client connection",
            metrics.outbound_buffer_max_bytes.clone(),
        );
        Self { registry, ..metrics }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.delivery_latency.observe(latency.as_secs_f64());
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The label value of names outside the fixed lists.
pub const UNKNOWN: &str = "unknown";

/// A hub name as a label: one of the contract's hubs, else `unknown`.
pub fn hub_label(hub: &str) -> &'static str {
    crate::events::hub_name(hub).unwrap_or(UNKNOWN)
}

/// An event name as a label: one of the hub's events, else `unknown`.
pub fn event_label(hub: &str, event: &str) -> &'static str {
    crate::events::known_event(hub, event).unwrap_or(UNKNOWN)
}

pub fn hub(hub: &str) -> HubLabels {
    HubLabels { hub: hub_label(hub) }
}

pub fn hub_event(hub: &str, event: &str) -> HubEventLabels {
    HubEventLabels { hub: hub_label(hub), event: event_label(hub, event) }
}

/// The labels of a delivery sent on: its hub and the event it carries (a published event, a derived
/// `BudgetAlert`, an admin `VirtualKeyActivity` mirror).
pub fn delivery(delivery: &crate::delivery::Delivery) -> HubEventLabels {
    let event = match delivery.message.message() {
        Some(crate::protocol::HubMessage::Invocation(invocation)) => invocation.target.as_str(),
        _ => "",
    };
    hub_event(delivery.hub, event)
}

/// A hub and a reason; the reason is one of the caller's fixed strings.
pub fn hub_reason(hub: &str, reason: &'static str) -> HubReasonLabels {
    HubReasonLabels { hub: hub_label(hub), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label values come from fixed lists: thousands of made-up hub and event names (as a producer or a
    /// client can send them) share the label value `unknown` instead of each adding a series for good.
    #[test]
    fn made_up_names_share_the_unknown_label() {
        let m = metrics();
        for i in 0..5000 {
            let (bogus_hub, bogus_event) = (format!("bogus-hub-{i}"), format!("BogusEvent{i}"));
            m.events_consumed.get_or_create(&hub_event(&bogus_hub, &bogus_event)).inc();
            m.events_consumed.get_or_create(&hub_event("tasks", &bogus_event)).inc();
            m.events_forwarded.get_or_create(&hub_event(&bogus_hub, "TaskProgress")).inc();
            m.events_dead_lettered.get_or_create(&hub(&bogus_hub)).inc();
            m.disconnects.get_or_create(&hub_reason(&bogus_hub, "client_closed")).inc();
        }
        m.events_consumed.get_or_create(&hub_event("tasks", "TaskProgress")).inc();
        m.events_forwarded.get_or_create(&hub_event("admin-notifications", "VirtualKeyActivity")).inc();
        let text = m.encode();
        assert!(!text.to_ascii_lowercase().contains("bogus"), "a made-up name became a label");
        assert!(text.len() < 64 * 1024, "{} bytes of metrics after 5000 made-up names", text.len());
        for series in [
            "hubcast_events_consumed_total{hub=\"unknown\",event=\"unknown\"}",
            "hubcast_events_consumed_total{hub=\"tasks\",event=\"unknown\"}",
            "hubcast_events_consumed_total{hub=\"tasks\",event=\"TaskProgress\"}",
            "hubcast_events_forwarded_total{hub=\"admin-notifications\",event=\"VirtualKeyActivity\"}",
            "hubcast_events_dead_lettered_total{hub=\"unknown\"}",
        ] {
            assert!(text.contains(series), "{series} missing");
        }
        // An event of another hub is not an event of this one.
        assert_eq!(hub_event("spend", "TaskProgress").event, UNKNOWN);
        assert_eq!(hub_event("notifications", "PreferencesUpdated").event, "PreferencesUpdated");
    }

    #[test]
    fn exposition_names_are_prefixed() {
        metrics().frames_delivered.get_or_create(&hub("tasks")).inc_by(3);
        let text = metrics().encode();
        assert!(text.contains("hubcast_frames_delivered_total{hub=\"tasks\"}"), "{text}");
        assert!(text.contains("hubcast_publish_to_delivery_seconds_bucket"), "{text}");
    }
}

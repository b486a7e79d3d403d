//! SystemNotificationHub events: argument lists, sent to one key (`vkey.<id>`) or everyone (`all`),
//! filtered per connection by its preferences (event names and minimum severity).

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::types::{HealthStatus, Id, Severity, Timestamp};
use super::{Args, Event, EventKind};

/// Notification events in a fixed order: a connection's enabled events are a bit mask over it.
pub const EVENT_NAMES: [&str; 8] = [
    "ProviderHealthChanged",
    "RateLimitWarning",
    "SystemAnnouncement",
    "ServiceDegraded",
    "ServiceRestored",
    "ModelMappingChanged",
    "ModelCapabilitiesDiscovered",
    "ModelAvailabilityChanged",
];

/// A provider's health changed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderHealthChanged {
    pub provider: Id,
    pub status: HealthStatus,
    pub message: Option<String>,
    pub severity: Option<Severity>,
}

/// The key is close to a rate limit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitWarning {
    pub endpoint: String,
    pub remaining: u64,
    pub reset_time: Timestamp,
    pub severity: Option<Severity>,
}

/// An announcement from the operators.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemAnnouncement {
    pub title: String,
    pub message: String,
    pub severity: Severity,
}

/// A service works less well than it should.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDegraded {
    pub service: String,
    pub reason: String,
    pub severity: Option<Severity>,
}

/// A degraded service is back.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRestored {
    pub service: String,
    pub severity: Option<Severity>,
}

/// A model now maps to another provider.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelMappingChanged {
    pub model: String,
    pub new_provider: Option<String>,
    pub severity: Option<Severity>,
}

/// Capabilities found for a provider's models.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCapabilitiesDiscovered {
    pub provider: Id,
    pub capabilities: Vec<Value>,
    pub severity: Option<Severity>,
}

/// A model became available or unavailable.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelAvailabilityChanged {
    pub model: String,
    pub is_available: bool,
    pub severity: Option<Severity>,
}

/// Implements `Event` with the body's `severity` first, then the contract's default for the event.
macro_rules! notification {
    ($type:ty, $name:literal, [$($field:literal),*], |$this:ident| $default:expr) => {
        impl Event for $type {
            const NAME: &'static str = $name;
            const ARGS: Args = Args::Fields(&[$($field),*]);
            fn severity(&self) -> Severity {
                let $this = self;
                $this.severity.unwrap_or($default)
            }
        }
    };
}

notification!(ProviderHealthChanged, "ProviderHealthChanged", ["provider", "status", "message"], |e| match e
    .status
{
    HealthStatus::Healthy => Severity::Info,
    HealthStatus::Degraded => Severity::Warning,
    HealthStatus::Unhealthy => Severity::Error,
});
notification!(RateLimitWarning, "RateLimitWarning", ["endpoint", "remaining", "resetTime"], |_e| {
    Severity::Warning
});
notification!(ServiceDegraded, "ServiceDegraded", ["service", "reason"], |_e| Severity::Warning);
notification!(ServiceRestored, "ServiceRestored", ["service"], |_e| Severity::Info);
notification!(ModelMappingChanged, "ModelMappingChanged", ["model", "newProvider"], |_e| Severity::Info);
notification!(
    ModelCapabilitiesDiscovered,
    "ModelCapabilitiesDiscovered",
    ["provider", "capabilities"],
    |_e| Severity::Info
);
notification!(ModelAvailabilityChanged, "ModelAvailabilityChanged", ["model", "isAvailable"], |e| {
    if e.is_available {
        Severity::Info
    } else {
        Severity::Warning
    }
});

impl Event for SystemAnnouncement {
    const NAME: &'static str = "SystemAnnouncement";
    const ARGS: Args = Args::Fields(&["title", "message", "severity"]);
    fn severity(&self) -> Severity {
        self.severity
    }
}

pub fn kinds() -> Vec<EventKind> {
    const HUB: &str = "notifications";
    vec![
        EventKind::of::<ProviderHealthChanged>(HUB),
        EventKind::of::<RateLimitWarning>(HUB),
        EventKind::of::<SystemAnnouncement>(HUB),
        EventKind::of::<ServiceDegraded>(HUB),
        EventKind::of::<ServiceRestored>(HUB),
        EventKind::of::<ModelMappingChanged>(HUB),
        EventKind::of::<ModelCapabilitiesDiscovered>(HUB),
        EventKind::of::<ModelAvailabilityChanged>(HUB),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::find;
    use super::*;
    use serde_json::json;

    fn severity(event: &str, body: Value) -> Severity {
        find("notifications", event).unwrap().parse(&body).unwrap().severity
    }

    #[test]
    fn severities_follow_the_contract() {
        assert_eq!(
            severity("ProviderHealthChanged", json!({"provider": "openai", "status": "unhealthy"})),
            Severity::Error
        );
        assert_eq!(
            severity("ProviderHealthChanged", json!({"provider": "openai", "status": "degraded"})),
            Severity::Warning
        );
        assert_eq!(
            severity("ProviderHealthChanged", json!({"provider": "openai", "status": "healthy"})),
            Severity::Info
        );
        assert_eq!(
            severity(
                "ProviderHealthChanged",
                json!({"provider": "openai", "status": "healthy", "severity": "critical"})
            ),
            Severity::Critical,
            "a severity field wins"
        );
        assert_eq!(severity("ServiceDegraded", json!({"service": "s", "reason": "r"})), Severity::Warning);
        assert_eq!(
            severity(
                "RateLimitWarning",
                json!({"endpoint": "/v1", "remaining": 3, "resetTime": "2026-01-01T00:00:00Z"})
            ),
            Severity::Warning
        );
        assert_eq!(
            severity("ModelAvailabilityChanged", json!({"model": "m", "isAvailable": false})),
            Severity::Warning
        );
        assert_eq!(
            severity("ModelAvailabilityChanged", json!({"model": "m", "isAvailable": true})),
            Severity::Info
        );
        assert_eq!(
            severity("SystemAnnouncement", json!({"title": "t", "message": "m", "severity": "error"})),
            Severity::Error
        );
        assert_eq!(severity("ServiceRestored", json!({"service": "s"})), Severity::Info);
    }

    #[test]
    fn every_notification_event_has_a_filter_bit() {
        for kind in kinds() {
            assert!(EVENT_NAMES.contains(&kind.name), "{}", kind.name);
        }
    }
}

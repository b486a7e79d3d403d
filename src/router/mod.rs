//! The router: turns (hub, routing key, message id, body) into what the edges must do.
//!
//! Mapping an event to its groups is a pure function of the event. Around it sits the little memory that
//! routing needs: recent message ids (so a redelivery reaches clients once), budget alert cooldowns,
//! webhook statistics and the latest provider health. Every bus calls [`Router::route`], so producers get
//! the same validation and delivery through the publish API and through RabbitMQ.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::auth::KeyId;
use crate::config::Config;
use crate::delivery::{Delivery, DeliveryOutcome, Dispatch, EventFilter, Scope};
use crate::events::types::KeyRef;
use crate::events::{self, notifications, Audience, EventError, Parsed};
use crate::protocol::{EncodedMessage, HubMessage};
use crate::state::budget::BudgetAlerts;
use crate::state::dedupe::Dedupe;

/// How many recent message ids are remembered for deduplication.
const DEDUPE_CAPACITY: usize = 100_000;

pub struct Router {
    budget: BudgetAlerts,
    dedupe: Dedupe,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        Self {
            budget: BudgetAlerts::new(config.spend.budget_thresholds.clone(), config.spend.alert_cooldown),
            dedupe: Dedupe::new(DEDUPE_CAPACITY),
        }
    }

    /// Validates an event and returns what the edges must do. A repeated `message_id` is accepted and
    /// yields nothing.
    pub fn route(
        &self,
        hub: &str,
        routing_key: &str,
        message_id: Option<&str>,
        body: &Value,
    ) -> Result<Vec<Dispatch>, EventError> {
        let (hub, audience, parsed) = events::validate(hub, routing_key, body)?;
        if let Some(id) = message_id {
            if !self.dedupe.first_time(&format!("{hub}/{id}")) {
                return Ok(Vec::new());
            }
        }
        Ok(self.dispatches(hub, &audience, parsed, body, SystemTime::now()))
    }

    fn dispatches(
        &self,
        hub: &'static str,
        audience: &Audience,
        parsed: Parsed,
        body: &Value,
        now: SystemTime,
    ) -> Vec<Dispatch> {
        let key = match audience {
            Audience::VirtualKey(key) => Some(key),
            _ => None,
        };
        let mut out = Vec::new();
        let mut deliver_main = true;
        match (hub, parsed.name) {
            ("spend", "SpendUpdate") => {
                let utilization = body.get("budgetUtilization").and_then(Value::as_f64);
                if let (Some(key), Some(utilization)) = (key, utilization) {
                    if let Some(alert) = self.budget.on_spend_update(key, utilization, now) {
                        let data = json!({
                            "threshold": alert.threshold,
                            "currentSpend": body.get("totalSpend"),
                            "budget": body.get("budget"),
                            "percentageUsed": (utilization * 10_000.0).round() / 100.0,
                            "severity": alert.severity,
                            "message": format!(
                                "Budget {}% used (threshold {}%)",
                                (utilization * 1000.0).round() / 10.0,
                                (alert.threshold * 100.0).round()
                            ),
                            "timestamp": humantime::format_rfc3339_seconds(now).to_string(),
                        });
                        let derived = Parsed {
                            name: "BudgetAlert",
                            arguments: vec![json!(alert.alert_type), data],
                            groups: None,
                            severity: events::types::Severity::Info,
                        };
                        // The update goes first, then the alert it caused.
                        out.extend(self.deliveries("spend", audience, &parsed));
                        out.extend(self.deliveries("spend", audience, &derived));
                        out.push(Dispatch::AlertSent {
                            key: key.clone(),
                            alert_type: alert.alert_type,
                            at: now,
                        });
                        return out;
                    }
                }
            }
            ("spend", "BudgetAlert") => {
                let alert_type = body.get("alertType").and_then(Value::as_str).unwrap_or_default();
                if let Some(key) = key {
                    deliver_main = self.budget.allow_published(key, alert_type, now);
                    if deliver_main {
                        out.push(Dispatch::AlertSent {
                            key: key.clone(),
                            alert_type: alert_type.to_owned(),
                            at: now,
                        });
                    }
                }
            }
            ("webhooks", _) => {
                let url = body.get("url").and_then(Value::as_str).unwrap_or_default();
                let outcome = match parsed.name {
                    "DeliveryAttempted" => DeliveryOutcome::Attempted,
                    "DeliverySucceeded" => DeliveryOutcome::Succeeded {
                        response_time_ms: body.get("responseTimeMs").and_then(Value::as_f64),
                    },
                    "DeliveryFailed" => DeliveryOutcome::Failed,
                    _ => DeliveryOutcome::RetryScheduled,
                };
                if let Some(key) = key {
                    out.push(Dispatch::WebhookOutcome {
                        key: key.clone(),
                        url: url.to_owned(),
                        outcome,
                        at: now,
                    });
                }
            }
            ("admin-notifications", "ProviderHealthStatus") => {
                let provider = body.get("provider").and_then(Value::as_str).unwrap_or_default();
                let checked_at = body.get("checkedAt").and_then(Value::as_str).unwrap_or_default();
                out.push(Dispatch::ProviderHealth {
                    provider: provider.to_owned(),
                    status: body["status"].clone(),
                    message: body.get("message").cloned().unwrap_or(Value::Null),
                    checked_at: checked_at.to_owned(),
                });
            }
            ("admin-notifications", "VirtualKeyDeleted" | "VirtualKeyUpdated") => {
                if let Some(KeyRef(key)) = body.get("virtualKeyId").and_then(KeyRef::from_value) {
                    match (parsed.name, body.get("isEnabled").and_then(Value::as_bool)) {
                        ("VirtualKeyDeleted", _) | (_, Some(false)) => out.push(Dispatch::Revoke(key)),
                        (_, Some(true)) => out.push(Dispatch::Restore(key)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        if deliver_main {
            out.extend(self.deliveries(hub, audience, &parsed));
        }
        out
    }

    /// The delivery of one event, plus its `VirtualKeyActivity` mirror for admins following the key.
    fn deliveries(&self, hub: &'static str, audience: &Audience, parsed: &Parsed) -> Vec<Dispatch> {
        let (scope, default_group) = match audience {
            Audience::VirtualKey(key) => (Scope::Tenant(key.clone()), format!("vkey-{key}")),
            Audience::All => (Scope::Everyone, "all".to_owned()),
            Audience::Admin => (Scope::Admin, "admin".to_owned()),
        };
        let filter = (hub == "notifications").then(|| EventFilter {
            event: notifications::EVENT_NAMES.iter().position(|n| *n == parsed.name).unwrap_or(0) as u8,
            severity: parsed.severity,
        });
        let mut out = vec![Dispatch::Deliver(Delivery {
            hub,
            scope,
            groups: parsed.groups.clone().unwrap_or_else(|| vec![default_group]),
            filter,
            published_ms: None,
            message: Arc::new(EncodedMessage::new(HubMessage::event(parsed.name, parsed.arguments.clone()))),
        })];
        if let Audience::VirtualKey(key) = audience {
            out.push(Dispatch::Deliver(Delivery {
                hub: "admin-notifications",
                scope: Scope::Admin,
                groups: vec![format!("admin-vkey-{key}")],
                filter: None,
                published_ms: None,
                message: Arc::new(EncodedMessage::new(HubMessage::event(
                    "VirtualKeyActivity",
                    vec![
                        json!(key.as_str()),
                        json!(hub),
                        json!(parsed.name),
                        Value::Array(parsed.arguments.clone()),
                    ],
                ))),
            }));
        }
        out
    }

    /// Takes note of an alert another router sent, so the cooldown holds here too.
    pub fn record_alert(&self, key: &KeyId, alert_type: &str, at: SystemTime) {
        self.budget.allow_published(key, alert_type, at);
    }

    /// Drops expired cooldowns; called periodically.
    pub fn prune(&self) {
        self.budget.prune(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(&Config::default())
    }

    fn delivered(dispatches: &[Dispatch]) -> Vec<(&'static str, Scope, Vec<String>, &HubMessage)> {
        dispatches
            .iter()
            .filter_map(|d| match d {
                Dispatch::Deliver(d) => {
                    Some((d.hub, d.scope.clone(), d.groups.clone(), d.message.message().unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    fn tenant(id: &str) -> Scope {
        Scope::Tenant(KeyId::parse(id).unwrap())
    }

    #[test]
    fn task_events_go_to_their_key_and_are_mirrored_for_admins() {
        let body = json!({"taskId": "abc", "taskType": "video"});
        let dispatches = router().route("tasks", "vkey.7.TaskTimedOut", None, &body).unwrap();
        let delivered = delivered(&dispatches);
        assert_eq!(delivered[0].1, tenant("7"));
        assert_eq!(delivered[0].2, vec!["task-abc", "task-type/video"]);
        assert_eq!(delivered[0].3, &HubMessage::event("TaskTimedOut", vec![json!("abc")]));
        assert_eq!(delivered[1].0, "admin-notifications");
        assert_eq!(delivered[1].2, vec!["admin-vkey-7"]);
        assert_eq!(
            delivered[1].3,
            &HubMessage::event(
                "VirtualKeyActivity",
                vec![json!("7"), json!("tasks"), json!("TaskTimedOut"), json!(["abc"])]
            )
        );
    }

    #[test]
    fn refuses_unknown_hub_wrong_audience_and_unknown_event() {
        let router = router();
        let body = json!({"taskId": "abc", "taskType": "video"});
        assert_eq!(
            router.route("nope", "vkey.7.TaskTimedOut", None, &body).unwrap_err(),
            EventError::UnknownHub("nope".into())
        );
        assert!(matches!(
            router.route("tasks", "all.TaskTimedOut", None, &body),
            Err(EventError::AudienceNotAccepted { .. })
        ));
        assert!(matches!(
            router.route("admin-notifications", "vkey.7.SystemAlert", None, &body),
            Err(EventError::AudienceNotAccepted { .. })
        ));
        assert!(matches!(
            router.route("tasks", "vkey.7.SpendUpdate", None, &body),
            Err(EventError::UnknownEvent { .. })
        ));
    }

    #[test]
    fn a_repeated_message_id_is_delivered_once() {
        let router = router();
        let body = json!({"taskId": "abc", "taskType": "video"});
        assert!(!router.route("tasks", "vkey.7.TaskTimedOut", Some("m1"), &body).unwrap().is_empty());
        assert!(router.route("tasks", "vkey.7.TaskTimedOut", Some("m1"), &body).unwrap().is_empty());
    }

    #[test]
    fn a_spend_update_crossing_a_threshold_also_sends_the_alert() {
        let router = router();
        let body = json!({"amount": 1.0, "totalSpend": 78.5, "budget": 100.0, "budgetUtilization": 0.785});
        let dispatches = router.route("spend", "vkey.7.SpendUpdate", None, &body).unwrap();
        let alert = delivered(&dispatches)
            .into_iter()
            .find_map(|(hub, _, _, m)| match m {
                HubMessage::Invocation(i) if hub == "spend" && i.target == "BudgetAlert" => {
                    Some(i.arguments.clone())
                }
                _ => None,
            })
            .expect("an alert");
        assert_eq!(alert[0], json!("budget_75_percent"));
        assert_eq!(alert[1]["threshold"], json!(0.75));
        assert_eq!(alert[1]["percentageUsed"], json!(78.5));
        assert_eq!(alert[1]["currentSpend"], json!(78.5));
        let again = router.route("spend", "vkey.7.SpendUpdate", None, &body).unwrap();
        assert_eq!(delivered(&again).len(), 2, "the update and its mirror, no second alert");
    }

    #[test]
    fn deleting_or_disabling_a_key_revokes_it_and_enabling_restores() {
        let router = router();
        let revoke = router
            .route("admin-notifications", "admin.VirtualKeyDeleted", None, &json!({"virtualKeyId": 7}))
            .unwrap();
        assert!(matches!(&revoke[0], Dispatch::Revoke(key) if key.as_str() == "7"));
        let disable = router
            .route(
                "admin-notifications",
                "admin.VirtualKeyUpdated",
                None,
                &json!({"virtualKeyId": "7", "isEnabled": false}),
            )
            .unwrap();
        assert!(matches!(&disable[0], Dispatch::Revoke(_)));
        let enable = router
            .route(
                "admin-notifications",
                "admin.VirtualKeyUpdated",
                None,
                &json!({"virtualKeyId": 7, "isEnabled": true}),
            )
            .unwrap();
        assert!(matches!(&enable[0], Dispatch::Restore(_)));
    }
}

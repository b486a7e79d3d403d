//! The router's one job: turn (hub, routing key, body) into a delivery: which groups of which scope get
//! which encoded message. It is a pure function so that every bus routes exactly alike.

use std::sync::Arc;

use serde_json::Value;

use crate::edge::groups::Scope;
use crate::edge::Delivery;
use crate::events::{parse_routing_key, tasks, Audience, EventError};
use crate::protocol::{EncodedMessage, HubMessage};

/// Validates an event and maps it to its delivery.
pub fn route(hub: &str, routing_key: &str, body: &Value) -> Result<Delivery, EventError> {
    let (audience, event) = parse_routing_key(routing_key)?;
    match hub {
        "tasks" => {
            let Audience::VirtualKey(key) = audience else {
                return Err(EventError::AudienceNotAccepted {
                    hub: "tasks",
                    audience: audience_name(routing_key),
                });
            };
            let event = tasks::parse(event, body)?;
            Ok(Delivery {
                hub: "tasks",
                scope: Scope::Tenant(key),
                groups: event.groups,
                message: Arc::new(EncodedMessage::new(HubMessage::event(event.target, event.arguments))),
            })
        }
        other => Err(EventError::UnknownHub(other.to_owned())),
    }
}

fn audience_name(routing_key: &str) -> String {
    routing_key.rsplit_once('.').map_or(routing_key, |(audience, _)| audience).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyId;
    use serde_json::json;

    #[test]
    fn task_events_go_to_their_key_only() {
        let delivery =
            route("tasks", "vkey.7.TaskTimedOut", &json!({"taskId": "abc", "taskType": "video"})).unwrap();
        assert_eq!(delivery.scope, Scope::Tenant(KeyId::parse("7").unwrap()));
        assert_eq!(delivery.groups, vec!["task-abc", "task-type-video"]);
        assert_eq!(delivery.message.message(), &HubMessage::event("TaskTimedOut", vec![json!("abc")]));
    }

    #[test]
    fn refuses_wrong_hub_audience_and_event() {
        let body = json!({"taskId": "abc", "taskType": "video"});
        assert_eq!(
            route("nope", "vkey.7.TaskTimedOut", &body).unwrap_err(),
            EventError::UnknownHub("nope".into())
        );
        assert!(matches!(
            route("tasks", "all.TaskTimedOut", &body),
            Err(EventError::AudienceNotAccepted { .. })
        ));
        assert!(matches!(route("tasks", "vkey.7.SpendUpdate", &body), Err(EventError::UnknownEvent { .. })));
    }
}

//! Typed event bodies and routing keys (contract sections 3 and 4), shared by every bus.
//!
//! Producers name an event and its audience in the routing key `<audience>.<EventName>` and put the event's
//! fields in a JSON body. Parsing the body into the event's Rust type is the validation: a body that does
//! not parse, or whose identifying fields break the id rules, is refused with the reason.

pub mod tasks;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::KeyId;

/// Who a message is for, from the first part of its routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// `vkey.<id>`: one tenant.
    VirtualKey(KeyId),
    /// `all`: every connection of the hub.
    All,
    /// `admin`: the admin hub.
    Admin,
}

/// Why an event cannot be delivered; the text goes back to the producer (400 or `x-hubcast-error`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("unknown hub '{0}'")]
    UnknownHub(String),
    #[error("routing key '{0}' is not <audience>.<EventName> with audience vkey.<id>, all or admin")]
    BadRoutingKey(String),
    #[error("the {hub} hub does not take audience '{audience}'")]
    AudienceNotAccepted { hub: &'static str, audience: String },
    #[error("the {hub} hub has no event '{event}'")]
    UnknownEvent { hub: &'static str, event: String },
    #[error("invalid {event} body: {reason}")]
    InvalidBody { event: String, reason: String },
}

/// Splits a routing key into its audience and event name.
pub fn parse_routing_key(routing_key: &str) -> Result<(Audience, &str), EventError> {
    let bad = || EventError::BadRoutingKey(routing_key.to_owned());
    let (audience, event) = match routing_key.split_once('.').ok_or_else(bad)? {
        ("all", event) => (Audience::All, event),
        ("admin", event) => (Audience::Admin, event),
        ("vkey", rest) => {
            let (id, event) = rest.split_once('.').ok_or_else(bad)?;
            (Audience::VirtualKey(KeyId::parse(id).ok_or_else(bad)?), event)
        }
        _ => return Err(bad()),
    };
    let valid_event = !event.is_empty() && event.bytes().all(|b| b.is_ascii_alphanumeric());
    if valid_event {
        Ok((audience, event))
    } else {
        Err(bad())
    }
}

/// Parses a body into an event type, with the reason on failure.
pub fn parse_body<T: DeserializeOwned>(event: &str, body: &Value) -> Result<T, EventError> {
    T::deserialize(body).map_err(|e| invalid(event, e.to_string()))
}

pub fn invalid(event: &str, reason: impl Into<String>) -> EventError {
    EventError::InvalidBody { event: event.to_owned(), reason: reason.into() }
}

/// Checks an identifying field against the id rule of the contract.
pub fn check_id(event: &str, field: &str, id: &str) -> Result<(), EventError> {
    if crate::hubs::valid_id(id) {
        Ok(())
    } else {
        Err(invalid(event, format!("{field} must be 1 to 128 characters of [A-Za-z0-9_:-]")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_name_audience_and_event() {
        let (audience, event) = parse_routing_key("vkey.42.TaskProgress").unwrap();
        assert_eq!(audience, Audience::VirtualKey(KeyId::parse("42").unwrap()));
        assert_eq!(event, "TaskProgress");
        assert_eq!(parse_routing_key("all.SystemAnnouncement").unwrap().0, Audience::All);
        assert_eq!(parse_routing_key("admin.ProviderHealthStatus").unwrap().0, Audience::Admin);
        for bad in [
            "",
            "vkey.TaskProgress",
            "vkey.a/b.TaskProgress",
            "tenant.1.X",
            "all.",
            "all.Bad.Event",
            "vkey.1.Task-X",
        ] {
            assert!(parse_routing_key(bad).is_err(), "{bad}");
        }
    }
}

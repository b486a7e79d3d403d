//! Typed event bodies and routing keys (contract sections 3 and 4), shared by every bus.
//!
//! Producers name an event and its audience in the routing key `<audience>.<EventName>` and put the event's
//! fields in a JSON body. Parsing the body into the event's Rust type is the validation, and the same types
//! generate the JSON Schemas in `schemas/`. Arguments are taken from the validated body, so fields beyond
//! the schema's travel on unchanged inside `data` arguments.

pub mod admin;
pub mod media;
pub mod notifications;
pub mod spend;
pub mod tasks;
pub mod types;
pub mod webhooks;

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::auth::KeyId;
use types::Severity;

/// Hub names of the contract, in its order.
pub const HUBS: [&str; 7] = [
    "tasks",
    "video-generation",
    "image-generation",
    "notifications",
    "spend",
    "webhooks",
    "admin-notifications",
];

/// The hub name as a `'static` string, if it is one of ours.
pub fn hub_name(hub: &str) -> Option<&'static str> {
    HUBS.into_iter().find(|name| *name == hub)
}

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

/// Whether a hub takes events for an audience: tenant hubs take `vkey`, notifications also `all`, the
/// admin hub only `admin`.
pub fn accepts(hub: &str, audience: &Audience) -> bool {
    match audience {
        Audience::VirtualKey(_) => hub != "admin-notifications",
        Audience::All => hub == "notifications",
        Audience::Admin => hub == "admin-notifications",
    }
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
    /// The body is over `bus.max_event_bytes`; the publish API answers 413.
    #[error("event body of {bytes} bytes is over the limit of bus.max_event_bytes ({limit})")]
    TooLarge { bytes: usize, limit: usize },
    /// The message id cannot travel as an AMQP `message_id` (a short string).
    #[error("message id of {0} bytes is over the limit of {MAX_MESSAGE_ID_BYTES}")]
    MessageIdTooLong(usize),
}

/// The longest message id: AMQP carries it as a short string, at most 255 bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 255;

/// What every ingress (the publish API, `hubcast publish` and the router's AMQP consumer) checks before
/// reading the event: the body's size against `bus.max_event_bytes`, and the message id. One function, so
/// the three cannot drift apart. `body_bytes` is the body as it travels on the bus: the message body on
/// AMQP, the compact JSON of the payload ([`encoded_len`]) elsewhere.
pub fn check_envelope(body_bytes: usize, message_id: Option<&str>, limit: usize) -> Result<(), EventError> {
    if body_bytes > limit {
        return Err(EventError::TooLarge { bytes: body_bytes, limit });
    }
    match message_id {
        Some(id) if id.len() > MAX_MESSAGE_ID_BYTES => Err(EventError::MessageIdTooLong(id.len())),
        _ => Ok(()),
    }
}

/// The size of a body as compact JSON, as it goes on the bus; counted without building the text.
pub fn encoded_len(body: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, body);
    count.0
}

/// Validates one event as it enters the system, wherever it comes from: [`check_envelope`] on its compact
/// JSON size, then [`validate`].
pub fn validate_incoming(
    hub: &str,
    routing_key: &str,
    message_id: Option<&str>,
    body: &Value,
    max_event_bytes: usize,
) -> Result<(&'static str, Audience, Parsed), EventError> {
    check_envelope(encoded_len(body), message_id, max_event_bytes)?;
    validate(hub, routing_key, body)
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

/// How a body becomes the SignalR arguments (contract section 3).
pub enum Args {
    /// `(a, b?, ...)`: these fields in order, `null` when absent.
    Fields(&'static [&'static str]),
    /// `(data)`: the whole body as one object.
    Body,
    /// `(x, data)`: field `x`, then the body without it.
    FieldThenRest(&'static str),
}

/// One event type of the contract.
pub trait Event: DeserializeOwned + JsonSchema {
    const NAME: &'static str;
    const ARGS: Args;

    /// Group names (within the event's scope) it goes to; `None` for the audience's own group.
    fn groups(&self) -> Option<Vec<String>> {
        None
    }

    /// For notification preferences: how serious the event is.
    fn severity(&self) -> Severity {
        Severity::Info
    }
}

/// A validated event, ready to route.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub name: &'static str,
    pub arguments: Vec<Value>,
    pub groups: Option<Vec<String>>,
    pub severity: Severity,
}

/// An entry of the event registry: how to parse one event, and its schema.
pub struct EventKind {
    pub hub: &'static str,
    pub name: &'static str,
    parse: fn(&Value) -> Result<Parsed, EventError>,
    schema: fn() -> schemars::Schema,
}

impl EventKind {
    fn of<E: Event>(hub: &'static str) -> Self {
        Self { hub, name: E::NAME, parse: parse_as::<E>, schema: || schemars::schema_for!(E) }
    }

    pub fn parse(&self, body: &Value) -> Result<Parsed, EventError> {
        (self.parse)(body)
    }

    /// The event's JSON Schema, titled and identified by hub and event.
    pub fn schema(&self) -> Value {
        let mut schema = (self.schema)().to_value();
        if let Some(object) = schema.as_object_mut() {
            object.insert("$id".into(), format!("urn:hubcast:event:{}.{}", self.hub, self.name).into());
            object.insert("title".into(), format!("{} ({} hub)", self.name, self.hub).into());
            // Every schema states its required fields, even when there are none.
            object.entry("required").or_insert_with(|| Value::Array(Vec::new()));
        }
        schema
    }

    /// The file name of the schema in `schemas/`.
    pub fn schema_file(&self) -> String {
        format!("{}.{}.schema.json", self.hub, self.name)
    }
}

/// Every event of every hub.
pub static EVENTS: LazyLock<Vec<EventKind>> = LazyLock::new(|| {
    let mut events = Vec::new();
    events.extend(tasks::kinds());
    events.extend(media::kinds());
    events.extend(notifications::kinds());
    events.extend(spend::kinds());
    events.extend(webhooks::kinds());
    events.extend(admin::kinds());
    events
});

/// Events the server sends on its own, besides those producers publish: metric labels may name them.
pub const SERVER_EVENTS: [(&str, &str); 4] = [
    ("notifications", "PreferencesUpdated"),
    ("admin-notifications", "InitialProviderHealth"),
    ("admin-notifications", "VirtualKeyActivity"),
    ("admin-notifications", "Error"),
];

/// The event's name as a `'static` string, if the hub has such an event (published or sent by the
/// server). Unknown names yield `None`, so nothing a producer writes can become a metric label.
pub fn known_event(hub: &str, event: &str) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|kind| kind.hub == hub && kind.name == event)
        .map(|kind| kind.name)
        .or_else(|| SERVER_EVENTS.into_iter().find(|(h, e)| *h == hub && *e == event).map(|(_, e)| e))
}

/// Looks up an event of a hub.
pub fn find(hub: &'static str, event: &str) -> Result<&'static EventKind, EventError> {
    EVENTS
        .iter()
        .find(|kind| kind.hub == hub && kind.name == event)
        .ok_or_else(|| EventError::UnknownEvent { hub, event: event.to_owned() })
}

/// Validates one event as every bus does: known hub, well-formed routing key, an audience the hub takes,
/// a known event, and a body of the event's type.
pub fn validate(
    hub: &str,
    routing_key: &str,
    body: &Value,
) -> Result<(&'static str, Audience, Parsed), EventError> {
    let hub = hub_name(hub).ok_or_else(|| EventError::UnknownHub(hub.to_owned()))?;
    let (audience, event) = parse_routing_key(routing_key)?;
    if !accepts(hub, &audience) {
        let name = routing_key.rsplit_once('.').map_or(routing_key, |(audience, _)| audience);
        return Err(EventError::AudienceNotAccepted { hub, audience: name.to_owned() });
    }
    let parsed = find(hub, event)?.parse(body)?;
    Ok((hub, audience, parsed))
}

fn parse_as<E: Event>(body: &Value) -> Result<Parsed, EventError> {
    // serde would also read a struct from an array; events are objects only.
    let Value::Object(object) = body else {
        return Err(invalid(E::NAME, "the body must be a JSON object"));
    };
    // The path names the offending field: "percentComplete: 150 is not an integer from 0 to 100".
    let event: E = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        invalid(E::NAME, if path == "." { reason } else { format!("{path}: {reason}") })
    })?;
    let arguments = match E::ARGS {
        Args::Fields(fields) => {
            fields.iter().map(|f| object.get(*f).cloned().unwrap_or(Value::Null)).collect()
        }
        Args::Body => vec![body.clone()],
        Args::FieldThenRest(field) => {
            let rest: Map<String, Value> =
                object.iter().filter(|(k, _)| *k != field).map(|(k, v)| (k.clone(), v.clone())).collect();
            vec![object.get(field).cloned().unwrap_or(Value::Null), Value::Object(rest)]
        }
    };
    Ok(Parsed { name: E::NAME, arguments, groups: event.groups(), severity: event.severity() })
}

pub fn invalid(event: &str, reason: impl Into<String>) -> EventError {
    EventError::InvalidBody { event: event.to_owned(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

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

    #[test]
    fn the_envelope_check_is_the_size_limit_and_the_message_id_length() {
        assert_eq!(
            check_envelope(1_153_433, None, 262_144).unwrap_err().to_string(),
            "event body of 1153433 bytes is over the limit of bus.max_event_bytes (262144)"
        );
        assert_eq!(check_envelope(262_144, None, 262_144), Ok(()));
        assert_eq!(check_envelope(usize::MAX, None, usize::MAX), Ok(()));
        assert_eq!(check_envelope(10, Some(&"m".repeat(255)), 262_144), Ok(()));
        assert_eq!(
            check_envelope(10, Some(&"m".repeat(256)), 262_144),
            Err(EventError::MessageIdTooLong(256))
        );

        let body = json!({"taskId": "t", "taskType": "v", "percentComplete": 1, "message": "é\"\n"});
        assert_eq!(encoded_len(&body), serde_json::to_vec(&body).unwrap().len());
        let limit = encoded_len(&body);
        assert!(validate_incoming("tasks", "vkey.1.TaskProgress", None, &body, limit).is_ok());
        assert_eq!(
            validate_incoming("tasks", "vkey.1.TaskProgress", None, &body, limit - 1).unwrap_err(),
            EventError::TooLarge { bytes: limit, limit: limit - 1 }
        );
        // The size is checked first: an oversized body is not parsed.
        assert!(matches!(
            validate_incoming("nohub", "nonsense", None, &body, 1),
            Err(EventError::TooLarge { .. })
        ));
    }

    #[test]
    fn known_events_are_the_hubs_own() {
        assert_eq!(known_event("tasks", "TaskProgress"), Some("TaskProgress"));
        assert_eq!(known_event("spend", "BudgetAlert"), Some("BudgetAlert"));
        assert_eq!(known_event("admin-notifications", "VirtualKeyActivity"), Some("VirtualKeyActivity"));
        assert_eq!(known_event("tasks", "VirtualKeyActivity"), None);
        assert_eq!(known_event("tasks", "SpendUpdate"), None);
        assert_eq!(known_event("nohub", "TaskProgress"), None);
    }

    #[test]
    fn every_contract_event_is_registered_once() {
        assert_eq!(EVENTS.len(), 36);
        for kind in EVENTS.iter() {
            assert_eq!(EVENTS.iter().filter(|k| k.hub == kind.hub && k.name == kind.name).count(), 1);
        }
    }

    /// The committed schemas are exactly what the types generate; `UPDATE_SCHEMAS=1 cargo test` rewrites
    /// them. Every example parses with the same types the router uses.
    #[test]
    fn committed_schemas_match_the_types_and_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        for kind in EVENTS.iter() {
            let path = dir.join(kind.schema_file());
            let generated = serde_json::to_string_pretty(&kind.schema()).unwrap() + "\n";
            if update {
                std::fs::write(&path, &generated).unwrap();
            }
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{} is missing: run UPDATE_SCHEMAS=1 cargo test", path.display()));
            assert_eq!(committed, generated, "{} is stale: run UPDATE_SCHEMAS=1 cargo test", path.display());
            assert!(kind.schema()["required"].is_array(), "{} lists no required fields", kind.name);

            let example_path = dir.join("examples").join(format!("{}.{}.json", kind.hub, kind.name));
            let example: Value = serde_json::from_str(
                &std::fs::read_to_string(&example_path)
                    .unwrap_or_else(|_| panic!("{} is missing", example_path.display())),
            )
            .unwrap();
            kind.parse(&example).unwrap_or_else(|e| panic!("{}: {e}", example_path.display()));
        }
    }
}

//! Field types shared by event bodies. Each validates while deserializing and describes itself in the
//! JSON Schemas, so a rule is written once and holds for the router, the publish API and the schemas.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};

use crate::auth::KeyId;

/// Implements `JsonSchema` inline from a JSON literal.
macro_rules! inline_schema {
    ($type:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $type {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// The contract's id rule for task ids, task types, request ids and provider names: 1 to 128 characters
/// of `[A-Za-z0-9_:-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
}

/// A task id, task type, request id or provider name: 1 to 128 characters of `[A-Za-z0-9_:-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = String::deserialize(deserializer)?;
        if valid_id(&id) {
            Ok(Id(id))
        } else {
            Err(serde::de::Error::custom(format!("'{id}' is not 1 to 128 characters of [A-Za-z0-9_:-]")))
        }
    }
}
inline_schema!(Id, "Id", {"type": "string", "pattern": "^[A-Za-z0-9_:-]{1,128}$"});

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A virtual key id as producers and admin clients send it: a JSON number (`42`) or string (`"42"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef(pub KeyId);

impl KeyRef {
    /// A string id, or a non-negative integer (as the schema says): the same rule as a token's `sub`.
    pub fn from_value(value: &serde_json::Value) -> Option<Self> {
        KeyId::from_json(value).map(KeyRef)
    }
}

impl<'de> Deserialize<'de> for KeyRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        KeyRef::from_value(&value).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{value} is not a virtual key id (a number, or 1 to 64 characters of [A-Za-z0-9_-])"
            ))
        })
    }
}
inline_schema!(KeyRef, "VirtualKeyId", {
    "oneOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
    ]
});

/// An integer percentage, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        value
            .as_u64()
            .filter(|p| *p <= 100)
            .map(|p| Percent(p as u8))
            .ok_or_else(|| serde::de::Error::custom(format!("{value} is not an integer from 0 to 100")))
    }
}
inline_schema!(Percent, "Percent", {"type": "integer", "minimum": 0, "maximum": 100});

/// A number that cannot be negative, such as a budget utilization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonNegative(pub f64);

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if value >= 0.0 {
            Ok(NonNegative(value))
        } else {
            Err(serde::de::Error::custom(format!("{value} is negative")))
        }
    }
}
inline_schema!(NonNegative, "NonNegative", {"type": "number", "minimum": 0});

/// An RFC 3339 UTC timestamp string, such as `2026-11-25T12:00:00Z`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp(pub String);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match humantime::parse_rfc3339(&text) {
            Ok(_) => Ok(Timestamp(text)),
            Err(_) => Err(serde::de::Error::custom(format!("'{text}' is not an RFC 3339 UTC timestamp"))),
        }
    }
}
inline_schema!(Timestamp, "Timestamp", {"type": "string", "format": "date-time"});

/// How serious an event is; ordered, so preferences can say "warning and above".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, JsonSchema, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

/// Fields beyond the schema's: accepted and forwarded unchanged inside `data` arguments.
pub type Extra = serde_json::Map<String, serde_json::Value>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn newtypes_validate_while_parsing() {
        assert!(serde_json::from_value::<Id>(json!("task:1_a-b")).is_ok());
        assert!(serde_json::from_value::<Id>(json!("a b")).is_err());
        assert!(serde_json::from_value::<Percent>(json!(100)).is_ok());
        assert!(serde_json::from_value::<Percent>(json!(101)).is_err());
        assert!(serde_json::from_value::<Percent>(json!(5.5)).is_err());
        assert!(serde_json::from_value::<Timestamp>(json!("2026-11-25T12:00:00Z")).is_ok());
        assert!(serde_json::from_value::<Timestamp>(json!("2026-11-25T12:00:00.123Z")).is_ok());
        assert!(serde_json::from_value::<Timestamp>(json!("yesterday")).is_err());
        assert_eq!(serde_json::from_value::<KeyRef>(json!(42)).unwrap().0.as_str(), "42");
        assert_eq!(serde_json::from_value::<KeyRef>(json!("42")).unwrap().0.as_str(), "42");
        assert!(serde_json::from_value::<KeyRef>(json!("4/2")).is_err());
        assert!(serde_json::from_value::<KeyRef>(json!(4.2)).is_err());
        // The schema's `minimum: 0`, as for a token's numeric `sub`.
        assert!(serde_json::from_value::<KeyRef>(json!(-42)).is_err());
        assert_eq!(
            serde_json::from_value::<KeyRef>(json!(u64::MAX)).unwrap().0.as_str(),
            "18446744073709551615"
        );
        assert!(Severity::Info < Severity::Critical);
    }
}

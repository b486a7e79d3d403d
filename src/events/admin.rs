//! AdminNotificationHub events (`admin.<Event>`): to every admin, and to the admins following the
//! provider or virtual key concerned.

use schemars::JsonSchema;
use serde::Deserialize;

use super::types::{HealthStatus, Id, KeyRef, Severity, Timestamp};
use super::{Args, Event, EventKind};

/// A provider's health, as checked.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderHealthStatus {
    pub provider: Id,
    pub status: HealthStatus,
    pub message: Option<String>,
    pub checked_at: Timestamp,
}

/// A virtual key was created.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualKeyCreated {
    pub virtual_key_id: KeyRef,
    pub key_name: Option<String>,
    pub is_enabled: Option<bool>,
}

/// A virtual key changed; `isEnabled: false` revokes it, `true` lifts the revocation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualKeyUpdated {
    pub virtual_key_id: KeyRef,
    pub key_name: Option<String>,
    pub is_enabled: Option<bool>,
}

/// A virtual key was deleted: its connections are closed and new ones refused.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualKeyDeleted {
    pub virtual_key_id: KeyRef,
}

/// An alert for every administrator.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemAlert {
    pub severity: Severity,
    pub title: String,
    pub message: String,
}

impl Event for ProviderHealthStatus {
    const NAME: &'static str = "ProviderHealthStatus";
    const ARGS: Args = Args::Fields(&["provider", "status", "message", "checkedAt"]);
    fn groups(&self) -> Option<Vec<String>> {
        Some(vec!["admin".into(), format!("admin-provider-{}", self.provider)])
    }
}

macro_rules! key_event {
    ($type:ty, $name:literal, $args:expr) => {
        impl Event for $type {
            const NAME: &'static str = $name;
            const ARGS: Args = $args;
            fn groups(&self) -> Option<Vec<String>> {
                Some(vec!["admin".into(), format!("admin-vkey-{}", self.virtual_key_id.0)])
            }
        }
    };
}

key_event!(VirtualKeyCreated, "VirtualKeyCreated", Args::Body);
key_event!(VirtualKeyUpdated, "VirtualKeyUpdated", Args::Body);
key_event!(VirtualKeyDeleted, "VirtualKeyDeleted", Args::Fields(&["virtualKeyId"]));

impl Event for SystemAlert {
    const NAME: &'static str = "SystemAlert";
    const ARGS: Args = Args::Body;
    fn groups(&self) -> Option<Vec<String>> {
        Some(vec!["admin".into()])
    }
}

pub fn kinds() -> Vec<EventKind> {
    const HUB: &str = "admin-notifications";
    vec![
        EventKind::of::<ProviderHealthStatus>(HUB),
        EventKind::of::<VirtualKeyCreated>(HUB),
        EventKind::of::<VirtualKeyUpdated>(HUB),
        EventKind::of::<VirtualKeyDeleted>(HUB),
        EventKind::of::<SystemAlert>(HUB),
    ]
}

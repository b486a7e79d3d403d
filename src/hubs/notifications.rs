//! SystemNotificationHub (`/hubs/notifications`): system-wide and per-key notifications, filtered per
//! connection by the preferences it sets with `UpdatePreferences`.

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::{Arguments, Audience, Caller, Hub, HubError, HubResult};
use crate::delivery::Scope;
use crate::events::notifications::EVENT_NAMES;
use crate::events::types::Severity;

pub struct NotificationsHub;

impl Hub for NotificationsHub {
    fn name(&self) -> &'static str {
        "notifications"
    }

    fn audience(&self) -> Audience {
        Audience::VirtualKey
    }

    fn methods(&self) -> &'static [&'static str] {
        &["UpdatePreferences"]
    }

    fn scopes(&self, own: &Scope) -> Vec<Scope> {
        vec![own.clone(), Scope::Everyone]
    }

    /// Besides its key's group, every connection hears `all.` notifications.
    fn on_connected(&self, caller: &mut Caller) -> Result<(), HubError> {
        if let Some(key) = caller.key_id().map(|key| format!("vkey-{key}")) {
            caller.join(&key)?;
        }
        caller.join_everyone("all")
    }

    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult> {
        Box::pin(async move {
            if method != "UpdatePreferences" {
                return Err(HubError::MethodNotFound);
            }
            let (preferences,): (Value,) = args.bind()?;
            let (enabled, minimum) =
                parse_preferences(&preferences).ok_or_else(|| HubError::refused("Invalid preferences"))?;
            let mask = match &enabled {
                None => u16::MAX,
                Some(names) => names
                    .iter()
                    .filter_map(|name| EVENT_NAMES.iter().position(|known| known == name))
                    .fold(0, |mask, index| mask | (1 << index)),
            };
            caller.set_preferences(mask, minimum);
            let effective = json!({ "enabledEvents": enabled, "minimumSeverity": minimum.as_str() });
            caller.send("PreferencesUpdated", vec![effective.clone()]);
            Ok(Some(effective))
        })
    }
}

/// `{enabledEvents: [name] | null, minimumSeverity}`; absent fields keep their defaults (every event,
/// `info`). Unknown event names are refused rather than silently matching nothing.
fn parse_preferences(value: &Value) -> Option<(Option<Vec<String>>, Severity)> {
    let object = value.as_object()?;
    let enabled = match object.get("enabledEvents") {
        None | Some(Value::Null) => None,
        Some(Value::Array(names)) => Some(
            names
                .iter()
                .map(|name| name.as_str().filter(|n| EVENT_NAMES.contains(n)).map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
        ),
        Some(_) => return None,
    };
    let minimum = match object.get("minimumSeverity") {
        None | Some(Value::Null) => Severity::Info,
        Some(value) => serde_json::from_value(value.clone()).ok()?,
    };
    Some((enabled, minimum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_parse_with_defaults_and_refuse_nonsense() {
        assert_eq!(parse_preferences(&json!({})), Some((None, Severity::Info)));
        assert_eq!(
            parse_preferences(&json!({"enabledEvents": ["ServiceDegraded"], "minimumSeverity": "error"})),
            Some((Some(vec!["ServiceDegraded".into()]), Severity::Error))
        );
        assert_eq!(parse_preferences(&json!({"enabledEvents": ["Nope"]})), None);
        assert_eq!(parse_preferences(&json!({"minimumSeverity": "loud"})), None);
        assert_eq!(parse_preferences(&json!("info")), None);
    }
}

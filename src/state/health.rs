//! The latest `ProviderHealthStatus` of every provider ever reported, for `InitialProviderHealth` and
//! `RefreshProviderHealth`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

#[derive(Default)]
pub struct ProviderHealth {
    latest: Mutex<BTreeMap<String, Value>>,
}

impl ProviderHealth {
    /// Records a report, unless an equally recent or newer one is already known: reports can arrive out of
    /// order across router replicas, and `checkedAt` says which is current.
    pub fn update(&self, provider: &str, status: &Value, message: &Value, checked_at: &str) {
        let record = serde_json::json!({
            "provider": provider,
            "status": status,
            "message": message,
            "checkedAt": checked_at,
        });
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let newer = latest.get(provider).and_then(|known| known["checkedAt"].as_str()).is_none_or(|known| {
            match (humantime::parse_rfc3339_weak(known), humantime::parse_rfc3339_weak(checked_at)) {
                (Ok(known), Ok(new)) => new >= known,
                _ => true,
            }
        });
        if newer {
            latest.insert(provider.to_owned(), record);
        }
    }

    /// `[{provider, status, message, checkedAt}]`, ordered by provider.
    pub fn list(&self) -> Value {
        Value::Array(self.latest.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_latest_report_per_provider() {
        let health = ProviderHealth::default();
        health.update("openai", &json!("healthy"), &Value::Null, "2026-11-25T10:00:00Z");
        health.update("anthropic", &json!("degraded"), &json!("slow"), "2026-11-25T10:00:00Z");
        health.update("openai", &json!("unhealthy"), &json!("down"), "2026-11-25T11:00:00Z");
        health.update("openai", &json!("healthy"), &Value::Null, "2026-11-25T09:00:00Z");
        assert_eq!(
            health.list(),
            json!([
                {"provider": "anthropic", "status": "degraded", "message": "slow", "checkedAt": "2026-11-25T10:00:00Z"},
                {"provider": "openai", "status": "unhealthy", "message": "down", "checkedAt": "2026-11-25T11:00:00Z"},
            ])
        );
    }
}

//! WebhookDeliveryHub events: `(url, data)`, to the subscribers of that exact URL within the key.
//!
//! The contract names the group `webhook-{sanitizedUrl}`, but sanitizing is lossy: `api.example.com/hook`
//! and `api-example.com/hook` sanitize alike. The group name therefore carries the exact URL after the
//! sanitized part, so two URLs never share a group while logs still show the readable form.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::types::Timestamp;
use super::{Args, Event, EventKind};

/// Longest URL accepted; far beyond real webhook URLs, short enough to bound group names.
const MAX_URL_LENGTH: usize = 2048;

/// Checks that a URL is absolute http(s) with a host. Returns it trimmed.
pub fn validate_url(url: &str) -> Option<&str> {
    let url = url.trim();
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    let valid = url.len() <= MAX_URL_LENGTH
        && !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']'))
        && !url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    valid.then_some(url)
}

/// Host and path lower-cased, every run of characters other than `[a-z0-9]` turned into `-`.
pub fn sanitize(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit('@').next().unwrap_or_default().split(':').next().unwrap_or_default();
    let mut sanitized = String::with_capacity(host.len() + path.len());
    for c in host.chars().chain(std::iter::once('/')).chain(path.chars()).flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            sanitized.push(c);
        } else if !sanitized.ends_with('-') {
            sanitized.push('-');
        }
    }
    sanitized.trim_matches('-').to_owned()
}

/// The group of one URL's subscribers.
pub fn group(url: &str) -> String {
    format!("webhook-{}~{url}", sanitize(url))
}

/// A webhook URL in an event body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(pub String);

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let url = String::deserialize(deserializer)?;
        match validate_url(&url) {
            Some(valid) => Ok(WebhookUrl(valid.to_owned())),
            None => Err(serde::de::Error::custom(format!("'{url}' is not an absolute http(s) URL"))),
        }
    }
}

impl JsonSchema for WebhookUrl {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WebhookUrl".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "uri", "pattern": "^https?://", "maxLength": MAX_URL_LENGTH})
    }
}

/// A delivery to the URL is being attempted.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempted {
    pub url: WebhookUrl,
    pub attempt_number: Option<u32>,
    pub timestamp: Option<Timestamp>,
}

/// A delivery succeeded.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySucceeded {
    pub url: WebhookUrl,
    pub status_code: Option<u16>,
    pub response_time_ms: Option<f64>,
    pub timestamp: Option<Timestamp>,
}

/// A delivery failed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryFailed {
    pub url: WebhookUrl,
    pub error: Option<String>,
    pub status_code: Option<u16>,
    pub is_permanent: Option<bool>,
    pub timestamp: Option<Timestamp>,
}

/// Another delivery attempt is scheduled.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryScheduled {
    pub url: WebhookUrl,
    pub retry_at: Option<Timestamp>,
    pub attempt_number: Option<u32>,
}

macro_rules! webhook_event {
    ($type:ty, $name:literal) => {
        impl Event for $type {
            const NAME: &'static str = $name;
            const ARGS: Args = Args::FieldThenRest("url");
            fn groups(&self) -> Option<Vec<String>> {
                Some(vec![group(&self.url.0)])
            }
        }
    };
}

webhook_event!(DeliveryAttempted, "DeliveryAttempted");
webhook_event!(DeliverySucceeded, "DeliverySucceeded");
webhook_event!(DeliveryFailed, "DeliveryFailed");
webhook_event!(RetryScheduled, "RetryScheduled");

pub fn kinds() -> Vec<EventKind> {
    const HUB: &str = "webhooks";
    vec![
        EventKind::of::<DeliveryAttempted>(HUB),
        EventKind::of::<DeliverySucceeded>(HUB),
        EventKind::of::<DeliveryFailed>(HUB),
        EventKind::of::<RetryScheduled>(HUB),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_as_the_contract_shows() {
        assert_eq!(sanitize("https://api.example.com/hook"), "api-example-com-hook");
        assert_eq!(sanitize("https://user@API.Example.com:8443/Hooks/In?x=1"), "api-example-com-hooks-in");
    }

    #[test]
    fn urls_that_sanitize_alike_get_different_groups() {
        let (a, b) = ("https://api.example.com/hook", "https://api-example.com/hook");
        assert_eq!(sanitize(a), sanitize(b));
        assert_ne!(group(a), group(b));
        assert!(group(a).starts_with("webhook-api-example-com-hook"));
    }

    #[test]
    fn accepts_absolute_http_urls_only() {
        for good in ["https://a.example/x", "http://localhost:8080/hook?x=1", "https://[::1]/h"] {
            assert!(validate_url(good).is_some(), "{good}");
        }
        for bad in ["ftp://a/x", "https:///nohost", "/relative", "https://a b/x", "javascript:alert(1)", ""] {
            assert!(validate_url(bad).is_none(), "{bad}");
        }
    }
}

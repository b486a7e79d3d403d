//! Configuration: built-in defaults < `hubcast.toml` (or `--config FILE`) < `HUBCAST_*` environment
//! variables, with `__` between levels (`HUBCAST_AUTH__JWT_SECRET` sets `auth.jwt_secret`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every role listens on for hubs, health, metrics and the publish API.
    pub listen: String,
    pub auth: AuthConfig,
    pub bus: BusConfig,
    pub limits: LimitsConfig,
    pub signalr: SignalRConfig,
    pub spend: SpendConfig,
    pub webhooks: WebhooksConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
}

/// OpenTelemetry trace export; needs a build with `--features otel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP collector base URL, such as `http://otel-collector:4318`; unset means no export.
    #[serde(deserialize_with = "optional_string")]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    pub otlp_protocol: String,
    /// Fraction of new traces sampled; traces a producer started follow the producer's decision.
    pub sample_ratio: f64,
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: "http/protobuf".into(),
            sample_ratio: 1.0,
            service_name: "hubcast".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines (one JSON object per line).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpendConfig {
    /// Budget utilizations (fractions) that raise a `BudgetAlert` when a `SpendUpdate` crosses them.
    pub budget_thresholds: Vec<f64>,
    /// At most one alert per (virtual key, alert type) within this window.
    #[serde(with = "humantime_serde")]
    pub alert_cooldown: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The rolling window `RequestStatistics` answers over.
    #[serde(with = "humantime_serde")]
    pub statistics_window: Duration,
}

impl Default for SpendConfig {
    fn default() -> Self {
        Self { budget_thresholds: vec![0.5, 0.75, 0.9, 1.0], alert_cooldown: Duration::from_secs(3600) }
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self { statistics_window: Duration::from_secs(24 * 3600) }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for virtual-key and admin JWTs.
    #[serde(deserialize_with = "optional_string")]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA or EC) for RS256/ES256 tokens; used instead of the secret when set.
    pub jwt_public_key_file: Option<PathBuf>,
    #[serde(deserialize_with = "optional_string")]
    pub issuer: Option<String>,
    #[serde(deserialize_with = "optional_string")]
    pub audience: Option<String>,
    /// The master key itself, or `sha256:<hex>` of it, so the plain key need not sit in a config map.
    #[serde(deserialize_with = "optional_string")]
    pub master_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// RabbitMQ URL; without it `serve` runs on the embedded in-process bus.
    #[serde(deserialize_with = "optional_string")]
    pub amqp_url: Option<String>,
    pub exchange_prefix: String,
    /// `quorum` (default) or `classic` for the routers' hub queues.
    pub queue_type: String,
    /// Unacknowledged messages a router holds at once.
    pub prefetch: u16,
    /// Largest event body the router accepts; larger ones are dead-lettered.
    pub max_event_bytes: usize,
    /// Size the state stream is trimmed to.
    pub state_stream_max_bytes: u64,
    /// This edge's name in its queue name; defaults to a random id per process.
    #[serde(deserialize_with = "optional_string")]
    pub node_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub connections_per_key: u32,
    /// Largest inbound hub message, in bytes.
    pub max_message_size: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer.
    pub outbound_buffer_bytes: usize,
    /// A write to one client that takes longer than this closes it as a slow consumer.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    pub invocations_per_second: f64,
    pub invocation_burst: u32,
    /// Groups one connection may be in at once; joining one more is refused (`Too many subscriptions`).
    pub groups_per_connection: usize,
    /// A client must send a request's headers within this, counted from the connect or from the end of
    /// the previous response: so it is also how long a keep-alive connection may sit idle.
    #[serde(with = "humantime_serde")]
    pub request_header_timeout: Duration,
    /// TCP connections an edge holds that have not yet carried an authenticated request; past it, new
    /// ones are answered 503.
    pub unauthenticated_connections: usize,
    /// File descriptors kept free: past `RLIMIT_NOFILE` minus these, new connections are answered 503
    /// (and `/healthz` still 200) instead of not being accepted at all.
    pub reserved_file_descriptors: usize,
    /// Overrides per hub (`limits.hubs.tasks.invocations_per_second`); hub names as in the contract,
    /// with `_` accepted for `-` (environment variables cannot hold `-`).
    pub hubs: BTreeMap<String, HubLimitsConfig>,
}

/// One hub's overrides of the global limits; what is left out is the global value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubLimitsConfig {
    pub invocations_per_second: Option<f64>,
    pub invocation_burst: Option<u32>,
    pub connections_per_key: Option<u32>,
}

/// The limits that apply to one hub's connections, overrides resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubLimits {
    pub invocations_per_second: f64,
    pub invocation_burst: u32,
    pub connections_per_key: u32,
}

impl LimitsConfig {
    /// The limits of `hub`: its overrides where it has any, the global values elsewhere.
    pub fn for_hub(&self, hub: &str) -> HubLimits {
        let overrides = self.hubs.iter().find(|(name, _)| name.replace('_', "-") == hub).map(|(_, o)| o);
        let overrides = overrides.cloned().unwrap_or_default();
        HubLimits {
            invocations_per_second: overrides.invocations_per_second.unwrap_or(self.invocations_per_second),
            invocation_burst: overrides.invocation_burst.unwrap_or(self.invocation_burst),
            connections_per_key: overrides.connections_per_key.unwrap_or(self.connections_per_key),
        }
    }

    /// The hub names under `limits.hubs` that are not among `known`, for a clear error at start.
    pub fn unknown_hubs<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        self.hubs
            .keys()
            .filter(|name| !known.contains(&name.replace('_', "-").as_str()))
            .map(String::as_str)
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalRConfig {
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long a negotiated connection may wait for its transport request.
    #[serde(with = "humantime_serde")]
    pub negotiate_timeout: Duration,
    /// How long a long poll waits for messages before answering empty.
    #[serde(with = "humantime_serde")]
    pub long_poll_timeout: Duration,
    /// How long a Long Polling client may go without polling, or a stateful-reconnect connection may wait
    /// for its client to come back, before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub disconnect_timeout: Duration,
    /// Bytes of unacknowledged messages kept for replay after a reconnect.
    pub stateful_reconnect_buffer_bytes: usize,
    /// On shutdown, clients are told to reconnect spread over this window, so they do not all land on the
    /// other edges at once.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            auth: AuthConfig::default(),
            bus: BusConfig::default(),
            limits: LimitsConfig::default(),
            signalr: SignalRConfig::default(),
            spend: SpendConfig::default(),
            webhooks: WebhooksConfig::default(),
            log: LogConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            amqp_url: None,
            exchange_prefix: "conduit.".into(),
            queue_type: "quorum".into(),
            prefetch: 256,
            max_event_bytes: 256 * 1024,
            state_stream_max_bytes: 256 * 1024 * 1024,
            node_id: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections_per_key: 100,
            max_message_size: 32 * 1024,
            outbound_buffer_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            invocations_per_second: 10.0,
            invocation_burst: 20,
            groups_per_connection: 100,
            request_header_timeout: Duration::from_secs(10),
            unauthenticated_connections: 1000,
            reserved_file_descriptors: 64,
            hubs: BTreeMap::new(),
        }
    }
}

impl Default for SignalRConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            negotiate_timeout: Duration::from_secs(15),
            long_poll_timeout: Duration::from_secs(90),
            disconnect_timeout: Duration::from_secs(15),
            stateful_reconnect_buffer_bytes: 100_000,
            drain_window: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Loads the layered configuration. An explicit `--config` file must exist; the default
    /// `hubcast.toml` is optional.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        // figment's error names the key and the source (file or variable) that set it.
        Ok(Self::figment(file).extract()?)
    }

    fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        figment = match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment.merge(Toml::file("hubcast.toml")),
        };
        figment.merge(Env::prefixed("HUBCAST_").split("__"))
    }
}

/// Accepts any scalar as a string: an environment variable that looks like a number (a master key of
/// digits, say) must not fail to load.
fn optional_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        String(String),
        Integer(i64),
        Unsigned(u64),
        Float(f64),
        Bool(bool),
    }
    Ok(Option::<Scalar>::deserialize(deserializer)?.map(|scalar| match scalar {
        Scalar::String(s) => s,
        Scalar::Integer(i) => i.to_string(),
        Scalar::Unsigned(u) => u.to_string(),
        Scalar::Float(f) => f.to_string(),
        Scalar::Bool(b) => b.to_string(),
    }))
}

#[cfg(test)]
// Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_defaults_file_and_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "hubcast.toml",
                "listen = \"127.0.0.1:9000\"\n[limits]\nconnections_per_key = 5\n[signalr]\nkeep_alive_interval = \"2s\"\n",
            )?;
            jail.set_env("HUBCAST_LIMITS__CONNECTIONS_PER_KEY", "7");
            jail.set_env("HUBCAST_AUTH__JWT_SECRET", "s3cret");
            jail.set_env("HUBCAST_AUTH__MASTER_KEY", "12345");
            jail.set_env("HUBCAST_BUS__AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.listen, "127.0.0.1:9000", "file beats defaults");
            assert_eq!(config.limits.connections_per_key, 7, "environment beats file");
            assert_eq!(config.signalr.keep_alive_interval, Duration::from_secs(2));
            assert_eq!(config.signalr.client_timeout, Duration::from_secs(30), "defaults fill the rest");
            assert_eq!(config.auth.jwt_secret.as_deref(), Some("s3cret"));
            assert_eq!(config.auth.master_key.as_deref(), Some("12345"));
            assert_eq!(config.bus.amqp_url.as_deref(), Some("amqp://guest:guest@127.0.0.1:5672/%2f"));
            assert_eq!(config.bus.exchange_prefix, "conduit.");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_name_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("HUBCAST_LIMITS__CONECTIONS_PER_KEY", "7");
            let error = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(error.contains("conections_per_key"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("HUBCAST_SIGNALR__CLIENT_TIMEOUT", "soon");
            let error = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(error.contains("client_timeout"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn per_hub_limits_override_the_global_ones() {
        Jail::expect_with(|jail| {
            jail.set_env("HUBCAST_LIMITS__HUBS__TASKS__INVOCATIONS_PER_SECOND", "50");
            jail.set_env("HUBCAST_LIMITS__HUBS__ADMIN_NOTIFICATIONS__CONNECTIONS_PER_KEY", "3");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            let tasks = config.limits.for_hub("tasks");
            assert_eq!(tasks.invocations_per_second, 50.0);
            assert_eq!(tasks.invocation_burst, 20, "what a hub leaves out is the global value");
            assert_eq!(config.limits.for_hub("admin-notifications").connections_per_key, 3);
            assert_eq!(config.limits.for_hub("spend").connections_per_key, 100);
            assert!(config.limits.unknown_hubs(&["tasks", "admin-notifications"]).is_empty());
            assert_eq!(config.limits.unknown_hubs(&["tasks"]), vec!["admin_notifications"]);
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("HUBCAST_LIMITS__HUBS__TASKS__BURST", "5");
            let error = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(error.contains("burst"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        assert!(Config::load(Some(Path::new("/nonexistent/hubcast.toml"))).is_err());
    }
}

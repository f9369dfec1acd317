//! Settings: compiled-in defaults, then an optional file, then `HOOKLINE__SECTION__KEY`
//! environment variables. Loading is pure apart from reading the file and the
//! environment it is given, and every error names the key.

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub const ENV_PREFIX: &str = "HOOKLINE";
pub const ENV_SEPARATOR: &str = "__";
/// The environment variable that names a settings file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "HOOKLINE_CONFIG";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error(
        "invalid configuration: {0} (environment variables are HOOKLINE__SECTION__KEY, e.g. HOOKLINE__AMQP__URL)"
    )]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key} ({env}): {message}")]
    Invalid {
        key: &'static str,
        env: &'static str,
        message: String,
    },
}

impl SettingsError {
    pub fn invalid(key: &'static str, env: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            env,
            message: message.into(),
        }
    }
}

/// Layers `defaults` (TOML), the optional file and the process environment.
pub fn load<T: DeserializeOwned>(defaults: &str, file: Option<&Path>) -> Result<T, SettingsError> {
    load_from(defaults, file, None)
}

/// As [`load`], with an explicit environment instead of the process's (for tests).
pub fn load_from<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    environment: Option<std::collections::HashMap<String, String>>,
) -> Result<T, SettingsError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    let env = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(environment);
    Ok(builder.add_source(env).build()?.try_deserialize()?)
}

/// The settings file to read: `--config PATH`, else `HOOKLINE_CONFIG`, else none.
pub fn config_path(flag: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    flag.or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(Into::into))
}

/// Names of every exchange, queue and Redis key start with it, so installations and
/// test runs can share one broker.
impl AmqpSettings {
    /// One node's URL or several, comma-separated, each `amqp://` or `amqps://`. The
    /// error never repeats a URL: it may carry credentials.
    pub fn validate(&self) -> Result<(), SettingsError> {
        use secrecy::ExposeSecret;
        let nodes = crate::broker::node_urls(self.url.expose_secret());
        if nodes.is_empty() {
            return Err(SettingsError::invalid(
                "amqp.url",
                "HOOKLINE__AMQP__URL",
                "must name at least one node",
            ));
        }
        if let Some(position) = nodes
            .iter()
            .position(|url| !(url.starts_with("amqp://") || url.starts_with("amqps://")))
        {
            return Err(SettingsError::invalid(
                "amqp.url",
                "HOOKLINE__AMQP__URL",
                format!("node {position} is not an amqp:// or amqps:// URL"),
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(SettingsError::invalid(
                "amqp.partitions",
                "HOOKLINE__AMQP__PARTITIONS",
                format!("must be 1 to {MAX_PARTITIONS}"),
            ));
        }
        Ok(())
    }
}

pub fn validate_prefix(prefix: &str) -> Result<(), SettingsError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 48
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SettingsError::invalid(
            "prefix",
            "HOOKLINE__PREFIX",
            "must be 1-48 ASCII letters, digits, '-' or '_'",
        ))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Quorum,
    Classic,
}

/// More partitions than this buys nothing on a cluster of any size Hookline targets,
/// and each one is a queue (a Raft group, for quorum queues) and a consumer per replica.
pub const MAX_PARTITIONS: u16 = 256;

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: SecretString,
    pub queue_type: QueueType,
    /// Unacked deliveries the broker may hand one consumer at once (one consumer per
    /// partition).
    pub prefetch: u16,
    /// Delivery queues the consistent-hash exchange spreads tenants over. Every ingest
    /// and deliverer of an installation must use the same number; changing it drains the
    /// queues that are no longer used (see `broker::topology`).
    pub partitions: u16,
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Redeliveries after which a message is dead-lettered instead of cycling forever.
    pub delivery_limit: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: SecretString,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    #[serde(flatten)]
    pub limits: crate::server::ConnectionLimits,
}

impl AdminSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.limits.validate([
            (
                "admin.header_read_timeout",
                "HOOKLINE__ADMIN__HEADER_READ_TIMEOUT",
            ),
            ("admin.idle_timeout", "HOOKLINE__ADMIN__IDLE_TIMEOUT"),
            ("admin.max_connections", "HOOKLINE__ADMIN__MAX_CONNECTIONS"),
        ])
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
}

/// OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when an endpoint is set.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// The collector's base URL (`http://otel-collector:4318`, the form of
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: `/v1/traces` is appended unless the path already
    /// ends with it). Empty: no spans are exported.
    #[serde(default)]
    pub otlp_endpoint: String,
    /// The share of traces that start here (no sampled parent) which are recorded;
    /// a trace continued from a `traceparent` follows its sampled flag.
    #[serde(default = "full_sampling")]
    pub sample_ratio: f64,
}

fn full_sampling() -> f64 {
    1.0
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            sample_ratio: full_sampling(),
        }
    }
}

impl TelemetrySettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(SettingsError::invalid(
                "telemetry.sample_ratio",
                "HOOKLINE__TELEMETRY__SAMPLE_RATIO",
                "must be between 0 and 1",
            ));
        }
        if !self.otlp_endpoint.is_empty() {
            let parsed = url::Url::parse(&self.otlp_endpoint).map_err(|error| {
                SettingsError::invalid(
                    "telemetry.otlp_endpoint",
                    "HOOKLINE__TELEMETRY__OTLP_ENDPOINT",
                    format!("not a URL: {error}"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(SettingsError::invalid(
                    "telemetry.otlp_endpoint",
                    "HOOKLINE__TELEMETRY__OTLP_ENDPOINT",
                    "must be an http:// or https:// URL (OTLP over HTTP)",
                ));
            }
        }
        Ok(())
    }

    /// Where spans are posted: the endpoint with the traces path.
    pub fn traces_url(&self) -> Option<String> {
        if self.otlp_endpoint.is_empty() {
            return None;
        }
        let base = self.otlp_endpoint.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// How long in-flight work may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

/// A count written as a number (in a file) or a string (from the environment). Fields
/// inside a `#[serde(flatten)]` section need it: flattening hides the field's type from
/// the config crate, which then hands environment values over as strings.
pub fn count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Number(usize),
        Text(String),
    }
    match Count::deserialize(deserializer)? {
        Count::Number(count) => Ok(count),
        Count::Text(text) => text
            .trim()
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a count: {e}"))),
    }
}

/// A comma-separated list of CIDRs, e.g. `"10.20.0.0/16, fd00::/8"`.
pub fn networks<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ipnet::IpNet>, D::Error> {
    String::deserialize(deserializer)?
        .split(',')
        .map(str::trim)
        .filter(|cidr| !cidr.is_empty())
        .map(|cidr| {
            cidr.parse::<ipnet::IpNet>()
                .map_err(|e| serde::de::Error::custom(format!("{cidr:?} is not a CIDR: {e}")))
        })
        .collect()
}

/// When an endpoint counts as failing (circuit open) and when it is disabled.
#[derive(Debug, Clone, Deserialize)]
pub struct HealthSettings {
    pub failing_after: u32,
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
}

impl HealthSettings {
    pub fn policy(&self) -> crate::domain::health::HealthPolicy {
        crate::domain::health::HealthPolicy {
            failing_after: self.failing_after.max(1),
            disable_after: self.disable_after,
        }
    }
}

/// The key that seals signing secrets at rest (base64 of 32 bytes), and older keys that
/// still open values sealed before a rotation (comma-separated).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SecretsSettings {
    #[serde(default)]
    pub key: Option<SecretString>,
    #[serde(default)]
    pub previous_keys: Option<SecretString>,
}

impl SecretsSettings {
    pub fn sealer(&self) -> Result<crate::store::sealing::Sealer, SettingsError> {
        crate::store::sealing::Sealer::new(self.key.as_ref(), self.previous_keys.as_ref()).map_err(
            |e| SettingsError::invalid("secrets.key", "HOOKLINE__SECRETS__KEY", e.to_string()),
        )
    }
}

/// How long the delivery history and dead letters are kept in Redis.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    #[serde(with = "humantime_serde")]
    pub attempts: Duration,
    pub attempts_per_endpoint: u32,
    pub events_per_tenant: u32,
    #[serde(with = "humantime_serde")]
    pub dead_letters: Duration,
    /// The ops record `{prefix}.dead-letter` keeps a dead letter this long...
    #[serde(with = "humantime_serde")]
    pub dead_letter_queue: Duration,
    /// ...and at most this many (the oldest go first).
    pub dead_letter_queue_max: u64,
    /// How often a deliverer trims it.
    #[serde(with = "humantime_serde")]
    pub dead_letter_queue_check: Duration,
    /// How often a deliverer trims tenants with a shorter retention of their own.
    #[serde(with = "humantime_serde", default = "tenant_check")]
    pub tenant_check: Duration,
}

fn tenant_check() -> Duration {
    Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, Deserialize)]
    struct Example {
        prefix: String,
        amqp: AmqpSettings,
    }

    const DEFAULTS: &str = r#"
        prefix = "hookline"
        [amqp]
        url = "amqp://127.0.0.1:5672/%2f"
        queue_type = "quorum"
        prefetch = 200
        partitions = 8
        confirm_timeout = "10s"
        connect_timeout = "5s"
        delivery_limit = 10
    "#;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn environment_overrides_defaults() {
        let loaded: Example = load_from(
            DEFAULTS,
            None,
            env(&[
                ("HOOKLINE__PREFIX", "t1"),
                ("HOOKLINE__AMQP__PREFETCH", "50"),
                ("HOOKLINE__AMQP__QUEUE_TYPE", "classic"),
            ]),
        )
        .expect("valid");
        assert_eq!(loaded.prefix, "t1");
        assert_eq!(loaded.amqp.prefetch, 50);
        assert_eq!(loaded.amqp.queue_type, QueueType::Classic);
        assert_eq!(loaded.amqp.confirm_timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_values_name_the_key() {
        let error =
            load_from::<Example>(DEFAULTS, None, env(&[("HOOKLINE__AMQP__PREFETCH", "lots")]))
                .expect_err("invalid");
        assert!(error.to_string().contains("amqp.prefetch"), "{error}");
        let error = load_from::<Example>(
            DEFAULTS,
            None,
            env(&[("HOOKLINE__AMQP__CONFIRM_TIMEOUT", "soon")]),
        )
        .expect_err("invalid");
        assert!(
            error.to_string().contains("amqp.confirm_timeout"),
            "{error}"
        );
        assert!(validate_prefix("ok_1-x").is_ok());
        assert!(validate_prefix("no.dots").is_err());
    }
}

//! `hookline-ingest` settings; the commented defaults are in `config/default.toml`.

use hookline_shared::dispatch::DispatchSettings;
use hookline_shared::dispatch::proxy::DeliveryProxy;
use hookline_shared::domain::quota::Quota;
use hookline_shared::server::ConnectionLimits;
use hookline_shared::settings::{
    self, AdminSettings, AmqpSettings, HealthSettings, LogSettings, RedisSettings, SecretsSettings,
    SettingsError, ShutdownSettings, TelemetrySettings,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub prefix: String,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub api: ApiSettings,
    pub delivery: DeliverySettings,
    pub health: HealthSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    #[serde(default)]
    pub secrets: SecretsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(flatten)]
    pub limits: ConnectionLimits,
    /// Proxies whose `X-Forwarded-For` names the client (for per-client limits).
    #[serde(deserialize_with = "settings::networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    #[serde(default)]
    pub token: Option<SecretString>,
    #[serde(default)]
    pub extra_tokens: Option<SecretString>,
    pub max_event_bytes: usize,
    /// Events in one `POST …/events/batch`.
    pub max_batch_events: usize,
    /// A batch's body; unset, [`BATCH_BYTES_FACTOR`] × `max_event_bytes` (see
    /// [`ApiSettings::max_batch_bytes`]).
    #[serde(default)]
    pub max_batch_bytes: Option<usize>,
    pub max_endpoint_bytes: usize,
    pub max_endpoints_per_tenant: u32,
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Refuse events whose type is not in the catalog (`PUT /v1/event-types/{type}`).
    pub require_known_event_types: bool,
    /// `tenant:token` pairs, comma-separated: tokens that may act only on their tenant.
    #[serde(default)]
    pub tenant_tokens: Option<SecretString>,
    /// Signs console portal links; unset, portal links are off. At least
    /// [`PORTAL_KEY_MIN_BYTES`] when set (see [`Settings::validate`]).
    #[serde(default)]
    pub portal_key: Option<SecretString>,
    #[serde(with = "humantime_serde")]
    pub portal_link_ttl: Duration,
    /// How long an erasure waits between leaving its marker and sweeping the stores:
    /// longer than the deliverers' `delivery.endpoint_cache_ttl`, so each has read the
    /// marker by then.
    #[serde(with = "humantime_serde")]
    pub erasure_settle: Duration,
    /// Failed authentications per client address before it is answered 429.
    pub auth_failures: Quota,
    /// Test deliveries (`…/test`, `verify` on create) per endpoint and per tenant.
    pub test_deliveries_per_endpoint: Quota,
    pub test_deliveries_per_tenant: Quota,
    /// Events a tenant may send, per minute with a burst; `per_minute` 0 is unlimited.
    /// An operator can override it per tenant (`PUT /v1/tenants/{t}/quota`).
    pub tenant_quota: Quota,
    /// The console's CSP `frame-ancestors` sources (see [`crate::console::frame_ancestors`]).
    pub console_frame_ancestors: String,
}

/// A batch's body may be this many times an event's: batches of small events (a few KiB
/// each) fit hundreds, while a batch cannot make ingest hold more than this many
/// maximal events' worth of bytes per request.
pub const BATCH_BYTES_FACTOR: usize = 8;

/// A portal link is as strong as the key that signs it: HMAC-SHA256 keys shorter than its
/// output can be guessed faster than the MAC, and an empty one by anybody.
pub const PORTAL_KEY_MIN_BYTES: usize = 32;

/// Test deliveries ("Check" button, `verify` on create) are made by ingest itself, under
/// the same rules as the deliverer's: these keys mean the same in both binaries.
#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub allow_private_networks: bool,
    #[serde(deserialize_with = "settings::networks")]
    pub allowed_networks: Vec<ipnet::IpNet>,
    pub require_https: bool,
    pub response_excerpt_bytes: usize,
    /// Deliveries go through this proxy (`http://`, `https://` or `socks5://`, may carry
    /// credentials); empty for none. Proxy variables in the environment are never used.
    pub proxy: SecretString,
    /// After a rotation, deliveries carry the old signature too for this long.
    #[serde(with = "humantime_serde")]
    pub secret_overlap: Duration,
}

impl DeliverySettings {
    pub fn dispatch(&self) -> DispatchSettings {
        DispatchSettings {
            timeout: self.timeout,
            allow_private_networks: self.allow_private_networks,
            allowed_networks: self.allowed_networks.clone(),
            require_https: self.require_https,
            response_excerpt_bytes: self.response_excerpt_bytes,
            proxy: self.proxy.clone(),
        }
    }
}

impl ApiSettings {
    /// The largest batch body: `api.max_batch_bytes`, or [`BATCH_BYTES_FACTOR`] ×
    /// `api.max_event_bytes` when unset.
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
            .unwrap_or(self.max_event_bytes.saturating_mul(BATCH_BYTES_FACTOR))
    }

    /// `(tenant, token)` for every tenant-scoped token.
    pub fn scoped_tokens(&self) -> Vec<(String, SecretString)> {
        self.tenant_tokens
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.trim().split_once(':'))
            .filter(|(tenant, token)| !tenant.is_empty() && !token.is_empty())
            .map(|(tenant, token)| (tenant.to_owned(), SecretString::from(token.to_owned())))
            .collect()
    }

    /// Every token that may call the API.
    pub fn tokens(&self) -> Vec<SecretString> {
        let extra = self
            .extra_tokens
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default();
        self.token
            .iter()
            .map(|t| t.expose_secret().to_owned())
            .chain(extra.split(',').map(str::trim).map(str::to_owned))
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
            .collect()
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let settings: Self = settings::load(DEFAULTS, file)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        settings::validate_prefix(&self.prefix)?;
        self.secrets.sealer()?;
        self.admin.validate()?;
        self.telemetry.validate()?;
        self.amqp.validate()?;
        self.http.limits.validate([
            (
                "http.header_read_timeout",
                "HOOKLINE__HTTP__HEADER_READ_TIMEOUT",
            ),
            ("http.idle_timeout", "HOOKLINE__HTTP__IDLE_TIMEOUT"),
            ("http.max_connections", "HOOKLINE__HTTP__MAX_CONNECTIONS"),
        ])?;
        DeliveryProxy::validate_setting(&self.delivery.proxy)?;
        if let Some(pairs) = &self.api.tenant_tokens {
            let listed = pairs
                .expose_secret()
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .count();
            if listed != self.api.scoped_tokens().len() {
                return Err(SettingsError::invalid(
                    "api.tenant_tokens",
                    "HOOKLINE__API__TENANT_TOKENS",
                    "must be comma-separated tenant:token pairs",
                ));
            }
        }
        if let Some(key) = &self.api.portal_key {
            let length = key.expose_secret().len();
            if length < PORTAL_KEY_MIN_BYTES {
                let what = if length == 0 {
                    "is empty"
                } else {
                    "is too short"
                };
                return Err(SettingsError::invalid(
                    "api.portal_key",
                    "HOOKLINE__API__PORTAL_KEY",
                    format!(
                        "{what}: a key that signs portal links needs at least \
                         {PORTAL_KEY_MIN_BYTES} bytes (e.g. `openssl rand -hex 32`); \
                         unset it to turn portal links off"
                    ),
                ));
            }
        }
        if let Err(problem) = crate::console::frame_ancestors(&self.api.console_frame_ancestors) {
            return Err(SettingsError::invalid(
                "api.console_frame_ancestors",
                "HOOKLINE__API__CONSOLE_FRAME_ANCESTORS",
                problem,
            ));
        }
        if self.api.tokens().is_empty() {
            return Err(SettingsError::invalid(
                "api.token",
                "HOOKLINE__API__TOKEN",
                "must be set: the API refuses to run without authentication",
            ));
        }
        let quotas = [
            (
                self.api.auth_failures,
                ["api.auth_failures.per_minute", "api.auth_failures.burst"],
                [
                    "HOOKLINE__API__AUTH_FAILURES__PER_MINUTE",
                    "HOOKLINE__API__AUTH_FAILURES__BURST",
                ],
            ),
            (
                self.api.test_deliveries_per_endpoint,
                [
                    "api.test_deliveries_per_endpoint.per_minute",
                    "api.test_deliveries_per_endpoint.burst",
                ],
                [
                    "HOOKLINE__API__TEST_DELIVERIES_PER_ENDPOINT__PER_MINUTE",
                    "HOOKLINE__API__TEST_DELIVERIES_PER_ENDPOINT__BURST",
                ],
            ),
            (
                self.api.test_deliveries_per_tenant,
                [
                    "api.test_deliveries_per_tenant.per_minute",
                    "api.test_deliveries_per_tenant.burst",
                ],
                [
                    "HOOKLINE__API__TEST_DELIVERIES_PER_TENANT__PER_MINUTE",
                    "HOOKLINE__API__TEST_DELIVERIES_PER_TENANT__BURST",
                ],
            ),
        ];
        for (quota, keys, envs) in quotas {
            for ((value, key), env) in [quota.per_minute, quota.burst]
                .into_iter()
                .zip(keys)
                .zip(envs)
            {
                if value == 0 {
                    return Err(SettingsError::invalid(key, env, "must be at least 1"));
                }
            }
        }
        if let Err(invalid) = self.api.tenant_quota.check() {
            let (key, env) = if invalid.field == "burst" {
                (
                    "api.tenant_quota.burst",
                    "HOOKLINE__API__TENANT_QUOTA__BURST",
                )
            } else {
                (
                    "api.tenant_quota.per_minute",
                    "HOOKLINE__API__TENANT_QUOTA__PER_MINUTE",
                )
            };
            return Err(SettingsError::invalid(key, env, invalid.message));
        }
        if self.api.max_batch_events == 0 {
            return Err(SettingsError::invalid(
                "api.max_batch_events",
                "HOOKLINE__API__MAX_BATCH_EVENTS",
                "must be at least 1",
            ));
        }
        if self.api.max_batch_bytes() < self.api.max_event_bytes {
            return Err(SettingsError::invalid(
                "api.max_batch_bytes",
                "HOOKLINE__API__MAX_BATCH_BYTES",
                "must be at least api.max_event_bytes",
            ));
        }
        if self.api.max_event_bytes < 1024 {
            return Err(SettingsError::invalid(
                "api.max_event_bytes",
                "HOOKLINE__API__MAX_EVENT_BYTES",
                "must be at least 1024",
            ));
        }
        Ok(())
    }

    /// The defaults with the given overrides, for tests and tools.
    pub fn from_defaults_with(
        overrides: std::collections::HashMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let settings: Self = settings::load_from(DEFAULTS, None, Some(overrides))?;
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_only_a_token() {
        let error = Settings::from_defaults_with(env(&[])).expect_err("no token");
        assert!(
            error.to_string().contains("HOOKLINE__API__TOKEN"),
            "{error}"
        );
        let settings = Settings::from_defaults_with(env(&[
            ("HOOKLINE__API__TOKEN", "t1"),
            ("HOOKLINE__API__EXTRA_TOKENS", "t2, t3"),
        ]))
        .expect("valid");
        assert_eq!(settings.api.tokens().len(), 3);
        assert_eq!(settings.http.listen.port(), 8080);
        assert_eq!(settings.admin.listen.port(), 9090);
    }

    #[test]
    fn a_portal_key_is_unset_or_at_least_32_bytes() {
        let cases = [
            (None, true),
            (Some(""), false),
            (Some("k"), false),
            (Some("0123456789abcdef0123456789abcde"), false),
            (Some("0123456789abcdef0123456789abcdef"), true),
            (
                Some("0123456789abcdef0123456789abcdef-longer-is-fine"),
                true,
            ),
        ];
        for (key, valid) in cases {
            let mut overrides = vec![("HOOKLINE__API__TOKEN", "t")];
            overrides.extend(key.map(|key| ("HOOKLINE__API__PORTAL_KEY", key)));
            let loaded = Settings::from_defaults_with(env(&overrides));
            match (loaded, valid) {
                (Ok(settings), true) => assert_eq!(
                    settings.api.portal_key.map(|k| k.expose_secret().len()),
                    key.map(str::len),
                ),
                (Err(error), false) => {
                    let error = error.to_string();
                    assert!(
                        error.contains("api.portal_key")
                            && error.contains("HOOKLINE__API__PORTAL_KEY")
                            && error.contains("32 bytes"),
                        "{key:?}: {error}"
                    );
                }
                (loaded, _) => panic!("{key:?}: expected valid={valid}, got {loaded:?}"),
            }
        }
    }

    #[test]
    fn a_bad_delivery_proxy_names_the_key_and_not_the_password() {
        for proxy in ["socks5h://u:hunter2@proxy:1080", "u:hunter2@proxy:3128"] {
            let error = Settings::from_defaults_with(env(&[
                ("HOOKLINE__API__TOKEN", "t"),
                ("HOOKLINE__DELIVERY__PROXY", proxy),
            ]))
            .expect_err(proxy)
            .to_string();
            assert!(error.contains("HOOKLINE__DELIVERY__PROXY"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn console_frame_ancestors_default_to_none_and_are_checked() {
        let settings =
            Settings::from_defaults_with(env(&[("HOOKLINE__API__TOKEN", "t")])).expect("valid");
        assert_eq!(settings.api.console_frame_ancestors, "'none'");
        let error = Settings::from_defaults_with(env(&[
            ("HOOKLINE__API__TOKEN", "t"),
            (
                "HOOKLINE__API__CONSOLE_FRAME_ANCESTORS",
                "'self'; script-src *",
            ),
        ]))
        .expect_err("a second directive");
        assert!(
            error
                .to_string()
                .contains("HOOKLINE__API__CONSOLE_FRAME_ANCESTORS"),
            "{error}"
        );
    }

    #[test]
    fn batch_limits_and_the_tenant_quota_default_to_off_and_eight_events_worth() {
        let settings =
            Settings::from_defaults_with(env(&[("HOOKLINE__API__TOKEN", "t")])).expect("valid");
        assert_eq!(settings.api.max_batch_events, 500);
        assert_eq!(
            settings.api.max_batch_bytes(),
            BATCH_BYTES_FACTOR * settings.api.max_event_bytes
        );
        assert_eq!(settings.api.tenant_quota.limited(), None, "off by default");
        let settings = Settings::from_defaults_with(env(&[
            ("HOOKLINE__API__TOKEN", "t"),
            ("HOOKLINE__API__MAX_EVENT_BYTES", "2048"),
        ]))
        .expect("valid");
        assert_eq!(
            settings.api.max_batch_bytes(),
            16384,
            "follows max_event_bytes"
        );
        for (key, value, named) in [
            ("HOOKLINE__API__TENANT_QUOTA__PER_MINUTE", "600", ""),
            (
                "HOOKLINE__API__MAX_BATCH_EVENTS",
                "0",
                "api.max_batch_events",
            ),
            (
                "HOOKLINE__API__MAX_BATCH_BYTES",
                "1024",
                "api.max_batch_bytes",
            ),
        ] {
            let loaded =
                Settings::from_defaults_with(env(&[("HOOKLINE__API__TOKEN", "t"), (key, value)]));
            match loaded {
                Ok(_) => assert!(named.is_empty(), "{key}={value} accepted"),
                Err(error) => assert!(
                    error.to_string().contains(named) && !named.is_empty(),
                    "{error}"
                ),
            }
        }
        let error = Settings::from_defaults_with(env(&[
            ("HOOKLINE__API__TOKEN", "t"),
            ("HOOKLINE__API__TENANT_QUOTA__PER_MINUTE", "600"),
            ("HOOKLINE__API__TENANT_QUOTA__BURST", "0"),
        ]))
        .expect_err("a quota without a burst");
        assert!(
            error.to_string().contains("api.tenant_quota.burst"),
            "{error}"
        );
    }

    #[test]
    fn bad_listen_address_names_the_key() {
        let error = Settings::from_defaults_with(env(&[
            ("HOOKLINE__API__TOKEN", "t"),
            ("HOOKLINE__HTTP__LISTEN", "nowhere"),
        ]))
        .expect_err("invalid");
        assert!(error.to_string().contains("http.listen"), "{error}");
    }
}

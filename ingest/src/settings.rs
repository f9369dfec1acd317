//! `hookline-ingest` settings; the commented defaults are in `config/default.toml`.

use hookline_shared::dispatch::DispatchSettings;
use hookline_shared::dispatch::proxy::DeliveryProxy;
use hookline_shared::settings::{
    self, AdminSettings, AmqpSettings, HealthSettings, LogSettings, RedisSettings, SecretsSettings,
    SettingsError, ShutdownSettings,
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
    pub shutdown: ShutdownSettings,
    #[serde(default)]
    pub secrets: SecretsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    #[serde(default)]
    pub token: Option<SecretString>,
    #[serde(default)]
    pub extra_tokens: Option<SecretString>,
    pub max_event_bytes: usize,
    pub max_endpoint_bytes: usize,
    pub max_endpoints_per_tenant: u32,
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Refuse events whose type is not in the catalog (`PUT /v1/event-types/{type}`).
    pub require_known_event_types: bool,
    /// `tenant:token` pairs, comma-separated: tokens that may act only on their tenant.
    #[serde(default)]
    pub tenant_tokens: Option<SecretString>,
    /// Signs console portal links; without it, portal links are disabled.
    #[serde(default)]
    pub portal_key: Option<SecretString>,
    #[serde(with = "humantime_serde")]
    pub portal_link_ttl: Duration,
}

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
        DeliveryProxy::from_setting(self.delivery.proxy.expose_secret()).map_err(|error| {
            SettingsError::invalid(
                "delivery.proxy",
                "HOOKLINE__DELIVERY__PROXY",
                error.to_string(),
            )
        })?;
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
        if self.api.tokens().is_empty() {
            return Err(SettingsError::invalid(
                "api.token",
                "HOOKLINE__API__TOKEN",
                "must be set: the API refuses to run without authentication",
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
    fn bad_listen_address_names_the_key() {
        let error = Settings::from_defaults_with(env(&[
            ("HOOKLINE__API__TOKEN", "t"),
            ("HOOKLINE__HTTP__LISTEN", "nowhere"),
        ]))
        .expect_err("invalid");
        assert!(error.to_string().contains("http.listen"), "{error}");
    }
}

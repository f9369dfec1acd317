//! `hookline-deliverer` settings; the commented defaults are in `config/default.toml`.

use hookline_shared::dispatch::DispatchSettings;
use hookline_shared::dispatch::proxy::DeliveryProxy;
use hookline_shared::domain::policy::RetrySchedule;
use hookline_shared::settings::{
    self, AdminSettings, AmqpSettings, HealthSettings, LogSettings, RedisSettings,
    RetentionSettings, SecretsSettings, SettingsError, ShutdownSettings, TelemetrySettings,
};
use ipnet::IpNet;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub prefix: String,
    pub admin: AdminSettings,
    pub delivery: DeliverySettings,
    pub retry: RetrySettings,
    pub fairness: FairnessSettings,
    pub notifications: NotificationSettings,
    pub health: HealthSettings,
    pub retention: RetentionSettings,
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
pub struct DeliverySettings {
    pub retry_schedule: RetrySchedule,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub allow_private_networks: bool,
    #[serde(deserialize_with = "settings::networks")]
    pub allowed_networks: Vec<IpNet>,
    pub require_https: bool,
    pub max_in_flight_per_endpoint: usize,
    #[serde(with = "humantime_serde")]
    pub slot_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub defer_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
    #[serde(with = "humantime_serde")]
    pub handoff_after: Duration,
    pub max_handed_off: usize,
    #[serde(with = "humantime_serde")]
    pub endpoint_cache_ttl: Duration,
    pub response_excerpt_bytes: usize,
    /// How long an ordered endpoint's key waits for a missing earlier event (one
    /// numbered but never published) before its later events go on.
    #[serde(with = "humantime_serde")]
    pub ordering_gap: Duration,
    /// Deliveries go through this proxy (`http://`, `https://` or `socks5://`, may carry
    /// credentials); empty for none. Proxy variables in the environment are never used.
    pub proxy: SecretString,
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

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub batch: usize,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

/// Operational events about endpoints (`hookline.endpoint.failing`, …).
#[derive(Debug, Clone, Deserialize)]
pub struct NotificationSettings {
    /// A tenant that also receives every tenant's operational events; empty for none.
    pub operator_tenant: String,
    /// At most one `hookline.dead_letters.accumulated` per endpoint per this long.
    #[serde(with = "humantime_serde")]
    pub dead_letters_interval: Duration,
}

/// How a replica shares its capacity between tenants and priorities.
#[derive(Debug, Clone, Deserialize)]
pub struct FairnessSettings {
    /// Messages of one tenant this replica works on at once, per partition, before it
    /// parks the tenant's further messages in its lane of the retry pool.
    pub tenant_share: usize,
    /// The part of each claim from the retry pool that bulk lanes get even when
    /// real-time lanes have more than enough due (0 to 1).
    pub bulk_floor: f64,
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let settings: Self = settings::load(DEFAULTS, file)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn from_defaults_with(
        overrides: std::collections::HashMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let settings: Self = settings::load_from(DEFAULTS, None, Some(overrides))?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        settings::validate_prefix(&self.prefix)?;
        self.secrets.sealer()?;
        self.admin.validate()?;
        self.telemetry.validate()?;
        self.amqp.validate()?;
        DeliveryProxy::validate_setting(&self.delivery.proxy)?;
        let durations = [
            (
                self.delivery.timeout,
                "delivery.timeout",
                "HOOKLINE__DELIVERY__TIMEOUT",
            ),
            // Zero would bring every held delivery straight back: a busy loop.
            (
                self.delivery.max_hold,
                "delivery.max_hold",
                "HOOKLINE__DELIVERY__MAX_HOLD",
            ),
            // Zero would hand every delivery off to Redis.
            (
                self.delivery.handoff_after,
                "delivery.handoff_after",
                "HOOKLINE__DELIVERY__HANDOFF_AFTER",
            ),
            (
                self.retention.dead_letter_queue_check,
                "retention.dead_letter_queue_check",
                "HOOKLINE__RETENTION__DEAD_LETTER_QUEUE_CHECK",
            ),
            (
                self.retention.tenant_check,
                "retention.tenant_check",
                "HOOKLINE__RETENTION__TENANT_CHECK",
            ),
        ];
        if let Some((_, field, variable)) = durations.iter().find(|(d, ..)| d.is_zero()) {
            return Err(SettingsError::invalid(field, variable, "must be positive"));
        }
        if !self.notifications.operator_tenant.is_empty()
            && hookline_shared::domain::event::TenantId::parse(
                self.notifications.operator_tenant.clone(),
            )
            .is_err()
        {
            return Err(SettingsError::invalid(
                "notifications.operator_tenant",
                "HOOKLINE__NOTIFICATIONS__OPERATOR_TENANT",
                "is not a valid tenant id",
            ));
        }
        if !(0.0..=1.0).contains(&self.fairness.bulk_floor) {
            return Err(SettingsError::invalid(
                "fairness.bulk_floor",
                "HOOKLINE__FAIRNESS__BULK_FLOOR",
                "must be between 0 and 1",
            ));
        }
        if self.retry.lease <= self.delivery.timeout {
            return Err(SettingsError::invalid(
                "retry.lease",
                "HOOKLINE__RETRY__LEASE",
                "must exceed delivery.timeout, or a slow attempt's retry would be claimed twice",
            ));
        }
        let limits = [
            (
                self.delivery.max_in_flight_per_endpoint,
                "delivery.max_in_flight_per_endpoint",
                "HOOKLINE__DELIVERY__MAX_IN_FLIGHT_PER_ENDPOINT",
            ),
            (
                self.delivery.max_handed_off,
                "delivery.max_handed_off",
                "HOOKLINE__DELIVERY__MAX_HANDED_OFF",
            ),
            (self.retry.batch, "retry.batch", "HOOKLINE__RETRY__BATCH"),
            (
                self.fairness.tenant_share,
                "fairness.tenant_share",
                "HOOKLINE__FAIRNESS__TENANT_SHARE",
            ),
            (
                usize::from(self.amqp.prefetch),
                "amqp.prefetch",
                "HOOKLINE__AMQP__PREFETCH",
            ),
        ];
        if let Some((_, field, variable)) = limits.iter().find(|(limit, ..)| *limit == 0) {
            return Err(SettingsError::invalid(
                field,
                variable,
                "must be at least 1",
            ));
        }
        Ok(())
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
    fn defaults_are_about_a_day_of_retries() {
        let settings = Settings::from_defaults_with(env(&[])).expect("defaults are valid");
        let total: Duration = settings.delivery.retry_schedule.delays().iter().sum();
        assert!(
            total > Duration::from_secs(20 * 3600) && total < Duration::from_secs(26 * 3600),
            "{total:?}"
        );
        assert_eq!(settings.delivery.timeout, Duration::from_secs(15));
        assert!(!settings.delivery.allow_private_networks);
        assert_eq!(settings.admin.listen.port(), 9091);
    }

    #[test]
    fn overrides_and_errors_name_the_key() {
        let settings = Settings::from_defaults_with(env(&[
            ("HOOKLINE__DELIVERY__RETRY_SCHEDULE", "200ms,1s"),
            ("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
            (
                "HOOKLINE__DELIVERY__ALLOWED_NETWORKS",
                "10.0.0.0/8, fd00::/8",
            ),
        ]))
        .expect("valid");
        assert_eq!(settings.delivery.retry_schedule.max_attempts(), 3);
        assert!(settings.delivery.allow_private_networks);
        assert_eq!(settings.delivery.allowed_networks.len(), 2);

        for (key, value, named) in [
            (
                "HOOKLINE__DELIVERY__RETRY_SCHEDULE",
                "5s,later",
                "delivery.retry_schedule",
            ),
            ("HOOKLINE__DELIVERY__TIMEOUT", "fast", "delivery.timeout"),
            (
                "HOOKLINE__DELIVERY__ALLOWED_NETWORKS",
                "10.0.0.0/99",
                "delivery.allowed_networks",
            ),
            ("HOOKLINE__RETRY__LEASE", "1s", "HOOKLINE__RETRY__LEASE"),
            ("HOOKLINE__PREFIX", "a.b", "HOOKLINE__PREFIX"),
            (
                "HOOKLINE__DELIVERY__HANDOFF_AFTER",
                "0s",
                "HOOKLINE__DELIVERY__HANDOFF_AFTER",
            ),
            (
                "HOOKLINE__DELIVERY__MAX_HANDED_OFF",
                "0",
                "HOOKLINE__DELIVERY__MAX_HANDED_OFF",
            ),
            ("HOOKLINE__RETRY__BATCH", "0", "HOOKLINE__RETRY__BATCH"),
            (
                "HOOKLINE__DELIVERY__PROXY",
                "socks5h://hookline:hunter2@proxy:1080",
                "HOOKLINE__DELIVERY__PROXY",
            ),
            (
                "HOOKLINE__DELIVERY__PROXY",
                "hookline:hunter2@proxy:3128",
                "delivery.proxy",
            ),
        ] {
            let error = Settings::from_defaults_with(env(&[(key, value)])).expect_err(key);
            assert!(error.to_string().contains(named), "{key}: {error}");
            assert!(!error.to_string().contains("hunter2"), "{key}: {error}");
        }
    }
}

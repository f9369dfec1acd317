//! Per-tenant retention: a tenant may keep its history and dead letters shorter than the
//! installation does (`PUT /v1/tenants/{t}/retention`). Deliverers read every override
//! and trim those tenants' stores to it (`deliverer/src/tenant_retention.rs`).

use super::{Keyspace, StoreError, parse_json};
use crate::domain::Invalid;
use crate::domain::event::TenantId;
use crate::store::RedisConnection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// How long a tenant keeps what; `None` is the installation's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRetention {
    /// Event states and attempt logs.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub history: Option<Duration>,
    /// The dead-letter index.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_letters: Option<Duration>,
}

/// Shorter than this would trim what is still being delivered.
const MIN_RETENTION: Duration = Duration::from_secs(1);

impl TenantRetention {
    pub fn check(&self) -> Result<(), Invalid> {
        for (field, value) in [
            ("history", self.history),
            ("dead_letters", self.dead_letters),
        ] {
            if value.is_some_and(|keep| keep < MIN_RETENTION) {
                return Err(Invalid::new(field, "must be at least 1s"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct RetentionStore {
    redis: RedisConnection,
    keys: Keyspace,
}

impl RetentionStore {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    pub async fn get(&self, tenant: &TenantId) -> Result<Option<TenantRetention>, StoreError> {
        let key = self.keys.retention_overrides();
        let stored: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(tenant.as_str())
            .query_async(&mut self.redis.clone())
            .await?;
        stored.map(|json| parse_json(&key, &json)).transpose()
    }

    pub async fn put(
        &self,
        tenant: &TenantId,
        retention: &TenantRetention,
    ) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("HSET")
            .arg(self.keys.retention_overrides())
            .arg(tenant.as_str())
            .arg(serde_json::to_string(retention).unwrap_or_default())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    pub async fn delete(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.keys.retention_overrides())
            .arg(tenant.as_str())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(removed == 1)
    }

    /// Every tenant's override (unreadable ones skipped).
    pub async fn all(&self) -> Result<Vec<(TenantId, TenantRetention)>, StoreError> {
        let stored: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.retention_overrides())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(stored
            .into_iter()
            .filter_map(|(tenant, json)| {
                Some((
                    TenantId::parse(&tenant).ok()?,
                    serde_json::from_str(&json).ok()?,
                ))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_below_one_second_is_refused_naming_its_field() {
        let keep = |history: Option<u64>, dead_letters: Option<u64>| TenantRetention {
            history: history.map(Duration::from_millis),
            dead_letters: dead_letters.map(Duration::from_millis),
        };
        assert!(keep(None, None).check().is_ok());
        assert!(keep(Some(1000), Some(86_400_000)).check().is_ok());
        let refused = keep(Some(999), None).check().expect_err("too short");
        assert_eq!(refused.field, "history");
        let refused = keep(Some(1000), Some(0)).check().expect_err("too short");
        assert_eq!(refused.field, "dead_letters");
    }
}

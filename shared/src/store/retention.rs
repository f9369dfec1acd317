//! Per-tenant retention: a tenant may keep its history and dead letters shorter than the
//! installation does (`PUT /v1/tenants/{t}/retention`). Deliverers read every override
//! and trim those tenants' stores to it (`deliverer/src/tenant_retention.rs`).

use super::{Keyspace, StoreError};
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
        stored
            .map(|json| {
                serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { key, source })
            })
            .transpose()
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

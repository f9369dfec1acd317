//! Quotas an operator set for one tenant, in place of the installation's default. Read
//! by ingest through a short cache (`ingest/src/api/quota.rs`), so a tenant without one
//! costs no Redis round trip per event.

use super::{Keyspace, StoreError, parse_json};
use crate::domain::event::TenantId;
use crate::domain::quota::Quota;
use crate::store::RedisConnection;

#[derive(Debug, Clone)]
pub struct QuotaOverrides {
    redis: RedisConnection,
    keys: Keyspace,
}

impl QuotaOverrides {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    /// The tenant's override of quota `name`, if an operator set one.
    pub async fn get(&self, tenant: &TenantId, name: &str) -> Result<Option<Quota>, StoreError> {
        let key = self.keys.quota_override(tenant, name);
        let stored: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.redis.clone())
            .await?;
        stored.map(|json| parse_json(&key, &json)).transpose()
    }

    pub async fn put(&self, tenant: &TenantId, name: &str, quota: Quota) -> Result<(), StoreError> {
        // Serializing two integers cannot fail.
        let json = serde_json::to_string(&quota).unwrap_or_default();
        let () = redis::cmd("SET")
            .arg(self.keys.quota_override(tenant, name))
            .arg(json)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Removes the override; whether there was one.
    pub async fn delete(&self, tenant: &TenantId, name: &str) -> Result<bool, StoreError> {
        let removed: u32 = redis::cmd("DEL")
            .arg(self.keys.quota_override(tenant, name))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(removed > 0)
    }
}

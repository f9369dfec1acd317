//! Endpoints in Redis: one hash per tenant, endpoint id → JSON.

use super::sealing::Sealer;
use super::{Keyspace, StoreError};
use crate::domain::endpoint::Endpoint;
use crate::domain::erasure::Erasures;
use crate::domain::event::TenantId;
use crate::store::RedisConnection;
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct EndpointStore {
    redis: RedisConnection,
    keys: Keyspace,
    sealer: Arc<Sealer>,
}

/// Creates only below the quota and only if the id is new, atomically, so concurrent
/// creates cannot overshoot the limit.
const CREATE: &str = r"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
local created = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if created == 1 then redis.call('INCR', KEYS[2]) end
return created
";

/// Replaces only an endpoint that still exists, so an update racing a delete cannot
/// resurrect it.
const REPLACE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
";

const DELETE: &str = r"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then redis.call('INCR', KEYS[2]) end
return removed
";

/// A tenant's endpoints with the version they were read at (see
/// [`Keyspace::endpoints_version`]).
#[derive(Debug, Clone, Default)]
pub struct VersionedEndpoints {
    pub version: u64,
    pub endpoints: Vec<Endpoint>,
    /// The tenant's erasure markers, read in the same round trip: a deliverer drops
    /// what they cover.
    pub erasures: Erasures,
}

impl EndpointStore {
    pub fn new(redis: RedisConnection, keys: Keyspace, sealer: Arc<Sealer>) -> Self {
        Self {
            redis,
            keys,
            sealer,
        }
    }

    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<Endpoint>, StoreError> {
        let key = self.keys.endpoints(tenant);
        let values: Vec<String> = self.redis.clone().hvals(&key).await?;
        let mut endpoints = values
            .iter()
            .map(|json| self.decode(&key, json))
            .collect::<Result<Vec<_>, _>>()?;
        endpoints.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(endpoints)
    }

    /// The tenant's endpoint ids (the hash's fields: nothing is decoded).
    pub async fn ids(&self, tenant: &TenantId) -> Result<Vec<String>, StoreError> {
        Ok(self
            .redis
            .clone()
            .hkeys(self.keys.endpoints(tenant))
            .await?)
    }

    /// The list and the version, in one round trip. The version is read first, so it is
    /// never newer than the list: a change in between only makes a later event reload.
    pub async fn list_versioned(
        &self,
        tenant: &TenantId,
    ) -> Result<VersionedEndpoints, StoreError> {
        let key = self.keys.endpoints(tenant);
        let (version, values, erasures): (Option<u64>, Vec<String>, HashMap<String, i64>) =
            redis::pipe()
                .get(self.keys.endpoints_version(tenant))
                .hvals(&key)
                .hgetall(self.keys.erasures(tenant))
                .query_async(&mut self.redis.clone())
                .await?;
        let mut endpoints = values
            .iter()
            .map(|json| self.decode(&key, json))
            .collect::<Result<Vec<_>, _>>()?;
        endpoints.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(VersionedEndpoints {
            version: version.unwrap_or(0),
            endpoints,
            erasures: Erasures::from_fields(erasures),
        })
    }

    pub async fn get(&self, tenant: &TenantId, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let key = self.keys.endpoints(tenant);
        let value: Option<String> = self.redis.clone().hget(&key, id).await?;
        value.map(|json| self.decode(&key, &json)).transpose()
    }

    /// Stores a new endpoint; false if the id exists already.
    pub async fn create(
        &self,
        endpoint: &Endpoint,
        max_per_tenant: u32,
    ) -> Result<bool, StoreError> {
        let created: i64 = redis::Script::new(CREATE)
            .key(self.keys.endpoints(&endpoint.tenant))
            .key(self.keys.endpoints_version(&endpoint.tenant))
            .arg(&endpoint.id)
            .arg(self.encode(endpoint))
            .arg(max_per_tenant)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if created == 1 {
            // Outside the script: the tenant set is not in the tenant's hash slot. A
            // crash in between leaves a tenant out of the operator counts until its next
            // endpoint is created; nothing depends on it for delivery.
            let _: i64 = redis::cmd("SADD")
                .arg(self.keys.tenants())
                .arg(endpoint.tenant.as_str())
                .query_async(&mut self.redis.clone())
                .await?;
        }
        match created {
            -1 => Err(StoreError::QuotaExceeded {
                max: max_per_tenant,
            }),
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    /// Replaces an existing endpoint; false if it no longer exists.
    pub async fn replace(&self, endpoint: &Endpoint) -> Result<bool, StoreError> {
        let replaced: i64 = redis::Script::new(REPLACE)
            .key(self.keys.endpoints(&endpoint.tenant))
            .key(self.keys.endpoints_version(&endpoint.tenant))
            .arg(&endpoint.id)
            .arg(self.encode(endpoint))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(replaced == 1)
    }

    /// Every tenant that has had an endpoint.
    pub async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.tenants())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(members
            .into_iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .collect())
    }

    pub async fn delete(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let removed: i64 = redis::Script::new(DELETE)
            .key(self.keys.endpoints(tenant))
            .key(self.keys.endpoints_version(tenant))
            .arg(id)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(removed == 1)
    }
}

/// Where an endpoint's JSON holds signing secrets.
const SECRET_PATHS: [&[&str]; 2] = [&["secret"], &["retiring_secret", "secret"]];

fn secret_at<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter()
        .try_fold(value, |node, key| node.get_mut(*key))
        .filter(|node| node.is_string())
}

impl EndpointStore {
    fn encode(&self, endpoint: &Endpoint) -> String {
        // An endpoint is strings, numbers and maps of them: serializing cannot fail.
        let mut value = serde_json::to_value(endpoint).unwrap_or_default();
        for path in SECRET_PATHS {
            if let Some(secret) = secret_at(&mut value, path) {
                let sealed = self.sealer.seal(secret.as_str().unwrap_or_default());
                *secret = Value::String(sealed);
            }
        }
        value.to_string()
    }

    fn decode(&self, key: &str, json: &str) -> Result<Endpoint, StoreError> {
        let corrupt = |source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        };
        let mut value: Value = serde_json::from_str(json).map_err(corrupt)?;
        for path in SECRET_PATHS {
            if let Some(secret) = secret_at(&mut value, path) {
                let opened = self
                    .sealer
                    .open(secret.as_str().unwrap_or_default())
                    .map_err(|source| StoreError::Sealed {
                        key: key.to_owned(),
                        source,
                    })?;
                *secret = Value::String(opened);
            }
        }
        serde_json::from_value(value).map_err(corrupt)
    }
}

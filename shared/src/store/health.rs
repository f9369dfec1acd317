//! Endpoint health and the circuit breaker's probe lease, in Redis.
//!
//! One hash per tenant (endpoint id → compact JSON) so the deliverer reads every
//! endpoint's health with its endpoints in one round trip. Updates are Lua scripts that
//! change one field atomically; the decisions made from the record live in
//! `domain::health`.

use super::{Keyspace, StoreError, parse_json};
use crate::domain::event::TenantId;
use crate::domain::health::{DisabledReason, HealthRecord};
use crate::store::RedisConnection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use time::OffsetDateTime;

/// The stored form: times as unix milliseconds, absent fields omitted (Lua's cjson writes
/// it too).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    failures: u32,
    last_success_ms: Option<i64>,
    last_failure_ms: Option<i64>,
    failing_since_ms: Option<i64>,
    disabled_reason: Option<String>,
}

impl Stored {
    fn into_record(self) -> HealthRecord {
        HealthRecord {
            consecutive_failures: self.failures,
            last_success_at: self.last_success_ms.and_then(from_ms),
            last_failure_at: self.last_failure_ms.and_then(from_ms),
            failing_since: self.failing_since_ms.and_then(from_ms),
            disabled_reason: self
                .disabled_reason
                .as_deref()
                .and_then(DisabledReason::parse),
        }
    }
}

fn from_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

pub fn to_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Counts a failure; returns the record after it.
static RECORD_FAILURE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local h = raw and cjson.decode(raw) or {}
local now = tonumber(ARGV[2])
h.failures = (h.failures or 0) + 1
h.last_failure_ms = now
if not h.failing_since_ms then h.failing_since_ms = now end
local out = cjson.encode(h)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
",
    )
});

/// A success closes the streak; returns the failures in a row it closed. Keeps
/// `disabled_reason`: a success from a probe that raced the disable does not silently
/// re-enable an endpoint.
static RECORD_SUCCESS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local h = raw and cjson.decode(raw) or {}
local closed = h.failures or 0
h.failures = 0
h.failing_since_ms = nil
h.last_success_ms = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return closed
",
    )
});

/// Disables once; returns 1 if this call disabled it.
static DISABLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local h = raw and cjson.decode(raw) or {}
if h.disabled_reason then return 0 end
h.disabled_reason = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return 1
",
    )
});

/// Releases a probe lease only if it is still ours.
static RELEASE_PROBE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

#[derive(Debug, Clone)]
pub struct HealthStore {
    redis: RedisConnection,
    keys: Keyspace,
}

impl HealthStore {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    pub async fn all(
        &self,
        tenant: &TenantId,
    ) -> Result<HashMap<String, HealthRecord>, StoreError> {
        let key = self.keys.health(tenant);
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.redis.clone())
            .await?;
        raw.into_iter()
            .map(|(id, json)| Ok((id, decode(&key, &json)?)))
            .collect()
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
    ) -> Result<HealthRecord, StoreError> {
        let key = self.keys.health(tenant);
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(endpoint_id)
            .query_async(&mut self.redis.clone())
            .await?;
        raw.map_or(Ok(HealthRecord::default()), |json| decode(&key, &json))
    }

    pub async fn record_failure(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        now: OffsetDateTime,
    ) -> Result<HealthRecord, StoreError> {
        let key = self.keys.health(tenant);
        let json: String = RECORD_FAILURE
            .key(&key)
            .arg(endpoint_id)
            .arg(to_ms(now))
            .invoke_async(&mut self.redis.clone())
            .await?;
        decode(&key, &json)
    }

    /// Records a success; returns the failures in a row it ended (one caller sees a
    /// given streak end: the script is atomic).
    pub async fn record_success(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError> {
        let closed: i64 = RECORD_SUCCESS
            .key(self.keys.health(tenant))
            .arg(endpoint_id)
            .arg(to_ms(now))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(u32::try_from(closed).unwrap_or(0))
    }

    /// True if this call disabled the endpoint (it was not disabled already).
    pub async fn disable(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        reason: DisabledReason,
    ) -> Result<bool, StoreError> {
        let changed: i64 = DISABLE
            .key(self.keys.health(tenant))
            .arg(endpoint_id)
            .arg(reason.as_str())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(changed == 1)
    }

    /// True for the first call per endpoint and `what` in each window of `window_ms`: the
    /// gate of a notice sent at most once per window by all replicas together.
    pub async fn first_in_window(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        what: &str,
        window_ms: i64,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.notice_gate(tenant, endpoint_id, what))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(window_ms.max(1))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Forgets an endpoint's history: re-enabled, or deleted.
    pub async fn reset(&self, tenant: &TenantId, endpoint_id: &str) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("HDEL")
            .arg(self.keys.health(tenant))
            .arg(endpoint_id)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Takes the single probe of an open circuit for `lease`; false if another delivery
    /// (in any replica) holds it. The lease expires on its own if its holder dies.
    pub async fn try_probe(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.keys.probe(tenant, endpoint_id))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(taken.is_some())
    }

    pub async fn release_probe(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        let _: i64 = RELEASE_PROBE
            .key(self.keys.probe(tenant, endpoint_id))
            .arg(holder)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}

fn decode(key: &str, json: &str) -> Result<HealthRecord, StoreError> {
    parse_json::<Stored>(key, json).map(Stored::into_record)
}

//! Per-endpoint rate limits shared by every deliverer replica.
//!
//! A generic cell rate algorithm: each delivery reserves the next free slot, one every
//! `1 / limit` seconds, and learns how long to wait for it. Waiting deliveries are spread
//! evenly instead of all retrying at the next window boundary.

use super::{Keyspace, StoreError};
use crate::domain::event::TenantId;
use crate::domain::quota::Quota;
use crate::store::RedisConnection;
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS[1]: the endpoint's theoretical arrival time (µs). ARGV: now (µs), slot (µs).
/// Returns the wait before the reserved slot, in µs.
static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local start = tat
tat = tat + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
return string.format('%.0f', start - now)
",
    )
});

/// KEYS: one TAT (µs) per quota. ARGV: now (µs), cost (units), then interval and
/// tolerance (µs) per key. [`crate::domain::quota::admit`] for every key: all admit
/// `cost` units and every TAT moves, or none moves and the answer is the longest wait,
/// in µs (0: admitted).
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local wait = 0
local next = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i + 1])
  local tolerance = tonumber(ARGV[2 * i + 2])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  next[i] = tat + interval * cost
  local over = next[i] - now - tolerance
  if over > wait then wait = over end
end
if wait > 0 then return string.format('%.0f', wait) end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', next[i]), 'PX', math.floor((next[i] - now) / 1000) + 1000)
end
return '0'
",
    )
});

/// The name of the tenant's ingest quota, in its TAT key and its override's.
pub const INGEST: &str = "ingest";

/// `at` in µs since the epoch, the clock the quota scripts count in.
pub fn micros(at: time::OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: RedisConnection,
    keys: Keyspace,
}

impl RateLimiter {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    /// Admits `cost` units (one per event or request) under every `(key, quota)` at
    /// once, or answers how long until they would be admitted; a refusal uses none of
    /// them up.
    pub async fn admit(
        &self,
        quotas: &[(String, Quota)],
        now_us: u64,
        cost: u32,
    ) -> Result<(), Refused> {
        let mut invocation = ADMIT.prepare_invoke();
        invocation.arg(now_us).arg(cost);
        for (key, quota) in quotas {
            invocation
                .key(key)
                .arg(quota.interval_us())
                .arg(quota.tolerance_us());
        }
        let wait: String = invocation.invoke_async(&mut self.redis.clone()).await?;
        match wait.parse::<u64>().unwrap_or(0) {
            0 => Ok(()),
            wait_us => Err(Refused::Wait(Duration::from_micros(wait_us))),
        }
    }

    /// Admits one test delivery under the endpoint's and the tenant's quotas.
    pub async fn admit_test_delivery(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        per_endpoint: Quota,
        per_tenant: Quota,
        now_us: u64,
    ) -> Result<(), Refused> {
        let endpoint_scope = format!("endpoint:{endpoint_id}");
        self.admit(
            &[
                (
                    self.keys.quota(tenant, "test", Some(&endpoint_scope)),
                    per_endpoint,
                ),
                (self.keys.quota(tenant, "test", None), per_tenant),
            ],
            now_us,
            1,
        )
        .await
    }

    /// Admits `events` under the tenant's ingest quota, all or none.
    pub async fn admit_events(
        &self,
        tenant: &TenantId,
        quota: Quota,
        events: u32,
        now_us: u64,
    ) -> Result<(), Refused> {
        self.admit(
            &[(self.keys.quota(tenant, INGEST, None), quota)],
            now_us,
            events,
        )
        .await
    }

    /// Reserves one delivery slot; returns how long to wait for it (zero: go now).
    pub async fn reserve(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        per_second: u32,
        now_us: i64,
    ) -> Result<Duration, StoreError> {
        let slot_us = 1_000_000 / i64::from(per_second.max(1));
        let wait: String = RESERVE
            .key(self.keys.rate(tenant, endpoint_id))
            .arg(now_us)
            .arg(slot_us)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let wait_us = wait.parse::<i64>().unwrap_or(0).max(0);
        Ok(Duration::from_micros(wait_us.unsigned_abs()))
    }
}

/// Why [`RateLimiter::admit`] did not admit.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("over the quota; admitted again in {0:?}")]
    Wait(Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redis::RedisError> for Refused {
    fn from(error: redis::RedisError) -> Self {
        Self::Store(error.into())
    }
}

//! Per-endpoint rate limits shared by every deliverer replica.
//!
//! A generic cell rate algorithm: each delivery reserves the next free slot, one every
//! `1 / limit` seconds, and learns how long to wait for it. Waiting deliveries are spread
//! evenly instead of all retrying at the next window boundary.

use super::{Keyspace, StoreError};
use crate::domain::event::TenantId;
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

#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: RedisConnection,
    keys: Keyspace,
}

impl RateLimiter {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
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

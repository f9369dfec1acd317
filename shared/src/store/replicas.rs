//! Which deliverer replicas are up: each one that has its consumer connected refreshes
//! its entry every few seconds, and the operator overview counts the fresh ones.

use super::{Keyspace, StoreError};
use crate::store::RedisConnection;

/// How often a connected replica refreshes its entry.
pub const HEARTBEAT_MS: i64 = 5_000;
/// Entries older than this are dropped on the next heartbeat of any replica.
const FORGET_AFTER_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct ReplicaRegistry {
    redis: RedisConnection,
    keys: Keyspace,
}

impl ReplicaRegistry {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    pub async fn heartbeat(&self, replica: &str, now_ms: i64) -> Result<(), StoreError> {
        let () = redis::pipe()
            .zadd(self.keys.deliverers(), replica, now_ms)
            .ignore()
            .zrembyscore(self.keys.deliverers(), "-inf", now_ms - FORGET_AFTER_MS)
            .ignore()
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// A replica stopping on purpose leaves at once rather than by going stale.
    pub async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.deliverers())
            .arg(replica)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Replicas seen since `since_ms`, with when (ms), newest first.
    pub async fn seen_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let seen: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(self.keys.deliverers())
            .arg("+inf")
            .arg(since_ms)
            .arg("WITHSCORES")
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(seen)
    }
}

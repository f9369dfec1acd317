//! Sequence numbers per tenant and ordering key: 1, 2, … in the order they are asked
//! for. Ingest numbers each keyed event as it accepts it; deliverers number keyed
//! events published straight to the exchange without a number.

use super::{Keyspace, RedisConnection, StoreError};
use crate::domain::event::TenantId;

/// A counter outlives the order state it numbers for (8 days) by far, so a key that
/// pauses for a week does not start again at 1 behind its own last number.
const COUNTER_TTL_S: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct SequenceStore {
    redis: RedisConnection,
    keys: Keyspace,
}

impl SequenceStore {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    /// The next number of each key, in the order given (a key given twice gets two
    /// consecutive numbers): one round trip.
    pub async fn next(&self, tenant: &TenantId, keys: &[&str]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            let counter = self.keys.sequence(tenant, key);
            pipe.incr(&counter, 1)
                .expire(&counter, COUNTER_TTL_S)
                .ignore();
        }
        Ok(pipe.query_async(&mut self.redis.clone()).await?)
    }
}

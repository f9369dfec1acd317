//! The dead-letter index the API lists and replays from.
//!
//! RabbitMQ's `{prefix}.dead-letter` queue is the durable record. Every record is also
//! routed to `{prefix}.dead-letter.index`, whose consumer writes it here and acks only
//! after the write: an entry reaches the index or stays in that queue, never neither.
//! Per tenant, a hash holds the records and a sorted set orders them by time.

use super::health::to_ms;
use super::sealing::Sealer;
use super::{Keyspace, StoreError, open_json};
use crate::contract::DeadDelivery;
use crate::domain::erasure::ErasureTarget;
use crate::domain::event::TenantId;
use crate::store::RedisConnection;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use time::OffsetDateTime;

/// Removes one record and its reason count. KEYS: records, time index, reason counts,
/// reason by id. Used inside the scripts below (Lua has no imports).
const FORGET: &str = r"
local function forget(id)
  local removed = redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  local reason = redis.call('HGET', KEYS[4], id)
  if reason then
    redis.call('HDEL', KEYS[4], id)
    if redis.call('HINCRBY', KEYS[3], reason, -1) <= 0 then redis.call('HDEL', KEYS[3], reason) end
  end
  return removed
end
";

/// Stores one record and drops expired ones; the keys expire a retention after the
/// newest record, so a tenant's dead letters go even when no new one comes to trim them.
/// KEYS: records, time index, reason counts, reason by id.
/// ARGV: id, json, score (ms), cutoff (ms), reason, retention (ms).
static INDEX: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{FORGET}
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
  redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do forget(id) end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return #expired
"
    ))
});

/// KEYS as for INDEX; ARGV: id. Returns 1 if the record was there.
static REMOVE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{FORGET}\nreturn forget(ARGV[1])")));

/// Which dead letters a listing or a bulk replay covers.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    pub endpoint_id: Option<String>,
    /// Dead-lettered at or after (ms).
    pub since_ms: Option<i64>,
    /// Dead-lettered strictly before (ms); also the paging cursor.
    pub before_ms: Option<i64>,
    pub limit: usize,
}

/// How many index entries one listing may scan to fill a filtered page.
const MAX_SCAN: usize = 5000;
const SCAN_PAGE: usize = 200;

#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    redis: RedisConnection,
    keys: Keyspace,
    /// Records hold the event: sealed at rest.
    sealer: Arc<Sealer>,
}

impl DeadLetterStore {
    pub fn new(redis: RedisConnection, keys: Keyspace, sealer: Arc<Sealer>) -> Self {
        Self {
            redis,
            keys,
            sealer,
        }
    }

    pub async fn index(
        &self,
        record: &DeadDelivery,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let tenant = &record.event.tenant;
        let now = to_ms(OffsetDateTime::now_utc());
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let _: i64 = INDEX
            .key(self.keys.dead_letters(tenant))
            .key(self.keys.dead_letter_index(tenant))
            .key(self.keys.dead_letter_reasons(tenant))
            .key(self.keys.dead_letter_reason_of(tenant))
            .arg(&record.id)
            .arg(
                self.sealer
                    .seal(&serde_json::to_string(record).unwrap_or_default()),
            )
            .arg(to_ms(record.dead_lettered_at))
            .arg(cutoff)
            .arg(record.reason.as_str())
            .arg(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<DeadDelivery>, StoreError> {
        let key = self.keys.dead_letters(tenant);
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(id)
            .query_async(&mut self.redis.clone())
            .await?;
        raw.map(|stored| open_json(&self.sealer, &key, &stored))
            .transpose()
    }

    /// Newest first. Returns the page and the cursor for the next one.
    pub async fn list(
        &self,
        tenant: &TenantId,
        query: &DeadLetterQuery,
    ) -> Result<(Vec<DeadDelivery>, Option<i64>), StoreError> {
        let records_key = self.keys.dead_letters(tenant);
        let index_key = self.keys.dead_letter_index(tenant);
        let mut redis = self.redis.clone();
        let mut found = Vec::new();
        let mut max = query
            .before_ms
            .map_or_else(|| "+inf".to_owned(), |b| format!("({b}"));
        let min = query
            .since_ms
            .map_or_else(|| "-inf".to_owned(), |s| s.to_string());
        let mut scanned = 0;
        let mut last_scanned = None;
        while found.len() < query.limit && scanned < MAX_SCAN {
            let page: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index_key)
                .arg(&max)
                .arg(&min)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(SCAN_PAGE)
                .query_async(&mut redis)
                .await?;
            let Some((_, last_score)) = page.last() else {
                return Ok((found, None));
            };
            scanned += page.len();
            last_scanned = Some(*last_score);
            let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
            let records: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&records_key)
                .arg(&ids)
                .query_async(&mut redis)
                .await?;
            for ((_, score), json) in page.iter().zip(records) {
                let Some(json) = json else { continue };
                let record: DeadDelivery = open_json(&self.sealer, &records_key, &json)?;
                if query
                    .endpoint_id
                    .as_ref()
                    .is_none_or(|wanted| *wanted == record.endpoint_id)
                {
                    found.push(record);
                    if found.len() == query.limit {
                        return Ok((found, Some(*score)));
                    }
                }
            }
            // Entries sharing the boundary millisecond are rare (one per delivery and
            // time); a page that ends inside such a run may skip a sibling.
            max = format!("({last_score}");
        }
        // The scan budget ran out: the caller continues from where it stopped.
        Ok((found, last_scanned))
    }

    /// Removes a record after its replay was queued; false if it was already gone.
    pub async fn remove(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let removed: i64 = REMOVE
            .key(self.keys.dead_letters(tenant))
            .key(self.keys.dead_letter_index(tenant))
            .key(self.keys.dead_letter_reasons(tenant))
            .key(self.keys.dead_letter_reason_of(tenant))
            .arg(id)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(removed == 1)
    }

    /// Removes the tenant's dead letters indexed before `cutoff_ms`; returns how many.
    pub async fn trim_older(&self, tenant: &TenantId, cutoff_ms: i64) -> Result<u64, StoreError> {
        let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.dead_letter_index(tenant))
            .arg("-inf")
            .arg(cutoff_ms)
            .query_async(&mut self.redis.clone())
            .await?;
        let mut removed = 0;
        for id in old {
            if self.remove(tenant, &id).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the indexed dead letters of the events `target` covers (erased at `at_ms`).
    pub async fn erase(
        &self,
        tenant: &TenantId,
        target: &ErasureTarget,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let key = self.keys.dead_letters(tenant);
        let records: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.redis.clone())
            .await?;
        let mut erased = 0;
        for (id, stored) in records {
            let Ok(record) = open_json::<DeadDelivery>(&self.sealer, &key, &stored) else {
                continue;
            };
            if target.covers(&record.event, at_ms) && self.remove(tenant, &id).await? {
                erased += 1;
            }
        }
        Ok(erased)
    }

    /// How many of the tenant's indexed dead letters have each reason.
    pub async fn count_by_reason(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let counts: BTreeMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.keys.dead_letter_reasons(tenant))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(counts
            .into_iter()
            .filter_map(|(reason, n)| {
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| (reason, n))
            })
            .collect())
    }
}

//! The delivery history the API shows: every attempt per endpoint, and each recent
//! event's state at each of its endpoints.
//!
//! This is a log, not part of the delivery guarantee: the deliverer writes it in batches,
//! off the delivery path, and a write lost to a Redis outage loses history, never a
//! delivery. Retention is enforced on every write — by age, by count per endpoint and by
//! count of events per tenant — so it cannot grow without bound.

use super::sealing::Sealer;
use super::{Keyspace, StoreError, open_json, parse_json};
use crate::domain::erasure::ErasureTarget;
use crate::domain::event::{Event, TenantId};
use crate::store::RedisConnection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use time::OffsetDateTime;

/// One attempt, as `GET …/endpoints/{id}/attempts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Unique per attempt; also keeps equal-looking attempts apart in the sorted set.
    pub attempt_id: String,
    pub event_id: String,
    pub event_type: String,
    /// The event's `subject`, so an erasure finds the attempt without the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// 1 for the first attempt of this delivery.
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `success` or the failure's error class.
    pub outcome: String,
    pub status: Option<u16>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Delivered,
    /// Waiting in Redis: a retry after a failure, or held by a busy endpoint, an open
    /// circuit or a rate limit.
    Retrying,
    /// An ordered endpoint's delivery waiting for the key's earlier events (the one in
    /// `blocked_by`, or one not arrived yet when `blocked_by` is absent).
    HeldBehind,
    DeadLettered,
}

/// One event's delivery at one endpoint, as `GET …/events/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_reason: Option<String>,
    /// For `held_behind`: the event whose delivery goes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Activity {
    Attempt {
        tenant: TenantId,
        endpoint_id: String,
        record: AttemptRecord,
    },
    State {
        tenant: TenantId,
        event_id: String,
        /// The event as JSON, stored once per event.
        event: std::sync::Arc<str>,
        endpoint_id: String,
        state: DeliveryState,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub attempts_per_endpoint: u32,
    pub events_per_tenant: u32,
}

/// Drops the oldest events beyond the cap or the age limit, with their state hashes.
/// KEYS[1]: the events index. ARGV: cap, cutoff (ms), state key prefix.
static TRIM_EVENTS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cap = tonumber(ARGV[1])
local doomed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1000)
local excess = redis.call('ZCARD', KEYS[1]) - #doomed - cap
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], #doomed, #doomed + excess - 1)
  for _, id in ipairs(oldest) do doomed[#doomed + 1] = id end
end
if #doomed == 0 then return 0 end
-- The doomed are ranks 0..n-1 of the index: one range removal, and the state hashes
-- deleted a few hundred per call (each redis.call costs as much as a small DEL).
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #doomed - 1)
local states = {}
for i, id in ipairs(doomed) do states[i] = ARGV[3] .. id end
for first = 1, #states, 256 do
  redis.call('DEL', unpack(states, first, math.min(first + 255, #states)))
end
return #doomed
",
    )
});

/// `AttemptRecord::outcome` of a 2xx answer.
pub const SUCCESS: &str = "success";
/// Per-minute attempt counts are kept long enough for the overview's largest window.
const STATS_TTL_MS: i64 = 2 * 60 * 60 * 1000;
pub const MAX_STATS_WINDOW_MINUTES: i64 = 60;
/// Each endpoint's attempts are counted per ten minutes, for its chart.
pub const ENDPOINT_BUCKET_MINUTES: i64 = 10;
/// How far back an endpoint's chart reaches.
pub const MAX_ENDPOINT_CHART_HOURS: i64 = 6;
const ENDPOINT_STATS_TTL_MS: i64 = (MAX_ENDPOINT_CHART_HOURS + 1) * 60 * 60 * 1000;

/// One event's states gathered from a batch: the event as stored, and the latest state
/// at each of its endpoints.
struct EventStates<'a> {
    event: &'a str,
    endpoints: Vec<(&'a str, String)>,
}

#[derive(Debug, Clone)]
pub struct ActivityStore {
    redis: RedisConnection,
    keys: Keyspace,
    /// Event states hold the event, attempts the receiver's answer: sealed at rest.
    sealer: Arc<Sealer>,
}

impl ActivityStore {
    pub fn new(redis: RedisConnection, keys: Keyspace, sealer: Arc<Sealer>) -> Self {
        Self {
            redis,
            keys,
            sealer,
        }
    }

    /// Writes a batch — one pipeline per tenant, since a tenant's keys share a hash slot
    /// and a pipeline may not cross slots on Redis Cluster — then trims what it touched.
    pub async fn write(
        &self,
        batch: &[Activity],
        retention: Retention,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut by_tenant: BTreeMap<&TenantId, Vec<&Activity>> = BTreeMap::new();
        for activity in batch {
            let tenant = match activity {
                Activity::Attempt { tenant, .. } | Activity::State { tenant, .. } => tenant,
            };
            by_tenant.entry(tenant).or_default().push(activity);
        }
        for (tenant, activities) in by_tenant {
            self.write_tenant(tenant, &activities, retention, now)
                .await?;
        }
        Ok(())
    }

    async fn write_tenant(
        &self,
        tenant: &TenantId,
        batch: &[&Activity],
        retention: Retention,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let now_ms = super::health::to_ms(now);
        let max_age_ms = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(max_age_ms);
        // One command per key, not per entry: Redis's cost is mostly per command.
        let mut attempts: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        let mut states: BTreeMap<&str, EventStates<'_>> = BTreeMap::new();
        // (unix minute, delivered?) → attempts, for the operator overview's rates.
        let mut stats: BTreeMap<(i64, bool), i64> = BTreeMap::new();
        // (bucket, endpoint, delivered?) → attempts, for each endpoint's chart.
        let mut endpoint_stats: BTreeMap<(i64, &str, bool), i64> = BTreeMap::new();
        for activity in batch {
            match activity {
                Activity::Attempt {
                    endpoint_id,
                    record,
                    ..
                } => {
                    let json =
                        serde_json::to_string(&self.sealed_attempt(record)).unwrap_or_default();
                    attempts
                        .entry(self.keys.attempts(tenant, endpoint_id))
                        .or_default()
                        .push((super::health::to_ms(record.at), json));
                    let minute = record.at.unix_timestamp().div_euclid(60);
                    let delivered = record.outcome == SUCCESS;
                    *stats.entry((minute, delivered)).or_default() += 1;
                    let bucket = minute.div_euclid(ENDPOINT_BUCKET_MINUTES);
                    *endpoint_stats
                        .entry((bucket, endpoint_id.as_str(), delivered))
                        .or_default() += 1;
                }
                Activity::State {
                    event_id,
                    event,
                    endpoint_id,
                    state,
                    ..
                } => {
                    // Later states of the same delivery in the batch replace earlier ones.
                    let json = serde_json::to_string(state).unwrap_or_default();
                    let entry = states.entry(event_id).or_insert_with(|| EventStates {
                        event,
                        endpoints: Vec::new(),
                    });
                    entry.endpoints.retain(|(id, _)| id != endpoint_id);
                    entry.endpoints.push((endpoint_id, json));
                }
            }
        }
        let mut pipe = redis::pipe();
        for (key, entries) in &attempts {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(key);
            for (score, json) in entries {
                zadd.arg(score).arg(json);
            }
            pipe.add_command(zadd).ignore();
        }
        if !states.is_empty() {
            let mut index = redis::cmd("ZADD");
            index.arg(self.keys.events_index(tenant)).arg("NX");
            for (event_id, entry) in &states {
                let key = self.keys.event_state(tenant, event_id);
                let mut hset = redis::cmd("HSET");
                hset.arg(&key)
                    .arg("event")
                    .arg(self.sealer.seal(entry.event));
                for (endpoint_id, json) in &entry.endpoints {
                    hset.arg(*endpoint_id).arg(json);
                }
                pipe.add_command(hset).ignore();
                pipe.pexpire(&key, max_age_ms).ignore();
                index.arg(now_ms).arg(*event_id);
            }
            pipe.add_command(index).ignore();
        }
        let cap = i64::from(retention.attempts_per_endpoint);
        for key in attempts.keys() {
            pipe.zrembyscore(key, "-inf", cutoff).ignore();
            pipe.zremrangebyrank(key, 0, -(cap + 1) as isize).ignore();
            pipe.pexpire(key, max_age_ms).ignore();
        }
        for ((minute, delivered), count) in stats {
            let key = self.keys.attempt_stats(tenant, minute);
            let field = if delivered { "delivered" } else { "failed" };
            pipe.hincr(&key, field, count).ignore();
            pipe.pexpire(&key, STATS_TTL_MS).ignore();
        }
        for ((bucket, endpoint_id, delivered), count) in endpoint_stats {
            let key = self.keys.endpoint_stats(tenant, bucket);
            let outcome = if delivered { "delivered" } else { "failed" };
            pipe.hincr(&key, format!("{endpoint_id}:{outcome}"), count)
                .ignore();
            pipe.pexpire(&key, ENDPOINT_STATS_TTL_MS).ignore();
        }
        let mut redis = self.redis.clone();
        let () = pipe.query_async(&mut redis).await?;
        if !states.is_empty() {
            let _: i64 = TRIM_EVENTS
                .key(self.keys.events_index(tenant))
                .arg(retention.events_per_tenant)
                .arg(cutoff)
                .arg(self.keys.event_state_prefix(tenant))
                .invoke_async(&mut redis)
                .await?;
        }
        Ok(())
    }

    /// Attempts per minute over the last `minutes` whole minutes up to `now` (the
    /// current one included), oldest first: (minute start, delivered, failed).
    pub async fn attempt_series(
        &self,
        tenant: &TenantId,
        now: OffsetDateTime,
        minutes: i64,
    ) -> Result<Vec<(i64, u64, u64)>, StoreError> {
        let current = now.unix_timestamp().div_euclid(60);
        let first = current - minutes.clamp(1, MAX_STATS_WINDOW_MINUTES) + 1;
        let mut pipe = redis::pipe();
        for minute in first..=current {
            pipe.cmd("HMGET")
                .arg(self.keys.attempt_stats(tenant, minute))
                .arg("delivered")
                .arg("failed");
        }
        let buckets: Vec<(Option<u64>, Option<u64>)> =
            pipe.query_async(&mut self.redis.clone()).await?;
        Ok((first..=current)
            .zip(buckets)
            .map(|(minute, (delivered, failed))| {
                (minute * 60, delivered.unwrap_or(0), failed.unwrap_or(0))
            })
            .collect())
    }

    /// One endpoint's attempts per [`ENDPOINT_BUCKET_MINUTES`] over the last `hours`
    /// (at most [`MAX_ENDPOINT_CHART_HOURS`]) up to `now`, oldest first: (bucket start
    /// in unix seconds, delivered, failed).
    pub async fn endpoint_series(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        now: OffsetDateTime,
        hours: i64,
    ) -> Result<Vec<(i64, u64, u64)>, StoreError> {
        let current = now
            .unix_timestamp()
            .div_euclid(60 * ENDPOINT_BUCKET_MINUTES);
        let count = hours.clamp(1, MAX_ENDPOINT_CHART_HOURS) * 60 / ENDPOINT_BUCKET_MINUTES;
        let first = current - count + 1;
        let mut pipe = redis::pipe();
        for bucket in first..=current {
            pipe.cmd("HMGET")
                .arg(self.keys.endpoint_stats(tenant, bucket))
                .arg(format!("{endpoint_id}:delivered"))
                .arg(format!("{endpoint_id}:failed"));
        }
        let buckets: Vec<(Option<u64>, Option<u64>)> =
            pipe.query_async(&mut self.redis.clone()).await?;
        Ok((first..=current)
            .zip(buckets)
            .map(|(bucket, (delivered, failed))| {
                (
                    bucket * 60 * ENDPOINT_BUCKET_MINUTES,
                    delivered.unwrap_or(0),
                    failed.unwrap_or(0),
                )
            })
            .collect())
    }

    /// Newest first; `before` (exclusive, ms) pages back.
    pub async fn attempts(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        limit: usize,
        before_ms: Option<i64>,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        let key = self.keys.attempts(tenant, endpoint_id);
        let max = before_ms.map_or_else(|| "+inf".to_owned(), |b| format!("({b}"));
        let raw: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(&key)
            .arg(max)
            .arg("-inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        raw.iter()
            .map(|stored| self.open_attempt(&key, stored))
            .collect()
    }

    /// An attempt as stored: what may be personal data — the receiver's answer, the
    /// event's subject — sealed; the rest (ids, times, statuses) plain, which keeps the
    /// common attempt, a 2xx without a body, free of sealing.
    fn sealed_attempt(&self, record: &AttemptRecord) -> AttemptRecord {
        AttemptRecord {
            response_excerpt: record
                .response_excerpt
                .as_deref()
                .map(|excerpt| self.sealer.seal(excerpt)),
            subject: record
                .subject
                .as_deref()
                .map(|subject| self.sealer.seal(subject)),
            ..record.clone()
        }
    }

    fn open_attempt(&self, key: &str, stored: &str) -> Result<AttemptRecord, StoreError> {
        let mut record: AttemptRecord = open_json(&self.sealer, key, stored)?;
        let open = |sealed: String| {
            self.sealer
                .open(&sealed)
                .map_err(|source| StoreError::Sealed {
                    key: key.to_owned(),
                    source,
                })
        };
        record.response_excerpt = record.response_excerpt.map(open).transpose()?;
        record.subject = record.subject.map(open).transpose()?;
        Ok(record)
    }

    /// Removes the tenant's event states and attempts older than `cutoff_ms` (a tenant
    /// retention shorter than the installation's); returns how many states went.
    pub async fn trim_older(
        &self,
        tenant: &TenantId,
        cutoff_ms: i64,
        endpoint_ids: &[String],
    ) -> Result<u64, StoreError> {
        let mut redis = self.redis.clone();
        let index = self.keys.events_index(tenant);
        let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(cutoff_ms)
            .query_async(&mut redis)
            .await?;
        let mut pipe = redis::pipe();
        for id in &old {
            pipe.del(self.keys.event_state(tenant, id)).ignore();
        }
        pipe.zrembyscore(&index, "-inf", cutoff_ms).ignore();
        for endpoint_id in endpoint_ids {
            pipe.zrembyscore(self.keys.attempts(tenant, endpoint_id), "-inf", cutoff_ms)
                .ignore();
        }
        let () = pipe.query_async(&mut redis).await?;
        Ok(old.len() as u64)
    }

    /// Removes the stored states of the events `target` covers (erased at `at_ms`) and
    /// the attempts of those events at `endpoint_ids`; returns (events, attempts).
    pub async fn erase(
        &self,
        tenant: &TenantId,
        target: &ErasureTarget,
        at_ms: i64,
        endpoint_ids: &[String],
    ) -> Result<(u64, u64), StoreError> {
        let mut redis = self.redis.clone();
        let index = self.keys.events_index(tenant);
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        let mut erased_ids = std::collections::HashSet::new();
        for page in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in page {
                pipe.hget(self.keys.event_state(tenant, id), "event");
            }
            let events: Vec<Option<String>> = pipe.query_async(&mut redis).await?;
            let mut delete = redis::pipe();
            let mut deleting = false;
            for (id, stored) in page.iter().zip(events) {
                let key = self.keys.event_state(tenant, id);
                let Some(stored) = stored else { continue };
                // An event that no longer reads is not one this erasure can judge.
                let Ok(event) = open_json::<Event>(&self.sealer, &key, &stored) else {
                    continue;
                };
                if target.covers(&event, at_ms) {
                    delete.del(&key).ignore();
                    delete.zrem(&index, id).ignore();
                    erased_ids.insert(id.clone());
                    deleting = true;
                }
            }
            if deleting {
                let () = delete.query_async(&mut redis).await?;
            }
        }
        let mut attempts = 0;
        for endpoint_id in endpoint_ids {
            let key = self.keys.attempts(tenant, endpoint_id);
            let stored: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut redis)
                .await?;
            let covered: Vec<&String> = stored
                .iter()
                .filter(|member| {
                    self.open_attempt(&key, member).is_ok_and(|record| {
                        erased_ids.contains(&record.event_id)
                            || match target {
                                ErasureTarget::Event(id) => record.event_id == *id,
                                ErasureTarget::Subject(subject) => {
                                    record.subject.as_deref() == Some(subject.as_str())
                                        && super::health::to_ms(record.at) <= at_ms
                                }
                            }
                    })
                })
                .collect();
            if !covered.is_empty() {
                let removed: u64 = redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&covered)
                    .query_async(&mut redis)
                    .await?;
                attempts += removed;
            }
        }
        Ok((erased_ids.len() as u64, attempts))
    }

    /// The event and its state at each endpoint, if it is still within retention.
    pub async fn event(
        &self,
        tenant: &TenantId,
        event_id: &str,
    ) -> Result<Option<(Value, BTreeMap<String, DeliveryState>)>, StoreError> {
        let key = self.keys.event_state(tenant, event_id);
        let mut fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.redis.clone())
            .await?;
        let Some(event) = fields.remove("event") else {
            return Ok(None);
        };
        let event: Value = open_json(&self.sealer, &key, &event)?;
        let states = fields
            .into_iter()
            .map(|(endpoint, json)| Ok((endpoint, parse_json(&key, &json)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Some((event, states)))
    }
}

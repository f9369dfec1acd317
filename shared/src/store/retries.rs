//! Deliveries waiting for their next attempt: a sorted set of delivery id → due time (ms)
//! beside a hash of delivery id → task, under one hash tag.
//!
//! Claiming pushes a task's due time forward by a lease instead of removing it, so a
//! deliverer that dies mid-attempt loses nothing: the lease runs out and another replica
//! claims the task. The lease's due time doubles as a fencing token: completing or
//! rescheduling only takes effect while the score is still the one this claim set, so a
//! worker whose lease expired cannot undo the work of the one that took over.

use super::{Keyspace, StoreError};
use crate::contract::{PendingDelivery, RetryTask};
use crate::store::RedisConnection;
use std::collections::HashMap;

const CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(ids) do
  local task = redis.call('HGET', KEYS[2], id)
  if task then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(claimed, id)
    table.insert(claimed, task)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return claimed
";

const COMPLETE: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

const RESCHEDULE: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
";

/// Brings held tasks forward to ARGV[1], each only while it is still due at the time
/// it was held until (no claim since). KEYS[1]: the due set. ARGV[2..]: task id, held
/// until (ms), in pairs.
const WAKE: &str = r"
local now = tonumber(ARGV[1])
local woken = 0
for i = 2, #ARGV, 2 do
  local due = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if due and due == tonumber(ARGV[i + 1]) and due > now then
    redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
    woken = woken + 1
  end
end
return woken
";

/// A task handed to one worker until `token` (its lease's end, in ms) passes.
#[derive(Debug)]
pub struct Claimed {
    pub id: String,
    pub token: i64,
    pub task: Result<PendingDelivery, UnreadableTask>,
}

/// A stored task that this deliverer cannot read, with its raw text for the dead letter.
#[derive(Debug, thiserror::Error)]
#[error("unreadable retry task")]
pub struct UnreadableTask {
    pub raw: String,
    #[source]
    pub source: serde_json::Error,
}

#[derive(Debug, Clone)]
pub struct RetryStore {
    redis: RedisConnection,
    keys: Keyspace,
}

impl RetryStore {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    /// Stores new tasks, each due at its time (unix ms). Idempotent: a delivery id is
    /// `{event}:{endpoint}`, so a redelivered message overwrites rather than duplicates.
    pub async fn schedule(&self, tasks: &[(PendingDelivery, i64)]) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (task, due_ms) in tasks {
            let id = task.id();
            pipe.hset(self.keys.retry_tasks(), &id, encode(task))
                .ignore();
            pipe.zadd(self.keys.retry_due(), &id, *due_ms).ignore();
        }
        let () = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Claims up to `limit` tasks due at `now_ms`, leasing them until `now_ms + lease_ms`.
    pub async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let token = now_ms + lease_ms;
        let flat: Vec<String> = redis::Script::new(CLAIM)
            .key(self.keys.retry_due())
            .key(self.keys.retry_tasks())
            .arg(now_ms)
            .arg(token)
            .arg(limit)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(flat
            .chunks_exact(2)
            .map(|pair| Claimed {
                id: pair[0].clone(),
                token,
                task: decode(&pair[1]),
            })
            .collect())
    }

    /// Removes a finished task; false if the lease was lost to another worker.
    pub async fn complete(&self, id: &str, token: i64) -> Result<bool, StoreError> {
        let done: i64 = redis::Script::new(COMPLETE)
            .key(self.keys.retry_due())
            .key(self.keys.retry_tasks())
            .arg(id)
            .arg(token)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(done == 1)
    }

    /// Stores the task's new state, due at `due_ms`; false if the lease was lost.
    pub async fn reschedule(
        &self,
        id: &str,
        token: i64,
        task: &PendingDelivery,
        due_ms: i64,
    ) -> Result<bool, StoreError> {
        let done: i64 = redis::Script::new(RESCHEDULE)
            .key(self.keys.retry_due())
            .key(self.keys.retry_tasks())
            .arg(id)
            .arg(token)
            .arg(due_ms)
            .arg(encode(task))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(done == 1)
    }

    /// Makes the deliveries held back from an endpoint — deferred without an attempt by
    /// its open circuit or its busy slots — due at `now_ms`. Called when a probe finds
    /// the endpoint answering again, or the endpoint is re-enabled, so its backlog goes
    /// out at once instead of on each delivery's own timer (up to the deliverer's
    /// `max_hold`). Failed attempts keep their retry schedule.
    ///
    /// A held delivery is brought forward only while the pool has it due at the time it
    /// was held until: one that a worker has claimed since (the probe's own, when it was
    /// a held retry) is left to that worker. The scan reads the whole pool (task ids end
    /// in the endpoint id), which is fine once per recovery.
    pub async fn wake_held(&self, endpoint_id: &str, now_ms: i64) -> Result<u64, StoreError> {
        let mut redis = self.redis.clone();
        let pattern = format!("*:{endpoint_id}");
        let mut woken = 0;
        let mut cursor = 0_u64;
        let script = redis::Script::new(WAKE);
        loop {
            let (next, tasks): (u64, HashMap<String, String>) = redis::cmd("HSCAN")
                .arg(self.keys.retry_tasks())
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut redis)
                .await?;
            let mut wake = script.prepare_invoke();
            wake.key(self.keys.retry_due()).arg(now_ms);
            let mut held = 0;
            for (id, json) in &tasks {
                if let Ok(task) = decode(json)
                    && task.endpoint_id == endpoint_id
                    && let Some(until) = task.held_until_ms
                {
                    wake.arg(id).arg(until);
                    held += 1;
                }
            }
            if held > 0 {
                let count: u64 = wake.invoke_async(&mut redis).await?;
                woken += count;
            }
            if next == 0 {
                return Ok(woken);
            }
            cursor = next;
        }
    }

    /// (due now, due later): the backlog that the retry gauges report.
    pub async fn backlog(&self, now_ms: i64) -> Result<(u64, u64), StoreError> {
        let (due, total): (u64, u64) = redis::pipe()
            .zcount(self.keys.retry_due(), "-inf", now_ms)
            .zcard(self.keys.retry_due())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((due, total.saturating_sub(due)))
    }
}

fn encode(task: &PendingDelivery) -> String {
    // Strings, numbers and JSON values: serializing cannot fail.
    serde_json::to_string(&RetryTask::DeliveryV1(task.clone())).unwrap_or_default()
}

fn decode(json: &str) -> Result<PendingDelivery, UnreadableTask> {
    match serde_json::from_str(json) {
        Ok(RetryTask::DeliveryV1(task)) => Ok(task),
        Err(source) => Err(UnreadableTask {
            raw: json.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::decode;
    use crate::telemetry::error_chain;

    #[test]
    fn an_unreadable_task_keeps_its_text_and_says_why() {
        let unreadable = decode(r#"{"type":"delivery_v9"}"#).expect_err("unknown version");
        assert_eq!(unreadable.raw, r#"{"type":"delivery_v9"}"#);
        let error = error_chain(&unreadable);
        assert!(
            error.starts_with("unreadable retry task: unknown variant"),
            "{error}"
        );
    }
}

//! Deliveries waiting for their next attempt, in lanes: one per tenant and priority, so
//! that one tenant's millions of held or due retries cannot crowd out another's.
//!
//! The pool is split into [`SHARDS`] shards by tenant, each under its own hash tag
//! (`{retry:N}`), so on Redis Cluster the pool spreads over the nodes. A shard holds a
//! hash of delivery id → task, a sorted set per lane (delivery id → due time, ms), and
//! per priority an index of lanes (lane → when it is next served). Claiming serves the
//! due lanes of a shard round-robin: a few tasks from each, then each served lane goes
//! to the back of the round, so a tenant with a huge due backlog gets its turn like one
//! with a single task. Bulk lanes get what real-time lanes leave of a claim, and never
//! less than a floor share.
//!
//! Claiming pushes a task's due time forward by a lease instead of removing it, so a
//! deliverer that dies mid-attempt loses nothing: the lease runs out and another replica
//! claims the task. The lease's due time doubles as a fencing token: completing or
//! rescheduling only takes effect while the score is still the one this claim set, so a
//! worker whose lease expired cannot undo the work of the one that took over.
//!
//! The claim script reads lane keys it finds in the index rather than receiving them in
//! `KEYS`: every one shares the shard's hash tag, so it stays on one Cluster slot.

use super::{Keyspace, StoreError};
use crate::contract::{PendingDelivery, RetryTask};
use crate::domain::event::{Priority, TenantId};
use crate::store::RedisConnection;
use crate::store::sealing::{SealError, Sealer};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// Shards of the retry pool. Fixed: a task's shard follows from its tenant, and changing
/// the count would strand the tasks of every tenant that moved.
pub const SHARDS: u16 = 16;

/// KEYS[1]: tasks, KEYS[2]: real-time index, KEYS[3]: bulk index.
/// ARGV: now, lease token, limit, lane key prefix, bulk floor.
/// Returns lane, id, task triples.
const CLAIM: &str = r"
local now, token, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local prefix, floor = ARGV[4], tonumber(ARGV[5])
local claimed = {}
local function serve(index, budget)
  if budget <= 0 then return 0 end
  local lanes = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, budget)
  if #lanes == 0 then return 0 end
  local taken = 0
  -- Equal turns; what a short lane leaves goes to the lanes that had more, in passes.
  local active = lanes
  while taken < budget and #active > 0 do
    local per_lane = math.max(1, math.floor((budget - taken) / #active))
    local more = {}
    for _, lane in ipairs(active) do
      if taken >= budget then break end
      local key = prefix .. ':' .. lane
      local want = math.min(per_lane, budget - taken)
      local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, want)
      for _, id in ipairs(ids) do
        local task = redis.call('HGET', KEYS[1], id)
        if task then
          redis.call('ZADD', key, token, id)
          table.insert(claimed, lane)
          table.insert(claimed, id)
          table.insert(claimed, task)
          taken = taken + 1
        else
          redis.call('ZREM', key, id)
        end
      end
      if #ids == want then table.insert(more, lane) end
    end
    active = more
  end
  for _, lane in ipairs(lanes) do
    local key = prefix .. ':' .. lane
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first == 0 then
      redis.call('ZREM', index, lane)
    else
      local next_due = tonumber(first[2])
      -- Still due after its turn: to the back of the round (behind every lane due
      -- before now), and still due for the next claim.
      if next_due <= now then next_due = now end
      redis.call('ZADD', index, next_due, lane)
    end
  end
  return taken
end
local realtime = serve(KEYS[2], limit - floor)
local bulk = serve(KEYS[3], limit - realtime)
if realtime + bulk < limit then serve(KEYS[2], limit - realtime - bulk) end
return claimed
";

/// KEYS[1]: tasks, KEYS[2]: the lane, KEYS[3]: its index. ARGV: id, token.
const COMPLETE: &str = r"
if redis.call('ZSCORE', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], string.match(KEYS[2], ':lane:(.*)$'))
end
return 1
";

/// KEYS as COMPLETE. ARGV: id, token, new due time, task.
const RESCHEDULE: &str = r"
if redis.call('ZSCORE', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local lane = string.match(KEYS[2], ':lane:(.*)$')
redis.call('ZADD', KEYS[3], 'LT', ARGV[3], lane)
return 1
";

/// Brings held tasks forward to ARGV[1], each only while it is still due at the time
/// it was held until (no claim since). KEYS[1]: the lane, KEYS[2]: its index.
/// ARGV[2..]: task id, held until (ms), in pairs.
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
if woken > 0 then
  local lane = string.match(KEYS[1], ':lane:(.*)$')
  redis.call('ZADD', KEYS[2], 'LT', now, lane)
end
return woken
";

/// KEYS[1]: tasks, KEYS[2], KEYS[3]: the real-time and bulk indexes. ARGV: now, lane
/// key prefix, lanes read at most. Returns tasks in the shard, then per priority: due
/// tasks, the oldest due time (or -1).
const BACKLOG: &str = r"
local now, prefix, most = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local result = { redis.call('HLEN', KEYS[1]) }
for i = 2, 3 do
  local due, oldest = 0, -1
  local lanes = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, most)
  for _, lane in ipairs(lanes) do
    local key = prefix .. ':' .. lane
    due = due + redis.call('ZCOUNT', key, '-inf', now)
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first > 0 then
      local at = tonumber(first[2])
      if at <= now and (oldest < 0 or at < oldest) then oldest = at end
    end
  end
  table.insert(result, due)
  table.insert(result, oldest)
end
return result
";

/// Lanes of one shard read per backlog refresh: a bound on the script's work when
/// thousands of tenants have due retries (the figures then undercount).
const BACKLOG_LANES: usize = 2_000;

/// One tenant's deliveries of one priority: the unit the pool serves round-robin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lane {
    pub shard: u16,
    /// `{priority}:{tenant}`.
    pub name: String,
}

impl Lane {
    pub fn of(tenant: &TenantId, priority: Priority) -> Self {
        Self {
            shard: shard_of(tenant.as_str()),
            name: format!("{}:{}", priority.as_str(), tenant.as_str()),
        }
    }

    pub fn of_task(task: &PendingDelivery) -> Self {
        Self::of(&task.event.tenant, task.event.priority)
    }

    pub fn priority(&self) -> Priority {
        if self.name.starts_with("bulk:") {
            Priority::Bulk
        } else {
            Priority::Realtime
        }
    }

    pub fn tenant(&self) -> &str {
        self.name.split_once(':').map_or("", |(_, tenant)| tenant)
    }
}

/// A tenant's shard: FNV-1a, spelled out because the value must never change between
/// versions or processes (the standard library's hashers promise neither).
pub fn shard_of(tenant: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tenant.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    u16::try_from(hash % u32::from(SHARDS)).unwrap_or(0)
}

/// A task handed to one worker until `token` (its lease's end, in ms) passes.
#[derive(Debug)]
pub struct Claimed {
    pub id: String,
    pub lane: Lane,
    pub token: i64,
    pub task: Result<PendingDelivery, UnreadableTask>,
}

/// A stored task that this deliverer cannot read, with its raw text for the dead letter.
#[derive(Debug, thiserror::Error)]
#[error("unreadable retry task")]
pub struct UnreadableTask {
    /// As stored (sealed when it was written sealed).
    pub raw: String,
    #[source]
    pub source: TaskError,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Json(serde_json::Error),
    /// Sealed under a key no longer configured, or damaged.
    #[error(transparent)]
    Sealed(SealError),
}

/// What the pool holds, for the gauges and the operator overview.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub total: u64,
    pub due_realtime: u64,
    pub due_bulk: u64,
    /// The due time (unix ms) of the task that has waited longest past it, per priority.
    pub oldest_due_realtime_ms: Option<i64>,
    pub oldest_due_bulk_ms: Option<i64>,
}

impl Backlog {
    pub fn due(&self) -> u64 {
        self.due_realtime + self.due_bulk
    }

    /// Tasks due later.
    pub fn waiting(&self) -> u64 {
        self.total.saturating_sub(self.due())
    }

    /// Seconds the longest-waiting due task of each priority has been due at `now_ms`
    /// (0 when none is due): `[realtime, bulk]`.
    pub fn oldest_waits_s(&self, now_ms: i64) -> [(Priority, f64); 2] {
        // Milliseconds as seconds: precision is ample.
        #[allow(clippy::cast_precision_loss)]
        let waited =
            |oldest: Option<i64>| oldest.map_or(0.0, |due| (now_ms - due).max(0) as f64 / 1000.0);
        [
            (Priority::Realtime, waited(self.oldest_due_realtime_ms)),
            (Priority::Bulk, waited(self.oldest_due_bulk_ms)),
        ]
    }
}

/// A lane's size, for the tenants with the largest backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSize {
    pub tenant: String,
    pub priority: Priority,
    pub tasks: u64,
}

#[derive(Debug, Clone)]
pub struct RetryStore {
    redis: RedisConnection,
    keys: Keyspace,
    /// Tasks hold the event and its rendered payload: sealed at rest.
    sealer: Arc<Sealer>,
}

impl RetryStore {
    pub fn new(redis: RedisConnection, keys: Keyspace, sealer: Arc<Sealer>) -> Self {
        Self {
            redis,
            keys,
            sealer,
        }
    }

    pub(crate) fn keys(&self) -> &Keyspace {
        &self.keys
    }

    pub(crate) fn redis(&self) -> RedisConnection {
        self.redis.clone()
    }

    pub(crate) fn lane_key(&self, lane: &Lane) -> String {
        self.keys.retry_lane(lane.shard, &lane.name)
    }

    pub(crate) fn index_key(&self, lane: &Lane) -> String {
        self.keys.retry_lanes(lane.shard, lane.priority().as_str())
    }

    /// Stores new tasks, each due at its time (unix ms). Idempotent: a delivery id is
    /// `{event}:{endpoint}`, so a redelivered message overwrites rather than duplicates.
    /// One transaction per shard (a transaction cannot span Cluster slots); tasks of one
    /// message share a tenant, so that is one transaction.
    pub async fn schedule(&self, tasks: &[(PendingDelivery, i64)]) -> Result<(), StoreError> {
        let mut by_shard: HashMap<u16, Vec<(Lane, &PendingDelivery, i64)>> = HashMap::new();
        for (task, due_ms) in tasks {
            let lane = Lane::of_task(task);
            by_shard
                .entry(lane.shard)
                .or_default()
                .push((lane, task, *due_ms));
        }
        for (shard, tasks) in by_shard {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (lane, task, due_ms) in tasks {
                let id = task.id();
                pipe.hset(self.keys.retry_tasks(shard), &id, self.encode(task))
                    .ignore();
                pipe.zadd(self.lane_key(&lane), &id, due_ms).ignore();
                pipe.cmd("ZADD")
                    .arg(self.index_key(&lane))
                    .arg("LT")
                    .arg(due_ms)
                    .arg(&lane.name)
                    .ignore();
            }
            let () = pipe.query_async(&mut self.redis.clone()).await?;
        }
        Ok(())
    }

    /// Claims up to `limit` tasks due at `now_ms` from one shard, leasing them until
    /// `now_ms + lease_ms`: due lanes round-robin, real-time first, bulk lanes with what
    /// is left and at least `bulk_floor` of the limit when they have due tasks.
    pub async fn claim(
        &self,
        shard: u16,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
        bulk_floor: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let token = now_ms + lease_ms;
        let flat: Vec<String> = redis::Script::new(CLAIM)
            .key(self.keys.retry_tasks(shard))
            .key(self.keys.retry_lanes(shard, Priority::Realtime.as_str()))
            .key(self.keys.retry_lanes(shard, Priority::Bulk.as_str()))
            .arg(now_ms)
            .arg(token)
            .arg(limit)
            .arg(self.keys.retry_lane_prefix(shard))
            .arg(bulk_floor.min(limit))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(flat
            .chunks_exact(3)
            .map(|triple| Claimed {
                lane: Lane {
                    shard,
                    name: triple[0].clone(),
                },
                id: triple[1].clone(),
                token,
                task: self.decode(&triple[2]),
            })
            .collect())
    }

    /// Removes a finished task; false if the lease was lost to another worker.
    pub async fn complete(&self, lane: &Lane, id: &str, token: i64) -> Result<bool, StoreError> {
        let done: i64 = redis::Script::new(COMPLETE)
            .key(self.keys.retry_tasks(lane.shard))
            .key(self.lane_key(lane))
            .key(self.index_key(lane))
            .arg(id)
            .arg(token)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(done == 1)
    }

    /// Stores the task's new state, due at `due_ms`; false if the lease was lost.
    pub async fn reschedule(
        &self,
        lane: &Lane,
        id: &str,
        token: i64,
        task: &PendingDelivery,
        due_ms: i64,
    ) -> Result<bool, StoreError> {
        let done: i64 = redis::Script::new(RESCHEDULE)
            .key(self.keys.retry_tasks(lane.shard))
            .key(self.lane_key(lane))
            .key(self.index_key(lane))
            .arg(id)
            .arg(token)
            .arg(due_ms)
            .arg(self.encode(task))
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
    /// a held retry) is left to that worker. The scan reads the tenant's shard (task ids
    /// end in the endpoint id), which is fine once per recovery.
    pub async fn wake_held(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut redis = self.redis.clone();
        let shard = shard_of(tenant.as_str());
        let pattern = format!("*:{endpoint_id}");
        let mut woken = 0;
        let mut cursor = 0_u64;
        loop {
            let (next, tasks): (u64, HashMap<String, String>) = redis::cmd("HSCAN")
                .arg(self.keys.retry_tasks(shard))
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut redis)
                .await?;
            let mut held: HashMap<Lane, Vec<(String, i64)>> = HashMap::new();
            for (id, json) in tasks {
                if let Ok(task) = self.decode(&json)
                    && task.endpoint_id == endpoint_id
                    && let Some(until) = task.held_until_ms
                {
                    held.entry(Lane::of_task(&task))
                        .or_default()
                        .push((id, until));
                }
            }
            for (lane, tasks) in held {
                let script = redis::Script::new(WAKE);
                let mut wake = script.prepare_invoke();
                wake.key(self.lane_key(&lane))
                    .key(self.index_key(&lane))
                    .arg(now_ms);
                for (id, until) in tasks {
                    wake.arg(id).arg(until);
                }
                let count: u64 = wake.invoke_async(&mut redis).await?;
                woken += count;
            }
            if next == 0 {
                return Ok(woken);
            }
            cursor = next;
        }
    }

    /// What the pool holds and how long its due tasks have waited, over every shard.
    pub async fn backlog(&self, now_ms: i64) -> Result<Backlog, StoreError> {
        let mut backlog = Backlog::default();
        let older = |current: Option<i64>, found: i64| match current {
            _ if found < 0 => current,
            Some(current) if current <= found => Some(current),
            _ => Some(found),
        };
        for shard in 0..SHARDS {
            let figures: Vec<i64> = redis::Script::new(BACKLOG)
                .key(self.keys.retry_tasks(shard))
                .key(self.keys.retry_lanes(shard, Priority::Realtime.as_str()))
                .key(self.keys.retry_lanes(shard, Priority::Bulk.as_str()))
                .arg(now_ms)
                .arg(self.keys.retry_lane_prefix(shard))
                .arg(BACKLOG_LANES)
                .invoke_async(&mut self.redis.clone())
                .await?;
            let figure = |i: usize| figures.get(i).copied().unwrap_or(0);
            let count = |i: usize| u64::try_from(figure(i)).unwrap_or(0);
            backlog.total += count(0);
            backlog.due_realtime += count(1);
            backlog.oldest_due_realtime_ms = older(backlog.oldest_due_realtime_ms, figure(2));
            backlog.due_bulk += count(3);
            backlog.oldest_due_bulk_ms = older(
                backlog.oldest_due_bulk_ms,
                figures.get(4).copied().unwrap_or(-1),
            );
        }
        Ok(backlog)
    }

    /// The `limit` lanes holding the most tasks (due or not), largest first, from at
    /// most `BACKLOG_LANES` lanes per shard and priority.
    pub async fn largest_lanes(&self, limit: usize) -> Result<Vec<LaneSize>, StoreError> {
        let mut redis = self.redis.clone();
        let mut sizes = Vec::new();
        for shard in 0..SHARDS {
            for priority in [Priority::Realtime, Priority::Bulk] {
                let lanes: Vec<String> = redis::cmd("ZRANGE")
                    .arg(self.keys.retry_lanes(shard, priority.as_str()))
                    .arg(0)
                    .arg(BACKLOG_LANES - 1)
                    .query_async(&mut redis)
                    .await?;
                if lanes.is_empty() {
                    continue;
                }
                let mut pipe = redis::pipe();
                for lane in &lanes {
                    pipe.zcard(self.keys.retry_lane(shard, lane));
                }
                let counts: Vec<u64> = pipe.query_async(&mut redis).await?;
                for (name, tasks) in lanes.into_iter().zip(counts).filter(|(_, n)| *n > 0) {
                    let lane = Lane { shard, name };
                    sizes.push(LaneSize {
                        tenant: lane.tenant().to_owned(),
                        priority,
                        tasks,
                    });
                }
            }
        }
        sizes.sort_by(|a, b| b.tasks.cmp(&a.tasks).then_with(|| a.tenant.cmp(&b.tenant)));
        sizes.truncate(limit);
        Ok(sizes)
    }

    /// Moves the tasks of the single pool of earlier versions (`{retry}`) into their
    /// lanes, keeping each one's due time, and returns how many moved. Each task is
    /// written to its lane before it is removed from the old pool, so a crash between
    /// the two leaves a copy in both (delivered twice at worst, never lost); a task an
    /// old replica still holds under a lease moves with its lease's end as due time. A
    /// task that cannot be read goes to shard 0's lane `realtime:` and is dead-lettered
    /// as unreadable when claimed.
    pub async fn migrate_legacy(&self, now_ms: i64) -> Result<u64, StoreError> {
        let (due_key, tasks_key) = self.keys.legacy_retry_pool();
        let mut redis = self.redis.clone();
        let mut moved = 0;
        loop {
            let (_, tasks): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&tasks_key)
                .arg(0)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut redis)
                .await?;
            if tasks.is_empty() {
                return Ok(moved);
            }
            let mut dues = redis::pipe();
            for (id, _) in &tasks {
                dues.zscore(&due_key, id);
            }
            let dues: Vec<Option<i64>> = dues.query_async(&mut redis).await?;
            let mut readable = Vec::new();
            for ((id, json), due) in tasks.iter().zip(dues) {
                let due = due.unwrap_or(now_ms);
                match self.decode(json) {
                    Ok(task) => readable.push((task, due)),
                    Err(_) => {
                        let lane = Lane {
                            shard: 0,
                            name: "realtime:".to_owned(),
                        };
                        let () = redis::pipe()
                            .atomic()
                            .hset(self.keys.retry_tasks(0), id, json)
                            .ignore()
                            .zadd(self.lane_key(&lane), id, due)
                            .ignore()
                            .zadd(self.index_key(&lane), &lane.name, due)
                            .ignore()
                            .query_async(&mut redis)
                            .await?;
                    }
                }
            }
            self.schedule(&readable).await?;
            let mut remove = redis::pipe();
            remove.atomic();
            for (id, _) in &tasks {
                remove.hdel(&tasks_key, id).ignore();
                remove.zrem(&due_key, id).ignore();
            }
            let () = remove.query_async(&mut redis).await?;
            moved += tasks.len() as u64;
        }
    }

    /// Every task in the pool with its due time (unix ms): for tests and tools that
    /// inspect the pool, not for the delivery path.
    pub async fn scheduled(&self) -> Result<Vec<(PendingDelivery, i64)>, StoreError> {
        let mut redis = self.redis.clone();
        let mut all = Vec::new();
        for shard in 0..SHARDS {
            let tasks: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(self.keys.retry_tasks(shard))
                .query_async(&mut redis)
                .await?;
            for json in tasks.values() {
                let Ok(task) = self.decode(json) else {
                    continue;
                };
                let lane = Lane::of_task(&task);
                let due: Option<i64> = redis::cmd("ZSCORE")
                    .arg(self.lane_key(&lane))
                    .arg(task.id())
                    .query_async(&mut redis)
                    .await?;
                if let Some(due) = due {
                    all.push((task, due));
                }
            }
        }
        Ok(all)
    }
}

/// Replaces a task that still exists (a completed one stays gone).
static TOMBSTONE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
",
    )
});

impl RetryStore {
    /// Replaces every stored task of `tenant` whose event `covered` says so with its
    /// tombstone (see [`PendingDelivery::tombstone`]); returns how many.
    pub async fn erase(
        &self,
        tenant: &TenantId,
        covered: impl Fn(&PendingDelivery) -> bool,
    ) -> Result<u64, StoreError> {
        let key = self.keys.retry_tasks(shard_of(tenant.as_str()));
        let mut redis = self.redis.clone();
        let mut cursor = "0".to_owned();
        let mut erased = 0;
        loop {
            let (next, fields): (String, Vec<String>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(&cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut redis)
                .await?;
            for pair in fields.chunks_exact(2) {
                let Ok(task) = self.decode(&pair[1]) else {
                    continue;
                };
                if task.erased || task.event.tenant != *tenant || !covered(&task) {
                    continue;
                }
                let replaced: i64 = TOMBSTONE
                    .key(&key)
                    .arg(&pair[0])
                    .arg(self.encode(&task.tombstone()))
                    .invoke_async(&mut redis)
                    .await?;
                erased += u64::try_from(replaced).unwrap_or(0);
            }
            if next == "0" {
                return Ok(erased);
            }
            cursor = next;
        }
    }

    /// A task as stored: its JSON, sealed.
    pub(crate) fn encode(&self, task: &PendingDelivery) -> String {
        // Strings, numbers and JSON values: serializing cannot fail.
        let json = serde_json::to_string(&RetryTask::DeliveryV1(task.clone())).unwrap_or_default();
        self.sealer.seal(&json)
    }

    /// A stored task (sealed, or plain JSON from before sealing).
    pub(crate) fn decode(&self, stored: &str) -> Result<PendingDelivery, UnreadableTask> {
        let unreadable = |source| UnreadableTask {
            raw: stored.to_owned(),
            source,
        };
        let json = self
            .sealer
            .open(stored)
            .map_err(|error| unreadable(TaskError::Sealed(error)))?;
        parse_task(&json).map_err(|error| unreadable(TaskError::Json(error)))
    }
}

fn parse_task(json: &str) -> Result<PendingDelivery, serde_json::Error> {
    serde_json::from_str(json).map(|RetryTask::DeliveryV1(task)| task)
}

#[cfg(test)]
mod tests {
    use super::{Lane, SHARDS, TaskError, parse_task, shard_of};
    use crate::domain::event::{Priority, TenantId};
    use crate::telemetry::error_chain;

    #[test]
    fn an_unreadable_task_keeps_its_text_and_says_why() {
        let unreadable = super::UnreadableTask {
            raw: r#"{"type":"delivery_v9"}"#.to_owned(),
            source: TaskError::Json(
                parse_task(r#"{"type":"delivery_v9"}"#).expect_err("unknown version"),
            ),
        };
        let error = error_chain(&unreadable);
        assert!(
            error.starts_with("unreadable retry task: unknown variant"),
            "{error}"
        );
    }

    #[test]
    fn shards_are_stable_and_spread_tenants() {
        // Fixed values: a change here strands every task of a tenant that moved.
        assert_eq!(shard_of("acme"), shard_of("acme"));
        assert_eq!(shard_of(""), 5);
        let mut used = [0_u32; SHARDS as usize];
        for i in 0..1600 {
            used[usize::from(shard_of(&format!("tenant-{i}")))] += 1;
        }
        assert!(
            used.iter().all(|&n| (50..=150).contains(&n)),
            "1,600 tenants over 16 shards: {used:?}"
        );
    }

    #[test]
    fn a_lane_names_its_tenant_and_priority() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let lane = Lane::of(&tenant, Priority::Bulk);
        assert_eq!(lane.name, "bulk:acme");
        assert_eq!(lane.tenant(), "acme");
        assert_eq!(lane.priority(), Priority::Bulk);
        assert_eq!(
            Lane::of(&tenant, Priority::Realtime).priority(),
            Priority::Realtime
        );
    }
}

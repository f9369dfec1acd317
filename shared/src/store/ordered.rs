//! Ordered delivery in the retry pool: per ordered endpoint and ordering key, a queue of
//! deliveries by sequence number, of which only the head is in the tenant's lane at any
//! time. The head's completion (delivered or dead-lettered) lets the next one go; its
//! retries, holds and leases are the pool's, so a crash, a failing receiver or an open
//! circuit holds back only that key of that endpoint.
//!
//! Sequence numbers come from ingest (per tenant and key, in acceptance order). One can
//! go missing — an event numbered and then not published — so a gap in a key's queue is
//! waited out for `gap` at most: the next delivery is put in the lane due at the gap's
//! deadline, and taken back if the missing event arrives first. An event of the key that
//! arrives after a later one was released (past the gap, or accepted before the endpoint
//! became ordered) is delivered at once, out of order, rather than never.
//!
//! Every key here shares the tenant's shard tag, so each script runs on one Cluster slot.

use super::StoreError;
use super::retries::{Lane, RetryStore, shard_of};
use crate::contract::PendingDelivery;
use crate::domain::event::TenantId;
use std::sync::LazyLock;

/// Shared by the scripts below. KEYS: 1 tasks, 2 lane, 3 lane index, 4 the key's queue
/// (delivery id or `skip:N` → sequence), 5 its state (`next` expected sequence, `head`
/// the delivery in the lane, `gap_due` set while the head waits out a gap,
/// `gap_since`). ARGV[1] now, ARGV[2] gap (ms), ARGV[3] lane name.
const RELEASE: &str = r"
local now, gap, lane_name = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local function to_lane(id, due)
  redis.call('ZADD', KEYS[2], due, id)
  redis.call('ZADD', KEYS[3], 'LT', due, lane_name)
end
local function is_skip(id) return string.sub(id, 1, 5) == 'skip:' end
local function release()
  local head = redis.call('HGET', KEYS[5], 'head')
  if head and head ~= '' then return {'waiting', head} end
  local next_seq = tonumber(redis.call('HGET', KEYS[5], 'next'))
  while true do
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    if #first == 0 then return {'idle', ''} end
    local id, seq = first[1], tonumber(first[2])
    if next_seq == nil or seq <= next_seq then
      redis.call('HDEL', KEYS[5], 'gap_since')
      if is_skip(id) then
        redis.call('ZREM', KEYS[4], id)
        next_seq = seq + 1
        redis.call('HSET', KEYS[5], 'next', next_seq)
      else
        redis.call('HSET', KEYS[5], 'head', id, 'gap_due', '')
        to_lane(id, now)
        return {'released', id}
      end
    else
      -- A gap: the missing events may be on their way. The first real delivery
      -- waits in the lane until the gap's deadline.
      local since = tonumber(redis.call('HGET', KEYS[5], 'gap_since'))
      if not since then
        since = now
        redis.call('HSET', KEYS[5], 'gap_since', now)
      end
      local due = since + gap
      local waiting = redis.call('ZRANGE', KEYS[4], 0, 99)
      for _, candidate in ipairs(waiting) do
        if not is_skip(candidate) then
          redis.call('HSET', KEYS[5], 'head', candidate, 'gap_due', due)
          to_lane(candidate, due)
          return {'gap', candidate}
        end
      end
      return {'idle', ''}
    end
  end
end
";

/// ARGV[4] sequence, ARGV[5] delivery id, ARGV[6] task ('' for a skip marker),
/// ARGV[7] TTL (s) of the key's queue and state, ARGV[8] the first sight's wait (ms).
const ENQUEUE: &str = r"
local seq, id, task, ttl = tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
local head = redis.call('HGET', KEYS[5], 'head')
local gap_due = redis.call('HGET', KEYS[5], 'gap_due')
if head and head ~= '' and gap_due and gap_due ~= '' then
  local head_seq = tonumber(redis.call('ZSCORE', KEYS[4], head))
  if head_seq and seq < head_seq then
    if redis.call('ZSCORE', KEYS[2], head) == gap_due then
      -- This event fills the gap the head was waiting out: the head waits again.
      redis.call('ZREM', KEYS[2], head)
      redis.call('HSET', KEYS[5], 'head', '', 'gap_due', '')
    else
      -- Too late: the head was taken at the gap's deadline.
      redis.call('HSET', KEYS[5], 'next', head_seq)
    end
  end
end
local next_seq = tonumber(redis.call('HGET', KEYS[5], 'next'))
if not next_seq then
  -- First sight of the key at this endpoint: it starts at 1. Past 1, the earlier
  -- numbers may be on their way through other deliverers (a moment), or long
  -- delivered (the key is older than the endpoint's order): they get a short wait,
  -- not the whole gap.
  next_seq = 1
  redis.call('HSET', KEYS[5], 'next', 1)
  if seq > 1 then
    local first_wait = math.min(gap, tonumber(ARGV[8]))
    redis.call('HSET', KEYS[5], 'gap_since', now - gap + first_wait)
  end
end
local result
if seq < next_seq then
  if task ~= '' then
    redis.call('HSET', KEYS[1], id, task)
    to_lane(id, now)
  end
  result = {'late', ''}
elseif task == '' and seq == next_seq and redis.call('ZCARD', KEYS[4]) == 0 then
  redis.call('HSET', KEYS[5], 'next', seq + 1)
  result = {'idle', ''}
else
  if task ~= '' then redis.call('HSET', KEYS[1], id, task) end
  redis.call('ZADD', KEYS[4], seq, id)
  result = release()
end
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('EXPIRE', KEYS[5], ttl)
return result
";

/// ARGV[4] delivery id, ARGV[5] lease token, ARGV[6] its sequence, ARGV[7] TTL (s).
const COMPLETE: &str = r"
local id, token, seq, ttl = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('ZSCORE', KEYS[2], id) ~= token then return {'lost', ''} end
redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', KEYS[1], id)
redis.call('ZREM', KEYS[4], id)
-- What is still queued below it arrived during a gap that was given up: skips are
-- dropped, deliveries go now, out of order.
local below = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', seq)
for _, other in ipairs(below) do
  redis.call('ZREM', KEYS[4], other)
  if not is_skip(other) then to_lane(other, now) end
end
local next_seq = tonumber(redis.call('HGET', KEYS[5], 'next')) or 0
if seq + 1 > next_seq then redis.call('HSET', KEYS[5], 'next', seq + 1) end
redis.call('HSET', KEYS[5], 'head', '', 'gap_due', '')
redis.call('HDEL', KEYS[5], 'gap_since')
local result = release()
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('ZREM', KEYS[3], lane_name) end
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('EXPIRE', KEYS[5], ttl)
return result
";

static ENQUEUE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{RELEASE}\n{ENQUEUE}")));
static COMPLETE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{RELEASE}\n{COMPLETE}")));

/// How long a key seen for the first time at an endpoint, past its number 1, waits for
/// earlier numbers: long enough for events being numbered and handled by other
/// deliverers at the same moment, short since usually they were delivered long ago.
const FIRST_SIGHT_WAIT_MS: i64 = 1_000;

/// How long a key's queue and state outlive its last event: longer than any retry
/// schedule, so a key's order survives its slowest delivery.
const STATE_TTL_S: i64 = 8 * 24 * 3600;

/// What became of a delivery put in its key's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordered {
    /// It is the key's next: due now in the lane.
    Released,
    /// Another delivery of the key goes first (this delivery id).
    Behind(String),
    /// An earlier event of the key is missing: this one waits for it until the gap's
    /// deadline (delivery id `.0` is the one waiting in the lane).
    Gap(String),
    /// A later event of the key already went: delivered now, out of order.
    Late,
    /// A skip marker, or a completion that left nothing to release.
    Idle,
}

impl Ordered {
    fn from_reply(reply: &[String], own_id: &str) -> Self {
        let id = reply.get(1).cloned().unwrap_or_default();
        match reply.first().map(String::as_str) {
            Some("released") if id == own_id => Self::Released,
            Some("released" | "waiting") => Self::Behind(id),
            Some("gap") if id == own_id => Self::Gap(id),
            Some("gap") => Self::Behind(id),
            Some("late") => Self::Late,
            _ => Self::Idle,
        }
    }
}

/// The outcome of completing an ordered delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// False if the lease was lost to another worker (nothing was changed).
    pub owned: bool,
    /// The key's next delivery is due now in the lane.
    pub released: bool,
}

/// The keys of one ordered endpoint's order for one ordering key.
struct OrderKeys {
    tasks: String,
    lane: String,
    index: String,
    queue: String,
    state: String,
    lane_name: String,
}

impl RetryStore {
    fn order_keys(
        &self,
        tenant: &TenantId,
        lane: &Lane,
        endpoint_id: &str,
        key: &str,
    ) -> OrderKeys {
        let shard = shard_of(tenant.as_str());
        OrderKeys {
            tasks: self.keys().retry_tasks(shard),
            lane: self.lane_key(lane),
            index: self.index_key(lane),
            queue: self.keys().retry_order_queue(shard, endpoint_id, key),
            state: self.keys().retry_order_state(shard, endpoint_id, key),
            lane_name: lane.name.clone(),
        }
    }

    fn script(
        script: &'static redis::Script,
        keys: &OrderKeys,
        now_ms: i64,
        gap_ms: i64,
    ) -> redis::ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.tasks)
            .key(&keys.lane)
            .key(&keys.index)
            .key(&keys.queue)
            .key(&keys.state)
            .arg(now_ms)
            .arg(gap_ms)
            .arg(&keys.lane_name);
        invocation
    }

    /// Puts an ordered delivery in its key's order; it goes to its lane now if it is the
    /// key's next. A task without an ordering key and sequence is not ordered: `None`.
    pub async fn enqueue_ordered(
        &self,
        task: &PendingDelivery,
        now_ms: i64,
        gap_ms: i64,
    ) -> Result<Option<Ordered>, StoreError> {
        let (Some(key), Some(sequence)) = (task.event.ordering_key.as_deref(), task.sequence)
        else {
            return Ok(None);
        };
        let lane = Lane::of_task(task);
        let keys = self.order_keys(&task.event.tenant, &lane, &task.endpoint_id, key);
        let id = task.id();
        let reply: Vec<String> = Self::script(&ENQUEUE_SCRIPT, &keys, now_ms, gap_ms)
            .arg(sequence)
            .arg(&id)
            .arg(self.encode(task))
            .arg(STATE_TTL_S)
            .arg(FIRST_SIGHT_WAIT_MS)
            .invoke_async(&mut self.redis())
            .await?;
        Ok(Some(Ordered::from_reply(&reply, &id)))
    }

    /// Marks `sequence` of `key` as nothing to deliver to this endpoint (the event does
    /// not match it, or cannot be rendered for it), so the key does not wait for it.
    pub async fn skip_ordered(
        &self,
        tenant: &TenantId,
        endpoint_id: &str,
        key: &str,
        sequence: i64,
        now_ms: i64,
        gap_ms: i64,
    ) -> Result<(), StoreError> {
        let lane = Lane::of(tenant, crate::domain::event::Priority::Realtime);
        let keys = self.order_keys(tenant, &lane, endpoint_id, key);
        let _: Vec<String> = Self::script(&ENQUEUE_SCRIPT, &keys, now_ms, gap_ms)
            .arg(sequence)
            .arg(format!("skip:{sequence}"))
            .arg("")
            .arg(STATE_TTL_S)
            .arg(FIRST_SIGHT_WAIT_MS)
            .invoke_async(&mut self.redis())
            .await?;
        Ok(())
    }

    /// Completes a claimed ordered delivery (delivered or dead-lettered), fenced by its
    /// lease like [`RetryStore::complete`], and releases the key's next delivery.
    /// A task that is not ordered is completed as any other.
    pub async fn complete_ordered(
        &self,
        lane: &Lane,
        id: &str,
        token: i64,
        task: &PendingDelivery,
        now_ms: i64,
        gap_ms: i64,
    ) -> Result<Completed, StoreError> {
        let (Some(key), Some(sequence)) = (task.event.ordering_key.as_deref(), task.sequence)
        else {
            let owned = self.complete(lane, id, token).await?;
            return Ok(Completed {
                owned,
                released: false,
            });
        };
        let keys = self.order_keys(&task.event.tenant, lane, &task.endpoint_id, key);
        let reply: Vec<String> = Self::script(&COMPLETE_SCRIPT, &keys, now_ms, gap_ms)
            .arg(id)
            .arg(token)
            .arg(sequence)
            .arg(STATE_TTL_S)
            .invoke_async(&mut self.redis())
            .await?;
        Ok(Completed {
            owned: reply.first().map(String::as_str) != Some("lost"),
            released: reply.first().map(String::as_str) == Some("released"),
        })
    }
}

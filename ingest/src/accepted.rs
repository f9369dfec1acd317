//! Which event ids a tenant has already sent, so a repeated id within the window is
//! accepted without being published again.
//!
//! An id is claimed as `pending` (short TTL) before publishing and marked `done` (the
//! full window) after the broker confirmed. A publish that fails releases the claim, so
//! the ATS can retry with the same id; a crash mid-publish leaves `pending` to expire.

use hookline_shared::domain::event::TenantId;
use hookline_shared::store::RedisConnection;
use hookline_shared::store::{Keyspace, StoreError};
use std::sync::LazyLock;
use std::time::Duration;

const PENDING: &str = "pending";
const DONE: &str = "done";
/// Longer than any publish may take (the confirm timeout is seconds).
const PENDING_TTL: Duration = Duration::from_secs(60);
/// How long an unstamped publish is preferred over waiting for Redis.
const VERSION_READ_LIMIT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time this id is seen: publish it.
    New,
    /// Published already within the window.
    Duplicate,
    /// Another request with this id is being published right now.
    InFlight,
}

/// Deletes the claim only while it is still ours (`pending`), never a `done` marker.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Deletes each claim only while it is still ours, as [`RELEASE`] does for one.
static RELEASE_MANY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
",
    )
});

/// KEYS[1]: the endpoints version; KEYS[2..]: ids to claim. ARGV: pending, its TTL (ms),
/// done. Claims each id as [`AcceptedEvents::claim`] does (0 new, 1 duplicate, 2 in
/// flight), and answers the version with them: one round trip for a whole batch, since
/// every key is in the tenant's hash slot.
static CLAIM_MANY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local claims = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    claims[i - 1] = 0
  elseif redis.call('GET', KEYS[i]) == ARGV[3] then
    claims[i - 1] = 1
  else
    claims[i - 1] = 2
  end
end
return {redis.call('GET', KEYS[1]) or '0', claims}
",
    )
});

#[derive(Debug, Clone)]
pub struct AcceptedEvents {
    redis: RedisConnection,
    keys: Keyspace,
    window: Duration,
}

impl AcceptedEvents {
    pub fn new(redis: RedisConnection, keys: Keyspace, window: Duration) -> Self {
        Self {
            redis,
            keys,
            window,
        }
    }

    /// Claims the id, and reads the tenant's endpoints version in the same round trip
    /// (both keys share the tenant's hash slot).
    pub async fn claim(
        &self,
        tenant: &TenantId,
        event_id: &str,
    ) -> Result<(Claim, u64), StoreError> {
        let key = self.keys.accepted_event(tenant, event_id);
        let mut redis = self.redis.clone();
        let (claimed, version): (Option<String>, Option<u64>) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(PENDING)
            .arg("NX")
            .arg("PX")
            .arg(millis(PENDING_TTL))
            .get(self.keys.endpoints_version(tenant))
            .query_async(&mut redis)
            .await?;
        let version = version.unwrap_or(0);
        if claimed.is_some() {
            return Ok((Claim::New, version));
        }
        let state: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
        let claim = match state.as_deref() {
            Some(DONE) => Claim::Duplicate,
            _ => Claim::InFlight,
        };
        Ok((claim, version))
    }

    /// [`AcceptedEvents::claim`] for every id of a batch, in one round trip: the claims
    /// in the order of `event_ids`, and the tenant's endpoints version.
    pub async fn claim_many(
        &self,
        tenant: &TenantId,
        event_ids: &[&str],
    ) -> Result<(Vec<Claim>, u64), StoreError> {
        let mut invocation = CLAIM_MANY.prepare_invoke();
        invocation.key(self.keys.endpoints_version(tenant));
        for id in event_ids {
            invocation.key(self.keys.accepted_event(tenant, id));
        }
        invocation.arg(PENDING).arg(millis(PENDING_TTL)).arg(DONE);
        let (version, claims): (String, Vec<i64>) =
            invocation.invoke_async(&mut self.redis.clone()).await?;
        let claims = claims
            .into_iter()
            .map(|claim| match claim {
                0 => Claim::New,
                1 => Claim::Duplicate,
                _ => Claim::InFlight,
            })
            .collect();
        Ok((claims, version.parse().unwrap_or(0)))
    }

    /// The tenant's endpoints version, stamped on the event so deliverers never match it
    /// against an endpoint list older than the request. Best effort: events with ids
    /// Hookline generates are accepted while Redis is down, and then travel unstamped
    /// (deliverers see endpoint changes within their cache TTL, as for direct AMQP).
    pub async fn endpoints_version(&self, tenant: &TenantId) -> Option<u64> {
        let mut redis = self.redis.clone();
        let command = redis::cmd("GET")
            .arg(self.keys.endpoints_version(tenant))
            .to_owned();
        let read = command.query_async::<Option<u64>>(&mut redis);
        match tokio::time::timeout(VERSION_READ_LIMIT, read).await {
            Ok(Ok(version)) => Some(version.unwrap_or(0)),
            Ok(Err(error)) => {
                tracing::debug!(%error, "endpoints version unavailable; publishing unstamped");
                None
            }
            Err(_) => None,
        }
    }

    pub async fn confirm(&self, tenant: &TenantId, event_id: &str) -> Result<(), StoreError> {
        let () = redis::cmd("SET")
            .arg(self.keys.accepted_event(tenant, event_id))
            .arg(DONE)
            .arg("PX")
            .arg(millis(self.window))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    pub async fn release(&self, tenant: &TenantId, event_id: &str) -> Result<(), StoreError> {
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.keys.accepted_event(tenant, event_id))
            .arg(PENDING)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}

impl AcceptedEvents {
    /// [`AcceptedEvents::confirm`] for several ids, in one round trip.
    pub async fn confirm_many(
        &self,
        tenant: &TenantId,
        event_ids: &[&str],
    ) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in event_ids {
            pipe.cmd("SET")
                .arg(self.keys.accepted_event(tenant, id))
                .arg(DONE)
                .arg("PX")
                .arg(millis(self.window))
                .ignore();
        }
        let () = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// [`AcceptedEvents::release`] for several ids, in one round trip.
    pub async fn release_many(
        &self,
        tenant: &TenantId,
        event_ids: &[&str],
    ) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let mut invocation = RELEASE_MANY.prepare_invoke();
        for id in event_ids {
            invocation.key(self.keys.accepted_event(tenant, id));
        }
        let _: i64 = invocation
            .arg(PENDING)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

//! Erasure markers, tenant deletion and the audit trail in Redis. What an erasure
//! removes from the other stores is theirs to do (`ActivityStore::erase`,
//! `DeadLetterStore::erase`, `RetryStore::erase`); this store keeps what must outlive it:
//! the markers deliverers read to drop events still in a queue, the tenants deleted (so
//! their portal links stop working), and who asked for what.

use super::{Keyspace, StoreError};
use crate::domain::erasure::{ErasureTarget, Erasures};
use crate::domain::event::TenantId;
use crate::store::RedisConnection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

/// One pass of a tenant's keys: `SCAN` in the tenant's slot (the tenant's keys share a
/// hash tag, so on a Cluster they are on the node `KEYS[1]` routes to) and `UNLINK`
/// what matches. Returns the next cursor and the count.
static DELETE_TENANT_KEYS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)
local deleted = 0
for _, key in ipairs(found[2]) do
  redis.call('UNLINK', key)
  deleted = deleted + 1
end
return {found[1], deleted}
",
    )
});

/// Audit entries kept (the stream is trimmed to about this many).
const AUDIT_ENTRIES: usize = 10_000;

/// One audit entry: who asked for what, when, and what it removed — never the
/// subject itself (its digest) nor any event content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: String,
    /// `operator` or `tenant-token`.
    pub actor: String,
    /// `erasure` or `tenant_deletion`.
    pub action: String,
    pub tenant: String,
    /// `subject`, `event` or `tenant`.
    pub target: String,
    /// SHA-256 of the subject or event id, hex: what was asked, checkable, not readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_digest: Option<String>,
    pub counts: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
pub struct ErasureStore {
    redis: RedisConnection,
    keys: Keyspace,
}

impl ErasureStore {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    /// Records the erasure so deliverers drop what it covers from now on; kept for
    /// `keep` (longer than anything could wait in a queue or the retry pool).
    pub async fn mark(
        &self,
        tenant: &TenantId,
        target: &ErasureTarget,
        at_ms: i64,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let key = self.keys.erasures(tenant);
        let () = redis::pipe()
            .hset(&key, target.field(), at_ms)
            .ignore()
            .pexpire(&key, i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
            .ignore()
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// The tenant's markers.
    pub async fn markers(&self, tenant: &TenantId) -> Result<Erasures, StoreError> {
        let fields: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.keys.erasures(tenant))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(Erasures::from_fields(fields))
    }

    /// Deletes every key of the tenant (endpoints and their secrets, health, history,
    /// dead-letter index, quotas, dedup claims, sequences, markers) and drops it from
    /// the tenant list; returns how many keys went.
    pub async fn delete_tenant_keys(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let mut redis = self.redis.clone();
        let pattern = self.keys.tenant_pattern(tenant);
        // Any key of the tenant routes the script to the tenant's slot.
        let routing = self.keys.endpoints(tenant);
        let mut cursor = "0".to_owned();
        let mut deleted = 0;
        loop {
            let (next, count): (String, u64) = DELETE_TENANT_KEYS
                .key(&routing)
                .arg(&cursor)
                .arg(&pattern)
                .invoke_async(&mut redis)
                .await?;
            deleted += count;
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let _: i64 = redis::cmd("SREM")
            .arg(self.keys.tenants())
            .arg(tenant.as_str())
            .query_async(&mut redis)
            .await?;
        let _: i64 = redis::cmd("HDEL")
            .arg(self.keys.retention_overrides())
            .arg(tenant.as_str())
            .query_async(&mut redis)
            .await?;
        Ok(deleted)
    }

    pub async fn mark_tenant_deleted(
        &self,
        tenant: &TenantId,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let _: i64 = redis::cmd("HSET")
            .arg(self.keys.deleted_tenants())
            .arg(tenant.as_str())
            .arg(at_ms)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// When the tenant was last deleted (ms), if ever.
    pub async fn tenant_deleted_at(&self, tenant: &str) -> Result<Option<i64>, StoreError> {
        Ok(redis::cmd("HGET")
            .arg(self.keys.deleted_tenants())
            .arg(tenant)
            .query_async(&mut self.redis.clone())
            .await?)
    }

    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let counts = serde_json::to_string(&entry.counts).unwrap_or_default();
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.audit())
            .arg("MAXLEN")
            .arg("~")
            .arg(AUDIT_ENTRIES)
            .arg("*")
            .arg("at")
            .arg(&entry.at)
            .arg("actor")
            .arg(&entry.actor)
            .arg("action")
            .arg(&entry.action)
            .arg("tenant")
            .arg(&entry.tenant)
            .arg("target")
            .arg(&entry.target)
            .arg("counts")
            .arg(counts);
        if let Some(digest) = &entry.target_digest {
            xadd.arg("target_digest").arg(digest);
        }
        let _: String = xadd.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
            .arg(self.keys.audit())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, mut fields)| {
                let mut take = |name: &str| fields.remove(name).unwrap_or_default();
                AuditEntry {
                    id,
                    at: take("at"),
                    actor: take("actor"),
                    action: take("action"),
                    tenant: take("tenant"),
                    target: take("target"),
                    counts: serde_json::from_str(&take("counts")).unwrap_or_default(),
                    target_digest: fields.remove("target_digest"),
                }
            })
            .collect())
    }
}

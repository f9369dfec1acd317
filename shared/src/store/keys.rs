//! The Redis key layout, in one place.
//!
//! Every key starts with the installation prefix. Keys that one script or transaction
//! touches together share a hash tag — the tenant for tenant data, `retry` for the retry
//! pool — so the same layout works on Redis Cluster.

use crate::domain::event::TenantId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn tenant_key(&self, tenant: &TenantId, rest: &str) -> String {
        format!("{}:{{{}}}:{rest}", self.prefix, tenant)
    }

    /// Counter: the last sequence number given to an ordering key of the tenant.
    pub fn sequence(&self, tenant: &TenantId, key: &str) -> String {
        self.tenant_key(tenant, &format!("sequence:{key}"))
    }

    /// Hash: endpoint id → endpoint JSON, so the deliverer loads a tenant's endpoints in
    /// one round trip.
    pub fn endpoints(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "endpoints")
    }

    /// Counter bumped by every change to the tenant's endpoints. Ingest stamps it on the
    /// events it publishes, so a deliverer knows when its cached list is older than the
    /// event.
    pub fn endpoints_version(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "endpoints-version")
    }

    /// Hash: endpoint id → health record JSON, read together with `endpoints`.
    pub fn health(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "health")
    }

    /// String with TTL: the replica holding an open circuit's single probe.
    pub fn probe(&self, tenant: &TenantId, endpoint_id: &str) -> String {
        self.tenant_key(tenant, &format!("probe:{endpoint_id}"))
    }

    /// String with TTL: the rate limiter's next free slot for an endpoint (µs).
    pub fn rate(&self, tenant: &TenantId, endpoint_id: &str) -> String {
        self.tenant_key(tenant, &format!("rate:{endpoint_id}"))
    }

    /// String with TTL: a quota's theoretical arrival time (µs) for a tenant, or for one
    /// of its endpoints (`scope` = `endpoint:{id}`). `name` says which quota.
    pub fn quota(&self, tenant: &TenantId, name: &str, scope: Option<&str>) -> String {
        match scope {
            Some(scope) => self.tenant_key(tenant, &format!("quota:{name}:{scope}")),
            None => self.tenant_key(tenant, &format!("quota:{name}")),
        }
    }

    /// String: the quota an operator set for the tenant (`{"per_minute", "burst"}` JSON),
    /// in place of the installation's default for quota `name`.
    pub fn quota_override(&self, tenant: &TenantId, name: &str) -> String {
        self.tenant_key(tenant, &format!("quota-override:{name}"))
    }

    /// Sorted set: attempt JSON scored by attempt time (ms), newest kept.
    pub fn attempts(&self, tenant: &TenantId, endpoint_id: &str) -> String {
        self.tenant_key(tenant, &format!("attempts:{endpoint_id}"))
    }

    /// Hash with TTL: `event` → the event, then endpoint id → its delivery state.
    pub fn event_state(&self, tenant: &TenantId, event_id: &str) -> String {
        self.tenant_key(tenant, &format!("event:{event_id}"))
    }

    /// Sorted set: event ids with recorded delivery state, scored by first record (ms),
    /// so the oldest can be trimmed.
    pub fn events_index(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "events")
    }

    /// The prefix of `event_state` keys, for the trimming script to rebuild them.
    pub fn event_state_prefix(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "event:")
    }

    /// Hash: dead-letter id → record JSON.
    pub fn dead_letters(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "dead-letters")
    }

    /// Sorted set: dead-letter id scored by when it was dead-lettered (ms).
    pub fn dead_letter_index(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "dead-letters:by-time")
    }

    /// String with TTL: an event id ingest has accepted (`pending` while publishing,
    /// `done` once confirmed).
    pub fn accepted_event(&self, tenant: &TenantId, event_id: &str) -> String {
        self.tenant_key(tenant, &format!("accepted:{event_id}"))
    }

    /// Set: every tenant that has had an endpoint, for the operator view and gauges.
    /// Hash: dead-letter reason → how many of the tenant's dead letters are indexed with
    /// it; kept by the same scripts that index and remove records.
    pub fn dead_letter_reasons(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "dead-letters:reasons")
    }

    /// Hash: dead-letter id → its reason, so removal and expiry can decrement the count
    /// without decoding records.
    pub fn dead_letter_reason_of(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "dead-letters:reason-of")
    }

    /// Hash with TTL: `delivered` / `failed` attempt counts in one minute (unix minute).
    pub fn attempt_stats(&self, tenant: &TenantId, minute: i64) -> String {
        self.tenant_key(tenant, &format!("stats:{minute}"))
    }

    /// Hash: `{endpoint}:delivered|failed` → attempts in one ten-minute bucket.
    pub fn endpoint_stats(&self, tenant: &TenantId, bucket: i64) -> String {
        self.tenant_key(tenant, &format!("endpoint-stats:{bucket}"))
    }

    /// String with a TTL: a notice about an endpoint was sent in the current window.
    pub fn notice_gate(&self, tenant: &TenantId, endpoint_id: &str, what: &str) -> String {
        self.tenant_key(tenant, &format!("notice:{what}:{endpoint_id}"))
    }

    /// Sorted set: deliverer replica → last heartbeat (ms).
    pub fn deliverers(&self) -> String {
        format!("{}:deliverers", self.prefix)
    }

    /// Hash: erasure target (`subject:…`, `event:…`) → when it was erased (ms). Read by
    /// deliverers with the tenant's endpoints.
    pub fn erasures(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "erasures")
    }

    /// The glob that matches every key of the tenant (its hash tag's keys).
    pub fn tenant_pattern(&self, tenant: &TenantId) -> String {
        self.tenant_key(tenant, "*")
    }

    /// Hash: tenant → when it was deleted (ms); portal links minted before stop working.
    pub fn deleted_tenants(&self) -> String {
        format!("{}:deleted-tenants", self.prefix)
    }

    /// Hash: tenant → its retention override JSON (see `store::retention`).
    pub fn retention_overrides(&self) -> String {
        format!("{}:retention-overrides", self.prefix)
    }

    /// Stream: one entry per erasure or tenant deletion (who, when, what, counts).
    pub fn audit(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    pub fn tenants(&self) -> String {
        format!("{}:tenants", self.prefix)
    }

    /// Hash: event type → catalog entry JSON.
    pub fn event_types(&self) -> String {
        format!("{}:event-types", self.prefix)
    }

    /// The single retry pool of installations before lanes (due set and tasks), which
    /// deliverers move into the lanes.
    pub fn legacy_retry_pool(&self) -> (String, String) {
        (
            format!("{}:{{retry}}:due", self.prefix),
            format!("{}:{{retry}}:tasks", self.prefix),
        )
    }

    /// Hash: delivery id → pending delivery JSON, for the tenants of one shard of the
    /// retry pool. Every key of a shard shares its hash tag `{retry:N}`, so a shard lives
    /// on one Redis Cluster node and the shards spread over the cluster.
    pub fn retry_tasks(&self, shard: u16) -> String {
        format!("{}:{{retry:{shard}}}:tasks", self.prefix)
    }

    /// Sorted set: delivery id → due time (ms), one per lane (a tenant and a priority).
    pub fn retry_lane(&self, shard: u16, lane: &str) -> String {
        format!("{}:{}", self.retry_lane_prefix(shard), lane)
    }

    /// What every lane key of a shard starts with; the claim script adds the lane.
    pub fn retry_lane_prefix(&self, shard: u16) -> String {
        format!("{}:{{retry:{shard}}}:lane", self.prefix)
    }

    /// Sorted set: an ordered endpoint's deliveries of one ordering key, by sequence.
    pub fn retry_order_queue(&self, shard: u16, endpoint_id: &str, key: &str) -> String {
        format!(
            "{}:{{retry:{shard}}}:order-queue:{endpoint_id}:{key}",
            self.prefix
        )
    }

    /// Hash: the state of that order (next sequence, the delivery released, a gap).
    pub fn retry_order_state(&self, shard: u16, endpoint_id: &str, key: &str) -> String {
        format!(
            "{}:{{retry:{shard}}}:order:{endpoint_id}:{key}",
            self.prefix
        )
    }

    /// Sorted set: lane → when it is next due to be served, one per priority and shard.
    pub fn retry_lanes(&self, shard: u16, priority: &str) -> String {
        format!("{}:{{retry:{shard}}}:lanes:{priority}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_start_with_the_prefix_and_group_by_hash_tag() {
        let keys = Keyspace::new("hl");
        let tenant = TenantId::parse("acme").expect("tenant");
        let tenant_keys = [
            keys.endpoints(&tenant),
            keys.health(&tenant),
            keys.probe(&tenant, "ep"),
            keys.rate(&tenant, "ep"),
            keys.attempts(&tenant, "ep"),
            keys.event_state(&tenant, "evt"),
            keys.events_index(&tenant),
            keys.dead_letters(&tenant),
            keys.dead_letter_index(&tenant),
            keys.accepted_event(&tenant, "evt"),
            keys.quota(&tenant, "ingest", None),
            keys.quota_override(&tenant, "ingest"),
        ];
        for key in &tenant_keys {
            assert!(key.starts_with("hl:{acme}:"), "{key}");
        }
        assert_eq!(
            keys.event_state(&tenant, "evt"),
            format!("{}evt", keys.event_state_prefix(&tenant))
        );
        assert!(keys.retry_tasks(3).starts_with("hl:{retry:3}:"));
        assert!(
            keys.retry_lane(3, "realtime:acme")
                .starts_with("hl:{retry:3}:")
        );
        assert!(keys.retry_lanes(3, "bulk").starts_with("hl:{retry:3}:"));
    }
}

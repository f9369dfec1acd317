//! The Redis key layout, in one place.

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

    /// Hash: endpoint id → endpoint JSON, one per tenant, so the deliverer loads a
    /// tenant's endpoints in one round trip.
    pub fn endpoints(&self, tenant: &TenantId) -> String {
        format!("{}:endpoints:{}", self.prefix, tenant)
    }

    /// String with TTL: an event id ingest has accepted (`pending` while publishing,
    /// `done` once confirmed).
    pub fn accepted_event(&self, tenant: &TenantId, event_id: &str) -> String {
        format!("{}:accepted:{}:{}", self.prefix, tenant, event_id)
    }

    /// Sorted set: delivery id → due time (ms). Shares a hash tag with `retry_tasks`.
    pub fn retry_due(&self) -> String {
        format!("{{{}:retry}}:due", self.prefix)
    }

    /// Hash: delivery id → pending delivery JSON.
    pub fn retry_tasks(&self) -> String {
        format!("{{{}:retry}}:tasks", self.prefix)
    }
}

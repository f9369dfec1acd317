//! A short-lived cache of each tenant's endpoints and their health, so the success path
//! does not read Redis for every event. An event that ingest stamped with the tenant's
//! endpoints version reloads a list older than itself, so an endpoint created before the
//! event was accepted always sees it; other changes (health recorded by other replicas,
//! endpoint changes for events published straight to the exchange) take effect within
//! the TTL.

use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::event::TenantId;
use hookline_shared::domain::health::HealthRecord;
use hookline_shared::store::StoreError;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tenants beyond this many are evicted (oldest first) so memory stays bounded.
const MAX_TENANTS: usize = 10_000;

/// One tenant's endpoints and what is known about their health.
#[derive(Debug, Default)]
pub struct TenantEndpoints {
    pub version: u64,
    pub endpoints: Vec<Endpoint>,
    health: HashMap<String, HealthRecord>,
}

impl TenantEndpoints {
    pub fn health(&self, endpoint_id: &str) -> HealthRecord {
        self.health.get(endpoint_id).cloned().unwrap_or_default()
    }
}

/// When a tenant's endpoints were read, and what they were.
type Entries = HashMap<TenantId, (Instant, Arc<TenantEndpoints>)>;

#[derive(Debug)]
pub struct EndpointCache {
    store: EndpointStore,
    health: HealthStore,
    ttl: Duration,
    // A std Mutex, not a Tokio one: it is held only to read or insert, never across an
    // await.
    entries: Mutex<Entries>,
}

impl EndpointCache {
    pub fn new(store: EndpointStore, health: HealthStore, ttl: Duration) -> Self {
        Self {
            store,
            health,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long a tenant's list (and so its endpoints' health) may be stale.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The tenant's endpoints, read at `at_least` version or later when given.
    pub async fn load(
        &self,
        tenant: &TenantId,
        at_least: Option<u64>,
    ) -> Result<Arc<TenantEndpoints>, StoreError> {
        let now = Instant::now();
        if let Some((loaded, endpoints)) = self.lock().get(tenant)
            && now.duration_since(*loaded) < self.ttl
            && at_least.is_none_or(|version| endpoints.version >= version)
        {
            return Ok(endpoints.clone());
        }
        let (listed, health) =
            tokio::try_join!(self.store.list_versioned(tenant), self.health.all(tenant))?;
        let loaded = Arc::new(TenantEndpoints {
            version: listed.version,
            endpoints: listed.endpoints,
            health,
        });
        let mut entries = self.lock();
        if entries.len() >= MAX_TENANTS
            && !entries.contains_key(tenant)
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(t, _)| t.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(tenant.clone(), (now, loaded.clone()));
        Ok(loaded)
    }

    /// Forgets a tenant's entry, so a change this replica just made is seen at once.
    pub fn invalidate(&self, tenant: &TenantId) {
        self.lock().remove(tenant);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

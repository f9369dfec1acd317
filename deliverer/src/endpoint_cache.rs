//! A short-lived cache of each tenant's endpoints, so the success path does not read
//! Redis for every event. Changes made through the API take effect within the TTL.

use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::event::TenantId;
use hookline_shared::store::StoreError;
use hookline_shared::store::endpoints::EndpointStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tenants beyond this many are evicted (oldest first) so memory stays bounded.
const MAX_TENANTS: usize = 10_000;

/// When a tenant's endpoints were read, and what they were.
type Entries = HashMap<TenantId, (Instant, Arc<Vec<Endpoint>>)>;

#[derive(Debug)]
pub struct EndpointCache {
    store: EndpointStore,
    ttl: Duration,
    // A std Mutex, not a Tokio one: it is held only to read or insert, never across an
    // await.
    entries: Mutex<Entries>,
}

impl EndpointCache {
    pub fn new(store: EndpointStore, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn endpoints(&self, tenant: &TenantId) -> Result<Arc<Vec<Endpoint>>, StoreError> {
        let now = Instant::now();
        if let Some((loaded, endpoints)) = self.lock().get(tenant)
            && now.duration_since(*loaded) < self.ttl
        {
            return Ok(endpoints.clone());
        }
        let endpoints = Arc::new(self.store.list(tenant).await?);
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
        entries.insert(tenant.clone(), (now, endpoints.clone()));
        Ok(endpoints)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

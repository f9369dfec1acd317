//! A short-lived cache of each tenant's endpoints and their health, so the success path
//! does not read Redis for every event. Loads of one tenant that overlap share one read:
//! with hundreds of messages in flight, an expired entry costs one Redis round trip, not
//! one per message. An event that ingest stamped with the tenant's endpoints version
//! reloads a list older than itself, so an endpoint created before the event was
//! accepted always sees it; other changes (health recorded by other replicas, endpoint
//! changes for events published straight to the exchange) take effect within the TTL.

use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::erasure::Erasures;
use hookline_shared::domain::event::TenantId;
use hookline_shared::domain::health::HealthRecord;
use hookline_shared::store::StoreError;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Tenants cached at once; beyond it the least recently used are evicted, which only
/// costs them a reload.
const MAX_TENANTS: u64 = 10_000;

/// One tenant's endpoints and what is known about their health.
#[derive(Debug)]
pub struct TenantEndpoints {
    pub version: u64,
    pub endpoints: Vec<Endpoint>,
    /// What erasures ran for the tenant: events they cover are dropped.
    pub erasures: Erasures,
    /// When the read began: the markers are at least this recent.
    pub read_at: Instant,
    health: HashMap<String, HealthRecord>,
}

impl Default for TenantEndpoints {
    fn default() -> Self {
        Self {
            version: 0,
            endpoints: Vec::new(),
            erasures: Erasures::default(),
            read_at: Instant::now(),
            health: HashMap::new(),
        }
    }
}

impl TenantEndpoints {
    pub fn health(&self, endpoint_id: &str) -> HealthRecord {
        self.health.get(endpoint_id).cloned().unwrap_or_default()
    }
}

/// Where a tenant's endpoints and their health are read from.
pub trait Source: Send + Sync {
    fn read(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<TenantEndpoints, StoreError>> + Send;
}

/// The endpoint and health records in Redis.
#[derive(Debug)]
pub struct RedisSource {
    store: EndpointStore,
    health: HealthStore,
}

impl Source for RedisSource {
    async fn read(&self, tenant: &TenantId) -> Result<TenantEndpoints, StoreError> {
        let read_at = Instant::now();
        let (listed, health) =
            tokio::try_join!(self.store.list_versioned(tenant), self.health.all(tenant))?;
        Ok(TenantEndpoints {
            version: listed.version,
            endpoints: listed.endpoints,
            erasures: listed.erasures,
            read_at,
            health,
        })
    }
}

/// A failed read, shared by every load that was waiting for it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LoadError(Arc<StoreError>);

/// A tenant's list, and when and after which invalidation it was read.
#[derive(Debug, Clone)]
struct Loaded {
    endpoints: Arc<TenantEndpoints>,
    started: Instant,
    /// `EndpointCache::invalidations` when the read began.
    epoch: u64,
}

/// An entry lives for the TTL from when its read began, not from when the answer came:
/// a list is never used more than the TTL after Redis was asked, however slow it was.
struct FromRead(Duration);

impl moka::Expiry<TenantId, Loaded> for FromRead {
    fn expire_after_create(
        &self,
        _tenant: &TenantId,
        loaded: &Loaded,
        now: Instant,
    ) -> Option<Duration> {
        Some(
            self.0
                .saturating_sub(now.saturating_duration_since(loaded.started)),
        )
    }
}

#[derive(Debug)]
pub struct EndpointCache<S = RedisSource> {
    source: S,
    ttl: Duration,
    entries: Cache<TenantId, Loaded>,
    /// How many invalidations there have been. `invalidate` must be synchronous and must
    /// also discard a read already under way, so instead of removing the entry it
    /// marks the tenant with this count, and a list read before the mark is not used.
    invalidations: AtomicU64,
    /// Per tenant, the count its last `invalidate` made. Not expired with the TTL: a
    /// read under way may outlast it. A mark evicted for room (after `MAX_TENANTS` other
    /// tenants were invalidated) only leaves that tenant's list to expire.
    invalidated: moka::sync::Cache<TenantId, u64>,
}

impl EndpointCache {
    pub fn new(store: EndpointStore, health: HealthStore, ttl: Duration) -> Self {
        Self::with_source(RedisSource { store, health }, ttl)
    }
}

impl<S: Source> EndpointCache<S> {
    pub fn with_source(source: S, ttl: Duration) -> Self {
        Self {
            source,
            ttl,
            entries: Cache::builder()
                .max_capacity(MAX_TENANTS)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(FromRead(ttl))
                .build(),
            invalidations: AtomicU64::new(0),
            invalidated: moka::sync::Cache::builder()
                .max_capacity(MAX_TENANTS)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
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
    ) -> Result<Arc<TenantEndpoints>, LoadError> {
        let invalidated = self.invalidated.get(tenant).unwrap_or(0);
        let usable = |loaded: &Loaded| {
            loaded.epoch >= invalidated
                && at_least.is_none_or(|version| loaded.endpoints.version >= version)
        };
        let loaded = self.shared_read(tenant).await?;
        if usable(&loaded) {
            return Ok(loaded.endpoints);
        }
        // Too old for this caller: cached before the change, or read by a load that
        // began before it. Drop it unless another caller already replaced it; the read
        // after that begins after this call did, so it is new enough (unless the
        // tenant's version went back, and then it is the best there is).
        self.entries
            .entry_by_ref(tenant)
            .and_compute_with(|entry| {
                std::future::ready(match entry {
                    Some(entry) if !usable(entry.value()) => Op::Remove,
                    _ => Op::Nop,
                })
            })
            .await;
        Ok(self.shared_read(tenant).await?.endpoints)
    }

    /// Forgets a tenant's list, so a change this replica just made is seen at once.
    pub fn invalidate(&self, tenant: &TenantId) {
        let mark = self.invalidations.fetch_add(1, Ordering::SeqCst) + 1;
        self.invalidated.insert(tenant.clone(), mark);
    }

    /// The cached list, or the result of the one read of the tenant under way, started
    /// here if there is none.
    async fn shared_read(&self, tenant: &TenantId) -> Result<Loaded, LoadError> {
        let read = async {
            let epoch = self.invalidations.load(Ordering::SeqCst);
            let started = Instant::now();
            let endpoints = self.source.read(tenant).await?;
            Ok(Loaded {
                endpoints: Arc::new(endpoints),
                started,
                epoch,
            })
        };
        self.entries
            .try_get_with_by_ref(tenant, read)
            .await
            .map_err(LoadError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::join_all;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// Counts reads; each answers the version current when it began, after `delay`.
    #[derive(Default)]
    struct Fake {
        reads: AtomicUsize,
        version: AtomicU64,
        fail: AtomicBool,
        delay: Duration,
    }

    impl Source for Fake {
        async fn read(&self, _tenant: &TenantId) -> Result<TenantEndpoints, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let version = self.version.load(Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Redis(redis::RedisError::from(
                    std::io::Error::other("down"),
                )));
            }
            Ok(TenantEndpoints {
                version,
                ..TenantEndpoints::default()
            })
        }
    }

    fn cache(ttl: Duration, delay: Duration) -> EndpointCache<Fake> {
        let fake = Fake {
            version: AtomicU64::new(1),
            delay,
            ..Fake::default()
        };
        EndpointCache::with_source(fake, ttl)
    }

    fn acme() -> TenantId {
        TenantId::parse("acme").expect("valid")
    }

    fn reads(cache: &EndpointCache<Fake>) -> usize {
        cache.source.reads.load(Ordering::SeqCst)
    }

    async fn versions(
        cache: &EndpointCache<Fake>,
        callers: usize,
        at_least: Option<u64>,
    ) -> Vec<u64> {
        let tenant = acme();
        let loads = (0..callers).map(|_| cache.load(&tenant, at_least));
        join_all(loads)
            .await
            .into_iter()
            .map(|loaded| loaded.expect("loads").version)
            .collect()
    }

    #[tokio::test]
    async fn concurrent_loads_of_a_missing_or_expired_tenant_share_one_read() {
        let cache = cache(Duration::from_millis(100), Duration::from_millis(20));
        assert_eq!(versions(&cache, 200, None).await, vec![1; 200]);
        assert_eq!(reads(&cache), 1, "a cold tenant");

        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(versions(&cache, 200, None).await, vec![1; 200]);
        assert_eq!(reads(&cache), 2, "an expired tenant");
    }

    #[tokio::test]
    async fn a_list_is_used_until_the_ttl_is_up() {
        let tenant = acme();
        let cache = cache(Duration::from_millis(300), Duration::ZERO);
        cache.load(&tenant, None).await.expect("loads");
        cache.load(&tenant, None).await.expect("loads");
        assert_eq!(reads(&cache), 1);

        tokio::time::sleep(Duration::from_millis(400)).await;
        cache.load(&tenant, None).await.expect("loads");
        assert_eq!(reads(&cache), 2);
    }

    #[tokio::test]
    async fn an_event_newer_than_the_list_reloads_it_once_for_all_callers() {
        let tenant = acme();
        let cache = cache(Duration::from_secs(60), Duration::from_millis(20));
        cache.load(&tenant, None).await.expect("loads");
        cache.source.version.store(2, Ordering::SeqCst);

        assert_eq!(versions(&cache, 200, Some(2)).await, vec![2; 200]);
        assert_eq!(reads(&cache), 2);

        for at_least in [None, Some(1), Some(2)] {
            assert_eq!(
                cache.load(&tenant, at_least).await.expect("loads").version,
                2
            );
        }
        assert_eq!(reads(&cache), 2, "a list new enough is used");
    }

    #[tokio::test]
    async fn a_read_begun_before_the_change_does_not_answer_a_newer_event() {
        let tenant = acme();
        let cache = cache(Duration::from_secs(60), Duration::from_millis(100));
        let (before, after) = tokio::join!(cache.load(&tenant, None), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cache.source.version.store(2, Ordering::SeqCst);
            cache.load(&tenant, Some(2)).await
        });
        assert_eq!(before.expect("loads").version, 1);
        assert_eq!(after.expect("loads").version, 2);
        assert_eq!(reads(&cache), 2);
    }

    #[tokio::test]
    async fn invalidate_drops_the_list_and_a_read_under_way() {
        let tenant = acme();
        let cache = cache(Duration::from_secs(60), Duration::from_millis(100));
        cache.load(&tenant, None).await.expect("loads");
        cache.invalidate(&tenant);
        cache.load(&tenant, None).await.expect("loads");
        assert_eq!(reads(&cache), 2, "a cached list");

        cache.invalidate(&tenant);
        let (before, after) = tokio::join!(cache.load(&tenant, None), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cache.source.version.store(2, Ordering::SeqCst);
            cache.invalidate(&tenant);
            cache.load(&tenant, None).await
        });
        assert_eq!(before.expect("loads").version, 1);
        assert_eq!(after.expect("loads").version, 2, "a read under way");
        assert_eq!(reads(&cache), 4);
    }

    #[tokio::test]
    async fn a_failed_read_is_shared_and_not_cached() {
        let tenant = acme();
        let cache = cache(Duration::from_secs(60), Duration::from_millis(20));
        cache.source.fail.store(true, Ordering::SeqCst);
        let loads = (0..50).map(|_| cache.load(&tenant, None));
        for loaded in join_all(loads).await {
            let error = loaded.expect_err("the read fails");
            assert!(matches!(&*error.0, StoreError::Redis(_)), "{error:?}");
        }
        assert_eq!(reads(&cache), 1);

        cache.source.fail.store(false, Ordering::SeqCst);
        assert_eq!(cache.load(&tenant, None).await.expect("loads").version, 1);
        assert_eq!(reads(&cache), 2);
    }
}

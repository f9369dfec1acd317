//! The HTTP API v1: event ingest, endpoint management, delivery history, dead letters,
//! the event-type catalog and console portal links.

pub mod access;
mod body;
mod catalog;
mod checks;
mod dead_letters;
mod endpoints;
mod erasure;
pub mod error;
mod events;
mod history;
mod layers;
pub mod openapi;
mod operator;
mod portal;
mod preview;
pub mod quota;
mod retention;
pub mod throttle;

use crate::accepted::AcceptedEvents;
use crate::metrics::IngestMetrics;
use crate::settings::ApiSettings;
use axum::Router;
use axum::http::Method;
use error::ApiError;
use hookline_shared::broker::publisher::Publisher;
use hookline_shared::broker::topology::Topology;
use hookline_shared::dispatch::Dispatcher;
use hookline_shared::domain::endpoint::{Endpoint, validate_endpoint_id};
use hookline_shared::domain::event::TenantId;
use hookline_shared::domain::health::HealthPolicy;
use hookline_shared::store::StoreError;
use hookline_shared::store::activity::ActivityStore;
use hookline_shared::store::catalog::CatalogStore;
use hookline_shared::store::dead_letters::DeadLetterStore;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::erasure::ErasureStore;
use hookline_shared::store::health::HealthStore;
use hookline_shared::store::quotas::QuotaOverrides;
use hookline_shared::store::rate::RateLimiter;
use hookline_shared::store::replicas::ReplicaRegistry;
use hookline_shared::store::retention::RetentionStore;
use hookline_shared::store::retries::RetryStore;
use hookline_shared::store::sequences::SequenceStore;
use openapi::{Doc, Documented};
use secrecy::SecretString;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub settings: ApiSettings,
    pub tokens: Vec<SecretString>,
    pub publisher: Publisher,
    pub topology: Topology,
    pub scoped_tokens: Vec<(String, SecretString)>,
    pub endpoints: EndpointStore,
    pub health: HealthStore,
    pub health_policy: HealthPolicy,
    pub activity: ActivityStore,
    pub dead_letters: DeadLetterStore,
    pub retries: RetryStore,
    /// Numbers keyed events in each ordering key's order.
    pub sequences: SequenceStore,
    pub replicas: ReplicaRegistry,
    pub catalog: CatalogStore,
    /// Erasure markers, deleted tenants and the audit trail.
    pub erasures: ErasureStore,
    /// Tenants' own, shorter retention.
    pub retention: RetentionStore,
    pub known_types: KnownTypes,
    pub dispatcher: Dispatcher,
    pub secret_overlap: Duration,
    pub accepted: AcceptedEvents,
    pub metrics: Arc<IngestMetrics>,
    pub auth_failures: throttle::AuthFailures,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub rate: RateLimiter,
    pub quotas: quota::TenantQuotas,
    pub quota_overrides: QuotaOverrides,
}

/// The catalog's type names, cached briefly for `require_known_event_types`; misses
/// that overlap share one read of the catalog.
#[derive(Debug)]
pub struct KnownTypes {
    cached: moka::future::Cache<(), Arc<HashSet<String>>>,
}

const KNOWN_TYPES_TTL: Duration = Duration::from_secs(5);

impl Default for KnownTypes {
    fn default() -> Self {
        Self {
            cached: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(KNOWN_TYPES_TTL)
                .build(),
        }
    }
}

impl KnownTypes {
    pub async fn contains(
        &self,
        catalog: &CatalogStore,
        event_type: &str,
    ) -> Result<bool, ApiError> {
        let read = async {
            let entries = catalog.list().await?;
            Ok::<_, StoreError>(Arc::new(
                entries.into_iter().map(|entry| entry.event_type).collect(),
            ))
        };
        let types = self.cached.try_get_with((), read).await?;
        Ok(types.contains(event_type))
    }

    /// Drops the cache after a catalog change made here.
    pub fn forget(&self) {
        self.cached.invalidate_all();
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Every `/v1` operation, served and described from this one table.
pub fn api() -> Documented<AppState> {
    use Method as M;
    Documented::default()
        .op(
            M::POST,
            "/tenants/{tenant}/events",
            events::ingest,
            Doc::new(
                "Accept an event; answers after the broker confirmed it",
                (202, "The event id and whether it was a duplicate"),
            )
            .body("Event"),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/events/batch",
            events::ingest_batch,
            Doc::new(
                "Accept up to api.max_batch_events events at once; answers after the broker confirmed every accepted one",
                (200, "One result per event, in order: {id, duplicate} or {error} naming events[i]"),
            )
            .body("EventBatch"),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/quota",
            quota::get,
            Doc::new(
                "The tenant's ingest quota: its override, or the default (per_minute 0: unlimited)",
                (200, "per_minute, burst and source"),
            ),
        )
        .op(
            M::PUT,
            "/tenants/{tenant}/quota",
            quota::put,
            Doc::new(
                "Operators: set the tenant's ingest quota in place of the default",
                (200, "The quota now applying"),
            )
            .body("Quota"),
        )
        .op(
            M::DELETE,
            "/tenants/{tenant}/quota",
            quota::delete,
            Doc::new(
                "Operators: remove the tenant's override; the default applies again",
                (204, "Removed"),
            ),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/endpoints",
            endpoints::create,
            Doc::new(
                "Register an endpoint (?dry_run=true: validate and render a sample, store nothing)",
                (201, "The endpoint, with its secret and a sample rendering"),
            )
            .body("Endpoint"),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/endpoints",
            endpoints::list,
            Doc::new(
                "List a tenant's endpoints with their health",
                (200, "The endpoints, without secrets"),
            ),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/endpoints/{endpoint_id}",
            endpoints::get,
            Doc::new("Show an endpoint and its health", (200, "The endpoint")),
        )
        .op(
            M::PATCH,
            "/tenants/{tenant}/endpoints/{endpoint_id}",
            endpoints::update,
            Doc::new(
                "Change an endpoint (JSON merge patch); enabled=true re-enables and resets health",
                (200, "The endpoint"),
            )
            .body("EndpointPatch"),
        )
        .op(
            M::DELETE,
            "/tenants/{tenant}/endpoints/{endpoint_id}",
            endpoints::delete,
            Doc::new("Delete an endpoint", (204, "Deleted")),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/endpoints/{endpoint_id}/secret",
            endpoints::secret,
            Doc::new("Reveal the signing secret", (200, "The secret")),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/endpoints/{endpoint_id}/secret/rotate",
            endpoints::rotate_secret,
            Doc::new(
                "Rotate the signing secret; the old one keeps signing during the overlap",
                (200, "The new secret"),
            ),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/endpoints/{endpoint_id}/test",
            checks::send_test,
            Doc::new(
                "Send one signed test delivery now",
                (200, "The receiver's answer"),
            )
            .body("TestEvent"),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/endpoints/{endpoint_id}/preview",
            preview::preview,
            Doc::new(
                "Render what the receiver would get for an event, headers included, without sending",
                (200, "Headers and body"),
            )
            .body("Preview"),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/endpoints/{endpoint_id}/attempts",
            history::attempts,
            Doc::new(
                "The endpoint's attempt log, newest first",
                (200, "A page of attempts"),
            )
            .query(&["limit", "before"]),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/endpoints/{endpoint_id}/stats",
            history::stats,
            Doc::new(
                "The endpoint's attempts per ten minutes over the last hours (its chart)",
                (200, "Buckets, oldest first"),
            )
            .query(&["hours"]),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/events/{event_id}",
            history::event,
            Doc::new(
                "An event and its delivery state at each endpoint",
                (200, "The event and its deliveries"),
            ),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/dead-letters",
            dead_letters::list,
            Doc::new("List dead letters", (200, "A page of dead letters"))
                .query(&["endpoint", "limit", "cursor"]),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/dead-letters/replay",
            dead_letters::replay_many,
            Doc::new(
                "Replay the dead letters matching a filter",
                (200, "How many were queued"),
            )
            .body("Replay"),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/dead-letters/{dead_letter_id}/replay",
            dead_letters::replay_one,
            Doc::new("Replay one dead letter", (200, "Queued")),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/erasures",
            erasure::erase,
            Doc::new(
                "Erase every stored copy of a subject's events (or of one event): history, attempts, pending retries, dead letters; events still queued are dropped",
                (200, "What was removed"),
            )
            .body("Erasure"),
        )
        .op(
            M::GET,
            "/tenants/{tenant}/retention",
            retention::get,
            Doc::new(
                "The tenant's own retention (empty: the installation's)",
                (200, "The retention"),
            ),
        )
        .op(
            M::PUT,
            "/tenants/{tenant}/retention",
            retention::put,
            Doc::new(
                "Keep the tenant's event history and dead letters shorter than the installation does",
                (200, "The retention"),
            )
            .body("Retention"),
        )
        .op(
            M::DELETE,
            "/tenants/{tenant}/retention",
            retention::delete,
            Doc::new("Back to the installation's retention", (204, "Removed")),
        )
        .op(
            M::DELETE,
            "/tenants/{tenant}",
            erasure::delete_tenant,
            Doc::new(
                "Delete the tenant: endpoints, secrets, history, retries, dead letters, quotas; its portal links stop working",
                (200, "What was removed"),
            ),
        )
        .op(
            M::GET,
            "/operator/audit",
            erasure::audit_log,
            Doc::new(
                "Operators: erasures and tenant deletions, newest first (who, when, what, counts)",
                (200, "Audit entries"),
            )
            .query(&["limit"]),
        )
        .op(
            M::POST,
            "/tenants/{tenant}/portal-links",
            portal::create,
            Doc::new(
                "A short-lived console link scoped to the tenant",
                (201, "The link"),
            ),
        )
        .op(
            M::GET,
            "/operator/overview",
            operator::overview,
            Doc::new(
                "Operators: per-tenant endpoint health, delivery rates and failure ratios, dead letters by reason, retry backlog, connected deliverers",
                (200, "The overview"),
            ),
        )
        .op(
            M::GET,
            "/event-types",
            catalog::list,
            Doc::new("The event-type catalog", (200, "The catalog")),
        )
        .op(
            M::PUT,
            "/event-types/{event_type}",
            catalog::put,
            Doc::new("Register or update an event type", (201, "The entry")).body("EventType"),
        )
        .op(
            M::DELETE,
            "/event-types/{event_type}",
            catalog::delete,
            Doc::new("Remove an event type from the catalog", (204, "Removed")),
        )
        .op(
            M::GET,
            "/session",
            access::session,
            Doc::new(
                "Who the presented token is: {\"scope\": \"operator\"} or {\"scope\": \"tenant\", \"tenant\"}",
                (200, "The session"),
            ),
        )
        .op(
            M::GET,
            "/openapi.json",
            openapi_json,
            Doc::new("This description", (200, "OpenAPI 3.1")),
        )
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(api().openapi())
}

pub fn router(state: AppState) -> Router {
    let v1 = api()
        .into_router()
        .route_layer(layers::Authenticate::new(state.clone()));
    Router::new()
        .merge(v1)
        .merge(crate::console::router(
            &state.settings.console_frame_ancestors,
        ))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(layers::RecordMetrics::new(state.metrics.clone()))
        .with_state(state)
}

fn tenant(raw: String) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(ApiError::bad_path)
}

/// The endpoint a `/v1/tenants/{tenant}/endpoints/{id}/…` path names, or 404.
async fn load_endpoint(
    state: &AppState,
    raw_tenant: String,
    id: &str,
) -> Result<Endpoint, ApiError> {
    let tenant = tenant(raw_tenant)?;
    validate_endpoint_id(id).map_err(ApiError::bad_path)?;
    state
        .endpoints
        .get(&tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))
}

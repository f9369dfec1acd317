//! The HTTP API v1: event ingest, endpoint management, delivery history, dead letters,
//! the event-type catalog and console portal links.

pub mod access;
mod body;
mod catalog;
mod checks;
mod dead_letters;
mod endpoints;
pub mod error;
mod events;
mod history;
mod portal;

use crate::accepted::AcceptedEvents;
use crate::metrics::IngestMetrics;
use crate::settings::ApiSettings;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use error::ApiError;
use hookline_shared::broker::publisher::Publisher;
use hookline_shared::broker::topology::Topology;
use hookline_shared::dispatch::Dispatcher;
use hookline_shared::domain::event::TenantId;
use hookline_shared::domain::health::HealthPolicy;
use hookline_shared::store::activity::ActivityStore;
use hookline_shared::store::catalog::CatalogStore;
use hookline_shared::store::dead_letters::DeadLetterStore;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use hookline_shared::store::retries::RetryStore;
use secrecy::SecretString;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    pub catalog: CatalogStore,
    pub known_types: KnownTypes,
    pub dispatcher: Dispatcher,
    pub secret_overlap: Duration,
    pub accepted: AcceptedEvents,
    pub metrics: Arc<IngestMetrics>,
}

/// The catalog's type names, cached briefly for `require_known_event_types`.
#[derive(Debug, Default)]
pub struct KnownTypes {
    // A std Mutex: held to read or replace the set, never across an await.
    cached: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
}

const KNOWN_TYPES_TTL: Duration = Duration::from_secs(5);

impl KnownTypes {
    pub async fn contains(
        &self,
        catalog: &CatalogStore,
        event_type: &str,
    ) -> Result<bool, ApiError> {
        let fresh = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < KNOWN_TYPES_TTL)
            .map(|(_, types)| types.clone());
        let types = match fresh {
            Some(types) => types,
            None => {
                let types: Arc<HashSet<String>> = Arc::new(
                    catalog
                        .list()
                        .await?
                        .into_iter()
                        .map(|e| e.event_type)
                        .collect(),
                );
                *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), types.clone()));
                types
            }
        };
        Ok(types.contains(event_type))
    }

    /// Drops the cache after a catalog change made here.
    pub fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
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

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/tenants/{tenant}/events", post(events::ingest))
        .route(
            "/tenants/{tenant}/endpoints",
            post(endpoints::create).get(endpoints::list),
        )
        .route(
            "/tenants/{tenant}/endpoints/{endpoint_id}",
            get(endpoints::get)
                .patch(endpoints::update)
                .delete(endpoints::delete),
        )
        .route(
            "/tenants/{tenant}/endpoints/{endpoint_id}/secret",
            get(endpoints::secret),
        )
        .route(
            "/tenants/{tenant}/endpoints/{endpoint_id}/secret/rotate",
            post(endpoints::rotate_secret),
        )
        .route(
            "/tenants/{tenant}/endpoints/{endpoint_id}/test",
            post(checks::send_test),
        )
        .route(
            "/tenants/{tenant}/endpoints/{endpoint_id}/attempts",
            get(history::attempts),
        )
        .route("/tenants/{tenant}/events/{event_id}", get(history::event))
        .route("/tenants/{tenant}/dead-letters", get(dead_letters::list))
        .route(
            "/tenants/{tenant}/dead-letters/replay",
            post(dead_letters::replay_many),
        )
        .route(
            "/tenants/{tenant}/dead-letters/{dead_letter_id}/replay",
            post(dead_letters::replay_one),
        )
        .route("/tenants/{tenant}/portal-links", post(portal::create))
        .route("/event-types", get(catalog::list))
        .route(
            "/event-types/{event_type}",
            put(catalog::put).delete(catalog::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::authenticate,
        ));
    Router::new()
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), class.as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[route.as_str(), method.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn tenant(raw: String) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(ApiError::bad_path)
}

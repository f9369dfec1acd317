//! The HTTP API v1: event ingest and endpoint management.

mod body;
mod endpoints;
pub mod error;
mod events;

use crate::accepted::AcceptedEvents;
use crate::metrics::IngestMetrics;
use crate::settings::ApiSettings;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::ApiError;
use hookline_shared::broker::publisher::Publisher;
use hookline_shared::broker::topology::Topology;
use hookline_shared::domain::event::TenantId;
use hookline_shared::store::endpoints::EndpointStore;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub settings: ApiSettings,
    pub tokens: Vec<SecretString>,
    pub publisher: Publisher,
    pub topology: Topology,
    pub endpoints: EndpointStore,
    pub accepted: AcceptedEvents,
    pub metrics: Arc<IngestMetrics>,
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
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
}

/// Bearer tokens, compared in constant time against every configured token so that
/// rotating tokens needs no downtime.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized().into_response();
    };
    let matches = state.tokens.iter().fold(false, |found, token| {
        found | bool::from(token.expose_secret().as_bytes().ct_eq(presented.as_bytes()))
    });
    if !matches {
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
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

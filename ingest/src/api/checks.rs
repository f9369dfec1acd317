//! Test deliveries: `POST …/endpoints/{id}/test` (the "Check" button) and `verify` on
//! create. One signed attempt, made synchronously by ingest with the deliverer's client
//! rules (SSRF guard, timeout, bounded response). Never retried, never counted toward
//! health or delivery metrics.

use super::error::ApiError;
use super::{AppState, body, load_endpoint};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use bytes::Bytes;
use hookline_shared::Invalid;
use hookline_shared::dispatch::{AttemptReport, Payload};
use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::event::{Event, EventMessage, Fallbacks};
use hookline_shared::domain::payload::Purpose;
use hookline_shared::domain::policy::AttemptOutcome;
use hookline_shared::domain::trace::TraceParent;
use hookline_shared::store::rate::Refused;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

pub const PING_TYPE: &str = "hookline.ping";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct TestResult {
    pub delivered: bool,
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// The id the test event was sent with (`webhook-id`).
    pub event_id: String,
}

pub async fn send_test(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
    request_body: Body,
) -> Result<Json<TestResult>, ApiError> {
    let endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    let input: TestInput =
        body::parse_optional_json(request_body, state.settings.max_event_bytes).await?;
    let event_type = input.event_type.unwrap_or_else(|| PING_TYPE.to_owned());
    let data = match input.data {
        Some(data) => data,
        None => example_data(&state, &event_type).await,
    };
    Ok(Json(
        test_delivery(&state, &endpoint, event_type, data).await?,
    ))
}

/// The catalog's example for the type, or a short note for `hookline.ping`.
async fn example_data(state: &AppState, event_type: &str) -> Value {
    let parsed = hookline_shared::domain::pattern::EventType::parse(event_type.to_owned());
    if let Ok(parsed) = parsed
        && let Ok(Some(entry)) = state.catalog.get(&parsed).await
    {
        return entry.example;
    }
    json!({"message": "Test event from Hookline"})
}

pub async fn test_delivery(
    state: &AppState,
    endpoint: &Endpoint,
    event_type: String,
    data: Value,
) -> Result<TestResult, ApiError> {
    admit_test_delivery(state, endpoint).await?;
    let message = EventMessage {
        id: None,
        tenant: None,
        event_type,
        occurred_at: None,
        version: None,
        data,
        changes: None,
        actor: None,
        priority: None,
        ordering_key: None,
        subject: None,
    };
    let event = Event::from_message(
        message,
        Fallbacks {
            tenant: Some(endpoint.tenant.clone()),
            id: format!("test_{}", uuid::Uuid::now_v7().simple()),
            occurred_at: OffsetDateTime::now_utc(),
        },
    )
    .map_err(ApiError::invalid)?;
    let rendered = endpoint
        .spec
        .render(&event, Purpose::Test)
        .map_err(|e| ApiError::invalid(Invalid::new("format", e)))?;
    let payload = Payload {
        content_type: rendered.content_type,
        body: Bytes::from(rendered.body),
    };
    let report = state
        .dispatcher
        .attempt(
            endpoint,
            &event.id,
            &payload,
            // A test delivery starts a trace of its own, so receivers see the header.
            Some(TraceParent::root((
                uuid::Uuid::new_v4().as_u128(),
                uuid::Uuid::new_v4().as_u64_pair().0,
            ))),
        )
        .await;
    Ok(result(event.id, report))
}

/// Each test delivery is a signed request Hookline sends where the tenant says: bounded
/// per endpoint and per tenant, across replicas.
async fn admit_test_delivery(state: &AppState, endpoint: &Endpoint) -> Result<(), ApiError> {
    let now_us = hookline_shared::store::rate::micros(OffsetDateTime::now_utc());
    let admitted = state
        .rate
        .admit_test_delivery(
            &endpoint.tenant,
            &endpoint.id,
            state.settings.test_deliveries_per_endpoint,
            state.settings.test_deliveries_per_tenant,
            now_us,
        )
        .await;
    match admitted {
        Ok(()) => Ok(()),
        Err(Refused::Wait(wait)) => {
            state
                .metrics
                .throttled
                .with_label_values(&["test_deliveries"])
                .inc();
            Err(ApiError::throttled(
                "too_many_test_deliveries",
                "test deliveries to this endpoint or tenant are over their limit; retry later",
                wait,
            ))
        }
        Err(Refused::Store(error)) => Err(error.into()),
    }
}

fn result(event_id: String, report: AttemptReport) -> TestResult {
    let status = report.status();
    let (delivered, error) = match report.outcome {
        AttemptOutcome::Delivered { .. } => (true, None),
        AttemptOutcome::Failed(failure) => (false, Some(failure.message)),
    };
    TestResult {
        delivered,
        status,
        duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        error,
        response_excerpt: report.response_excerpt,
        event_id,
    }
}

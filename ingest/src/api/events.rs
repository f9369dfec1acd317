//! `POST /v1/tenants/{tenant}/events`: validate, publish with a confirm, then answer.

use super::error::ApiError;
use super::{AppState, body, tenant};
use crate::accepted::Claim;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hookline_shared::contract::{ENDPOINTS_VERSION_HEADER, JSON, SOURCE_HEADER, SOURCE_HTTP};
use hookline_shared::domain::event::{Event, EventMessage, Fallbacks};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use std::time::Instant;
use time::OffsetDateTime;

#[derive(Debug, Serialize)]
pub struct Accepted {
    id: String,
    duplicate: bool,
}

pub async fn ingest(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    request_body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let tenant = tenant(raw_tenant)?;
    let message: EventMessage =
        body::parse_json(request_body, state.settings.max_event_bytes).await?;
    let caller_chose_id = message.id.is_some();
    let event = Event::from_message(
        message,
        Fallbacks {
            tenant: Some(tenant),
            id: uuid::Uuid::now_v7().to_string(),
            occurred_at: OffsetDateTime::now_utc(),
        },
    )
    .map_err(ApiError::invalid)?;
    if state.settings.require_known_event_types
        && !state
            .known_types
            .contains(&state.catalog, event.event_type.as_str())
            .await?
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_event_type",
            "this event type is not in the catalog (api.require_known_event_types is on)",
        )
        .with_field("type"));
    }

    // Only an id the caller chose can repeat; a generated UUIDv7 cannot, so it skips
    // the dedup claim and reads only the endpoints version.
    let endpoints_version = if caller_chose_id {
        let (claim, version) = state.accepted.claim(&event.tenant, &event.id).await?;
        match claim {
            Claim::New => {}
            Claim::Duplicate => {
                state.metrics.duplicates.inc();
                return Ok(accepted(event.id, true));
            }
            Claim::InFlight => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "duplicate_in_flight",
                    "an event with this id is being accepted right now; retry shortly",
                )
                .with_field("id"));
            }
        }
        Some(version)
    } else {
        state.accepted.endpoints_version(&event.tenant).await
    };

    let published = publish(&state, &event, endpoints_version).await;
    if caller_chose_id {
        match &published {
            Ok(()) => state.accepted.confirm(&event.tenant, &event.id).await?,
            Err(_) => {
                if let Err(error) = state.accepted.release(&event.tenant, &event.id).await {
                    // The claim expires on its own within a minute; the ATS's retry
                    // with the same id is answered 409 until then.
                    tracing::warn!(error = format!("{:#}", anyhow::Error::from(error)), event.id = %event.id, "releasing dedup claim failed");
                }
            }
        }
    }
    published?;
    state.metrics.event_accepted(event.event_type.as_str());
    Ok(accepted(event.id, false))
}

fn accepted(id: String, duplicate: bool) -> (StatusCode, Json<Accepted>) {
    (StatusCode::ACCEPTED, Json(Accepted { id, duplicate }))
}

async fn publish(
    state: &AppState,
    event: &Event,
    endpoints_version: Option<u64>,
) -> Result<(), ApiError> {
    // An `Event` serializes to exactly the public message body (see
    // `Event::to_message`), so it is written without an intermediate copy. Serializing
    // strings, numbers and JSON values cannot fail.
    let body = serde_json::to_vec(event).unwrap_or_default();
    let mut headers = FieldTable::default();
    headers.insert(
        SOURCE_HEADER.into(),
        AMQPValue::LongString(SOURCE_HTTP.into()),
    );
    if let Some(version) = endpoints_version {
        headers.insert(
            ENDPOINTS_VERSION_HEADER.into(),
            AMQPValue::LongLongInt(i64::try_from(version).unwrap_or(i64::MAX)),
        );
    }
    let properties = BasicProperties::default()
        .with_content_type(JSON.into())
        .with_message_id(event.id.as_str().into())
        .with_timestamp(u64::try_from(event.occurred_at.unix_timestamp()).unwrap_or(0))
        .with_headers(headers);
    let started = Instant::now();
    let result = state
        .publisher
        .publish(
            &state.topology.events_exchange,
            event.event_type.as_str(),
            &body,
            properties,
        )
        .await;
    let outcome = match &result {
        Ok(()) => "confirmed",
        Err(error) => {
            state
                .metrics
                .publish_errors
                .with_label_values(&[error.reason()])
                .inc();
            "failed"
        }
    };
    state
        .metrics
        .publish_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    Ok(result?)
}

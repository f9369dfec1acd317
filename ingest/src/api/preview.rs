//! `POST /v1/tenants/{t}/endpoints/{id}/preview`: what the receiver would get for an
//! event — body and headers, signed — without sending anything.

use super::error::ApiError;
use super::{AppState, body, load_endpoint};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use bytes::Bytes;
use hookline_shared::Invalid;
use hookline_shared::dispatch::{Payload, request_headers};
use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::event::{Actor, Event, EventMessage, Fallbacks};
use hookline_shared::domain::payload::Purpose;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewInput {
    /// An event as `POST …/events` takes it; absent, the catalog's example for the
    /// endpoint's first subscribed type (or a generic sample).
    #[serde(default)]
    event: Option<EventMessage>,
}

#[derive(Debug, Serialize)]
pub struct Preview {
    pub headers: Map<String, Value>,
    pub content_type: String,
    /// The body as sent: a JSON value for JSON formats, the raw text otherwise.
    pub body: Value,
}

pub async fn preview(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
    request_body: Body,
) -> Result<Json<Preview>, ApiError> {
    let endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    let input: PreviewInput =
        body::parse_optional_json(request_body, state.settings.max_event_bytes).await?;
    let message = match input.event {
        Some(message) => message,
        None => sample_message(&state, &endpoint).await,
    };
    Ok(Json(preview_message(&endpoint, message)?))
}

/// Validates `message` as an event of the endpoint's tenant and renders it.
pub fn preview_message(endpoint: &Endpoint, message: EventMessage) -> Result<Preview, ApiError> {
    let event = Event::from_message(
        message,
        Fallbacks {
            tenant: Some(endpoint.tenant.clone()),
            id: format!("evt_preview_{}", uuid::Uuid::now_v7().simple()),
            occurred_at: OffsetDateTime::now_utc(),
        },
    )
    .map_err(|invalid| ApiError::invalid(invalid.within("event")))?;
    render_preview(endpoint, &event)
}

/// The catalog example of the endpoint's first concrete subscribed type.
pub async fn sample_message(state: &AppState, endpoint: &Endpoint) -> EventMessage {
    let concrete = endpoint
        .spec
        .event_types
        .iter()
        .map(|p| p.as_str())
        .find(|p| !p.contains(['*', '#']))
        .unwrap_or("hookline.sample")
        .to_owned();
    let example = match hookline_shared::domain::pattern::EventType::parse(concrete.clone()) {
        Ok(event_type) => state.catalog.get(&event_type).await.ok().flatten(),
        Err(_) => None,
    };
    EventMessage {
        id: None,
        tenant: None,
        event_type: concrete,
        occurred_at: None,
        version: None,
        data: example.map_or_else(|| json!({"sample": true}), |entry| entry.example),
        changes: None,
        actor: Some(Actor {
            id: Some(json!(1)),
            name: Some("Sample User".into()),
            email: Some("sample.user@example.com".into()),
        }),
        priority: None,
        ordering_key: None,
        subject: None,
    }
}

pub fn render_preview(endpoint: &Endpoint, event: &Event) -> Result<Preview, ApiError> {
    let rendered = endpoint
        .spec
        .render(event, Purpose::Live)
        .map_err(|e| ApiError::invalid(Invalid::new("format", e)))?;
    let payload = Payload {
        content_type: rendered.content_type,
        body: Bytes::from(rendered.body),
    };
    let mut headers: Map<String, Value> =
        request_headers(endpoint, &event.id, &payload, OffsetDateTime::now_utc())
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    Value::String(value.to_str().unwrap_or_default().to_owned()),
                )
            })
            .collect();
    headers.insert(
        "user-agent".into(),
        Value::String(hookline_shared::USER_AGENT.into()),
    );
    let text = String::from_utf8_lossy(&payload.body).into_owned();
    let body = if payload.content_type == "application/json" {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    } else {
        Value::String(text)
    };
    Ok(Preview {
        headers,
        content_type: payload.content_type.to_owned(),
        body,
    })
}

//! The event-type catalog: `PUT /v1/event-types/{type}`, `GET /v1/event-types`.

use super::error::ApiError;
use super::{AppState, body};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hookline_shared::domain::pattern::EventType;
use hookline_shared::store::catalog::EventTypeEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const MAX_DESCRIPTION: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryInput {
    #[serde(default)]
    description: String,
    #[serde(default)]
    example: Value,
}

#[derive(Debug, Serialize)]
pub struct Catalog {
    data: Vec<EventTypeEntry>,
}

pub async fn put(
    State(state): State<AppState>,
    Path(raw_type): Path<String>,
    request_body: Body,
) -> Result<(StatusCode, Json<EventTypeEntry>), ApiError> {
    let event_type = EventType::parse(raw_type).map_err(ApiError::bad_path)?;
    let input: EntryInput = body::parse_json(request_body, state.settings.max_event_bytes).await?;
    if input.description.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(hookline_shared::Invalid::new(
            "description",
            format_args!("must be at most {MAX_DESCRIPTION} characters"),
        )));
    }
    let entry = EventTypeEntry {
        event_type: event_type.as_str().to_owned(),
        description: input.description,
        example: input.example,
    };
    let created = state.catalog.put(&entry).await?;
    state.known_types.forget();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(entry)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Catalog>, ApiError> {
    Ok(Json(Catalog {
        data: state.catalog.list().await?,
    }))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(raw_type): Path<String>,
) -> Result<StatusCode, ApiError> {
    let event_type = EventType::parse(raw_type).map_err(ApiError::bad_path)?;
    if state.catalog.delete(&event_type).await? {
        state.known_types.forget();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("event type"))
    }
}

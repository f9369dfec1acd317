//! Delivery history: the attempt log per endpoint and the delivery state of one event.

use super::body::ApiQuery;
use super::error::ApiError;
use super::{AppState, load_endpoint, tenant};
use axum::Json;
use axum::extract::{Path, State};
use hookline_shared::Invalid;
use hookline_shared::store::activity::{
    AttemptRecord, DeliveryState, ENDPOINT_BUCKET_MINUTES, MAX_ENDPOINT_CHART_HOURS,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

const MAX_PAGE: usize = 200;

#[derive(Debug, Deserialize)]
pub struct AttemptsQuery {
    limit: Option<usize>,
    /// Unix milliseconds: only attempts strictly older (the previous page's `next_before`).
    before: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct AttemptPage {
    data: Vec<AttemptRecord>,
    /// Pass as `before` for the next page; absent on the last one.
    next_before: Option<i64>,
}

pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(Invalid::new(
            "limit",
            format_args!("must be 1 to {MAX_PAGE}"),
        ))),
    }
}

pub async fn attempts(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<AttemptsQuery>,
) -> Result<Json<AttemptPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    let endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    let data = state
        .activity
        .attempts(&endpoint.tenant, &endpoint.id, limit, query.before)
        .await?;
    let next_before = (data.len() == limit)
        .then(|| {
            data.last()
                .map(|a| hookline_shared::store::health::to_ms(a.at))
        })
        .flatten();
    Ok(Json(AttemptPage { data, next_before }))
}

#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    /// Hours back from now (1 to 6, default 6).
    hours: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStats {
    bucket_minutes: i64,
    /// Oldest first; the last one is the bucket now under way.
    buckets: Vec<StatsBucket>,
}

#[derive(Debug, Serialize)]
pub struct StatsBucket {
    #[serde(with = "time::serde::rfc3339")]
    start: time::OffsetDateTime,
    delivered: u64,
    failed: u64,
}

impl StatsBucket {
    pub fn new((start, delivered, failed): (i64, u64, u64)) -> Self {
        Self {
            start: time::OffsetDateTime::from_unix_timestamp(start)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            delivered,
            failed,
        }
    }
}

/// Attempts per ten minutes over the last hours: what the endpoint's chart draws.
pub async fn stats(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<EndpointStats>, ApiError> {
    let hours = query.hours.unwrap_or(MAX_ENDPOINT_CHART_HOURS);
    if !(1..=MAX_ENDPOINT_CHART_HOURS).contains(&hours) {
        return Err(ApiError::invalid(Invalid::new(
            "hours",
            format_args!("must be 1 to {MAX_ENDPOINT_CHART_HOURS}"),
        )));
    }
    let endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    let series = state
        .activity
        .endpoint_series(
            &endpoint.tenant,
            &endpoint.id,
            time::OffsetDateTime::now_utc(),
            hours,
        )
        .await?;
    Ok(Json(EndpointStats {
        bucket_minutes: ENDPOINT_BUCKET_MINUTES,
        buckets: series.into_iter().map(StatsBucket::new).collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct EventView {
    event: Value,
    /// Endpoint id → its delivery state.
    deliveries: BTreeMap<String, DeliveryState>,
}

pub async fn event(
    State(state): State<AppState>,
    Path((raw_tenant, event_id)): Path<(String, String)>,
) -> Result<Json<EventView>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    hookline_shared::domain::event::validate_event_id(&event_id).map_err(ApiError::bad_path)?;
    let (event, deliveries) = state
        .activity
        .event(&tenant, &event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    Ok(Json(EventView { event, deliveries }))
}

//! Dead letters of a tenant: list, replay one, replay many. Replaying queues the delivery
//! in the retry pool with a fresh schedule, due now, then removes it from the index; the
//! record in RabbitMQ's `{prefix}.dead-letter` queue is left for ops.

use super::body::ApiQuery;
use super::error::ApiError;
use super::history::page_limit;
use super::{AppState, body, tenant};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use hookline_shared::Invalid;
use hookline_shared::contract::{DeadDelivery, PendingDelivery};
use hookline_shared::domain::endpoint::validate_endpoint_id;
use hookline_shared::domain::event::TenantId;
use hookline_shared::store::dead_letters::DeadLetterQuery;
use hookline_shared::store::health::to_ms;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use time::OffsetDateTime;

/// Dead letters one bulk replay queues at most; the answer says whether more remain.
const MAX_BULK_REPLAY: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    endpoint: Option<String>,
    limit: Option<usize>,
    /// Unix milliseconds, from the previous page's `next_cursor`.
    cursor: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetterPage {
    data: Vec<DeadDelivery>,
    next_cursor: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    if let Some(endpoint) = &query.endpoint {
        validate_endpoint_id(endpoint).map_err(|e| ApiError::invalid(e.within("endpoint")))?;
    }
    let (data, next_cursor) = state
        .dead_letters
        .list(
            &tenant,
            &DeadLetterQuery {
                endpoint_id: query.endpoint,
                since_ms: None,
                before_ms: query.cursor,
                limit: page_limit(query.limit)?,
            },
        )
        .await?;
    Ok(Json(DeadLetterPage { data, next_cursor }))
}

#[derive(Debug, Serialize)]
pub struct Replayed {
    /// Deliveries queued for a fresh attempt.
    queued: usize,
    /// True when a bulk replay stopped at its cap and more match.
    more: bool,
    /// Of those, deliveries to ordered endpoints of events with an `ordering_key`: a
    /// replay is delivered now, after the later events of its key that went on when it
    /// was dead-lettered — out of order. Receivers that keep the latest state per key
    /// should compare the event's `occurred_at`.
    out_of_order: usize,
}

pub async fn replay_one(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
) -> Result<Json<Replayed>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    if id.len() > 300 {
        return Err(ApiError::bad_path(Invalid::new("id", "is too long")));
    }
    let record = state
        .dead_letters
        .get(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("dead letter"))?;
    let out_of_order = replay(&state, &tenant, vec![record]).await?;
    Ok(Json(Replayed {
        queued: 1,
        more: false,
        out_of_order,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkReplay {
    endpoint: Option<String>,
    /// Only dead letters from this time on (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    /// Only dead letters before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

pub async fn replay_many(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    request_body: Body,
) -> Result<Json<Replayed>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let input: BulkReplay = body::parse_optional_json(request_body, 4096).await?;
    if let Some(endpoint) = &input.endpoint {
        validate_endpoint_id(endpoint).map_err(|e| ApiError::invalid(e.within("endpoint")))?;
    }
    let (records, cursor) = state
        .dead_letters
        .list(
            &tenant,
            &DeadLetterQuery {
                endpoint_id: input.endpoint,
                since_ms: input.since.map(to_ms),
                before_ms: input.until.map(to_ms),
                limit: MAX_BULK_REPLAY,
            },
        )
        .await?;
    let queued = records.len();
    let out_of_order = replay(&state, &tenant, records).await?;
    Ok(Json(Replayed {
        queued,
        more: queued == MAX_BULK_REPLAY && cursor.is_some(),
        out_of_order,
    }))
}

/// Queues first, then unindexes: a crash in between replays an entry twice, never zero
/// times (subscribers deduplicate on `webhook-id`). Returns how many of the replays
/// leave their ordering key's order (see [`Replayed::out_of_order`]).
async fn replay(
    state: &AppState,
    tenant: &TenantId,
    records: Vec<DeadDelivery>,
) -> Result<usize, ApiError> {
    let ordered: HashSet<String> = if records.iter().any(|r| r.event.ordering_key.is_some()) {
        state
            .endpoints
            .list(tenant)
            .await?
            .into_iter()
            .filter(|endpoint| endpoint.spec.ordered)
            .map(|endpoint| endpoint.id)
            .collect()
    } else {
        HashSet::new()
    };
    let out_of_order = records
        .iter()
        .filter(|r| r.event.ordering_key.is_some() && ordered.contains(&r.endpoint_id))
        .count();
    let due = to_ms(OffsetDateTime::now_utc());
    let tasks: Vec<(PendingDelivery, i64)> = records
        .iter()
        .map(|record| {
            (
                // Attempts 0, rendered afresh with the endpoint's format as it is now.
                PendingDelivery::new(record.event.clone(), record.endpoint_id.clone()),
                due,
            )
        })
        .collect();
    state.retries.schedule(&tasks).await?;
    for record in &records {
        state.dead_letters.remove(tenant, &record.id).await?;
    }
    Ok(out_of_order)
}

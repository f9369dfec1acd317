//! Personal data on request: `POST /v1/tenants/{t}/erasures` removes every stored copy of
//! a subject's events (or one event), `DELETE /v1/tenants/{t}` removes a tenant, and
//! `GET /v1/operator/audit` lists who asked for which. Operators and the tenant's API
//! token may erase; portal links may not (`access::permits`).
//!
//! An erasure first leaves a marker that deliverers read with the tenant's endpoints, so
//! nothing in a queue or under way is delivered or stored after it; it then waits
//! `api.erasure_settle` (the deliverers' endpoint cache TTL and a margin), so every
//! deliverer sees the marker before the stores are swept, and sweeps: event states and
//! attempt logs, the dead-letter index, and retry tasks (replaced by tombstones the
//! deliverers complete, counted as `hookline_erased_deliveries_total{stage="retry"}`).
//! The ops dead-letter queue holds only references (`delivery_ref_v1`). Both answers
//! count what went; asking again is harmless (and counts nothing more).

use super::error::ApiError;
use super::{AppState, body, tenant};
use crate::api::access::{Credential, Scope};
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use hookline_shared::domain::erasure::ErasureTarget;
use hookline_shared::store::erasure::AuditEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long a marker is kept: longer than a message waits in a queue or a delivery in
/// the retry pool (endpoints are disabled after days of failures).
const MARKER_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    subject: Option<String>,
    event_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ErasureAnswer {
    tenant: String,
    erased_at: String,
    /// What was removed: `events` (stored event states), `attempts` (attempt-log
    /// entries), `dead_letters` (indexed dead letters), `retries` (pending deliveries).
    counts: BTreeMap<&'static str, u64>,
}

pub async fn erase(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(raw_tenant): Path<String>,
    request_body: Body,
) -> Result<Json<ErasureAnswer>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let request: ErasureRequest = body::parse_json(request_body, MAX_REQUEST_BYTES).await?;
    let target = ErasureTarget::from_request(request.subject, request.event_id)
        .map_err(ApiError::invalid)?;
    let now = OffsetDateTime::now_utc();
    let at_ms = unix_ms(now);
    state
        .erasures
        .mark(&tenant, &target, at_ms, MARKER_KEEP)
        .await?;
    tokio::time::sleep(state.settings.erasure_settle).await;
    let endpoint_ids = state.endpoints.ids(&tenant).await?;
    let (events, attempts) = state
        .activity
        .erase(&tenant, &target, at_ms, &endpoint_ids)
        .await?;
    let dead_letters = state.dead_letters.erase(&tenant, &target, at_ms).await?;
    let retries = state
        .retries
        .erase(&tenant, |task| target.covers(&task.event, at_ms))
        .await?;
    let counts = BTreeMap::from([
        ("events", events),
        ("attempts", attempts),
        ("dead_letters", dead_letters),
        ("retries", retries),
    ]);
    let (kind, named) = match &target {
        ErasureTarget::Subject(subject) => ("subject", subject.as_str()),
        ErasureTarget::Event(id) => ("event", id.as_str()),
    };
    audited(
        &state,
        &scope,
        Done {
            action: "erasure",
            tenant: tenant.as_str(),
            target: kind,
            named: Some(named),
            at: now,
            counts,
        },
    )
    .await
}

pub async fn delete_tenant(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(raw_tenant): Path<String>,
) -> Result<Json<ErasureAnswer>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let now = OffsetDateTime::now_utc();
    let endpoints = state.endpoints.list(&tenant).await?.len() as u64;
    state
        .erasures
        .mark_tenant_deleted(&tenant, unix_ms(now))
        .await?;
    let mut keys = state.erasures.delete_tenant_keys(&tenant).await?;
    // Deliverers stop seeing the endpoints within their cache TTL; what they stored in
    // the meantime goes with a second pass.
    tokio::time::sleep(state.settings.erasure_settle).await;
    keys += state.erasures.delete_tenant_keys(&tenant).await?;
    let retries = state.retries.erase(&tenant, |_| true).await?;
    state.quotas.forget(&tenant).await;
    let counts = BTreeMap::from([
        ("endpoints", endpoints),
        ("keys", keys),
        ("retries", retries),
    ]);
    audited(
        &state,
        &scope,
        Done {
            action: "tenant_deletion",
            tenant: tenant.as_str(),
            target: "tenant",
            named: None,
            at: now,
            counts,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    data: Vec<AuditEntry>,
}

pub async fn audit_log(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(AuditPage {
        data: state.erasures.audit_log(limit).await?,
    }))
}

/// What an erasure or a deletion did, for its audit entry and its answer.
struct Done<'a> {
    action: &'static str,
    tenant: &'a str,
    /// `subject`, `event` or `tenant`.
    target: &'static str,
    /// The subject or event id asked for; only its digest is kept.
    named: Option<&'a str>,
    at: OffsetDateTime,
    counts: BTreeMap<&'static str, u64>,
}

/// Records `done` in the audit trail, then answers with it.
async fn audited(
    state: &AppState,
    scope: &Scope,
    done: Done<'_>,
) -> Result<Json<ErasureAnswer>, ApiError> {
    let actor = match scope {
        Scope::Operator => "operator",
        Scope::Tenant {
            via: Credential::ApiToken,
            ..
        } => "tenant-token",
        Scope::Tenant {
            via: Credential::PortalLink,
            ..
        } => "portal-link",
    };
    let entry = AuditEntry {
        id: String::new(),
        at: rfc3339(done.at),
        actor: actor.to_owned(),
        action: done.action.to_owned(),
        tenant: done.tenant.to_owned(),
        target: done.target.to_owned(),
        target_digest: done.named.map(|named| {
            Sha256::digest(named.as_bytes())
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect()
        }),
        counts: done
            .counts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
    };
    state.erasures.audit(&entry).await?;
    Ok(Json(ErasureAnswer {
        tenant: done.tenant.to_owned(),
        erased_at: rfc3339(done.at),
        counts: done.counts,
    }))
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

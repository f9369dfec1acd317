//! Per-tenant ingest quotas: `api.tenant_quota` for every tenant, or the override an
//! operator set with `PUT /v1/tenants/{t}/quota`; `GET` shows the one that applies,
//! `DELETE` returns the tenant to the default.
//!
//! Events are counted in Redis (`store::rate`, the GCRA of `domain::quota`), so every
//! replica shares one budget per tenant; a batch of N events costs N, admitted whole or
//! refused whole. Overrides are read through a short cache: with no default set, a
//! tenant without an override costs one Redis read per [`OVERRIDE_TTL`], not one per
//! event. Quotas are for fairness, not security, so they fail open: while Redis does not
//! answer within [`READ_LIMIT`] the events are not counted (ingest keeps accepting what
//! it can publish, as it does for events without an id of the caller's).

use super::error::ApiError;
use super::{AppState, body, tenant};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hookline_shared::domain::event::TenantId;
use hookline_shared::domain::quota::Quota;
use hookline_shared::store::quotas::QuotaOverrides;
use hookline_shared::store::rate::{INGEST, Refused};
use serde::Serialize;
use std::time::Duration;
use time::OffsetDateTime;

/// How stale another replica's view of an override may be: a change made elsewhere
/// applies here within this long.
pub const OVERRIDE_TTL: Duration = Duration::from_secs(5);
/// Tenants whose override is cached at once; beyond it the least used are read again.
const OVERRIDE_CAPACITY: u64 = 100_000;
/// How long a quota read or count may hold an event before it is let through uncounted.
const READ_LIMIT: Duration = Duration::from_millis(250);

/// What applies to each tenant, with overrides cached briefly.
#[derive(Debug)]
pub struct TenantQuotas {
    default: Option<Quota>,
    overrides: QuotaOverrides,
    /// Tenant → its override (`None`: none set; the default applies).
    cached: moka::future::Cache<TenantId, Option<Quota>>,
}

impl TenantQuotas {
    pub fn new(default: Quota, overrides: QuotaOverrides) -> Self {
        Self {
            default: default.limited(),
            overrides,
            cached: moka::future::Cache::builder()
                .max_capacity(OVERRIDE_CAPACITY)
                .time_to_live(OVERRIDE_TTL)
                .build(),
        }
    }

    /// The quota that applies to the tenant now (`None`: unlimited). Misses that overlap
    /// share one read; a read that fails or is slow counts as "no override" until the
    /// entry expires.
    async fn applying(&self, tenant: &TenantId) -> Option<Quota> {
        let read = async {
            match tokio::time::timeout(READ_LIMIT, self.overrides.get(tenant, INGEST)).await {
                Ok(Ok(stored)) => stored,
                Ok(Err(error)) => {
                    tracing::warn!(
                        error = hookline_shared::telemetry::error_chain(&error),
                        "tenant quota override unreadable; applying the default"
                    );
                    None
                }
                Err(_) => None,
            }
        };
        match self.cached.get_with_by_ref(tenant, read).await {
            Some(stored) => stored.limited(),
            None => self.default,
        }
    }

    /// Drops this replica's cached override after a change made here.
    pub(super) async fn forget(&self, tenant: &TenantId) {
        self.cached.invalidate(tenant).await;
    }
}

/// Counts `events` against the tenant's quota: all admitted, or the request refused
/// (429 with `Retry-After`; 413 for a batch larger than the burst, which no wait admits).
pub async fn admit(state: &AppState, tenant: &TenantId, events: usize) -> Result<(), ApiError> {
    let Some(quota) = state.quotas.applying(tenant).await else {
        return Ok(());
    };
    let cost = u32::try_from(events).unwrap_or(u32::MAX);
    if !quota.fits(cost) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_exceeds_tenant_quota",
            format!(
                "a batch of {events} events is more than the tenant's quota admits at once \
                 (burst {}); send smaller batches",
                quota.burst
            ),
        )
        .with_field("events"));
    }
    let now_us = hookline_shared::store::rate::micros(OffsetDateTime::now_utc());
    let counted = state.rate.admit_events(tenant, quota, cost, now_us);
    match tokio::time::timeout(READ_LIMIT, counted).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Refused::Wait(wait))) => {
            state
                .metrics
                .throttled
                .with_label_values(&["tenant_quota"])
                .inc();
            Err(ApiError::throttled(
                "tenant_quota_exceeded",
                format!(
                    "the tenant's quota of {} events a minute (burst {}) is used up; retry after the time in Retry-After",
                    quota.per_minute, quota.burst
                ),
                wait,
            ))
        }
        Ok(Err(Refused::Store(error))) => {
            tracing::warn!(
                error = hookline_shared::telemetry::error_chain(&error),
                "tenant quota not counted"
            );
            Ok(())
        }
        Err(_) => {
            tracing::warn!("tenant quota not counted: Redis did not answer in time");
            Ok(())
        }
    }
}

/// `GET`/`PUT …/quota`'s answer: the quota that applies and where it comes from.
/// `per_minute` 0 is unlimited.
#[derive(Debug, Serialize)]
pub struct QuotaView {
    per_minute: u32,
    burst: u32,
    /// `override` (set for this tenant) or `default` (`api.tenant_quota`).
    source: &'static str,
}

fn view(state: &AppState, stored: Option<Quota>) -> QuotaView {
    let (quota, source) = match stored {
        Some(quota) => (quota, "override"),
        None => (state.settings.tenant_quota, "default"),
    };
    let burst = if quota.per_minute == 0 {
        0
    } else {
        quota.burst
    };
    QuotaView {
        per_minute: quota.per_minute,
        burst,
        source,
    }
}

pub async fn get(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
) -> Result<Json<QuotaView>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let stored = state.quota_overrides.get(&tenant, INGEST).await?;
    Ok(Json(view(&state, stored)))
}

pub async fn put(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    request_body: Body,
) -> Result<Json<QuotaView>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let quota: QuotaInput = body::parse_json(request_body, QUOTA_BODY_BYTES).await?;
    let quota = Quota {
        per_minute: quota.per_minute,
        burst: quota.burst,
    };
    quota.check().map_err(ApiError::invalid)?;
    state.quota_overrides.put(&tenant, INGEST, quota).await?;
    state.quotas.forget(&tenant).await;
    Ok(Json(view(&state, Some(quota))))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant(raw_tenant)?;
    state.quota_overrides.delete(&tenant, INGEST).await?;
    state.quotas.forget(&tenant).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Two numbers; anything larger is not a quota.
const QUOTA_BODY_BYTES: usize = 1024;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaInput {
    per_minute: u32,
    #[serde(default)]
    burst: u32,
}

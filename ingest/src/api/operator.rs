//! `GET /v1/operator/overview`: the whole system at a glance, for operators only.
//!
//! Everything here is read from the state the rest of the API serves — endpoints and
//! their health, the per-minute attempt counts the deliverers write with the attempt
//! log, the dead-letter index, the retry pool, the replicas' heartbeats — so the console
//! and the API can never disagree.

use super::AppState;
use super::body::ApiQuery;
use super::error::ApiError;
use axum::Json;
use axum::extract::State;
use hookline_shared::Invalid;
use hookline_shared::domain::event::TenantId;
use hookline_shared::domain::health::count_states;
use hookline_shared::store::activity::MAX_STATS_WINDOW_MINUTES;
use hookline_shared::store::health::to_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// A replica whose last heartbeat is older than this is not counted as connected.
const REPLICA_FRESH_MS: i64 = 3 * hookline_shared::store::replicas::HEARTBEAT_MS;

#[derive(Debug, Deserialize)]
pub struct OverviewQuery {
    /// Minutes of attempts the rates cover (1 to 60, default 15).
    window_minutes: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Overview {
    #[serde(with = "time::serde::rfc3339")]
    generated_at: OffsetDateTime,
    window_minutes: i64,
    deliverers: Deliverers,
    retry_backlog: RetryBacklog,
    /// All tenants' attempts per minute over the window, oldest first.
    series: Vec<super::history::StatsBucket>,
    totals: TenantOverview,
    tenants: Vec<TenantOverview>,
}

#[derive(Debug, Default, Serialize)]
struct Deliverers {
    connected: usize,
    replicas: Vec<Replica>,
}

#[derive(Debug, Serialize)]
struct Replica {
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    last_seen: OffsetDateTime,
}

#[derive(Debug, Default, Serialize)]
struct RetryBacklog {
    /// Deliveries due now (retries and parked deliveries), waiting for a deliverer.
    due: u64,
    /// Deliveries due later.
    scheduled: u64,
    /// Seconds the longest-waiting due delivery has been due, per priority.
    oldest_due_seconds: BTreeMap<&'static str, f64>,
    /// The tenants with the most deliveries in the pool (due or not), largest first.
    largest_lanes: Vec<LaneBacklog>,
}

#[derive(Debug, Serialize)]
struct LaneBacklog {
    tenant: String,
    priority: &'static str,
    deliveries: u64,
}

/// Lanes the overview lists.
const LARGEST_LANES: usize = 10;

#[derive(Debug, Default, Serialize)]
struct TenantOverview {
    #[serde(skip_serializing_if = "String::is_empty")]
    tenant: String,
    endpoints: BTreeMap<&'static str, u64>,
    delivered: u64,
    failed: u64,
    /// Failed attempts over all attempts in the window; absent without attempts.
    failure_ratio: Option<f64>,
    deliveries_per_minute: f64,
    dead_letters: BTreeMap<String, u64>,
}

impl TenantOverview {
    fn finish(&mut self, window_minutes: i64) {
        let attempts = self.delivered + self.failed;
        self.failure_ratio = (attempts > 0).then(|| self.failed as f64 / attempts as f64);
        self.deliveries_per_minute = self.delivered as f64 / window_minutes as f64;
    }

    fn add(&mut self, other: &Self) {
        for (state, count) in &other.endpoints {
            *self.endpoints.entry(state).or_default() += count;
        }
        self.delivered += other.delivered;
        self.failed += other.failed;
        for (reason, count) in &other.dead_letters {
            *self.dead_letters.entry(reason.clone()).or_default() += count;
        }
    }
}

pub async fn overview(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<OverviewQuery>,
) -> Result<Json<Overview>, ApiError> {
    let window_minutes = query.window_minutes.unwrap_or(15);
    if !(1..=MAX_STATS_WINDOW_MINUTES).contains(&window_minutes) {
        return Err(ApiError::invalid(Invalid::new(
            "window_minutes",
            format_args!("must be 1 to {MAX_STATS_WINDOW_MINUTES}"),
        )));
    }
    let now = OffsetDateTime::now_utc();
    let now_ms = to_ms(now);
    let (replicas, backlog, largest, tenants) = tokio::try_join!(
        state.replicas.seen_since(now_ms - REPLICA_FRESH_MS),
        state.retries.backlog(now_ms),
        state.retries.largest_lanes(LARGEST_LANES),
        state.endpoints.tenants(),
    )?;
    let retry_backlog = RetryBacklog {
        due: backlog.due(),
        scheduled: backlog.waiting(),
        oldest_due_seconds: backlog
            .oldest_waits_s(now_ms)
            .into_iter()
            .map(|(priority, seconds)| (priority.as_str(), seconds))
            .collect(),
        largest_lanes: largest
            .into_iter()
            .map(|lane| LaneBacklog {
                tenant: lane.tenant,
                priority: lane.priority.as_str(),
                deliveries: lane.tasks,
            })
            .collect(),
    };
    let mut overview = Overview {
        generated_at: now,
        window_minutes,
        deliverers: Deliverers {
            connected: replicas.len(),
            replicas: replicas
                .into_iter()
                .map(|(name, seen_ms)| Replica {
                    name,
                    last_seen: OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(seen_ms) * 1_000_000,
                    )
                    .unwrap_or(now),
                })
                .collect(),
        },
        retry_backlog,
        series: Vec::new(),
        totals: TenantOverview::default(),
        tenants: Vec::new(),
    };
    let mut tenants = tenants;
    tenants.sort();
    let mut series: Vec<(i64, u64, u64)> = Vec::new();
    for tenant in tenants {
        let (mut summary, minutes) = tenant_overview(&state, &tenant, now, window_minutes).await?;
        if series.is_empty() {
            series = minutes;
        } else {
            for (total, (_, delivered, failed)) in series.iter_mut().zip(minutes) {
                total.1 += delivered;
                total.2 += failed;
            }
        }
        summary.finish(window_minutes);
        overview.totals.add(&summary);
        overview.tenants.push(summary);
    }
    overview.totals.finish(window_minutes);
    overview.series = series
        .into_iter()
        .map(super::history::StatsBucket::new)
        .collect();
    Ok(Json(overview))
}

/// The tenant's summary, and its attempts per minute over the window (the same read
/// gives both: the summary's totals are the minutes' sums).
async fn tenant_overview(
    state: &AppState,
    tenant: &TenantId,
    now: OffsetDateTime,
    window_minutes: i64,
) -> Result<(TenantOverview, Vec<(i64, u64, u64)>), ApiError> {
    let (endpoints, health, minutes, dead_letters) = tokio::try_join!(
        state.endpoints.list(tenant),
        state.health.all(tenant),
        state.activity.attempt_series(tenant, now, window_minutes),
        state.dead_letters.count_by_reason(tenant),
    )?;
    let delivered = minutes.iter().map(|(_, delivered, _)| delivered).sum();
    let failed = minutes.iter().map(|(_, _, failed)| failed).sum();
    let summary = TenantOverview {
        tenant: tenant.to_string(),
        endpoints: count_states(&endpoints, &health, &state.health_policy)
            .into_iter()
            .map(|(health_state, count)| (health_state.as_str(), count))
            .collect(),
        delivered,
        failed,
        dead_letters,
        ..TenantOverview::default()
    };
    Ok((summary, minutes))
}

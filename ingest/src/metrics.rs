//! Ingest metrics. Labels are bounded: route templates, status classes and a capped
//! catalog of event types — never a tenant, endpoint or event id.

use hookline_shared::metrics::{exponential_buckets, register};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use std::collections::HashSet;
use std::sync::Mutex;

/// Event types beyond this many distinct values are counted as `other`.
const MAX_EVENT_TYPE_LABELS: usize = 200;

#[derive(Debug)]
pub struct IngestMetrics {
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    events_accepted: IntCounterVec,
    pub publish_duration: HistogramVec,
    pub publish_errors: IntCounterVec,
    pub duplicates: IntCounter,
    /// Requests refused for a limit on abuse, by reason.
    pub throttled: IntCounterVec,
    // A std Mutex: held only to look up a small set, never across an await.
    seen_types: Mutex<HashSet<String>>,
}

impl IngestMetrics {
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            http_requests: IntCounterVec::new(
                Opts::new("hookline_http_requests_total", "HTTP API requests by route template and status class."),
                &["route", "method", "status"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            http_duration: HistogramVec::new(
                HistogramOpts::new("hookline_http_request_duration_seconds", "HTTP API request duration.")
                    .buckets(exponential_buckets(0.0005, 16)),
                &["route", "method"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            events_accepted: IntCounterVec::new(
                Opts::new("hookline_events_accepted_total", "Events accepted over HTTP and confirmed by the broker, by event type."),
                &["event_type"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            publish_duration: HistogramVec::new(
                HistogramOpts::new("hookline_publish_confirm_duration_seconds", "Time from publish to broker confirm.")
                    .buckets(exponential_buckets(0.0001, 16)),
                &["outcome"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            publish_errors: IntCounterVec::new(
                Opts::new(
                    "hookline_publish_errors_total",
                    "Events not accepted because the broker did not confirm them, by reason (unavailable, confirm_timeout, nacked, unroutable, amqp_error).",
                ),
                &["reason"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            duplicates: IntCounter::new(
                "hookline_events_duplicate_total",
                "Events whose id was already accepted within the dedup window; not published again.",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            throttled: IntCounterVec::new(
                Opts::new(
                    "hookline_http_throttled_total",
                    "API requests answered 429 for a limit on abuse, by reason (auth_failures, test_deliveries, tenant_quota).",
                ),
                &["reason"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            seen_types: Mutex::new(HashSet::new()),
        };
        for reason in ["auth_failures", "test_deliveries", "tenant_quota"] {
            metrics.throttled.with_label_values(&[reason]);
        }
        register(registry, metrics.throttled.clone());
        register(registry, metrics.http_requests.clone());
        register(registry, metrics.http_duration.clone());
        register(registry, metrics.events_accepted.clone());
        register(registry, metrics.publish_duration.clone());
        // Known reasons start at zero, so alerts see a series from the first scrape.
        for reason in hookline_shared::broker::publisher::PublishError::REASONS {
            metrics.publish_errors.with_label_values(&[reason]);
        }
        register(registry, metrics.publish_errors.clone());
        register(registry, metrics.duplicates.clone());
        metrics
    }

    pub fn event_accepted(&self, event_type: &str) {
        let label = {
            let mut seen = self.seen_types.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(event_type) || seen.len() < MAX_EVENT_TYPE_LABELS {
                seen.insert(event_type.to_owned());
                event_type
            } else {
                "other"
            }
        };
        self.events_accepted.with_label_values(&[label]).inc();
    }
}

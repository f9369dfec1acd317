//! Deliverer metrics. Labels are bounded vocabularies (outcomes, status classes,
//! reasons, sources) — never a URL, tenant, endpoint or event id.

use hookline_shared::contract::{SOURCE_AMQP, SOURCE_HTTP};
use hookline_shared::domain::health::DisabledReason;
use hookline_shared::domain::policy::DeadLetterReason;
use hookline_shared::metrics::{exponential_buckets, register};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct DelivererMetrics {
    pub events_consumed: IntCounterVec,
    pub attempts: IntCounterVec,
    pub attempt_duration: Histogram,
    pub lag: Histogram,
    pub retries_scheduled: IntCounter,
    pub held_woken: IntCounter,
    pub handed_off: IntCounter,
    /// Deliveries dropped because an erasure covers their event, by where they were.
    pub erased: IntCounterVec,
    pub retry_backlog: IntGaugeVec,
    pub dead_letters: IntCounterVec,
    pub in_flight: IntGauge,
    pub consumer_connected: IntGauge,
    pub endpoints: IntGaugeVec,
    pub endpoints_disabled: IntCounterVec,
    pub activity_dropped: IntCounter,
    /// Writes Redis refused (out of memory, unable to persist) while work was held.
    pub store_write_refusals: IntCounter,
    /// Deliveries parked in their lane instead of attempted now, by priority.
    pub parked: IntCounterVec,
    /// How long the longest-waiting due task of the retry pool has waited, by priority.
    pub lane_oldest_due: GaugeVec,
    /// Messages ready in each delivery queue, by partition.
    pub partition_ready: IntGaugeVec,
    /// Accept-to-take age of the last message this replica took, by partition.
    pub partition_lag: GaugeVec,
    /// Deliveries to ordered endpoints as they were put in their key's order.
    pub ordered: IntCounterVec,
    /// Records dropped from the ops dead-letter queue by its retention bounds.
    pub dead_letter_queue_trimmed: IntCounter,
}

fn unreachable_on_error<T>(result: prometheus::Result<T>) -> T {
    result.unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

impl DelivererMetrics {
    pub fn new(registry: &Registry, timeout: Duration) -> Self {
        // Attempt buckets from 1 ms doubling until they cover the delivery timeout.
        let mut attempt_buckets = exponential_buckets(0.001, 24);
        let limit = timeout.as_secs_f64() * 2.0;
        attempt_buckets.retain(|b| *b <= limit);
        let metrics = Self {
            events_consumed: unreachable_on_error(IntCounterVec::new(
                Opts::new(
                    "hookline_events_consumed_total",
                    "Events taken from the queue, by how they entered: http (through ingest) or amqp (published directly).",
                ),
                &["source"],
            )),
            attempts: unreachable_on_error(IntCounterVec::new(
                Opts::new(
                    "hookline_delivery_attempts_total",
                    "Delivery attempts by outcome (success, http_error, timeout, connect_error, blocked_address; and without an attempt: rate_limited, circuit_open, endpoint_busy) and HTTP status class.",
                ),
                &["outcome", "status_class"],
            )),
            attempt_duration: unreachable_on_error(Histogram::with_opts(
                HistogramOpts::new(
                    "hookline_delivery_attempt_duration_seconds",
                    "Duration of one delivery attempt.",
                )
                .buckets(attempt_buckets),
            )),
            lag: unreachable_on_error(Histogram::with_opts(
                HistogramOpts::new(
                    "hookline_delivery_lag_seconds",
                    "Time from the event's occurred_at to its successful delivery.",
                )
                .buckets(exponential_buckets(0.01, 24)),
            )),
            retries_scheduled: unreachable_on_error(IntCounter::new(
                "hookline_retries_scheduled_total",
                "Deliveries stored in Redis for a later attempt.",
            )),
            held_woken: unreachable_on_error(IntCounter::new(
                "hookline_held_deliveries_woken_total",
                "Deliveries held by an open circuit made due at once when its probe succeeded.",
            )),
            erased: unreachable_on_error(IntCounterVec::new(
                Opts::new(
                    "hookline_erased_deliveries_total",
                    "Deliveries dropped because an erasure covers their event: stage=queued (a message still in a queue), retry (a task in the retry pool), in_flight (an attempt under way when the erasure ran).",
                ),
                &["stage"],
            )),
            handed_off: unreachable_on_error(IntCounter::new(
                "hookline_deliveries_handed_off_total",
                "Deliveries still in progress when their message was acked: stored as claimed retries so the message did not wait for a slow receiver.",
            )),
            retry_backlog: unreachable_on_error(IntGaugeVec::new(
                Opts::new(
                    "hookline_retry_backlog",
                    "Deliveries waiting in Redis: state=due (ready now) or waiting (due later).",
                ),
                &["state"],
            )),
            dead_letters: unreachable_on_error(IntCounterVec::new(
                Opts::new(
                    "hookline_dead_letters_total",
                    "Deliveries and messages dead-lettered, by reason.",
                ),
                &["reason"],
            )),
            in_flight: unreachable_on_error(IntGauge::new(
                "hookline_deliveries_in_flight",
                "Delivery attempts in progress in this replica.",
            )),
            consumer_connected: unreachable_on_error(IntGauge::new(
                "hookline_consumer_connected",
                "Delivery queues (partitions, and retired queues being drained) this replica consumes now.",
            )),
            parked: unreachable_on_error(IntCounterVec::new(
                Opts::new(
                    "hookline_parked_total",
                    "Deliveries parked in their tenant's lane of the retry pool instead of attempted at once: priority=realtime (the tenant had its share in progress) or bulk.",
                ),
                &["priority"],
            )),
            lane_oldest_due: unreachable_on_error(GaugeVec::new(
                Opts::new(
                    "hookline_retry_lane_oldest_due_seconds",
                    "How long the retry pool's longest-waiting due delivery has been due, by priority (0 when none is due).",
                ),
                &["priority"],
            )),
            partition_ready: unreachable_on_error(IntGaugeVec::new(
                Opts::new(
                    "hookline_partition_ready_messages",
                    "Messages ready (not yet handed out) in each delivery queue, by partition index (or retired queue name suffix).",
                ),
                &["partition"],
            )),
            dead_letter_queue_trimmed: unreachable_on_error(IntCounter::new(
                "hookline_dead_letter_queue_trimmed_total",
                "Records dropped from the ops dead-letter queue, past retention.dead_letter_queue or beyond retention.dead_letter_queue_max.",
            )),
            ordered: unreachable_on_error(IntCounterVec::new(
                Opts::new(
                    "hookline_ordered_deliveries_total",
                    "Deliveries to ordered endpoints by where they went: released (the key's next), behind (waiting for an earlier one), gap (waiting for a missing number), late (an earlier number arriving after a later one went: delivered out of order).",
                ),
                &["placement"],
            )),
            partition_lag: unreachable_on_error(GaugeVec::new(
                Opts::new(
                    "hookline_partition_lag_seconds",
                    "Time from acceptance to this replica taking it, of the last message taken from each partition.",
                ),
                &["partition"],
            )),
            endpoints: unreachable_on_error(IntGaugeVec::new(
                Opts::new(
                    "hookline_endpoints",
                    "Endpoints by health state (healthy, failing, disabled), counted across all tenants.",
                ),
                &["state"],
            )),
            endpoints_disabled: unreachable_on_error(IntCounterVec::new(
                Opts::new(
                    "hookline_endpoints_disabled_total",
                    "Endpoints disabled by Hookline, by reason (gone: answered 410; no_success: failing too long).",
                ),
                &["reason"],
            )),
            activity_dropped: unreachable_on_error(IntCounter::new(
                "hookline_activity_dropped_total",
                "Attempt-log and event-state entries dropped (buffer full or Redis unavailable); deliveries are unaffected.",
            )),
            store_write_refusals: unreachable_on_error(IntCounter::new(
                "hookline_store_write_refusals_total",
                "Redis writes refused (OOM under noeviction, MISCONF) while the deliverer held the work and retried.",
            )),
        };
        // Known label values start at zero, so rates and alerts see a series from the
        // first scrape instead of an absent one.
        for reason in DeadLetterReason::ALL {
            metrics.dead_letters.with_label_values(&[reason.as_str()]);
        }
        for reason in [DisabledReason::Gone, DisabledReason::NoSuccess] {
            metrics
                .endpoints_disabled
                .with_label_values(&[reason.as_str()]);
        }
        for source in [SOURCE_HTTP, SOURCE_AMQP] {
            metrics.events_consumed.with_label_values(&[source]);
        }
        register(registry, metrics.events_consumed.clone());
        register(registry, metrics.attempts.clone());
        register(registry, metrics.attempt_duration.clone());
        register(registry, metrics.lag.clone());
        register(registry, metrics.retries_scheduled.clone());
        register(registry, metrics.held_woken.clone());
        register(registry, metrics.handed_off.clone());
        register(registry, metrics.erased.clone());
        register(registry, metrics.retry_backlog.clone());
        register(registry, metrics.dead_letters.clone());
        register(registry, metrics.in_flight.clone());
        register(registry, metrics.consumer_connected.clone());
        register(registry, metrics.endpoints.clone());
        register(registry, metrics.endpoints_disabled.clone());
        register(registry, metrics.activity_dropped.clone());
        register(registry, metrics.store_write_refusals.clone());
        for priority in ["realtime", "bulk"] {
            metrics.parked.with_label_values(&[priority]);
            metrics.lane_oldest_due.with_label_values(&[priority]);
        }
        register(registry, metrics.parked.clone());
        register(registry, metrics.lane_oldest_due.clone());
        register(registry, metrics.partition_ready.clone());
        register(registry, metrics.partition_lag.clone());
        for placement in ["released", "behind", "gap", "late"] {
            metrics.ordered.with_label_values(&[placement]);
        }
        register(registry, metrics.ordered.clone());
        register(registry, metrics.dead_letter_queue_trimmed.clone());
        metrics
    }
}

//! The delivery pipeline: one message in, one signed POST per matching endpoint, and for
//! each delivery an outcome made durable — delivered, retry stored in Redis, or
//! dead-lettered with a confirm — before the message is acked.

use crate::acks::AckWindow;
use crate::activity::ActivityLog;
use crate::consumer::Handler;
use crate::dead_letter::DeadLetters;
use crate::endpoint_cache::{EndpointCache, TenantEndpoints};
use crate::message::{
    delivery_count, event_as_stored, integer_header, parse_event, rejected, source, truncate,
};
use crate::metrics::DelivererMetrics;
use crate::slots::EndpointSlots;
use crate::throttle::Throttle;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hookline_shared::broker::backoff::Backoff;
use hookline_shared::contract::{
    DeadDelivery, DeadLetter, ENDPOINTS_VERSION_HEADER, PendingDelivery, RejectedMessage,
    StoredPayload, delivery_id,
};
use hookline_shared::dispatch::{AttemptReport, Dispatcher, Payload};
use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::event::Event;
use hookline_shared::domain::health::{Admission, HealthPolicy, HealthRecord, HealthState, admit};
use hookline_shared::domain::payload::{Purpose, RenderError};
use hookline_shared::domain::policy::{
    AttemptOutcome, DeadLetterReason, Decision, Failure, RetrySchedule, decide,
};
use hookline_shared::metrics::status_class;
use hookline_shared::store::activity::{
    Activity, AttemptRecord, DeliveryState, DeliveryStatus, SUCCESS,
};
use hookline_shared::store::health::{HealthStore, to_ms};
use hookline_shared::store::rate::RateLimiter;
use hookline_shared::store::retries::{Claimed, RetryStore};
use lapin::message::Delivery;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug)]
pub struct Worker {
    pub schedule: RetrySchedule,
    pub defer_delay: Duration,
    /// How long a delivery held behind an open circuit waits unless a probe wakes it.
    pub max_hold: Duration,
    /// Picks the few held deliveries that come back on the doubling timer for the probe.
    pub held_scouts: Throttle,
    pub delivery_limit: u32,
    pub dispatcher: Dispatcher,
    pub endpoints: EndpointCache,
    pub health_policy: HealthPolicy,
    pub health: HealthStore,
    pub rate: RateLimiter,
    /// How long an open circuit's probe is reserved: longer than one attempt can take.
    pub probe_lease: Duration,
    /// Names this replica as a probe's holder.
    pub replica_id: String,
    pub activity: ActivityLog,
    pub success_writes: Throttle,
    pub probe_requests: Throttle,
    /// How often a held delivery coming back may re-read its endpoint's health.
    pub recovery_checks: Throttle,
    pub retries: RetryStore,
    pub dead_letters: DeadLetters,
    pub metrics: DelivererMetrics,
    pub slots: EndpointSlots,
    /// A message's deliveries still in progress after this long are handed off to the
    /// retry pool, so the message can be acked.
    pub handoff_after: Duration,
    /// Bounds the deliveries in progress that no longer hold a message, and so the
    /// replica's memory: one permit per handed-off delivery.
    pub handoff_permits: Arc<Semaphore>,
    /// How long a claimed retry task is this replica's (`retry.lease`).
    pub retry_lease: Duration,
    /// Where deliveries outliving their message (handed off) and retries run, so
    /// shutdown waits for them.
    pub handlers: TaskTracker,
    /// Cancelled when the shutdown grace ran out: work still waiting for Redis or the
    /// broker gives up and its message goes back to the queue.
    pub abort: CancellationToken,
}

/// What must be made durable for one delivery after its attempt.
enum Action {
    Delivered { attempts: u32 },
    Retry(PendingDelivery, i64),
    DeadLetter(DeadLetter),
}

/// A deferred delivery waits `defer_delay` × 2^n, n at most this (64× the delay).
const MAX_DEFERRAL_DOUBLINGS: u32 = 6;

/// Why a delivery is put back without an attempt.
#[derive(Debug, Clone, Copy)]
enum HeldBy {
    /// The endpoint is failing and another delivery holds its probe.
    OpenCircuit,
    /// Every one of this replica's slots for the endpoint is busy; if none has freed for
    /// a while, one will by `stuck_until` at the latest (its attempt times out).
    BusySlots {
        stuck_until: Option<tokio::time::Instant>,
    },
}

impl HeldBy {
    /// The `outcome` label of `hookline_delivery_attempts_total`.
    fn outcome(self) -> &'static str {
        match self {
            Self::OpenCircuit => "circuit_open",
            Self::BusySlots { .. } => "endpoint_busy",
        }
    }
}

/// A reserved rate-limit slot this close is taken now rather than waited for in Redis.
const RATE_SLACK: Duration = Duration::from_millis(20);

/// What happened to a delivery before this attempt.
#[derive(Debug, Default)]
struct Prior {
    attempts: u32,
    deferrals: u32,
    last_error: Option<Failure>,
    rate_slot_ms: Option<i64>,
}

/// Makes an endpoint's held deliveries due now.
struct HeldWaker {
    retries: RetryStore,
    woken: prometheus::IntCounter,
    endpoint_id: String,
}

impl HeldWaker {
    async fn wake(&self) {
        let endpoint_id = &self.endpoint_id;
        match self
            .retries
            .wake_held(endpoint_id, due_in(Duration::ZERO))
            .await
        {
            Ok(0) => {}
            Ok(woken) => {
                self.woken.inc_by(woken);
                tracing::info!(%endpoint_id, woken, "circuit closed; held deliveries are due now");
            }
            Err(error) => tracing::warn!(
                %endpoint_id,
                error = format!("{error:#}"),
                "waking held deliveries failed; they come back on their own after max_hold"
            ),
        }
    }
}

/// Gave up waiting for a dependency because the shutdown grace ran out.
#[derive(Debug)]
struct Aborted;

impl Handler for Worker {
    /// Handles one message from the events queue and settles it in `acks`.
    async fn handle(self: Arc<Self>, delivery: Delivery, acks: AckWindow) {
        let tag = delivery.delivery_tag;
        match self.process_message(&delivery).await {
            Ok(()) => acks.ack(tag),
            Err(Aborted) => acks.requeue(tag),
        }
    }
}

/// One endpoint's delivery of a message: its index among the tenant's endpoints, and
/// what must be made durable. Owned, so it can outlive the message when handed off.
type EndpointDelivery = Pin<Box<dyn Future<Output = (usize, Action)> + Send>>;

impl Worker {
    async fn process_message(self: &Arc<Self>, delivery: &Delivery) -> Result<(), Aborted> {
        let routing_key = delivery.routing_key.as_str();
        if let Some(count) = delivery_count(delivery)
            && count >= u64::from(self.delivery_limit)
        {
            let record = rejected(
                delivery,
                DeadLetterReason::DeliveryLimit,
                format!("handed out {count} times"),
            );
            return self.dead_letter(record).await;
        }
        let event = match parse_event(delivery) {
            Ok(event) => Arc::new(event),
            Err(invalid) => {
                let error = hookline_shared::telemetry::error_chain(&invalid);
                tracing::warn!(error, routing_key, "invalid message dead-lettered");
                let record = rejected(delivery, DeadLetterReason::InvalidMessage, error);
                return self.dead_letter(record).await;
            }
        };
        self.metrics
            .events_consumed
            .with_label_values(&[source(delivery)])
            .inc();

        let tenant = self
            .until_durable("loading endpoints", || {
                self.endpoints.load(
                    &event.tenant,
                    integer_header(delivery, ENDPOINTS_VERSION_HEADER),
                )
            })
            .await?;
        let matching: Vec<usize> = (0..tenant.endpoints.len())
            .filter(|&index| {
                let endpoint = &tenant.endpoints[index];
                endpoint.subscribes_to(&event.event_type) && endpoint.accepts_data(&event.data)
            })
            .collect();
        if matching.is_empty() {
            return Ok(());
        }
        // One rendering per distinct format among the matching endpoints, shared by
        // every attempt of every endpoint that renders alike.
        let mut rendered: Vec<(usize, Result<Payload, RenderError>)> = Vec::new();
        for &index in &matching {
            let endpoint = &tenant.endpoints[index];
            let payload = rendered
                .iter()
                .find(|(seen, _)| tenant.endpoints[*seen].spec.renders_like(&endpoint.spec))
                .map_or_else(|| render(&event, endpoint), |(_, payload)| payload.clone());
            rendered.push((index, payload));
        }
        let event_json = event_as_stored(&event, delivery);
        let mut unsettled: Vec<(usize, Payload)> = rendered
            .iter()
            .filter_map(|(index, payload)| Some((*index, payload.as_ref().ok()?.clone())))
            .collect();
        let mut deliveries: FuturesUnordered<EndpointDelivery> = rendered
            .into_iter()
            .map(|(index, payload)| {
                let worker = self.clone();
                let event = event.clone();
                let tenant = tenant.clone();
                let event_json = event_json.clone();
                Box::pin(async move {
                    let endpoint = &tenant.endpoints[index];
                    let action = match &payload {
                        Ok(payload) => {
                            worker
                                .deliver(&event, endpoint, &tenant, payload, Prior::default())
                                .await
                        }
                        Err(error) => {
                            worker.unrenderable(&event, endpoint, error, Prior::default())
                        }
                    };
                    worker.note_state(&event, &event_json, &endpoint.id, &action);
                    (index, action)
                }) as EndpointDelivery
            })
            .collect();
        let mut actions = Vec::with_capacity(deliveries.len());
        let hand_off = tokio::time::sleep(self.handoff_after);
        tokio::pin!(hand_off);
        loop {
            tokio::select! {
                biased;
                settled = deliveries.next() => match settled {
                    Some((index, action)) => {
                        unsettled.retain(|(pending, _)| *pending != index);
                        actions.push(action);
                    }
                    None => break,
                },
                () = &mut hand_off => {
                    let wanted = u32::try_from(unsettled.len()).unwrap_or(u32::MAX);
                    match self.handoff_permits.clone().try_acquire_many_owned(wanted) {
                        Ok(permits) => {
                            self.hand_off(&event, &tenant, &unsettled, deliveries, permits)
                                .await?;
                            break;
                        }
                        // As many deliveries are handed off as this replica allows: this
                        // message waits for its own, as it would without hand-offs.
                        Err(_) => hand_off
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.handoff_after),
                    }
                }
            }
        }
        self.make_durable(actions).await
    }

    /// Takes the deliveries still in progress off the message: each is stored in the
    /// retry pool as a task this replica has claimed (under a lease, as a claimed retry
    /// is), and finishes as a retry would. A slow receiver then holds neither the
    /// message's prefetch slot nor the ack window's floor, below which every other
    /// message would have to be acked one by one. If this replica dies before the
    /// attempts finish, the lease runs out and another replica attempts them again.
    async fn hand_off(
        self: &Arc<Self>,
        event: &Arc<Event>,
        tenant: &TenantEndpoints,
        unsettled: &[(usize, Payload)],
        mut deliveries: FuturesUnordered<EndpointDelivery>,
        permits: OwnedSemaphorePermit,
    ) -> Result<(), Aborted> {
        let lease_end = due_in(self.retry_lease);
        let tasks: Vec<(PendingDelivery, i64)> = unsettled
            .iter()
            .map(|(index, payload)| {
                let task = pending(event, &tenant.endpoints[*index], payload, 0, None);
                (task, lease_end)
            })
            .collect();
        let task_ids: HashMap<usize, String> = unsettled
            .iter()
            .zip(&tasks)
            .map(|((index, _), (task, _))| (*index, task.id()))
            .collect();
        // The attempts go on while the tasks are written; what settles meanwhile is
        // settled against the task like the rest.
        let mut settled_early = Vec::new();
        {
            let written = self.until_durable("handing off slow deliveries", || {
                self.retries.schedule(&tasks)
            });
            tokio::pin!(written);
            loop {
                tokio::select! {
                    result = &mut written => break result?,
                    Some(settled) = deliveries.next() => settled_early.push(settled),
                }
            }
        }
        self.metrics.handed_off.inc_by(tasks.len() as u64);
        let worker = self.clone();
        self.handlers.spawn(Box::pin(async move {
            let settled = futures::stream::iter(settled_early).chain(deliveries);
            tokio::pin!(settled);
            while let Some((index, action)) = settled.next().await {
                let Some(id) = task_ids.get(&index) else {
                    continue;
                };
                // Aborted only when the shutdown grace ran out: the lease brings it back.
                let _ = worker.settle_claimed(id, lease_end, action).await;
            }
            drop(permits);
        }));
        Ok(())
    }

    /// The endpoint's format cannot render this event; fixing the template and replaying
    /// the dead letter delivers it.
    fn unrenderable(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        error: &RenderError,
        prior: Prior,
    ) -> Action {
        tracing::warn!(
            event_id = %event.id,
            endpoint_id = %endpoint.id,
            %error,
            "the endpoint's format cannot render this event"
        );
        Action::DeadLetter(dead_delivery(
            event,
            &endpoint.id,
            DeadLetterReason::RenderFailed,
            prior.attempts,
            prior.last_error,
        ))
    }

    fn refuse(&self, event: &Event, endpoint: &Endpoint, prior: Prior) -> Action {
        Action::DeadLetter(dead_delivery(
            event,
            &endpoint.id,
            DeadLetterReason::EndpointDisabled,
            prior.attempts,
            prior.last_error,
        ))
    }

    /// Puts a delivery back in Redis without an attempt.
    ///
    /// Behind busy slots it waits longer each time in a row, and behind stuck ones until
    /// a slot frees by its attempt's timeout, so a stuck endpoint's backlog does not
    /// churn. Behind an open circuit it waits for the circuit to close: the probe
    /// that closes it wakes everything held (`wake_held`), so a held delivery comes back
    /// on its own only after `max_hold`, in case that wake was missed. Someone must still
    /// come back to take the next probe: one deferral per half `defer_delay` per endpoint
    /// in each replica is a scout, kept on the doubling timer. A held backlog then costs a
    /// few Redis commands per endpoint per second instead of one round per held delivery
    /// every minute.
    fn defer(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        payload: &Payload,
        prior: Prior,
        held_by: HeldBy,
    ) -> Action {
        self.metrics
            .attempts
            .with_label_values(&[held_by.outcome(), "none"])
            .inc();
        // Spread the wait so a held backlog does not come back all at once.
        let jitter = 0.75 + rand::random::<f64>() / 2.0;
        let doubling = self
            .defer_delay
            .saturating_mul(1 << prior.deferrals.min(MAX_DEFERRAL_DOUBLINGS))
            .mul_f64(jitter);
        let wait = match held_by {
            HeldBy::OpenCircuit if !self.held_scouts.due(&event.tenant, &endpoint.id) => {
                self.max_hold.mul_f64(jitter)
            }
            HeldBy::OpenCircuit | HeldBy::BusySlots { stuck_until: None } => doubling,
            // Coming back before a slot can free would only park it again.
            HeldBy::BusySlots {
                stuck_until: Some(until),
            } => doubling.max(until.saturating_duration_since(tokio::time::Instant::now())),
        };
        let mut task = pending(event, endpoint, payload, prior.attempts, prior.last_error);
        task.deferrals = prior.deferrals + 1;
        let due = due_in(wait);
        task.held_until_ms = Some(due);
        Action::Retry(task, due)
    }

    /// Records the delivery's state for `GET …/events/{id}`.
    fn note_state(&self, event: &Event, event_json: &Arc<str>, endpoint_id: &str, action: &Action) {
        let now = OffsetDateTime::now_utc();
        let state = match action {
            Action::Delivered { attempts } => DeliveryState {
                status: DeliveryStatus::Delivered,
                attempts: *attempts,
                updated_at: now,
                next_attempt_at: None,
                last_error: None,
                dead_letter_reason: None,
            },
            Action::Retry(task, due_ms) => DeliveryState {
                status: DeliveryStatus::Retrying,
                attempts: task.attempts,
                updated_at: now,
                next_attempt_at: OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(*due_ms) * 1_000_000,
                )
                .ok(),
                last_error: task.last_error.as_ref().map(|f| f.message.clone()),
                dead_letter_reason: None,
            },
            Action::DeadLetter(DeadLetter::DeliveryV1(record)) => DeliveryState {
                status: DeliveryStatus::DeadLettered,
                attempts: record.attempts,
                updated_at: now,
                next_attempt_at: None,
                last_error: record.last_error.as_ref().map(|f| f.message.clone()),
                dead_letter_reason: Some(record.reason.as_str().to_owned()),
            },
            Action::DeadLetter(DeadLetter::MessageV1(_)) => return,
        };
        self.activity.record(Activity::State {
            tenant: event.tenant.clone(),
            event_id: event.id.clone(),
            event: event_json.clone(),
            endpoint_id: endpoint_id.to_owned(),
            state,
        });
    }

    /// One attempt at one endpoint — or, without an attempt, a deferral (endpoint busy in
    /// this replica, circuit open, rate limit) or a refusal (endpoint disabled).
    async fn deliver(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        tenant: &TenantEndpoints,
        payload: &Payload,
        prior: Prior,
    ) -> Action {
        let mut health = tenant.health(&endpoint.id);
        let mut state = health.state(endpoint.spec.enabled, &self.health_policy);
        if state == HealthState::Disabled {
            // Refusing dead-letters the delivery, so it must not rest on a cached view:
            // the endpoint may have been re-enabled a moment ago (and this be its replay).
            match self.fresh_state(event, endpoint).await {
                Some((fresh_health, fresh_state)) if fresh_state != HealthState::Disabled => {
                    health = fresh_health;
                    state = fresh_state;
                }
                _ => return self.refuse(event, endpoint, prior),
            }
        }
        if state == HealthState::Failing
            && prior.deferrals > 0
            && self.recovery_checks.due(&event.tenant, &endpoint.id)
        {
            // A held delivery coming back may have been woken by a probe that succeeded
            // in another replica a moment ago: check before holding it again.
            if let Some((fresh_health, fresh_state)) = self.fresh_state(event, endpoint).await {
                health = fresh_health;
                state = fresh_state;
            }
        }
        let probe_taken = state == HealthState::Failing && self.take_probe(event, endpoint).await;
        let probe = match admit(state, probe_taken) {
            Admission::Attempt => false,
            Admission::Probe => true,
            Admission::Hold => {
                return self.defer(event, endpoint, payload, prior, HeldBy::OpenCircuit);
            }
            Admission::Refuse => return self.refuse(event, endpoint, prior),
        };
        let _slot = match self.slots.acquire(&endpoint.id).await {
            Ok(slot) => slot,
            Err(busy) => {
                if probe {
                    self.release_probe(event, endpoint).await;
                }
                let held_by = HeldBy::BusySlots {
                    stuck_until: busy.stuck_until,
                };
                return self.defer(event, endpoint, payload, prior, held_by);
            }
        };
        if let Some(wait) = self.rate_limit_wait(event, endpoint, &prior).await {
            if probe {
                self.release_probe(event, endpoint).await;
            }
            self.metrics
                .attempts
                .with_label_values(&["rate_limited", "none"])
                .inc();
            let mut task = pending(event, endpoint, payload, prior.attempts, prior.last_error);
            task.deferrals = prior.deferrals;
            let due = due_in(wait);
            task.rate_slot_ms = Some(due);
            return Action::Retry(task, due);
        }

        self.metrics.in_flight.inc();
        let report = self.dispatcher.attempt(endpoint, &event.id, payload).await;
        self.metrics.in_flight.dec();
        let attempts = prior.attempts + 1;
        self.record_attempt(event, endpoint, attempts, &report);
        let disabled = self.update_health(event, endpoint, &health, &report).await;
        if probe {
            self.release_probe(event, endpoint).await;
            if matches!(report.outcome, AttemptOutcome::Delivered { .. }) {
                // The circuit is closed now: what this replica takes next must see it.
                self.endpoints.invalidate(&event.tenant);
                self.wake_held(endpoint).await;
            }
        }
        let last_error = match &report.outcome {
            AttemptOutcome::Failed(failure) => Some(failure.clone()),
            AttemptOutcome::Delivered { .. } => None,
        };
        match decide(&self.schedule, attempts, &report.outcome, rand::random()) {
            Decision::Done => Action::Delivered { attempts },
            // The endpoint is off now: no retry would ever be attempted.
            Decision::RetryAfter(_) if disabled => Action::DeadLetter(dead_delivery(
                event,
                &endpoint.id,
                DeadLetterReason::EndpointDisabled,
                attempts,
                last_error,
            )),
            Decision::RetryAfter(delay) => Action::Retry(
                pending(event, endpoint, payload, attempts, last_error),
                due_in(delay),
            ),
            Decision::DeadLetter(reason) => Action::DeadLetter(dead_delivery(
                event,
                &endpoint.id,
                reason,
                attempts,
                last_error,
            )),
        }
    }

    /// The probe found the endpoint answering: what its open circuit held back is due
    /// now — and again a moment later, for deliveries held on a view of the circuit that
    /// was already stale (another replica's cached health, a retry write still on its
    /// way). Best effort: held deliveries come back on their own after `max_hold`.
    async fn wake_held(&self, endpoint: &Endpoint) {
        let waker = HeldWaker {
            retries: self.retries.clone(),
            woken: self.metrics.held_woken.clone(),
            endpoint_id: endpoint.id.clone(),
        };
        waker.wake().await;
        let again_after = self.endpoints.ttl() * 2 + Duration::from_secs(1);
        // Not on the handlers' tracker: shutdown need not wait for it.
        tokio::spawn(async move {
            tokio::time::sleep(again_after).await;
            waker.wake().await;
        });
    }

    /// The endpoint's health and state read from Redis now, bypassing the cache.
    async fn fresh_state(
        &self,
        event: &Event,
        endpoint: &Endpoint,
    ) -> Option<(HealthRecord, HealthState)> {
        self.endpoints.invalidate(&event.tenant);
        let tenant = self.endpoints.load(&event.tenant, None).await.ok()?;
        let current = tenant.endpoints.iter().find(|e| e.id == endpoint.id)?;
        let health = tenant.health(&endpoint.id);
        let state = health.state(current.spec.enabled, &self.health_policy);
        Some((health, state))
    }

    async fn take_probe(&self, event: &Event, endpoint: &Endpoint) -> bool {
        // While a probe is out, the deliveries behind it are held without asking Redis
        // each time.
        if !self.probe_requests.due(&event.tenant, &endpoint.id) {
            return false;
        }
        match self
            .health
            .try_probe(
                &event.tenant,
                &endpoint.id,
                &self.replica_id,
                self.probe_lease,
            )
            .await
        {
            Ok(taken) => taken,
            Err(error) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "taking a probe lease failed; holding the delivery"
                );
                false
            }
        }
    }

    async fn release_probe(&self, event: &Event, endpoint: &Endpoint) {
        // If this fails the lease simply runs out.
        let _ = self
            .health
            .release_probe(&event.tenant, &endpoint.id, &self.replica_id)
            .await;
    }

    /// How long this delivery must wait for the endpoint's rate limit, if at all.
    async fn rate_limit_wait(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        prior: &Prior,
    ) -> Option<Duration> {
        let per_second = endpoint.spec.rate_limit_per_s?;
        let now = OffsetDateTime::now_utc();
        let now_ms = to_ms(now);
        let slack_ms = i64::try_from(RATE_SLACK.as_millis()).unwrap_or(0);
        if prior
            .rate_slot_ms
            .is_some_and(|slot| slot <= now_ms + slack_ms)
        {
            // The slot was reserved when the delivery was put back; it is now.
            return None;
        }
        let now_us = i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
        match self
            .rate
            .reserve(&event.tenant, &endpoint.id, per_second, now_us)
            .await
        {
            Ok(wait) if wait <= RATE_SLACK => None,
            Ok(wait) => Some(wait),
            Err(error) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "rate limiter unavailable; delivery waits"
                );
                Some(self.defer_delay)
            }
        }
    }

    /// Records the attempt's effect on the endpoint's health; true if it disabled the
    /// endpoint. Health is advisory: a Redis error here is logged, not retried.
    async fn update_health(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        known: &HealthRecord,
        report: &AttemptReport,
    ) -> bool {
        let now = OffsetDateTime::now_utc();
        let result = match &report.outcome {
            AttemptOutcome::Delivered { .. } => {
                if known.consecutive_failures == 0
                    && !self.success_writes.due(&event.tenant, &endpoint.id)
                {
                    return false;
                }
                self.health
                    .record_success(&event.tenant, &endpoint.id, now)
                    .await
                    .map(|()| false)
            }
            AttemptOutcome::Failed(failure) => {
                match self
                    .health
                    .record_failure(&event.tenant, &endpoint.id, now)
                    .await
                {
                    // Disabled meanwhile (by another delivery or replica).
                    Ok(record) if record.disabled_reason.is_some() => Ok(true),
                    Ok(record) => match record.disables_after_failure(
                        failure.status,
                        now,
                        &self.health_policy,
                    ) {
                        Some(reason) => {
                            let disabled = self
                                .health
                                .disable(&event.tenant, &endpoint.id, reason)
                                .await;
                            if matches!(disabled, Ok(true)) {
                                tracing::warn!(tenant = %event.tenant, endpoint.id = %endpoint.id, reason = reason.as_str(), "endpoint disabled");
                                self.metrics
                                    .endpoints_disabled
                                    .with_label_values(&[reason.as_str()])
                                    .inc();
                            }
                            self.endpoints.invalidate(&event.tenant);
                            disabled.map(|_| true)
                        }
                        None => Ok(false),
                    },
                    Err(error) => Err(error),
                }
            }
        };
        result.unwrap_or_else(|error| {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(error)),
                "recording endpoint health failed"
            );
            false
        })
    }

    fn record_attempt(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        attempt: u32,
        report: &AttemptReport,
    ) {
        let outcome = match &report.outcome {
            AttemptOutcome::Delivered { .. } => {
                let lag = OffsetDateTime::now_utc() - event.occurred_at;
                self.metrics.lag.observe(lag.as_seconds_f64().max(0.0));
                SUCCESS
            }
            AttemptOutcome::Failed(failure) => failure.class.as_str(),
        };
        self.metrics
            .attempts
            .with_label_values(&[outcome, status_class(report.status())])
            .inc();
        self.metrics
            .attempt_duration
            .observe(report.duration.as_secs_f64());
        let error = match &report.outcome {
            AttemptOutcome::Failed(failure) => Some(failure.message.clone()),
            AttemptOutcome::Delivered { .. } => None,
        };
        self.activity.record(Activity::Attempt {
            tenant: event.tenant.clone(),
            endpoint_id: endpoint.id.clone(),
            record: AttemptRecord {
                attempt_id: uuid::Uuid::now_v7().to_string(),
                event_id: event.id.clone(),
                event_type: event.event_type.as_str().to_owned(),
                attempt,
                at: OffsetDateTime::now_utc(),
                outcome: outcome.to_owned(),
                status: report.status(),
                duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
                error,
                response_excerpt: report.response_excerpt.clone(),
            },
        });
    }

    /// Stores the retries (one Redis round trip for all of them) and publishes the dead
    /// letters, each with a confirm, waiting out outages until the shutdown grace ends.
    async fn make_durable(&self, actions: Vec<Action>) -> Result<(), Aborted> {
        let mut retries = Vec::new();
        let mut dead = Vec::new();
        for action in actions {
            match action {
                Action::Delivered { .. } => {}
                Action::Retry(task, due) => retries.push((task, due)),
                Action::DeadLetter(record) => dead.push(record),
            }
        }
        if !retries.is_empty() {
            self.until_durable("storing retries", || self.retries.schedule(&retries))
                .await?;
            self.metrics.retries_scheduled.inc_by(retries.len() as u64);
        }
        for record in dead {
            self.dead_letter(record).await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, record: DeadLetter) -> Result<(), Aborted> {
        self.until_durable("publishing a dead letter", || {
            self.dead_letters.publish(&record)
        })
        .await?;
        self.metrics
            .dead_letters
            .with_label_values(&[record.reason().as_str()])
            .inc();
        Ok(())
    }

    /// Runs one claimed retry to its next durable state.
    pub async fn handle_retry(&self, claimed: Claimed) {
        let _ = self.process_retry(claimed).await;
    }

    async fn process_retry(&self, claimed: Claimed) -> Result<(), Aborted> {
        let Claimed { id, token, task } = claimed;
        let task = match task {
            Ok(task) => task,
            Err(unreadable) => {
                let error = hookline_shared::telemetry::error_chain(&unreadable);
                tracing::error!(delivery.id = %id, error, "unreadable retry task dead-lettered");
                let record = DeadLetter::MessageV1(RejectedMessage {
                    id: id.clone(),
                    reason: DeadLetterReason::InvalidMessage,
                    error,
                    routing_key: String::new(),
                    message_id: None,
                    body: truncate(unreadable.raw),
                    dead_lettered_at: OffsetDateTime::now_utc(),
                });
                self.dead_letter(record).await?;
                return self.complete(&id, token).await;
            }
        };
        let tenant = self
            .until_durable("loading endpoints", || {
                self.endpoints.load(&task.event.tenant, None)
            })
            .await?;
        let event_json: Arc<str> = serde_json::to_string(&task.event)
            .unwrap_or_default()
            .into();
        let Some(endpoint) = tenant.endpoints.iter().find(|e| e.id == task.endpoint_id) else {
            let record = dead_delivery(
                &task.event,
                &task.endpoint_id,
                DeadLetterReason::EndpointDeleted,
                task.attempts,
                task.last_error.clone(),
            );
            self.dead_letter(record).await?;
            return self.complete(&id, token).await;
        };
        let prior = Prior {
            attempts: task.attempts,
            deferrals: task.deferrals,
            last_error: task.last_error.clone(),
            rate_slot_ms: task.rate_slot_ms,
        };
        let rendered = match &task.payload {
            Some(stored) => Ok(stored_payload(stored)),
            None => render(&task.event, endpoint),
        };
        let action = match rendered {
            Ok(payload) => {
                self.deliver(&task.event, endpoint, &tenant, &payload, prior)
                    .await
            }
            Err(error) => self.unrenderable(&task.event, endpoint, &error, prior),
        };
        self.note_state(&task.event, &event_json, &endpoint.id, &action);
        self.settle_claimed(&id, token, action).await
    }

    /// Makes a claimed task's outcome durable, fenced by its lease `token`.
    async fn settle_claimed(&self, id: &str, token: i64, action: Action) -> Result<(), Aborted> {
        match action {
            Action::Delivered { .. } => self.complete(id, token).await,
            Action::Retry(next, due) => {
                self.until_durable("rescheduling a retry", || {
                    self.retries.reschedule(id, token, &next, due)
                })
                .await?;
                self.metrics.retries_scheduled.inc();
                Ok(())
            }
            Action::DeadLetter(record) => {
                self.dead_letter(record).await?;
                self.complete(id, token).await
            }
        }
    }

    async fn complete(&self, id: &str, token: i64) -> Result<(), Aborted> {
        let owned = self
            .until_durable("completing a retry", || self.retries.complete(id, token))
            .await?;
        if !owned {
            tracing::warn!(delivery.id = %id, "retry lease expired before completion; another replica took it over");
        }
        Ok(())
    }

    /// Retries `operation` with backoff until it succeeds or the shutdown grace ends.
    /// This is how an outage of Redis or RabbitMQ holds work instead of losing it.
    async fn until_durable<T, E, F, Fut>(&self, what: &str, mut operation: F) -> Result<T, Aborted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<anyhow::Error>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = format!("{:#}", error.into()), retry_in = ?delay, "{what} failed; holding the work");
                    tokio::select! {
                        () = self.abort.cancelled() => return Err(Aborted),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

fn render(event: &Event, endpoint: &Endpoint) -> Result<Payload, RenderError> {
    let rendered = endpoint.spec.render(event, Purpose::Live)?;
    Ok(Payload {
        content_type: rendered.content_type,
        body: Bytes::from(rendered.body),
    })
}

fn stored_payload(stored: &StoredPayload) -> Payload {
    let content_type = match stored.content_type.as_str() {
        "application/x-www-form-urlencoded" => "application/x-www-form-urlencoded",
        _ => "application/json",
    };
    Payload {
        content_type,
        body: Bytes::from(stored.body.clone().into_bytes()),
    }
}

fn pending(
    event: &Event,
    endpoint: &Endpoint,
    payload: &Payload,
    attempts: u32,
    last_error: Option<Failure>,
) -> PendingDelivery {
    PendingDelivery {
        endpoint_id: endpoint.id.clone(),
        attempts,
        deferrals: 0,
        held_until_ms: None,
        last_error,
        rate_slot_ms: None,
        payload: Some(StoredPayload {
            content_type: payload.content_type.to_owned(),
            body: String::from_utf8_lossy(&payload.body).into_owned(),
        }),
        event: event.clone(),
    }
}

fn dead_delivery(
    event: &Event,
    endpoint_id: &str,
    reason: DeadLetterReason,
    attempts: u32,
    last_error: Option<Failure>,
) -> DeadLetter {
    DeadLetter::DeliveryV1(DeadDelivery {
        id: delivery_id(&event.id, endpoint_id),
        reason,
        endpoint_id: endpoint_id.to_owned(),
        attempts,
        last_error,
        dead_lettered_at: OffsetDateTime::now_utc(),
        event: event.clone(),
    })
}

fn due_in(delay: Duration) -> i64 {
    to_ms(OffsetDateTime::now_utc() + delay)
}

//! The delivery pipeline: one message in, one signed POST per matching endpoint, and for
//! each delivery an outcome made durable — delivered, retry stored in Redis, or
//! dead-lettered with a confirm — before the message is acked.

use crate::acks::AckWindow;
use crate::activity::ActivityLog;
use crate::admission::{self, Decision, Facts, Question, RateFact, Rules, SlotFact, Step};
use crate::dead_letter::DeadLetters;
use crate::endpoint_cache::{EndpointCache, TenantEndpoints};
use crate::fairness::TenantShares;
use crate::message::{
    delivery_count, event_as_stored, has_source, integer_header, parse_event, rejected, source,
    string_header, truncate,
};
use crate::metrics::DelivererMetrics;
use crate::notify::{Notifier, SOURCE_NOTICE};
use crate::probe::ProbeLease;
use crate::settings::Settings;
use crate::slots::{EndpointSlots, Slot};
use crate::throttle::Throttle;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hookline_shared::contract::{
    DeadDelivery, DeadLetter, ENDPOINTS_VERSION_HEADER, PendingDelivery, RejectedMessage,
    SEQUENCE_HEADER, StoredPayload, TENANT_HEADER, TRACEPARENT_HEADER, delivery_id,
};
use hookline_shared::dispatch::{AttemptReport, Dispatcher, DispatcherError, Payload};
use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::event::{Event, Priority, TenantId};
use hookline_shared::domain::health::{DisabledReason, HealthPolicy, HealthRecord, HealthState};
use hookline_shared::domain::notification::{self, Notice};
use hookline_shared::domain::payload::{Purpose, RenderError};
use hookline_shared::domain::policy::{
    self, AttemptOutcome, DeadLetterReason, Failure, RetrySchedule,
};
use hookline_shared::domain::trace::TraceParent;
use hookline_shared::metrics::status_class;
use hookline_shared::retry;
use hookline_shared::store::activity::{
    Activity, AttemptRecord, DeliveryState, DeliveryStatus, SUCCESS,
};
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::{HealthStore, to_ms};
use hookline_shared::store::ordered::Ordered;
use hookline_shared::store::rate::RateLimiter;
use hookline_shared::store::retries::{Claimed, Lane, RetryStore};
use hookline_shared::store::sealing::Sealer;
use hookline_shared::store::sequences::SequenceStore;
use hookline_shared::store::{Keyspace, RedisConnection, StoreError};
use hookline_shared::telemetry;
use lapin::message::Delivery;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

#[derive(Debug)]
pub struct Worker {
    schedule: RetrySchedule,
    /// When a delivery is attempted, held or refused.
    admission: Rules,
    /// Picks the few held deliveries that come back on the doubling timer for the probe.
    held_scouts: Throttle,
    delivery_limit: u32,
    dispatcher: Dispatcher,
    endpoints: EndpointCache,
    health_policy: HealthPolicy,
    health: HealthStore,
    rate: RateLimiter,
    /// How long an open circuit's probe is reserved: longer than one attempt can take.
    probe_lease: Duration,
    /// Names this replica as a probe's holder.
    replica_id: String,
    activity: ActivityLog,
    success_writes: Throttle,
    probe_requests: Throttle,
    /// How often a held delivery coming back may re-read its endpoint's health.
    recovery_checks: Throttle,
    pub retries: RetryStore,
    /// Told of deliveries parked by this replica, so its promoter claims them at once.
    pub parked: ParkedWork,
    /// Numbers keyed events published straight to the exchange without a number.
    sequences: SequenceStore,
    /// Tells tenants about their endpoints' health.
    notifier: Notifier,
    /// At most one dead-letters notice per endpoint per this long.
    notice_window: Duration,
    /// How long an ordered key waits for a missing earlier event.
    ordering_gap: Duration,
    dead_letters: DeadLetters,
    pub metrics: DelivererMetrics,
    slots: EndpointSlots,
    /// A message's deliveries still in progress after this long are handed off to the
    /// retry pool, so the message can be acked.
    handoff_after: Duration,
    /// Bounds the deliveries in progress that no longer hold a message, and so the
    /// replica's memory: one permit per handed-off delivery.
    handoff_permits: Arc<Semaphore>,
    /// How long a claimed retry task is this replica's (`retry.lease`).
    retry_lease: Duration,
    /// Where deliveries outliving their message (handed off) and retries run, so
    /// shutdown waits for them.
    handlers: TaskTracker,
    /// Cancelled when the shutdown grace ran out: work still waiting for Redis or the
    /// broker gives up and its message goes back to the queue.
    abort: CancellationToken,
}

/// What the worker shares with the rest of the deliverer: connections, the history log,
/// its metrics, and the task tracker and abort signal that shutdown drives.
#[derive(Debug)]
pub struct WorkerDeps {
    pub notifier: Notifier,
    pub redis: RedisConnection,
    pub sealer: Arc<Sealer>,
    pub keys: Keyspace,
    pub dead_letters: DeadLetters,
    pub activity: ActivityLog,
    pub metrics: DelivererMetrics,
    /// Where deliveries outliving their message and retries run.
    pub handlers: TaskTracker,
    /// Cancelled when the shutdown grace ran out.
    pub abort: CancellationToken,
}

impl Worker {
    pub fn new(settings: &Settings, deps: WorkerDeps) -> Result<Self, DispatcherError> {
        let WorkerDeps {
            notifier,
            redis,
            sealer,
            keys,
            dead_letters,
            activity,
            metrics,
            handlers,
            abort,
        } = deps;
        let delivery = &settings.delivery;
        let health = HealthStore::new(redis.clone(), keys.clone());
        Ok(Self {
            schedule: delivery.retry_schedule.clone(),
            admission: Rules {
                defer_delay: delivery.defer_delay,
                max_hold: delivery.max_hold,
                rate_slack: RATE_SLACK,
            },
            // Shorter than a scout's shortest wait (¾ of defer_delay, jittered), so a
            // scout coming back is a scout again unless another has taken its place.
            held_scouts: Throttle::new(delivery.defer_delay / 2),
            delivery_limit: settings.amqp.delivery_limit,
            dispatcher: Dispatcher::new(&delivery.dispatch())?,
            endpoints: EndpointCache::new(
                EndpointStore::new(redis.clone(), keys.clone(), sealer.clone()),
                health.clone(),
                delivery.endpoint_cache_ttl,
            ),
            health_policy: settings.health.policy(),
            health,
            rate: RateLimiter::new(redis.clone(), keys.clone()),
            probe_lease: delivery.timeout + Duration::from_secs(5),
            replica_id: uuid::Uuid::new_v4().to_string(),
            activity,
            success_writes: Throttle::new(Duration::from_secs(30)),
            probe_requests: Throttle::new(Duration::from_millis(250)),
            recovery_checks: Throttle::new(Duration::from_millis(250)),
            retries: RetryStore::new(redis.clone(), keys.clone(), sealer.clone()),
            parked: ParkedWork::default(),
            sequences: SequenceStore::new(redis, keys),
            notifier,
            notice_window: settings.notifications.dead_letters_interval,
            ordering_gap: delivery.ordering_gap,
            dead_letters,
            metrics,
            slots: EndpointSlots::new(
                delivery.max_in_flight_per_endpoint,
                delivery.slot_wait,
                delivery.timeout,
            ),
            handoff_after: delivery.handoff_after,
            handoff_permits: Arc::new(Semaphore::new(delivery.max_handed_off)),
            retry_lease: settings.retry.lease,
            handlers,
            abort,
        })
    }
}

/// A reserved rate-limit slot this close is taken now rather than waited for in Redis.
const RATE_SLACK: Duration = Duration::from_millis(20);

/// An attempt that ends this long after its tenant snapshot was read asks the cache for
/// the erasure markers again. A marker the snapshot missed was written after the read,
/// and its sweep comes `api.erasure_settle` (2 s) later: what an attempt ending sooner
/// than this after the read stores is written before the sweep.
const ERASURE_RECHECK: Duration = Duration::from_millis(100);

/// What must be made durable for one delivery after its attempt.
enum Action {
    Delivered {
        attempts: u32,
    },
    /// An erasure covers the event: nothing of it is stored or sent again.
    Erased,
    Retry(PendingDelivery, i64),
    DeadLetter(DeadLetter),
}

/// What a delivery keeps from its message through every attempt: the event's trace
/// (each attempt is a span of it, sent as `traceparent`) and, for an ordered endpoint,
/// the event's place in its key's order. Every task [`pending`] builds carries both.
#[derive(Debug, Default, Clone, Copy)]
struct Carried {
    trace: Option<TraceParent>,
    sequence: Option<i64>,
}

/// What happened to a delivery before this attempt.
#[derive(Debug, Default)]
struct Prior {
    carried: Carried,
    attempts: u32,
    deferrals: u32,
    last_error: Option<Failure>,
    rate_slot_ms: Option<i64>,
}

/// What the admission of one delivery has learned and holds: the facts for
/// [`admission::decide`], the health record the attempt updates, and the probe lease and
/// slot it took on the way (released when dropped).
struct Admitting {
    /// When the tenant's endpoints (and erasure markers) this delivery uses were read.
    snapshot_read_at: Instant,
    facts: Facts,
    health: HealthRecord,
    probe: Option<ProbeLease>,
    slot: Option<Slot>,
}

/// Makes an endpoint's held deliveries due now.
struct HeldWaker {
    retries: RetryStore,
    woken: prometheus::IntCounter,
    tenant: TenantId,
    endpoint_id: String,
}

impl HeldWaker {
    async fn wake(&self) {
        let endpoint_id = &self.endpoint_id;
        match self
            .retries
            .wake_held(&self.tenant, endpoint_id, due_in(Duration::ZERO))
            .await
        {
            Ok(0) => {}
            Ok(woken) => {
                self.woken.inc_by(woken);
                tracing::info!(%endpoint_id, woken, "circuit closed; held deliveries are due now");
            }
            Err(error) => tracing::warn!(
                %endpoint_id,
                error = format!("{:#}", anyhow::Error::from(error)),
                "waking held deliveries failed; they come back on their own after max_hold"
            ),
        }
    }
}

/// Shards of the retry pool that this replica has parked deliveries in since its
/// promoter last looked, and the signal that wakes the promoter: parked deliveries are
/// due now, and a promoter between polls would otherwise leave them for a poll interval.
#[derive(Debug, Default)]
pub struct ParkedWork {
    shards: std::sync::atomic::AtomicU32,
    notify: tokio::sync::Notify,
}

impl ParkedWork {
    fn add(&self, shard: u16) {
        self.shards
            .fetch_or(1 << (shard % 32), std::sync::atomic::Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// The shards with new parked work (as a bit set), clearing it.
    pub fn take(&self) -> u32 {
        self.shards.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// Gave up waiting for a dependency because the shutdown grace ran out.
#[derive(Debug)]
struct Aborted;

impl Worker {
    /// Handles one message from a delivery queue and settles it in `acks`; `shares`
    /// are the tenants' places in the message's partition.
    pub async fn handle_message(
        self: Arc<Self>,
        delivery: Delivery,
        acks: AckWindow,
        shares: &Arc<TenantShares>,
    ) {
        let tag = delivery.delivery_tag;
        let span = tracing::info_span!(
            "consume",
            otel.name = "amqp consume",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            event.id = message_id(&delivery),
            event.type = delivery.routing_key.as_str(),
            tenant = string_header(&delivery, TENANT_HEADER).unwrap_or_default(),
            trace_id = tracing::field::Empty,
        );
        let trace = telemetry::continue_trace(
            &span,
            string_header(&delivery, TRACEPARENT_HEADER).and_then(TraceParent::parse),
        );
        let processed = self
            .process_message(&delivery, shares, trace)
            .instrument(span)
            .await;
        match processed {
            Ok(()) => acks.ack(tag),
            Err(Aborted) => acks.requeue(tag),
        }
    }
}

/// One endpoint's delivery of a message: its index among the tenant's endpoints, and
/// what must be made durable. Owned, so it can outlive the message when handed off.
type EndpointDelivery = Pin<Box<dyn Future<Output = (usize, Action)> + Send>>;

impl Worker {
    async fn process_message(
        self: &Arc<Self>,
        delivery: &Delivery,
        shares: &Arc<TenantShares>,
        trace: TraceParent,
    ) -> Result<(), Aborted> {
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
                // Not the error: a parser's message may quote a value of the body. It is
                // in the dead-letter record.
                tracing::warn!(
                    routing_key,
                    message.id = message_id(delivery),
                    "invalid message dead-lettered"
                );
                let record = rejected(delivery, DeadLetterReason::InvalidMessage, error);
                return self.dead_letter(record).await;
            }
        };
        if event
            .event_type
            .as_str()
            .starts_with(notification::RESERVED_PREFIX)
            && !has_source(delivery, SOURCE_NOTICE)
        {
            let error = format!(
                "type: {} is reserved for Hookline's operational events",
                event.event_type.as_str()
            );
            tracing::warn!(error, routing_key, "invalid message dead-lettered");
            let record = rejected(delivery, DeadLetterReason::InvalidMessage, error);
            return self.dead_letter(record).await;
        }
        self.metrics
            .events_consumed
            .with_label_values(&[source(delivery)])
            .inc();
        // Held until this message is settled (or its slow deliveries handed off).
        let place = match event.priority {
            Priority::Realtime => shares.enter(&event.tenant),
            Priority::Bulk => None,
        };

        let tenant = self
            .until_durable("loading endpoints", || {
                self.endpoints.load(
                    &event.tenant,
                    integer_header(delivery, ENDPOINTS_VERSION_HEADER),
                )
            })
            .await?;
        if tenant.erasures.covers(&event) {
            self.metrics.erased.with_label_values(&["queued"]).inc();
            return Ok(());
        }
        let rendered = tracing::info_span!(
            "match",
            endpoints = tenant.endpoints.len(),
            matched = tracing::field::Empty,
        )
        .in_scope(|| {
            let rendered = render_for_matching(&event, &tenant.endpoints);
            Span::current().record("matched", rendered.len());
            rendered
        });
        let rendered = self
            .order(delivery, &event, &tenant, rendered, trace)
            .await?;
        if rendered.is_empty() {
            return Ok(());
        }
        if place.is_none() {
            return self.park(&event, &tenant, rendered, trace).await;
        }
        let event_json = event_as_stored(&event, delivery);
        let actions = self
            .deliver_or_hand_off(&event, &tenant, &event_json, rendered, trace)
            .await?;
        self.make_durable(actions).await
    }

    /// Puts the deliveries to ordered endpoints of an event with an `ordering_key` in
    /// their key's order (each goes to the retry pool now if it is its key's next, else
    /// when the one before it completes), marks the event as nothing to wait for at the
    /// tenant's other ordered endpoints, and returns the deliveries left to do now.
    async fn order(
        &self,
        delivery: &Delivery,
        event: &Event,
        tenant: &TenantEndpoints,
        rendered: Vec<(usize, Result<Payload, RenderError>)>,
        trace: TraceParent,
    ) -> Result<Vec<(usize, Result<Payload, RenderError>)>, Aborted> {
        let Some(key) = event.ordering_key.as_deref() else {
            return Ok(rendered);
        };
        if !tenant.endpoints.iter().any(|e| e.spec.ordered) {
            return Ok(rendered);
        }
        let sequence =
            match integer_header(delivery, SEQUENCE_HEADER).and_then(|n| i64::try_from(n).ok()) {
                Some(sequence) => sequence,
                // Published straight to the exchange without a number: numbered as taken.
                None => self
                    .until_durable("numbering a keyed event", || {
                        let keys = [key];
                        async move { self.sequences.next(&event.tenant, &keys).await }
                    })
                    .await?
                    .first()
                    .copied()
                    .unwrap_or_default(),
            };
        let now = due_in(Duration::ZERO);
        let gap = i64::try_from(self.ordering_gap.as_millis()).unwrap_or(i64::MAX);
        let mut unordered = Vec::with_capacity(rendered.len());
        let mut matched = vec![false; tenant.endpoints.len()];
        let mut dead = Vec::new();
        for (index, payload) in rendered {
            let endpoint = &tenant.endpoints[index];
            if !endpoint.spec.ordered {
                unordered.push((index, payload));
                continue;
            }
            matched[index] = true;
            match payload {
                Ok(payload) => {
                    let carried = Carried {
                        trace: Some(trace),
                        sequence: Some(sequence),
                    };
                    let task = pending(event, endpoint, &payload, 0, None, carried);
                    let ordered = self
                        .until_durable("ordering a delivery", || {
                            self.retries.enqueue_ordered(&task, now, gap)
                        })
                        .await?;
                    if matches!(ordered, Some(Ordered::Released | Ordered::Late)) {
                        self.parked.add(Lane::of_task(&task).shard);
                    }
                    self.note_ordered(event, &endpoint.id, ordered);
                }
                Err(error) => {
                    matched[index] = false;
                    dead.push(self.unrenderable(event, endpoint, &error, Prior::default()));
                }
            }
        }
        // The key must not wait for this event where it is not delivered.
        for (endpoint, _) in tenant
            .endpoints
            .iter()
            .zip(&matched)
            .filter(|(endpoint, matched)| endpoint.spec.ordered && !**matched)
        {
            self.until_durable("skipping an ordered key's number", || {
                self.retries
                    .skip_ordered(&event.tenant, &endpoint.id, key, sequence, now, gap)
            })
            .await?;
        }
        self.make_durable(dead).await?;
        Ok(unordered)
    }

    /// Counts where an ordered delivery went, and records one waiting behind its key's
    /// earlier ones.
    fn note_ordered(&self, event: &Event, endpoint_id: &str, ordered: Option<Ordered>) {
        let placement = match &ordered {
            Some(Ordered::Released) => "released",
            Some(Ordered::Behind(_)) => "behind",
            Some(Ordered::Gap(_)) => "gap",
            Some(Ordered::Late) => "late",
            Some(Ordered::Idle) | None => return,
        };
        self.metrics.ordered.with_label_values(&[placement]).inc();
        let blocked_by = match ordered {
            Some(Ordered::Behind(head)) => head
                .strip_suffix(&format!(":{endpoint_id}"))
                .map(str::to_owned),
            Some(Ordered::Gap(_)) => None,
            _ => return,
        };
        self.activity.record(Activity::State {
            tenant: event.tenant.clone(),
            event_id: event.id.clone(),
            event: serde_json::to_string(event).unwrap_or_default().into(),
            endpoint_id: endpoint_id.to_owned(),
            state: DeliveryState {
                status: DeliveryStatus::HeldBehind,
                attempts: 0,
                updated_at: OffsetDateTime::now_utc(),
                next_attempt_at: None,
                last_error: None,
                dead_letter_reason: None,
                blocked_by,
            },
        });
    }

    /// Stores the message's deliveries in its tenant's lane of the retry pool, due now
    /// and not yet attempted, instead of attempting them: the tenant has its share of
    /// this partition in progress, or the event is bulk. The pool's round-robin over
    /// lanes delivers them. What cannot render is dead-lettered as it would be now.
    async fn park(
        &self,
        event: &Event,
        tenant: &TenantEndpoints,
        rendered: Vec<(usize, Result<Payload, RenderError>)>,
        trace: TraceParent,
    ) -> Result<(), Aborted> {
        let now = due_in(Duration::ZERO);
        let mut tasks = Vec::with_capacity(rendered.len());
        let mut unrenderable = Vec::new();
        for (index, payload) in rendered {
            let endpoint = &tenant.endpoints[index];
            match payload {
                Ok(payload) => {
                    let carried = Carried {
                        trace: Some(trace),
                        sequence: None,
                    };
                    tasks.push((pending(event, endpoint, &payload, 0, None, carried), now));
                }
                Err(error) => {
                    unrenderable.push(self.unrenderable(event, endpoint, &error, Prior::default()));
                }
            }
        }
        if !tasks.is_empty() {
            self.until_durable("parking deliveries", || self.retries.schedule(&tasks))
                .await?;
            self.parked
                .add(Lane::of(&event.tenant, event.priority).shard);
            self.metrics
                .parked
                .with_label_values(&[event.priority.as_str()])
                .inc_by(tasks.len() as u64);
        }
        self.make_durable(unrenderable).await
    }

    /// Delivers to every endpoint at once and returns what must be made durable. What
    /// is still in progress after `handoff_after` is handed off (see [`Self::hand_off`])
    /// rather than waited for.
    async fn deliver_or_hand_off(
        self: &Arc<Self>,
        event: &Arc<Event>,
        tenant: &Arc<TenantEndpoints>,
        event_json: &Arc<str>,
        rendered: Vec<(usize, Result<Payload, RenderError>)>,
        trace: TraceParent,
    ) -> Result<Vec<Action>, Aborted> {
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
                let first = Prior {
                    carried: Carried {
                        trace: Some(trace),
                        sequence: None,
                    },
                    ..Prior::default()
                };
                let span = deliver_span(&tenant.endpoints[index].id);
                Box::pin(
                    async move {
                        let endpoint = &tenant.endpoints[index];
                        let action = match &payload {
                            Ok(payload) => {
                                worker
                                    .deliver(&event, endpoint, &tenant, payload, first)
                                    .await
                            }
                            Err(error) => {
                                worker.unrenderable(&event, endpoint, error, Prior::default())
                            }
                        };
                        worker.note_state(&event, &event_json, &endpoint.id, &action);
                        (index, action)
                    }
                    .instrument(span),
                ) as EndpointDelivery
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
                            self.hand_off(event, tenant, &unsettled, deliveries, permits, trace)
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
        Ok(actions)
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
        trace: TraceParent,
    ) -> Result<(), Aborted> {
        let lease_end = due_in(self.retry_lease);
        let lane = Lane::of(&event.tenant, event.priority);
        let tasks: Vec<(PendingDelivery, i64)> = unsettled
            .iter()
            .map(|(index, payload)| {
                let carried = Carried {
                    trace: Some(trace),
                    sequence: None,
                };
                let task = pending(event, &tenant.endpoints[*index], payload, 0, None, carried);
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
                let _ = worker
                    .settle_claimed(&lane, id, lease_end, action, None)
                    .await;
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

    /// Records the delivery's state for `GET …/events/{id}`.
    fn note_state(&self, event: &Event, event_json: &Arc<str>, endpoint_id: &str, action: &Action) {
        Span::current().record(
            "outcome",
            match action {
                Action::Delivered { .. } => "delivered",
                Action::Erased => "erased",
                Action::Retry(..) => "retry",
                Action::DeadLetter(_) => "dead_letter",
            },
        );
        let now = OffsetDateTime::now_utc();
        let state = match action {
            Action::Delivered { attempts } => DeliveryState {
                status: DeliveryStatus::Delivered,
                attempts: *attempts,
                updated_at: now,
                next_attempt_at: None,
                last_error: None,
                dead_letter_reason: None,
                blocked_by: None,
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
                blocked_by: None,
            },
            Action::DeadLetter(DeadLetter::DeliveryV1(record)) => DeliveryState {
                status: DeliveryStatus::DeadLettered,
                attempts: record.attempts,
                updated_at: now,
                next_attempt_at: None,
                last_error: record.last_error.as_ref().map(|f| f.message.clone()),
                dead_letter_reason: Some(record.reason.as_str().to_owned()),
                blocked_by: None,
            },
            Action::DeadLetter(DeadLetter::MessageV1(_) | DeadLetter::DeliveryRefV1(_))
            | Action::Erased => return,
        };
        self.activity.record(Activity::State {
            tenant: event.tenant.clone(),
            event_id: event.id.clone(),
            event: event_json.clone(),
            endpoint_id: endpoint_id.to_owned(),
            state,
        });
    }

    /// One endpoint's delivery: admitted (see [`admission::decide`]) and attempted, or
    /// put back without an attempt, or refused.
    async fn deliver(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        tenant: &TenantEndpoints,
        payload: &Payload,
        prior: Prior,
    ) -> Action {
        let health = tenant.health(&endpoint.id);
        let mut admitting = Admitting {
            snapshot_read_at: tenant.read_at,
            facts: Facts {
                state: health.state(endpoint.spec.enabled, &self.health_policy),
                deferrals: prior.deferrals,
                rate: match endpoint.spec.rate_limit_per_s {
                    Some(_) => RateFact::Limited {
                        reserved_at_ms: prior.rate_slot_ms,
                    },
                    None => RateFact::Unlimited,
                },
                ..Facts::default()
            },
            health,
            probe: None,
            slot: None,
        };
        let jitter = rand::random::<f64>();
        let decision = loop {
            // The clock is read at each step: taking a slot may have waited a while.
            let now_ms = to_ms(OffsetDateTime::now_utc());
            match admission::decide(&admitting.facts, &self.admission, now_ms, jitter) {
                Step::Ask(question) => self.answer(question, event, endpoint, &mut admitting).await,
                Step::Decided(decision) => break decision,
            }
        };
        match decision {
            Decision::Attempt { .. } => {
                self.attempt(event, endpoint, payload, prior, admitting)
                    .await
            }
            Decision::Hold { held_by, wait } => {
                self.metrics
                    .attempts
                    .with_label_values(&[held_by.outcome(), "none"])
                    .inc();
                let mut task = put_back(event, endpoint, payload, prior);
                task.deferrals += 1;
                let due = due_in(wait);
                task.held_until_ms = Some(due);
                Action::Retry(task, due)
            }
            Decision::AwaitRate { wait } => {
                self.metrics
                    .attempts
                    .with_label_values(&["rate_limited", "none"])
                    .inc();
                let mut task = put_back(event, endpoint, payload, prior);
                let due = due_in(wait);
                task.rate_slot_ms = Some(due);
                Action::Retry(task, due)
            }
            Decision::Refuse => self.refuse(event, endpoint, prior),
        }
    }

    /// Learns one fact the admission asked for.
    async fn answer(
        &self,
        question: Question,
        event: &Event,
        endpoint: &Endpoint,
        admitting: &mut Admitting,
    ) {
        let facts = &mut admitting.facts;
        match question {
            Question::FreshState | Question::RecheckState => {
                let read = question == Question::FreshState
                    || self.recovery_checks.due(&event.tenant, &endpoint.id);
                if read && let Some((health, state)) = self.fresh_state(event, endpoint).await {
                    admitting.health = health;
                    facts.state = state;
                }
                facts.state_is_fresh = true;
            }
            Question::Probe => {
                admitting.probe = self.take_probe(event, endpoint).await;
                facts.probe_taken = Some(admitting.probe.is_some());
            }
            Question::Scout => {
                facts.scout = Some(self.held_scouts.due(&event.tenant, &endpoint.id));
            }
            Question::Slot => {
                facts.slot = Some(match self.slots.acquire(&endpoint.id).await {
                    Ok(slot) => {
                        admitting.slot = Some(slot);
                        SlotFact::Taken
                    }
                    Err(busy) => SlotFact::Busy {
                        stuck_for: busy.stuck_until.map(|until| {
                            until.saturating_duration_since(tokio::time::Instant::now())
                        }),
                    },
                });
            }
            Question::RateSlot => {
                facts.rate = self.reserve_rate_slot(event, endpoint).await;
            }
        }
    }

    /// The attempt of an admitted delivery, and what follows from its outcome.
    async fn attempt(
        &self,
        event: &Event,
        endpoint: &Endpoint,
        payload: &Payload,
        prior: Prior,
        admitting: Admitting,
    ) -> Action {
        let Admitting {
            snapshot_read_at,
            health,
            probe,
            slot: _slot,
            ..
        } = admitting;
        let carried = prior.carried;
        let attempts = prior.attempts + 1;
        let span = tracing::info_span!(
            "attempt",
            otel.name = "webhook attempt",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            attempt = attempts,
            http.response.status_code = tracing::field::Empty,
            error.class = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        self.metrics.in_flight.inc();
        let report = self
            .dispatcher
            .attempt(
                endpoint,
                &event.id,
                payload,
                carried
                    .trace
                    .map(|trace| telemetry::child_trace(&span, trace)),
            )
            .instrument(span.clone())
            .await;
        self.metrics.in_flight.dec();
        record_attempt_span(&span, &report);
        tracing::debug!(
            event.id = %event.id,
            endpoint.id = %endpoint.id,
            attempt = attempts,
            outcome = ?report.outcome,
            "delivery attempt"
        );
        // An erasure that ran while the request was under way: nothing of the event may
        // be stored now (the erasure's sweep may already be done). A marker older than
        // the snapshot is in it, and one written since is swept `api.erasure_settle`
        // after it was written: only a snapshot older than ERASURE_RECHECK is asked again.
        let erased = snapshot_read_at.elapsed() >= ERASURE_RECHECK && self.is_erased(event).await;
        if !erased {
            self.record_attempt(event, endpoint, attempts, &report);
        }
        let disabled = self.update_health(event, endpoint, &health, &report).await;
        if let Some(probe) = probe {
            probe.release().await;
            if matches!(report.outcome, AttemptOutcome::Delivered { .. }) {
                // The circuit is closed now: what this replica takes next must see it.
                self.endpoints.invalidate(&event.tenant);
                self.wake_held(&event.tenant, endpoint).await;
            }
        }
        if erased {
            self.metrics.erased.with_label_values(&["in_flight"]).inc();
            return Action::Erased;
        }
        let last_error = match &report.outcome {
            AttemptOutcome::Failed(failure) => Some(failure.clone()),
            AttemptOutcome::Delivered { .. } => None,
        };
        match policy::decide(&self.schedule, attempts, &report.outcome, rand::random()) {
            policy::Decision::Done => Action::Delivered { attempts },
            // The endpoint is off now: no retry would ever be attempted.
            policy::Decision::RetryAfter(_) if disabled => Action::DeadLetter(dead_delivery(
                event,
                &endpoint.id,
                DeadLetterReason::EndpointDisabled,
                attempts,
                last_error,
            )),
            policy::Decision::RetryAfter(delay) => {
                let task = pending(event, endpoint, payload, attempts, last_error, carried);
                Action::Retry(task, due_in(delay))
            }
            policy::Decision::DeadLetter(reason) => Action::DeadLetter(dead_delivery(
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
    async fn wake_held(&self, tenant: &TenantId, endpoint: &Endpoint) {
        let waker = HeldWaker {
            retries: self.retries.clone(),
            woken: self.metrics.held_woken.clone(),
            tenant: tenant.clone(),
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

    async fn take_probe(&self, event: &Event, endpoint: &Endpoint) -> Option<ProbeLease> {
        // While a probe is out, the deliveries behind it are held without asking Redis
        // each time.
        if !self.probe_requests.due(&event.tenant, &endpoint.id) {
            return None;
        }
        let taken = self
            .health
            .try_probe(
                &event.tenant,
                &endpoint.id,
                &self.replica_id,
                self.probe_lease,
            )
            .await;
        match taken {
            Ok(true) => Some(ProbeLease::taken(
                self.health.clone(),
                event.tenant.clone(),
                endpoint.id.clone(),
                self.replica_id.clone(),
            )),
            Ok(false) => None,
            Err(error) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "taking a probe lease failed; holding the delivery"
                );
                None
            }
        }
    }

    /// Reserves the next slot under the endpoint's rate limit.
    async fn reserve_rate_slot(&self, event: &Event, endpoint: &Endpoint) -> RateFact {
        let Some(per_second) = endpoint.spec.rate_limit_per_s else {
            return RateFact::Unlimited;
        };
        let now_us = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000)
            .unwrap_or(i64::MAX);
        match self
            .rate
            .reserve(&event.tenant, &endpoint.id, per_second, now_us)
            .await
        {
            Ok(wait) => RateFact::Reserved { wait },
            Err(error) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "rate limiter unavailable; delivery waits"
                );
                RateFact::Unavailable
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
                    .map(|ended| {
                        if notification::recovered(ended, &self.health_policy) {
                            self.notifier
                                .emit(endpoint, &Notice::Recovered { failures: ended });
                        }
                        false
                    })
            }
            AttemptOutcome::Failed(failure) => {
                match self
                    .health
                    .record_failure(&event.tenant, &endpoint.id, now)
                    .await
                {
                    // Disabled meanwhile (by another delivery or replica).
                    Ok(record) if record.disabled_reason.is_some() => Ok(true),
                    Ok(record) => match self.note_failure(endpoint, &record, failure, now) {
                        Some(reason) => {
                            let disabled = self
                                .health
                                .disable(&event.tenant, &endpoint.id, reason)
                                .await;
                            if matches!(disabled, Ok(true)) {
                                self.notifier.emit(
                                    endpoint,
                                    &Notice::Disabled {
                                        reason: reason.as_str().to_owned(),
                                    },
                                );
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

    /// Tells the tenant when this failure is the one that opened the circuit, and says
    /// whether it disables the endpoint.
    fn note_failure(
        &self,
        endpoint: &Endpoint,
        record: &HealthRecord,
        failure: &Failure,
        now: OffsetDateTime,
    ) -> Option<DisabledReason> {
        if notification::turned_failing(record.consecutive_failures, &self.health_policy) {
            self.notifier.emit(
                endpoint,
                &Notice::Failing {
                    failures: record.consecutive_failures,
                    last_error: Some(failure.message.clone()),
                },
            );
        }
        record.disables_after_failure(failure.status, now, &self.health_policy)
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
                subject: event.subject.clone(),
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
                Action::Delivered { .. } | Action::Erased => {}
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
        if let DeadLetter::DeliveryV1(delivery) = &record
            && !delivery
                .event
                .event_type
                .as_str()
                .starts_with(notification::RESERVED_PREFIX)
        {
            self.notice_dead_letter(delivery).await;
        }
        self.metrics
            .dead_letters
            .with_label_values(&[record.reason().as_str()])
            .inc();
        Ok(())
    }

    /// The first dead letter of an endpoint in a window tells its tenant (best effort:
    /// a Redis error skips the notice, never the dead letter).
    async fn notice_dead_letter(&self, delivery: &DeadDelivery) {
        let tenant = &delivery.event.tenant;
        let window_ms = i64::try_from(self.notice_window.as_millis()).unwrap_or(i64::MAX);
        let first = self
            .health
            .first_in_window(tenant, &delivery.endpoint_id, "dead-letters", window_ms)
            .await;
        if !matches!(first, Ok(true)) {
            return;
        }
        let Ok(endpoints) = self.endpoints.load(tenant, None).await else {
            return;
        };
        if let Some(endpoint) = endpoints
            .endpoints
            .iter()
            .find(|e| e.id == delivery.endpoint_id)
        {
            self.notifier.emit(
                endpoint,
                &Notice::DeadLettersAccumulated {
                    window_s: self.notice_window.as_secs(),
                    reason: delivery.reason.as_str().to_owned(),
                },
            );
        }
    }

    /// Whether an erasure covers `event` now (as of the tenant's cached markers).
    async fn is_erased(&self, event: &Event) -> bool {
        self.endpoints
            .load(&event.tenant, None)
            .await
            .is_ok_and(|tenant| tenant.erasures.covers(event))
    }

    /// Runs one claimed retry to its next durable state.
    pub async fn handle_retry(&self, claimed: Claimed) {
        let span = deliver_span(
            claimed
                .task
                .as_ref()
                .map_or("", |task| task.endpoint_id.as_str()),
        );
        if let Ok(task) = &claimed.task {
            span.record("event.id", task.event.id.as_str());
            span.record("tenant", task.event.tenant.as_str());
            // The retry is a span of the trace its event's message started.
            telemetry::continue_trace(&span, task.trace.as_deref().and_then(TraceParent::parse));
        }
        let _ = self.process_retry(claimed).instrument(span).await;
    }

    async fn process_retry(&self, claimed: Claimed) -> Result<(), Aborted> {
        let Claimed {
            id,
            lane,
            token,
            task,
        } = claimed;
        let task = match task {
            Ok(task) => task,
            Err(unreadable) => {
                let error = hookline_shared::telemetry::error_chain(&unreadable);
                // Not the error: a parser's message may quote a value of the task. It
                // is in the dead-letter record.
                tracing::error!(delivery.id = %id, "unreadable retry task dead-lettered");
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
                return self.complete(&lane, &id, token).await;
            }
        };
        let tenant = self
            .until_durable("loading endpoints", || {
                self.endpoints.load(&task.event.tenant, None)
            })
            .await?;
        if task.erased || tenant.erasures.covers(&task.event) {
            self.metrics.erased.with_label_values(&["retry"]).inc();
            return match task.sequence {
                Some(_) => self.complete_ordered(&lane, &id, token, &task).await,
                None => self.complete(&lane, &id, token).await,
            };
        }
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
            // An ordered delivery lets its key's next go, which is dead-lettered the
            // same way: the deleted endpoint's queued deliveries do not linger.
            return match task.sequence {
                Some(_) => self.complete_ordered(&lane, &id, token, &task).await,
                None => self.complete(&lane, &id, token).await,
            };
        };
        let prior = Prior {
            carried: Carried {
                trace: task.trace.as_deref().and_then(TraceParent::parse),
                sequence: task.sequence,
            },
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
        let ordered = task.sequence.is_some().then_some(&task);
        self.settle_claimed(&lane, &id, token, action, ordered)
            .await
    }

    /// Makes a claimed task's outcome durable, fenced by its lease `token`. An ordered
    /// delivery (`ordered`, the task) that is done lets its key's next one go.
    async fn settle_claimed(
        &self,
        lane: &Lane,
        id: &str,
        token: i64,
        action: Action,
        ordered: Option<&PendingDelivery>,
    ) -> Result<(), Aborted> {
        let complete = || async {
            match ordered {
                Some(task) => self.complete_ordered(lane, id, token, task).await,
                None => self.complete(lane, id, token).await,
            }
        };
        match action {
            Action::Delivered { .. } | Action::Erased => complete().await,
            Action::Retry(next, due) => {
                self.until_durable("rescheduling a retry", || {
                    self.retries.reschedule(lane, id, token, &next, due)
                })
                .await?;
                self.metrics.retries_scheduled.inc();
                Ok(())
            }
            Action::DeadLetter(record) => {
                self.dead_letter(record).await?;
                complete().await
            }
        }
    }

    async fn complete_ordered(
        &self,
        lane: &Lane,
        id: &str,
        token: i64,
        task: &PendingDelivery,
    ) -> Result<(), Aborted> {
        let gap = i64::try_from(self.ordering_gap.as_millis()).unwrap_or(i64::MAX);
        let completed = self
            .until_durable("completing an ordered delivery", || {
                self.retries
                    .complete_ordered(lane, id, token, task, due_in(Duration::ZERO), gap)
            })
            .await?;
        if completed.released {
            // The key's next is due now: this replica's promoter takes it at once.
            self.parked.add(lane.shard);
        }
        if !completed.owned {
            tracing::warn!(delivery.id = %id, "retry lease expired before completion; another replica took it over");
        }
        Ok(())
    }

    async fn complete(&self, lane: &Lane, id: &str, token: i64) -> Result<(), Aborted> {
        let owned = self
            .until_durable("completing a retry", || {
                self.retries.complete(lane, id, token)
            })
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
        let counted = || {
            let attempt = operation();
            async {
                attempt.await.map_err(|error| {
                    let error = error.into();
                    if error
                        .downcast_ref::<StoreError>()
                        .is_some_and(StoreError::is_refusing_writes)
                    {
                        self.metrics.store_write_refusals.inc();
                    }
                    error
                })
            }
        };
        retry::until_ok(what, retry::HOLD, &self.abort, counted)
            .await
            .map_err(|retry::Cancelled| Aborted)
    }
}

/// The body for each endpoint (by index) that the event matches: subscribed to its type
/// and accepted by its filter. One rendering per distinct format, shared by every
/// endpoint that renders alike and by every attempt of each.
fn render_for_matching(
    event: &Event,
    endpoints: &[Endpoint],
) -> Vec<(usize, Result<Payload, RenderError>)> {
    let mut rendered: Vec<(usize, Result<Payload, RenderError>)> = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        if !(endpoint.subscribes_to(&event.event_type) && endpoint.accepts_data(&event.data))
            || notification::is_about(event, &endpoint.id)
        {
            continue;
        }
        let payload = rendered
            .iter()
            .find(|(seen, _)| endpoints[*seen].spec.renders_like(&endpoint.spec))
            .map_or_else(|| render(event, endpoint), |(_, payload)| payload.clone());
        rendered.push((index, payload));
    }
    rendered
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

/// The span of one endpoint's delivery of an event, from its message or a retry task.
fn deliver_span(endpoint_id: &str) -> Span {
    tracing::info_span!(
        "deliver",
        endpoint.id = endpoint_id,
        event.id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    )
}

/// What an attempt's span says of it: never the URL or the answer's body.
fn record_attempt_span(span: &Span, report: &AttemptReport) {
    span.record(
        "duration_ms",
        u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
    );
    match &report.outcome {
        AttemptOutcome::Delivered { status } => {
            span.record("http.response.status_code", status);
        }
        AttemptOutcome::Failed(failure) => {
            if let Some(status) = failure.status {
                span.record("http.response.status_code", status);
            }
            span.record("error.class", failure.class.as_str());
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The task of a delivery put back without an attempt: everything it had before.
fn put_back(
    event: &Event,
    endpoint: &Endpoint,
    payload: &Payload,
    prior: Prior,
) -> PendingDelivery {
    PendingDelivery {
        deferrals: prior.deferrals,
        ..pending(
            event,
            endpoint,
            payload,
            prior.attempts,
            prior.last_error,
            prior.carried,
        )
    }
}

fn pending(
    event: &Event,
    endpoint: &Endpoint,
    payload: &Payload,
    attempts: u32,
    last_error: Option<Failure>,
    carried: Carried,
) -> PendingDelivery {
    PendingDelivery {
        attempts,
        last_error,
        payload: Some(StoredPayload {
            content_type: payload.content_type.to_owned(),
            body: String::from_utf8_lossy(&payload.body).into_owned(),
        }),
        sequence: carried.sequence,
        trace: carried.trace.map(|trace| trace.to_string()),
        ..PendingDelivery::new(event.clone(), endpoint.id.clone())
    }
}

/// The event's id for the consume span, before the body is parsed: its message id.
fn message_id(delivery: &Delivery) -> &str {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or("", |id| id.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_shared::domain::endpoint::EndpointSpec;
    use hookline_shared::domain::event::{EventMessage, Fallbacks, TenantId};
    use hookline_shared::domain::signing::SigningSecret;
    use serde_json::json;

    fn endpoint(id: &str, spec: serde_json::Value) -> Endpoint {
        let spec: EndpointSpec = serde_json::from_value(spec).expect("spec");
        spec.validate().expect("valid spec");
        Endpoint {
            id: id.into(),
            tenant: TenantId::parse("acme").expect("tenant"),
            spec,
            secret: SigningSecret::from_random_bytes([1; 32]),
            retiring_secret: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn event(event_type: &str, data: serde_json::Value) -> Event {
        let message: EventMessage =
            serde_json::from_value(json!({"type": event_type, "data": data})).expect("message");
        Event::from_message(
            message,
            Fallbacks {
                tenant: Some(TenantId::parse("acme").expect("tenant")),
                id: "evt_1".into(),
                occurred_at: OffsetDateTime::UNIX_EPOCH,
            },
        )
        .expect("event")
    }

    #[test]
    fn only_matching_endpoints_are_rendered_and_alike_formats_share_one_body() {
        let endpoints = [
            endpoint(
                "json_a",
                json!({"url": "https://a.example", "event_types": ["candidate.*"]}),
            ),
            endpoint(
                "other_type",
                json!({"url": "https://b.example", "event_types": ["invoice.#"]}),
            ),
            endpoint(
                "form",
                json!({"url": "https://c.example", "event_types": ["#"], "format": "form"}),
            ),
            endpoint(
                "json_b",
                json!({"url": "https://d.example", "event_types": ["#"]}),
            ),
            endpoint(
                "filtered_out",
                json!({"url": "https://e.example", "event_types": ["#"], "filter": {"job.id": 7}}),
            ),
        ];
        let rendered = render_for_matching(
            &event("candidate.interested", json!({"job": {"id": 42}})),
            &endpoints,
        );
        let indexes: Vec<usize> = rendered.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, [0, 2, 3]);
        let body = |position: usize| match &rendered[position].1 {
            Ok(payload) => payload.body.clone(),
            Err(error) => panic!("{error}"),
        };
        assert_eq!(
            body(0).as_ptr(),
            body(2).as_ptr(),
            "two JSON endpoints share one rendering"
        );
        assert_ne!(body(0), body(1), "the form endpoint has its own body");
    }
}

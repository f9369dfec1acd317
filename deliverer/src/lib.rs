//! `hookline-deliverer`: consumes events, POSTs signed webhooks to every matching
//! endpoint, keeps retry schedules in Redis and dead-letters what is exhausted.
//!
//! # Layout
//! - [`consumer`]: the supervised AMQP consumer; [`acks`]: batched acknowledgements.
//! - [`delivery`]: the pipeline — match, render, attempt, decide, make durable, ack.
//! - [`retries`]: promoting due retries from Redis under a lease.
//! - [`dead_letter`]: publishing dead-letter records with confirms.
//! - [`endpoint_cache`]: a short-lived cache of each tenant's endpoints and health.
//! - [`activity`]: the batched writer of the attempt log and per-event state.
//! - [`dead_letter_index`]: indexes dead letters in Redis for the API.
//! - [`health_gauge`]: counts endpoints by health state for the metrics.
//! - [`heartbeat`]: announces the replica in Redis for the operator overview.
//! - [`settings`], [`metrics`].

pub mod acks;
pub mod activity;
pub mod admission;
pub mod consumer;
pub mod dead_letter;
pub mod dead_letter_index;
pub mod dead_letter_trim;
pub mod delivery;
pub mod endpoint_cache;
pub mod fairness;
pub mod health_gauge;
pub mod heartbeat;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod partitions;
pub mod periodic;
pub mod probe;
pub mod retries;
pub mod settings;
pub mod slots;
pub mod tenant_retention;
pub mod throttle;

use anyhow::Context;
use hookline_shared::broker::publisher::Publisher;
use hookline_shared::broker::topology::Topology;
use hookline_shared::lifecycle::open_store;
use hookline_shared::metrics::{Readiness, new_registry, serve_admin};
use hookline_shared::store::Keyspace;
use hookline_shared::store::activity::{ActivityStore, Retention};
use hookline_shared::store::dead_letters::DeadLetterStore;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use hookline_shared::store::replicas::ReplicaRegistry;
use settings::Settings;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use hookline_shared::lifecycle::shutdown_signal;

/// The deliverer with its admin listener bound, ready to run.
#[derive(Debug)]
pub struct Deliverer {
    settings: Settings,
    admin: TcpListener,
}

impl Deliverer {
    pub async fn bind(settings: Settings) -> anyhow::Result<Self> {
        let admin = TcpListener::bind(settings.admin.listen)
            .await
            .with_context(|| {
                format!(
                    "binding the admin port to {} (admin.listen)",
                    settings.admin.listen
                )
            })?;
        Ok(Self { settings, admin })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.settings.admin.listen)
    }

    /// Delivers until `shutdown`; then stops consuming, gives in-flight deliveries the
    /// shutdown grace to finish, returns the rest to the queue and exits.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { settings, admin } = self;
        let registry = new_registry();
        let readiness = Readiness::new(&[
            "amqp_consumer",
            "amqp_dead_letter_index",
            "amqp_publisher",
            "redis",
        ]);
        let metrics = metrics::DelivererMetrics::new(&registry, settings.delivery.timeout);
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();

        tasks.spawn(serve_admin(
            admin,
            settings.admin.limits,
            hookline_shared::server::ServerMetrics::new(&registry),
            registry,
            readiness.clone(),
            background.clone(),
        ));

        let topology = Topology::new(
            &settings.prefix,
            settings.amqp.queue_type,
            settings.amqp.partitions,
        );
        let publisher = Publisher::spawn(
            settings.amqp.clone(),
            topology.clone(),
            "deliverer-dead-letters",
            readiness.flag("amqp_publisher"),
            &tasks,
            background.clone(),
        );
        let Some((redis, sealer)) = open_store(
            &settings.redis,
            &settings.secrets,
            readiness.flag("redis"),
            &tasks,
            &background,
            &shutdown,
        )
        .await?
        else {
            background.cancel();
            tasks.close();
            tasks.wait().await;
            return Ok(());
        };
        let keys = Keyspace::new(&settings.prefix);
        let abort = CancellationToken::new();
        let handlers = TaskTracker::new();
        let (activity, history) = activity::ActivityLog::spawn(
            ActivityStore::new(redis.clone(), keys.clone(), sealer.clone()),
            Retention {
                max_age: settings.retention.attempts,
                attempts_per_endpoint: settings.retention.attempts_per_endpoint,
                events_per_tenant: settings.retention.events_per_tenant,
            },
            metrics.activity_dropped.clone(),
        );
        let endpoints_gauge = metrics.endpoints.clone();
        let consumer_connected = metrics.consumer_connected.clone();
        let worker = Arc::new(
            delivery::Worker::new(
                &settings,
                delivery::WorkerDeps {
                    notifier: notify::Notifier {
                        publisher: publisher.clone(),
                        exchange: topology.partitions_exchange.clone(),
                        operator_tenant: hookline_shared::domain::event::TenantId::parse(
                            settings.notifications.operator_tenant.clone(),
                        )
                        .ok(),
                        tasks: handlers.clone(),
                        abort: abort.clone(),
                    },
                    redis: redis.clone(),
                    sealer: sealer.clone(),
                    keys: keys.clone(),
                    dead_letters: dead_letter::DeadLetters::new(
                        publisher,
                        topology.dead_letter_exchange.clone(),
                        topology.dead_letter_index_queue.clone(),
                    ),
                    activity,
                    metrics,
                    handlers: handlers.clone(),
                    abort: abort.clone(),
                },
            )
            .context("building the HTTP client")?,
        );

        let side_tasks = vec![
            tokio::spawn(
                tenant_retention::TenantRetentionTrim {
                    overrides: hookline_shared::store::retention::RetentionStore::new(
                        redis.clone(),
                        keys.clone(),
                    ),
                    endpoints: hookline_shared::store::endpoints::EndpointStore::new(
                        redis.clone(),
                        keys.clone(),
                        sealer.clone(),
                    ),
                    activity: ActivityStore::new(redis.clone(), keys.clone(), sealer.clone()),
                    dead_letters: DeadLetterStore::new(redis.clone(), keys.clone(), sealer.clone()),
                    every: settings.retention.tenant_check,
                }
                .run(shutdown.clone()),
            ),
            tokio::spawn(
                dead_letter_trim::DeadLetterTrim {
                    settings: settings.amqp.clone(),
                    queue: topology.dead_letter_queue.clone(),
                    max_age: settings.retention.dead_letter_queue,
                    max_len: settings.retention.dead_letter_queue_max,
                    every: settings.retention.dead_letter_queue_check,
                    dropped: worker.metrics.dead_letter_queue_trimmed.clone(),
                }
                .run(shutdown.clone()),
            ),
            tokio::spawn(retries::migrate_legacy_pool(
                worker.retries.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(
                retries::Promoter {
                    worker: worker.clone(),
                    poll_interval: settings.retry.poll_interval,
                    batch: settings.retry.batch,
                    lease: settings.retry.lease,
                    bulk_floor: settings.fairness.bulk_floor,
                    handlers: handlers.clone(),
                }
                .run(shutdown.clone()),
            ),
            tokio::spawn(
                health_gauge::HealthGauge {
                    endpoints: EndpointStore::new(redis.clone(), keys.clone(), sealer.clone()),
                    health: HealthStore::new(redis.clone(), keys.clone()),
                    policy: settings.health.policy(),
                    gauge: endpoints_gauge,
                }
                .run(shutdown.clone()),
            ),
            tokio::spawn(
                heartbeat::Heartbeat {
                    registry: ReplicaRegistry::new(redis.clone(), keys.clone()),
                    replica: heartbeat::replica_name(),
                    connected: consumer_connected.clone(),
                }
                .run(shutdown.clone()),
            ),
        ];
        let mut consumers = vec![tokio::spawn(as_stopped(
            consumer::ConsumerLoop {
                settings: settings.amqp.clone(),
                queue: topology.dead_letter_index_queue.clone(),
                topology: topology.clone(),
                prefetch: 50,
                handler: Arc::new(dead_letter_index::DeadLetterIndexer {
                    store: DeadLetterStore::new(redis, keys, sealer.clone()),
                    retention: settings.retention.dead_letters,
                    abort: abort.clone(),
                }),
                group: consumer::ConsumerGroup::new(
                    Some(readiness.flag("amqp_dead_letter_index")),
                    None,
                    1,
                ),
                handlers: handlers.clone(),
            }
            .run(shutdown.clone()),
        ))];
        let partitions = topology.partition_queues();
        let consume = {
            let (settings, topology, worker, metrics) = (
                settings.clone(),
                topology.clone(),
                worker.clone(),
                worker.metrics.clone(),
            );
            let (handlers, shutdown) = (handlers.clone(), shutdown.clone());
            move |queue: String, group: consumer::ConsumerGroup| {
                let handler = Arc::new(fairness::PartitionHandler {
                    worker: worker.clone(),
                    shares: fairness::TenantShares::new(settings.fairness.tenant_share),
                    lag: metrics
                        .partition_lag
                        .with_label_values(&[&partitions::label(&topology, &queue)]),
                });
                consumer::ConsumerLoop {
                    settings: settings.amqp.clone(),
                    queue,
                    topology: topology.clone(),
                    prefetch: settings.amqp.prefetch,
                    handler,
                    group,
                    handlers: handlers.clone(),
                }
                .run(shutdown.clone())
            }
        };
        let partition_group = consumer::ConsumerGroup::new(
            Some(readiness.flag("amqp_consumer")),
            Some(consumer_connected.clone()),
            partitions.len(),
        );
        for queue in &partitions {
            consumers.push(tokio::spawn(as_stopped(consume(
                queue.clone(),
                partition_group.clone(),
            ))));
        }
        // Queues left by an earlier partition count: drained by every replica.
        consumers.push(tokio::spawn({
            let (amqp, topology, shutdown) =
                (settings.amqp.clone(), topology.clone(), shutdown.clone());
            let metrics = worker.metrics.clone();
            async move {
                let retired = partitions::find_retired(&amqp, &topology, &shutdown)
                    .await
                    .unwrap_or_default();
                let group = consumer::ConsumerGroup::new(None, Some(consumer_connected), 0);
                let gauged = partitions.iter().chain(&retired).cloned().collect();
                let gauge = tokio::spawn(partitions::gauge_ready(
                    amqp, topology, gauged, metrics, shutdown,
                ));
                let draining = retired
                    .into_iter()
                    .map(|queue| tokio::spawn(consume(queue, group.clone())));
                let stopped = futures::future::join_all(draining).await;
                let _ = gauge.await;
                stopped
                    .into_iter()
                    .filter_map(|stopped| stopped.ok().flatten())
                    .collect()
            }
        }));
        Running {
            consumers,
            side_tasks,
            handlers,
            abort,
            history,
        }
        .drain(&shutdown, settings.shutdown.grace)
        .await;
        background.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("deliverer stopped");
        Ok(())
    }
}

/// The connections and ack windows of consumers that stopped consuming.
type Stopped = Vec<(lapin::Connection, acks::AckWindow)>;

async fn as_stopped(
    consumer: impl Future<Output = Option<(lapin::Connection, acks::AckWindow)>>,
) -> Stopped {
    consumer.await.into_iter().collect()
}

/// What runs until shutdown, and the order in which it stops.
struct Running {
    /// Consumers; each returns its connection and ack window when it stops consuming.
    consumers: Vec<tokio::task::JoinHandle<Stopped>>,
    /// The retry promoter, the health gauge and the heartbeat: they stop on shutdown.
    side_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Every message handler, retry and handed-off delivery.
    handlers: TaskTracker,
    /// Tells work still waiting for Redis or the broker to give up.
    abort: CancellationToken,
    history: activity::HistoryWriter,
}

impl Running {
    /// Waits for `shutdown`, then: stops consuming and promoting retries; gives the work
    /// in progress `grace` to finish, then aborts what still waits for a dependency (its
    /// message goes back to the queue); acks what settled and closes the channels, which
    /// returns every message not acked; and writes out the delivery history.
    async fn drain(self, shutdown: &CancellationToken, grace: Duration) {
        let Self {
            consumers,
            side_tasks,
            handlers,
            abort,
            history,
        } = self;
        shutdown.cancelled().await;
        let mut stopped = Vec::new();
        for consumer in consumers {
            stopped.extend(consumer.await.unwrap_or_default());
        }
        for task in side_tasks {
            let _ = task.await;
        }

        tracing::info!(?grace, "draining in-flight deliveries");
        handlers.close();
        if tokio::time::timeout(grace, handlers.wait()).await.is_err() {
            tracing::warn!("shutdown grace ran out; returning unfinished messages to the queue");
            abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), handlers.wait()).await;
        }
        for (connection, acks) in stopped {
            acks.finish().await;
            // Closing the channel returns every delivery not acked above to the queue.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                connection.close(200, "shutdown".into()),
            )
            .await;
        }
        history.finish(Duration::from_secs(5)).await;
    }
}

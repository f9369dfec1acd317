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
pub mod consumer;
pub mod dead_letter;
pub mod dead_letter_index;
pub mod delivery;
pub mod endpoint_cache;
pub mod health_gauge;
pub mod heartbeat;
pub mod message;
pub mod metrics;
pub mod retries;
pub mod settings;
pub mod slots;
pub mod throttle;

use anyhow::Context;
use hookline_shared::broker::publisher::Publisher;
use hookline_shared::broker::topology::Topology;
use hookline_shared::dispatch::Dispatcher;
use hookline_shared::lifecycle::open_store;
use hookline_shared::metrics::{Readiness, new_registry, serve_admin};
use hookline_shared::store::Keyspace;
use hookline_shared::store::activity::{ActivityStore, Retention};
use hookline_shared::store::dead_letters::DeadLetterStore;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use hookline_shared::store::rate::RateLimiter;
use hookline_shared::store::replicas::ReplicaRegistry;
use hookline_shared::store::retries::RetryStore;
use settings::Settings;
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

        let topology = Topology::new(&settings.prefix, settings.amqp.queue_type);
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
        let health = HealthStore::new(redis.clone(), keys.clone());
        let (activity, activity_writer) = activity::ActivityLog::spawn(
            ActivityStore::new(redis.clone(), keys.clone()),
            Retention {
                max_age: settings.retention.attempts,
                attempts_per_endpoint: settings.retention.attempts_per_endpoint,
                events_per_tenant: settings.retention.events_per_tenant,
            },
            metrics.activity_dropped.clone(),
        );
        let handlers = TaskTracker::new();
        let worker = Arc::new(delivery::Worker {
            schedule: settings.delivery.retry_schedule.clone(),
            defer_delay: settings.delivery.defer_delay,
            max_hold: settings.delivery.max_hold,
            // Shorter than a scout's shortest wait (¾ of defer_delay, jittered), so a
            // scout coming back is a scout again unless another has taken its place.
            held_scouts: throttle::Throttle::new(settings.delivery.defer_delay / 2),
            delivery_limit: settings.amqp.delivery_limit,
            dispatcher: Dispatcher::new(&settings.delivery.dispatch())
                .context("building the HTTP client")?,
            endpoints: endpoint_cache::EndpointCache::new(
                EndpointStore::new(redis.clone(), keys.clone(), sealer.clone()),
                health.clone(),
                settings.delivery.endpoint_cache_ttl,
            ),
            health_policy: settings.health.policy(),
            health: health.clone(),
            rate: RateLimiter::new(redis.clone(), keys.clone()),
            probe_lease: settings.delivery.timeout + Duration::from_secs(5),
            replica_id: uuid::Uuid::new_v4().to_string(),
            activity,
            success_writes: throttle::Throttle::new(Duration::from_secs(30)),
            probe_requests: throttle::Throttle::new(Duration::from_millis(250)),
            recovery_checks: throttle::Throttle::new(Duration::from_millis(250)),
            retries: RetryStore::new(redis.clone(), keys.clone()),
            dead_letters: dead_letter::DeadLetters::new(
                publisher,
                topology.dead_letter_exchange.clone(),
            ),
            metrics,
            slots: slots::EndpointSlots::new(
                settings.delivery.max_in_flight_per_endpoint,
                settings.delivery.slot_wait,
                settings.delivery.timeout,
            ),
            handoff_after: settings.delivery.handoff_after,
            handoff_permits: Arc::new(tokio::sync::Semaphore::new(
                settings.delivery.max_handed_off,
            )),
            retry_lease: settings.retry.lease,
            handlers: handlers.clone(),
            abort: abort.clone(),
        });

        let promoter = retries::Promoter {
            worker: worker.clone(),
            poll_interval: settings.retry.poll_interval,
            batch: settings.retry.batch,
            lease: settings.retry.lease,
            handlers: handlers.clone(),
        };
        let promoting = tokio::spawn(promoter.run(shutdown.clone()));
        let gauge = tokio::spawn(
            health_gauge::HealthGauge {
                endpoints: EndpointStore::new(redis.clone(), keys.clone(), sealer.clone()),
                health,
                policy: settings.health.policy(),
                gauge: worker.metrics.endpoints.clone(),
            }
            .run(shutdown.clone()),
        );
        let heartbeat = tokio::spawn(
            heartbeat::Heartbeat {
                registry: ReplicaRegistry::new(redis.clone(), keys.clone()),
                replica: heartbeat::replica_name(),
                connected: worker.metrics.consumer_connected.clone(),
            }
            .run(shutdown.clone()),
        );
        let indexer = consumer::ConsumerLoop {
            settings: settings.amqp.clone(),
            queue: topology.dead_letter_index_queue.clone(),
            topology: topology.clone(),
            prefetch: 50,
            handler: Arc::new(dead_letter_index::DeadLetterIndexer {
                store: DeadLetterStore::new(redis, keys),
                retention: settings.retention.dead_letters,
                abort: abort.clone(),
            }),
            ready: readiness.flag("amqp_dead_letter_index"),
            connected: None,
            handlers: handlers.clone(),
        };
        let indexing = tokio::spawn(indexer.run(shutdown.clone()));
        let consumer = consumer::ConsumerLoop {
            settings: settings.amqp.clone(),
            queue: topology.deliveries_queue.clone(),
            topology,
            prefetch: settings.amqp.prefetch,
            handler: worker.clone(),
            ready: readiness.flag("amqp_consumer"),
            connected: Some(worker.metrics.consumer_connected.clone()),
            handlers: handlers.clone(),
        };
        drop(worker);
        let stopped = consumer.run(shutdown.clone()).await;
        let _ = promoting.await;
        let _ = gauge.await;
        let _ = heartbeat.await;
        let index_stopped = indexing.await.ok().flatten();

        tracing::info!(grace = ?settings.shutdown.grace, "draining in-flight deliveries");
        handlers.close();
        if tokio::time::timeout(settings.shutdown.grace, handlers.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace ran out; returning unfinished messages to the queue");
            abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), handlers.wait()).await;
        }
        for (connection, acks) in [stopped, index_stopped].into_iter().flatten() {
            acks.finish().await;
            // Closing the channel returns every delivery not acked above to the queue.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                connection.close(200, "shutdown".into()),
            )
            .await;
        }
        // The handlers are done, so the worker and its activity log are dropped: the
        // writer drains what is buffered and stops.
        let _ = tokio::time::timeout(Duration::from_secs(5), activity_writer).await;
        background.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("deliverer stopped");
        Ok(())
    }
}

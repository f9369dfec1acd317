//! `hookline-deliverer`: consumes events, POSTs signed webhooks to every matching
//! endpoint, keeps retry schedules in Redis and dead-letters what is exhausted.
//!
//! # Layout
//! - [`consumer`]: the supervised AMQP consumer; [`acks`]: batched acknowledgements.
//! - [`delivery`]: the pipeline — match, render, attempt, decide, make durable, ack.
//! - [`dispatch`]: one signed HTTP attempt; [`address_guard`]: the SSRF guard.
//! - [`retries`]: promoting due retries from Redis under a lease.
//! - [`dead_letter`]: publishing dead-letter records with confirms.
//! - [`endpoint_cache`]: a short-lived cache of each tenant's endpoints.
//! - [`settings`], [`metrics`].

pub mod acks;
pub mod address_guard;
pub mod consumer;
pub mod dead_letter;
pub mod delivery;
pub mod dispatch;
pub mod endpoint_cache;
pub mod metrics;
pub mod retries;
pub mod settings;

use anyhow::Context;
use hookline_shared::broker::publisher::Publisher;
use hookline_shared::broker::topology::Topology;
use hookline_shared::lifecycle::{connect_redis, watch_redis};
use hookline_shared::metrics::{Readiness, new_registry, serve_admin};
use hookline_shared::store::Keyspace;
use hookline_shared::store::endpoints::EndpointStore;
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
        let readiness = Readiness::new(&["amqp_consumer", "amqp_publisher", "redis"]);
        let metrics = metrics::DelivererMetrics::new(&registry, settings.delivery.timeout);
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();

        tasks.spawn(serve_admin(
            admin,
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
        let Some(redis) = connect_redis(&settings.redis, &shutdown).await else {
            background.cancel();
            tasks.close();
            tasks.wait().await;
            return Ok(());
        };
        tasks.spawn(watch_redis(
            redis.clone(),
            readiness.flag("redis"),
            background.clone(),
        ));
        let keys = Keyspace::new(&settings.prefix);
        let abort = CancellationToken::new();
        let worker = Arc::new(delivery::Worker {
            schedule: settings.delivery.retry_schedule.clone(),
            defer_delay: settings.delivery.defer_delay,
            delivery_limit: settings.amqp.delivery_limit,
            dispatcher: dispatch::Dispatcher::new(&settings.delivery)
                .context("building the HTTP client")?,
            endpoints: endpoint_cache::EndpointCache::new(
                EndpointStore::new(redis.clone(), keys.clone()),
                settings.delivery.endpoint_cache_ttl,
            ),
            retries: RetryStore::new(redis, keys),
            dead_letters: dead_letter::DeadLetters::new(
                publisher,
                topology.dead_letter_exchange.clone(),
            ),
            metrics,
            slots: delivery::EndpointSlots::new(settings.delivery.max_in_flight_per_endpoint),
            abort: abort.clone(),
        });

        let handlers = TaskTracker::new();
        let promoter = retries::Promoter {
            worker: worker.clone(),
            poll_interval: settings.retry.poll_interval,
            batch: settings.retry.batch,
            lease: settings.retry.lease,
            handlers: handlers.clone(),
        };
        let promoting = tokio::spawn(promoter.run(shutdown.clone()));
        let consumer = consumer::ConsumerLoop {
            settings: settings.amqp.clone(),
            topology,
            worker,
            ready: readiness.flag("amqp_consumer"),
            handlers: handlers.clone(),
        };
        let stopped = consumer.run(shutdown.clone()).await;
        let _ = promoting.await;

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
        if let Some((connection, acks)) = stopped {
            acks.finish().await;
            // Closing the channel returns every delivery not acked above to the queue.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                connection.close(200, "shutdown".into()),
            )
            .await;
        }
        background.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("deliverer stopped");
        Ok(())
    }
}

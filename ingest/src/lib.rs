//! `hookline-ingest`: accepts events over HTTP and publishes them to RabbitMQ, answering
//! only after the broker confirmed; serves the management API.
//!
//! # Layout
//! - [`settings`]: the typed settings and their compiled-in defaults.
//! - [`api`]: the axum router — events, endpoints, errors, bodies.
//! - [`accepted`]: the dedup window of event ids, in Redis.
//! - [`metrics`]: ingest's Prometheus metrics.
//!
//! `main` only loads settings and calls [`Ingest::bind`] then [`Ingest::run`]; tests do
//! the same with port 0.

pub mod accepted;
pub mod api;
pub mod console;
pub mod metrics;
pub mod settings;

use anyhow::Context;
use axum::http::StatusCode;
use hookline_shared::broker::publisher::Publisher;
use hookline_shared::broker::topology::Topology;
use hookline_shared::lifecycle::open_store;
use hookline_shared::metrics::{Readiness, new_registry, serve_admin};
use hookline_shared::server::{ServerMetrics, raise_open_files_limit, serve};
use hookline_shared::store::Keyspace;

use hookline_shared::dispatch::Dispatcher;
pub use hookline_shared::lifecycle::shutdown_signal;
use hookline_shared::store::activity::ActivityStore;
use hookline_shared::store::catalog::CatalogStore;
use hookline_shared::store::dead_letters::DeadLetterStore;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use hookline_shared::store::quotas::QuotaOverrides;
use hookline_shared::store::rate::RateLimiter;
use hookline_shared::store::retries::RetryStore;
use hookline_shared::store::sequences::SequenceStore;
use settings::Settings;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

/// Ingest with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Ingest {
    settings: Settings,
    api: TcpListener,
    admin: TcpListener,
}

impl Ingest {
    pub async fn bind(settings: Settings) -> anyhow::Result<Self> {
        let api = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| {
                format!("binding the API to {} (http.listen)", settings.http.listen)
            })?;
        let admin = TcpListener::bind(settings.admin.listen)
            .await
            .with_context(|| {
                format!(
                    "binding the admin port to {} (admin.listen)",
                    settings.admin.listen
                )
            })?;
        Ok(Self {
            settings,
            api,
            admin,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr().unwrap_or(self.settings.http.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.settings.admin.listen)
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight
    /// requests finish (bounded by the request timeout), and stops the publisher last so
    /// that those requests can still get their confirms.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            settings,
            api,
            admin,
        } = self;
        let registry = new_registry();
        let readiness = Readiness::new(&["amqp", "amqp_unblocked", "redis"]);
        let metrics = Arc::new(metrics::IngestMetrics::new(&registry));
        let server_metrics = ServerMetrics::new(&registry);
        let tasks = TaskTracker::new();
        let background = CancellationToken::new();

        let topology = Topology::new(
            &settings.prefix,
            settings.amqp.queue_type,
            settings.amqp.partitions,
        );
        let publisher = Publisher::spawn(
            settings.amqp.clone(),
            topology.clone(),
            "ingest",
            readiness.flag("amqp"),
            &tasks,
            background.clone(),
        );
        tasks.spawn(follow_blocked(
            publisher.watch_blocked(),
            readiness.flag("amqp_unblocked"),
            background.clone(),
        ));
        // The admin port answers from the start: /healthz must not wait for the brokers,
        // and /readyz says why the service is not ready yet.
        tasks.spawn(serve_admin(
            admin,
            settings.admin.limits,
            server_metrics.clone(),
            registry,
            readiness.clone(),
            background.clone(),
        ));
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
        let state = api::AppState::new(api::Inner {
            tokens: settings.api.tokens(),
            scoped_tokens: settings.api.scoped_tokens(),
            settings: settings.api.clone(),
            publisher,
            topology,
            endpoints: EndpointStore::new(redis.clone(), keys.clone(), sealer.clone()),
            health: HealthStore::new(redis.clone(), keys.clone()),
            health_policy: settings.health.policy(),
            activity: ActivityStore::new(redis.clone(), keys.clone(), sealer.clone()),
            dead_letters: DeadLetterStore::new(redis.clone(), keys.clone(), sealer.clone()),
            retries: RetryStore::new(redis.clone(), keys.clone(), sealer.clone()),
            sequences: SequenceStore::new(redis.clone(), keys.clone()),
            replicas: hookline_shared::store::replicas::ReplicaRegistry::new(
                redis.clone(),
                keys.clone(),
            ),
            catalog: CatalogStore::new(redis.clone(), keys.clone()),
            erasures: hookline_shared::store::erasure::ErasureStore::new(
                redis.clone(),
                keys.clone(),
            ),
            retention: hookline_shared::store::retention::RetentionStore::new(
                redis.clone(),
                keys.clone(),
            ),
            known_types: api::KnownTypes::default(),
            dispatcher: Dispatcher::new(&settings.delivery.dispatch())
                .context("building the HTTP client for test deliveries")?,
            secret_overlap: settings.delivery.secret_overlap,
            auth_failures: api::throttle::AuthFailures::new(settings.api.auth_failures),
            trusted_proxies: settings.http.trusted_proxies.clone(),
            rate: RateLimiter::new(redis.clone(), keys.clone()),
            quotas: api::quota::TenantQuotas::new(
                settings.api.tenant_quota,
                QuotaOverrides::new(redis.clone(), keys.clone()),
            ),
            quota_overrides: QuotaOverrides::new(redis.clone(), keys.clone()),
            accepted: accepted::AcceptedEvents::new(redis, keys, settings.api.dedup_window),
            metrics,
        });
        let app = api::router(state).layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.http.request_timeout,
        ));

        match raise_open_files_limit() {
            Ok(limit) => tracing::info!(
                open_files = limit,
                max_connections = settings.http.limits.max_connections,
                "open-files limit"
            ),
            Err(error) => tracing::warn!(%error, "could not raise the open-files limit"),
        }
        tracing::info!(api = %api.local_addr()?, "ingest listening");
        serve(
            api,
            app,
            settings.http.limits,
            "api",
            server_metrics,
            shutdown,
        )
        .await;
        background.cancel();
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}

/// Mirrors RabbitMQ's blocking of publishers (a resource alarm) into readiness, so
/// `/readyz` says why events are refused.
async fn follow_blocked(
    mut blocked: tokio::sync::watch::Receiver<Option<String>>,
    unblocked: hookline_shared::metrics::ReadinessFlag,
    stop: CancellationToken,
) {
    loop {
        unblocked.set(blocked.borrow_and_update().is_none());
        tokio::select! {
            () = stop.cancelled() => return,
            changed = blocked.changed() => if changed.is_err() { return },
        }
    }
}

//! Process lifecycle shared by both binaries: the shutdown signal and waiting for
//! dependencies at startup.

use crate::metrics::ReadinessFlag;
use crate::retry;
use crate::settings::{RedisSettings, SecretsSettings, SettingsError};
use crate::store::RedisConnection;
use crate::store::sealing::Sealer;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Connects to Redis, waiting with backoff while it is unreachable, so a process that
/// starts before Redis (a common ordering in Kubernetes) simply becomes ready later.
/// `None` if `shutdown` came first.
pub async fn connect_redis(
    settings: &RedisSettings,
    shutdown: &CancellationToken,
) -> Option<RedisConnection> {
    retry::until_ok("connecting to Redis", retry::RECONNECT, shutdown, || {
        crate::store::connect(settings)
    })
    .await
    .ok()
}

/// Keeps a readiness flag true while Redis answers PING.
pub async fn watch_redis(
    redis: RedisConnection,
    ready: ReadinessFlag,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut redis.clone()).await;
                ready.set(pong.is_ok());
            }
        }
    }
}

/// What both binaries need from Redis before they serve: a connection (waited for, and
/// watched for readiness in `tasks` until `background` ends) and the sealer for signing
/// secrets. `Ok(None)` if `shutdown` came first.
pub async fn open_store(
    redis: &RedisSettings,
    secrets: &SecretsSettings,
    ready: ReadinessFlag,
    tasks: &TaskTracker,
    background: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<Option<(RedisConnection, Arc<Sealer>)>, SettingsError> {
    let sealer = Arc::new(secrets.sealer()?);
    if sealer.is_development() {
        tracing::warn!(
            "HOOKLINE__SECRETS__KEY is not set: signing secrets are sealed with the public development key"
        );
    }
    let Some(connection) = connect_redis(redis, shutdown).await else {
        return Ok(None);
    };
    match crate::store::durability::read_config(&connection).await {
        Some(config) => {
            for risk in crate::store::durability::risks(&config) {
                tracing::warn!("{}", risk.advice());
            }
        }
        None => tracing::info!(
            "Redis refused CONFIG GET; its eviction policy and persistence were not checked"
        ),
    }
    tasks.spawn(watch_redis(connection.clone(), ready, background.clone()));
    Ok(Some((connection, sealer)))
}

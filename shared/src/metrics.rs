//! The admin surface both binaries expose on their own port: `/healthz` (the process is
//! alive; never depends on the brokers, so Kubernetes does not restart-storm during a
//! broker outage), `/readyz` (every dependency is connected) and `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A registry with `hookline_build_info` and, on Linux, the process collector.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    let build_info = IntGaugeVec::new(
        Opts::new(
            "hookline_build_info",
            "Build of this Hookline binary; always 1.",
        ),
        &["version"],
    )
    .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
    build_info.with_label_values(&[crate::VERSION]).set(1);
    register(&registry, build_info);
    #[cfg(target_os = "linux")]
    register(
        &registry,
        prometheus::process_collector::ProcessCollector::for_self(),
    );
    registry
}

/// Registers a collector whose definition is static; a clash is a programming error
/// caught by every test that builds the registry.
pub fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, collector: C) {
    registry
        .register(Box::new(collector))
        .unwrap_or_else(|e| unreachable!("duplicate metric registration: {e}"));
}

/// One flag per dependency; the process is ready when all are up.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Vec<(&'static str, AtomicBool)>>,
}

/// A handle on one dependency's flag.
#[derive(Debug, Clone)]
pub struct ReadinessFlag {
    checks: Arc<Vec<(&'static str, AtomicBool)>>,
    index: usize,
}

impl Readiness {
    pub fn new(names: &[&'static str]) -> Self {
        Self {
            checks: Arc::new(names.iter().map(|n| (*n, AtomicBool::new(false))).collect()),
        }
    }

    pub fn flag(&self, name: &str) -> ReadinessFlag {
        let index = self
            .checks
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or_else(|| unreachable!("readiness check {name} was not declared"));
        ReadinessFlag {
            checks: self.checks.clone(),
            index,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, up)| up.load(Ordering::Relaxed))
    }

    fn report(&self) -> serde_json::Value {
        self.checks
            .iter()
            .map(|(name, up)| {
                (
                    name.to_string(),
                    serde_json::Value::Bool(up.load(Ordering::Relaxed)),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl ReadinessFlag {
    pub fn set(&self, up: bool) {
        self.checks[self.index].1.store(up, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.checks[self.index].1.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

pub fn admin_router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(state.readiness.report())).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buffer).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The `status_class` label of an HTTP answer — `2xx`, `5xx`… — or `none` when there was
/// none: one spelling for the API's requests and the deliveries' attempts.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

/// Histogram buckets in seconds, from `start` doubling `count` times.
pub fn exponential_buckets(start: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, 2.0, count)
        .unwrap_or_else(|e| unreachable!("static bucket definition: {e}"))
}

/// Serves the admin router on `listener` until `shutdown`, under the same connection
/// limits as the API (its own values).
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    limits: crate::server::ConnectionLimits,
    server_metrics: crate::server::ServerMetrics,
    registry: Registry,
    readiness: Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) {
    crate::server::serve(
        listener,
        admin_router(registry, readiness),
        limits,
        "admin",
        server_metrics,
        shutdown,
    )
    .await;
}

//! End-to-end tests: one binary, against the RabbitMQ and Redis that `make test` starts.

mod abuse;
mod api;
mod batch;
mod circuit;
mod console;
mod disabling;
mod egress;
mod endpoints;
mod erasure;
mod fairness;
mod formats;
mod history;
mod lanes;
mod metrics;
mod notifications;
mod ordering;
mod pacing;
mod pipeline;
mod quota;
mod redis_topologies;
mod retention;

/// Helpers shared by the modules about endpoints.
mod support;
mod tracing;

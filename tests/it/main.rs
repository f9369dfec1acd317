//! End-to-end tests: one binary, against the RabbitMQ and Redis that `make test` starts.

mod abuse;
mod api;
mod console;
mod egress;
mod formats;
mod lifecycle;
mod metrics;
mod pipeline;
mod redis_topologies;

//! Hookline's shared crate: the domain model, the wire contract, configuration, telemetry
//! and the broker/store adapters that both binaries use.
//!
//! # Layout
//! - [`domain`]: events, patterns, endpoints, payload formats, signing and the retry
//!   policy. Pure: no IO, no clock, no randomness of its own.
//! - [`contract`]: what travels between processes — the AMQP message properties of the
//!   public event contract, dead-letter records and retry tasks.
//! - [`settings`]: loading a binary's typed settings from defaults, a file and
//!   `HOOKLINE__…` environment variables; the sections both binaries share.
//! - [`telemetry`]: tracing setup; [`metrics`]: the Prometheus registry and the admin
//!   server (`/healthz`, `/readyz`, `/metrics`); [`server`]: the HTTP server both
//!   listeners run on, with its connection limits.
//! - [`broker`]: RabbitMQ topology and the supervised, confirming publisher.
//! - [`retry`]: the one retry loop: capped, jittered backoff until success or
//!   cancellation, for reconnecting and for holding work through an outage.
//! - [`dispatch`]: one signed HTTP attempt behind the SSRF guard.
//! - [`store`]: Redis key layout and the stores: endpoints, health, rate limits,
//!   retries, the activity log and the dead-letter index.

pub mod broker;
pub mod contract;
pub mod dispatch;
pub mod domain;
pub mod lifecycle;
pub mod metrics;
pub mod properties;
pub mod retry;
pub mod server;
pub mod settings;
pub mod store;
pub mod telemetry;

pub use domain::Invalid;

/// `Hookline/<version>`, sent as `user-agent` on every webhook.
pub const USER_AGENT: &str = concat!("Hookline/", env!("CARGO_PKG_VERSION"));
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

//! RabbitMQ: the topology both binaries declare, connecting, and the supervised
//! publisher that answers only after the broker confirmed.

pub mod backoff;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use std::time::Duration;

/// Heartbeats detect a frozen broker (SIGSTOP, network partition) within seconds; the
/// default of 60 s would leave confirms hanging much longer.
const HEARTBEAT_SECONDS: u16 = 5;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("connecting to RabbitMQ timed out after {0:?}")]
    Timeout(Duration),
    #[error("connecting to RabbitMQ failed")]
    Amqp(#[from] lapin::Error),
}

/// Opens a connection named after its role (shown in the management UI). The heartbeat is
/// added unless the URL sets one.
pub async fn connect(
    settings: &crate::settings::AmqpSettings,
    role: &str,
) -> Result<Connection, ConnectError> {
    let mut url = settings.url.expose_secret().to_owned();
    if !url.contains("heartbeat=") {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("heartbeat={HEARTBEAT_SECONDS}"));
    }
    let properties =
        ConnectionProperties::default().with_connection_name(format!("hookline-{role}").into());
    tokio::time::timeout(
        settings.connect_timeout,
        Connection::connect(&url, properties),
    )
    .await
    .map_err(|_| ConnectError::Timeout(settings.connect_timeout))?
    .map_err(ConnectError::from)
}

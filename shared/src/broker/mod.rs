//! RabbitMQ: the topology both binaries declare, connecting, and the supervised
//! publisher that answers only after the broker confirmed.

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

/// lapin keeps 32 frames of receive and of send buffer per connection, zero-filled to the
/// negotiated frame size: RabbitMQ's 128 KiB default made that 8 MiB of resident memory
/// per connection. Events (1 KiB typical, 256 KiB at most) travel as well in 32 KiB frames.
const FRAME_MAX: u32 = 32 * 1024;

/// Opens a connection named after its role (shown in the management UI). The heartbeat
/// and the frame size are added unless the URL sets them.
pub async fn connect(
    settings: &crate::settings::AmqpSettings,
    role: &str,
) -> Result<Connection, ConnectError> {
    let url = with_connection_defaults(settings.url.expose_secret());
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

/// The URL with Hookline's heartbeat and frame size, where it does not set its own.
fn with_connection_defaults(url: &str) -> String {
    let mut url = url.to_owned();
    for (parameter, value) in [
        ("heartbeat", u32::from(HEARTBEAT_SECONDS)),
        ("frame_max", FRAME_MAX),
    ] {
        if !url.contains(&format!("{parameter}=")) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{parameter}={value}"));
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_defaults_fill_in_what_the_url_leaves_out() {
        assert_eq!(
            with_connection_defaults("amqp://h:5672/%2f"),
            "amqp://h:5672/%2f?heartbeat=5&frame_max=32768"
        );
        assert_eq!(
            with_connection_defaults("amqps://u:p@h/vh?heartbeat=30"),
            "amqps://u:p@h/vh?heartbeat=30&frame_max=32768"
        );
        assert_eq!(
            with_connection_defaults("amqp://h?frame_max=131072&heartbeat=0"),
            "amqp://h?frame_max=131072&heartbeat=0"
        );
    }
}

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
    /// Every node of `amqp.url` was tried; the error is the last node's.
    #[error("no RabbitMQ node of {nodes} answered")]
    NoNode {
        nodes: usize,
        #[source]
        last: Box<ConnectError>,
    },
}

/// `amqp.url` is one node's URL or several, comma-separated (the nodes of a cluster).
pub fn node_urls(setting: &str) -> Vec<&str> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// The order in which to try `nodes` nodes, starting at `start`: every node once, so a
/// connection moves on from a node that is down within one call, and different
/// connections (each with its own `start`) spread over the cluster.
fn try_order(nodes: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..nodes).map(move |step| (start + step) % nodes.max(1))
}

/// lapin keeps 32 frames of receive and of send buffer per connection, zero-filled to the
/// negotiated frame size: RabbitMQ's 128 KiB default made that 8 MiB of resident memory
/// per connection. Events (1 KiB typical, 256 KiB at most) travel as well in 32 KiB frames.
const FRAME_MAX: u32 = 32 * 1024;

/// Opens a connection named after its role (shown in the management UI) to one of the
/// nodes of `amqp.url`, trying each in turn from a random one. The heartbeat and the
/// frame size are added unless the URL sets them.
pub async fn connect(
    settings: &crate::settings::AmqpSettings,
    role: &str,
) -> Result<Connection, ConnectError> {
    let nodes = node_urls(settings.url.expose_secret());
    let mut last = None;
    for node in try_order(nodes.len(), rand::random_range(0..nodes.len().max(1))) {
        match connect_node(nodes[node], settings.connect_timeout, role).await {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                if nodes.len() > 1 {
                    // The node's index, not its URL: the URL may carry credentials.
                    tracing::warn!(
                        node,
                        error = crate::telemetry::error_chain(&error),
                        "RabbitMQ node unreachable; trying the next"
                    );
                }
                last = Some(error);
            }
        }
    }
    match last {
        Some(error) if nodes.len() > 1 => Err(ConnectError::NoNode {
            nodes: nodes.len(),
            last: Box::new(error),
        }),
        Some(error) => Err(error),
        None => Err(ConnectError::NoNode {
            nodes: 0,
            last: Box::new(ConnectError::Timeout(Duration::ZERO)),
        }),
    }
}

async fn connect_node(
    url: &str,
    timeout: Duration,
    role: &str,
) -> Result<Connection, ConnectError> {
    let url = with_connection_defaults(url);
    let properties =
        ConnectionProperties::default().with_connection_name(format!("hookline-{role}").into());
    tokio::time::timeout(timeout, Connection::connect(&url, properties))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
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
    fn several_nodes_are_listed_comma_separated() {
        assert_eq!(node_urls("amqp://a/%2f"), ["amqp://a/%2f"]);
        assert_eq!(
            node_urls("amqp://u:p@a:5672/%2f, amqp://u:p@b:5672/%2f,,amqp://c/%2f "),
            [
                "amqp://u:p@a:5672/%2f",
                "amqp://u:p@b:5672/%2f",
                "amqp://c/%2f"
            ]
        );
        assert!(node_urls(" , ").is_empty());
    }

    #[test]
    fn every_node_is_tried_once_from_the_start() {
        assert_eq!(try_order(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(try_order(3, 2).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(try_order(1, 0).collect::<Vec<_>>(), [0]);
        assert_eq!(try_order(0, 0).count(), 0);
    }

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

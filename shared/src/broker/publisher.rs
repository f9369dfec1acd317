//! A publisher that reports success only once RabbitMQ confirmed the message.
//!
//! One supervisor task owns the connection: it connects with backoff, declares the
//! topology, hands a confirm-mode channel to publishers through a `watch`, and starts over
//! when the connection reports an error or a publisher reports the channel broken (a
//! confirm that timed out). lapin's own recovery is not relied on: after a `kill -9` of
//! the broker a pending confirm was seen to stay unresolved for 17–32 s, once forever.

use super::topology::Topology;
use crate::metrics::ReadinessFlag;
use crate::retry;
use crate::settings::AmqpSettings;
use futures::StreamExt;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Event};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("not connected to RabbitMQ")]
    Unavailable,
    /// RabbitMQ blocks publishers while a resource alarm (memory, disk) is raised.
    #[error("RabbitMQ is refusing publishes: {0}")]
    Blocked(String),
    #[error("RabbitMQ did not confirm the publish within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {routing_key:?} on {exchange:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("publishing failed")]
    Amqp(#[from] lapin::Error),
}

/// One message of [`Publisher::publish_many`].
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// A confirm-mode channel and the number of the connection it belongs to.
type Current = Option<(u64, Channel)>;

impl PublishError {
    /// Every value [`PublishError::reason`] returns.
    pub const REASONS: [&'static str; 6] = [
        "unavailable",
        "blocked",
        "confirm_timeout",
        "nacked",
        "unroutable",
        "amqp_error",
    ];

    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Blocked(_) => "blocked",
            Self::ConfirmTimeout(_) => "confirm_timeout",
            Self::Nacked => "nacked",
            Self::Unroutable { .. } => "unroutable",
            Self::Amqp(_) => "amqp_error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Publisher {
    channel: watch::Receiver<Current>,
    /// The number of the last connection a publisher found broken; the supervisor
    /// reconnects when it names the current one (a stale report is ignored).
    broken: Arc<watch::Sender<u64>>,
    /// Why RabbitMQ blocks this connection's publishes, while it does.
    blocked: watch::Receiver<Option<String>>,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Starts the supervisor on `tasks`; it stops when `shutdown` is cancelled.
    pub fn spawn(
        settings: AmqpSettings,
        topology: Topology,
        role: &'static str,
        ready: ReadinessFlag,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (sender, channel) = watch::channel(None);
        let broken = Arc::new(watch::Sender::new(0));
        let (blocked_sender, blocked) = watch::channel(None);
        let publisher = Self {
            channel,
            broken: broken.clone(),
            blocked,
            confirm_timeout: settings.confirm_timeout,
        };
        let connection = Supervised {
            sender,
            broken,
            blocked: blocked_sender,
            ready,
        };
        tasks.spawn(supervise(settings, topology, role, connection, shutdown));
        publisher
    }

    /// Why RabbitMQ blocks publishes now (a resource alarm), if it does.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.borrow().clone()
    }

    /// Changes of [`Self::blocked`], for readiness.
    pub fn watch_blocked(&self) -> watch::Receiver<Option<String>> {
        self.blocked.clone()
    }

    /// Publishes persistently and `mandatory`, and waits for the broker's confirm. A
    /// message the broker returned as unroutable is a failure, not a success.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let Some((generation, channel)) = self.channel.borrow().clone() else {
            return Err(PublishError::Unavailable);
        };
        // A blocked connection accepts the publish and sits on it until the alarm
        // clears: answer now instead of at the confirm timeout.
        if let Some(reason) = self.blocked() {
            return Err(PublishError::Blocked(reason));
        }
        let publish = async {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties.with_delivery_mode(2),
                )
                .await?;
            confirm.await
        };
        let outcome = tokio::time::timeout(self.confirm_timeout, publish).await;
        self.settle(generation, outcome, exchange, routing_key)
    }

    /// Publishes every message as [`Publisher::publish`] does, all of them before
    /// waiting for any confirm, then waits for all the confirms together: one round
    /// trip to the broker for the batch, not one per message. The confirm timeout runs
    /// once, for the whole batch.
    ///
    /// Refused whole (`Err`, nothing published) only when no channel is available or the
    /// broker blocks publishes; once
    /// publishing started each message has its own result, in order. A message that
    /// cannot be sent because the channel broke under an earlier one of the batch is
    /// [`PublishError::Unavailable`].
    pub async fn publish_many(
        &self,
        exchange: &str,
        messages: Vec<Outgoing<'_>>,
    ) -> Result<Vec<Result<(), PublishError>>, PublishError> {
        let Some((generation, channel)) = self.channel.borrow().clone() else {
            return Err(PublishError::Unavailable);
        };
        if let Some(reason) = self.blocked() {
            return Err(PublishError::Blocked(reason));
        }
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut sent = Vec::with_capacity(messages.len());
        let mut broken = false;
        for message in &messages {
            if broken {
                sent.push(None);
                continue;
            }
            let publish = channel.basic_publish(
                exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                message.body,
                message.properties.clone().with_delivery_mode(2),
            );
            let confirm = match tokio::time::timeout_at(deadline, publish).await {
                Ok(Ok(confirm)) => Ok(confirm),
                Ok(Err(error)) => Err(Ok(Err(error))),
                Err(elapsed) => Err(Err(elapsed)),
            };
            broken = confirm.is_err();
            sent.push(Some(confirm));
        }
        let settled = sent
            .into_iter()
            .zip(&messages)
            .map(|(sent, message)| async move {
                let outcome = match sent {
                    None => return Err(PublishError::Unavailable),
                    Some(Err(failed)) => failed,
                    Some(Ok(confirm)) => tokio::time::timeout_at(deadline, confirm).await,
                };
                self.settle(generation, outcome, exchange, message.routing_key)
            });
        Ok(futures::future::join_all(settled).await)
    }

    /// What a publish's outcome means; a timeout or a channel error marks the channel
    /// broken, so the supervisor reconnects.
    fn settle(
        &self,
        generation: u64,
        outcome: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), PublishError> {
        match outcome {
            // Blocked by a resource alarm, the broker holds the publish without reading
            // on: the channel is fine, and a new connection would only be blocked again
            // at its first publish. Not confirmed, so the caller may send it again.
            Err(_) if self.blocked().is_some() => {
                Err(PublishError::Blocked(self.blocked().unwrap_or_default()))
            }
            Err(_) => {
                self.broken.send_replace(generation);
                Err(PublishError::ConfirmTimeout(self.confirm_timeout))
            }
            Ok(Err(error)) => {
                self.broken.send_replace(generation);
                Err(error.into())
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                unreachable!("the supervisor enables confirms before handing out a channel")
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.channel.borrow().is_some()
    }

    /// Waits until a channel is available (or `shutdown`); for startup ordering in tests
    /// and tools.
    pub async fn wait_connected(&self, shutdown: &CancellationToken) -> bool {
        let mut channel = self.channel.clone();
        tokio::select! {
            result = channel.wait_for(Option::is_some) => result.is_ok(),
            () = shutdown.cancelled() => false,
        }
    }
}

/// What the supervisor publishes about the connection it owns.
struct Supervised {
    sender: watch::Sender<Current>,
    broken: Arc<watch::Sender<u64>>,
    blocked: watch::Sender<Option<String>>,
    ready: ReadinessFlag,
}

async fn supervise(
    settings: AmqpSettings,
    topology: Topology,
    role: &'static str,
    connection_state: Supervised,
    shutdown: CancellationToken,
) {
    let Supervised {
        sender,
        broken,
        blocked,
        ready,
    } = connection_state;
    let mut broken_reports = broken.subscribe();
    let mut generation = 0u64;
    let (settings, topology) = (&settings, &topology);
    while !shutdown.is_cancelled() {
        let reconnect = generation > 0;
        let attempt = move || async move {
            let connection = super::connect(settings, role).await?;
            topology.declare_on_connect(&connection, reconnect).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, anyhow::Error>((connection, channel))
        };
        let retrying = retry::until_ok("RabbitMQ connection", retry::RECONNECT, &shutdown, attempt)
            .instrument(tracing::warn_span!("publisher", role));
        // Raced as a whole so that shutdown also drops a connect in progress.
        let connected = tokio::select! {
            () = shutdown.cancelled() => None,
            result = retrying => result.ok(),
        };
        let Some((connection, channel)) = connected else {
            break;
        };
        generation += 1;
        let mut events = connection.events_listener();
        sender.send_replace(Some((generation, channel)));
        ready.set(true);
        tracing::info!(role, "publisher connected to RabbitMQ");
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = broken_reports.wait_for(|g| *g == generation) => tracing::warn!(role, "publisher channel reported broken; reconnecting"),
            () = connection_failed(&mut events, &blocked) => tracing::warn!(role, "RabbitMQ connection lost; reconnecting"),
        }
        ready.set(false);
        sender.send_replace(None);
        blocked.send_replace(None);
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "reconnecting".into()),
        )
        .await;
    }
    ready.set(false);
    sender.send_replace(None);
}

/// Follows the connection's events until it fails, keeping `blocked` up to date.
async fn connection_failed(
    events: &mut (impl futures::Stream<Item = Event> + Unpin),
    blocked: &watch::Sender<Option<String>>,
) {
    while let Some(event) = events.next().await {
        match event {
            Event::Error(error) => {
                tracing::debug!(%error, "RabbitMQ connection event");
                return;
            }
            Event::ConnectionBlocked(reason) => {
                tracing::warn!(%reason, "RabbitMQ blocks publishes (resource alarm)");
                blocked.send_replace(Some(reason));
            }
            Event::ConnectionUnblocked => {
                tracing::info!("RabbitMQ accepts publishes again");
                blocked.send_replace(None);
            }
            _ => {}
        }
    }
}

//! Consuming a queue under a supervisor that owns reconnection: connect with backoff,
//! declare, consume, and start over when the connection or channel dies. Messages in
//! progress on a dead channel are requeued by the broker; nothing is acked that was not
//! settled. Used for the deliveries queue and the dead-letter index queue.

use crate::acks::AckWindow;
use futures::StreamExt;
use hookline_shared::broker::topology::Topology;
use hookline_shared::metrics::ReadinessFlag;
use hookline_shared::retry;
use hookline_shared::settings::AmqpSettings;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer, Event};
use prometheus::IntGauge;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What is done with each message; it settles the message in `acks`.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        acks: AckWindow,
    ) -> impl Future<Output = ()> + Send;
}

/// Consumers that report together: ready while every one of them consumes, and a
/// gauge of how many do.
#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    ready: Option<ReadinessFlag>,
    connected: Option<IntGauge>,
    consuming: Arc<AtomicUsize>,
    size: usize,
}

impl ConsumerGroup {
    pub fn new(ready: Option<ReadinessFlag>, connected: Option<IntGauge>, size: usize) -> Self {
        Self {
            ready,
            connected,
            consuming: Arc::new(AtomicUsize::new(0)),
            size,
        }
    }

    fn up(&self) {
        let consuming = self.consuming.fetch_add(1, Ordering::SeqCst) + 1;
        self.report(consuming, 1);
    }

    fn down(&self) {
        let consuming = self
            .consuming
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        self.report(consuming, -1);
    }

    fn report(&self, consuming: usize, change: i64) {
        if let Some(ready) = &self.ready {
            ready.set(consuming >= self.size);
        }
        if let Some(gauge) = &self.connected {
            gauge.add(change);
        }
    }
}

#[derive(Debug)]
pub struct ConsumerLoop<H> {
    pub settings: AmqpSettings,
    pub topology: Topology,
    pub queue: String,
    pub prefetch: u16,
    pub handler: Arc<H>,
    /// Told when this consumer starts and stops consuming.
    pub group: ConsumerGroup,
    /// Every message handler runs here, so shutdown can wait for them.
    pub handlers: TaskTracker,
}

impl<H: Handler> ConsumerLoop<H> {
    /// Consumes until `shutdown`; then cancels the consumer and returns, leaving the
    /// handlers in `handlers` to finish (the caller bounds that by the grace period).
    /// Returns the connection so the caller can close it after the handlers finished.
    pub async fn run(self, shutdown: CancellationToken) -> Option<(Connection, AckWindow)> {
        let (settings, topology) = (&self.settings, &self.topology);
        let (queue, prefetch) = (self.queue.as_str(), self.prefetch);
        let mut reconnect = false;
        loop {
            let attempt = move || async move {
                let connection = hookline_shared::broker::connect(settings, "deliverer").await?;
                topology.declare_on_connect(&connection, reconnect).await?;
                let channel = connection.create_channel().await?;
                channel
                    .basic_qos(prefetch, BasicQosOptions::default())
                    .await?;
                // A retired queue an operator has deleted is done with, not an outage.
                let retired = !topology.partition_queues().iter().any(|q| q == queue)
                    && queue != topology.dead_letter_index_queue;
                if retired && !topology.exists(&connection, queue).await? {
                    let _ = connection.close(200, "queue deleted".into()).await;
                    return Ok(None);
                }
                let consumer = channel
                    .basic_consume(
                        queue.into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok::<_, anyhow::Error>(Some((connection, channel, consumer)))
            };
            let retrying =
                retry::until_ok("consumer connection", retry::RECONNECT, &shutdown, attempt);
            // Raced as a whole so that shutdown also drops a connect in progress.
            let connected = tokio::select! {
                () = shutdown.cancelled() => None,
                result = retrying => result.ok(),
            };
            let Some((connection, channel, consumer)) = connected? else {
                tracing::info!(queue = %self.queue, "retired queue deleted; no longer consuming it");
                return None;
            };
            let acks = AckWindow::start(channel.clone());
            self.group.up();
            tracing::info!(queue = %self.queue, "consuming");
            let stopped = self
                .consume(&connection, consumer.clone(), &acks, &shutdown)
                .await;
            self.group.down();
            if stopped {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
                )
                .await;
                return Some((connection, acks));
            }
            tracing::warn!("consumer lost its connection; reconnecting");
            reconnect = true;
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, "reconnecting".into()),
            )
            .await;
        }
    }

    /// True when stopped by `shutdown`, false when the connection or consumer failed.
    async fn consume(
        &self,
        connection: &Connection,
        mut consumer: Consumer,
        acks: &AckWindow,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut events = connection.events_listener();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return true,
                event = events.next() => match event {
                    Some(Event::Error(error)) => {
                        tracing::warn!(%error, "RabbitMQ connection error");
                        return false;
                    }
                    Some(_) => {}
                    None => return false,
                },
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        acks.received(delivery.delivery_tag);
                        let handler = self.handler.clone();
                        // Boxed: a task holding the handler's large future inline would
                        // copy all of it on spawn and again on each change of stage.
                        self.handlers
                            .spawn(Box::pin(handler.handle(delivery, acks.clone())));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "consumer failed");
                        return false;
                    }
                    None => return false,
                },
            }
        }
    }
}

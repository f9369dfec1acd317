//! Exchanges and queues, named from the installation prefix. Both binaries declare the
//! whole topology when they first connect: declarations are idempotent, and whichever
//! process starts first finds a working broker. On a reconnect
//! ([`Topology::declare_on_connect`]) they check passively that everything is there and
//! declare in full only for a broker that lost it — a full declare writes the bindings,
//! and in RabbitMQ 3.x a binding is a cluster-wide Mnesia transaction that, while a node
//! is cut off, waits until the others declare it down (`net_ticktime`: 15–20 s with the
//! prod overlay, about a minute with RabbitMQ's default): exactly when clients reconnect.
//!
//! Events are spread over `partitions` delivery queues by tenant: the topic exchange
//! forwards everything to a consistent-hash exchange (RabbitMQ's bundled
//! `rabbitmq_consistent_hash_exchange`) that hashes the [`TENANT_HEADER`], so one
//! tenant's backlog fills one partition and the others flow past it, and the queues'
//! leaders spread over a cluster. A message without the header (a direct publisher
//! that does not set it) hashes as the empty value: all such messages share one
//! partition, delivered as before but without isolation from each other.
//!
//! Queues this topology no longer feeds — the single `{prefix}.deliveries` of an
//! installation from before partitions, and partitions beyond a lowered count — are
//! found by [`Topology::retired_queues`], unbound, and consumed by the deliverers until
//! an operator deletes them: nothing routed to them before the change is stranded.

use crate::settings::{MAX_PARTITIONS, QueueType};
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

/// The header the partitions hash: the event's tenant. Ingest always sets it; a direct
/// publisher should (see the module's documentation for what happens otherwise).
pub const TENANT_HEADER: &str = "x-hookline-tenant";

/// RabbitMQ's exchange type from the bundled `rabbitmq_consistent_hash_exchange` plugin.
const CONSISTENT_HASH: &str = "x-consistent-hash";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable topic exchange the ATS publishes to; routing key = event type.
    pub events_exchange: String,
    /// Durable consistent-hash exchange bound to every event type of `events_exchange`;
    /// it routes each message to one partition by the hash of its tenant header.
    pub partitions_exchange: String,
    /// `{prefix}.deliveries`: the partitions are `{prefix}.deliveries.{i}`. Before
    /// partitions it was the one queue; one left from then is drained as retired.
    deliveries: String,
    partitions: u16,
    /// Durable fanout exchange for deliveries that will not be attempted again.
    pub dead_letter_exchange: String,
    /// Durable queue of the same name: the record ops can read with any AMQP tool.
    pub dead_letter_queue: String,
    /// A second queue on the dead-letter exchange, consumed by the deliverers to index
    /// records in Redis for the API; `dead_letter_queue` stays untouched for ops.
    pub dead_letter_index_queue: String,
    queue_type: QueueType,
}

impl Topology {
    pub fn new(prefix: &str, queue_type: QueueType, partitions: u16) -> Self {
        Self {
            events_exchange: format!("{prefix}.events"),
            partitions_exchange: format!("{prefix}.partitions"),
            deliveries: format!("{prefix}.deliveries"),
            partitions: partitions.max(1),
            dead_letter_exchange: format!("{prefix}.dead-letter"),
            dead_letter_queue: format!("{prefix}.dead-letter"),
            dead_letter_index_queue: format!("{prefix}.dead-letter.index"),
            queue_type,
        }
    }

    /// The delivery queue of partition `index`.
    pub fn partition_queue(&self, index: u16) -> String {
        format!("{}.{index}", self.deliveries)
    }

    /// The delivery queues this topology feeds, by partition.
    pub fn partition_queues(&self) -> Vec<String> {
        (0..self.partitions)
            .map(|i| self.partition_queue(i))
            .collect()
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        arguments.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(kind.into()),
        );
        arguments
    }

    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        let mut hash_on_tenant = FieldTable::default();
        hash_on_tenant.insert(
            ShortString::from("hash-header"),
            AMQPValue::LongString(TENANT_HEADER.into()),
        );
        channel
            .exchange_declare(
                self.partitions_exchange.as_str().into(),
                ExchangeKind::Custom(CONSISTENT_HASH.into()),
                durable_exchange,
                hash_on_tenant,
            )
            .await?;
        channel
            .exchange_bind(
                self.partitions_exchange.as_str().into(),
                self.events_exchange.as_str().into(),
                "#".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // No broker-side dead-lettering on the delivery queues: in 3.10 it is
        // at-most-once, and it would drop the message with no DLX configured. The
        // deliverer enforces the delivery limit itself from `x-delivery-count`.
        let mut partition_arguments = self.queue_arguments();
        if self.queue_type == QueueType::Quorum {
            // Each partition's leader on the node with the fewest leaders, so a
            // cluster's nodes share the partitions rather than all leading from one.
            partition_arguments.insert(
                ShortString::from("x-queue-leader-locator"),
                AMQPValue::LongString("balanced".into()),
            );
        }
        for queue in self.partition_queues() {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    durable_queue,
                    partition_arguments.clone(),
                )
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.partitions_exchange.as_str().into(),
                    // The binding key of a consistent-hash exchange is the queue's
                    // weight: every partition takes an equal share of the hash ring.
                    "1".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for queue in [&self.dead_letter_queue, &self.dead_letter_index_queue] {
            channel
                .queue_declare(queue.as_str().into(), durable_queue, self.queue_arguments())
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.dead_letter_exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

impl Topology {
    /// Delivery queues that exist but that this topology does not feed: the one queue
    /// of an installation from before partitions, and partitions at and beyond the
    /// configured count, which exist when the count was lowered. Each is unbound (no new
    /// message reaches it) and returned so its messages are consumed. Partitions are
    /// created as a contiguous range, so the search stops at the first one missing.
    pub async fn retired_queues(
        &self,
        connection: &Connection,
    ) -> Result<Vec<String>, lapin::Error> {
        let mut retired = Vec::new();
        if self.exists(connection, &self.deliveries).await? {
            unbind(connection, &self.deliveries, &self.events_exchange, "#").await?;
            retired.push(self.deliveries.clone());
        }
        for index in self.partitions..MAX_PARTITIONS {
            let queue = self.partition_queue(index);
            if !self.exists(connection, &queue).await? {
                break;
            }
            unbind(connection, &queue, &self.partitions_exchange, "1").await?;
            retired.push(queue);
        }
        Ok(retired)
    }

    /// What every new connection of a publisher or consumer declares, on a channel of its
    /// own: the full [`Topology::declare`] on the process's first connection; on a
    /// `reconnect`, only if an exchange or queue of the topology is missing (a broker that
    /// lost its data, an operator's deletion). Passive declares read without a
    /// cluster-wide transaction, so a reconnect answers while a node is cut off; bindings
    /// cannot be checked passively and are taken to be there when what they join is
    /// (every process declares them in full when it starts).
    pub async fn declare_on_connect(
        &self,
        connection: &Connection,
        reconnect: bool,
    ) -> Result<(), lapin::Error> {
        if reconnect && self.all_present(connection).await? {
            return Ok(());
        }
        let channel = connection.create_channel().await?;
        self.declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    async fn all_present(&self, connection: &Connection) -> Result<bool, lapin::Error> {
        let channel = connection.create_channel().await?;
        let exchange = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let queue = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let exchanges = [
            &self.events_exchange,
            &self.dead_letter_exchange,
            &self.partitions_exchange,
        ];
        let queues = self.partition_queues().into_iter().chain([
            self.dead_letter_queue.clone(),
            self.dead_letter_index_queue.clone(),
        ]);
        let checked = async {
            for name in exchanges {
                channel
                    .exchange_declare(
                        name.as_str().into(),
                        ExchangeKind::Topic,
                        exchange,
                        FieldTable::default(),
                    )
                    .await?;
            }
            for name in queues {
                channel
                    .queue_declare(name.as_str().into(), queue, FieldTable::default())
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        };
        match checked.await {
            Ok(()) => {
                let _ = channel.close(200, "checked".into()).await;
                Ok(true)
            }
            // The broker closed the probe's channel with the 404.
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Whether a queue exists: a passive declare, on a channel of its own since the
    /// broker closes the channel of one that fails.
    pub async fn exists(&self, connection: &Connection, queue: &str) -> Result<bool, lapin::Error> {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, "done".into()).await;
                Ok(true)
            }
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

async fn unbind(
    connection: &Connection,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .queue_unbind(
            queue.into(),
            exchange.into(),
            key.into(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(error)
            if *error.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

//! Exchanges and queues, named from the installation prefix. Both binaries declare the
//! whole topology on every (re)connect: declarations are idempotent, and whichever
//! process starts first finds a working broker.

use crate::settings::QueueType;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable topic exchange the ATS publishes to; routing key = event type.
    pub events_exchange: String,
    /// Durable queue the deliverers consume, bound to every event type.
    pub deliveries_queue: String,
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
    pub fn new(prefix: &str, queue_type: QueueType) -> Self {
        Self {
            events_exchange: format!("{prefix}.events"),
            deliveries_queue: format!("{prefix}.deliveries"),
            dead_letter_exchange: format!("{prefix}.dead-letter"),
            dead_letter_queue: format!("{prefix}.dead-letter"),
            dead_letter_index_queue: format!("{prefix}.dead-letter.index"),
            queue_type,
        }
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
        // No broker-side dead-lettering on the deliveries queue: in 3.10 it is
        // at-most-once, and it would drop the message with no DLX configured. The
        // deliverer enforces the delivery limit itself from `x-delivery-count`.
        channel
            .queue_declare(
                self.deliveries_queue.as_str().into(),
                durable_queue,
                self.queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.deliveries_queue.as_str().into(),
                self.events_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
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

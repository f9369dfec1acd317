//! Publishing dead-letter records, with confirms. A dead delivery's full record goes to
//! `{prefix}.dead-letter.index` alone (straight to the queue), which the indexer turns
//! into the sealed, erasable Redis index; the ops queue `{prefix}.dead-letter` (through its
//! exchange) gets only its reference, so no copy of the event outlives an erasure there.

use hookline_shared::broker::publisher::{PublishError, Publisher};
use hookline_shared::contract::{DeadLetter, JSON};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

pub const REASON_HEADER: &str = "x-hookline-reason";

#[derive(Debug, Clone)]
pub struct DeadLetters {
    publisher: Publisher,
    exchange: String,
    index_queue: String,
}

impl DeadLetters {
    pub fn new(publisher: Publisher, exchange: String, index_queue: String) -> Self {
        Self {
            publisher,
            exchange,
            index_queue,
        }
    }

    /// Durable once this returns `Ok`: the broker confirmed the record (for a dead
    /// delivery, the full record and then its reference; a retry after a failure between
    /// them indexes it twice, under the same id).
    pub async fn publish(&self, record: &DeadLetter) -> Result<(), PublishError> {
        if let DeadLetter::DeliveryV1(delivery) = record {
            // The default exchange routes by queue name.
            self.send("", &self.index_queue, record).await?;
            let reference = DeadLetter::DeliveryRefV1(delivery.reference());
            return self
                .send(&self.exchange, record.reason().as_str(), &reference)
                .await;
        }
        self.send(&self.exchange, record.reason().as_str(), record)
            .await
    }

    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        record: &DeadLetter,
    ) -> Result<(), PublishError> {
        // Records are strings, numbers and JSON values: serializing cannot fail.
        let body = serde_json::to_vec(record).unwrap_or_default();
        let reason = record.reason().as_str();
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let properties = BasicProperties::default()
            .with_content_type(JSON.into())
            .with_message_id(record.id().into())
            // What the ops queue's trimming reads a record's age from.
            .with_timestamp(u64::try_from(now).unwrap_or(0))
            .with_headers(headers);
        self.publisher
            .publish(exchange, routing_key, &body, properties)
            .await
    }

    pub fn is_connected(&self) -> bool {
        self.publisher.is_connected()
    }
}

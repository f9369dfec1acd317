//! Publishing dead-letter records, with a confirm, to `{prefix}.dead-letter`.

use hookline_shared::broker::publisher::{PublishError, Publisher};
use hookline_shared::contract::{DeadLetter, JSON};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

pub const REASON_HEADER: &str = "x-hookline-reason";

#[derive(Debug, Clone)]
pub struct DeadLetters {
    publisher: Publisher,
    exchange: String,
}

impl DeadLetters {
    pub fn new(publisher: Publisher, exchange: String) -> Self {
        Self {
            publisher,
            exchange,
        }
    }

    /// Durable once this returns `Ok`: the broker confirmed the record.
    pub async fn publish(&self, record: &DeadLetter) -> Result<(), PublishError> {
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
            .publish(&self.exchange, reason, &body, properties)
            .await
    }

    pub fn is_connected(&self) -> bool {
        self.publisher.is_connected()
    }
}

//! Indexes dead letters for the API: consumes `{prefix}.dead-letter.index` and writes each
//! delivery record to Redis (sealed), acking only once it is written. The API lists and
//! replays from the index; `{prefix}.dead-letter` keeps only references for ops.

use crate::acks::AckWindow;
use crate::consumer::Handler;
use hookline_shared::contract::DeadLetter;
use hookline_shared::retry;
use hookline_shared::store::dead_letters::DeadLetterStore;
use lapin::message::Delivery;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct DeadLetterIndexer {
    pub store: DeadLetterStore,
    pub retention: Duration,
    /// Cancelled when the shutdown grace ran out: a record still waiting for Redis goes
    /// back to the queue.
    pub abort: CancellationToken,
}

impl Handler for DeadLetterIndexer {
    async fn handle(self: Arc<Self>, delivery: Delivery, acks: AckWindow) {
        let tag = delivery.delivery_tag;
        let record = match serde_json::from_slice::<DeadLetter>(&delivery.data) {
            Ok(DeadLetter::DeliveryV1(record)) => record,
            // Rejected messages have no tenant to list them under; they stay readable in
            // the record queue. References reach this queue through the exchange beside
            // the full record, which was published to this queue directly.
            Ok(DeadLetter::MessageV1(_) | DeadLetter::DeliveryRefV1(_)) => return acks.ack(tag),
            Err(error) => {
                tracing::warn!(%error, "unreadable dead-letter record not indexed");
                return acks.ack(tag);
            }
        };
        let indexed = retry::until_ok("indexing a dead letter", retry::HOLD, &self.abort, || {
            self.store.index(&record, self.retention)
        })
        .await;
        match indexed {
            Ok(()) => acks.ack(tag),
            Err(retry::Cancelled) => acks.requeue(tag),
        }
    }
}

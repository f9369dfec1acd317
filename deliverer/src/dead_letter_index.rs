//! Indexes dead letters for the API: consumes `{prefix}.dead-letter.index` and writes each
//! delivery record to Redis, acking only once it is written. The API lists and replays
//! from the index; `{prefix}.dead-letter` stays the untouched record for ops.

use crate::acks::AckWindow;
use crate::consumer::Handler;
use hookline_shared::broker::backoff::Backoff;
use hookline_shared::contract::DeadLetter;
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
            // the record queue.
            Ok(DeadLetter::MessageV1(_)) => return acks.ack(tag),
            Err(error) => {
                tracing::warn!(%error, "unreadable dead-letter record not indexed");
                return acks.ack(tag);
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.store.index(&record, self.retention).await {
                Ok(()) => return acks.ack(tag),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        retry_in = ?delay,
                        "indexing a dead letter failed; holding it"
                    );
                    tokio::select! {
                        () = self.abort.cancelled() => return acks.requeue(tag),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

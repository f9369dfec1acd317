//! Keeps the ops record of dead letters, `{prefix}.dead-letter`, bounded: Hookline never
//! consumes it otherwise, and its records take broker disk (a dead delivery's is a
//! reference; a message that was never a valid event keeps up to 64 KiB of its body). Each check drops, oldest first, the records past `retention.dead_letter_queue`
//! and those beyond `retention.dead_letter_queue_max`; the first record young enough
//! goes back to the head of the queue and ends the check. Every deliverer trims; they
//! take different records, and each drop is an ack of one old record.

use hookline_shared::settings::AmqpSettings;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Records looked at per check at most: a check never runs long.
const PER_CHECK: usize = 5_000;

#[derive(Debug)]
pub struct DeadLetterTrim {
    pub settings: AmqpSettings,
    pub queue: String,
    pub max_age: Duration,
    pub max_len: u64,
    pub every: Duration,
    pub dropped: prometheus::IntCounter,
}

impl DeadLetterTrim {
    pub async fn run(self, shutdown: CancellationToken) {
        crate::periodic::every(
            self.every,
            shutdown,
            "trimming the dead-letter queue",
            || self.check(),
        )
        .await;
    }

    async fn check(&self) -> anyhow::Result<()> {
        let connection =
            hookline_shared::broker::connect(&self.settings, "deliverer-dead-letter-trim").await?;
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let depth = channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await?
            .message_count();
        let mut surplus = u64::from(depth).saturating_sub(self.max_len);
        let oldest_kept = OffsetDateTime::now_utc() - self.max_age;
        for _ in 0..PER_CHECK {
            let Some(message) = channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            else {
                break;
            };
            let expired = recorded_at(&message).is_some_and(|at| at < oldest_kept);
            if surplus > 0 || expired {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await?;
                surplus = surplus.saturating_sub(1);
                self.dropped.inc();
            } else {
                // Young enough: back to the head of the queue, and the check is done.
                message
                    .delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
                break;
            }
        }
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    }
}

/// When the record was dead-lettered: the message's timestamp, or the record's
/// `dead_lettered_at` for records published before the timestamp was set.
fn recorded_at(message: &BasicGetMessage) -> Option<OffsetDateTime> {
    if let Some(seconds) = message.delivery.properties.timestamp() {
        return OffsetDateTime::from_unix_timestamp(i64::try_from(*seconds).ok()?).ok();
    }
    let record: serde_json::Value = serde_json::from_slice(&message.delivery.data).ok()?;
    OffsetDateTime::parse(
        record.get("dead_lettered_at")?.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}

//! Writes the delivery history (attempt log, per-event state) to Redis in batches, off
//! the delivery path. A full buffer or a Redis outage drops history, never a delivery:
//! the durable outcome of every delivery is written elsewhere before its message is acked.

use hookline_shared::store::activity::{Activity, ActivityStore, Retention};
use prometheus::IntCounter;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Entries buffered before new ones are dropped (and counted).
const BUFFER: usize = 50_000;
/// Entries written per pipeline.
const BATCH: usize = 2_000;
/// How long a writer that found less than a full batch lets entries gather before the
/// next write. Each write also trims what it touched (a script call, a few commands per
/// key) and costs Redis a round trip, so larger batches are cheaper per entry; history
/// shows up this much later, which nobody can tell.
const GATHER: Duration = Duration::from_millis(25);

#[derive(Debug, Clone)]
pub struct ActivityLog {
    sender: mpsc::Sender<Activity>,
    dropped: IntCounter,
}

/// The task writing the history; [`HistoryWriter::finish`] stops it.
#[derive(Debug)]
pub struct HistoryWriter {
    closing: CancellationToken,
    task: JoinHandle<()>,
}

impl HistoryWriter {
    /// Writes what is buffered (within `within`) and stops; entries recorded after this
    /// are dropped and counted.
    pub async fn finish(self, within: Duration) {
        self.closing.cancel();
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("the delivery history was not written out in time; the rest is dropped");
        }
    }
}

impl ActivityLog {
    /// Starts the writer.
    pub fn spawn(
        store: ActivityStore,
        retention: Retention,
        dropped: IntCounter,
    ) -> (Self, HistoryWriter) {
        let (sender, receiver) = mpsc::channel(BUFFER);
        let closing = CancellationToken::new();
        let task = tokio::spawn(write(
            receiver,
            store,
            retention,
            dropped.clone(),
            closing.clone(),
        ));
        (Self { sender, dropped }, HistoryWriter { closing, task })
    }

    pub fn record(&self, activity: Activity) {
        if self.sender.try_send(activity).is_err() {
            self.dropped.inc();
        }
    }
}

async fn write(
    mut receiver: mpsc::Receiver<Activity>,
    store: ActivityStore,
    retention: Retention,
    dropped: IntCounter,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Under load, entries pile up while a batch is written, so batches grow by
        // themselves. Once closing, the channel takes nothing new and what it holds is
        // written out without gathering.
        let received = tokio::select! {
            received = receiver.recv_many(&mut batch, BATCH) => received,
            () = closing.cancelled(), if !receiver.is_closed() => {
                receiver.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        if let Err(error) = store
            .write(&batch, retention, OffsetDateTime::now_utc())
            .await
        {
            dropped.inc_by(batch.len() as u64);
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(error)),
                entries = batch.len(),
                "writing the delivery history failed; entries dropped"
            );
        }
        let full = batch.len() == BATCH;
        batch.clear();
        if !full && !closing.is_cancelled() {
            tokio::select! {
                () = tokio::time::sleep(GATHER) => {}
                () = closing.cancelled() => {}
            }
        }
    }
}

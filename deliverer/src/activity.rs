//! Writes the delivery history (attempt log, per-event state) to Redis in batches, off
//! the delivery path. A full buffer or a Redis outage drops history, never a delivery:
//! the durable outcome of every delivery is written elsewhere before its message is acked.

use hookline_shared::store::activity::{Activity, ActivityStore, Retention};
use prometheus::IntCounter;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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

impl ActivityLog {
    /// Starts the writer; it drains what is buffered and stops when every clone of the
    /// returned log is dropped.
    pub fn spawn(
        store: ActivityStore,
        retention: Retention,
        dropped: IntCounter,
    ) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(BUFFER);
        let writer = tokio::spawn(write(receiver, store, retention, dropped.clone()));
        (Self { sender, dropped }, writer)
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
) {
    let mut batch = Vec::with_capacity(BATCH);
    // Under load, entries pile up while a batch is written, so batches grow by themselves.
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
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
        if !full {
            tokio::time::sleep(GATHER).await;
        }
    }
}

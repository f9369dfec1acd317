//! Promoting due retries: every replica polls Redis for due deliveries, claims a batch
//! under a lease (each due retry is claimed by exactly one replica at a time), and runs
//! them. A replica that dies mid-attempt loses nothing: its lease runs out and another
//! replica claims the delivery.

use crate::delivery::Worker;
use hookline_shared::store::health::to_ms;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the backlog gauges are refreshed.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Promoter {
    pub worker: Arc<Worker>,
    pub poll_interval: Duration,
    pub batch: usize,
    pub lease: Duration,
    pub handlers: TaskTracker,
}

impl Promoter {
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.batch));
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let mut backlog_refreshed = tokio::time::Instant::now() - BACKLOG_INTERVAL;
        loop {
            if permits.available_permits() == 0 {
                // Every permit is in use: wait for one to come back rather than poll.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    permit = permits.acquire() => drop(permit),
                }
            }
            let free = permits.available_permits();
            let mut claimed_full_batch = false;
            if free > 0 {
                match self.worker.retries.claim(now_ms(), lease_ms, free).await {
                    Ok(claimed) => {
                        claimed_full_batch = claimed.len() == free;
                        for task in claimed {
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                return;
                            };
                            let worker = self.worker.clone();
                            // Boxed, as the consumer's handlers are: a large future
                            // held inline by the task is copied on every change of stage.
                            self.handlers.spawn(Box::pin(async move {
                                worker.handle_retry(task).await;
                                drop(permit);
                            }));
                        }
                    }
                    Err(error) => tracing::warn!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        "claiming retries failed"
                    ),
                }
            }
            if backlog_refreshed.elapsed() >= BACKLOG_INTERVAL {
                backlog_refreshed = tokio::time::Instant::now();
                if let Ok((due, waiting)) = self.worker.retries.backlog(now_ms()).await {
                    let gauge = &self.worker.metrics.retry_backlog;
                    gauge
                        .with_label_values(&["due"])
                        .set(i64::try_from(due).unwrap_or(i64::MAX));
                    gauge
                        .with_label_values(&["waiting"])
                        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
                }
            }
            // A full batch means more may be due: go again at once, unless shut down.
            let pause = if claimed_full_batch {
                Duration::ZERO
            } else {
                self.poll_interval
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

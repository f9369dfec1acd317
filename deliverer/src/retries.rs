//! Promoting due retries and parked deliveries: every replica polls the shards of the
//! retry pool for due deliveries, claims them under a lease (each is claimed by exactly
//! one replica at a time; within a shard, lanes round-robin) and runs them. A replica
//! that dies mid-attempt loses nothing: its lease runs out and another replica claims
//! the delivery.

use crate::delivery::Worker;
use hookline_shared::store::health::to_ms;
use hookline_shared::store::retries::{RetryStore, SHARDS};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the backlog gauges are refreshed.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(2);
/// How long a busy promoter waits for a quarter of its permits before claiming anyway.
const GATHER: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub struct Promoter {
    pub worker: Arc<Worker>,
    pub poll_interval: Duration,
    pub batch: usize,
    pub lease: Duration,
    /// Of a claim of `batch`, what bulk lanes get at least (`fairness.bulk_floor`).
    pub bulk_floor: f64,
    pub handlers: TaskTracker,
}

impl Promoter {
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.batch));
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let mut backlog_refreshed = tokio::time::Instant::now() - BACKLOG_INTERVAL;
        // Shards are asked in turn, from the next one each round, so none is always
        // last; a shard found with nothing due is skipped for a poll interval, so a busy
        // shard is drained in one call per claim rather than after a round of empty ones.
        let mut first_shard: u16 = 0;
        let mut idle_until = [tokio::time::Instant::now(); SHARDS as usize];
        let quorum = (self.batch / 4).max(1);
        loop {
            if permits.available_permits() < quorum {
                // Most permits are in use: wait for a quarter of them to come back (or a
                // moment), so that each claim takes a batch rather than one task.
                let gathered = tokio::time::timeout(
                    GATHER,
                    permits.acquire_many(u32::try_from(quorum).unwrap_or(u32::MAX)),
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    permit = gathered => drop(permit),
                }
                if permits.available_permits() == 0 {
                    continue;
                }
            }
            let mut free = permits.available_permits();
            let mut claimed_full_batch = false;
            let parked = self.worker.parked.take();
            for shard in 0..SHARDS {
                if parked & (1 << shard) != 0 {
                    idle_until[usize::from(shard)] = tokio::time::Instant::now();
                }
            }
            first_shard = (first_shard + 1) % SHARDS;
            for offset in 0..SHARDS {
                if free == 0 {
                    claimed_full_batch = true;
                    break;
                }
                let shard = (first_shard + offset) % SHARDS;
                let round_started = tokio::time::Instant::now();
                if idle_until[usize::from(shard)] > round_started {
                    continue;
                }
                let floor = bulk_floor_of(free, self.bulk_floor);
                let claimed = match self
                    .worker
                    .retries
                    .claim(shard, now_ms(), lease_ms, free, floor)
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{:#}", anyhow::Error::from(error)),
                            "claiming retries failed"
                        );
                        break;
                    }
                };
                if claimed.is_empty() {
                    idle_until[usize::from(shard)] = round_started + self.poll_interval;
                }
                free -= claimed.len().min(free);
                for task in claimed {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let worker = self.worker.clone();
                    // Boxed, as the consumer's handlers are: a large future held inline
                    // by the task is copied on every change of stage.
                    self.handlers.spawn(Box::pin(async move {
                        worker.handle_retry(task).await;
                        drop(permit);
                    }));
                }
            }
            claimed_full_batch |= free == 0;
            if backlog_refreshed.elapsed() >= BACKLOG_INTERVAL {
                backlog_refreshed = tokio::time::Instant::now();
                self.refresh_backlog().await;
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
                () = self.worker.parked.wait() => {}
            }
        }
    }
}

impl Promoter {
    async fn refresh_backlog(&self) {
        let now = now_ms();
        let Ok(backlog) = self.worker.retries.backlog(now).await else {
            return;
        };
        let metrics = &self.worker.metrics;
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        metrics
            .retry_backlog
            .with_label_values(&["due"])
            .set(count(backlog.due()));
        metrics
            .retry_backlog
            .with_label_values(&["waiting"])
            .set(count(backlog.waiting()));
        for (priority, waited) in backlog.oldest_waits_s(now) {
            metrics
                .lane_oldest_due
                .with_label_values(&[priority.as_str()])
                .set(waited);
        }
    }
}

/// How often a replica looks for tasks in the retry pool of earlier versions: replicas
/// of the old version may still write there during a rolling upgrade.
const LEGACY_POOL_INTERVAL: Duration = Duration::from_secs(30);

/// Moves what the single retry pool of earlier versions holds into the lanes, at start
/// and then every [`LEGACY_POOL_INTERVAL`] until shutdown (an empty old pool costs one
/// command).
pub async fn migrate_legacy_pool(retries: RetryStore, shutdown: CancellationToken) {
    loop {
        match retries.migrate_legacy(now_ms()).await {
            Ok(0) => {}
            Ok(moved) => tracing::info!(
                moved,
                "moved retries from the pool of an earlier version into lanes"
            ),
            Err(error) => tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(error)),
                "moving retries from the pool of an earlier version failed; trying again later"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LEGACY_POOL_INTERVAL) => {}
        }
    }
}

/// Bulk tasks in a claim of `limit`: `share` of it, rounded up, at least one unless
/// the share is zero.
fn bulk_floor_of(limit: usize, share: f64) -> usize {
    if share <= 0.0 || limit == 0 {
        return 0;
    }
    // A share of a claim size: both far below f64's exact integers.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let floor = (limit as f64 * share).ceil() as usize;
    floor.clamp(1, limit)
}

fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::bulk_floor_of;

    #[test]
    fn bulk_gets_its_floor_share_of_every_claim() {
        assert_eq!(bulk_floor_of(100, 0.1), 10);
        assert_eq!(bulk_floor_of(5, 0.1), 1, "at least one");
        assert_eq!(bulk_floor_of(5, 0.0), 0, "a zero share is none");
        assert_eq!(bulk_floor_of(0, 0.5), 0);
        assert_eq!(bulk_floor_of(10, 1.0), 10);
    }
}

//! Concurrent attempts per endpoint in this replica. A delivery waits briefly for a slot
//! — long enough for a healthy endpoint's attempts to finish — and is parked in Redis
//! after that, so a slow endpoint cannot hold the prefetch healthy ones need. An endpoint
//! that has not finished an attempt within that wait is slow: its deliveries are parked
//! at once instead of waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
struct Lane {
    semaphore: Arc<Semaphore>,
    // A std Mutex: held to read or write an Instant, never across an await.
    last_release: Mutex<Instant>,
}

type Lanes = Arc<Mutex<HashMap<String, Arc<Lane>>>>;

#[derive(Debug)]
pub struct EndpointSlots {
    limit: usize,
    wait: Duration,
    // A std Mutex: held for a map update, never across an await.
    lanes: Lanes,
}

#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    lane: Arc<Lane>,
    endpoint_id: String,
    limit: usize,
    lanes: Lanes,
}

impl EndpointSlots {
    pub fn new(limit: usize, wait: Duration) -> Self {
        Self {
            limit,
            wait,
            lanes: Arc::default(),
        }
    }

    /// A slot for one attempt, or `None` when none freed up within the wait (or none is
    /// likely to: the endpoint finished nothing for that long).
    pub async fn acquire(&self, endpoint_id: &str) -> Option<Slot> {
        let lane = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Lane {
                    semaphore: Arc::new(Semaphore::new(self.limit)),
                    last_release: Mutex::new(Instant::now()),
                })
            })
            .clone();
        let permit = match lane.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let idle_for = lane
                    .last_release
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed();
                if idle_for >= self.wait {
                    return None;
                }
                tokio::time::timeout(self.wait, lane.semaphore.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        Some(Slot {
            permit: Some(permit),
            lane,
            endpoint_id: endpoint_id.to_owned(),
            limit: self.limit,
            lanes: self.lanes.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self
            .lane
            .last_release
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        drop(self.permit.take());
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        // Idle (no holder, no waiter: only the map and this slot know it): forget it, so
        // the map holds only endpoints in use.
        if Arc::strong_count(&self.lane) == 2
            && self.lane.semaphore.available_permits() == self.limit
        {
            lanes.remove(&self.endpoint_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_busy_but_moving_endpoint() {
        let slots = EndpointSlots::new(1, Duration::from_millis(250));
        let held = slots.acquire("ep").await.expect("first slot");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(held);
        });
        assert!(
            slots.acquire("ep").await.is_some(),
            "a slot freed within the wait"
        );
        release.await.expect("release");
    }

    #[tokio::test(start_paused = true)]
    async fn parks_at_once_for_an_endpoint_that_finishes_nothing() {
        let slots = EndpointSlots::new(1, Duration::from_millis(250));
        let _stuck = slots.acquire("ep").await.expect("first slot");
        assert!(slots.acquire("ep").await.is_none(), "timed out waiting");
        tokio::time::advance(Duration::from_millis(300)).await;
        let started = tokio::time::Instant::now();
        assert!(slots.acquire("ep").await.is_none());
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait once known to be stuck"
        );
        assert!(
            slots.acquire("other").await.is_some(),
            "other endpoints unaffected"
        );
    }
}

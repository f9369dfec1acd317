//! Concurrent attempts per endpoint in this replica. A delivery waits briefly for a slot
//! — long enough for a healthy endpoint's attempts to finish — and is parked in Redis
//! after that, so a slow endpoint cannot hold the prefetch healthy ones need. An endpoint
//! that has not finished an attempt within that wait is stuck: its deliveries are parked
//! at once instead of waiting, and told when a slot frees at the latest (its oldest
//! attempt times out), so they need not come back sooner only to be parked again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
struct Lane {
    semaphore: Arc<Semaphore>,
    // A std Mutex: held to read or write, never across an await.
    state: Mutex<LaneState>,
}

#[derive(Debug)]
struct LaneState {
    last_release: Instant,
    /// When each slot now held was taken.
    taken_at: Vec<Instant>,
}

impl Lane {
    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Lanes = Arc<Mutex<HashMap<String, Arc<Lane>>>>;

#[derive(Debug)]
pub struct EndpointSlots {
    limit: usize,
    wait: Duration,
    /// How long one attempt may take: a slot is free again by then at the latest.
    attempt_timeout: Duration,
    // A std Mutex: held for a map update, never across an await.
    lanes: Lanes,
}

#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    taken_at: Instant,
    lane: Arc<Lane>,
    endpoint_id: String,
    limit: usize,
    lanes: Lanes,
}

/// No slot: every one is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// For an endpoint that finished nothing within the wait: when its oldest attempt
    /// times out, freeing a slot at the latest.
    pub stuck_until: Option<Instant>,
}

impl EndpointSlots {
    pub fn new(limit: usize, wait: Duration, attempt_timeout: Duration) -> Self {
        Self {
            limit,
            wait,
            attempt_timeout,
            lanes: Arc::default(),
        }
    }

    /// A slot for one attempt, or [`Busy`] when none freed up within the wait (or none
    /// is likely to: the endpoint finished nothing for that long).
    pub async fn acquire(&self, endpoint_id: &str) -> Result<Slot, Busy> {
        let lane = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Lane {
                    semaphore: Arc::new(Semaphore::new(self.limit)),
                    state: Mutex::new(LaneState {
                        last_release: Instant::now(),
                        taken_at: Vec::with_capacity(self.limit),
                    }),
                })
            })
            .clone();
        let permit = match lane.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let stuck = self.stuck(&lane);
                if stuck.stuck_until.is_some() {
                    return Err(stuck);
                }
                match tokio::time::timeout(self.wait, lane.semaphore.clone().acquire_owned()).await
                {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(self.stuck(&lane)),
                }
            }
        };
        let taken_at = Instant::now();
        lane.state().taken_at.push(taken_at);
        Ok(Slot {
            permit: Some(permit),
            taken_at,
            lane,
            endpoint_id: endpoint_id.to_owned(),
            limit: self.limit,
            lanes: self.lanes.clone(),
        })
    }

    /// Whether the lane finished nothing within the wait, and if so when a slot frees
    /// at the latest.
    fn stuck(&self, lane: &Lane) -> Busy {
        let state = lane.state();
        let stuck_until = if state.last_release.elapsed() >= self.wait {
            state
                .taken_at
                .iter()
                .min()
                .map(|oldest| *oldest + self.attempt_timeout)
        } else {
            None
        };
        Busy { stuck_until }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut state = self.lane.state();
            state.last_release = Instant::now();
            if let Some(index) = state.taken_at.iter().position(|at| *at == self.taken_at) {
                state.taken_at.swap_remove(index);
            }
        }
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

    const WAIT: Duration = Duration::from_millis(250);
    const TIMEOUT: Duration = Duration::from_secs(15);

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_busy_but_moving_endpoint() {
        let slots = EndpointSlots::new(1, WAIT, TIMEOUT);
        let held = slots.acquire("ep").await.expect("first slot");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(held);
        });
        assert!(
            slots.acquire("ep").await.is_ok(),
            "a slot freed within the wait"
        );
        release.await.expect("release");
    }

    #[tokio::test(start_paused = true)]
    async fn parks_at_once_for_an_endpoint_that_finishes_nothing() {
        let slots = EndpointSlots::new(1, WAIT, TIMEOUT);
        let taken = Instant::now();
        let _stuck = slots.acquire("ep").await.expect("first slot");
        assert_eq!(
            slots.acquire("ep").await.err(),
            Some(Busy {
                stuck_until: Some(taken + TIMEOUT)
            }),
            "timed out waiting; the slot frees by its attempt's timeout"
        );
        tokio::time::advance(Duration::from_millis(300)).await;
        let started = Instant::now();
        assert_eq!(
            slots.acquire("ep").await.err(),
            Some(Busy {
                stuck_until: Some(taken + TIMEOUT)
            })
        );
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait once known to be stuck"
        );
        assert!(
            slots.acquire("other").await.is_ok(),
            "other endpoints unaffected"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_endpoint_frees_by_its_oldest_attempt_still_running() {
        let slots = EndpointSlots::new(2, WAIT, TIMEOUT);
        let first = slots.acquire("ep").await.expect("first slot");
        tokio::time::advance(Duration::from_secs(1)).await;
        let second_taken = Instant::now();
        let _second = slots.acquire("ep").await.expect("second slot");
        drop(first);
        let third = slots.acquire("ep").await.expect("the freed slot");
        tokio::time::advance(WAIT).await;
        assert_eq!(
            slots.acquire("ep").await.err(),
            Some(Busy {
                stuck_until: Some(second_taken + TIMEOUT)
            }),
            "the released slot no longer counts"
        );
        drop(third);
    }

    #[tokio::test(start_paused = true)]
    async fn a_moving_endpoint_is_busy_without_a_deadline() {
        let slots = Arc::new(EndpointSlots::new(1, WAIT, TIMEOUT));
        let held = slots.acquire("ep").await.expect("first slot");
        let queued = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire("ep").await })
        };
        tokio::task::yield_now().await;
        let refused = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire("ep").await.err() })
        };
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(100)).await;
        drop(held);
        let queued = queued
            .await
            .expect("queued")
            .expect("the waiter before it took the freed slot");
        assert_eq!(
            refused.await.expect("refused"),
            Some(Busy { stuck_until: None }),
            "no slot for the second waiter, but the endpoint finished an attempt meanwhile"
        );
        drop(queued);
    }
}

//! Acknowledging in batches. Deliveries finish out of order; the window acks, with
//! `multiple=true`, up to the highest tag below which every delivery has finished. One
//! ack frame then settles many messages, which halves lapin's per-message CPU.
//!
//! Only settled deliveries are ever covered by an ack: a delivery still in progress holds
//! the floor below its own tag. A slow delivery (a receiver that hangs until the timeout)
//! must not hold the prefetch of everything behind it, so deliveries finished above the
//! floor are acked one by one once they pile up or have waited a tick.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Finished deliveries above the floor beyond which they are acked singly at once.
const STRAGGLER_LIMIT: usize = 32;
/// How long finished deliveries above the floor may wait for it to rise.
const STRAGGLER_TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct State {
    /// Received and not yet finished.
    outstanding: BTreeSet<u64>,
    /// Finished and not yet acked.
    finished: BTreeSet<u64>,
    highest_received: u64,
    /// Everything at or below it has been acked.
    acked_through: u64,
    /// Finished deliveries that must go back to the queue, one nack each.
    requeue: Vec<u64>,
    closed: bool,
}

/// The acks one flush sends.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// One `multiple=true` ack through this tag.
    through: Option<u64>,
    /// Single acks for finished deliveries stuck above the floor.
    singles: Vec<u64>,
}

impl State {
    /// The highest tag that can be acked with `multiple=true` now.
    fn floor(&self) -> u64 {
        match self.outstanding.first() {
            Some(lowest) => lowest - 1,
            None => self.highest_received,
        }
    }

    /// Decides the acks and marks them as sent. A multiple ack always names a tag that is
    /// still unacked: RabbitMQ closes the channel on an ack for an unknown tag.
    fn plan(&mut self, stragglers_due: bool) -> Plan {
        let floor = self.floor();
        let mut plan = Plan::default();
        if floor > self.acked_through {
            plan.through = self.finished.range(..=floor).next_back().copied();
            self.finished = self.finished.split_off(&(floor + 1));
            self.acked_through = floor;
        }
        if stragglers_due || self.finished.len() > STRAGGLER_LIMIT {
            plan.singles = std::mem::take(&mut self.finished).into_iter().collect();
        }
        plan
    }
}

#[derive(Debug, Clone)]
pub struct AckWindow {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    flusher: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl AckWindow {
    /// Starts the flusher for `channel`; it ends when [`AckWindow::close`] is called or the
    /// channel fails.
    pub fn start(channel: Channel) -> Self {
        let window = Self {
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(Notify::new()),
            flusher: Arc::default(),
        };
        let handle = tokio::spawn(window.clone().flush(channel));
        *window.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a delivery as it arrives, before its work starts.
    pub fn received(&self, tag: u64) {
        let mut state = self.lock();
        state.outstanding.insert(tag);
        state.highest_received = state.highest_received.max(tag);
    }

    /// The delivery's outcome is durable: it may be acked.
    pub fn ack(&self, tag: u64) {
        let mut state = self.lock();
        state.outstanding.remove(&tag);
        state.finished.insert(tag);
        drop(state);
        self.wake.notify_one();
    }

    /// The delivery could not be handled now: return it to the queue.
    pub fn requeue(&self, tag: u64) {
        let mut state = self.lock();
        state.outstanding.remove(&tag);
        state.requeue.push(tag);
        drop(state);
        self.wake.notify_one();
    }

    /// Flushes what is settled, then stops; returns once the last ack was sent.
    pub async fn finish(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
        let handle = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    async fn flush(self, channel: Channel) {
        let mut tick = tokio::time::interval(STRAGGLER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stragglers_due = tokio::select! {
                () = self.wake.notified() => {
                    // Deliveries finishing in the same turn of the scheduler settle in
                    // this flush too: one ack frame for all of them.
                    tokio::task::yield_now().await;
                    false
                }
                _ = tick.tick() => true,
            };
            let (requeue, plan, closed) = {
                let mut state = self.lock();
                let closed = state.closed;
                let plan = state.plan(stragglers_due || closed);
                (std::mem::take(&mut state.requeue), plan, closed)
            };
            // Nacks first: a later multiple-ack must not cover a tag meant for requeue.
            for tag in requeue {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if channel.basic_nack(tag, options).await.is_err() {
                    return;
                }
            }
            if let Some(through) = plan.through
                && channel
                    .basic_ack(through, BasicAckOptions { multiple: true })
                    .await
                    .is_err()
            {
                // The channel is gone; the broker requeues everything unacked.
                return;
            }
            for tag in plan.singles {
                if channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if closed {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_waits_for_the_lowest_outstanding() {
        let mut state = State::default();
        for tag in 1..=5 {
            state.outstanding.insert(tag);
            state.highest_received = tag;
        }
        assert_eq!(state.floor(), 0);
        state.outstanding.remove(&2);
        state.outstanding.remove(&3);
        assert_eq!(state.floor(), 0, "1 still in progress");
        state.outstanding.remove(&1);
        assert_eq!(state.floor(), 3);
        state.outstanding.remove(&5);
        assert_eq!(state.floor(), 3, "4 still in progress");
        state.outstanding.remove(&4);
        assert_eq!(state.floor(), 5);
    }

    fn window(received: u64) -> State {
        let mut state = State::default();
        for tag in 1..=received {
            state.outstanding.insert(tag);
            state.highest_received = tag;
        }
        state
    }

    fn finish(state: &mut State, tags: &[u64]) {
        for tag in tags {
            state.outstanding.remove(tag);
            state.finished.insert(*tag);
        }
    }

    #[test]
    fn in_order_finishes_take_one_multiple_ack() {
        let mut state = window(5);
        finish(&mut state, &[1, 2, 3]);
        assert_eq!(
            state.plan(false),
            Plan {
                through: Some(3),
                singles: vec![]
            }
        );
        assert_eq!(state.plan(false), Plan::default(), "nothing new to ack");
    }

    #[test]
    fn a_slow_delivery_does_not_hold_the_ones_behind_it() {
        let mut state = window(10);
        finish(&mut state, &[2, 3, 4]);
        assert_eq!(state.plan(false), Plan::default(), "waits a tick for 1");
        assert_eq!(
            state.plan(true),
            Plan {
                through: None,
                singles: vec![2, 3, 4]
            }
        );
        // When 1 finishes, the multiple ack must name 1 itself: 2-4 are acked already.
        finish(&mut state, &[1, 5]);
        assert_eq!(
            state.plan(false),
            Plan {
                through: Some(5),
                singles: vec![]
            }
        );
    }

    #[test]
    fn floor_over_singly_acked_tags_sends_nothing() {
        let mut state = window(3);
        finish(&mut state, &[2, 3]);
        state.plan(true);
        finish(&mut state, &[]);
        state.outstanding.remove(&1);
        state.requeue.push(1);
        assert_eq!(
            state.plan(false),
            Plan::default(),
            "1 is nacked, 2-3 acked singly"
        );
        assert_eq!(state.acked_through, 3);
    }

    #[test]
    fn many_stragglers_are_acked_without_waiting() {
        let mut state = window(100);
        let tags: Vec<u64> = (2..=40).collect();
        finish(&mut state, &tags);
        assert_eq!(state.plan(false).singles, tags);
    }
}

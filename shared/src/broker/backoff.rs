//! The schedule of [`crate::retry`] stepped by hand, for the one loop that does not go
//! through [`crate::retry::until_ok`] yet (`Worker::until_durable` in the deliverer). New
//! code calls `until_ok`; this module goes when that loop does.

use crate::retry;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    schedule: retry::Backoff,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            schedule: retry::Backoff::new(base, cap),
            failures: 0,
        }
    }

    /// The next wait, per [`retry::Backoff::delay`].
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.schedule.delay(self.failures, rand::random())
    }
}

//! One way to retry IO: [`until_ok`] runs an operation until it succeeds, waiting a
//! capped, jittered, exponentially growing delay after each failure, and gives up only
//! when its `CancellationToken` is cancelled. Reconnecting to RabbitMQ and Redis and
//! holding work in hand through an outage all go through it.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Reconnecting to RabbitMQ or Redis: nothing is waiting on the connection but readiness,
/// so the cap is long enough to keep a fleet from hammering a broker that is restarting.
pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// Holding work in hand while a write to Redis or RabbitMQ fails: a message is held
/// meanwhile, so the cap is shorter and work resumes within seconds of the store's return.
pub const HOLD: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A capped exponential schedule with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The wait after `failures` consecutive failures (1 after the first), given
    /// `jitter`, a uniform draw from [0, 1).
    ///
    /// Equal jitter: the wait is drawn from the upper half of a window that starts at
    /// `base` and doubles per failure up to `cap`. Full jitter (the whole window) would
    /// spread replicas reconnecting after one outage a little wider, but can come back
    /// almost at once, which against a store that is down is a busy loop; the floor at
    /// half the window bounds every replica to two attempts per window, and the half left
    /// to chance still spreads them out.
    pub fn delay(self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let window = self.base.saturating_mul(1 << exponent).min(self.cap);
        window.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// [`until_ok`] gave up because its token was cancelled before the operation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gave up retrying: cancelled")]
pub struct Cancelled;

/// Runs `operation` until it succeeds, waiting per `schedule` after each failure. Each
/// failure is logged once, as "`{what}` failed" with its cause chain and the wait; the
/// caller logs nothing more for it.
///
/// The first attempt is made even if `cancel` is already cancelled, and an attempt in
/// progress is not interrupted: cancelling ends only a wait, so whatever an attempt was
/// writing either lands or fails on its own. A caller that wants an attempt dropped
/// (a connect that may take its whole timeout) races the whole call against the token.
///
/// `E: Into<anyhow::Error>` only to print the cause chain; the error is not returned.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    schedule: Backoff,
    cancel: &CancellationToken,
    mut operation: F,
) -> Result<T, Cancelled>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let mut failures = 0u32;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = schedule.delay(failures, rand::random());
                tracing::warn!(error = format!("{:#}", error.into()), retry_in = ?delay, "{what} failed");
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(Cancelled),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn the_wait_doubles_from_base_to_cap_within_the_upper_half_of_the_window() {
        let schedule = Backoff::new(ms(100), ms(1000));
        let cases = [
            // (failures, jitter, wait)
            (1, 0.0, ms(50)),
            (1, 0.5, ms(75)),
            (1, 1.0, ms(100)),
            (2, 0.0, ms(100)),
            (2, 1.0, ms(200)),
            (3, 0.5, ms(300)),
            (4, 1.0, ms(800)),
            (5, 0.0, ms(500)),
            (5, 1.0, ms(1000)),
            (40, 0.0, ms(500)),
            (u32::MAX, 1.0, ms(1000)),
            // A draw outside [0, 1) stays inside the window.
            (1, -3.0, ms(50)),
            (1, 7.0, ms(100)),
            // Zero failures is read as the first.
            (0, 1.0, ms(100)),
        ];
        for (failures, jitter, expected) in cases {
            assert_eq!(
                schedule.delay(failures, jitter),
                expected,
                "failures {failures}, jitter {jitter}"
            );
        }
    }

    #[test]
    fn the_site_schedules_start_and_stop_where_they_say() {
        assert_eq!(RECONNECT.delay(1, 1.0), ms(200));
        assert_eq!(RECONNECT.delay(30, 1.0), Duration::from_secs(10));
        assert_eq!(HOLD.delay(1, 1.0), ms(100));
        assert_eq!(HOLD.delay(30, 1.0), Duration::from_secs(5));
    }

    fn failing_times(
        failures: u32,
        attempts: &Cell<u32>,
    ) -> impl FnMut() -> std::future::Ready<Result<u32, std::io::Error>> + '_ {
        move || {
            attempts.set(attempts.get() + 1);
            std::future::ready(if attempts.get() > failures {
                Ok(attempts.get())
            } else {
                Err(std::io::Error::other("down"))
            })
        }
    }

    const FAST: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));

    #[tokio::test]
    async fn retries_until_the_operation_succeeds() {
        let attempts = Cell::new(0);
        let cancel = CancellationToken::new();
        let result = until_ok("test", FAST, &cancel, failing_times(3, &attempts)).await;
        assert_eq!(result, Ok(4));
    }

    #[tokio::test]
    async fn cancelling_ends_the_wait_with_cancelled() {
        let attempts = Cell::new(0);
        let cancel = CancellationToken::new();
        let slow = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let canceller = cancel.clone();
        tokio::spawn(async move { canceller.cancel() });
        let result = until_ok("test", slow, &cancel, failing_times(u32::MAX, &attempts)).await;
        assert_eq!(result, Err(Cancelled));
        assert_eq!(attempts.get(), 1);
    }

    #[tokio::test]
    async fn an_already_cancelled_token_still_gets_one_attempt() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let attempts = Cell::new(0);
        let result = until_ok("test", FAST, &cancel, failing_times(0, &attempts)).await;
        assert_eq!(result, Ok(1));
        let attempts = Cell::new(0);
        let result = until_ok("test", FAST, &cancel, failing_times(1, &attempts)).await;
        assert_eq!(result, Err(Cancelled));
        assert_eq!(attempts.get(), 1);
    }
}

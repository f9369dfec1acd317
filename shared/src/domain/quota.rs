//! Quotas with a burst: a rate that may be exceeded by `burst` requests at once, then
//! admits one request per `60 s / per_minute`. The generic cell rate algorithm keeps one
//! number per key — the theoretical arrival time (TAT) of the next request — so the
//! same rule runs in-process ([`admit`]) and in Redis (`store::rate`, the same formula
//! in Lua) without a window that resets all callers at once.

use serde::Deserialize;
use std::time::Duration;

/// `per_minute` requests a minute on average, `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Quota {
    pub per_minute: u32,
    pub burst: u32,
}

impl Quota {
    /// The time one request uses up, in µs.
    pub fn interval_us(&self) -> u64 {
        60_000_000 / u64::from(self.per_minute.max(1))
    }

    /// How far ahead of now the TAT may run: `burst` intervals.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us() * u64::from(self.burst.max(1))
    }
}

/// The decision for one request at `now_us` given the key's TAT (`None`: never seen):
/// admitted with the TAT to store, or refused with how long until one would be.
pub fn admit(quota: Quota, tat_us: Option<u64>, now_us: u64) -> Result<u64, Duration> {
    let next = tat_us.unwrap_or(now_us).max(now_us) + quota.interval_us();
    let ahead = next - now_us;
    if ahead > quota.tolerance_us() {
        Err(Duration::from_micros(ahead - quota.tolerance_us()))
    } else {
        Ok(next)
    }
}

/// Whether a request at `now_us` would be refused, without using the quota up.
pub fn exhausted(quota: Quota, tat_us: Option<u64>, now_us: u64) -> Option<Duration> {
    admit(quota, tat_us, now_us).err()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;
    /// One a second, three at once.
    const QUOTA: Quota = Quota {
        per_minute: 60,
        burst: 3,
    };

    /// Admits requests at the given times (s), returning which were admitted.
    fn run(times: &[f64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|t| {
                let now = (t * SECOND as f64) as u64 + 1_000 * SECOND;
                match admit(QUOTA, tat, now) {
                    Ok(next) => {
                        tat = Some(next);
                        true
                    }
                    Err(_) => false,
                }
            })
            .collect()
    }

    #[test]
    fn a_burst_is_admitted_at_once_and_the_next_is_refused() {
        assert_eq!(run(&[0.0, 0.0, 0.0, 0.0]), [true, true, true, false]);
    }

    #[test]
    fn after_a_burst_one_request_per_interval_is_admitted() {
        assert_eq!(
            run(&[0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]),
            [true, true, true, false, true, false, true]
        );
    }

    #[test]
    fn an_idle_key_earns_its_whole_burst_back_and_no_more() {
        assert_eq!(
            run(&[0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 100.0]),
            [true, true, true, true, true, true, false]
        );
    }

    #[test]
    fn a_refusal_says_how_long_until_the_next_admission() {
        let now = 1_000 * SECOND;
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(admit(QUOTA, tat, now).expect("within the burst"));
        }
        assert_eq!(admit(QUOTA, tat, now), Err(Duration::from_secs(1)));
        assert_eq!(
            exhausted(QUOTA, tat, now + SECOND / 4),
            Some(Duration::from_millis(750))
        );
        assert_eq!(exhausted(QUOTA, tat, now + SECOND), None);
        assert!(admit(QUOTA, tat, now + SECOND).is_ok());
    }

    #[test]
    fn refusals_do_not_use_the_quota_up() {
        // Hammering while refused does not push the next admission further out.
        assert_eq!(
            run(&[0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 1.0]),
            [true, true, true, false, false, false, false, true]
        );
    }
}

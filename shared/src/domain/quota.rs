//! Quotas with a burst: a rate that may be exceeded by `burst` requests at once, then
//! admits one request per `60 s / per_minute`. The generic cell rate algorithm keeps one
//! number per key — the theoretical arrival time (TAT) of the next request — so the
//! same rule runs in-process ([`admit`]) and in Redis (`store::rate`, the same formula
//! in Lua) without a window that resets all callers at once.

use super::Invalid;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `per_minute` requests a minute on average, `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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

    /// Whether `cost` units can ever be admitted at once: never more than the burst, so
    /// a caller can refuse such a request for good instead of naming a wait after which
    /// it would be refused again.
    pub fn fits(&self, cost: u32) -> bool {
        cost <= self.burst.max(1)
    }

    /// The rules for a quota an operator sets: `per_minute` 0 means unlimited (the burst
    /// is then ignored); otherwise at most one unit per µs, and a burst of at least 1.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.per_minute > MAX_PER_MINUTE {
            return Err(Invalid::new(
                "per_minute",
                format!("must be at most {MAX_PER_MINUTE} (0 means unlimited)"),
            ));
        }
        if self.per_minute > 0 && !(1..=MAX_BURST).contains(&self.burst) {
            return Err(Invalid::new(
                "burst",
                format!("must be between 1 and {MAX_BURST}"),
            ));
        }
        Ok(())
    }

    /// `None` when `per_minute` is 0: no limit.
    pub fn limited(self) -> Option<Self> {
        (self.per_minute > 0).then_some(self)
    }
}

/// One unit per µs: a faster rate would round the interval down to nothing.
pub const MAX_PER_MINUTE: u32 = 60_000_000;
/// Large enough for any batch, small enough that `tolerance_us` cannot overflow.
pub const MAX_BURST: u32 = 1_000_000;

/// The decision for a request that uses `cost` units (one event each) at `now_us`
/// given the key's TAT (`None`: never seen): admitted with the TAT to store, or
/// refused with how long until it would be. All `cost` units are admitted together or
/// none is; a refusal uses nothing up.
pub fn admit(quota: Quota, tat_us: Option<u64>, now_us: u64, cost: u32) -> Result<u64, Duration> {
    let next = tat_us.unwrap_or(now_us).max(now_us) + quota.interval_us() * u64::from(cost);
    let ahead = next - now_us;
    if ahead > quota.tolerance_us() {
        Err(Duration::from_micros(ahead - quota.tolerance_us()))
    } else {
        Ok(next)
    }
}

/// Whether a request of one unit at `now_us` would be refused, without using the
/// quota up.
pub fn exhausted(quota: Quota, tat_us: Option<u64>, now_us: u64) -> Option<Duration> {
    admit(quota, tat_us, now_us, 1).err()
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
                match admit(QUOTA, tat, now, 1) {
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
            tat = Some(admit(QUOTA, tat, now, 1).expect("within the burst"));
        }
        assert_eq!(admit(QUOTA, tat, now, 1), Err(Duration::from_secs(1)));
        assert_eq!(
            exhausted(QUOTA, tat, now + SECOND / 4),
            Some(Duration::from_millis(750))
        );
        assert_eq!(exhausted(QUOTA, tat, now + SECOND), None);
        assert!(admit(QUOTA, tat, now + SECOND, 1).is_ok());
    }

    #[test]
    fn a_cost_uses_that_many_units_at_once_or_none() {
        let now = 1_000 * SECOND;
        // (TAT ahead of now in s, cost) → admitted with the TAT this far ahead, or the wait.
        #[rustfmt::skip]
        let cases: [(Option<u64>, u32, Result<u64, Duration>); 7] = [
            (None, 1, Ok(1)),
            (None, 3, Ok(3)),
            (Some(1), 2, Ok(3)),
            // Two left, three asked: refused whole, and told when three fit.
            (Some(1), 3, Err(Duration::from_secs(1))),
            (Some(3), 1, Err(Duration::from_secs(1))),
            (Some(3), 2, Err(Duration::from_secs(2))),
            // Zero costs nothing, even when exhausted.
            (Some(3), 0, Ok(3)),
        ];
        for (ahead, cost, expected) in cases {
            let tat = ahead.map(|s| now + s * SECOND);
            let got = admit(QUOTA, tat, now, cost).map(|next| (next - now) / SECOND);
            assert_eq!(got, expected, "ahead {ahead:?}, cost {cost}");
        }
        // Refused whole: nothing of the refused cost was used up.
        assert_eq!(
            admit(QUOTA, Some(now + SECOND), now, 2).map(|t| t - now),
            Ok(3 * SECOND)
        );
    }

    #[test]
    fn more_than_the_burst_never_fits() {
        assert!(QUOTA.fits(3));
        assert!(!QUOTA.fits(4));
        // Since a fresh key refuses it, no wait would help.
        assert!(admit(QUOTA, None, 1_000 * SECOND, 4).is_err());
    }

    #[test]
    fn operator_quotas_are_checked_naming_the_field() {
        let quota = |per_minute, burst| Quota { per_minute, burst };
        let cases = [
            (quota(0, 0), None),
            (quota(60, 1), None),
            (quota(MAX_PER_MINUTE, MAX_BURST), None),
            (quota(MAX_PER_MINUTE + 1, 1), Some("per_minute")),
            (quota(60, 0), Some("burst")),
            (quota(60, MAX_BURST + 1), Some("burst")),
        ];
        for (quota, field) in cases {
            assert_eq!(
                quota.check().err().map(|e| e.field),
                field.map(str::to_owned),
                "{quota:?}"
            );
        }
        assert_eq!(quota(0, 5).limited(), None);
        assert_eq!(quota(6, 5).limited(), Some(quota(6, 5)));
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

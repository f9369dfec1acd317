//! Endpoint health: the state machine behind the failing badge, auto-disable and the
//! circuit breaker.
//!
//! The record is a handful of counters and times kept in Redis; every decision made from
//! it lives here, so the state machine is one pure function per transition.

use super::endpoint::Endpoint;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failed attempts after which an endpoint is `failing` (circuit open).
    pub failing_after: u32,
    /// An endpoint with no success for this long while failing is disabled.
    pub disable_after: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failing_after: 5,
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    #[default]
    Healthy,
    Failing,
    Disabled,
}

impl HealthState {
    pub const ALL: [Self; 3] = [Self::Healthy, Self::Failing, Self::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// Switched off through the API (`"enabled": false`).
    Manual,
    /// The receiver answered `410 Gone`: it asked not to be called again.
    Gone,
    /// No success for `disable_after` while failing.
    NoSuccess,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Gone => "gone",
            Self::NoSuccess => "no_success",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "manual" => Some(Self::Manual),
            "gone" => Some(Self::Gone),
            "no_success" => Some(Self::NoSuccess),
            _ => None,
        }
    }
}

/// What Redis holds about one endpoint's recent attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthRecord {
    pub consecutive_failures: u32,
    pub last_success_at: Option<OffsetDateTime>,
    pub last_failure_at: Option<OffsetDateTime>,
    /// First failure after the last success: how long the endpoint has been down.
    pub failing_since: Option<OffsetDateTime>,
    /// Set when Hookline disabled the endpoint (410, or no success for too long).
    pub disabled_reason: Option<DisabledReason>,
}

/// What the API shows as `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthView {
    pub state: HealthState,
    pub consecutive_failures: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_failure_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<DisabledReason>,
}

impl HealthRecord {
    /// The endpoint's state, given whether its owner left it enabled.
    pub fn state(&self, enabled: bool, policy: &HealthPolicy) -> HealthState {
        if !enabled || self.disabled_reason.is_some() {
            HealthState::Disabled
        } else if self.consecutive_failures >= policy.failing_after {
            HealthState::Failing
        } else {
            HealthState::Healthy
        }
    }

    pub fn view(&self, enabled: bool, policy: &HealthPolicy) -> HealthView {
        let disabled_reason = match (self.disabled_reason, enabled) {
            (Some(reason), _) => Some(reason),
            (None, false) => Some(DisabledReason::Manual),
            (None, true) => None,
        };
        HealthView {
            state: self.state(enabled, policy),
            consecutive_failures: self.consecutive_failures,
            last_success_at: self.last_success_at,
            last_failure_at: self.last_failure_at,
            disabled_reason,
        }
    }

    /// Whether the failure just recorded (already counted in `self`) disables the
    /// endpoint. `status` is the receiver's answer, if any.
    pub fn disables_after_failure(
        &self,
        status: Option<u16>,
        now: OffsetDateTime,
        policy: &HealthPolicy,
    ) -> Option<DisabledReason> {
        if self.disabled_reason.is_some() {
            return None;
        }
        if status == Some(410) {
            return Some(DisabledReason::Gone);
        }
        // Down since the last success, or since the streak began when it never succeeded.
        let down_since = match (self.last_success_at, self.failing_since) {
            (Some(success), Some(streak)) => success.max(streak),
            (Some(success), None) => success,
            (None, Some(streak)) => streak,
            (None, None) => return None,
        };
        let down_for = now - down_since;
        (self.consecutive_failures >= policy.failing_after
            && down_for
                >= time::Duration::try_from(policy.disable_after).unwrap_or(time::Duration::MAX))
        .then_some(DisabledReason::NoSuccess)
    }
}

/// What the circuit breaker lets a delivery do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Attempt it.
    Attempt,
    /// The circuit is open: this delivery is the one probe allowed at a time.
    Probe,
    /// The circuit is open and a probe is already out: schedule it for later.
    Hold,
    /// The endpoint is disabled: dead-letter it with `endpoint_disabled`.
    Refuse,
}

/// How many of `endpoints` are in each state, every state listed (zero included), as the
/// metrics gauge and the operator overview report them.
pub fn count_states<'a>(
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    health: &HashMap<String, HealthRecord>,
    policy: &HealthPolicy,
) -> [(HealthState, u64); 3] {
    let mut counts = HealthState::ALL.map(|state| (state, 0));
    for endpoint in endpoints {
        let state = health
            .get(&endpoint.id)
            .unwrap_or(&HealthRecord::default())
            .state(endpoint.spec.enabled, policy);
        if let Some((_, count)) = counts.iter_mut().find(|(s, _)| *s == state) {
            *count += 1;
        }
    }
    counts
}

/// The breaker's decision. `probe_taken`: this delivery holds the open circuit's probe
/// lease (callers take it only for a failing endpoint).
pub fn admit(state: HealthState, probe_taken: bool) -> Admission {
    match state {
        HealthState::Healthy => Admission::Attempt,
        HealthState::Disabled => Admission::Refuse,
        HealthState::Failing if probe_taken => Admission::Probe,
        HealthState::Failing => Admission::Hold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-10 12:00 UTC);

    fn policy() -> HealthPolicy {
        HealthPolicy {
            failing_after: 3,
            disable_after: Duration::from_secs(3600),
        }
    }

    fn record(
        failures: u32,
        success_ago_s: Option<i64>,
        streak_ago_s: Option<i64>,
    ) -> HealthRecord {
        HealthRecord {
            consecutive_failures: failures,
            last_success_at: success_ago_s.map(|s| NOW - time::Duration::seconds(s)),
            last_failure_at: (failures > 0).then_some(NOW),
            failing_since: streak_ago_s.map(|s| NOW - time::Duration::seconds(s)),
            disabled_reason: None,
        }
    }

    #[test]
    fn state_table() {
        let p = policy();
        let cases = [
            (record(0, Some(10), None), true, HealthState::Healthy),
            (record(2, Some(10), Some(5)), true, HealthState::Healthy),
            (record(3, Some(10), Some(5)), true, HealthState::Failing),
            (record(30, None, Some(5)), true, HealthState::Failing),
            (record(0, Some(10), None), false, HealthState::Disabled),
            (
                HealthRecord {
                    disabled_reason: Some(DisabledReason::Gone),
                    ..record(1, None, Some(1))
                },
                true,
                HealthState::Disabled,
            ),
        ];
        for (record, enabled, expected) in cases {
            assert_eq!(
                record.state(enabled, &p),
                expected,
                "{record:?} enabled={enabled}"
            );
        }
    }

    #[test]
    fn disable_table() {
        let p = policy();
        let cases = [
            // 410 disables at once, whatever the history.
            (
                record(1, Some(1), Some(1)),
                Some(410),
                Some(DisabledReason::Gone),
            ),
            // Failing, but not yet down for the whole window.
            (record(10, Some(1800), Some(1800)), Some(500), None),
            // Down longer than the window since the last success.
            (
                record(10, Some(7200), Some(7000)),
                Some(500),
                Some(DisabledReason::NoSuccess),
            ),
            // Never succeeded: the streak start counts.
            (
                record(10, None, Some(3600)),
                None,
                Some(DisabledReason::NoSuccess),
            ),
            // Long ago success, but too few failures to be failing: not disabled.
            (record(2, Some(7200), Some(7200)), Some(500), None),
            // A success after the streak began restarts the clock.
            (record(5, Some(60), Some(7200)), Some(500), None),
        ];
        for (record, status, expected) in cases {
            assert_eq!(
                record.disables_after_failure(status, NOW, &p),
                expected,
                "{record:?} status={status:?}"
            );
        }
    }

    #[test]
    fn already_disabled_is_not_disabled_again() {
        let record = HealthRecord {
            disabled_reason: Some(DisabledReason::NoSuccess),
            ..record(10, None, Some(99_999))
        };
        assert_eq!(
            record.disables_after_failure(Some(410), NOW, &policy()),
            None
        );
    }

    #[test]
    fn view_names_manual_disable() {
        let view = record(0, Some(1), None).view(false, &policy());
        assert_eq!(view.state, HealthState::Disabled);
        assert_eq!(view.disabled_reason, Some(DisabledReason::Manual));
    }

    #[test]
    fn breaker_table() {
        let cases = [
            (HealthState::Healthy, true, Admission::Attempt),
            (HealthState::Healthy, false, Admission::Attempt),
            (HealthState::Failing, true, Admission::Probe),
            (HealthState::Failing, false, Admission::Hold),
            (HealthState::Disabled, true, Admission::Refuse),
        ];
        for (state, probe, expected) in cases {
            assert_eq!(admit(state, probe), expected, "{state:?} probe={probe}");
        }
    }
}

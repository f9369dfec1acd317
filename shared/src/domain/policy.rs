//! The delivery policy: after an attempt, deliver no more, retry later, or dead-letter.
//!
//! [`decide`] is the one place that rule lives. It takes the randomness for jitter as an
//! argument so that it stays a pure function with table tests.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Delays before each retry. N entries mean the first attempt plus N retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "retry schedule entry {position} ({entry:?}) is not a duration such as 200ms, 30s or 2h: {reason}"
)]
pub struct ScheduleError {
    position: usize,
    entry: String,
    reason: String,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Self {
        Self { delays }
    }

    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The most attempts a delivery gets: the first plus one per entry.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The longest step; it bounds how long a receiver's `Retry-After` can push a retry.
    pub fn longest_step(&self) -> Duration {
        self.delays.iter().copied().max().unwrap_or_default()
    }
}

impl FromStr for RetrySchedule {
    type Err = ScheduleError;
    fn from_str(value: &str) -> Result<Self, ScheduleError> {
        let delays = value
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(index, entry)| {
                humantime::parse_duration(entry).map_err(|e| ScheduleError {
                    position: index + 1,
                    entry: entry.to_owned(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { delays })
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .delays
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        f.write_str(&entries.join(","))
    }
}

impl<'de> Deserialize<'de> for RetrySchedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for RetrySchedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why an attempt failed, in the bounded vocabulary that metrics and the attempt log use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The receiver answered, but not with 2xx (redirects included: they are not followed).
    HttpError,
    Timeout,
    ConnectError,
    /// The SSRF guard refused the address the host resolved to.
    BlockedAddress,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpError => "http_error",
            Self::Timeout => "timeout",
            Self::ConnectError => "connect_error",
            Self::BlockedAddress => "blocked_address",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub class: ErrorClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What the receiver asked for with `Retry-After`, when it did.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub retry_after: Option<Duration>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered { status: u16 },
    Failed(Failure),
}

/// Why a delivery ended in the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Every attempt of the retry schedule failed.
    RetriesExhausted,
    /// The receiver answered `410 Gone`: it asked never to be called again.
    EndpointGone,
    /// The event matched an endpoint that is disabled; replay after re-enabling it.
    EndpointDisabled,
    /// The endpoint was deleted while the delivery waited for a retry.
    EndpointDeleted,
    /// An AMQP message that is not a valid event; kept so the ATS can see what it sent.
    InvalidMessage,
    /// The broker redelivered the message more times than allowed: it keeps crashing or
    /// stalling workers.
    DeliveryLimit,
    /// The endpoint's format produced more than it may for this event; fix the format,
    /// then replay.
    RenderFailed,
}

impl DeadLetterReason {
    pub const ALL: [Self; 7] = [
        Self::RetriesExhausted,
        Self::EndpointGone,
        Self::EndpointDisabled,
        Self::EndpointDeleted,
        Self::InvalidMessage,
        Self::DeliveryLimit,
        Self::RenderFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries_exhausted",
            Self::EndpointGone => "endpoint_gone",
            Self::EndpointDisabled => "endpoint_disabled",
            Self::EndpointDeleted => "endpoint_deleted",
            Self::InvalidMessage => "invalid_message",
            Self::DeliveryLimit => "delivery_limit",
            Self::RenderFailed => "render_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Done,
    RetryAfter(Duration),
    DeadLetter(DeadLetterReason),
}

/// Jitter spreads retries of a burst over up to this fraction of the step, so a receiver
/// coming back is not hit by every delivery in the same instant.
pub const JITTER_FRACTION: f64 = 0.1;

/// Decides what follows an attempt. `attempts` counts every attempt made so far,
/// including this one; `jitter` is a uniform draw from [0, 1).
pub fn decide(
    schedule: &RetrySchedule,
    attempts: u32,
    outcome: &AttemptOutcome,
    jitter: f64,
) -> Decision {
    let failure = match outcome {
        AttemptOutcome::Delivered { .. } => return Decision::Done,
        AttemptOutcome::Failed(failure) => failure,
    };
    if failure.status == Some(410) {
        return Decision::DeadLetter(DeadLetterReason::EndpointGone);
    }
    let Some(step) = usize::try_from(attempts)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|index| schedule.delays.get(index))
    else {
        return Decision::DeadLetter(DeadLetterReason::RetriesExhausted);
    };
    let jittered = step.mul_f64(1.0 + JITTER_FRACTION * jitter.clamp(0.0, 1.0));
    let delay = match failure.retry_after {
        Some(asked) => jittered.max(asked.min(schedule.longest_step())),
        None => jittered,
    };
    Decision::RetryAfter(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: Option<u16>, retry_after: Option<Duration>) -> AttemptOutcome {
        AttemptOutcome::Failed(Failure {
            class: if status.is_some() {
                ErrorClass::HttpError
            } else {
                ErrorClass::Timeout
            },
            status,
            retry_after,
            message: String::new(),
        })
    }

    #[test]
    fn parses_schedules() {
        let schedule: RetrySchedule = "5s, 30s,2m,200ms".parse().expect("valid");
        assert_eq!(
            schedule.delays(),
            [
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_millis(200)
            ]
        );
        assert_eq!(schedule.max_attempts(), 5);
        assert_eq!(schedule.longest_step(), Duration::from_secs(120));
        let error = "5s,soon".parse::<RetrySchedule>().expect_err("invalid");
        assert!(error.to_string().contains("entry 2"), "{error}");
        assert_eq!(
            "".parse::<RetrySchedule>().expect("empty").max_attempts(),
            1
        );
    }

    #[test]
    fn decision_table() {
        let schedule: RetrySchedule = "1s,10s,100s".parse().expect("valid");
        let s = Duration::from_secs;
        let cases = [
            // (attempts so far, outcome, jitter, decision)
            (
                1,
                AttemptOutcome::Delivered { status: 200 },
                0.0,
                Decision::Done,
            ),
            (
                4,
                AttemptOutcome::Delivered { status: 204 },
                0.0,
                Decision::Done,
            ),
            (1, failed(Some(500), None), 0.0, Decision::RetryAfter(s(1))),
            (2, failed(None, None), 0.0, Decision::RetryAfter(s(10))),
            (
                3,
                failed(Some(503), None),
                0.0,
                Decision::RetryAfter(s(100)),
            ),
            (
                3,
                failed(Some(503), None),
                0.5,
                Decision::RetryAfter(s(105)),
            ),
            (
                4,
                failed(Some(500), None),
                0.0,
                Decision::DeadLetter(DeadLetterReason::RetriesExhausted),
            ),
            (
                9,
                failed(Some(500), None),
                0.0,
                Decision::DeadLetter(DeadLetterReason::RetriesExhausted),
            ),
            (
                1,
                failed(Some(410), None),
                0.0,
                Decision::DeadLetter(DeadLetterReason::EndpointGone),
            ),
            // Retry-After pushes the retry later, but never past the longest step.
            (
                1,
                failed(Some(429), Some(s(50))),
                0.0,
                Decision::RetryAfter(s(50)),
            ),
            (
                1,
                failed(Some(429), Some(s(5000))),
                0.0,
                Decision::RetryAfter(s(100)),
            ),
            (
                2,
                failed(Some(503), Some(s(2))),
                0.0,
                Decision::RetryAfter(s(10)),
            ),
        ];
        for (attempts, outcome, jitter, expected) in cases {
            assert_eq!(
                decide(&schedule, attempts, &outcome, jitter),
                expected,
                "attempt {attempts}: {outcome:?}"
            );
        }
    }

    #[test]
    fn no_retries_when_schedule_is_empty() {
        let schedule = RetrySchedule::new(vec![]);
        assert_eq!(
            decide(&schedule, 1, &failed(Some(500), None), 0.3),
            Decision::DeadLetter(DeadLetterReason::RetriesExhausted)
        );
    }
}

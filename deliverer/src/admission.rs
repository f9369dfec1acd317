//! Whether one delivery is attempted now, put back for later, or refused — decided
//! without IO.
//!
//! The facts a decision needs cost different amounts to learn: the cached health is
//! free, a fresh read of it or a probe lease is a Redis round trip, a slot may mean
//! waiting, and a rate-limit reservation uses up a slot of the endpoint's rate. So
//! [`decide`] asks for one fact at a time ([`Step::Ask`]), in the order that lets the
//! cheap ones rule out the dear ones, and the caller answers each question and asks
//! again. Everything else — the order of the rules, how long a held delivery waits —
//! lives here, with the clock and the jitter passed in.

use hookline_shared::domain::health::{self, HealthState};
use std::time::Duration;

/// What is known about one delivery so far. Facts not asked for yet are `None`.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The endpoint's state as last read.
    pub state: HealthState,
    /// Whether `state` was read from Redis for this delivery (or an attempt to was made)
    /// rather than taken from the replica's cache.
    pub state_is_fresh: bool,
    /// Deferrals in a row before this attempt: a held delivery coming back has some.
    pub deferrals: u32,
    /// Whether this delivery holds the open circuit's probe lease.
    pub probe_taken: Option<bool>,
    /// Whether this delivery may come back soon to take the next probe.
    pub scout: Option<bool>,
    /// This replica's slots for the endpoint.
    pub slot: Option<SlotFact>,
    /// The endpoint's rate limit, if it has one, and what is reserved under it.
    pub rate: RateFact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotFact {
    Taken,
    /// Every slot is busy; if none freed for a while, one frees within `stuck_for` at
    /// the latest (its attempt times out).
    Busy {
        stuck_for: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateFact {
    #[default]
    Unlimited,
    /// Limited; `reserved_at_ms` is a slot reserved when the delivery was put back.
    Limited { reserved_at_ms: Option<i64> },
    /// Limited, and a slot was reserved now: it starts after `wait`.
    Reserved { wait: Duration },
    /// Limited, and the limiter could not be asked.
    Unavailable,
}

/// A question only IO can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// Read the endpoint's health from Redis: the cache says disabled, and a refusal
    /// dead-letters the delivery, so it must not rest on a view that may be stale.
    FreshState,
    /// A held delivery is back behind an open circuit: re-read the health, unless this
    /// replica did for the endpoint a moment ago (a probe elsewhere may have closed it).
    RecheckState,
    /// Try to take the open circuit's probe lease.
    Probe,
    /// Is this hold a scout's (see [`Rules::max_hold`])?
    Scout,
    /// Take one of this replica's slots for the endpoint, waiting a little if all are busy.
    Slot,
    /// Reserve the next slot under the endpoint's rate limit.
    RateSlot,
}

/// Why a delivery is put back without an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldBy {
    /// The endpoint is failing and another delivery holds its probe.
    OpenCircuit,
    /// Every one of this replica's slots for the endpoint is busy.
    BusySlots,
}

impl HeldBy {
    /// The `outcome` label of `hookline_delivery_attempts_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::OpenCircuit => "circuit_open",
            Self::BusySlots => "endpoint_busy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Ask(Question),
    Decided(Decision),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Attempt it now; `probe` when it is the open circuit's one probe.
    Attempt { probe: bool },
    /// Put it back without an attempt, for `wait`.
    Hold { held_by: HeldBy, wait: Duration },
    /// Put it back until its reserved rate-limit slot, `wait` from now.
    AwaitRate { wait: Duration },
    /// The endpoint is disabled: dead-letter it.
    Refuse,
}

/// The settings the decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// A held delivery's first wait; it doubles with each deferral in a row.
    pub defer_delay: Duration,
    /// How long a delivery held behind an open circuit waits unless a probe wakes it.
    /// The probe that closes a circuit wakes everything it held, so only scouts — the
    /// few held deliveries that come back on the doubling timer to take the next probe —
    /// need to come back sooner.
    pub max_hold: Duration,
    /// A reserved rate-limit slot this close is taken now rather than waited for.
    pub rate_slack: Duration,
}

/// A deferred delivery waits `defer_delay` × 2^n, n at most this (64× the delay).
pub const MAX_DEFERRAL_DOUBLINGS: u32 = 6;

/// The next step for a delivery with these `facts` at `now_ms` (wall clock, ms), with a
/// `jitter` sample in [0, 1) that spreads held deliveries' returns.
pub fn decide(facts: &Facts, rules: &Rules, now_ms: i64, jitter: f64) -> Step {
    let state = facts.state;
    if !facts.state_is_fresh {
        if state == HealthState::Disabled {
            return Step::Ask(Question::FreshState);
        }
        if state == HealthState::Failing && facts.deferrals > 0 {
            return Step::Ask(Question::RecheckState);
        }
    }
    let probe_taken = match (state, facts.probe_taken) {
        (HealthState::Failing, None) => return Step::Ask(Question::Probe),
        (_, taken) => taken.unwrap_or(false),
    };
    let probe = match health::admit(state, probe_taken) {
        health::Admission::Attempt => false,
        health::Admission::Probe => true,
        health::Admission::Refuse => return Step::Decided(Decision::Refuse),
        health::Admission::Hold => {
            let Some(scout) = facts.scout else {
                return Step::Ask(Question::Scout);
            };
            let wait = if scout {
                doubling_wait(facts.deferrals, rules, jitter)
            } else {
                rules.max_hold.mul_f64(spread(jitter))
            };
            return Step::Decided(Decision::Hold {
                held_by: HeldBy::OpenCircuit,
                wait,
            });
        }
    };
    match facts.slot {
        None => return Step::Ask(Question::Slot),
        Some(SlotFact::Busy { stuck_for }) => {
            let doubling = doubling_wait(facts.deferrals, rules, jitter);
            // Coming back before a slot can free would only park it again.
            let wait = stuck_for.map_or(doubling, |stuck| doubling.max(stuck));
            return Step::Decided(Decision::Hold {
                held_by: HeldBy::BusySlots,
                wait,
            });
        }
        Some(SlotFact::Taken) => {}
    }
    match facts.rate {
        RateFact::Unlimited => {}
        RateFact::Limited {
            reserved_at_ms: Some(slot),
        } if slot <= now_ms.saturating_add(millis(rules.rate_slack)) => {}
        RateFact::Limited { .. } => return Step::Ask(Question::RateSlot),
        RateFact::Reserved { wait } if wait <= rules.rate_slack => {}
        RateFact::Reserved { wait } => return Step::Decided(Decision::AwaitRate { wait }),
        RateFact::Unavailable => {
            return Step::Decided(Decision::AwaitRate {
                wait: rules.defer_delay,
            });
        }
    }
    Step::Decided(Decision::Attempt { probe })
}

/// `defer_delay` doubled per deferral in a row, spread by the jitter.
fn doubling_wait(deferrals: u32, rules: &Rules, jitter: f64) -> Duration {
    rules
        .defer_delay
        .saturating_mul(1 << deferrals.min(MAX_DEFERRAL_DOUBLINGS))
        .mul_f64(spread(jitter))
}

/// ±25 % around the wait, so a held backlog does not come back all at once.
fn spread(jitter: f64) -> f64 {
    0.75 + jitter.clamp(0.0, 1.0) / 2.0
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Disabled, Failing, Healthy};

    const RULES: Rules = Rules {
        defer_delay: Duration::from_secs(1),
        max_hold: Duration::from_secs(3600),
        rate_slack: Duration::from_millis(20),
    };
    const NOW_MS: i64 = 1_000_000;
    /// The middle of the jitter range: waits are exactly their nominal value.
    const MID: f64 = 0.5;

    fn facts(state: HealthState) -> Facts {
        Facts {
            state,
            ..Facts::default()
        }
    }

    /// Answers each question from `answers` until a decision, returning the questions
    /// asked in order and the decision.
    fn run(mut facts: Facts, answers: &Facts) -> (Vec<Question>, Decision) {
        let mut asked = Vec::new();
        loop {
            match decide(&facts, &RULES, NOW_MS, MID) {
                Step::Ask(question) => {
                    assert!(!asked.contains(&question), "asked {question:?} twice");
                    asked.push(question);
                    match question {
                        Question::FreshState | Question::RecheckState => {
                            facts.state = answers.state;
                            facts.state_is_fresh = true;
                        }
                        Question::Probe => facts.probe_taken = answers.probe_taken,
                        Question::Scout => facts.scout = answers.scout,
                        Question::Slot => facts.slot = answers.slot,
                        Question::RateSlot => facts.rate = answers.rate,
                    }
                }
                Step::Decided(decision) => return (asked, decision),
            }
        }
    }

    fn answers() -> Facts {
        Facts {
            state: Healthy,
            probe_taken: Some(true),
            scout: Some(false),
            slot: Some(SlotFact::Taken),
            rate: RateFact::Reserved {
                wait: Duration::ZERO,
            },
            ..Facts::default()
        }
    }

    #[test]
    fn a_healthy_endpoint_with_a_free_slot_is_attempted_after_asking_only_for_the_slot() {
        let (asked, step) = run(facts(Healthy), &answers());
        assert_eq!(asked, [Question::Slot]);
        assert_eq!(step, Decision::Attempt { probe: false });
    }

    #[test]
    fn a_disabled_endpoint_is_refused_only_after_a_fresh_read_confirms_it() {
        let confirmed = Facts {
            state: Disabled,
            ..answers()
        };
        let (asked, step) = run(facts(Disabled), &confirmed);
        assert_eq!(asked, [Question::FreshState]);
        assert_eq!(step, Decision::Refuse);
    }

    #[test]
    fn an_endpoint_re_enabled_a_moment_ago_is_attempted_though_the_cache_says_disabled() {
        let (asked, step) = run(facts(Disabled), &answers());
        assert_eq!(asked, [Question::FreshState, Question::Slot]);
        assert_eq!(step, Decision::Attempt { probe: false });
    }

    #[test]
    fn a_failing_endpoint_is_attempted_only_by_the_holder_of_its_probe() {
        let (asked, step) = run(facts(Failing), &answers());
        assert_eq!(asked, [Question::Probe, Question::Slot]);
        assert_eq!(step, Decision::Attempt { probe: true });
    }

    #[test]
    fn behind_a_probe_that_is_out_a_delivery_is_held_until_woken_and_asks_for_no_slot() {
        let taken_elsewhere = Facts {
            probe_taken: Some(false),
            ..answers()
        };
        let (asked, step) = run(facts(Failing), &taken_elsewhere);
        assert_eq!(asked, [Question::Probe, Question::Scout]);
        assert_eq!(
            step,
            Decision::Hold {
                held_by: HeldBy::OpenCircuit,
                wait: RULES.max_hold,
            }
        );
    }

    #[test]
    fn a_scout_behind_an_open_circuit_comes_back_on_the_doubling_timer() {
        let scout = Facts {
            probe_taken: Some(false),
            scout: Some(true),
            ..answers()
        };
        let held = Facts {
            deferrals: 3,
            state_is_fresh: true,
            ..facts(Failing)
        };
        let (_, step) = run(held, &scout);
        assert_eq!(
            step,
            Decision::Hold {
                held_by: HeldBy::OpenCircuit,
                wait: Duration::from_secs(8),
            }
        );
    }

    #[test]
    fn a_held_delivery_coming_back_rechecks_the_circuit_before_holding_again() {
        let closed_meanwhile = answers();
        let held = Facts {
            deferrals: 2,
            ..facts(Failing)
        };
        let (asked, step) = run(held, &closed_meanwhile);
        assert_eq!(asked, [Question::RecheckState, Question::Slot]);
        assert_eq!(step, Decision::Attempt { probe: false });
    }

    #[test]
    fn a_new_delivery_to_a_failing_endpoint_does_not_recheck_the_circuit() {
        let (asked, _) = run(facts(Failing), &answers());
        assert!(!asked.contains(&Question::RecheckState), "{asked:?}");
    }

    #[test]
    fn busy_slots_hold_a_delivery_on_a_timer_that_doubles_with_each_deferral() {
        let busy = Facts {
            slot: Some(SlotFact::Busy { stuck_for: None }),
            ..answers()
        };
        for (deferrals, seconds) in [(0, 1), (1, 2), (5, 32), (6, 64), (20, 64)] {
            let held = Facts {
                deferrals,
                ..facts(Healthy)
            };
            assert_eq!(
                run(held, &busy).1,
                Decision::Hold {
                    held_by: HeldBy::BusySlots,
                    wait: Duration::from_secs(seconds),
                },
                "{deferrals} deferrals"
            );
        }
    }

    #[test]
    fn behind_stuck_slots_a_delivery_waits_until_one_can_free() {
        let stuck = |seconds| Facts {
            slot: Some(SlotFact::Busy {
                stuck_for: Some(Duration::from_secs(seconds)),
            }),
            ..answers()
        };
        let wait = |answers: &Facts| match run(facts(Healthy), answers).1 {
            Decision::Hold { wait, .. } => wait,
            step => panic!("{step:?}"),
        };
        assert_eq!(wait(&stuck(300)), Duration::from_secs(300));
        assert_eq!(
            wait(&stuck(0)),
            Duration::from_secs(1),
            "never sooner than the doubling timer"
        );
    }

    #[test]
    fn the_probe_is_not_kept_while_waiting_for_a_busy_slot() {
        let busy = Facts {
            slot: Some(SlotFact::Busy { stuck_for: None }),
            ..answers()
        };
        let (asked, step) = run(facts(Failing), &busy);
        assert_eq!(asked, [Question::Probe, Question::Slot]);
        assert!(matches!(step, Decision::Hold { .. }), "{step:?}");
    }

    #[test]
    fn the_jitter_spreads_held_deliveries_by_a_quarter_either_way() {
        let busy = Facts {
            slot: Some(SlotFact::Busy { stuck_for: None }),
            ..answers()
        };
        let held = Facts {
            slot: busy.slot,
            ..facts(Healthy)
        };
        let wait = |jitter| match decide(&held, &RULES, NOW_MS, jitter) {
            Step::Decided(Decision::Hold { wait, .. }) => wait,
            step => panic!("{step:?}"),
        };
        assert_eq!(wait(0.0), Duration::from_millis(750));
        assert_eq!(wait(1.0), Duration::from_millis(1250));
    }

    #[test]
    fn over_its_rate_limit_a_delivery_waits_for_the_slot_it_reserved() {
        let reserved = |millis| Facts {
            rate: RateFact::Reserved {
                wait: Duration::from_millis(millis),
            },
            ..answers()
        };
        let limited = Facts {
            rate: RateFact::Limited {
                reserved_at_ms: None,
            },
            ..facts(Healthy)
        };
        let (asked, step) = run(limited.clone(), &reserved(500));
        assert_eq!(asked, [Question::Slot, Question::RateSlot]);
        assert_eq!(
            step,
            Decision::AwaitRate {
                wait: Duration::from_millis(500)
            }
        );
        assert_eq!(
            run(limited, &reserved(20)).1,
            Decision::Attempt { probe: false },
            "a slot within the slack is taken now"
        );
    }

    #[test]
    fn a_delivery_back_for_its_reserved_rate_slot_does_not_reserve_another() {
        let back = Facts {
            rate: RateFact::Limited {
                reserved_at_ms: Some(NOW_MS + 10),
            },
            ..facts(Healthy)
        };
        let (asked, step) = run(back, &answers());
        assert_eq!(asked, [Question::Slot]);
        assert_eq!(step, Decision::Attempt { probe: false });
        let early = Facts {
            rate: RateFact::Limited {
                reserved_at_ms: Some(NOW_MS + 5_000),
            },
            ..facts(Healthy)
        };
        assert!(run(early, &answers()).0.contains(&Question::RateSlot));
    }

    #[test]
    fn without_the_rate_limiter_a_delivery_waits_a_defer_delay() {
        let unavailable = Facts {
            rate: RateFact::Unavailable,
            ..answers()
        };
        let limited = Facts {
            rate: RateFact::Limited {
                reserved_at_ms: None,
            },
            ..facts(Healthy)
        };
        assert_eq!(
            run(limited, &unavailable).1,
            Decision::AwaitRate {
                wait: RULES.defer_delay
            }
        );
    }
}

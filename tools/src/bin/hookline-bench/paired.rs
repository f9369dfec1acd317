//! Paired runs: a measured scenario interleaved with runs of what it is compared with.
//! This machine's speed drifts by ±15 % within minutes — more than some effects measured
//! — so a ratio of two runs far apart in time measures the drift. Each measured run is
//! compared with the reference runs next to it, and the report takes the median of those
//! ratios.

/// How measured (M) and reference (R) runs are interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// R M R M … R: each measured run over the mean of the reference runs either side.
    Bracketed,
    /// M R, R M, M R …: each measured run over the reference run beside it, which of the
    /// two goes first alternating, so a drift in one direction favours neither side.
    Alternating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Measured,
    Reference,
}

/// One run of the schedule: its side, the round it belongs to (from 0), and whether it
/// is the last run of that round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub side: Side,
    pub round: usize,
    pub closes_round: bool,
}

/// The runs of `rounds` rounds, in the order they are made. `Bracketed` opens with a
/// reference run that belongs to no round (`round` 0, closing nothing), so with no
/// rounds it is that one run.
pub fn schedule(order: Order, rounds: usize) -> Vec<Step> {
    let step = |side, round, closes_round| Step {
        side,
        round,
        closes_round,
    };
    let mut steps = Vec::new();
    match order {
        Order::Bracketed => {
            steps.push(step(Side::Reference, 0, false));
            for round in 0..rounds {
                steps.push(step(Side::Measured, round, false));
                steps.push(step(Side::Reference, round, true));
            }
        }
        Order::Alternating => {
            for round in 0..rounds {
                let (first, second) = if round % 2 == 0 {
                    (Side::Measured, Side::Reference)
                } else {
                    (Side::Reference, Side::Measured)
                };
                steps.push(step(first, round, false));
                steps.push(step(second, round, true));
            }
        }
    }
    steps
}

/// Each measured rate over the reference rates next to it, in the order of `schedule`;
/// none where either side was not run.
pub fn ratios(order: Order, measured: &[f64], reference: &[f64]) -> Vec<f64> {
    match order {
        Order::Bracketed => measured
            .iter()
            .zip(reference.windows(2))
            .map(|(rate, around)| rate / ((around[0] + around[1]) / 2.0))
            .collect(),
        Order::Alternating => measured
            .iter()
            .zip(reference)
            .map(|(rate, beside)| rate / beside)
            .collect(),
    }
}

/// The index of the run whose ratio is the median, or of the last run when there are
/// no ratios: the run that stands for the scenario in the report.
pub fn representative(ratios: &[f64], runs: usize) -> Option<usize> {
    if ratios.is_empty() {
        return runs.checked_sub(1);
    }
    let wanted = crate::report::median(ratios);
    ratios.iter().position(|ratio| *ratio == wanted)
}

/// The index of the run with the median rate (the lower middle one for an even count).
pub fn median_rate(rates: &[f64]) -> Option<usize> {
    let mut order: Vec<usize> = (0..rates.len()).collect();
    order.sort_by(|a, b| rates[*a].total_cmp(&rates[*b]));
    order.get(rates.len().checked_sub(1)? / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sides(steps: &[Step]) -> String {
        steps
            .iter()
            .map(|step| match step.side {
                Side::Measured => 'M',
                Side::Reference => 'R',
            })
            .collect()
    }

    #[test]
    fn bracketed_runs_open_and_close_with_a_reference() {
        for (rounds, expected) in [(0, "R"), (1, "RMR"), (3, "RMRMRMR")] {
            assert_eq!(sides(&schedule(Order::Bracketed, rounds)), expected);
        }
    }

    #[test]
    fn alternating_pairs_swap_which_side_goes_first() {
        for (rounds, expected) in [(0, ""), (1, "MR"), (4, "MRRMMRRM")] {
            assert_eq!(sides(&schedule(Order::Alternating, rounds)), expected);
        }
    }

    #[test]
    fn each_round_is_closed_once_by_its_last_run() {
        for order in [Order::Bracketed, Order::Alternating] {
            let closing: Vec<usize> = schedule(order, 3)
                .iter()
                .filter(|step| step.closes_round)
                .map(|step| step.round)
                .collect();
            assert_eq!(closing, [0, 1, 2], "{order:?}");
        }
    }

    /// The order, the measured rates, the reference rates, and the ratios expected.
    type Case<'a> = (Order, &'a [f64], &'a [f64], &'a [f64]);

    #[test]
    fn a_measured_run_is_divided_by_the_references_next_to_it() {
        let cases: &[Case] = &[
            (
                Order::Bracketed,
                &[50.0, 60.0],
                &[100.0, 100.0, 140.0],
                &[0.5, 0.5],
            ),
            (Order::Bracketed, &[50.0], &[], &[]),
            (Order::Bracketed, &[], &[100.0], &[]),
            (
                Order::Alternating,
                &[90.0, 40.0],
                &[100.0, 80.0],
                &[0.9, 0.5],
            ),
        ];
        for (order, measured, reference, expected) in cases {
            assert_eq!(ratios(*order, measured, reference), *expected, "{order:?}");
        }
    }

    #[test]
    fn the_representative_run_has_the_median_ratio_or_is_the_last() {
        assert_eq!(representative(&[0.9, 0.5, 0.7], 3), Some(2));
        assert_eq!(representative(&[], 3), Some(2));
        assert_eq!(representative(&[], 0), None);
    }

    #[test]
    fn the_median_rate_is_the_lower_middle_one() {
        assert_eq!(median_rate(&[30.0, 10.0, 20.0]), Some(2));
        assert_eq!(median_rate(&[40.0, 10.0, 30.0, 20.0]), Some(3));
        assert_eq!(median_rate(&[]), None);
    }
}

//! The noisy neighbour's figures from what its two receivers kept: which quiet events
//! count, how long each took, and how fast the backlog drained. No IO, so the rules of
//! what counts are tested here rather than trusted to a run.

/// One quiet event sent while the backlog drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietEvent {
    /// Send to receipt, µs, same clock.
    pub latency_us: u64,
    /// The backlog's events received at or before the moment this one arrived: near the
    /// backlog's size, it waited behind the backlog.
    pub backlog_before: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    /// From the start of the drain to the backlog's last arrival.
    pub seconds: f64,
    /// The backlog's events over `seconds`.
    pub events_per_s: f64,
    /// The quiet events sent before the backlog's last arrival, in the order given.
    pub quiet: Vec<QuietEvent>,
}

/// `ready_us` is when the deliverer was seen ready (readiness is polled, so it may have
/// delivered a little earlier): the drain starts then or at the backlog's first arrival,
/// whichever is earlier. `backlog` holds the arrival time of each backlog event, in any
/// order; `quiet` the (sent, received) times of the quiet tenant's events. All µs since
/// the epoch. `None` when no backlog event arrived.
pub fn summarise(ready_us: u64, backlog: &[u64], quiet: &[(u64, u64)]) -> Option<Drain> {
    let mut backlog = backlog.to_vec();
    backlog.sort_unstable();
    let (&first, &last) = (backlog.first()?, backlog.last()?);
    let started = ready_us.min(first);
    // At least 1 µs: a backlog of one event arriving at the start is not infinitely fast.
    let seconds = (last - started).max(1) as f64 / 1e6;
    let quiet = quiet
        .iter()
        .filter(|(sent, _)| *sent < last)
        .map(|&(sent, received)| QuietEvent {
            latency_us: received.saturating_sub(sent),
            backlog_before: backlog.partition_point(|&arrival| arrival <= received),
        })
        .collect();
    Some(Drain {
        seconds,
        events_per_s: backlog.len() as f64 / seconds,
        quiet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn the_drain_runs_from_the_deliverer_ready_to_the_last_backlog_arrival() {
        let drain = summarise(0, &[2 * S, S, 4 * S, 3 * S], &[]).expect("a backlog");
        assert_eq!((drain.seconds, drain.events_per_s), (4.0, 1.0));
    }

    #[test]
    fn a_delivery_before_readiness_was_seen_starts_the_drain_earlier() {
        let drain = summarise(3 * S, &[S, 2 * S], &[]).expect("a backlog");
        assert_eq!(drain.events_per_s, 2.0);
    }

    #[test]
    fn only_quiet_events_sent_before_the_last_backlog_arrival_count() {
        let quiet = [
            (S, S + 10),
            (4 * S - 1, 4 * S + 5),
            (4 * S, 4 * S + 1),
            (5 * S, 5 * S),
        ];
        let drain = summarise(0, &[S, 2 * S, 4 * S], &quiet).expect("a backlog");
        let latencies: Vec<u64> = drain.quiet.iter().map(|event| event.latency_us).collect();
        assert_eq!(latencies, [10, 6]);
    }

    #[test]
    fn a_quiet_event_counts_the_backlog_received_at_or_before_its_arrival() {
        let quiet = [(0, S - 1), (0, S), (0, 3 * S - 1)];
        let drain = summarise(0, &[S, 2 * S, 3 * S, 4 * S], &quiet).expect("a backlog");
        let before: Vec<usize> = drain.quiet.iter().map(|e| e.backlog_before).collect();
        assert_eq!(before, [0, 1, 2]);
    }

    #[test]
    fn no_backlog_arrival_is_no_drain() {
        assert_eq!(summarise(0, &[], &[(0, 1)]), None);
    }
}

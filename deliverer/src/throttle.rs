//! Rate-limiting of per-endpoint side work inside one replica.

use hookline_shared::domain::event::TenantId;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use std::time::Duration;

/// Endpoints remembered at once; beyond it the least recently marked are forgotten,
/// which only lets them act again before their interval is up.
const MAX_MARKS: u64 = 100_000;

/// Lets something happen at most once per interval per endpoint in this replica: writing
/// a healthy endpoint's success (enough to keep `last_success_at` fresh without a Redis
/// write per delivery), or asking for an open circuit's probe lease.
#[derive(Debug)]
pub struct Throttle {
    /// A mark per endpoint that acted, living one interval.
    marks: Cache<(TenantId, String), ()>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            marks: Cache::builder()
                .max_capacity(MAX_MARKS)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_live(interval)
                .build(),
        }
    }

    /// True (and marks it done) when the interval since the last time has passed. Of
    /// callers racing on one endpoint, exactly one gets true.
    pub fn due(&self, tenant: &TenantId, endpoint_id: &str) -> bool {
        self.marks
            .entry((tenant.clone(), endpoint_id.to_owned()))
            .or_insert_with(|| ())
            .is_fresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("valid")
    }

    #[test]
    fn an_endpoint_is_due_once_per_interval() {
        let throttle = Throttle::new(Duration::from_millis(200));
        let acme = tenant("acme");
        assert!(throttle.due(&acme, "ep_1"), "first time");
        assert!(!throttle.due(&acme, "ep_1"), "within the interval");
        std::thread::sleep(Duration::from_millis(300));
        assert!(throttle.due(&acme, "ep_1"), "after the interval");
        assert!(!throttle.due(&acme, "ep_1"), "within the next interval");
    }

    #[test]
    fn endpoints_are_throttled_apart() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let acme = tenant("acme");
        assert!(throttle.due(&acme, "ep_1"));
        assert!(throttle.due(&acme, "ep_2"), "another endpoint");
        assert!(throttle.due(&tenant("globex"), "ep_1"), "another tenant's");
        for n in 0..10_000 {
            assert!(throttle.due(&acme, &format!("other_{n}")));
        }
        assert!(!throttle.due(&acme, "ep_1"), "many others do not reset it");
    }

    #[test]
    fn a_zero_interval_never_holds_back() {
        let throttle = Throttle::new(Duration::ZERO);
        let acme = tenant("acme");
        assert!(throttle.due(&acme, "ep_1"));
        assert!(throttle.due(&acme, "ep_1"));
    }

    #[test]
    fn of_racing_callers_exactly_one_is_due() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let acme = tenant("acme");
        let start = std::sync::Barrier::new(8);
        let due = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        throttle.due(&acme, "ep_1")
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().expect("no panic"))
                .filter(|&due| due)
                .count()
        });
        assert_eq!(due, 1);
    }
}

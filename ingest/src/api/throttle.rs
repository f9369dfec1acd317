//! Limits on abuse of the API that authentication alone does not stop: guessing tokens,
//! and making Hookline send signed requests at a target through test deliveries.
//!
//! Failed authentication is counted per client address in this process: the attacker's
//! requests never reach Redis, and with N replicas behind a load balancer a client gets
//! at most N times the burst. Test deliveries are counted in Redis
//! (`store::rate::RateLimiter::admit`), per endpoint and per tenant, shared by every
//! replica, since each one costs an outbound request.

use hookline_shared::domain::quota::{self, Quota};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Addresses tracked at once; beyond it the least recently used are forgotten, which
/// only gives them their burst back.
const TRACKED_ADDRESSES: u64 = 100_000;

/// Failed authentications per client address, under a [`Quota`].
#[derive(Debug)]
pub struct AuthFailures {
    quota: Quota,
    epoch: Instant,
    /// Client key → theoretical arrival time (µs since `epoch`).
    failures: moka::sync::Cache<IpAddr, u64>,
}

impl AuthFailures {
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            epoch: Instant::now(),
            // A TAT is never more than the tolerance ahead of when it was written; after
            // that the entry says no more than a missing one.
            failures: moka::sync::Cache::builder()
                .max_capacity(TRACKED_ADDRESSES)
                .time_to_live(Duration::from_micros(quota.tolerance_us()))
                .build(),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// How long the client must wait before it may try again, if it used up its quota
    /// of failures.
    pub fn refused(&self, client: IpAddr) -> Option<Duration> {
        quota::exhausted(
            self.quota,
            self.failures.get(&client_key(client)),
            self.now_us(),
        )
    }

    /// Counts one failed authentication of the client.
    pub fn record(&self, client: IpAddr) {
        let now = self.now_us();
        let quota = self.quota;
        self.failures
            .entry(client_key(client))
            .and_compute_with(|entry| {
                match quota::admit(quota, entry.map(|e| e.into_value()), now, 1) {
                    Ok(tat) => moka::ops::compute::Op::Put(tat),
                    Err(_) => moka::ops::compute::Op::Nop,
                }
            });
    }
}

/// The unit an address is counted in: an IPv4 address, or the /64 an IPv6 address is in
/// (one host usually has a whole /64 to pick addresses from).
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last
/// address in `X-Forwarded-For` that is not one (each proxy appends the address it was
/// called from, so entries left of the first untrusted one may be forged by the client).
pub fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trusted_proxies: &[IpNet],
) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(&ip) {
                    break;
                }
            }
            // A malformed entry ends what can be believed; the last proxy's word stands.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_client_is_refused_after_its_burst_of_failures_and_others_are_not() {
        let failures = AuthFailures::new(Quota {
            per_minute: 1,
            burst: 3,
        });
        let attacker = ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(failures.refused(attacker), None);
            failures.record(attacker);
        }
        let wait = failures.refused(attacker).expect("refused after the burst");
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        assert_eq!(failures.refused(ip("203.0.113.8")), None);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let failures = AuthFailures::new(Quota {
            per_minute: 1,
            burst: 1,
        });
        failures.record(ip("2001:db8:1:2::1"));
        assert!(failures.refused(ip("2001:db8:1:2:ffff::9")).is_some());
        assert!(failures.refused(ip("2001:db8:1:3::1")).is_none());
        failures.record(ip("::ffff:198.51.100.1"));
        assert!(
            failures.refused(ip("198.51.100.1")).is_some(),
            "v4-mapped is v4"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let cases = [
            // (peer, X-Forwarded-For, client)
            ("198.51.100.1", Some("203.0.113.9"), "198.51.100.1"),
            ("10.0.0.2", Some("203.0.113.9"), "203.0.113.9"),
            ("10.0.0.2", Some("1.2.3.4, 203.0.113.9"), "203.0.113.9"),
            (
                "10.0.0.2",
                Some("1.2.3.4, 203.0.113.9, 10.0.0.3"),
                "203.0.113.9",
            ),
            ("10.0.0.2", Some("garbage, 203.0.113.9"), "203.0.113.9"),
            ("10.0.0.2", Some("203.0.113.9, garbage"), "10.0.0.2"),
            ("10.0.0.2", None, "10.0.0.2"),
        ];
        for (peer, forwarded, client) in cases {
            assert_eq!(
                client_address(ip(peer), forwarded, &proxies),
                ip(client),
                "{peer} {forwarded:?}"
            );
        }
    }
}

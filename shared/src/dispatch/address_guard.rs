//! The SSRF guard: webhooks go to the public internet only, unless configured otherwise.
//!
//! The guard is the HTTP client's DNS resolver, so the address that was checked is the
//! address that is connected to — there is no window for DNS rebinding between a check
//! and the connect — and it runs again on every attempt. URLs with a literal IP never
//! reach a resolver, so [`AddressPolicy::check_url`] covers them before sending.
//!
//! What a refusal says is seen by tenants (test deliveries, the attempt log, event state,
//! dead letters, API errors), so it never names the addresses a host name resolved to:
//! that would let a tenant map what internal names point at. Operators get the addresses
//! in the log line written where the refusal is handled.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<IpNet>,
}

/// Why a delivery target was refused. `Display` is the tenant's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockedAddress {
    /// The URL names a literal address the policy refuses; the tenant wrote it.
    #[error("{0} is not an allowed address")]
    Literal(IpAddr),
    /// Every address the name resolved to is refused. `addresses` are for the operator's
    /// log only.
    #[error("{host} resolves only to addresses that are not allowed")]
    Resolved {
        host: String,
        addresses: Vec<IpAddr>,
    },
    #[error("plain http is not allowed (delivery.require_https is set)")]
    PlainHttp,
    /// The URL names the delivery proxy's host, which the resolver lets through
    /// unchecked so that the proxy itself can be reached.
    #[error("{host} is not an allowed host")]
    ProxyHost { host: String },
}

/// A target that could not be resolved to an address the policy permits.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Blocked(#[from] BlockedAddress),
    #[error("could not resolve {host}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The checked address could not be put in the URL in place of the name.
    #[error("could not address {host} by its checked address")]
    NotPinnable { host: String },
}

impl AddressPolicy {
    pub fn new(allow_private: bool, allowed: Vec<IpNet>) -> Self {
        Self {
            allow_private,
            allowed,
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Refuses a URL whose host is a literal address the policy does not permit.
    pub fn check_url(&self, url: &url::Url) -> Result<(), BlockedAddress> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(BlockedAddress::Literal(ip))
        }
    }

    /// Resolves `host` with the system resolver and keeps the addresses the policy
    /// permits, in the resolver's order.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, GuardError> {
        // A URI's IPv6 host keeps its brackets; the system resolver wants them off.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let resolved: Vec<IpAddr> = tokio::net::lookup_host((bare, 0))
            .await
            .map_err(|source| GuardError::Lookup {
                host: host.to_owned(),
                source,
            })?
            .map(|addr| addr.ip())
            .collect();
        let permitted: Vec<IpAddr> = resolved
            .iter()
            .copied()
            .filter(|ip| self.permits(*ip))
            .collect();
        if permitted.is_empty() {
            return Err(GuardError::Blocked(BlockedAddress::Resolved {
                host: host.to_owned(),
                addresses: resolved,
            }));
        }
        Ok(permitted)
    }
}

/// True for globally routable unicast addresses; false for everything an attacker could
/// use to reach the inside: loopback, RFC 1918, link-local (cloud metadata at
/// 169.254.169.254), CGNAT, unspecified, broadcast, multicast, documentation and
/// benchmarking ranges, IPv6 ULA and link-local, and IPv4 embedded in IPv6 forms.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18.0.0/15
        || a >= 240) // reserved
}

/// IPv4 carried inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64
/// (64:ff9b::/96) and 6to4 (2002::/16).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// The HTTP client's resolver: resolves with the system resolver, keeps the permitted
/// addresses, and fails with [`BlockedAddress`] when none is left.
///
/// The client resolves the delivery proxy's host through it too; that one name (the
/// operator's, not a tenant's) is resolved unchecked, and
/// [`Dispatcher::check_url`](super::Dispatcher::check_url) refuses endpoint URLs that
/// name it.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    proxy_host: Option<Arc<str>>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>, proxy_host: Option<Arc<str>>) -> Self {
        Self { policy, proxy_host }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let is_proxy = self.proxy_host.as_deref() == Some(name.as_str());
        Box::pin(async move {
            let host = name.as_str();
            let permitted = if is_proxy {
                AddressPolicy::new(true, Vec::new()).resolve(host).await
            } else {
                policy.resolve(host).await
            };
            match permitted {
                Ok(ips) => Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)))
                    as reqwest::dns::Addrs),
                // The blocked refusal stays the error itself, not a source of it, so the
                // dispatcher finds it in reqwest's error chain.
                Err(GuardError::Blocked(blocked)) => Err(Box::new(blocked) as _),
                Err(other) => Err(Box::new(other) as _),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases = [
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("2606:4700:4700::1111", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.1", true),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("100.127.255.254", false),
            ("100.128.0.1", true),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("198.18.0.1", false),
            ("::1", false),
            ("::", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::a00:1", false),
            ("2002:a00:1::", false),
            ("2002:808:808::", true),
        ];
        for (ip, public) in cases {
            let ip: IpAddr = ip.parse().expect("valid ip");
            assert_eq!(is_public(ip), public, "{ip}");
        }
    }

    #[test]
    fn policy_allows_configured_networks() {
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let ten: IpAddr = "10.20.1.1".parse().expect("ip");
        assert!(!AddressPolicy::new(false, vec![]).permits(loopback));
        assert!(AddressPolicy::new(true, vec![]).permits(loopback));
        let policy = AddressPolicy::new(false, vec!["10.20.0.0/16".parse().expect("cidr")]);
        assert!(policy.permits(ten));
        assert!(!policy.permits(loopback));
        let url = url::Url::parse("http://127.0.0.1:8080/hook").expect("url");
        assert!(policy.check_url(&url).is_err());
        let url = url::Url::parse("http://[::ffff:7f00:1]/hook").expect("url");
        assert!(policy.check_url(&url).is_err());
        let url = url::Url::parse("http://example.com/hook").expect("url");
        assert!(
            policy.check_url(&url).is_ok(),
            "names are checked by the resolver"
        );
    }

    #[test]
    fn refusals_name_no_resolved_address() {
        let internal: Vec<IpAddr> = ["10.0.0.7", "fd00::7", "169.254.169.254"]
            .iter()
            .map(|ip| ip.parse().expect("ip"))
            .collect();
        let refusals = [
            BlockedAddress::Resolved {
                host: "db.internal".into(),
                addresses: internal.clone(),
            },
            BlockedAddress::Resolved {
                host: "metadata.google.internal".into(),
                addresses: internal[2..].to_vec(),
            },
            BlockedAddress::ProxyHost {
                host: "proxy.internal".into(),
            },
            BlockedAddress::PlainHttp,
        ];
        for refusal in refusals {
            let shown = refusal.to_string();
            for ip in &internal {
                assert!(!shown.contains(&ip.to_string()), "{shown}");
            }
        }
        let literal: IpAddr = "10.0.0.7".parse().expect("ip");
        assert_eq!(
            BlockedAddress::Literal(literal).to_string(),
            "10.0.0.7 is not an allowed address",
            "the tenant wrote this one"
        );
    }

    #[tokio::test]
    async fn a_name_on_loopback_is_refused_and_the_addresses_kept_for_the_log() {
        let refused = AddressPolicy::new(false, vec![])
            .resolve("localhost")
            .await
            .expect_err("loopback");
        let GuardError::Blocked(BlockedAddress::Resolved { host, addresses }) = &refused else {
            panic!("not a refusal: {refused:?}");
        };
        assert_eq!(host, "localhost");
        assert!(addresses.iter().all(|ip| ip.is_loopback()), "{addresses:?}");
        assert!(!refused.to_string().contains("127.0.0.1"), "{refused}");
        let permitted = AddressPolicy::new(true, vec![])
            .resolve("localhost")
            .await
            .expect("allowed");
        assert!(!permitted.is_empty());
    }
}

//! The SSRF guard: webhooks go to the public internet only, unless configured otherwise.
//!
//! The guard is the HTTP client's DNS resolver, so the address that was checked is the
//! address that is connected to — there is no window for DNS rebinding between a check
//! and the connect — and it runs again on every attempt. URLs with a literal IP never
//! reach a resolver, so [`AddressPolicy::check_url`] covers them before sending.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<IpNet>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} resolves only to addresses that are not allowed ({addresses})")]
pub struct BlockedAddress {
    pub host: String,
    pub addresses: String,
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
            Err(BlockedAddress {
                host: ip.to_string(),
                addresses: ip.to_string(),
            })
        }
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
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| policy.permits(addr.ip()))
                .collect();
            if permitted.is_empty() {
                let addresses = resolved
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(BlockedAddress { host, addresses })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
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
}

//! The delivery proxy (`delivery.proxy`): the only way deliveries go through a proxy.
//! The process's `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` (either case) are never used,
//! since a proxy resolves names itself and would take the address guard out of the path.
//!
//! Each kind of proxy is used so that the address guard still decides where a delivery
//! goes (see [`route`]):
//! - `socks5://` — the client resolves the target through the guard and asks the proxy
//!   for the checked address; TLS is verified for the URL's name. Every delivery, http or
//!   https, goes to an address the guard checked.
//! - `http://`, `https://` — a plain-http delivery is sent to the checked address with
//!   the URL's `Host`. An https delivery is tunnelled with `CONNECT name:port`, because
//!   the client verifies the certificate for the name it connects to: the guard resolves
//!   and checks the name first, but the proxy resolves it again.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A parsed `delivery.proxy`. Its URL may carry credentials: `Debug` shows the kind and
/// host only, and parse errors never repeat the value.
#[derive(Clone)]
pub struct DeliveryProxy {
    url: url::Url,
    kind: ProxyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `socks5://`: the client resolves, the proxy connects to the address it is given.
    Socks5,
    /// `http://` or `https://`: forwards plain http, tunnels https with CONNECT.
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidProxy {
    #[error("is not a URL")]
    NotAUrl,
    #[error(
        "{0}:// lets the proxy resolve names, which takes the address guard out of the path; use socks5:// (resolved by Hookline) or http://"
    )]
    ResolvesRemotely(String),
    /// The scheme is not repeated: in a value like `user:password@host` it is the user.
    #[error("has a scheme that is not supported; use http://, https:// or socks5://")]
    UnsupportedScheme,
    #[error("has no host")]
    NoHost,
    #[error("must not have a path, query or fragment")]
    HasPath,
}

impl DeliveryProxy {
    /// Checks `delivery.proxy` at start, the same in both binaries; the error names the
    /// setting and never repeats the URL's credentials.
    pub fn validate_setting(
        raw: &secrecy::SecretString,
    ) -> Result<(), crate::settings::SettingsError> {
        use secrecy::ExposeSecret;
        Self::from_setting(raw.expose_secret())
            .map(|_| ())
            .map_err(|error| {
                crate::settings::SettingsError::invalid(
                    "delivery.proxy",
                    "HOOKLINE__DELIVERY__PROXY",
                    error.to_string(),
                )
            })
    }

    /// The setting's value; empty means no proxy.
    pub fn from_setting(raw: &str) -> Result<Option<Self>, InvalidProxy> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let url = url::Url::parse(raw).map_err(|_| InvalidProxy::NotAUrl)?;
        let kind = match url.scheme() {
            "http" | "https" => ProxyKind::Http,
            "socks5" => ProxyKind::Socks5,
            scheme @ ("socks5h" | "socks4a") => {
                return Err(InvalidProxy::ResolvesRemotely(scheme.to_owned()));
            }
            _ => return Err(InvalidProxy::UnsupportedScheme),
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(InvalidProxy::NoHost);
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(InvalidProxy::HasPath);
        }
        Ok(Some(Self { url, kind }))
    }

    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The proxy's host when it is a name (a literal address needs no lookup).
    pub fn host_name(&self) -> Option<Arc<str>> {
        match self.url.host() {
            Some(url::Host::Domain(name)) => Some(Arc::from(name)),
            _ => None,
        }
    }

    /// The client's proxy: every delivery, with no exceptions read from `NO_PROXY`.
    pub(super) fn client_proxy(&self) -> Result<reqwest::Proxy, InvalidProxy> {
        reqwest::Proxy::all(self.url.clone())
            .map(|proxy| proxy.no_proxy(None))
            // reqwest's error would repeat the URL and its credentials.
            .map_err(|_| InvalidProxy::NotAUrl)
    }
}

impl fmt::Debug for DeliveryProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryProxy")
            .field("kind", &self.kind)
            .field("host", &self.url.host_str())
            .field("port", &self.url.port_or_known_default())
            .finish_non_exhaustive()
    }
}

/// How one delivery's target is checked, given the proxy in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The client's resolver checks the address it connects to (directly, or for a SOCKS5
    /// proxy the address the proxy is asked for); a literal address was checked by
    /// `check_url`.
    Client,
    /// Resolve and check here, then send to the checked address with the URL's `Host`:
    /// the proxy connects where the guard said.
    PinToChecked,
    /// Resolve and check here, then let the proxy tunnel to the name: it resolves again.
    CheckThenTunnel,
}

pub fn route(proxy: Option<ProxyKind>, url: &url::Url) -> Route {
    let named = matches!(url.host(), Some(url::Host::Domain(_)));
    match proxy {
        Some(ProxyKind::Http) if named && url.scheme() == "http" => Route::PinToChecked,
        Some(ProxyKind::Http) if named => Route::CheckThenTunnel,
        None | Some(ProxyKind::Socks5 | ProxyKind::Http) => Route::Client,
    }
}

/// `url` with its host replaced by `ip`, and the `Host` header the receiver expects.
pub fn pin(url: &url::Url, ip: IpAddr) -> Option<(url::Url, String)> {
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str()?),
        None => url.host_str()?.to_owned(),
    };
    let mut pinned = url.clone();
    pinned.set_ip_host(ip).ok()?;
    Some((pinned, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).expect("url")
    }

    #[test]
    fn setting_table() {
        let cases: [(&str, Result<Option<ProxyKind>, InvalidProxy>); 13] = [
            ("", Ok(None)),
            ("  ", Ok(None)),
            ("http://proxy.internal:3128", Ok(Some(ProxyKind::Http))),
            ("https://u:p@proxy.internal", Ok(Some(ProxyKind::Http))),
            ("socks5://10.0.0.5:1080", Ok(Some(ProxyKind::Socks5))),
            (
                "socks5h://proxy:1080",
                Err(InvalidProxy::ResolvesRemotely("socks5h".into())),
            ),
            (
                "socks4a://proxy:1080",
                Err(InvalidProxy::ResolvesRemotely("socks4a".into())),
            ),
            ("ftp://proxy", Err(InvalidProxy::UnsupportedScheme)),
            ("proxy.internal:3128", Err(InvalidProxy::UnsupportedScheme)),
            ("/just/a/path", Err(InvalidProxy::NotAUrl)),
            ("http://proxy/path", Err(InvalidProxy::HasPath)),
            ("http://proxy/?x=1", Err(InvalidProxy::HasPath)),
            ("socks5://", Err(InvalidProxy::NoHost)),
        ];
        for (raw, expected) in cases {
            let parsed = DeliveryProxy::from_setting(raw).map(|p| p.map(|p| p.kind()));
            assert_eq!(parsed, expected, "{raw:?}");
        }
    }

    #[test]
    fn credentials_never_show() {
        let raw = "http://hookline:hunter2@proxy.internal:3128";
        let proxy = DeliveryProxy::from_setting(raw)
            .expect("valid")
            .expect("set");
        let shown = format!("{proxy:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hookline:"),
            "{shown}"
        );
        for bad in [
            "socks5h://u:hunter2@p",
            "gopher://u:hunter2@p",
            "http://u:hunter2@p/x",
            "hunter2:hunter2@p:3128",
        ] {
            let error = DeliveryProxy::from_setting(bad).expect_err(bad).to_string();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn route_table() {
        let http = Some(ProxyKind::Http);
        let socks = Some(ProxyKind::Socks5);
        let cases = [
            (None, "http://hooks.example.com/x", Route::Client),
            (None, "https://hooks.example.com/x", Route::Client),
            (socks, "http://hooks.example.com/x", Route::Client),
            (socks, "https://hooks.example.com/x", Route::Client),
            (http, "http://hooks.example.com/x", Route::PinToChecked),
            (http, "https://hooks.example.com/x", Route::CheckThenTunnel),
            (http, "http://203.0.113.9/x", Route::Client),
            (http, "https://[2001:db8::1]/x", Route::Client),
        ];
        for (proxy, target, expected) in cases {
            assert_eq!(route(proxy, &url(target)), expected, "{proxy:?} {target}");
        }
    }

    #[test]
    fn pin_table() {
        let v4: IpAddr = "203.0.113.9".parse().expect("ip");
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        let cases = [
            (
                "http://hooks.example.com/a?b=1",
                v4,
                "http://203.0.113.9/a?b=1",
                "hooks.example.com",
            ),
            (
                "http://hooks.example.com:8080/a",
                v4,
                "http://203.0.113.9:8080/a",
                "hooks.example.com:8080",
            ),
            (
                "http://hooks.example.com:80/a",
                v6,
                "http://[2001:db8::1]/a",
                "hooks.example.com",
            ),
        ];
        for (target, ip, expected_url, expected_host) in cases {
            let (pinned, host) = pin(&url(target), ip).expect("pinned");
            assert_eq!(pinned.as_str(), expected_url, "{target}");
            assert_eq!(host, expected_host, "{target}");
        }
    }
}

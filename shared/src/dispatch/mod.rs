//! One HTTP attempt: sign, POST, classify the answer. Nothing here decides what happens
//! next; that is [`crate::domain::policy::decide`]'s job. Shared because ingest makes
//! test deliveries with the same client, signing and SSRF guard as the deliverer.

pub mod address_guard;
pub mod proxy;

use crate::domain::endpoint::Endpoint;
use crate::domain::policy::{AttemptOutcome, ErrorClass, Failure};
use crate::domain::signing::signature_header;
use crate::domain::trace::TraceParent;
use crate::telemetry::error_chain;
use address_guard::{AddressPolicy, BlockedAddress, GuardError, GuardedResolver};
use bytes::Bytes;
use proxy::{DeliveryProxy, InvalidProxy, Route};
use reqwest::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use time::OffsetDateTime;

/// A body ready to send: rendered once, shared by every endpoint of that format.
#[derive(Debug, Clone)]
pub struct Payload {
    pub content_type: &'static str,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub duration: Duration,
    /// The start of the receiver's answer, lossy UTF-8, at most the configured bytes.
    pub response_excerpt: Option<String>,
}

impl AttemptReport {
    pub fn status(&self) -> Option<u16> {
        match &self.outcome {
            AttemptOutcome::Delivered { status } => Some(*status),
            AttemptOutcome::Failed(failure) => failure.status,
        }
    }
}

/// How attempts are made; both binaries read these from their `[delivery]` section.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub timeout: Duration,
    pub allow_private_networks: bool,
    pub allowed_networks: Vec<ipnet::IpNet>,
    pub require_https: bool,
    pub response_excerpt_bytes: usize,
    /// `delivery.proxy`, a URL that may carry credentials; empty for none.
    pub proxy: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error("delivery.proxy {0}")]
    Proxy(#[from] InvalidProxy),
    #[error("building the HTTP client")]
    Client(#[from] reqwest::Error),
}

#[derive(Clone)]
pub struct Dispatcher {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    proxy: Option<DeliveryProxy>,
    require_https: bool,
    timeout: Duration,
    excerpt_bytes: usize,
}

impl std::fmt::Debug for Dispatcher {
    // The client would show the proxy's URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("policy", &self.policy)
            .field("proxy", &self.proxy)
            .field("require_https", &self.require_https)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(settings: &DispatchSettings) -> Result<Self, DispatcherError> {
        let policy = Arc::new(AddressPolicy::new(
            settings.allow_private_networks,
            settings.allowed_networks.clone(),
        ));
        let proxy = DeliveryProxy::from_setting(settings.proxy.expose_secret())?;
        let resolver = GuardedResolver::new(
            policy.clone(),
            proxy.as_ref().and_then(DeliveryProxy::host_name),
        );
        let mut builder = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            // A proxy from the environment would resolve names itself, out of the
            // guard's reach: an environment variable must not switch the guard off.
            .no_proxy()
            // A redirect is the receiver's answer, not an instruction: following it would
            // let a receiver point Hookline at an internal address.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true);
        if let Some(proxy) = &proxy {
            builder = builder.proxy(proxy.client_proxy()?);
        }
        Ok(Self {
            client: builder.build()?,
            policy,
            proxy,
            require_https: settings.require_https,
            timeout: settings.timeout,
            excerpt_bytes: settings.response_excerpt_bytes,
        })
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// The checks an endpoint URL can fail before any DNS lookup: a literal address the
    /// policy refuses, plain http where https is required, or the proxy's own host.
    pub fn check_url(&self, url: &url::Url) -> Result<(), BlockedAddress> {
        if self.require_https && url.scheme() != "https" {
            return Err(BlockedAddress::PlainHttp);
        }
        let proxy_host = self.proxy.as_ref().and_then(DeliveryProxy::host_name);
        if let (Some(proxy_host), Some(host)) = (proxy_host, url.host_str())
            && *proxy_host == *host
        {
            return Err(BlockedAddress::ProxyHost {
                host: host.to_owned(),
            });
        }
        self.policy.check_url(url)
    }

    /// Makes one signed attempt. Never fails: every problem is an outcome. `trace` is
    /// sent as `traceparent` unless the endpoint opted out.
    pub async fn attempt(
        &self,
        endpoint: &Endpoint,
        webhook_id: &str,
        payload: &Payload,
        trace: Option<TraceParent>,
    ) -> AttemptReport {
        let started = Instant::now();
        let (outcome, response_excerpt) = match self.check_url(&endpoint.spec.url) {
            Err(blocked) => (blocked_outcome(endpoint, &blocked), None),
            Ok(()) => {
                match tokio::time::timeout(
                    self.timeout,
                    self.send(endpoint, webhook_id, payload, trace),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => (
                        AttemptOutcome::Failed(Failure {
                            class: ErrorClass::Timeout,
                            status: None,
                            retry_after: None,
                            message: format!("no complete answer within {:?}", self.timeout),
                        }),
                        None,
                    ),
                }
            }
        };
        AttemptReport {
            outcome,
            duration: started.elapsed(),
            response_excerpt,
        }
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        webhook_id: &str,
        payload: &Payload,
        trace: Option<TraceParent>,
    ) -> (AttemptOutcome, Option<String>) {
        let (url, host) = match self.checked_target(&endpoint.spec.url).await {
            Ok(target) => target,
            Err(GuardError::Blocked(blocked)) => {
                return (blocked_outcome(endpoint, &blocked), None);
            }
            Err(unresolved) => {
                return (
                    AttemptOutcome::Failed(Failure {
                        class: ErrorClass::ConnectError,
                        status: None,
                        retry_after: None,
                        message: error_chain(&unresolved),
                    }),
                    None,
                );
            }
        };
        let mut headers = request_headers(endpoint, webhook_id, payload, OffsetDateTime::now_utc());
        if let Some(trace) = trace.filter(|_| endpoint.spec.send_traceparent)
            && let Ok(value) = HeaderValue::try_from(trace.to_string())
        {
            headers.insert("traceparent", value);
        }
        if let Some(host) = host.and_then(|host| HeaderValue::try_from(host).ok()) {
            headers.insert(HOST, host);
        }
        let response = self
            .client
            .post(url)
            .headers(headers)
            .body(payload.body.clone())
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            // The URL may be the pinned address; the tenant knows their own URL.
            Err(error) => return (request_failure(endpoint, &error.without_url()), None),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let excerpt = read_excerpt(&mut response, self.excerpt_bytes).await;
        let outcome = if status.is_success() {
            AttemptOutcome::Delivered {
                status: status.as_u16(),
            }
        } else {
            AttemptOutcome::Failed(Failure {
                class: ErrorClass::HttpError,
                status: Some(status.as_u16()),
                retry_after: retry_after.filter(|_| matches!(status.as_u16(), 429 | 503)),
                message: format!("receiver answered {status}"),
            })
        };
        (outcome, excerpt)
    }

    /// Where to send the request, and the `Host` header when that is not the URL's own.
    async fn checked_target(
        &self,
        url: &url::Url,
    ) -> Result<(url::Url, Option<String>), GuardError> {
        let route = proxy::route(self.proxy.as_ref().map(DeliveryProxy::kind), url);
        if route == Route::Client {
            return Ok((url.clone(), None));
        }
        let host = url.host_str().unwrap_or_default();
        let permitted = self.policy.resolve(host).await?;
        if route == Route::CheckThenTunnel {
            return Ok((url.clone(), None));
        }
        // Never falls back to the unpinned URL: the proxy would resolve the name itself.
        permitted
            .first()
            .and_then(|ip| proxy::pin(url, *ip))
            .map(|(pinned, host)| (pinned, Some(host)))
            .ok_or_else(|| GuardError::NotPinnable {
                host: host.to_owned(),
            })
    }
}

/// Every header of a delivery but `user-agent` (the client adds it): the endpoint's own
/// headers, then the content type and the Standard Webhooks headers, signed at `now`.
/// Previews show exactly these.
pub fn request_headers(
    endpoint: &Endpoint,
    webhook_id: &str,
    payload: &Payload,
    now: OffsetDateTime,
) -> HeaderMap {
    let timestamp = now.unix_timestamp();
    let signature = signature_header(
        endpoint.signing_secrets(now),
        webhook_id,
        timestamp,
        &payload.body,
    );
    let mut headers = HeaderMap::with_capacity(endpoint.spec.headers.len() + 4);
    for (name, value) in &endpoint.spec.headers {
        // Validated when the endpoint was stored; a header that still fails to convert
        // is skipped rather than failing every delivery.
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(payload.content_type));
    if let Ok(id) = HeaderValue::try_from(webhook_id) {
        headers.insert("webhook-id", id);
    }
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    if let Ok(signature) = HeaderValue::try_from(signature) {
        headers.insert("webhook-signature", signature);
    }
    headers
}

/// Reads at most `limit` bytes of the body. A receiver that streams forever or trickles
/// is cut off here or by the attempt's timeout; a small body read to its end lets the
/// connection go back to the pool.
async fn read_excerpt(response: &mut reqwest::Response, limit: usize) -> Option<String> {
    let mut excerpt = Vec::new();
    while excerpt.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - excerpt.len();
                excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    (!excerpt.is_empty()).then(|| String::from_utf8_lossy(&excerpt).into_owned())
}

/// The tenant's message names no resolved address; the operator's log line does.
fn blocked_outcome(endpoint: &Endpoint, blocked: &BlockedAddress) -> AttemptOutcome {
    if let BlockedAddress::Resolved { host, addresses } = blocked {
        tracing::warn!(
            endpoint.id = %endpoint.id,
            tenant = %endpoint.tenant,
            url.host = %host,
            addresses = ?addresses,
            "delivery refused: the host resolves only to addresses that are not allowed"
        );
    }
    AttemptOutcome::Failed(Failure {
        class: ErrorClass::BlockedAddress,
        status: None,
        retry_after: None,
        message: blocked.to_string(),
    })
}

fn request_failure(endpoint: &Endpoint, error: &reqwest::Error) -> AttemptOutcome {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(blocked) = cause.downcast_ref::<BlockedAddress>() {
            return blocked_outcome(endpoint, blocked);
        }
        source = cause.source();
    }
    let class = if error.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::ConnectError
    };
    AttemptOutcome::Failed(Failure {
        class,
        status: None,
        retry_after: None,
        message: error_chain(error),
    })
}

/// `Retry-After` is delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "past dates mean now"
        );
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        let parsed = parse_retry_after(&future).expect("future date");
        assert!(
            parsed > Duration::from_secs(3590) && parsed <= Duration::from_secs(3600),
            "{parsed:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}

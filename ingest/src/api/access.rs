//! Who may call what. Operator tokens reach everything; tenant-scoped tokens and console
//! portal links reach only their tenant's routes (and the read-only catalog), and a
//! portal link only the part of them a customer's console needs (see [`permits`]).
//!
//! Every token is compared in constant time against every configured token, so which
//! token matched (or how much of one) does not leak through timing.

use super::AppState;
use super::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// Who a request is, as far as permissions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An operator: every tenant, the catalog and the operator overview.
    Operator,
    /// One tenant's routes only, and of those what `via` allows.
    Tenant { tenant: String, via: Credential },
}

/// How a tenant-scoped caller proved who it is. The two reach the same tenant but are not
/// equal: an API token is the ATS's standing credential for the tenant, a portal link a
/// customer's short console session the ATS handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A configured `api.tenant_tokens` token.
    ApiToken,
    /// A signed, expiring link from `POST /v1/tenants/{t}/portal-links`.
    PortalLink,
}

/// Why [`permits`] refused a request; each is answered 403 with its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Another tenant's routes.
    OtherTenant,
    /// Routes for operators only: the overview, catalog changes.
    OperatorOnly,
    /// A tenant route a portal session may not call: it needs an API token.
    ApiTokenRequired,
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        let (code, message) = match denied {
            Denied::OtherTenant => ("forbidden", "this token may act only on its own tenant"),
            Denied::OperatorOnly => ("forbidden", "only an operator token may do this"),
            Denied::ApiTokenRequired => (
                "api_token_required",
                "a portal link cannot do this: it needs the tenant's API token or an operator token",
            ),
        };
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }
}

const PORTAL_PREFIX: &str = "hlp";
// `~` is outside the identifier charset, so it cannot occur in a tenant id.
const PORTAL_SEPARATOR: char = '~';

/// A signed, expiring token scoped to one tenant: `hlp~{tenant}~{expires}~{mac}`.
pub fn portal_token(key: &SecretString, tenant: &str, expires_at: OffsetDateTime) -> String {
    let claims = format!(
        "{PORTAL_PREFIX}{PORTAL_SEPARATOR}{tenant}{PORTAL_SEPARATOR}{}",
        expires_at.unix_timestamp()
    );
    let mac = URL_SAFE_NO_PAD.encode(portal_mac(key, &claims));
    format!("{claims}{PORTAL_SEPARATOR}{mac}")
}

fn portal_mac(key: &SecretString, claims: &str) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(claims.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The tenant a portal token grants, if it is authentic and unexpired.
pub fn verify_portal_token(key: &SecretString, token: &str, now: OffsetDateTime) -> Option<String> {
    let (claims, mac) = token.rsplit_once(PORTAL_SEPARATOR)?;
    let mut parts = claims.split(PORTAL_SEPARATOR);
    let (Some(PORTAL_PREFIX), Some(tenant), Some(expires), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let presented = URL_SAFE_NO_PAD.decode(mac).ok()?;
    if !bool::from(portal_mac(key, claims).ct_eq(&presented)) {
        return None;
    }
    let expires: i64 = expires.parse().ok()?;
    (now.unix_timestamp() < expires).then(|| tenant.to_owned())
}

/// When a portal token expires (unix s), read from its claims without verifying it.
pub fn portal_expiry(token: &str) -> Option<i64> {
    let (claims, _mac) = token.rsplit_once(PORTAL_SEPARATOR)?;
    claims.rsplit(PORTAL_SEPARATOR).next()?.parse().ok()
}

/// The scope a presented bearer token grants, if any.
pub fn scope_of(state: &AppState, presented: &str) -> Option<Scope> {
    let matches = |token: &SecretString| {
        bool::from(token.expose_secret().as_bytes().ct_eq(presented.as_bytes()))
    };
    let operator = state
        .tokens
        .iter()
        .fold(false, |found, t| found | matches(t));
    let scoped = state.scoped_tokens.iter().fold(None, |found, (tenant, t)| {
        if matches(t) {
            Some(tenant.clone())
        } else {
            found
        }
    });
    if operator {
        return Some(Scope::Operator);
    }
    if let Some(tenant) = scoped {
        return Some(Scope::Tenant {
            tenant,
            via: Credential::ApiToken,
        });
    }
    let key = state.settings.portal_key.as_ref()?;
    verify_portal_token(key, presented, OffsetDateTime::now_utc()).map(|tenant| Scope::Tenant {
        tenant,
        via: Credential::PortalLink,
    })
}

/// Whether `scope` may make this request. `path` is relative to `/v1`.
pub fn permits(scope: &Scope, method: &Method, path: &str) -> Result<(), Denied> {
    let Scope::Tenant { tenant, via } = scope else {
        return Ok(());
    };
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("tenants"), Some(t)) if t != tenant => Err(Denied::OtherTenant),
        // A tenant's quota is the operator's to set; the tenant may read it.
        (Some("tenants"), Some(_)) if !tenant_may_change(method, segments.clone().next()) => {
            Err(Denied::OperatorOnly)
        }
        (Some("tenants"), Some(_)) => match via {
            Credential::ApiToken => Ok(()),
            Credential::PortalLink if portal_session_may(method, segments.next()) => Ok(()),
            Credential::PortalLink => Err(Denied::ApiTokenRequired),
        },
        (Some("event-types"), _) if method == Method::GET => Ok(()),
        (Some("openapi.json" | "session"), None) => Ok(()),
        _ => Err(Denied::OperatorOnly),
    }
}

/// Whether a tenant-scoped caller may call `method` on its `resource`: everything but
/// changing its own quota.
fn tenant_may_change(method: &Method, resource: Option<&str>) -> bool {
    resource != Some("quota") || method == Method::GET
}

/// The tenant resources a portal session may use: what the console shows a customer.
/// Everything else under the tenant needs an API token: publishing events is the ATS's
/// job, minting portal links would let a link renew itself past its TTL, and a tenant
/// route added later stays out of a portal session's reach until it is listed here.
fn portal_session_may(method: &Method, resource: Option<&str>) -> bool {
    match resource {
        Some("endpoints" | "dead-letters") => true,
        Some("events") => method == Method::GET,
        Some("quota") => method == Method::GET,
        _ => false,
    }
}

pub fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Who may make this `/v1` request: the scope its bearer token grants, or the answer
/// refusing it (401 without a valid token, 403 beyond what the token may do).
pub fn authorize(state: &AppState, request: &Request) -> Result<Scope, ApiError> {
    let Some(scope) = bearer(request).and_then(|token| scope_of(state, token)) else {
        return Err(ApiError::unauthorized());
    };
    let path = request.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    permits(&scope, request.method(), path)?;
    Ok(scope)
}

/// What `GET /v1/session` answers: who the presented token is, so the console knows
/// which view to open.
#[derive(Debug, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum SessionView {
    Operator,
    Tenant { tenant: String },
}

pub async fn session(Extension(scope): Extension<Scope>) -> Json<SessionView> {
    Json(match scope {
        Scope::Operator => SessionView::Operator,
        Scope::Tenant { tenant, .. } => SessionView::Tenant { tenant },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn portal_tokens_verify_only_unaltered_and_unexpired() {
        let key = SecretString::from("k1".to_owned());
        let now = OffsetDateTime::now_utc();
        let token = portal_token(&key, "acme", now + Duration::minutes(5));
        assert_eq!(verify_portal_token(&key, &token, now), Some("acme".into()));
        assert_eq!(
            verify_portal_token(&key, &token, now + Duration::minutes(6)),
            None,
            "expired"
        );
        let other_key = SecretString::from("k2".to_owned());
        assert_eq!(verify_portal_token(&other_key, &token, now), None);
        let forged = token.replacen("acme", "beta", 1);
        assert_eq!(verify_portal_token(&key, &forged, now), None);
        assert_eq!(verify_portal_token(&key, "hlp~acme", now), None);
    }

    #[test]
    fn each_scope_reaches_what_it_should() {
        use Denied::*;
        let operator = Scope::Operator;
        let token = Scope::Tenant {
            tenant: "acme".into(),
            via: Credential::ApiToken,
        };
        let link = Scope::Tenant {
            tenant: "acme".into(),
            via: Credential::PortalLink,
        };
        let (get, post, put, patch, delete) = (
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        );
        #[rustfmt::skip]
        let cases = [
            // path, method, operator, tenant API token, portal link
            ("/tenants/acme/endpoints", &get, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/endpoints", &post, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/endpoints/ep_1", &patch, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/endpoints/ep_1", &delete, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/endpoints/ep_1/secret/rotate", &post, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/dead-letters", &get, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/dead-letters/replay", &post, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/events/evt-1", &get, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/events", &post, Ok(()), Ok(()), Err(ApiTokenRequired)),
            ("/tenants/acme/events/batch", &post, Ok(()), Ok(()), Err(ApiTokenRequired)),
            // The quota is the operator's to set; the tenant reads its own.
            ("/tenants/acme/quota", &get, Ok(()), Ok(()), Ok(())),
            ("/tenants/acme/quota", &put, Ok(()), Err(OperatorOnly), Err(OperatorOnly)),
            ("/tenants/acme/quota", &delete, Ok(()), Err(OperatorOnly), Err(OperatorOnly)),
            ("/tenants/beta/quota", &get, Ok(()), Err(OtherTenant), Err(OtherTenant)),
            // A link that mints links would never expire.
            ("/tenants/acme/portal-links", &post, Ok(()), Ok(()), Err(ApiTokenRequired)),
            // Tenant routes not listed for portal sessions (erasure, say) need a token.
            ("/tenants/acme/erasure", &post, Ok(()), Ok(()), Err(ApiTokenRequired)),
            ("/tenants/acme", &delete, Ok(()), Ok(()), Err(ApiTokenRequired)),
            ("/tenants/acme/", &get, Ok(()), Ok(()), Err(ApiTokenRequired)),
            ("/tenants/beta/endpoints", &get, Ok(()), Err(OtherTenant), Err(OtherTenant)),
            ("/tenants/beta/portal-links", &post, Ok(()), Err(OtherTenant), Err(OtherTenant)),
            ("/tenants/acme-2/endpoints", &get, Ok(()), Err(OtherTenant), Err(OtherTenant)),
            ("/tenants/ACME/endpoints", &get, Ok(()), Err(OtherTenant), Err(OtherTenant)),
            ("/tenants//endpoints", &get, Ok(()), Err(OtherTenant), Err(OtherTenant)),
            ("/tenants", &get, Ok(()), Err(OperatorOnly), Err(OperatorOnly)),
            ("/event-types", &get, Ok(()), Ok(()), Ok(())),
            ("/event-types/a.b", &put, Ok(()), Err(OperatorOnly), Err(OperatorOnly)),
            ("/event-types/a.b", &delete, Ok(()), Err(OperatorOnly), Err(OperatorOnly)),
            ("/openapi.json", &get, Ok(()), Ok(()), Ok(())),
            ("/session", &get, Ok(()), Ok(()), Ok(())),
            ("/operator/overview", &get, Ok(()), Err(OperatorOnly), Err(OperatorOnly)),
        ];
        for (path, method, for_operator, for_token, for_link) in cases {
            for (scope, expected) in [
                (&operator, for_operator),
                (&token, for_token),
                (&link, for_link),
            ] {
                assert_eq!(
                    permits(scope, method, path),
                    expected,
                    "{scope:?} {method} {path}"
                );
            }
        }
    }
}

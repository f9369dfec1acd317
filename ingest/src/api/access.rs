//! Who may call what. Operator tokens reach everything; tenant-scoped tokens and console
//! portal links reach only their tenant's routes (and the read-only catalog).
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An operator: every tenant, the catalog and the operator overview.
    All,
    /// One tenant's routes only.
    Tenant(String),
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
        return Some(Scope::All);
    }
    if let Some(tenant) = scoped {
        return Some(Scope::Tenant(tenant));
    }
    let key = state.settings.portal_key.as_ref()?;
    verify_portal_token(key, presented, OffsetDateTime::now_utc()).map(Scope::Tenant)
}

/// Whether `scope` may make this request. `path` is relative to `/v1`.
pub fn permits(scope: &Scope, method: &Method, path: &str) -> bool {
    let Scope::Tenant(tenant) = scope else {
        return true;
    };
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("tenants"), Some(t)) => t == tenant,
        (Some("event-types"), _) => method == Method::GET,
        (Some("openapi.json"), None) => true,
        (Some("session"), None) => true,
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
/// refusing it (401 without a valid token, 403 outside the token's tenant).
pub fn authorize(state: &AppState, request: &Request) -> Result<Scope, ApiError> {
    let Some(scope) = bearer(request).and_then(|token| scope_of(state, token)) else {
        return Err(ApiError::unauthorized());
    };
    let path = request.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    if !permits(&scope, request.method(), path) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may act only on its own tenant",
        ));
    }
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
        Scope::All => SessionView::Operator,
        Scope::Tenant(tenant) => SessionView::Tenant { tenant },
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
    fn tenant_scopes_reach_only_their_tenant() {
        let acme = Scope::Tenant("acme".into());
        let cases = [
            (&acme, Method::GET, "/tenants/acme/endpoints", true),
            (&acme, Method::POST, "/tenants/acme/events", true),
            (&acme, Method::GET, "/tenants/acme", true),
            (&acme, Method::GET, "/tenants/beta/endpoints", false),
            (&acme, Method::GET, "/tenants/acme-2/endpoints", false),
            (&acme, Method::GET, "/event-types", true),
            (&acme, Method::PUT, "/event-types/a.b", false),
            (&acme, Method::GET, "/openapi.json", true),
            (&acme, Method::GET, "/operator/overview", false),
            (&acme, Method::GET, "/session", true),
            (&Scope::All, Method::GET, "/operator/overview", true),
        ];
        for (scope, method, path, expected) in cases {
            assert_eq!(
                permits(scope, &method, path),
                expected,
                "{scope:?} {method} {path}"
            );
        }
    }
}

//! `POST /v1/tenants/{tenant}/portal-links`: a short-lived console link an ATS hands to
//! its customer, scoped to that customer's tenant. Operator and tenant API tokens mint
//! them, portal links do not (`access::permits`). Without `api.portal_key` the route
//! answers 501 `portal_links_disabled`.

use super::access::portal_token;
use super::error::ApiError;
use super::{AppState, tenant};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use time::OffsetDateTime;

#[derive(Debug, Serialize)]
pub struct PortalLink {
    /// Relative to the ingest API's base URL.
    url: String,
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

pub async fn create(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
) -> Result<(StatusCode, Json<PortalLink>), ApiError> {
    let tenant = tenant(raw_tenant)?;
    let Some(key) = &state.settings.portal_key else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "portal_links_disabled",
            "portal links are off on this installation: they need api.portal_key \
             (HOOKLINE__API__PORTAL_KEY)",
        ));
    };
    let ttl = time::Duration::try_from(state.settings.portal_link_ttl)
        .unwrap_or(time::Duration::minutes(15));
    let expires_at = OffsetDateTime::now_utc() + ttl;
    let token = portal_token(key, tenant.as_str(), expires_at);
    Ok((
        StatusCode::CREATED,
        Json(PortalLink {
            url: format!("/console/#token={token}"),
            token,
            expires_at,
        }),
    ))
}

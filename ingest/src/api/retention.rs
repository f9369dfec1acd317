//! `GET / PUT / DELETE /v1/tenants/{t}/retention`: a tenant keeps its event history and
//! dead letters shorter than the installation does (never longer: the deliverers keep
//! the shorter of the two). Operators and the tenant's API token may set it.

use super::error::ApiError;
use super::{AppState, body, tenant};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hookline_shared::store::retention::TenantRetention;

const MAX_BODY_BYTES: usize = 1024;

pub async fn get(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
) -> Result<Json<TenantRetention>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    Ok(Json(
        state.retention.get(&tenant).await?.unwrap_or_default(),
    ))
}

pub async fn put(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    request_body: Body,
) -> Result<Json<TenantRetention>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let retention: TenantRetention = body::parse_json(request_body, MAX_BODY_BYTES).await?;
    retention.check().map_err(ApiError::invalid)?;
    state.retention.put(&tenant, &retention).await?;
    Ok(Json(retention))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant(raw_tenant)?;
    state.retention.delete(&tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

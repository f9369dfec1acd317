//! API errors: `{"error": {"code", "message", "field"?}}`. A 4xx says what the caller
//! must fix; a 5xx is opaque to the caller and logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hookline_shared::Invalid;
use hookline_shared::broker::publisher::PublishError;
use hookline_shared::store::StoreError;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Over a limit: 429 with `Retry-After` (whole seconds, rounded up).
    pub fn throttled(
        code: &'static str,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// The same error for one item of a list, e.g. field `type` of the fourth event of a
    /// batch becomes `events[3].type` (and no field becomes `events[3]`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = Some(match self.field.take() {
            None => parent.to_owned(),
            Some(field) if field.starts_with('[') => format!("{parent}{field}"),
            Some(field) => format!("{parent}.{field}"),
        });
        self
    }

    /// `{"code", "message", "field"?}`: what the answer's `error` holds, also used for
    /// one item's result inside a 200 answer.
    pub fn detail(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = field.as_str().into();
        }
        error
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn not_found(what: &'static str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// A body that parsed but broke a rule: 422 naming the field.
    pub fn invalid(invalid: Invalid) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            invalid.message,
        )
        .with_field(invalid.field)
    }

    /// A malformed path segment (tenant or endpoint id): 400 naming it.
    pub fn bad_path(invalid: Invalid) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", invalid.message)
            .with_field(invalid.field)
    }

    pub fn unavailable(dependency: &'static str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{dependency} is unavailable; retry later"),
        )
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::from(Arc::new(error))
    }
}

/// A store error shared by every request that waited on one cached read.
impl From<Arc<StoreError>> for ApiError {
    fn from(error: Arc<StoreError>) -> Self {
        match &*error {
            StoreError::QuotaExceeded { max } => Self::new(
                StatusCode::CONFLICT,
                "quota_exceeded",
                format!("the tenant already has the maximum of {max} endpoints"),
            ),
            shared if shared.is_refusing_writes() => {
                tracing::warn!(
                    error = hookline_shared::telemetry::error_chain(shared),
                    "Redis refuses writes"
                );
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_refusing_writes",
                    "storage is refusing writes (out of memory or unable to persist); retry later",
                )
            }
            shared if shared.is_unavailable() => {
                tracing::warn!(
                    error = hookline_shared::telemetry::error_chain(shared),
                    "Redis unavailable"
                );
                Self::unavailable("storage")
            }
            _ => {
                tracing::error!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "storage error"
                );
                Self::internal()
            }
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Blocked(reason) => {
                tracing::warn!(%reason, "publish refused: RabbitMQ blocks publishers");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_blocked",
                    "the event broker is refusing new events (a resource alarm: memory or disk); retry later",
                )
            }
            PublishError::Unavailable | PublishError::ConfirmTimeout(_) | PublishError::Amqp(_) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "publish failed"
                );
                Self::unavailable("the event broker")
            }
            error => {
                tracing::error!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "publish refused"
                );
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.detail();
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.max(1).into());
        }
        response
    }
}

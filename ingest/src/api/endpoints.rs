//! Endpoint management: `/v1/tenants/{tenant}/endpoints[/{id}]`.

use super::body::ApiQuery;
use super::error::ApiError;
use super::preview::Preview;
use super::{AppState, body, load_endpoint, tenant};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hookline_shared::Invalid;
use hookline_shared::domain::endpoint::{
    ENDPOINT_ID_PREFIX, Endpoint, EndpointSpec, RetiringSecret, validate_endpoint_id,
};
use hookline_shared::domain::filter::PayloadFilter;
use hookline_shared::domain::health::{HealthRecord, HealthView};
use hookline_shared::domain::pattern::EventPattern;
use hookline_shared::domain::payload::PayloadFormat;
use hookline_shared::domain::signing::SigningSecret;
use hookline_shared::store::health::to_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The endpoint as callers write it. Loose types, so that every rule is checked in
/// [`EndpointInput::into_spec`] and reported with the field's name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointInput {
    url: String,
    event_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// A preset name or `{"template": …}`; parsed in `into_spec` to name template errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit_per_s: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    event_names: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ordered: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    send_traceparent: Option<bool>,
    /// On create: send a `hookline.ping` test event first and refuse if it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verify: Option<bool>,
}

impl EndpointInput {
    fn into_spec(self) -> Result<(EndpointSpec, Option<SigningSecret>), Invalid> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| Invalid::new("url", format_args!("is not a URL: {e}")))?;
        let event_types = self
            .event_types
            .into_iter()
            .enumerate()
            .map(|(index, pattern)| {
                EventPattern::parse(pattern).map_err(|e| e.within(&format!("event_types[{index}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let filter = self
            .filter
            .map(PayloadFilter::parse)
            .transpose()
            .map_err(|e| e.within("filter"))?;
        let secret = self
            .secret
            .as_deref()
            .map(SigningSecret::parse)
            .transpose()?;
        let format = self
            .format
            .map(PayloadFormat::from_value)
            .transpose()?
            .unwrap_or_default();
        let spec = EndpointSpec {
            url,
            event_types,
            description: self.description,
            format,
            headers: self.headers,
            enabled: self.enabled.unwrap_or(true),
            filter,
            rate_limit_per_s: self.rate_limit_per_s,
            metadata: self.metadata,
            event_names: self.event_names,
            ordered: self.ordered.unwrap_or(false),
            send_traceparent: self.send_traceparent.unwrap_or(true),
        };
        spec.validate()?;
        Ok((spec, secret))
    }

    fn from_spec(spec: &EndpointSpec) -> Self {
        Self {
            url: spec.url.to_string(),
            event_types: spec
                .event_types
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            description: spec.description.clone(),
            format: serde_json::to_value(&spec.format).ok(),
            headers: spec.headers.clone(),
            secret: None,
            enabled: Some(spec.enabled),
            filter: spec.filter.clone().map(Into::into),
            rate_limit_per_s: spec.rate_limit_per_s,
            metadata: spec.metadata.clone(),
            event_names: spec.event_names.clone(),
            ordered: Some(spec.ordered),
            send_traceparent: Some(spec.send_traceparent),
            verify: None,
        }
    }
}

/// An endpoint as the API shows it. The secret appears only when it was just created;
/// `enabled` is false while Hookline has it disabled (see `health.disabled_reason`).
#[derive(Debug, Serialize)]
pub struct EndpointView {
    id: String,
    tenant: String,
    #[serde(flatten)]
    spec: EndpointSpec,
    health: HealthView,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    /// While a rotated-out secret still signs deliveries, when it stops.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    previous_secret_expires_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// On create and update: what the receiver gets for the catalog's example event.
    #[serde(skip_serializing_if = "Option::is_none")]
    sample: Option<Preview>,
}

impl EndpointView {
    fn of(state: &AppState, endpoint: &Endpoint, health: &HealthRecord) -> Self {
        let mut spec = endpoint.spec.clone();
        spec.enabled = spec.enabled && health.disabled_reason.is_none();
        let now = OffsetDateTime::now_utc();
        Self {
            id: endpoint.id.clone(),
            tenant: endpoint.tenant.to_string(),
            health: health.view(endpoint.spec.enabled, &state.health_policy),
            spec,
            created_at: endpoint.created_at,
            updated_at: endpoint.updated_at,
            previous_secret_expires_at: endpoint
                .retiring_secret
                .as_ref()
                .map(|r| r.until)
                .filter(|until| *until > now),
            secret: None,
            sample: None,
        }
    }
}

/// What `POST …/endpoints?dry_run=true` answers: the endpoint as it would be stored, and
/// the sample rendering, with nothing stored or sent.
#[derive(Debug, Serialize)]
pub struct DryRun {
    endpoint: EndpointSpec,
    sample: Preview,
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateOptions {
    #[serde(default)]
    dry_run: bool,
}

async fn sample(state: &AppState, endpoint: &Endpoint) -> Result<Preview, ApiError> {
    let message = super::preview::sample_message(state, endpoint).await;
    super::preview::preview_message(endpoint, message)
}

#[derive(Debug, Serialize)]
pub struct EndpointList {
    data: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
pub struct SecretView {
    secret: String,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    previous_secret_expires_at: Option<OffsetDateTime>,
}

/// Refuses a URL the deliverer would refuse anyway: a literal private address (SSRF
/// guard) or plain http where https is required. Hostnames are checked at every attempt.
fn check_reachable(state: &AppState, spec: &EndpointSpec) -> Result<(), ApiError> {
    state.dispatcher.check_url(&spec.url).map_err(|blocked| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "blocked_address",
            format!("deliveries to this URL are not allowed: {blocked}"),
        )
        .with_field("url")
    })
}

pub async fn create(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    ApiQuery(options): ApiQuery<CreateOptions>,
    request_body: Body,
) -> Result<Response, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let input: EndpointInput =
        body::parse_json(request_body, state.settings.max_endpoint_bytes).await?;
    let verify = input.verify.unwrap_or(false);
    let (spec, secret) = input.into_spec().map_err(ApiError::invalid)?;
    check_reachable(&state, &spec)?;
    let now = OffsetDateTime::now_utc();
    let endpoint = Endpoint {
        id: format!("{ENDPOINT_ID_PREFIX}{}", uuid::Uuid::now_v7().simple()),
        tenant,
        spec,
        secret: secret.unwrap_or_else(|| SigningSecret::from_random_bytes(rand::random())),
        retiring_secret: None,
        created_at: now,
        updated_at: now,
    };
    let sample = sample(&state, &endpoint).await?;
    if options.dry_run {
        return Ok(Json(DryRun {
            endpoint: endpoint.spec,
            sample,
        })
        .into_response());
    }
    if verify {
        let check = super::checks::test_delivery(
            &state,
            &endpoint,
            super::checks::PING_TYPE.to_owned(),
            serde_json::json!({"message": "Hookline is verifying this endpoint"}),
        )
        .await?;
        if !check.delivered {
            let answer = check
                .status
                .map_or_else(|| "no answer".to_owned(), |s| format!("status {s}"));
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "verification_failed",
                format!(
                    "the hookline.ping test event was not accepted ({answer}): {}",
                    check.error.unwrap_or_default()
                ),
            )
            .with_field("url"));
        }
    }
    if !state
        .endpoints
        .create(&endpoint, state.settings.max_endpoints_per_tenant)
        .await?
    {
        // A UUIDv7 collision: practically impossible, but never overwrite.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "endpoint id collision; retry",
        ));
    }
    let mut view = EndpointView::of(&state, &endpoint, &HealthRecord::default());
    view.secret = Some(endpoint.secret.expose());
    view.sample = Some(sample);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
) -> Result<Json<EndpointList>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let (endpoints, health) =
        tokio::try_join!(state.endpoints.list(&tenant), state.health.all(&tenant))?;
    Ok(Json(EndpointList {
        data: endpoints
            .iter()
            .map(|e| EndpointView::of(&state, e, &health.get(&e.id).cloned().unwrap_or_default()))
            .collect(),
    }))
}

pub async fn get(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
) -> Result<Json<EndpointView>, ApiError> {
    let endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    let health = state.health.get(&endpoint.tenant, &endpoint.id).await?;
    Ok(Json(EndpointView::of(&state, &endpoint, &health)))
}

pub async fn secret(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
) -> Result<Json<SecretView>, ApiError> {
    let endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    Ok(Json(secret_view(&endpoint)))
}

fn secret_view(endpoint: &Endpoint) -> SecretView {
    let now = OffsetDateTime::now_utc();
    SecretView {
        secret: endpoint.secret.expose(),
        previous_secret_expires_at: endpoint
            .retiring_secret
            .as_ref()
            .map(|r| r.until)
            .filter(|until| *until > now),
    }
}

/// A new secret signs from now on; the old one keeps signing too (a second signature in
/// `webhook-signature`) for `delivery.secret_overlap`, so receivers switch without a gap.
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
) -> Result<Json<SecretView>, ApiError> {
    let mut endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    let now = OffsetDateTime::now_utc();
    let overlap = time::Duration::try_from(state.secret_overlap).unwrap_or(time::Duration::DAY);
    let fresh = SigningSecret::from_random_bytes(rand::random());
    let old = std::mem::replace(&mut endpoint.secret, fresh);
    endpoint.retiring_secret = Some(RetiringSecret {
        secret: old,
        until: now + overlap,
    });
    endpoint.updated_at = now;
    if !state.endpoints.replace(&endpoint).await? {
        return Err(ApiError::not_found("endpoint"));
    }
    Ok(Json(secret_view(&endpoint)))
}

/// A JSON merge patch (RFC 7396) over the endpoint's current fields, validated as a
/// whole: the result must be a valid endpoint.
pub async fn update(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
    request_body: Body,
) -> Result<Json<EndpointView>, ApiError> {
    let mut endpoint = load_endpoint(&state, raw_tenant, &id).await?;
    let patch: Map<String, Value> =
        body::parse_json(request_body, state.settings.max_endpoint_bytes).await?;
    let re_enabling = patch.get("enabled") == Some(&Value::Bool(true));
    if patch.contains_key("secret") {
        return Err(ApiError::invalid(Invalid::new(
            "secret",
            "cannot be patched; rotate it with POST …/secret/rotate",
        )));
    }
    if patch.contains_key("verify") {
        return Err(ApiError::invalid(Invalid::new(
            "verify",
            "applies only when creating an endpoint; use POST …/test",
        )));
    }
    let mut merged = serde_json::to_value(EndpointInput::from_spec(&endpoint.spec))
        .map_err(|e| ApiError::invalid(Invalid::new("", e)))?;
    // A format is replaced whole: merging two templates' bodies key by key would keep
    // fields of the old one that the new one does not mention.
    if patch.contains_key("format")
        && let Value::Object(fields) = &mut merged
    {
        fields.remove("format");
    }
    merge_patch(&mut merged, Value::Object(patch));
    let input: EndpointInput = body::parse_json_bytes(merged.to_string().as_bytes())?;
    let (spec, _) = input.into_spec().map_err(ApiError::invalid)?;
    check_reachable(&state, &spec)?;
    endpoint.spec = spec;
    endpoint.updated_at = OffsetDateTime::now_utc();
    let sample = sample(&state, &endpoint).await?;
    if !state.endpoints.replace(&endpoint).await? {
        return Err(ApiError::not_found("endpoint"));
    }
    let health = if re_enabling {
        // Re-enabling starts over: a clean record, circuit closed. No probe will close
        // it, so what it held is woken here (best effort: held deliveries come back on
        // their own after the deliverer's max_hold).
        state.health.reset(&endpoint.tenant, &endpoint.id).await?;
        let now_ms = to_ms(OffsetDateTime::now_utc());
        if let Err(error) = state
            .retries
            .wake_held(&endpoint.tenant, &endpoint.id, now_ms)
            .await
        {
            tracing::warn!(
                endpoint_id = %endpoint.id,
                error = format!("{:#}", anyhow::Error::from(error)),
                "waking held deliveries failed"
            );
        }
        HealthRecord::default()
    } else {
        state.health.get(&endpoint.tenant, &endpoint.id).await?
    };
    let mut view = EndpointView::of(&state, &endpoint, &health);
    view.sample = Some(sample);
    Ok(Json(view))
}

pub async fn delete(
    State(state): State<AppState>,
    Path((raw_tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant(raw_tenant)?;
    validate_endpoint_id(&id).map_err(ApiError::bad_path)?;
    if state.endpoints.delete(&tenant, &id).await? {
        state.health.reset(&tenant, &id).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("endpoint"))
    }
}

fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(entries) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in entries {
                    if value.is_null() {
                        map.remove(&key);
                    } else {
                        merge_patch(map.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let cases = [
            (
                json!({"a": 1, "b": 2}),
                json!({"a": 3}),
                json!({"a": 3, "b": 2}),
            ),
            (json!({"a": 1, "b": 2}), json!({"b": null}), json!({"a": 1})),
            (
                json!({"h": {"x": "1"}}),
                json!({"h": {"y": "2"}}),
                json!({"h": {"x": "1", "y": "2"}}),
            ),
            (
                json!({"t": ["a"]}),
                json!({"t": ["b", "c"]}),
                json!({"t": ["b", "c"]}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, patch);
            assert_eq!(target, expected);
        }
    }

    #[test]
    fn input_errors_name_nested_fields() {
        let input: EndpointInput = serde_json::from_value(json!({
            "url": "https://x.example", "event_types": ["a.b", "a..b"]
        }))
        .expect("shape");
        assert_eq!(
            input.into_spec().expect_err("invalid").field,
            "event_types[1]"
        );
        let input: EndpointInput = serde_json::from_value(json!({
            "url": "https://x.example", "event_types": ["#"], "filter": {"a..b": 1}
        }))
        .expect("shape");
        assert_eq!(input.into_spec().expect_err("invalid").field, "filter.a..b");
        let input: EndpointInput = serde_json::from_value(json!({
            "url": "relative/path", "event_types": ["#"]
        }))
        .expect("shape");
        assert_eq!(input.into_spec().expect_err("invalid").field, "url");
    }
}

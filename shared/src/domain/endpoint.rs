//! Endpoints: where a tenant wants its events, and how they must look when they arrive.

use super::event::Event;
use super::event::TenantId;
use super::filter::PayloadFilter;
use super::pattern::{EventPattern, EventType};
use super::payload::{self, PayloadFormat, Purpose, RenderError, RenderedPayload};
use super::signing::SigningSecret;
use super::template::RenderContext;
use super::{Invalid, check_identifier};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use url::Url;

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_EVENT_PATTERNS: usize = 64;
pub const MAX_DESCRIPTION_LEN: usize = 512;
pub const MAX_HEADERS: usize = 32;
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
pub const MAX_RATE_LIMIT_PER_S: u32 = 10_000;
pub const ENDPOINT_ID_PREFIX: &str = "ep_";
pub const MAX_METADATA: usize = 32;
pub const MAX_METADATA_VALUE_LEN: usize = 256;
pub const MAX_EVENT_NAMES: usize = 256;
pub const MAX_EVENT_NAME_LEN: usize = 64;

/// Headers the subscriber must be able to trust as Hookline's own, or that the HTTP
/// layer owns; an endpoint cannot override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "user-agent",
];

/// Everything about an endpoint that its owner chooses; validated as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub url: Url,
    pub event_types: Vec<EventPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub format: PayloadFormat,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<PayloadFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    /// Values shared with the receiver that formats may print (`export_key`, …). Not
    /// secret: they appear in every body that references them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Event type → the name a format prints for it (`{{event_name}}`, `event_data`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub event_names: BTreeMap<String, String>,
    /// Deliveries of events with the same `ordering_key` are attempted one at a time, in
    /// the order they were accepted (see ARCHITECTURE.md, Ordered delivery).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
    /// Each request carries a W3C `traceparent` in the event's trace (opt out: false).
    #[serde(default = "enabled_by_default")]
    pub send_traceparent: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl EndpointSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_url(&self.url)?;
        validate_patterns(&self.event_types)?;
        if let Some(description) = &self.description
            && description.chars().count() > MAX_DESCRIPTION_LEN
        {
            return Err(Invalid::new(
                "description",
                format_args!("must be at most {MAX_DESCRIPTION_LEN} characters"),
            ));
        }
        validate_headers(&self.headers)?;
        if let Some(limit) = self.rate_limit_per_s
            && (limit == 0 || limit > MAX_RATE_LIMIT_PER_S)
        {
            return Err(Invalid::new(
                "rate_limit_per_s",
                format_args!("must be 1 to {MAX_RATE_LIMIT_PER_S}"),
            ));
        }
        validate_metadata(&self.metadata)?;
        validate_event_names(&self.event_names)?;
        for key in self.format.metadata_keys() {
            if !self.metadata.contains_key(key) {
                return Err(Invalid::new(
                    format!("metadata.{key}"),
                    "is required by the endpoint's format",
                ));
            }
        }
        Ok(())
    }

    pub fn render_context(&self) -> RenderContext<'_> {
        RenderContext {
            metadata: &self.metadata,
            event_names: &self.event_names,
        }
    }

    /// The body this endpoint's receiver gets for `event`.
    pub fn render(&self, event: &Event, purpose: Purpose) -> Result<RenderedPayload, RenderError> {
        payload::render(event, &self.format, self.render_context(), purpose)
    }

    /// Whether two endpoints get the same bytes for any event, so one rendering serves
    /// both.
    pub fn renders_like(&self, other: &Self) -> bool {
        self.format == other.format
            && self.metadata == other.metadata
            && self.event_names == other.event_names
    }
}

fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if metadata.len() > MAX_METADATA {
        return Err(Invalid::new(
            "metadata",
            format_args!("must have at most {MAX_METADATA} entries"),
        ));
    }
    for (key, value) in metadata {
        check_identifier(&format!("metadata.{key}"), key, 64)?;
        if value.len() > MAX_METADATA_VALUE_LEN {
            return Err(Invalid::new(
                format!("metadata.{key}"),
                format_args!("must be at most {MAX_METADATA_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

fn validate_event_names(names: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if names.len() > MAX_EVENT_NAMES {
        return Err(Invalid::new(
            "event_names",
            format_args!("must have at most {MAX_EVENT_NAMES} entries"),
        ));
    }
    for (event_type, name) in names {
        let field = format!("event_names.{event_type}");
        EventType::parse(event_type.clone()).map_err(|e| Invalid::new(&field, e.message))?;
        if name.is_empty() || name.chars().count() > MAX_EVENT_NAME_LEN {
            return Err(Invalid::new(
                field,
                format_args!("must be 1 to {MAX_EVENT_NAME_LEN} characters"),
            ));
        }
    }
    Ok(())
}

pub fn validate_url(url: &Url) -> Result<(), Invalid> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid::new("url", "must be an absolute http or https URL"));
    }
    if url.host().is_none() {
        return Err(Invalid::new("url", "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Invalid::new(
            "url",
            "must not carry credentials; use custom headers instead",
        ));
    }
    if url.as_str().len() > MAX_URL_LEN {
        return Err(Invalid::new(
            "url",
            format_args!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    Ok(())
}

pub fn validate_patterns(patterns: &[EventPattern]) -> Result<(), Invalid> {
    if patterns.is_empty() {
        return Err(Invalid::new(
            "event_types",
            "must list at least one pattern",
        ));
    }
    if patterns.len() > MAX_EVENT_PATTERNS {
        return Err(Invalid::new(
            "event_types",
            format_args!("must list at most {MAX_EVENT_PATTERNS} patterns"),
        ));
    }
    Ok(())
}

pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if headers.len() > MAX_HEADERS {
        return Err(Invalid::new(
            "headers",
            format_args!("must have at most {MAX_HEADERS} entries"),
        ));
    }
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let is_token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !is_token {
            return Err(Invalid::new(field, "is not a valid HTTP header name"));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
            return Err(Invalid::new(
                field,
                "is set by Hookline and cannot be overridden",
            ));
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(Invalid::new(
                field,
                format_args!("value must be at most {MAX_HEADER_VALUE_LEN} bytes"),
            ));
        }
        if value
            .bytes()
            .any(|b| b == b'\r' || b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(Invalid::new(
                field,
                "value must not contain control characters (CR, LF, …)",
            ));
        }
    }
    Ok(())
}

pub fn validate_endpoint_id(id: &str) -> Result<(), Invalid> {
    check_identifier("endpoint_id", id, 64)
}

/// A secret that was replaced but still signs deliveries until `until`, so subscribers
/// can roll their verifier without missing a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiringSecret {
    pub secret: SigningSecret,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// A registered endpoint, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub tenant: TenantId,
    #[serde(flatten)]
    pub spec: EndpointSpec,
    pub secret: SigningSecret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_secret: Option<RetiringSecret>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Endpoint {
    /// Subscribed to this event type, whatever its state.
    /// Whether one of the endpoint's patterns matches the type. Hookline's own types
    /// (`hookline.…`) match only patterns that name them (start with `hookline.`): an
    /// endpoint that takes every event (`#`) keeps getting only the ATS's.
    pub fn subscribes_to(&self, event_type: &EventType) -> bool {
        let reserved = event_type
            .as_str()
            .starts_with(crate::domain::notification::RESERVED_PREFIX);
        self.spec.event_types.iter().any(|p| {
            p.matches(event_type)
                && (!reserved
                    || p.as_str()
                        .starts_with(crate::domain::notification::RESERVED_PREFIX))
        })
    }

    /// Whether `data` passes the endpoint's payload filter (no filter: everything does).
    pub fn accepts_data(&self, data: &serde_json::Value) -> bool {
        self.spec.filter.as_ref().is_none_or(|f| f.matches(data))
    }

    /// The secrets that sign a delivery made at `now`: the current one, plus the retiring
    /// one during its overlap.
    pub fn signing_secrets(&self, now: OffsetDateTime) -> Vec<&SigningSecret> {
        let mut secrets = vec![&self.secret];
        if let Some(retiring) = &self.retiring_secret
            && retiring.until > now
        {
            secrets.push(&retiring.secret);
        }
        secrets
    }
}

impl Serialize for SigningSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.expose())
    }
}

impl<'de> Deserialize<'de> for SigningSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let encoded = String::deserialize(deserializer)?;
        SigningSecret::parse(&encoded).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> Result<EndpointSpec, String> {
        let spec: EndpointSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.field)?;
        Ok(spec)
    }

    #[test]
    fn accepts_a_complete_endpoint() {
        let spec = spec(json!({
            "url": "https://hooks.example.com/ats?x=1",
            "event_types": ["profile.*.success", "job.#"],
            "description": "prod receiver",
            "format": "form",
            "headers": {"X-Api-Key": "abc"},
            "filter": {"status": ["hired"]},
            "rate_limit_per_s": 50
        }))
        .expect("valid");
        assert!(spec.enabled);
        assert_eq!(spec.format, PayloadFormat::Form);
    }

    #[test]
    fn rejections_name_the_field() {
        let base = json!({"url": "https://x.example", "event_types": ["a.b"]});
        let with = |key: &str, value: serde_json::Value| {
            let mut body = base.clone();
            body[key] = value;
            body
        };
        let cases = [
            (with("url", json!("ftp://x.example/")), "url"),
            (with("url", json!("https://user:pw@x.example/")), "url"),
            (with("event_types", json!([])), "event_types"),
            (with("headers", json!({"Host": "evil"})), "headers.Host"),
            (
                with("headers", json!({"webhook-id": "x"})),
                "headers.webhook-id",
            ),
            (with("headers", json!({"x-a": "a\r\nb: c"})), "headers.x-a"),
            (
                with("headers", json!({"bad name": "x"})),
                "headers.bad name",
            ),
            (with("rate_limit_per_s", json!(0)), "rate_limit_per_s"),
            (with("description", json!("d".repeat(600))), "description"),
        ];
        for (body, field) in cases {
            assert_eq!(
                spec(body.clone()).expect_err(&body.to_string()),
                field,
                "{body}"
            );
        }
        for not_parseable in [
            with("url", json!("not a url")),
            with("event_types", json!(["a..b"])),
        ] {
            assert!(spec(not_parseable).is_err());
        }
    }

    #[test]
    fn retiring_secret_signs_only_during_overlap() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut endpoint = Endpoint {
            id: "ep_1".into(),
            tenant: TenantId::parse("acme").expect("tenant"),
            spec: spec(json!({"url": "https://x.example", "event_types": ["#"]})).expect("spec"),
            secret: SigningSecret::from_random_bytes([1; 32]),
            retiring_secret: Some(RetiringSecret {
                secret: SigningSecret::from_random_bytes([2; 32]),
                until: now + time::Duration::hours(1),
            }),
            created_at: now,
            updated_at: now,
        };
        assert_eq!(endpoint.signing_secrets(now).len(), 2);
        assert_eq!(
            endpoint
                .signing_secrets(now + time::Duration::hours(2))
                .len(),
            1
        );
        endpoint.retiring_secret = None;
        assert_eq!(endpoint.signing_secrets(now).len(), 1);
        let stored = serde_json::to_string(&endpoint).expect("serialize");
        let back: Endpoint = serde_json::from_str(&stored).expect("deserialize");
        assert_eq!(back, endpoint);
    }

    #[test]
    fn hookline_s_own_types_reach_only_endpoints_that_name_them() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let endpoint = |types: serde_json::Value| Endpoint {
            id: "ep_1".into(),
            tenant: TenantId::parse("acme").expect("tenant"),
            spec: spec(json!({"url": "https://x.example", "event_types": types})).expect("spec"),
            secret: SigningSecret::from_random_bytes([1; 32]),
            retiring_secret: None,
            created_at: now,
            updated_at: now,
        };
        let failing = EventType::parse("hookline.endpoint.failing".to_owned()).expect("type");
        let created = EventType::parse("candidate.created".to_owned()).expect("type");
        let everything = endpoint(json!(["#"]));
        assert!(everything.subscribes_to(&created));
        assert!(!everything.subscribes_to(&failing), "# is the ATS's events");
        assert!(!endpoint(json!(["*.endpoint.*"])).subscribes_to(&failing));
        assert!(endpoint(json!(["hookline.endpoint.*"])).subscribes_to(&failing));
        assert!(endpoint(json!(["hookline.#"])).subscribes_to(&failing));
        assert!(!endpoint(json!(["hookline.#"])).subscribes_to(&created));
    }
}

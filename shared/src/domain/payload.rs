//! What a subscriber receives: the body for each payload format.
//!
//! Rendering is pure and happens once per (event, format), never once per attempt: the
//! deliverer signs the same bytes on every retry of a delivery.

use super::event::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// Hookline's envelope: `{"id","type","tenant","timestamp","version"?,"data","changes"?}`.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`: `type`, `id`, `timestamp`, then each top-level
    /// key of `data`, objects and arrays as compact JSON.
    Form,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPayload {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Marks a delivery made by the "send test event" button rather than by the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Live,
    Test,
}

#[derive(Serialize)]
struct JsonEnvelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    tenant: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<&'a std::collections::BTreeMap<String, super::event::Change>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    test: bool,
}

pub fn rfc3339(event: &Event) -> String {
    // Formatting a valid OffsetDateTime as RFC 3339 fails only for years beyond 9999,
    // which the parser that produced it never yields.
    event.occurred_at.format(&Rfc3339).unwrap_or_default()
}

pub fn render(event: &Event, format: PayloadFormat, purpose: Purpose) -> RenderedPayload {
    match format {
        PayloadFormat::Json => {
            let envelope = JsonEnvelope {
                id: &event.id,
                event_type: event.event_type.as_str(),
                tenant: event.tenant.as_str(),
                timestamp: rfc3339(event),
                version: event.version.as_deref(),
                data: &event.data,
                changes: event.changes.as_ref(),
                test: purpose == Purpose::Test,
            };
            RenderedPayload {
                content_type: "application/json",
                // Serializing a tree of serde_json values and strings cannot fail.
                body: serde_json::to_vec(&envelope).unwrap_or_default(),
            }
        }
        PayloadFormat::Form => {
            let mut fields: Vec<(String, String)> = vec![
                ("type".into(), event.event_type.as_str().into()),
                ("id".into(), event.id.clone()),
                ("timestamp".into(), rfc3339(event)),
            ];
            if purpose == Purpose::Test {
                fields.push(("test".into(), "true".into()));
            }
            match &event.data {
                Value::Object(map) => fields.extend(
                    map.iter()
                        .map(|(key, value)| (key.clone(), form_value(value))),
                ),
                Value::Null => {}
                other => fields.push(("data".into(), form_value(other))),
            }
            RenderedPayload {
                content_type: "application/x-www-form-urlencoded",
                body: serde_urlencoded::to_string(&fields)
                    .unwrap_or_default()
                    .into_bytes(),
            }
        }
    }
}

fn form_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{EventMessage, Fallbacks, TenantId};
    use serde_json::json;
    use time::macros::datetime;

    fn event(value: Value) -> Event {
        let message: EventMessage = serde_json::from_value(value).expect("message");
        Event::from_message(
            message,
            Fallbacks {
                tenant: Some(TenantId::parse("acme").expect("tenant")),
                id: "evt_1".into(),
                occurred_at: datetime!(2026-05-04 10:20:30 UTC),
            },
        )
        .expect("event")
    }

    #[test]
    fn json_envelope() {
        let cases = [
            (
                json!({"type": "candidate.interested", "data": {"a": 1}}),
                Purpose::Live,
                json!({"id": "evt_1", "type": "candidate.interested", "tenant": "acme",
                       "timestamp": "2026-05-04T10:20:30Z", "data": {"a": 1}}),
            ),
            (
                json!({"type": "application.status.updated", "version": "3", "data": {},
                       "changes": {"status": {"from": "new", "to": "hired"}}}),
                Purpose::Live,
                json!({"id": "evt_1", "type": "application.status.updated", "tenant": "acme",
                       "timestamp": "2026-05-04T10:20:30Z", "version": "3", "data": {},
                       "changes": {"status": {"from": "new", "to": "hired"}}}),
            ),
            (
                json!({"type": "hookline.ping", "data": null}),
                Purpose::Test,
                json!({"id": "evt_1", "type": "hookline.ping", "tenant": "acme",
                       "timestamp": "2026-05-04T10:20:30Z", "data": null, "test": true}),
            ),
        ];
        for (input, purpose, expected) in cases {
            let rendered = render(&event(input), PayloadFormat::Json, purpose);
            assert_eq!(rendered.content_type, "application/json");
            let body: Value = serde_json::from_slice(&rendered.body).expect("json body");
            assert_eq!(body, expected);
        }
    }

    #[test]
    fn form_fields_follow_data_keys() {
        let rendered = render(
            &event(json!({"type": "profile.parsing.success", "data": {
                "origin": "api", "message": "done", "profile": {"key": "k 1", "tags": [1]}
            }})),
            PayloadFormat::Form,
            Purpose::Live,
        );
        assert_eq!(rendered.content_type, "application/x-www-form-urlencoded");
        // Keys keep the order the ATS sent them in (serde_json's preserve_order).
        assert_eq!(
            String::from_utf8(rendered.body).expect("utf-8"),
            "type=profile.parsing.success&id=evt_1&timestamp=2026-05-04T10%3A20%3A30Z\
             &origin=api&message=done&profile=%7B%22key%22%3A%22k+1%22%2C%22tags%22%3A%5B1%5D%7D"
        );
    }
}

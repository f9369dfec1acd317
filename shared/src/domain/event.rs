//! Events: what the ATS says happened, validated once at the edge.

use super::pattern::EventType;
use super::{Invalid, check_identifier};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const MAX_TENANT_LEN: usize = 64;
pub const MAX_EVENT_ID_LEN: usize = 128;

/// Event ids share the identifier charset, so they are safe in paths and Redis keys.
pub fn validate_event_id(id: &str) -> Result<(), Invalid> {
    check_identifier("id", id, MAX_EVENT_ID_LEN)
}
pub const MAX_VERSION_LEN: usize = 64;
/// Deeper documents are refused: they are never legitimate ATS payloads, and every
/// renderer and filter walks them recursively.
pub const MAX_JSON_DEPTH: usize = 32;

/// A tenant of the ATS: the customer account whose endpoints receive its events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(value: impl Into<String>) -> Result<Self, Invalid> {
        let value = value.into();
        check_identifier("tenant", &value, MAX_TENANT_LEN)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One field's transition, as status-change events carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub from: Value,
    pub to: Value,
}

/// Who caused the event in the ATS, when it says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The event as it travels: the HTTP body, and (with `tenant`) the AMQP message body.
/// Fields are loose here and checked by [`Event::from_message`], so every broken rule
/// is reported with the field's name rather than as a serde error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub occurred_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<BTreeMap<String, Change>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// `realtime` (the default) or `bulk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Events with the same key reach an ordered endpoint one at a time, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Whose personal data the event carries (`candidate:81`): what an erasure names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// How an event competes for delivery capacity. Bulk events (imports, backfills) are
/// delivered with the capacity real-time events leave free, and a floor share so they
/// never starve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Realtime,
    Bulk,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Realtime => "realtime",
            Self::Bulk => "bulk",
        }
    }

    pub fn is_realtime(&self) -> bool {
        *self == Self::Realtime
    }

    fn parse(value: &str) -> Result<Self, Invalid> {
        match value {
            "realtime" => Ok(Self::Realtime),
            "bulk" => Ok(Self::Bulk),
            _ => Err(Invalid::new("priority", "must be \"realtime\" or \"bulk\"")),
        }
    }
}

impl EventMessage {
    /// Every value the caller writes as free-form JSON, named as errors name it. The
    /// patterns list every field without `..`, so a field added to the contract does not
    /// compile until it is listed here or known to be checked elsewhere: each of these
    /// gets the limits of `data`, whatever the transport.
    fn free_form_values(&self) -> Vec<(String, &Value)> {
        let Self {
            id: _,
            tenant: _,
            event_type: _,
            occurred_at: _,
            version: _,
            data,
            changes,
            actor,
            priority: _,
            ordering_key: _,
            subject: _,
        } = self;
        let mut values = vec![("data".to_owned(), data)];
        for (field, Change { from, to }) in changes.iter().flatten() {
            values.push((format!("changes.{field}.from"), from));
            values.push((format!("changes.{field}.to"), to));
        }
        if let Some(Actor {
            id,
            name: _,
            email: _,
        }) = actor
        {
            values.extend(id.iter().map(|id| ("actor.id".to_owned(), id)));
        }
        values
    }
}

/// A validated event. Its `id` is stable for its whole life: it is the `webhook-id`
/// subscribers deduplicate on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub tenant: TenantId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<BTreeMap<String, Change>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default, skip_serializing_if = "Priority::is_realtime")]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// What the edge supplies when the message leaves a field out.
#[derive(Debug, Clone)]
pub struct Fallbacks {
    pub tenant: Option<TenantId>,
    pub id: String,
    pub occurred_at: OffsetDateTime,
}

impl Event {
    /// `occurred_at` as the event's wire form writes it, for bodies that render it.
    pub fn occurred_at_rfc3339(&self) -> String {
        // Formatting a valid OffsetDateTime as RFC 3339 fails only for years beyond
        // 9999, which the parser that produced it never yields.
        self.occurred_at.format(&Rfc3339).unwrap_or_default()
    }

    /// Validates a message. `fallbacks` fill `id` and `occurred_at` when absent; a tenant
    /// given both ways must agree.
    pub fn from_message(message: EventMessage, fallbacks: Fallbacks) -> Result<Self, Invalid> {
        for (field, value) in message.free_form_values() {
            check_depth(&field, value)?;
        }
        let tenant = match (message.tenant, fallbacks.tenant) {
            (Some(given), Some(expected)) if given != expected.as_str() => {
                return Err(Invalid::new(
                    "tenant",
                    "does not match the tenant in the path",
                ));
            }
            (_, Some(expected)) => expected,
            (Some(given), None) => TenantId::parse(given)?,
            (None, None) => return Err(Invalid::new("tenant", "is required")),
        };
        let id = message.id.unwrap_or(fallbacks.id);
        check_identifier("id", &id, MAX_EVENT_ID_LEN)?;
        let event_type = EventType::parse(message.event_type)?;
        if let Some(version) = &message.version
            && (version.is_empty() || version.len() > MAX_VERSION_LEN)
        {
            return Err(Invalid::new(
                "version",
                format_args!("must be 1 to {MAX_VERSION_LEN} characters"),
            ));
        }
        if let Some(key) = &message.ordering_key {
            check_identifier("ordering_key", key, MAX_EVENT_ID_LEN)?;
        }
        if let Some(subject) = &message.subject {
            check_identifier("subject", subject, MAX_EVENT_ID_LEN)?;
        }
        let priority = match &message.priority {
            Some(priority) => Priority::parse(priority)?,
            None => Priority::Realtime,
        };
        Ok(Self {
            id,
            tenant,
            event_type,
            occurred_at: message.occurred_at.unwrap_or(fallbacks.occurred_at),
            version: message.version,
            data: message.data,
            changes: message.changes,
            actor: message.actor,
            priority,
            ordering_key: message.ordering_key,
            subject: message.subject,
        })
    }

    /// The message that carries this event over AMQP: the public contract's body.
    pub fn to_message(&self) -> EventMessage {
        EventMessage {
            id: Some(self.id.clone()),
            tenant: Some(self.tenant.as_str().to_owned()),
            event_type: self.event_type.as_str().to_owned(),
            occurred_at: Some(self.occurred_at),
            version: self.version.clone(),
            data: self.data.clone(),
            changes: self.changes.clone(),
            actor: self.actor.clone(),
            priority: (!self.priority.is_realtime()).then(|| self.priority.as_str().to_owned()),
            ordering_key: self.ordering_key.clone(),
            subject: self.subject.clone(),
        }
    }
}

fn check_depth(field: &str, value: &Value) -> Result<(), Invalid> {
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    if depth(value) > MAX_JSON_DEPTH {
        return Err(Invalid::new(
            field,
            format_args!("nests deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn fallbacks(tenant: Option<&str>) -> Fallbacks {
        Fallbacks {
            tenant: tenant.map(|t| TenantId::parse(t).expect("valid tenant")),
            id: "generated".into(),
            occurred_at: datetime!(2026-01-02 03:04:05 UTC),
        }
    }

    fn message(value: Value) -> EventMessage {
        serde_json::from_value(value).expect("message shape")
    }

    #[test]
    fn fills_defaults_from_the_edge() {
        let event = Event::from_message(
            message(json!({"type": "candidate.interested", "data": {}})),
            fallbacks(Some("acme")),
        )
        .expect("valid");
        assert_eq!(event.id, "generated");
        assert_eq!(event.tenant.as_str(), "acme");
        assert_eq!(event.occurred_at, datetime!(2026-01-02 03:04:05 UTC));
    }

    #[test]
    fn rejections_name_the_field() {
        let deep = (0..40).fold(json!(1), |inner, _| json!([inner]));
        let cases = [
            (json!({"type": "a..b", "data": {}}), Some("acme"), "type"),
            (json!({"type": "A.b", "data": {}}), Some("acme"), "type"),
            (
                json!({"id": "has space", "type": "a.b", "data": {}}),
                Some("acme"),
                "id",
            ),
            (
                json!({"id": "", "type": "a.b", "data": {}}),
                Some("acme"),
                "id",
            ),
            (json!({"type": "a.b", "data": deep}), Some("acme"), "data"),
            (
                json!({"type": "a.b", "data": {}, "version": ""}),
                Some("acme"),
                "version",
            ),
            (json!({"type": "a.b", "data": {}}), None, "tenant"),
            (
                json!({"tenant": "a b", "type": "a.b", "data": {}}),
                None,
                "tenant",
            ),
            (
                json!({"tenant": "other", "type": "a.b", "data": {}}),
                Some("acme"),
                "tenant",
            ),
            (
                json!({"type": "a.b", "data": {}, "priority": "urgent"}),
                Some("acme"),
                "priority",
            ),
            (
                json!({"type": "a.b", "data": {}, "ordering_key": "has space"}),
                Some("acme"),
                "ordering_key",
            ),
        ];
        for (body, tenant, field) in cases {
            let error = Event::from_message(message(body.clone()), fallbacks(tenant))
                .expect_err(&body.to_string());
            assert_eq!(error.field, field, "{body}");
        }
    }

    #[test]
    fn every_free_form_field_has_the_depth_limit_of_data() {
        let nested = |levels: usize| (0..levels).fold(json!(1), |inner, _| json!({"a": inner}));
        let place = |field: &str, value: Value| match field {
            "data" => json!({"type": "a.b", "data": value}),
            "changes.status.from" => {
                json!({"type": "a.b", "data": {}, "changes": {"status": {"from": value, "to": 1}}})
            }
            "changes.status.to" => {
                json!({"type": "a.b", "data": {}, "changes": {"status": {"from": 1, "to": value}}})
            }
            "actor.id" => json!({"type": "a.b", "data": {}, "actor": {"id": value, "name": "Jo"}}),
            other => panic!("no placement for {other}"),
        };
        let fields = [
            "data",
            "changes.status.from",
            "changes.status.to",
            "actor.id",
        ];
        for field in fields {
            for levels in [MAX_JSON_DEPTH + 1, 120] {
                let body = place(field, nested(levels));
                let error = Event::from_message(message(body), fallbacks(Some("acme")))
                    .expect_err(&format!("{field} nested {levels} levels"));
                assert_eq!(error.field, field, "{field} nested {levels} levels");
                assert!(error.message.contains("deeper"), "{error}");
            }
            let at_the_limit = place(field, nested(MAX_JSON_DEPTH));
            Event::from_message(message(at_the_limit), fallbacks(Some("acme")))
                .unwrap_or_else(|error| panic!("{field} at the limit is accepted: {error}"));
        }
    }

    #[test]
    fn message_round_trip_keeps_every_field() {
        let event = Event::from_message(
            message(json!({
                "id": "evt_1", "tenant": "acme", "type": "application.status.updated",
                "occurred_at": "2026-03-01T10:00:00Z", "version": "2", "data": {"a": 1},
                "changes": {"status": {"from": "new", "to": "hired"}},
                "actor": {"id": 7, "name": "Jo", "email": "jo@example.com"},
                "priority": "bulk", "ordering_key": "application:42"
            })),
            fallbacks(None),
        )
        .expect("valid");
        let again = Event::from_message(event.to_message(), fallbacks(None)).expect("valid");
        assert_eq!(event, again);
        // Ingest publishes the event's own serialization as the message body.
        let published: EventMessage =
            serde_json::from_slice(&serde_json::to_vec(&event).expect("serialize"))
                .expect("a message");
        assert_eq!(published, event.to_message());
        assert_eq!(event.priority, Priority::Bulk);
    }

    #[test]
    fn real_time_is_the_default_and_leaves_the_body_as_it_was() {
        let event = Event::from_message(
            message(json!({"type": "a.b", "data": {}, "priority": "realtime"})),
            fallbacks(Some("acme")),
        )
        .expect("valid");
        assert_eq!(event.priority, Priority::Realtime);
        let body = serde_json::to_value(&event).expect("serialize");
        assert!(body.get("priority").is_none(), "{body}");
    }
}

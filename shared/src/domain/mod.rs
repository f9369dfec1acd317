//! The pure core: what an event, an endpoint and a delivery decision are.
//!
//! Nothing in this module does IO, reads a clock or draws random numbers on its own:
//! callers pass `now` and jitter in, so every rule here is table-tested.

pub mod endpoint;
pub mod erasure;
pub mod event;
pub mod filter;
pub mod health;
pub mod notification;
pub mod pattern;
pub mod payload;
pub mod policy;
pub mod quota;
pub mod signing;
pub mod template;
pub mod trace;

use std::fmt;

/// A rule that an input broke, naming the field in the caller's own terms
/// (`type`, `event_types[1]`, `headers.x-foo`), so an API answer can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The same rule broken one level down, e.g. `event_types[2]` inside `endpoint`.
    pub fn within(self, parent: &str) -> Self {
        let field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        Self { field, ..self }
    }
}

/// Identifiers chosen by callers (tenants, event ids, endpoint ids) share one charset:
/// safe in URLs, Redis keys and AMQP headers without escaping.
pub(crate) fn check_identifier(field: &str, value: &str, max_len: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(Invalid::new(
            field,
            format_args!("must be at most {max_len} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(Invalid::new(
            field,
            "may contain only ASCII letters, digits, '_', '-', '.' and ':'",
        ));
    }
    Ok(())
}

/// What the domain's table tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::event::{Event, EventMessage, Fallbacks, TenantId};
    use serde_json::Value;
    use time::OffsetDateTime;

    /// `message` as the edge would accept it for `tenant`, with id `evt_1` and
    /// `occurred_at` filled in where the message leaves them out.
    pub fn event(message: Value, tenant: &str, occurred_at: OffsetDateTime) -> Event {
        let message: EventMessage = serde_json::from_value(message).expect("message");
        Event::from_message(
            message,
            Fallbacks {
                tenant: Some(TenantId::parse(tenant).expect("tenant")),
                id: "evt_1".into(),
                occurred_at,
            },
        )
        .expect("event")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        let cases: &[(&str, bool)] = &[
            ("acme", true),
            ("acme-corp_2.eu:1", true),
            ("", false),
            ("a b", false),
            ("a/b", false),
            ("é", false),
            (&"x".repeat(65), false),
            (&"x".repeat(64), true),
        ];
        for (value, ok) in cases {
            assert_eq!(
                check_identifier("tenant", value, 64).is_ok(),
                *ok,
                "{value:?}"
            );
        }
    }

    #[test]
    fn nested_field_names() {
        assert_eq!(
            Invalid::new("[2]", "x").within("event_types").field,
            "event_types[2]"
        );
        assert_eq!(
            Invalid::new("url", "x").within("endpoint").field,
            "endpoint.url"
        );
        assert_eq!(Invalid::new("", "x").within("data").field, "data");
    }
}

//! Erasure: what an erasure request names (a subject's events, or one event), and which
//! events it covers. A request is kept as a marker (`{prefix}:{tenant}:erasures`: the
//! target → when it was erased, unix ms) that deliverers read with the tenant's
//! endpoints, so an event still in a queue when the erasure ran is dropped, not
//! delivered or stored again.

use super::event::Event;
use super::{Invalid, check_identifier};
use std::collections::HashMap;

/// What one erasure names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErasureTarget {
    /// Every event carrying this `subject` that occurred before the erasure.
    Subject(String),
    /// One event, by id.
    Event(String),
}

const SUBJECT_FIELD: &str = "subject:";
const EVENT_FIELD: &str = "event:";

impl ErasureTarget {
    /// From a request naming exactly one of `subject` and `event_id`.
    pub fn from_request(
        subject: Option<String>,
        event_id: Option<String>,
    ) -> Result<Self, Invalid> {
        match (subject, event_id) {
            (Some(subject), None) => {
                check_identifier("subject", &subject, 128)?;
                Ok(Self::Subject(subject))
            }
            (None, Some(event_id)) => {
                check_identifier("event_id", &event_id, 128)?;
                Ok(Self::Event(event_id))
            }
            (Some(_), Some(_)) => Err(Invalid::new(
                "subject",
                "name either a subject or an event_id, not both",
            )),
            (None, None) => Err(Invalid::new(
                "subject",
                "required: the subject whose events to erase (or an event_id)",
            )),
        }
    }

    /// The marker's field.
    pub fn field(&self) -> String {
        match self {
            Self::Subject(subject) => format!("{SUBJECT_FIELD}{subject}"),
            Self::Event(id) => format!("{EVENT_FIELD}{id}"),
        }
    }

    /// Whether this erasure, made at `erased_at_ms`, covers `event`.
    pub fn covers(&self, event: &Event, erased_at_ms: i64) -> bool {
        match self {
            Self::Event(id) => event.id == *id,
            // A later event about the same person (a new application) is new data.
            Self::Subject(subject) => {
                event.subject.as_deref() == Some(subject.as_str())
                    && occurred_ms(event) <= erased_at_ms
            }
        }
    }
}

fn occurred_ms(event: &Event) -> i64 {
    i64::try_from(event.occurred_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A tenant's erasure markers, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasures {
    subjects: HashMap<String, i64>,
    events: HashMap<String, i64>,
}

impl Erasures {
    /// From the marker hash's fields; unknown fields are ignored.
    pub fn from_fields(fields: HashMap<String, i64>) -> Self {
        let mut erasures = Self::default();
        for (field, at) in fields {
            if let Some(subject) = field.strip_prefix(SUBJECT_FIELD) {
                erasures.subjects.insert(subject.to_owned(), at);
            } else if let Some(id) = field.strip_prefix(EVENT_FIELD) {
                erasures.events.insert(id.to_owned(), at);
            }
        }
        erasures
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty() && self.events.is_empty()
    }

    /// Whether any erasure covers `event`.
    pub fn covers(&self, event: &Event) -> bool {
        if self.is_empty() {
            return false;
        }
        if let Some(&at) = self.events.get(&event.id)
            && ErasureTarget::Event(event.id.clone()).covers(event, at)
        {
            return true;
        }
        event.subject.as_ref().is_some_and(|subject| {
            self.subjects
                .get(subject)
                .is_some_and(|&at| ErasureTarget::Subject(subject.clone()).covers(event, at))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{EventMessage, Fallbacks, TenantId};
    use serde_json::json;
    use time::OffsetDateTime;

    fn event(id: &str, subject: Option<&str>, occurred_ms: i64) -> Event {
        let mut message = json!({"id": id, "type": "candidate.created", "data": {}});
        if let Some(subject) = subject {
            message["subject"] = json!(subject);
        }
        let message: EventMessage = serde_json::from_value(message).expect("message");
        Event::from_message(
            message,
            Fallbacks {
                tenant: Some(TenantId::parse("acme").expect("tenant")),
                id: id.into(),
                occurred_at: OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(occurred_ms) * 1_000_000,
                )
                .expect("time"),
            },
        )
        .expect("event")
    }

    #[test]
    fn a_request_names_a_subject_or_an_event_and_nothing_else() {
        assert_eq!(
            ErasureTarget::from_request(Some("candidate:81".into()), None),
            Ok(ErasureTarget::Subject("candidate:81".into()))
        );
        assert_eq!(
            ErasureTarget::from_request(None, Some("evt_1".into())),
            Ok(ErasureTarget::Event("evt_1".into()))
        );
        for (subject, event) in [
            (None, None),
            (Some("a".to_owned()), Some("b".to_owned())),
            (Some("has space".to_owned()), None),
        ] {
            let invalid = ErasureTarget::from_request(subject, event).expect_err("refused");
            assert_eq!(invalid.field, "subject");
        }
        let invalid = ErasureTarget::from_request(None, Some(String::new())).expect_err("empty");
        assert_eq!(invalid.field, "event_id");
    }

    #[test]
    fn markers_cover_the_subjects_earlier_events_and_named_events() {
        let erasures = Erasures::from_fields(HashMap::from([
            (ErasureTarget::Subject("candidate:81".into()).field(), 1_000),
            (ErasureTarget::Event("evt_9".into()).field(), 1_000),
            ("something:else".into(), 1_000),
        ]));
        assert!(erasures.covers(&event("evt_1", Some("candidate:81"), 999)));
        assert!(erasures.covers(&event("evt_2", Some("candidate:81"), 1_000)));
        assert!(
            !erasures.covers(&event("evt_3", Some("candidate:81"), 1_001)),
            "a later event about the subject is new data"
        );
        assert!(!erasures.covers(&event("evt_4", Some("candidate:82"), 10)));
        assert!(!erasures.covers(&event("evt_5", None, 10)));
        assert!(erasures.covers(&event("evt_9", None, 5_000)));
        assert!(Erasures::default().is_empty());
        assert!(!Erasures::default().covers(&event("evt_9", None, 0)));
    }
}

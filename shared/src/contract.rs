//! What travels between processes: the public AMQP event contract, dead-letter records
//! and retry tasks. Records are versioned tagged enums so a newer deliverer can read what
//! an older one wrote, and the other way round fails loudly rather than silently.

use crate::domain::event::{Event, TenantId};
use crate::domain::policy::{DeadLetterReason, Failure};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `content-type` of every message Hookline publishes and expects.
pub const JSON: &str = "application/json";
/// Header that ingest sets on events it publishes, so metrics can tell HTTP-ingested
/// events from those the ATS published straight to the exchange.
pub const SOURCE_HEADER: &str = "x-hookline-source";
pub const SOURCE_HTTP: &str = "http";
pub const SOURCE_AMQP: &str = "amqp";
/// Header that ingest sets to the tenant's endpoints version when it accepted the event:
/// a deliverer whose cached endpoint list is older reloads it first, so an endpoint
/// created just before the event receives it. Events without it (published straight to
/// the exchange) see endpoint changes within the deliverer's cache TTL.
pub const ENDPOINTS_VERSION_HEADER: &str = "x-hookline-endpoints-version";
/// Header that ingest sets to the time it accepted the event (unix ms): deliverers report
/// how far behind each partition is from it. Direct publishers may set it too; without
/// it the message's `timestamp` property (seconds) is used, if any.
pub const ACCEPTED_AT_HEADER: &str = "x-hookline-accepted-at";
pub use crate::broker::topology::TENANT_HEADER;
/// Header that ingest sets on events with an `ordering_key`: the event's place in its
/// key's order (1, 2, …, per tenant and key, in the order ingest accepted them). A direct
/// publisher may set it; without it deliverers number keyed events as they take them.
pub const SEQUENCE_HEADER: &str = "x-hookline-sequence";
/// W3C trace context of the event, in the AMQP message (as in HTTP): set by ingest (the
/// ATS's request's own, continued, or a new trace), or by a direct publisher.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Set by quorum queues on redelivery: how often the broker handed the message out before.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Dead-letter records on `{prefix}.dead-letter`, readable by any AMQP client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Records are built once and serialised straight away; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum DeadLetter {
    /// A delivery to one endpoint that will not be attempted again.
    DeliveryV1(DeadDelivery),
    /// A message taken off the events queue that was not processed: not a valid event
    /// (`invalid_message`) or handed out too often (`delivery_limit`).
    MessageV1(RejectedMessage),
    /// What the ops queue keeps of a dead delivery: which, why, how often — not the
    /// event, whose one stored copy is the sealed, bounded, erasable index in Redis.
    DeliveryRefV1(DeadDeliveryRef),
}

impl DeadLetter {
    pub fn id(&self) -> &str {
        match self {
            Self::DeliveryV1(d) => &d.id,
            Self::MessageV1(m) => &m.id,
            Self::DeliveryRefV1(r) => &r.id,
        }
    }

    pub fn reason(&self) -> DeadLetterReason {
        match self {
            Self::DeliveryV1(d) => d.reason,
            Self::MessageV1(m) => m.reason,
            Self::DeliveryRefV1(r) => r.reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadDelivery {
    /// `{event id}:{endpoint id}`: one dead letter per delivery, so a redelivered message
    /// that is dead-lettered twice is recognisably the same entry.
    pub id: String,
    pub reason: DeadLetterReason,
    pub endpoint_id: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Failure>,
    #[serde(with = "time::serde::rfc3339")]
    pub dead_lettered_at: OffsetDateTime,
    pub event: Event,
}

impl DeadDelivery {
    /// The record for the ops queue: everything but the event's content.
    pub fn reference(&self) -> DeadDeliveryRef {
        DeadDeliveryRef {
            id: self.id.clone(),
            reason: self.reason,
            tenant: self.event.tenant.clone(),
            event_id: self.event.id.clone(),
            event_type: self.event.event_type.as_str().to_owned(),
            endpoint_id: self.endpoint_id.clone(),
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            dead_lettered_at: self.dead_lettered_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadDeliveryRef {
    pub id: String,
    pub reason: DeadLetterReason,
    pub tenant: TenantId,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Failure>,
    #[serde(with = "time::serde::rfc3339")]
    pub dead_lettered_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedMessage {
    pub id: String,
    pub reason: DeadLetterReason,
    /// What was wrong, naming the field.
    pub error: String,
    pub routing_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The body as received (lossy UTF-8, truncated), for the ATS team to inspect.
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub dead_lettered_at: OffsetDateTime,
}

/// The id of one delivery: the same event at one endpoint.
pub fn delivery_id(event_id: &str, endpoint_id: &str) -> String {
    format!("{event_id}:{endpoint_id}")
}

/// A delivery waiting in Redis for its next attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RetryTask {
    DeliveryV1(PendingDelivery),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDelivery {
    pub endpoint_id: String,
    /// Attempts made so far; 0 for a delivery that was deferred before its first attempt
    /// (endpoint busy) or queued by a replay.
    pub attempts: u32,
    /// Times in a row the delivery found its endpoint too busy and was put back without
    /// an attempt; each doubles the wait, so a hung endpoint's backlog does not churn.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
    /// Set by a deferral: the time (unix ms) it was put back until. A wake brings the
    /// delivery forward only while the pool still has it due then — a claim moves it to
    /// the lease's end, so a delivery some worker holds is never handed out twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Failure>,
    /// A rate-limit slot this delivery already reserved (unix ms): when it comes due it
    /// is attempted without reserving again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_slot_ms: Option<i64>,
    /// The body as first rendered: every retry sends the same bytes, and rendering
    /// happens once per delivery, not once per attempt. Absent before a first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<StoredPayload>,
    /// For a delivery to an ordered endpoint of an event with an `ordering_key`: the
    /// event's place in its key's order. Its completion lets the next one go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    /// The event's `traceparent`, so every attempt of the delivery is in its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Left by an erasure in place of the task (its event stripped of content): the
    /// deliverer that claims it completes it without an attempt, letting an ordered
    /// key's next delivery go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPayload {
    pub content_type: String,
    pub body: String,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl PendingDelivery {
    /// A delivery not attempted yet, nothing held, reserved or rendered.
    pub fn new(event: Event, endpoint_id: String) -> Self {
        Self {
            endpoint_id,
            attempts: 0,
            deferrals: 0,
            held_until_ms: None,
            last_error: None,
            rate_slot_ms: None,
            payload: None,
            sequence: None,
            trace: None,
            erased: false,
            event,
        }
    }

    /// What an erasure leaves of this task: its place (id, lane, order), not its content.
    pub fn tombstone(&self) -> Self {
        let event = Event {
            data: serde_json::Value::Null,
            changes: None,
            actor: None,
            subject: None,
            version: None,
            ..self.event.clone()
        };
        Self {
            sequence: self.sequence,
            erased: true,
            ..Self::new(event, self.endpoint_id.clone())
        }
    }

    pub fn id(&self) -> String {
        delivery_id(&self.event.id, &self.endpoint_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{EventMessage, Fallbacks, TenantId};

    #[test]
    fn records_are_tagged_and_round_trip() {
        let message: EventMessage =
            serde_json::from_str(r#"{"type":"a.b","data":{"x":1}}"#).expect("message");
        let event = Event::from_message(
            message,
            Fallbacks {
                tenant: Some(TenantId::parse("t").expect("tenant")),
                id: "e1".into(),
                occurred_at: OffsetDateTime::UNIX_EPOCH,
            },
        )
        .expect("event");
        let record = DeadLetter::DeliveryV1(DeadDelivery {
            id: delivery_id("e1", "ep_1"),
            reason: DeadLetterReason::RetriesExhausted,
            endpoint_id: "ep_1".into(),
            attempts: 3,
            last_error: None,
            dead_lettered_at: OffsetDateTime::UNIX_EPOCH,
            event,
        });
        let json = serde_json::to_value(&record).expect("serialize");
        assert_eq!(json["type"], "delivery_v1");
        assert_eq!(json["reason"], "retries_exhausted");
        assert_eq!(json["id"], "e1:ep_1");
        let back: DeadLetter = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, record);
    }
}

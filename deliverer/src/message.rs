//! The public AMQP message contract as the deliverer reads it: parsing an event from a
//! delivery, the headers ingest sets, and the record of a message that cannot be
//! delivered at all.

use hookline_shared::contract::{
    DELIVERY_COUNT_HEADER, DeadLetter, RejectedMessage, SOURCE_AMQP, SOURCE_HEADER, SOURCE_HTTP,
};
use hookline_shared::domain::Invalid;
use hookline_shared::domain::event::{Event, EventMessage, Fallbacks};
use hookline_shared::domain::policy::DeadLetterReason;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use time::OffsetDateTime;

/// How much of an unparseable message's body a dead-letter record keeps.
const MAX_REJECTED_BODY: usize = 64 * 1024;

/// Why a message is not an event. Its chain (`error_chain`) names the field first, as
/// an API answer does: `body: expected value at line 1 column 1`, `type: …`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// The body is not an event message in JSON.
    #[error("body")]
    Body(#[source] serde_json::Error),
    #[error(transparent)]
    Event(#[from] Invalid),
}

/// Parses the public AMQP contract. An absent `id` falls back to the `message_id`
/// property, then to a hash of the body — stable across redeliveries, so subscribers can
/// still deduplicate on `webhook-id`.
pub fn parse_event(delivery: &Delivery) -> Result<Event, InvalidMessage> {
    let message: EventMessage =
        serde_json::from_slice(&delivery.data).map_err(InvalidMessage::Body)?;
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_else(|| format!("evt_{}", &hex(&Sha256::digest(&delivery.data))[..32]));
    let occurred_at = delivery
        .properties
        .timestamp()
        .and_then(|seconds| i64::try_from(seconds).ok())
        .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    Ok(Event::from_message(
        message,
        Fallbacks {
            tenant: None,
            id,
            occurred_at,
        },
    )?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The event as the history stores it. Ingest publishes exactly the serialized `Event`,
/// so its bodies are stored as they came; anything else is serialized from the parsed
/// event, with the defaults it was given.
pub fn event_as_stored(event: &Event, delivery: &Delivery) -> Arc<str> {
    if source(delivery) == SOURCE_HTTP
        && let Ok(body) = std::str::from_utf8(&delivery.data)
    {
        return body.into();
    }
    serde_json::to_string(event).unwrap_or_default().into()
}

pub fn source(delivery: &Delivery) -> &'static str {
    if has_source(delivery, SOURCE_HTTP) {
        SOURCE_HTTP
    } else {
        SOURCE_AMQP
    }
}

/// Whether the message's `x-hookline-source` header is `value`: ingest's events (`http`)
/// and Hookline's own operational events (`notice`) say where they come from.
pub fn has_source(delivery: &Delivery, value: &str) -> bool {
    string_header(delivery, SOURCE_HEADER) == Some(value)
}

/// A text header (AMQP long string) that is UTF-8.
pub fn string_header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a str> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        _ => None,
    }
}

pub fn delivery_count(delivery: &Delivery) -> Option<u64> {
    integer_header(delivery, DELIVERY_COUNT_HEADER)
}

/// A non-negative integer header, whichever integer type the publisher chose.
pub fn integer_header(delivery: &Delivery, name: &str) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

pub fn rejected(delivery: &Delivery, reason: DeadLetterReason, error: String) -> DeadLetter {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let body = String::from_utf8_lossy(&delivery.data).into_owned();
    DeadLetter::MessageV1(RejectedMessage {
        id: message_id
            .clone()
            .unwrap_or_else(|| format!("msg_{}", &hex(&Sha256::digest(&delivery.data))[..32])),
        reason,
        error,
        routing_key: delivery.routing_key.as_str().to_owned(),
        message_id,
        body: truncate(body),
        dead_lettered_at: OffsetDateTime::now_utc(),
    })
}

pub fn truncate(mut text: String) -> String {
    if text.len() > MAX_REJECTED_BODY {
        let mut cut = MAX_REJECTED_BODY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

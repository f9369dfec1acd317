//! `POST /v1/tenants/{tenant}/events` and `…/events/batch`: validate, count against the
//! tenant's quota, claim caller-chosen ids, publish with confirms, then answer.
//!
//! Both go through [`validate`] and [`message`], so an event of a batch is held to
//! exactly the rules of a single event and travels exactly as one does.

use super::error::ApiError;
use super::{AppState, body, quota, tenant};
use crate::accepted::Claim;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use hookline_shared::broker::publisher::Outgoing;
use hookline_shared::contract::{
    ACCEPTED_AT_HEADER, ENDPOINTS_VERSION_HEADER, JSON, SEQUENCE_HEADER, SOURCE_HEADER,
    SOURCE_HTTP, TENANT_HEADER, TRACEPARENT_HEADER,
};
use hookline_shared::domain::event::{Event, EventMessage, Fallbacks, TenantId};
use hookline_shared::domain::trace::TraceParent;
use hookline_shared::telemetry::{self, continue_trace};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::Instant;
use time::OffsetDateTime;
use tracing::{Instrument, Span};

#[derive(Debug, Serialize)]
pub struct Accepted {
    id: String,
    duplicate: bool,
}

pub async fn ingest(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    request_headers: HeaderMap,
    request_body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let span = request_span("ingest.event", &raw_tenant);
    let trace = continue_trace(&span, request_trace(&request_headers));
    let answer = ingest_one(state, raw_tenant, request_body, trace)
        .instrument(span.clone())
        .await;
    record_answer(&span, answer.as_ref().map(|(status, _)| *status));
    answer
}

async fn ingest_one(
    state: AppState,
    raw_tenant: String,
    request_body: Body,
    trace: TraceParent,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let tenant = tenant(raw_tenant)?;
    let message: EventMessage =
        body::parse_json(request_body, state.settings.max_event_bytes).await?;
    let caller_chose_id = message.id.is_some();
    let event = validate(&state, tenant, message).await?;
    Span::current().record("event.id", event.id.as_str());
    quota::admit(&state, &event.tenant, 1).await?;

    // Only an id the caller chose can repeat; a generated UUIDv7 cannot, so it skips
    // the dedup claim and reads only the endpoints version.
    let endpoints_version = if caller_chose_id {
        let (claim, version) = state.accepted.claim(&event.tenant, &event.id).await?;
        match claim {
            Claim::New => {}
            Claim::Duplicate => {
                state.metrics.duplicates.inc();
                return Ok(accepted(event.id, true));
            }
            Claim::InFlight => return Err(in_flight()),
        }
        Some(version)
    } else {
        state.accepted.endpoints_version(&event.tenant).await
    };

    let sequence = match &event.ordering_key {
        Some(key) => state
            .sequences
            .next(&event.tenant, &[key])
            .await?
            .first()
            .copied(),
        None => None,
    };
    let published = publish(&state, &event, endpoints_version, sequence, trace).await;
    if caller_chose_id {
        match &published {
            Ok(()) => state.accepted.confirm(&event.tenant, &event.id).await?,
            Err(_) => {
                if let Err(error) = state.accepted.release(&event.tenant, &event.id).await {
                    // The claim expires on its own within a minute; the ATS's retry
                    // with the same id is answered 409 until then.
                    tracing::warn!(error = format!("{:#}", anyhow::Error::from(error)), event.id = %event.id, "releasing dedup claim failed");
                }
            }
        }
    }
    published?;
    state.metrics.event_accepted(event.event_type.as_str());
    Ok(accepted(event.id, false))
}

fn accepted(id: String, duplicate: bool) -> (StatusCode, Json<Accepted>) {
    (StatusCode::ACCEPTED, Json(Accepted { id, duplicate }))
}

fn in_flight() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "duplicate_in_flight",
        "an event with this id is being accepted right now; retry shortly",
    )
    .with_field("id")
}

/// One event as the API takes it: the message made an [`Event`] (fields, sizes, JSON
/// depth), and its type checked against the catalog when `require_known_event_types` is
/// on. Errors name the field within the event.
async fn validate(
    state: &AppState,
    tenant: TenantId,
    message: EventMessage,
) -> Result<Event, ApiError> {
    let event = Event::from_message(
        message,
        Fallbacks {
            tenant: Some(tenant),
            id: uuid::Uuid::now_v7().to_string(),
            occurred_at: OffsetDateTime::now_utc(),
        },
    )
    .map_err(ApiError::invalid)?;
    if event
        .event_type
        .as_str()
        .starts_with(hookline_shared::domain::notification::RESERVED_PREFIX)
    {
        return Err(ApiError::invalid(hookline_shared::Invalid::new(
            "type",
            "hookline.* types are reserved for Hookline's operational events",
        )));
    }
    if state.settings.require_known_event_types
        && !state
            .known_types
            .contains(&state.catalog, event.event_type.as_str())
            .await?
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_event_type",
            "this event type is not in the catalog (api.require_known_event_types is on)",
        )
        .with_field("type"));
    }
    Ok(event)
}

/// The span of one event or batch request; its trace continues the request's.
fn request_span(name: &'static str, tenant: &str) -> Span {
    tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        tenant = tenant,
        event.id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    )
}

/// The request's trace (its `traceparent`), if it has a well-formed one.
fn request_trace(headers: &HeaderMap) -> Option<TraceParent> {
    headers
        .get(TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse)
}

fn record_answer(span: &Span, status: Result<StatusCode, &ApiError>) {
    let status = status.unwrap_or_else(|error| error.status());
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of a publish and its confirm; the messages' `traceparent` names it.
fn publish_span(events: usize) -> Span {
    tracing::info_span!(
        "publish",
        otel.name = "amqp publish",
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.batch.message_count = events,
        outcome = tracing::field::Empty,
    )
}

/// The AMQP body and properties of an event, the same for a single event and a batch's.
fn message(
    event: &Event,
    endpoints_version: Option<u64>,
    sequence: Option<i64>,
    trace: TraceParent,
) -> (Vec<u8>, BasicProperties) {
    // An `Event` serializes to exactly the public message body (see
    // `Event::to_message`), so it is written without an intermediate copy. Serializing
    // strings, numbers and JSON values cannot fail.
    let body = serde_json::to_vec(event).unwrap_or_default();
    let mut headers = FieldTable::default();
    headers.insert(
        SOURCE_HEADER.into(),
        AMQPValue::LongString(SOURCE_HTTP.into()),
    );
    headers.insert(
        TENANT_HEADER.into(),
        AMQPValue::LongString(event.tenant.as_str().into()),
    );
    let accepted_at_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    headers.insert(
        ACCEPTED_AT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(accepted_at_ms).unwrap_or(i64::MAX)),
    );
    if let Some(sequence) = sequence {
        headers.insert(SEQUENCE_HEADER.into(), AMQPValue::LongLongInt(sequence));
    }
    headers.insert(
        TRACEPARENT_HEADER.into(),
        AMQPValue::LongString(trace.to_string().into()),
    );
    if let Some(version) = endpoints_version {
        headers.insert(
            ENDPOINTS_VERSION_HEADER.into(),
            AMQPValue::LongLongInt(i64::try_from(version).unwrap_or(i64::MAX)),
        );
    }
    let properties = BasicProperties::default()
        .with_content_type(JSON.into())
        .with_message_id(event.id.as_str().into())
        .with_timestamp(u64::try_from(event.occurred_at.unix_timestamp()).unwrap_or(0))
        .with_headers(headers);
    (body, properties)
}

async fn publish(
    state: &AppState,
    event: &Event,
    endpoints_version: Option<u64>,
    sequence: Option<i64>,
    trace: TraceParent,
) -> Result<(), ApiError> {
    let span = publish_span(1);
    let trace = telemetry::child_trace(&span, trace);
    let (body, properties) = message(event, endpoints_version, sequence, trace);
    let started = Instant::now();
    let result = state
        .publisher
        .publish(
            &state.topology.partitions_exchange,
            event.event_type.as_str(),
            &body,
            properties,
        )
        .instrument(span.clone())
        .await;
    let result = record_publish(state, started, result);
    record_publish_span(&span, result.reason());
    Ok(result?)
}

fn record_publish_span(span: &Span, failure: Option<&'static str>) {
    span.record("outcome", failure.unwrap_or("confirmed"));
    if failure.is_some() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Counts a publish's outcome in the metrics, and hands it back.
fn record_publish<E: PublishOutcome>(state: &AppState, started: Instant, result: E) -> E {
    let outcome = match result.reason() {
        None => "confirmed",
        Some(reason) => {
            state
                .metrics
                .publish_errors
                .with_label_values(&[reason])
                .inc();
            "failed"
        }
    };
    state
        .metrics
        .publish_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// A publish result, as far as the metrics care.
trait PublishOutcome {
    fn reason(&self) -> Option<&'static str>;
}

impl PublishOutcome for Result<(), hookline_shared::broker::publisher::PublishError> {
    fn reason(&self) -> Option<&'static str> {
        self.as_ref().err().map(|error| error.reason())
    }
}

/// `POST …/events/batch`: `{"events": [...]}`, each event what `POST …/events` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    /// Kept unparsed here, so each event is parsed on its own: one that is malformed
    /// gets its own error instead of failing the batch.
    events: Vec<Box<RawValue>>,
}

/// One event's result in a batch's answer: accepted (`id`, `duplicate`) or refused
/// (`error` as an error answer holds it, its field under `events[i]`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Accepted(Accepted),
    Refused { error: serde_json::Value },
}

#[derive(Debug, Serialize)]
pub struct BatchAnswer {
    results: Vec<Outcome>,
}

/// Where each event of a batch stands while the batch is handled.
enum Slot {
    /// Refused: invalid, or not published.
    Refused(ApiError),
    /// Valid, not yet claimed or published; `caller_chose_id` as for a single event.
    Valid {
        event: Box<Event>,
        caller_chose_id: bool,
    },
    /// Repeats the id of the event at this index, earlier in the batch: answered as a
    /// repeat of that one once it is settled.
    Repeat(usize),
    Accepted {
        id: String,
        duplicate: bool,
    },
}

/// Accepts a batch: every valid event is published, all before any confirm is awaited,
/// and the answer comes once every confirm did (or the confirm timeout passed).
///
/// Refused whole: a body over `api.max_batch_bytes` or with more than
/// `api.max_batch_events` events (413), malformed JSON (400) or not `{"events": [...]}`
/// with at least one event (422), the tenant's quota (429, all events or none),
/// Redis unavailable for the id claims, or the broker not connected (503). Otherwise
/// 200, with one result per event in order: an event that is invalid, whose id is
/// being accepted by another request, or that the broker did not confirm has the error
/// the single endpoint would answer; the others are accepted.
pub async fn ingest_batch(
    State(state): State<AppState>,
    Path(raw_tenant): Path<String>,
    request_headers: HeaderMap,
    request_body: Body,
) -> Result<Json<BatchAnswer>, ApiError> {
    let span = request_span("ingest.batch", &raw_tenant);
    let trace = continue_trace(&span, request_trace(&request_headers));
    let answer = ingest_many(state, raw_tenant, request_body, trace)
        .instrument(span.clone())
        .await;
    record_answer(&span, answer.as_ref().map(|_| StatusCode::OK));
    answer
}

async fn ingest_many(
    state: AppState,
    raw_tenant: String,
    request_body: Body,
    trace: TraceParent,
) -> Result<Json<BatchAnswer>, ApiError> {
    let tenant = tenant(raw_tenant)?;
    let limit = state.settings.max_batch_bytes();
    let bytes = body::read(request_body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a batch's body may be at most {limit} bytes (api.max_batch_bytes)"),
        )
        .with_field("events")
    })?;
    let batch: Batch = body::parse_json_bytes(&bytes)?;
    let max = state.settings.max_batch_events;
    if batch.events.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "a batch holds at most {max} events (api.max_batch_events); this one has {}",
                batch.events.len()
            ),
        )
        .with_field("events"));
    }
    if batch.events.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "must hold at least one event",
        )
        .with_field("events"));
    }

    let mut slots = Vec::with_capacity(batch.events.len());
    for raw in &batch.events {
        slots.push(match parse_one(&state, &tenant, raw).await {
            Ok((event, caller_chose_id)) => Slot::Valid {
                event: Box::new(event),
                caller_chose_id,
            },
            Err(error) => Slot::Refused(error),
        });
    }
    drop(batch);
    let valid = slots
        .iter()
        .filter(|slot| matches!(slot, Slot::Valid { .. }))
        .count();
    if valid > 0 {
        quota::admit(&state, &tenant, valid).await?;
    }

    // Caller-chosen ids are claimed together, each once: a later event of the batch
    // with the same id is a repeat of the first.
    let mut first_with_id: HashMap<String, usize> = HashMap::new();
    let mut claimed = Vec::new();
    for (index, slot) in slots.iter_mut().enumerate() {
        if let Slot::Valid {
            event,
            caller_chose_id: true,
        } = slot
        {
            match first_with_id.get(&event.id) {
                Some(first) => *slot = Slot::Repeat(*first),
                None => {
                    first_with_id.insert(event.id.clone(), index);
                    claimed.push(index);
                }
            }
        }
    }
    let endpoints_version = if claimed.is_empty() {
        state.accepted.endpoints_version(&tenant).await
    } else {
        let ids: Vec<&str> = claimed.iter().map(|&i| slot_id(&slots[i])).collect();
        let (claims, version) = state.accepted.claim_many(&tenant, &ids).await?;
        for (&index, claim) in claimed.iter().zip(claims) {
            match claim {
                Claim::New => {}
                Claim::Duplicate => {
                    state.metrics.duplicates.inc();
                    let id = slot_id(&slots[index]).to_owned();
                    slots[index] = Slot::Accepted {
                        id,
                        duplicate: true,
                    };
                }
                Claim::InFlight => slots[index] = Slot::Refused(in_flight()),
            }
        }
        Some(version)
    };

    let to_publish: Vec<usize> = (0..slots.len())
        .filter(|&i| matches!(slots[i], Slot::Valid { .. }))
        .collect();
    // Keyed events are numbered in the batch's order, in one round trip.
    let keyed: Vec<(usize, &str)> = to_publish
        .iter()
        .filter_map(|&i| match &slots[i] {
            Slot::Valid { event, .. } => Some((i, event.ordering_key.as_deref()?)),
            _ => None,
        })
        .collect();
    let numbers = state
        .sequences
        .next(
            &tenant,
            &keyed.iter().map(|(_, key)| *key).collect::<Vec<_>>(),
        )
        .await?;
    let sequences: HashMap<usize, i64> = keyed.iter().map(|(i, _)| *i).zip(numbers).collect();
    let publish_span = publish_span(to_publish.len());
    let trace = telemetry::child_trace(&publish_span, trace);
    let messages: Vec<(Vec<u8>, BasicProperties)> = to_publish
        .iter()
        .filter_map(|&i| match &slots[i] {
            Slot::Valid { event, .. } => Some(message(
                event,
                endpoints_version,
                sequences.get(&i).copied(),
                trace,
            )),
            _ => None,
        })
        .collect();
    let outgoing = to_publish
        .iter()
        .zip(&messages)
        .map(|(&i, (body, properties))| Outgoing {
            routing_key: match &slots[i] {
                Slot::Valid { event, .. } => event.event_type.as_str(),
                _ => "",
            },
            body,
            properties: properties.clone(),
        })
        .collect();
    let started = Instant::now();
    let published = if to_publish.is_empty() {
        Ok(Vec::new())
    } else {
        state
            .publisher
            .publish_many(&state.topology.partitions_exchange, outgoing)
            .instrument(publish_span.clone())
            .await
    };
    record_publish_span(
        &publish_span,
        published.as_ref().err().map(|error| error.reason()),
    );
    let published = match published {
        Ok(results) => results,
        Err(error) => {
            // Nothing was published: every claim of this request goes back.
            let mine: Vec<&str> = to_publish
                .iter()
                .filter(|&&i| caller_chose(&slots[i]))
                .map(|&i| slot_id(&slots[i]))
                .collect();
            release(&state, &tenant, &mine).await;
            // Counted as the single endpoint counts each event it could not publish.
            state
                .metrics
                .publish_errors
                .with_label_values(&[error.reason()])
                .inc_by(u64::try_from(to_publish.len()).unwrap_or(u64::MAX));
            return Err(ApiError::from(error));
        }
    };

    let (mut confirmed, mut failed) = (Vec::new(), Vec::new());
    for (&index, result) in to_publish.iter().zip(published) {
        let result = record_publish(&state, started, result);
        let (event, caller_chose_id) =
            match std::mem::replace(&mut slots[index], Slot::Repeat(index)) {
                Slot::Valid {
                    event,
                    caller_chose_id,
                } => (event, caller_chose_id),
                // Only valid events were published.
                other => {
                    slots[index] = other;
                    continue;
                }
            };
        if caller_chose_id {
            match &result {
                Ok(()) => confirmed.push(event.id.clone()),
                Err(_) => failed.push(event.id.clone()),
            }
        }
        slots[index] = match result {
            Ok(()) => {
                state.metrics.event_accepted(event.event_type.as_str());
                Slot::Accepted {
                    id: event.id,
                    duplicate: false,
                }
            }
            Err(error) => Slot::Refused(ApiError::from(error)),
        };
    }
    let confirmed: Vec<&str> = confirmed.iter().map(String::as_str).collect();
    if let Err(error) = state.accepted.confirm_many(&tenant, &confirmed).await {
        // The events are published, and the answer says so. Their claims expire within
        // a minute; until then a repeat of one of these ids is answered 409, after that
        // it would be published again.
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::from(error)),
            "marking a batch's ids accepted failed"
        );
    }
    let failed: Vec<&str> = failed.iter().map(String::as_str).collect();
    release(&state, &tenant, &failed).await;

    // A repeat follows the first event with its id, which is earlier and settled.
    for index in 0..slots.len() {
        if let Slot::Repeat(first) = slots[index] {
            slots[index] = match &slots[first] {
                Slot::Accepted { id, .. } => {
                    state.metrics.duplicates.inc();
                    Slot::Accepted {
                        id: id.clone(),
                        duplicate: true,
                    }
                }
                _ => Slot::Refused(
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "duplicate_in_batch",
                        format!(
                            "events[{first}] has the same id and was not accepted; send \
                             each id once"
                        ),
                    )
                    .with_field("id"),
                ),
            };
        }
    }
    let results = slots
        .into_iter()
        .enumerate()
        .map(|(index, slot)| match slot {
            Slot::Accepted { id, duplicate } => Outcome::Accepted(Accepted { id, duplicate }),
            Slot::Refused(error) => Outcome::Refused {
                error: error.within(&format!("events[{index}]")).detail(),
            },
            // Every valid event was claimed or published above, and every repeat
            // resolved; nothing is left to answer for.
            Slot::Valid { .. } | Slot::Repeat(_) => Outcome::Refused {
                error: ApiError::unavailable("the event broker")
                    .within(&format!("events[{index}]"))
                    .detail(),
            },
        })
        .collect();
    Ok(Json(BatchAnswer { results }))
}

/// One raw event of a batch, held to the single endpoint's rules: its size
/// (`api.max_event_bytes`), its JSON and its fields. Errors name `events[i]…` once
/// [`refused`] places them.
async fn parse_one(
    state: &AppState,
    tenant: &TenantId,
    raw: &RawValue,
) -> Result<(Event, bool), ApiError> {
    let limit = state.settings.max_event_bytes;
    if raw.get().len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the event exceeds {limit} bytes (api.max_event_bytes)"),
        ));
    }
    let message: EventMessage = body::parse_json_bytes(raw.get().as_bytes())?;
    let caller_chose_id = message.id.is_some();
    Ok((
        validate(state, tenant.clone(), message).await?,
        caller_chose_id,
    ))
}

fn slot_id(slot: &Slot) -> &str {
    match slot {
        Slot::Valid { event, .. } => &event.id,
        Slot::Accepted { id, .. } => id,
        _ => "",
    }
}

fn caller_chose(slot: &Slot) -> bool {
    matches!(
        slot,
        Slot::Valid {
            caller_chose_id: true,
            ..
        }
    )
}

async fn release(state: &AppState, tenant: &TenantId, ids: &[&str]) {
    if let Err(error) = state.accepted.release_many(tenant, ids).await {
        // The claims expire on their own within a minute; a retry with one of these
        // ids is answered 409 until then.
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::from(error)),
            "releasing a batch's dedup claims failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_body_is_refused_whole_only_for_its_own_shape() {
        // (body, status, field); each event's own shape is left to `parse_one`.
        type Refusal = Option<(u16, &'static str)>;
        let cases: [(&[u8], Refusal); 7] = [
            (
                br#"{"events": [{"type": "a.b", "data": {}}, 1, "x", {"bad": true}]}"#,
                None,
            ),
            (br#"{"events": []}"#, None),
            (br#"{"events": {"type": "a.b"}}"#, Some((422, "events"))),
            (br#"{}"#, Some((422, "events"))),
            (br#"{"events": [], "extra": 1}"#, Some((422, "extra"))),
            (br#"{"events": [{"type": "a.b"},"#, Some((400, ""))),
            // serde reads a list as the struct's fields in order: the first is `events`.
            (br#"[{"type": "a.b", "data": {}}]"#, Some((422, "[0]"))),
        ];
        for (body, refused) in cases {
            let parsed = body::parse_json_bytes::<Batch>(body);
            let context = String::from_utf8_lossy(body);
            match (parsed, refused) {
                (Ok(_), None) => {}
                (Err(error), Some((status, field))) => {
                    assert_eq!(error.status().as_u16(), status, "{context}");
                    assert_eq!(error.field().unwrap_or(""), field, "{context}");
                }
                (parsed, _) => panic!("{context}: {parsed:?}"),
            }
        }
        let batch = body::parse_json_bytes::<Batch>(br#"{"events": [{"type": "a.b"}, 1]}"#)
            .expect("a list");
        let raw: Vec<&str> = batch.events.iter().map(|event| event.get()).collect();
        assert_eq!(raw, [r#"{"type": "a.b"}"#, "1"], "each event kept as sent");
    }

    #[test]
    fn an_error_inside_a_batch_names_the_event_and_its_field() {
        let cases = [
            (Some("type"), "events[3].type"),
            (Some("data.a"), "events[3].data.a"),
            (Some("[0]"), "events[3][0]"),
            (None, "events[3]"),
        ];
        for (field, placed) in cases {
            let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "m");
            let error = match field {
                Some(field) => error.with_field(field),
                None => error,
            };
            let detail = error.within("events[3]").detail();
            assert_eq!(detail["field"], placed, "{field:?}");
            assert_eq!(detail["code"], "invalid_field");
        }
    }
}

//! W3C trace context: the ATS's `traceparent` (HTTP or AMQP) is continued through
//! RabbitMQ into every webhook request — a new span each attempt, the same trace — and an
//! event without one starts a trace of its own; an endpoint can opt out.

use hookline_shared::domain::trace::TraceParent;
use hookline_tests::{Hookline, Receiver};
use serde_json::json;

const ATS_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traces(receiver: &Receiver) -> Vec<TraceParent> {
    receiver
        .received()
        .iter()
        .map(|r| {
            TraceParent::parse(r.header("traceparent").expect("a traceparent header"))
                .expect("a valid traceparent")
        })
        .collect()
}

#[tokio::test]
async fn every_attempt_continues_the_ats_trace_under_a_span_of_its_own() {
    let hookline = Hookline::builder().retry_schedule("50ms").start().await;
    let receiver = Receiver::answering(&[500]).await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let answer = hookline
        .http
        .post(hookline.url("/v1/tenants/acme/events"))
        .bearer_auth(hookline_tests::TOKEN)
        .header("traceparent", ATS_TRACE)
        .json(&json!({"type": "candidate.created", "data": {}}))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(answer.status(), 202);
    receiver.wait_for(2).await;
    let ats = TraceParent::parse(ATS_TRACE).expect("valid");
    let seen = traces(&receiver);
    assert!(seen.iter().all(|t| t.trace_id == ats.trace_id), "{seen:?}");
    assert!(
        seen.iter().all(|t| t.parent_id != ats.parent_id),
        "spans of Hookline's own"
    );
    assert_ne!(
        seen[0].parent_id, seen[1].parent_id,
        "a span per attempt, the retry's too"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn an_event_without_a_trace_starts_one_and_an_endpoint_can_opt_out() {
    let hookline = Hookline::start().await;
    let traced = Receiver::start().await;
    let untraced = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": traced.url(), "event_types": ["#"]}))
        .await;
    let opted_out = hookline
        .create_endpoint(
            "acme",
            json!({"url": untraced.url(), "event_types": ["#"], "send_traceparent": false}),
        )
        .await;
    assert_eq!(opted_out["send_traceparent"], false);
    for n in 0..2 {
        let answer = hookline
            .post_event(
                "acme",
                json!({"type": "candidate.created", "data": {"n": n}}),
            )
            .await;
        assert_eq!(answer.status, 202);
    }
    traced.wait_for(2).await;
    let seen = traces(&traced);
    assert_ne!(seen[0].trace_id, seen[1].trace_id, "a trace per event");
    untraced.wait_for(2).await;
    assert!(
        untraced
            .received()
            .iter()
            .all(|r| r.header("traceparent").is_none()),
        "the opted-out endpoint gets no traceparent"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn a_direct_publisher_s_trace_reaches_the_receiver() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(ATS_TRACE.into()),
    );
    let body = json!({"tenant": "acme", "type": "candidate.created", "data": {}});
    hookline
        .publish_direct(
            "candidate.created",
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_headers(headers),
        )
        .await;
    receiver.wait_for(1).await;
    let ats = TraceParent::parse(ATS_TRACE).expect("valid");
    assert_eq!(traces(&receiver)[0].trace_id, ats.trace_id);
    hookline.stop().await;
}

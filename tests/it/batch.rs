//! `POST /v1/tenants/{t}/events/batch`: every event of a batch held to the single
//! endpoint's rules, each answered on its own, the valid ones delivered.

use hookline_tests::{Hookline, Receiver};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;

async fn post_batch(
    hookline: &Hookline,
    tenant: &str,
    events: Vec<Value>,
) -> hookline_tests::Answer {
    hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/events/batch"),
            Some(json!({ "events": events })),
        )
        .await
}

fn results(answer: &hookline_tests::Answer) -> &Vec<Value> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["results"].as_array().expect("results")
}

#[tokio::test]
async fn every_event_of_a_batch_arrives_at_the_receiver() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let events: Vec<Value> = (0..50)
        .map(|i| json!({"type": "candidate.created", "data": {"n": i}}))
        .collect();
    let answer = post_batch(&hookline, "acme", events).await;
    let results = results(&answer);
    assert_eq!(results.len(), 50);
    let ids: HashSet<String> = results
        .iter()
        .map(|result| {
            assert_eq!(result["duplicate"], false, "{result}");
            result["id"].as_str().expect("an id for each").to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 50, "each event has its own id");
    let received = receiver.wait_for(50).await;
    let delivered: HashSet<String> = received
        .iter()
        .map(|r| r.header("webhook-id").expect("webhook-id").to_owned())
        .collect();
    assert_eq!(delivered, ids);
    let numbers: HashSet<i64> = received
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(numbers, (0..50).collect());
    assert_eq!(
        hookline
            .metric(
                hookline.ingest_admin,
                "hookline_events_accepted_total",
                &[("event_type", "candidate.created")],
            )
            .await,
        50.0
    );
    hookline.stop().await;
}

#[tokio::test]
async fn invalid_events_are_answered_each_by_index_while_the_valid_ones_arrive() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__MAX_EVENT_BYTES", "1024")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let events = vec![
        json!({"id": "b-0", "type": "candidate.created", "data": {}}),
        json!({"id": "b-1", "type": "Not A Type", "data": {}}),
        json!({"id": "b-2", "type": "candidate.created"}),
        json!({"id": "b-3", "type": "candidate.created", "data": {}, "tenant": "beta"}),
        json!("not an object"),
        json!({"id": "b-5", "type": "candidate.created", "data": {"pad": "x".repeat(2000)}}),
        json!({"id": "b-6", "type": "candidate.updated", "data": {}, "occurred_at": "yesterday"}),
        json!({"id": "b-7", "type": "candidate.updated", "data": {}}),
    ];
    let answer = post_batch(&hookline, "acme", events).await;
    let results = results(&answer);
    let expected: [(usize, &str); 6] = [
        (1, "events[1].type"),
        (2, "events[2].data"),
        (3, "events[3].tenant"),
        (4, "events[4]"),
        (5, "events[5]"),
        (6, "events[6].occurred_at"),
    ];
    for (index, field) in expected {
        let error = &results[index]["error"];
        assert_eq!(error["field"], field, "{index}: {}", results[index]);
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{error}"
        );
    }
    assert_eq!(results[5]["error"]["code"], "body_too_large");
    for (index, id) in [(0, "b-0"), (7, "b-7")] {
        assert_eq!(results[index], json!({"id": id, "duplicate": false}));
    }
    let received = receiver.wait_for(2).await;
    let mut delivered: Vec<&str> = received
        .iter()
        .map(|r| r.header("webhook-id").expect("webhook-id"))
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, ["b-0", "b-7"]);
    hookline.stop().await;
}

#[tokio::test]
async fn repeated_ids_are_answered_duplicate_and_published_once() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let event = |id: &str| json!({"id": id, "type": "candidate.created", "data": {}});
    // Already accepted on its own, then twice in one batch.
    assert_eq!(hookline.post_event("acme", event("d-1")).await.status, 202);
    let answer = post_batch(
        &hookline,
        "acme",
        vec![event("d-1"), event("d-2"), event("d-2"), event("d-3")],
    )
    .await;
    assert_eq!(
        results(&answer),
        &vec![
            json!({"id": "d-1", "duplicate": true}),
            json!({"id": "d-2", "duplicate": false}),
            json!({"id": "d-2", "duplicate": true}),
            json!({"id": "d-3", "duplicate": false}),
        ]
    );
    // The same batch again: all duplicates.
    let again = post_batch(&hookline, "acme", vec![event("d-2"), event("d-3")]).await;
    assert_eq!(
        results(&again),
        &vec![
            json!({"id": "d-2", "duplicate": true}),
            json!({"id": "d-3", "duplicate": true}),
        ]
    );
    // And the single endpoint sees the batch's ids.
    let single = hookline.post_event("acme", event("d-3")).await;
    assert_eq!(single.body["duplicate"], true, "{}", single.body);
    receiver.wait_for(3).await;
    hookline_tests::eventually("no more deliveries than distinct ids", || async {
        receiver.received().len() == 3
    })
    .await;
    hookline.stop().await;
}

#[tokio::test]
async fn a_batch_over_a_limit_or_malformed_is_refused_whole_naming_events() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__MAX_BATCH_EVENTS", "3")
        .setting("HOOKLINE__API__MAX_EVENT_BYTES", "1024")
        .setting("HOOKLINE__API__MAX_BATCH_BYTES", "4096")
        .start()
        .await;
    let event = json!({"type": "candidate.created", "data": {}});
    let too_many = post_batch(&hookline, "acme", vec![event.clone(); 4]).await;
    assert_eq!(too_many.status, 413, "{}", too_many.body);
    assert_eq!(too_many.body["error"]["code"], "too_many_events");
    assert_eq!(too_many.body["error"]["field"], "events");
    assert!(
        too_many.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.max_batch_events") && m.contains('3')),
        "{}",
        too_many.body
    );
    let padded = json!({"type": "candidate.created", "data": {"pad": "x".repeat(1500)}});
    let too_big = post_batch(&hookline, "acme", vec![padded; 3]).await;
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert_eq!(too_big.body["error"]["field"], "events");
    assert!(
        too_big.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.max_batch_bytes")),
        "{}",
        too_big.body
    );
    let empty = post_batch(&hookline, "acme", vec![]).await;
    empty.assert_invalid("events", "an empty batch");
    let not_a_list = hookline
        .call(
            Method::POST,
            "/v1/tenants/acme/events/batch",
            Some(json!({"events": {"type": "a.b"}})),
        )
        .await;
    not_a_list.assert_invalid("events", "events not a list");
    let malformed = hookline
        .http
        .post(hookline.url("/v1/tenants/acme/events/batch"))
        .bearer_auth(hookline_tests::TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"events": [{"type": "a.b", "data": {}},"#)
        .send()
        .await
        .expect("reachable");
    let malformed = hookline_tests::answer(malformed).await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert_eq!(malformed.body["error"]["code"], "invalid_json");
    hookline.stop().await;
}

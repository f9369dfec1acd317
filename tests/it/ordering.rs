//! Ordered endpoints: each ordering key's events arrive one at a time, in the order
//! ingest accepted them, through failures and retries; a failing key holds back only
//! itself; unordered endpoints and events without a key are not held.

use hookline_tests::{Hookline, Receiver, eventually};
use serde_json::{Value, json};
use std::collections::HashMap;

async fn post(hookline: &Hookline, body: Value) -> String {
    let answer = hookline.post_event("acme", body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    answer.body["id"].as_str().expect("id").to_owned()
}

/// The event ids of each key in the order of their first 2xx answer.
fn first_successes(
    receiver: &Receiver,
    succeeded: impl Fn(&Value) -> bool,
) -> HashMap<String, Vec<String>> {
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for received in receiver.received() {
        let body = received.json();
        if !succeeded(&body) {
            continue;
        }
        let key = body["data"]["key"].as_str().unwrap_or_default().to_owned();
        let id = received
            .header("webhook-id")
            .expect("webhook-id")
            .to_owned();
        let ids = order.entry(key).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    order
}

#[tokio::test]
async fn a_failing_event_holds_back_only_the_later_events_of_its_key() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms")
        // One failure in a row must not open the circuit for the whole endpoint.
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "100")
        .start()
        .await;
    let receiver = Receiver::start().await;
    let unordered = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["#"], "ordered": true}),
        )
        .await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": unordered.url(), "event_types": ["#"]}),
        )
        .await;
    // Key "a" fails while the first event of it is not answered with success.
    receiver.set_rule(Some(|body: &[u8]| {
        let body: Value = serde_json::from_slice(body).ok()?;
        (body["data"]["key"] == "a" && body["data"]["n"] == 0).then_some(500)
    }));

    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    for n in 0..5 {
        for key in ["a", "b"] {
            let id = post(
                &hookline,
                json!({"type": "application.status.updated", "ordering_key": format!("application:{key}"),
                       "data": {"key": key, "n": n}}),
            )
            .await;
            sent.entry(key).or_default().push(id);
        }
    }
    // Key b goes through while key a's first event keeps failing.
    eventually("key b arrives in order", || async {
        first_successes(&receiver, |b| b["data"]["key"] == "b")
            .get("b")
            .is_some_and(|ids| ids.len() == 5)
    })
    .await;
    assert_eq!(
        first_successes(&receiver, |b| b["data"]["key"] == "b")["b"],
        sent["b"]
    );
    let a_received: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["data"]["key"] == "a")
        .collect();
    assert!(
        a_received.iter().all(|b| b["data"]["n"] == 0),
        "nothing after key a's failing event was sent: {a_received:?}"
    );
    // The unordered endpoint of the same tenant got everything meanwhile.
    unordered.wait_for(10).await;
    // The later events say what they wait behind.
    let state = hookline
        .get_until(
            &format!("/v1/tenants/acme/events/{}", sent["a"][2]),
            |body| {
                body["deliveries"]
                    .as_object()
                    .is_some_and(|d| d.values().any(|s| s["status"] == "held_behind"))
            },
        )
        .await;
    let held = state["deliveries"]
        .as_object()
        .expect("deliveries")
        .values()
        .find(|s| s["status"] == "held_behind")
        .expect("held");
    assert_eq!(held["blocked_by"], sent["a"][0].as_str(), "{state}");

    // The receiver recovers: key a's events follow, in order.
    receiver.set_rule(None::<fn(&[u8]) -> Option<u16>>);
    eventually("key a arrives", || async {
        first_successes(&receiver, |_| true)
            .get("a")
            .is_some_and(|ids| ids.len() == 5)
    })
    .await;
    let order = first_successes(&receiver, |_| true);
    assert_eq!(order["a"], sent["a"]);
    hookline.stop().await;
}

#[tokio::test]
async fn a_dead_lettered_event_lets_its_key_go_on() {
    let hookline = Hookline::builder()
        .retry_schedule("50ms,50ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "100")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["#"], "ordered": true}),
        )
        .await;
    receiver.set_rule(Some(|body: &[u8]| {
        let body: Value = serde_json::from_slice(body).ok()?;
        (body["data"]["n"] == 1).then_some(500)
    }));
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            post(
                &hookline,
                json!({"type": "candidate.created", "ordering_key": "candidate:7", "data": {"key": "c", "n": n}}),
            )
            .await,
        );
    }
    eventually("the events after the dead letter arrive", || async {
        first_successes(&receiver, |b| b["data"]["n"] != 1)
            .get("c")
            .is_some_and(|got| got.len() == 3)
    })
    .await;
    let order = first_successes(&receiver, |b| b["data"]["n"] != 1);
    assert_eq!(
        order["c"],
        vec![ids[0].clone(), ids[2].clone(), ids[3].clone()]
    );
    // Event 1 was given up on (three attempts) before event 2 was sent.
    let received = receiver.received();
    let last_of_1 = received
        .iter()
        .rposition(|r| r.json()["data"]["n"] == 1)
        .expect("event 1 was attempted");
    let first_of_2 = received
        .iter()
        .position(|r| r.json()["data"]["n"] == 2)
        .expect("event 2 arrived");
    assert!(
        last_of_1 < first_of_2,
        "event 2 waited for event 1's dead letter"
    );
    assert_eq!(
        received
            .iter()
            .filter(|r| r.json()["data"]["n"] == 1)
            .count(),
        3,
        "event 1: its whole schedule"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn events_without_a_key_and_unordered_endpoints_are_not_held() {
    let hookline = Hookline::builder()
        .retry_schedule("1m")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "100")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["#"], "ordered": true}),
        )
        .await;
    receiver.set_rule(Some(|body: &[u8]| {
        let body: Value = serde_json::from_slice(body).ok()?;
        (body["data"]["n"] == 0).then_some(500)
    }));
    // The first event fails and waits a minute for its retry; the keyless ones after
    // it are not held behind it.
    post(&hookline, json!({"type": "a.b", "data": {"n": 0}})).await;
    post(&hookline, json!({"type": "a.b", "data": {"n": 1}})).await;
    post(&hookline, json!({"type": "a.b", "data": {"n": 2}})).await;
    let received = receiver.wait_for(3).await;
    let mut numbers: Vec<i64> = received
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().expect("n"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![0, 1, 2]);
    hookline.stop().await;
}

/// Publishes a keyed event straight to the exchange with the number `sequence`.
async fn publish_numbered(hookline: &Hookline, n: i64, sequence: i64) {
    use lapin::types::{AMQPValue, FieldTable};
    let mut headers = FieldTable::default();
    headers.insert(
        "x-hookline-sequence".into(),
        AMQPValue::LongLongInt(sequence),
    );
    headers.insert(
        "x-hookline-tenant".into(),
        AMQPValue::LongString("acme".into()),
    );
    let body = json!({"tenant": "acme", "id": format!("evt-{n}"), "type": "application.status.updated",
                      "ordering_key": "application:1", "data": {"key": "k", "n": n}});
    hookline
        .publish_direct(
            "application.status.updated",
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_headers(headers),
        )
        .await;
}

#[tokio::test]
async fn a_missing_event_is_waited_for_and_goes_first_when_it_arrives() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__ORDERING_GAP", "10m")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["#"], "ordered": true}),
        )
        .await;
    publish_numbered(&hookline, 1, 1).await;
    receiver.wait_for(1).await;
    // Number 2 is late: number 3 waits for it (the gap is ten minutes here).
    publish_numbered(&hookline, 3, 3).await;
    let state = hookline
        .get_until("/v1/tenants/acme/events/evt-3", |body| {
            body["deliveries"]
                .as_object()
                .is_some_and(|d| d.values().any(|s| s["status"] == "held_behind"))
        })
        .await;
    assert!(receiver.count() == 1, "number 3 waits: {state}");
    publish_numbered(&hookline, 2, 2).await;
    receiver.wait_for(3).await;
    let order: Vec<i64> = receiver
        .received()
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(order, vec![1, 2, 3]);
    hookline.stop().await;
}

#[tokio::test]
async fn a_number_that_never_arrives_holds_its_key_for_the_gap_only() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__ORDERING_GAP", "1s")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["#"], "ordered": true}),
        )
        .await;
    publish_numbered(&hookline, 1, 1).await;
    publish_numbered(&hookline, 3, 3).await;
    publish_numbered(&hookline, 4, 4).await;
    receiver.wait_for(3).await;
    let order: Vec<i64> = receiver
        .received()
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(order, vec![1, 3, 4], "in order, past the gap");
    // Number 2 arrives after all: delivered, out of order, rather than never.
    publish_numbered(&hookline, 2, 2).await;
    receiver.wait_for(4).await;
    hookline.stop().await;
}

#[tokio::test]
async fn events_an_ordered_endpoint_does_not_receive_do_not_hold_its_key() {
    let hookline = Hookline::builder()
        // Were the key to wait for the unmatched event's number, it would wait this long.
        .setting("HOOKLINE__DELIVERY__ORDERING_GAP", "10m")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["application.#"], "ordered": true}),
        )
        .await;
    let key = "application:9";
    let first = post(
        &hookline,
        json!({"type": "application.created", "ordering_key": key, "data": {"key": "k", "n": 1}}),
    )
    .await;
    post(
        &hookline,
        json!({"type": "candidate.updated", "ordering_key": key, "data": {"key": "k", "n": 2}}),
    )
    .await;
    let third = post(
        &hookline,
        json!({"type": "application.updated", "ordering_key": key, "data": {"key": "k", "n": 3}}),
    )
    .await;
    let received = receiver.wait_for(2).await;
    let ids: Vec<&str> = received
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(ids, vec![first.as_str(), third.as_str()]);
    hookline.stop().await;
}

#[tokio::test]
async fn deleting_an_ordered_endpoint_dead_letters_its_queued_deliveries_too() {
    let hookline = Hookline::builder()
        .retry_schedule("200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "100")
        .start()
        .await;
    let receiver = Receiver::answering(&[]).await;
    receiver.set_status(500);
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["#"], "ordered": true}),
        )
        .await;
    for n in 0..4 {
        post(
            &hookline,
            json!({"type": "a.b", "ordering_key": "k", "data": {"key": "k", "n": n}}),
        )
        .await;
    }
    receiver.wait_for(1).await;
    let path = format!(
        "/v1/tenants/acme/endpoints/{}",
        endpoint["id"].as_str().expect("id")
    );
    let deleted = hookline.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    eventually("every delivery of the key is dead-lettered", || async {
        hookline.get("/v1/tenants/acme/dead-letters").await.body["data"]
            .as_array()
            .is_some_and(|d| d.len() == 4)
    })
    .await;
    eventually("nothing is left in the pool", || async {
        hookline.retry_pool().await.is_empty()
    })
    .await;
    let records = hookline.get("/v1/tenants/acme/dead-letters").await.body;
    assert!(
        records["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|r| r["reason"] == "endpoint_deleted"),
        "{records}"
    );
    hookline.stop().await;
}

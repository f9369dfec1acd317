//! Endpoints disabled automatically (410 Gone, no success for the window), what is
//! dead-lettered meanwhile, and replay once re-enabled.

use crate::support::{health_state, subscribe_to_everything};
use hookline_tests::{Hookline, Receiver, eventually};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn gone_disables_and_dead_letters_then_replay_after_re_enabling_delivers() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms")
        .start()
        .await;
    let receiver = Receiver::start().await;
    receiver.set_status(410);
    let (endpoint, path) = subscribe_to_everything(&hookline, &receiver).await;
    let first = hookline
        .post_event("acme", json!({"type": "a.b", "data": {"n": 1}}))
        .await;
    eventually("410 disables the endpoint", || async {
        health_state(&hookline, &path).await["state"] == "disabled"
    })
    .await;
    let view = hookline.get(&path).await.body;
    assert_eq!(view["health"]["disabled_reason"], "gone");
    assert_eq!(view["enabled"], false);
    assert_eq!(receiver.count(), 1, "410 is not retried");

    let second = hookline
        .post_event("acme", json!({"type": "a.b", "data": {"n": 2}}))
        .await;
    let dead_letters = || async { hookline.get("/v1/tenants/acme/dead-letters").await.body };
    eventually("both events are dead-lettered", || async {
        dead_letters().await["data"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let listed = dead_letters().await;
    let reason_of = |id: &Value| {
        listed["data"]
            .as_array()
            .expect("list")
            .iter()
            .find(|r| r["event"]["id"] == *id)
            .map(|r| (r["reason"].clone(), r["endpoint_id"].clone()))
    };
    assert_eq!(
        reason_of(&first.body["id"]),
        Some((json!("endpoint_gone"), endpoint["id"].clone())),
        "the 410 itself"
    );
    assert_eq!(
        reason_of(&second.body["id"]),
        Some((json!("endpoint_disabled"), endpoint["id"].clone())),
        "an event for the disabled endpoint"
    );
    assert_eq!(
        receiver.count(),
        1,
        "nothing is sent to a disabled endpoint"
    );

    let patched = hookline
        .call(Method::PATCH, &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["health"]["state"], "healthy");
    receiver.set_status(204);
    let replayed = hookline
        .call(Method::POST, "/v1/tenants/acme/dead-letters/replay", None)
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert_eq!(replayed.body["queued"], 2);
    let received = receiver.wait_for(3).await;
    let mut ids: Vec<&str> = received[1..]
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    ids.sort_unstable();
    let mut expected = vec![
        first.body["id"].as_str().expect("id"),
        second.body["id"].as_str().expect("id"),
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert_eq!(
        dead_letters().await["data"],
        json!([]),
        "replayed entries leave the index"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn endpoint_without_success_for_the_window_is_disabled() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "2")
        .setting("HOOKLINE__HEALTH__DISABLE_AFTER", "300ms")
        .start()
        .await;
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let (_, path) = subscribe_to_everything(&hookline, &receiver).await;
    hookline
        .post_event("acme", json!({"type": "a.b", "data": {}}))
        .await;
    eventually("no success within the window disables it", || async {
        health_state(&hookline, &path).await["disabled_reason"] == "no_success"
    })
    .await;
    let records = hookline.dead_letters(1).await;
    assert_eq!(records[0]["reason"], "endpoint_disabled");
    let admin = hookline.deliverer_admins[0];
    assert_eq!(
        hookline
            .metric(
                admin,
                "hookline_endpoints_disabled_total",
                &[("reason", "no_success")]
            )
            .await,
        1.0
    );
    hookline.stop().await;
}

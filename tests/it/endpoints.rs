//! What a tenant sets up: test events, verification on create, secret rotation,
//! quotas, filters, and the event-type catalog.

use crate::support::{health_state, subscribe_to_everything};
use hookline_tests::{Hookline, Receiver, eventually, verify_signature};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn test_event_reports_the_answer_and_leaves_health_and_metrics_alone() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::answering(&[500]).await;
    receiver.set_status(200);
    receiver.set_body("thanks");
    let (endpoint, path) = subscribe_to_everything(&hookline, &receiver).await;
    let failed = hookline
        .call(Method::POST, &format!("{path}/test"), None)
        .await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    assert_eq!(failed.body["delivered"], false);
    assert_eq!(failed.body["status"], 500);
    assert!(failed.body["error"].is_string());

    let passed = hookline
        .call(
            Method::POST,
            &format!("{path}/test"),
            Some(json!({"type": "candidate.interested", "data": {"candidate": "c1"}})),
        )
        .await;
    assert_eq!(passed.body["delivered"], true, "{}", passed.body);
    assert_eq!(passed.body["status"], 200);
    assert_eq!(passed.body["response_excerpt"], "thanks");
    assert!(passed.body["duration_ms"].is_u64());

    let received = receiver.wait_for(2).await;
    let secret = endpoint["secret"].as_str().expect("secret");
    assert!(verify_signature(secret, &received[1]));
    let body = received[1].json();
    assert_eq!(body["test"], true);
    assert_eq!(body["type"], "candidate.interested");
    assert_eq!(received[0].json()["type"], "hookline.ping");

    let health = health_state(&hookline, &path).await;
    assert_eq!(health["consecutive_failures"], 0, "{health}");
    assert!(health["last_failure_at"].is_null(), "{health}");
    let attempts = hookline
        .metric(
            hookline.deliverer_admins[0],
            "hookline_delivery_attempts_total",
            &[],
        )
        .await;
    assert_eq!(attempts, 0.0, "test deliveries are not delivery metrics");
    let log = hookline.get(&format!("{path}/attempts")).await;
    assert_eq!(log.body["data"], json!([]), "nor attempt-log entries");
    hookline.stop().await;
}

#[tokio::test]
async fn verify_on_create_refuses_an_endpoint_that_fails_the_ping() {
    let hookline = Hookline::start().await;
    let failing = Receiver::start().await;
    failing.set_status(404);
    let refused = hookline
        .call(
            Method::POST,
            "/v1/tenants/acme/endpoints",
            Some(json!({"url": failing.url(), "event_types": ["#"], "verify": true})),
        )
        .await;
    refused.assert_invalid("url", "a receiver that fails verification");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("404")),
        "{}",
        refused.body
    );
    let listed = hookline.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(listed.body["data"], json!([]), "nothing was stored");

    let working = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": working.url(), "event_types": ["#"], "verify": true}),
        )
        .await;
    assert_eq!(working.wait_for(1).await[0].json()["type"], "hookline.ping");
    hookline.stop().await;
}

#[tokio::test]
async fn rotated_secret_and_old_one_both_sign_during_the_overlap() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    let (endpoint, path) = subscribe_to_everything(&hookline, &receiver).await;
    let old = endpoint["secret"].as_str().expect("secret").to_owned();
    let rotated = hookline
        .call(Method::POST, &format!("{path}/secret/rotate"), None)
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new = rotated.body["secret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert_ne!(new, old);
    assert!(rotated.body["previous_secret_expires_at"].is_string());

    let listed = hookline.get("/v1/tenants/acme/endpoints").await;
    assert!(
        !listed.body.to_string().contains("whsec_"),
        "list calls never return secrets"
    );
    assert!(
        !hookline
            .get(&path)
            .await
            .body
            .to_string()
            .contains("whsec_")
    );

    // The endpoint cache may hold the old endpoint briefly; wait for a delivery that
    // carries the rotation.
    let mut n = 0;
    eventually("a delivery signed with both secrets", || {
        n += 1;
        let hookline = &hookline;
        let receiver = &receiver;
        let (old, new) = (&old, &new);
        async move {
            hookline
                .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
                .await;
            let received = receiver.wait_for(n).await;
            let last = &received[n - 1];
            verify_signature(new, last) && verify_signature(old, last)
        }
    })
    .await;
    let last = receiver.received().pop().expect("delivery");
    let signatures = last.header("webhook-signature").expect("signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    hookline.stop().await;
}

#[tokio::test]
async fn quota_is_enforced_per_tenant() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__MAX_ENDPOINTS_PER_TENANT", "2")
        .start()
        .await;
    let receiver = Receiver::start().await;
    let spec = json!({"url": receiver.url(), "event_types": ["#"]});
    hookline.create_endpoint("acme", spec.clone()).await;
    hookline.create_endpoint("acme", spec.clone()).await;
    let third = hookline
        .call(
            Method::POST,
            "/v1/tenants/acme/endpoints",
            Some(spec.clone()),
        )
        .await;
    assert_eq!(third.status, 409, "{}", third.body);
    hookline.create_endpoint("globex", spec).await;
    hookline.stop().await;
}

#[tokio::test]
async fn filters_deliver_only_matching_events() {
    let hookline = Hookline::start().await;
    let filtered = Receiver::start().await;
    let everything = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": filtered.url(), "event_types": ["application.#"],
                   "filter": {"status": ["hired", "offer"], "job.department": "sales"}}),
        )
        .await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": everything.url(), "event_types": ["#"]}),
        )
        .await;
    let events = [
        json!({"status": "rejected", "job": {"department": "sales"}}),
        json!({"status": "hired", "job": {"department": "support"}}),
        json!({"status": "offer", "job": {"department": "sales"}}),
    ];
    for (n, data) in events.iter().enumerate() {
        hookline
            .post_event(
                "acme",
                json!({"id": format!("evt-{n}"), "type": "application.status.updated", "data": data}),
            )
            .await;
    }
    everything.wait_for(3).await;
    let received = filtered.wait_for(1).await;
    assert_eq!(received[0].json()["id"], "evt-2");
    // Every event's state is recorded once its message was handled; the filtered
    // endpoint has a state only for the one it matched.
    eventually("all events handled", || async {
        let mut handled = 0;
        for n in 0..3 {
            let view = hookline
                .get(&format!("/v1/tenants/acme/events/evt-{n}"))
                .await;
            handled += usize::from(view.status == 200);
        }
        handled == 3
    })
    .await;
    for n in 0..2 {
        let view = hookline
            .get(&format!("/v1/tenants/acme/events/evt-{n}"))
            .await;
        assert_eq!(
            view.body["deliveries"]
                .as_object()
                .map(serde_json::Map::len),
            Some(1),
            "only the unfiltered endpoint matched evt-{n}"
        );
    }
    assert_eq!(filtered.count(), 1);
    hookline.stop().await;
}

#[tokio::test]
async fn catalog_lists_types_and_can_require_them() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__REQUIRE_KNOWN_EVENT_TYPES", "true")
        .start()
        .await;
    let created = hookline
        .call(
            Method::PUT,
            "/v1/event-types/candidate.interested",
            Some(json!({"description": "A candidate is interested", "example": {"candidate": {"email": "a@b.c"}}})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let updated = hookline
        .call(
            Method::PUT,
            "/v1/event-types/candidate.interested",
            Some(json!({"description": "Interested"})),
        )
        .await;
    assert_eq!(updated.status, 200);
    let listed = hookline.get("/v1/event-types").await;
    assert_eq!(listed.body["data"][0]["type"], "candidate.interested");
    assert_eq!(listed.body["data"][0]["description"], "Interested");

    let unknown = hookline
        .post_event("acme", json!({"type": "candidate.unknown", "data": {}}))
        .await;
    unknown.assert_invalid("type", "an event type outside the catalog");
    let known = hookline
        .post_event("acme", json!({"type": "candidate.interested", "data": {}}))
        .await;
    assert_eq!(known.status, 202, "{}", known.body);
    let bad = hookline
        .call(Method::PUT, "/v1/event-types/Not..Valid", Some(json!({})))
        .await;
    assert_eq!(bad.status, 400);
    hookline.stop().await;
}

//! Operational events: a tenant hears, through its own subscribed endpoints, that one
//! of its endpoints is failing, has dead letters, and recovered — once each, with two
//! deliverers — and the endpoint an event is about never receives it; an operator
//! tenant hears it too; tenants cannot send these types themselves.

use hookline_tests::{Hookline, Receiver, eventually};
use serde_json::{Value, json};

fn of_type(receiver: &Receiver, event_type: &str) -> Vec<Value> {
    receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|body| body["type"] == event_type)
        .collect()
}

#[tokio::test]
async fn a_tenant_hears_that_an_endpoint_fails_and_recovers_once_each() {
    let hookline = Hookline::builder()
        .deliverers(2)
        .retry_schedule("50ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "2")
        .setting("HOOKLINE__DELIVERY__MAX_HOLD", "2s")
        .setting("HOOKLINE__NOTIFICATIONS__OPERATOR_TENANT", "ops")
        .start()
        .await;
    let down = Receiver::start().await;
    down.set_status(500);
    let notified = Receiver::start().await;
    let operator = Receiver::start().await;
    // The failing endpoint takes every type, Hookline's too: it must still never get
    // news of itself.
    let failing = hookline
        .create_endpoint(
            "acme",
            json!({"url": down.url(), "event_types": ["#", "hookline.#"]}),
        )
        .await;
    // An endpoint that takes every event of the ATS (`#`) gets none of Hookline's.
    let everything = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": everything.url(), "event_types": ["#"]}),
        )
        .await;
    let failing_id = failing["id"].as_str().expect("id").to_owned();
    hookline
        .create_endpoint(
            "acme",
            json!({"url": notified.url(), "event_types": ["hookline.endpoint.*", "hookline.dead_letters.*"]}),
        )
        .await;
    hookline
        .create_endpoint(
            "ops",
            json!({"url": operator.url(), "event_types": ["hookline.#"]}),
        )
        .await;
    for n in 0..3 {
        let answer = hookline
            .post_event(
                "acme",
                json!({"type": "candidate.created", "data": {"n": n}}),
            )
            .await;
        assert_eq!(answer.status, 202);
    }
    eventually("the tenant hears the endpoint is failing", || async {
        !of_type(&notified, "hookline.endpoint.failing").is_empty()
    })
    .await;
    let failing_notice = &of_type(&notified, "hookline.endpoint.failing")[0];
    assert_eq!(failing_notice["data"]["endpoint_id"], failing_id.as_str());
    assert_eq!(failing_notice["data"]["consecutive_failures"], 2);
    assert_eq!(failing_notice["tenant"], "acme");
    eventually("the tenant hears of its dead letters", || async {
        !of_type(&notified, "hookline.dead_letters.accumulated").is_empty()
    })
    .await;

    down.set_status(204);
    eventually("the tenant hears the endpoint recovered", || async {
        !of_type(&notified, "hookline.endpoint.recovered").is_empty()
    })
    .await;
    eventually("the operator tenant heard all three", || async {
        [
            "hookline.endpoint.failing",
            "hookline.endpoint.recovered",
            "hookline.dead_letters.accumulated",
        ]
        .iter()
        .all(|t| !of_type(&operator, t).is_empty())
    })
    .await;
    assert_eq!(
        of_type(&operator, "hookline.endpoint.failing")[0]["data"]["tenant"],
        "acme"
    );
    // Once each, though two deliverers saw the failures and the recovery.
    assert_eq!(of_type(&notified, "hookline.endpoint.failing").len(), 1);
    assert_eq!(of_type(&notified, "hookline.endpoint.recovered").len(), 1);
    assert_eq!(
        of_type(&notified, "hookline.dead_letters.accumulated").len(),
        1,
        "one per endpoint per window"
    );
    assert!(
        down.received().iter().all(|r| !r.json()["type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("hookline.")),
        "the endpoint an event is about never receives it"
    );
    assert!(
        everything.received().iter().all(|r| !r.json()["type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("hookline.")),
        "`#` does not subscribe to Hookline's own types"
    );
    everything.wait_for(3).await;
    assert_eq!(everything.count(), 3, "the ATS's three events");
    hookline.stop().await;
}

#[tokio::test]
async fn tenants_cannot_send_hookline_s_own_event_types() {
    let hookline = Hookline::start().await;
    let answer = hookline
        .post_event(
            "acme",
            json!({"type": "hookline.endpoint.recovered", "data": {"endpoint_id": "ep_x"}}),
        )
        .await;
    answer.assert_invalid("type", "a reserved type");
    hookline.stop().await;
}

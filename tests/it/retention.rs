//! The ops record of dead letters, `{prefix}.dead-letter`, is bounded by Hookline: a
//! record leaves it after `retention.dead_letter_queue`, and beyond
//! `retention.dead_letter_queue_max` the oldest go; the API's index keeps its own. A
//! tenant may keep its history and dead letters shorter than the installation.

use hookline_tests::{Hookline, Receiver, eventually};
use reqwest::Method;
use serde_json::json;

async fn dead_letter_events(hookline: &Hookline, count: usize) {
    let gone = Receiver::answering(&[]).await;
    gone.set_status(410);
    hookline
        .create_endpoint("acme", json!({"url": gone.url(), "event_types": ["#"]}))
        .await;
    for n in 0..count {
        let answer = hookline
            .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
            .await;
        assert_eq!(answer.status, 202);
    }
    hookline
        .get_until("/v1/tenants/acme/dead-letters", |body| {
            body["data"].as_array().is_some_and(|d| d.len() == count)
        })
        .await;
}

async fn trimmed(hookline: &Hookline) -> f64 {
    hookline
        .metric(
            hookline.deliverer_admins[0],
            "hookline_dead_letter_queue_trimmed_total",
            &[],
        )
        .await
}

#[tokio::test]
async fn a_dead_letter_leaves_the_ops_queue_after_its_retention() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__RETENTION__DEAD_LETTER_QUEUE", "3s")
        .setting("HOOKLINE__RETENTION__DEAD_LETTER_QUEUE_CHECK", "200ms")
        .start()
        .await;
    dead_letter_events(&hookline, 1).await;
    // (A check holds the head record for a moment, so depths are awaited, not read.)
    eventually("the record is there while young", || async {
        hookline.queue_depth("dead-letter").await == 1
    })
    .await;
    eventually("the record is dropped after its retention", || async {
        trimmed(&hookline).await == 1.0
    })
    .await;
    assert_eq!(hookline.queue_depth("dead-letter").await, 0);
    let listed = hookline.get("/v1/tenants/acme/dead-letters").await;
    assert_eq!(
        listed.body["data"].as_array().map(Vec::len),
        Some(1),
        "the API's index has a retention of its own"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn beyond_its_length_the_ops_queue_drops_the_oldest() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__RETENTION__DEAD_LETTER_QUEUE_MAX", "2")
        .setting("HOOKLINE__RETENTION__DEAD_LETTER_QUEUE_CHECK", "200ms")
        .start()
        .await;
    dead_letter_events(&hookline, 4).await;
    eventually("the surplus is dropped", || async {
        trimmed(&hookline).await == 2.0
    })
    .await;
    eventually("two records are left", || async {
        hookline.queue_depth("dead-letter").await == 2
    })
    .await;
    assert_eq!(trimmed(&hookline).await, 2.0, "the surplus and no more");
    hookline.stop().await;
}

#[tokio::test]
async fn a_tenant_keeps_its_history_and_dead_letters_shorter_when_it_asks() {
    let hookline = Hookline::builder()
        .retry_schedule("50ms")
        .setting("HOOKLINE__RETENTION__TENANT_CHECK", "100ms")
        .setting("HOOKLINE__API__TENANT_TOKENS", "acme:acme-secret-token")
        .start()
        .await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_status(500);
    let mut ok_endpoints = Vec::new();
    for tenant in ["acme", "globex"] {
        for receiver in [&ok, &failing] {
            let endpoint = hookline
                .create_endpoint(tenant, json!({"url": receiver.url(), "event_types": ["#"]}))
                .await;
            if std::ptr::eq(receiver, &ok) {
                ok_endpoints.push(endpoint["id"].as_str().expect("id").to_owned());
            }
        }
        let accepted = hookline
            .post_event(
                tenant,
                json!({"id": format!("{tenant}-1"), "type": "a.b", "data": {}}),
            )
            .await;
        assert_eq!(accepted.status, 202);
    }
    for tenant in ["acme", "globex"] {
        eventually("the dead letter indexed", || async {
            hookline
                .get(&format!("/v1/tenants/{tenant}/dead-letters"))
                .await
                .body["data"]
                .as_array()
                .is_some_and(|d| d.len() == 1)
        })
        .await;
    }
    let put = |body: serde_json::Value| {
        let hookline = &hookline;
        async move {
            hookline
                .call_as(
                    Some("acme-secret-token"),
                    Method::PUT,
                    "/v1/tenants/acme/retention",
                    Some(body),
                )
                .await
        }
    };
    put(json!({"history": "0s"}))
        .await
        .assert_invalid("history", "zero");
    assert_eq!(put(json!({"history": "soon"})).await.status, 422);
    let set = put(json!({"history": "1s", "dead_letters": "1s"})).await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        hookline.get("/v1/tenants/acme/retention").await.body,
        json!({"history": "1s", "dead_letters": "1s"})
    );
    eventually(
        "acme's history and dead letters trimmed to its retention",
        || async {
            hookline.get("/v1/tenants/acme/events/acme-1").await.status == 404
                && hookline.get("/v1/tenants/acme/dead-letters").await.body["data"] == json!([])
                && hookline
                    .get(&format!(
                        "/v1/tenants/acme/endpoints/{}/attempts",
                        ok_endpoints[0]
                    ))
                    .await
                    .body["data"]
                    == json!([])
        },
    )
    .await;
    assert_eq!(
        hookline
            .get("/v1/tenants/globex/events/globex-1")
            .await
            .status,
        200,
        "another tenant keeps the installation's retention"
    );
    assert_eq!(
        hookline.get("/v1/tenants/globex/dead-letters").await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let cleared = hookline
        .call(Method::DELETE, "/v1/tenants/acme/retention", None)
        .await;
    assert_eq!(cleared.status, 204);
    assert_eq!(
        hookline.get("/v1/tenants/acme/retention").await.body,
        json!({})
    );
    hookline.stop().await;
}

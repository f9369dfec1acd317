//! The same pipeline on Redis Cluster and through Redis Sentinel: every store, script and
//! pipeline Hookline uses must work when keys live on several nodes, or when the master
//! is found through Sentinel. `make test` starts both (scripts/redis-topologies.sh).

use hookline_tests::{Hookline, Receiver, eventually, verify_signature};
use reqwest::Method;
use serde_json::json;

fn url(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run the tests with `make test`, which starts Redis Cluster and Sentinel")
    })
}

/// Endpoints, health, retries, the attempt log, event state, dead letters and dedup,
/// for two tenants (so their keys land in different slots).
async fn full_pipeline(redis_url: &str) {
    let hookline = Hookline::builder()
        .redis_url(redis_url)
        .retry_schedule("100ms,100ms")
        .start()
        .await;
    let flaky = Receiver::answering(&[500]).await;
    let dead = Receiver::start().await;
    dead.set_status(503);
    let endpoint = hookline
        .create_endpoint("acme", json!({"url": flaky.url(), "event_types": ["#"]}))
        .await;
    hookline
        .create_endpoint("globex", json!({"url": dead.url(), "event_types": ["#"]}))
        .await;
    let first = hookline
        .post_event(
            "acme",
            json!({"id": "evt-1", "type": "a.b", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = hookline
        .post_event(
            "acme",
            json!({"id": "evt-1", "type": "a.b", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(again.body["duplicate"], true);
    hookline
        .post_event("globex", json!({"id": "evt-2", "type": "a.b", "data": {}}))
        .await;

    let received = flaky.wait_for(2).await;
    assert!(verify_signature(
        endpoint["secret"].as_str().expect("secret"),
        &received[1]
    ));
    eventually("globex's delivery is dead-lettered and indexed", || async {
        hookline.get("/v1/tenants/globex/dead-letters").await.body["data"]
            .as_array()
            .is_some_and(|list| list.len() == 1)
    })
    .await;
    eventually("acme's event state shows the delivery", || async {
        hookline.get("/v1/tenants/acme/events/evt-1").await.body["deliveries"]
            [endpoint["id"].as_str().expect("id")]["status"]
            == "delivered"
    })
    .await;
    let attempts = hookline
        .get(&format!(
            "/v1/tenants/acme/endpoints/{}/attempts",
            endpoint["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(attempts.body["data"].as_array().map(Vec::len), Some(2));
    let replayed = hookline
        .call(Method::POST, "/v1/tenants/globex/dead-letters/replay", None)
        .await;
    assert_eq!(replayed.body["queued"], 1, "{}", replayed.body);
    // Erasure and tenant deletion: scans, scripts and sweeps in the tenant's slot.
    let erased = hookline
        .call(
            Method::POST,
            "/v1/tenants/acme/erasures",
            Some(json!({"event_id": "evt-1"})),
        )
        .await;
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert_eq!(erased.body["counts"]["events"], 1, "{}", erased.body);
    assert_eq!(erased.body["counts"]["attempts"], 2, "{}", erased.body);
    assert_eq!(
        hookline.get("/v1/tenants/acme/events/evt-1").await.status,
        404
    );
    let deleted = hookline
        .call(Method::DELETE, "/v1/tenants/globex", None)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["counts"]["endpoints"], 1, "{}", deleted.body);
    assert_eq!(
        hookline.get("/v1/tenants/globex/endpoints").await.body["data"],
        json!([])
    );
    assert_eq!(
        hookline.get("/v1/tenants/globex/dead-letters").await.body["data"],
        json!([])
    );
    hookline.stop().await;
}

#[tokio::test]
async fn pipeline_runs_on_redis_cluster() {
    full_pipeline(&url("HOOKLINE_TEST_REDIS_CLUSTER_URL")).await;
}

#[tokio::test]
async fn pipeline_runs_through_redis_sentinel() {
    full_pipeline(&url("HOOKLINE_TEST_REDIS_SENTINEL_URL")).await;
}

//! Per-tenant ingest quotas: the default for every tenant, overrides an operator sets,
//! and a batch counted as its events.

use hookline_tests::{Hookline, TOKEN};
use reqwest::Method;
use serde_json::{Value, json};

fn event() -> Value {
    json!({"type": "candidate.created", "data": {}})
}

/// Posts one event and answers the status and `Retry-After`, if any.
async fn post(hookline: &Hookline, tenant: &str) -> (u16, Option<u64>, Value) {
    let response = hookline
        .http
        .post(hookline.url(&format!("/v1/tenants/{tenant}/events")))
        .bearer_auth(TOKEN)
        .json(&event())
        .send()
        .await
        .expect("reachable");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let answer = hookline_tests::answer(response).await;
    (answer.status, retry_after, answer.body)
}

#[tokio::test]
async fn a_tenant_over_the_default_quota_is_answered_429_and_others_go_on() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__TENANT_QUOTA__PER_MINUTE", "1")
        .setting("HOOKLINE__API__TENANT_QUOTA__BURST", "3")
        .start()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&hookline, "acme").await.0);
    }
    assert_eq!(statuses, [202, 202, 202]);
    let (status, retry_after, body) = post(&hookline, "acme").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "tenant_quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 events a minute") && m.contains("burst 3")),
        "{body}"
    );
    let retry_after = retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another tenant has its own budget.
    assert_eq!(post(&hookline, "beta").await.0, 202);
    assert_eq!(
        hookline
            .metric(
                hookline.ingest_admin,
                "hookline_http_throttled_total",
                &[("reason", "tenant_quota")],
            )
            .await,
        1.0
    );
    hookline.stop().await;
}

#[tokio::test]
async fn an_operator_override_applies_and_a_tenant_token_cannot_set_one() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__TENANT_TOKENS", "acme:acme-token")
        .start()
        .await;
    let quota_path = "/v1/tenants/acme/quota";
    let shown = hookline.get(quota_path).await;
    assert_eq!(
        shown.body,
        json!({"per_minute": 0, "burst": 0, "source": "default"}),
        "unlimited by default"
    );
    let by_tenant = hookline
        .call_as(
            Some("acme-token"),
            Method::PUT,
            quota_path,
            Some(json!({"per_minute": 100000, "burst": 100000})),
        )
        .await;
    assert_eq!(by_tenant.status, 403, "{}", by_tenant.body);
    let invalid = hookline
        .call(Method::PUT, quota_path, Some(json!({"per_minute": 60})))
        .await;
    invalid.assert_invalid("burst", "a quota without a burst");
    let set = hookline
        .call(
            Method::PUT,
            quota_path,
            Some(json!({"per_minute": 1, "burst": 2})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        set.body,
        json!({"per_minute": 1, "burst": 2, "source": "override"})
    );
    // The tenant reads its own quota.
    let read = hookline
        .call_as(Some("acme-token"), Method::GET, quota_path, None)
        .await;
    assert_eq!(read.body["source"], "override", "{}", read.body);
    let statuses = [
        post(&hookline, "acme").await.0,
        post(&hookline, "acme").await.0,
        post(&hookline, "acme").await.0,
    ];
    assert_eq!(statuses, [202, 202, 429]);
    assert_eq!(
        post(&hookline, "beta").await.0,
        202,
        "no override, no default"
    );
    let removed = hookline.call(Method::DELETE, quota_path, None).await;
    assert_eq!(removed.status, 204);
    assert_eq!(post(&hookline, "acme").await.0, 202, "unlimited again");
    hookline.stop().await;
}

#[tokio::test]
async fn a_batch_counts_as_its_events_admitted_whole_or_refused_whole() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__TENANT_QUOTA__PER_MINUTE", "1")
        .setting("HOOKLINE__API__TENANT_QUOTA__BURST", "5")
        .start()
        .await;
    let batch = |events: usize| {
        let hookline = &hookline;
        async move {
            hookline
                .call(
                    Method::POST,
                    "/v1/tenants/acme/events/batch",
                    Some(json!({"events": vec![event(); events]})),
                )
                .await
        }
    };
    let first = batch(3).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Two left: a batch of three is refused whole, and uses nothing up.
    let over = batch(3).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.body["error"]["code"], "tenant_quota_exceeded");
    let rest = batch(2).await;
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert_eq!(
        post(&hookline, "acme").await.0,
        429,
        "five events used it up"
    );
    // More than the burst can never be admitted: refused for good, not "retry later".
    let never = batch(6).await;
    assert_eq!(never.status, 413, "{}", never.body);
    assert_eq!(never.body["error"]["field"], "events");
    hookline.stop().await;
}

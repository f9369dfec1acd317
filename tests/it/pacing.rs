//! Deliveries paced by the receiver: Retry-After honoured, a rate limit shared by
//! deliverers.

use hookline_tests::{Hookline, Receiver};
use serde_json::json;

#[tokio::test]
async fn retry_after_is_honoured() {
    let hookline = Hookline::builder().retry_schedule("100ms,5s").start().await;
    let receiver = Receiver::answering(&[429]).await;
    receiver.set_retry_after(Some("1"));
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    hookline
        .post_event("acme", json!({"type": "a.b", "data": {}}))
        .await;
    let received = receiver.wait_for(2).await;
    let gap = received[1].at.duration_since(received[0].at);
    assert!(
        gap >= std::time::Duration::from_secs(1),
        "the retry waited for Retry-After (1 s) instead of the 100 ms step: {gap:?}"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn rate_limit_holds_across_two_deliverers() {
    let hookline = Hookline::builder().deliverers(2).start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["#"], "rate_limit_per_s": 5}),
        )
        .await;
    let events = 20;
    for n in 0..events {
        let accepted = hookline
            .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
            .await;
        assert_eq!(accepted.status, 202);
    }
    let received = receiver.wait_for(events).await;
    let times: Vec<std::time::Instant> = received.iter().map(|r| r.at).collect();
    let busiest_second = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| {
                    **t >= *start && t.duration_since(*start) < std::time::Duration::from_secs(1)
                })
                .count()
        })
        .max()
        .unwrap_or(0);
    // Five slots per second; one more can fall on the window's closing edge.
    assert!(
        busiest_second <= 6,
        "two deliverers share the limit of 5/s; busiest second had {busiest_second}"
    );
    assert_eq!(
        received.len(),
        events,
        "excess deliveries wait, none is dropped"
    );
    let mut limited = 0.0;
    for admin in &hookline.deliverer_admins {
        limited += hookline
            .metric(
                *admin,
                "hookline_delivery_attempts_total",
                &[("outcome", "rate_limited")],
            )
            .await;
    }
    assert!(limited > 0.0);
    let dead = hookline.get("/v1/tenants/acme/dead-letters").await.body;
    assert_eq!(dead["data"], json!([]), "waiting is not failing");
    hookline.stop().await;
}

//! The ops record of dead letters, `{prefix}.dead-letter`, is bounded by Hookline: a
//! record leaves it after `retention.dead_letter_queue`, and beyond
//! `retention.dead_letter_queue_max` the oldest go; the API's index keeps its own.

use hookline_tests::{Hookline, Receiver, eventually};
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

//! What a tenant can read back: the attempt log, each event's state per endpoint, and
//! the cap on how many states are kept.

use crate::support::endpoint_path;
use hookline_tests::{Hookline, Receiver, eventually};
use serde_json::json;

#[tokio::test]
async fn attempt_log_pages_newest_first_and_event_state_shows_each_endpoint() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms")
        .start()
        .await;
    let flaky = Receiver::answering(&[500, 502]).await;
    let steady = Receiver::start().await;
    let flaky_endpoint = hookline
        .create_endpoint("acme", json!({"url": flaky.url(), "event_types": ["#"]}))
        .await;
    let steady_endpoint = hookline
        .create_endpoint("acme", json!({"url": steady.url(), "event_types": ["#"]}))
        .await;
    let accepted = hookline
        .post_event(
            "acme",
            json!({"id": "evt-log-1", "type": "a.b", "data": {}}),
        )
        .await;
    assert_eq!(accepted.status, 202);
    flaky.wait_for(3).await;
    let event_path = "/v1/tenants/acme/events/evt-log-1";
    let flaky_id = flaky_endpoint["id"].as_str().expect("id");
    let steady_id = steady_endpoint["id"].as_str().expect("id");
    eventually("both deliveries recorded as delivered", || async {
        let view = hookline.get(event_path).await.body;
        view["deliveries"][flaky_id]["status"] == "delivered"
            && view["deliveries"][steady_id]["status"] == "delivered"
    })
    .await;
    let view = hookline.get(event_path).await.body;
    assert_eq!(view["event"]["id"], "evt-log-1");
    assert_eq!(view["deliveries"][flaky_id]["attempts"], 3);
    assert_eq!(view["deliveries"][steady_id]["attempts"], 1);

    let attempts_path = format!("{}/attempts", endpoint_path("acme", &flaky_endpoint));
    let first_page = hookline.get(&format!("{attempts_path}?limit=2")).await.body;
    let page: Vec<(u64, String)> = first_page["data"]
        .as_array()
        .expect("page")
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap_or(0),
                a["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        page,
        vec![(3, "success".to_owned()), (2, "http_error".to_owned())]
    );
    assert_eq!(first_page["data"][1]["status"], 502);
    let before = first_page["next_before"].as_i64().expect("cursor");
    let second_page = hookline
        .get(&format!("{attempts_path}?limit=2&before={before}"))
        .await
        .body;
    assert_eq!(second_page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(second_page["data"][0]["attempt"], 1);
    assert_eq!(second_page["data"][0]["status"], 500);
    assert!(second_page["next_before"].is_null());

    let missing = hookline.get("/v1/tenants/acme/events/nope").await;
    assert_eq!(missing.status, 404);
    let bad_limit = hookline.get(&format!("{attempts_path}?limit=0")).await;
    bad_limit.assert_invalid("limit", "limit=0");
    hookline.stop().await;
}

#[tokio::test]
async fn event_states_beyond_the_tenant_cap_are_trimmed_oldest_first() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__RETENTION__EVENTS_PER_TENANT", "3")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["job.#"]}),
        )
        .await;
    let state = |n: usize| {
        let hookline = &hookline;
        async move {
            hookline
                .get(&format!("/v1/tenants/acme/events/capped-{n}"))
                .await
                .status
        }
    };
    // One at a time, each recorded before the next, so "oldest" is well defined.
    for n in 1..=6 {
        let accepted = hookline
            .post_event(
                "acme",
                json!({"id": format!("capped-{n}"), "type": "job.created", "data": {"n": n}}),
            )
            .await;
        assert_eq!(accepted.status, 202);
        eventually("the event's state is recorded", || async {
            state(n).await == 200
        })
        .await;
    }
    eventually("only the three newest states remain", || async {
        let mut kept = Vec::new();
        for n in 1..=6 {
            if state(n).await == 200 {
                kept.push(n);
            }
        }
        kept == [4, 5, 6]
    })
    .await;
    hookline.stop().await;
}

#[tokio::test]
async fn an_endpoints_chart_counts_its_own_deliveries_and_failures() {
    let hookline = Hookline::builder()
        .retry_schedule("50ms,50ms")
        // Every attempt is made: no circuit opens to hold the later ones.
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "100")
        .start()
        .await;
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.set_status(500);
    let good_endpoint = hookline
        .create_endpoint("acme", json!({"url": good.url(), "event_types": ["#"]}))
        .await;
    let bad_endpoint = hookline
        .create_endpoint("acme", json!({"url": bad.url(), "event_types": ["#"]}))
        .await;
    for n in 0..4 {
        let answer = hookline
            .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
            .await;
        assert_eq!(answer.status, 202);
    }
    let totals = |body: &serde_json::Value| {
        body["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .fold((0, 0), |(d, f), b| {
                (
                    d + b["delivered"].as_u64().expect("delivered"),
                    f + b["failed"].as_u64().expect("failed"),
                )
            })
    };
    let stats =
        |endpoint: &serde_json::Value| format!("{}/stats?hours=1", endpoint_path("acme", endpoint));
    // Each event is tried once and then once per retry of the schedule, and the failing
    // endpoint fails every try. The attempt log is written apart from the dead-letter
    // index and the chart's counters, so each is waited for on its own.
    let failed_attempts = 4 * 3;
    hookline
        .get_until("/v1/tenants/acme/dead-letters", |body| {
            body["data"].as_array().is_some_and(|d| d.len() == 4)
        })
        .await;
    hookline
        .get_until(
            &format!(
                "{}/attempts?limit=200",
                endpoint_path("acme", &bad_endpoint)
            ),
            |body| {
                body["data"]
                    .as_array()
                    .is_some_and(|attempts| attempts.len() == failed_attempts)
            },
        )
        .await;
    let bad_stats = hookline
        .get_until(&stats(&bad_endpoint), |body| {
            totals(body) == (0, failed_attempts as u64)
        })
        .await;
    assert_eq!(bad_stats["bucket_minutes"], 10);
    assert_eq!(
        bad_stats["buckets"].as_array().map(Vec::len),
        Some(6),
        "an hour in ten-minute buckets"
    );
    let good_stats = hookline
        .get_until(&stats(&good_endpoint), |body| totals(body) == (4, 0))
        .await;
    assert_eq!(totals(&good_stats), (4, 0), "each endpoint its own");
    let refused = hookline
        .get(&format!(
            "{}/stats?hours=7",
            endpoint_path("acme", &good_endpoint)
        ))
        .await;
    refused.assert_invalid("hours", "more than the chart keeps");
    eventually("the overview's series has them too", || async {
        let overview = hookline.get("/v1/operator/overview").await.body;
        overview["series"].as_array().is_some_and(|minutes| {
            minutes
                .iter()
                .map(|m| m["failed"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == failed_attempts as u64
                && minutes
                    .iter()
                    .map(|m| m["delivered"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == 4
        })
    })
    .await;
    hookline.stop().await;
}

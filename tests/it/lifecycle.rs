//! Subscriber lifecycle: health, circuit breaking, auto-disable, Retry-After, rate limits,
//! test events, the attempt log, dead-letter replay, secret rotation, quotas, filters and
//! the catalog.

use hookline_tests::{Hookline, Receiver, eventually, verify_signature};
use reqwest::Method;
use serde_json::{Value, json};

fn endpoint_path(tenant: &str, endpoint: &Value) -> String {
    format!(
        "/v1/tenants/{tenant}/endpoints/{}",
        endpoint["id"].as_str().expect("endpoint id")
    )
}

/// An endpoint of acme's for `receiver`, subscribed to every event type, and its path.
async fn subscribe_to_everything(hookline: &Hookline, receiver: &Receiver) -> (Value, String) {
    let endpoint = hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let path = endpoint_path("acme", &endpoint);
    (endpoint, path)
}

/// Deliveries the (first) deliverer has held back behind an open circuit so far.
async fn held_by_circuit(hookline: &Hookline) -> f64 {
    hookline
        .metric(
            hookline.deliverer_admins[0],
            "hookline_delivery_attempts_total",
            &[("outcome", "circuit_open")],
        )
        .await
}

async fn health_state(hookline: &Hookline, path: &str) -> Value {
    let answer = hookline.get(path).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["health"].clone()
}

#[tokio::test]
async fn failing_endpoint_turns_failing_then_healthy_again() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms,100ms,100ms,100ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "2")
        .start()
        .await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let (_, path) = subscribe_to_everything(&hookline, &receiver).await;
    assert_eq!(health_state(&hookline, &path).await["state"], "healthy");

    hookline
        .post_event("acme", json!({"type": "job.storing.success", "data": {}}))
        .await;
    eventually("endpoint turns failing", || async {
        health_state(&hookline, &path).await["state"] == "failing"
    })
    .await;
    let health = health_state(&hookline, &path).await;
    assert!(
        health["consecutive_failures"].as_u64() >= Some(2),
        "{health}"
    );
    assert!(health["last_failure_at"].is_string(), "{health}");

    receiver.set_status(204);
    eventually("a probe succeeds and closes the circuit", || async {
        health_state(&hookline, &path).await["state"] == "healthy"
    })
    .await;
    let health = health_state(&hookline, &path).await;
    assert_eq!(health["consecutive_failures"], 0);
    assert!(health["last_success_at"].is_string(), "{health}");
    hookline.stop().await;
}

#[tokio::test]
async fn open_circuit_lets_one_probe_at_a_time_reach_the_receiver() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "1")
        .setting("HOOKLINE__DELIVERY__TIMEOUT", "300ms")
        .start()
        .await;
    let receiver = Receiver::start().await;
    receiver.hang(true);
    let (_, path) = subscribe_to_everything(&hookline, &receiver).await;
    hookline
        .post_event("acme", json!({"type": "a.b", "data": {"n": 0}}))
        .await;
    eventually("endpoint turns failing", || async {
        health_state(&hookline, &path).await["state"] == "failing"
    })
    .await;
    let held = || held_by_circuit(&hookline);
    // The deliverer has seen the open circuit once it holds a delivery back.
    hookline
        .post_event("acme", json!({"type": "a.b", "data": {"n": 1}}))
        .await;
    eventually("a delivery is held by the open circuit", || async {
        held().await >= 1.0
    })
    .await;

    receiver.reset_max_concurrency();
    let before = held().await;
    for n in 2..22 {
        hookline
            .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
            .await;
    }
    eventually("the new deliveries are held, not attempted", || async {
        held().await >= before + 20.0
    })
    .await;
    assert!(
        receiver.max_concurrency() <= 1,
        "at most one probe at a time reached the failing receiver, saw {}",
        receiver.max_concurrency()
    );
    hookline.stop().await;
}

#[tokio::test]
async fn deliveries_held_by_an_open_circuit_go_out_when_its_probe_succeeds() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms,100ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "1")
        // On their own timers the held deliveries would come back in 7–13 minutes: only
        // being woken brings them within the test's patience.
        .setting("HOOKLINE__DELIVERY__DEFER_DELAY", "10m")
        .start()
        .await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let (_, path) = subscribe_to_everything(&hookline, &receiver).await;
    hookline
        .post_event("acme", json!({"type": "a.b", "data": {"n": 0}}))
        .await;
    eventually("endpoint turns failing", || async {
        health_state(&hookline, &path).await["state"] == "failing"
    })
    .await;
    let held_before = held_by_circuit(&hookline).await;
    for n in 1..=5 {
        hookline
            .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
            .await;
    }
    // The first of them to arrive takes the open circuit's probe; the others are held.
    eventually("four deliveries are held", || async {
        held_by_circuit(&hookline).await >= held_before + 4.0
    })
    .await;

    receiver.set_status(204);
    let recovered = std::time::Instant::now();
    // New events until one takes the open circuit's next probe (a replica asks for it
    // at most every 250 ms; the ones in between are held too). The probe succeeds and
    // wakes everything held.
    let mut next = 6;
    eventually("a probe reaches the recovered receiver", || {
        let n = next;
        next += 1;
        let (hookline, receiver) = (&hookline, &receiver);
        async move {
            hookline
                .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
                .await;
            receiver
                .received()
                .iter()
                .any(|request| request.at >= recovered)
        }
    })
    .await;
    eventually("the held deliveries arrive after the probe", || async {
        let mut delivered: Vec<u64> = receiver
            .received()
            .iter()
            .filter(|request| request.at >= recovered)
            .filter_map(|request| request.json()["data"]["n"].as_u64())
            .filter(|n| (1..=5).contains(n))
            .collect();
        delivered.sort_unstable();
        delivered.dedup();
        delivered.len() >= 4
    })
    .await;
    assert!(
        hookline
            .metric(
                hookline.deliverer_admins[0],
                "hookline_held_deliveries_woken_total",
                &[]
            )
            .await
            >= 4.0,
        "the deliverer counts what it woke"
    );
    hookline.stop().await;
}

/// The event ids of the endpoint's deliveries that the retry pool holds for more than five
/// minutes: held behind its open circuit until a probe wakes them, not on a short timer.
async fn held_long(hookline: &Hookline, endpoint_path: &str) -> Vec<String> {
    let endpoint_id = endpoint_path.rsplit('/').next().expect("endpoint id");
    let suffix = format!(":{endpoint_id}");
    let due: Vec<(String, i64)> = redis::AsyncCommands::zrange_withscores(
        &mut hookline.redis().await,
        hookline.keys().retry_due(),
        0,
        -1,
    )
    .await
    .expect("retry pool");
    let later = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
    let later_ms = i64::try_from(later.unix_timestamp_nanos() / 1_000_000).expect("ms");
    due.into_iter()
        .filter(|(_, due_ms)| *due_ms > later_ms)
        .filter_map(|(id, _)| Some(id.strip_suffix(&suffix)?.to_owned()))
        .collect()
}

#[tokio::test]
async fn a_backlog_held_by_an_open_circuit_waits_for_the_probe_instead_of_churning() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms,100ms")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "1")
        // At most one scout per half second; the rest wait for the probe.
        .setting("HOOKLINE__DELIVERY__DEFER_DELAY", "1s")
        .setting("HOOKLINE__DELIVERY__MAX_HOLD", "10m")
        .start()
        .await;
    let (_, path, held) = hold_behind_open_circuit(&hookline).await;
    // On the doubling timer none would be held past 64 s.
    eventually(
        "the held deliveries wait for the circuit to close",
        || async {
            let long = held_long(&hookline, &path).await;
            held.iter().filter(|id| long.contains(id)).count() + 2 >= held.len()
        },
    )
    .await;
    hookline.stop().await;
}

/// A receiver answering 500 behind an endpoint of acme's whose circuit opens at the
/// first failure, and events posted until the deliverer holds some behind it. Returns
/// the receiver, the endpoint's path and the ids of the events held (never attempted).
async fn hold_behind_open_circuit(hookline: &Hookline) -> (Receiver, String, Vec<String>) {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let (_, path) = subscribe_to_everything(hookline, &receiver).await;
    let path = path.as_str();
    let mut events = Vec::new();
    let mut post = async |n: u64| {
        let accepted = hookline
            .post_event("acme", json!({"type": "a.b", "data": {"n": n}}))
            .await;
        events.push(accepted.body["id"].as_str().expect("event id").to_owned());
    };
    post(0).await;
    eventually("endpoint turns failing", || async {
        health_state(hookline, path).await["state"] == "failing"
    })
    .await;
    // New events until the deliverer's cached health shows the open circuit.
    let mut n = 1;
    while held_by_circuit(hookline).await < 1.0 {
        assert!(n < 500, "no delivery was held by the open circuit");
        post(n).await;
        n += 1;
    }
    let held_before = held_by_circuit(hookline).await;
    for n in n..n + 5 {
        post(n).await;
    }
    eventually("more deliveries are held", || async {
        held_by_circuit(hookline).await >= held_before + 3.0
    })
    .await;
    let attempted: Vec<String> = receiver
        .received()
        .iter()
        .filter_map(|request| Some(request.header("webhook-id")?.to_owned()))
        .collect();
    let held: Vec<String> = events
        .into_iter()
        .filter(|id| !attempted.contains(id))
        .collect();
    assert!(held.len() >= 4, "held {held:?}, attempted {attempted:?}");
    (receiver, path.to_owned(), held)
}

/// Waits until `receiver` has had a request for each of the events `ids`.
async fn arrive(receiver: &Receiver, ids: &[String]) {
    eventually("every held delivery arrives", || async {
        let received = receiver.received();
        ids.iter().all(|id| {
            received
                .iter()
                .any(|request| request.header("webhook-id") == Some(id.as_str()))
        })
    })
    .await;
}

#[tokio::test]
async fn a_held_delivery_that_no_probe_wakes_comes_back_after_max_hold() {
    let hookline = Hookline::builder()
        // Neither the failed attempts' retries nor the scouts come back within the
        // test's patience: only max_hold brings the held deliveries back.
        .retry_schedule("10m")
        .setting("HOOKLINE__DELIVERY__DEFER_DELAY", "10m")
        .setting("HOOKLINE__DELIVERY__MAX_HOLD", "2s")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "1")
        .start()
        .await;
    let (receiver, _, held) = hold_behind_open_circuit(&hookline).await;
    receiver.set_status(204);
    arrive(&receiver, &held).await;
    hookline.stop().await;
}

#[tokio::test]
async fn re_enabling_an_endpoint_sends_what_its_open_circuit_held() {
    let hookline = Hookline::builder()
        // Only a wake brings the held deliveries back within the test's patience.
        .retry_schedule("10m")
        .setting("HOOKLINE__DELIVERY__DEFER_DELAY", "10m")
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "1")
        .start()
        .await;
    let (receiver, path, held) = hold_behind_open_circuit(&hookline).await;
    receiver.set_status(204);
    for enabled in [false, true] {
        let patched = hookline
            .call(Method::PATCH, &path, Some(json!({"enabled": enabled})))
            .await;
        assert_eq!(patched.status, 200, "{}", patched.body);
    }
    // Re-enabling closed the circuit without a probe: the API woke what it held.
    arrive(&receiver, &held).await;
    hookline.stop().await;
}

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

//! An endpoint's health and circuit: failing and healthy again, one probe at a time,
//! the deliveries an open circuit holds and what brings them back (a probe, max hold,
//! re-enabling).

use crate::support::{health_state, subscribe_to_everything};
use hookline_tests::{Hookline, Receiver, eventually};
use reqwest::Method;
use serde_json::json;

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
    // Counted when the wake script answers, which the woken deliveries may overtake.
    eventually("the deliverer counts what it woke", || async {
        hookline
            .metric(
                hookline.deliverer_admins[0],
                "hookline_held_deliveries_woken_total",
                &[],
            )
            .await
            >= 4.0
    })
    .await;
    hookline.stop().await;
}

/// The event ids of the endpoint's deliveries that the retry pool holds for more than five
/// minutes: held behind its open circuit until a probe wakes them, not on a short timer.
async fn held_long(hookline: &Hookline, endpoint_path: &str) -> Vec<String> {
    let endpoint_id = endpoint_path.rsplit('/').next().expect("endpoint id");
    let suffix = format!(":{endpoint_id}");
    let due = hookline.retry_pool().await;
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
    receiver.wait_for_events(&held).await;
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
    receiver.wait_for_events(&held).await;
    hookline.stop().await;
}

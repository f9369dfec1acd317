//! Events in (HTTP or AMQP), signed webhooks out, retries and dead letters.

use hookline_tests::{Hookline, Receiver, eventually, verify_signature};
use lapin::BasicProperties;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn http_event_arrives_signed_at_the_endpoint() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["profile.parsing.success"], "headers": {"X-Api-Key": "k1"}}),
        )
        .await;
    let secret = endpoint["secret"]
        .as_str()
        .expect("secret returned on create");
    assert!(secret.starts_with("whsec_"));

    let accepted = hookline
        .post_event(
            "acme",
            json!({"type": "profile.parsing.success", "version": "2", "data": {"profile": {"key": "p1"}},
                   "occurred_at": "2026-11-01T10:00:00Z"}),
        )
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.body["duplicate"], false);
    let id = accepted.body["id"]
        .as_str()
        .expect("generated id")
        .to_owned();

    let received = receiver.wait_for(1).await;
    let webhook = &received[0];
    assert!(
        verify_signature(secret, webhook),
        "signature verifies with an independent verifier"
    );
    assert_eq!(webhook.header("webhook-id"), Some(id.as_str()));
    assert_eq!(webhook.header("content-type"), Some("application/json"));
    assert_eq!(webhook.header("x-api-key"), Some("k1"));
    assert!(
        webhook
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("Hookline/"))
    );
    let timestamp: i64 = webhook
        .header("webhook-timestamp")
        .expect("timestamp")
        .parse()
        .expect("unix seconds");
    assert!((time::OffsetDateTime::now_utc().unix_timestamp() - timestamp).abs() < 60);
    assert_eq!(
        webhook.json(),
        json!({"id": id, "type": "profile.parsing.success", "tenant": "acme",
               "timestamp": "2026-11-01T10:00:00Z", "version": "2", "data": {"profile": {"key": "p1"}}})
    );
    assert!(
        !verify_signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", webhook),
        "another secret does not verify"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn direct_amqp_publish_is_delivered_like_http() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["application.status.updated"]}),
        )
        .await;
    let body = json!({
        "id": "evt_from_ats_1", "tenant": "acme", "type": "application.status.updated",
        "occurred_at": "2026-11-02T08:30:00Z", "data": {"application": 42},
        "changes": {"status": {"from": "screening", "to": "hired"}}
    });
    hookline
        .publish_direct(
            "application.status.updated",
            &serde_json::to_vec(&body).expect("json"),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id("evt_from_ats_1".into()),
        )
        .await;
    let received = receiver.wait_for(1).await;
    assert!(verify_signature(
        endpoint["secret"].as_str().expect("secret"),
        &received[0]
    ));
    assert_eq!(received[0].header("webhook-id"), Some("evt_from_ats_1"));
    assert_eq!(
        received[0].json(),
        json!({"id": "evt_from_ats_1", "type": "application.status.updated", "tenant": "acme",
               "timestamp": "2026-11-02T08:30:00Z", "data": {"application": 42},
               "changes": {"status": {"from": "screening", "to": "hired"}}})
    );
    let consumed = hookline
        .metric(
            hookline.deliverer_admins[0],
            "hookline_events_consumed_total",
            &[("source", "amqp")],
        )
        .await;
    assert_eq!(consumed, 1.0, "counted as a direct AMQP event");
    hookline.stop().await;
}

#[tokio::test]
async fn wildcards_match_and_tenants_stay_isolated() {
    let hookline = Hookline::start().await;
    let profiles = Receiver::start().await;
    let jobs = Receiver::start().await;
    let other_tenant = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": profiles.url(), "event_types": ["profile.*.success"]}),
        )
        .await;
    hookline
        .create_endpoint("acme", json!({"url": jobs.url(), "event_types": ["job.#"]}))
        .await;
    hookline
        .create_endpoint(
            "globex",
            json!({"url": other_tenant.url(), "event_types": ["#"]}),
        )
        .await;

    for event_type in [
        "profile.parsing.success",
        "profile.parsing.error",
        "profile.scoring.success",
        "job.storing.success",
        "candidate.interested",
    ] {
        let answer = hookline
            .post_event("acme", json!({"type": event_type, "data": {}}))
            .await;
        assert_eq!(answer.status, 202);
    }
    let marker = hookline
        .post_event("globex", json!({"type": "globex.only", "data": {}}))
        .await;
    assert_eq!(marker.status, 202);

    let types = |received: Vec<hookline_tests::Received>| {
        let mut types: Vec<String> = received
            .iter()
            .map(|r| r.json()["type"].as_str().expect("type").to_owned())
            .collect();
        types.sort();
        types
    };
    assert_eq!(
        types(profiles.wait_for(2).await),
        ["profile.parsing.success", "profile.scoring.success"]
    );
    assert_eq!(types(jobs.wait_for(1).await), ["job.storing.success"]);
    let globex = other_tenant.wait_for(1).await;
    assert_eq!(globex[0].json()["tenant"], "globex");
    // Every acme event has been handled once all acme receivers got theirs; the globex
    // endpoint subscribes to everything and still saw only its own tenant's event.
    eventually("all events consumed", || async {
        hookline
            .metric(
                hookline.deliverer_admins[0],
                "hookline_events_consumed_total",
                &[],
            )
            .await
            >= 6.0
    })
    .await;
    assert_eq!(types(other_tenant.received()), ["globex.only"]);
    assert_eq!(profiles.count(), 2);
    hookline.stop().await;
}

#[tokio::test]
async fn form_format_sends_data_keys_as_fields() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["profile.#"], "format": "form"}),
        )
        .await;
    hookline
        .post_event(
            "acme",
            json!({"id": "evt_form_1", "type": "profile.parsing.success", "occurred_at": "2026-11-03T09:00:00Z",
                   "data": {"origin": "api", "message": "parsed", "profile": {"key": "abc", "tags": ["x"]}}}),
        )
        .await;
    let received = receiver.wait_for(1).await;
    assert_eq!(
        received[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(verify_signature(
        endpoint["secret"].as_str().expect("secret"),
        &received[0]
    ));
    assert_eq!(
        std::str::from_utf8(&received[0].body).expect("utf-8"),
        "type=profile.parsing.success&id=evt_form_1&timestamp=2026-11-03T09%3A00%3A00Z\
         &origin=api&message=parsed&profile=%7B%22key%22%3A%22abc%22%2C%22tags%22%3A%5B%22x%22%5D%7D"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn failing_endpoint_is_retried_without_resending_to_healthy_ones() {
    let hookline = Hookline::builder()
        .retry_schedule("100ms,100ms,100ms")
        .start()
        .await;
    let flaky = Receiver::answering(&[500, 503]).await;
    let healthy = Receiver::start().await;
    let flaky_endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": flaky.url(), "event_types": ["candidate.#"]}),
        )
        .await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": healthy.url(), "event_types": ["candidate.#"]}),
        )
        .await;

    let accepted = hookline
        .post_event(
            "acme",
            json!({"type": "candidate.interested", "data": {"candidate": 7}}),
        )
        .await;
    let id = accepted.body["id"].as_str().expect("id").to_owned();
    let attempts = flaky.wait_for(3).await;
    for attempt in &attempts {
        assert_eq!(
            attempt.header("webhook-id"),
            Some(id.as_str()),
            "same id on every retry"
        );
        assert!(verify_signature(
            flaky_endpoint["secret"].as_str().expect("secret"),
            attempt
        ));
        assert_eq!(attempt.body, attempts[0].body, "same body on every retry");
    }
    // The success was the last thing Hookline had to do for this event: once the retry
    // backlog is empty, nothing else can be sent.
    let mut redis = hookline.redis().await;
    eventually("retry backlog drained", || async {
        hookline.retry_pool().await.is_empty()
    })
    .await;
    assert_eq!(flaky.count(), 3, "two failures and one success");
    assert_eq!(
        healthy.count(),
        1,
        "the healthy endpoint got the event once"
    );
    let _: () = redis::AsyncCommands::ping(&mut redis).await.expect("ping");
    assert_eq!(hookline.queue_depth("dead-letter").await, 0);
    hookline.stop().await;
}

#[tokio::test]
async fn exhausted_delivery_is_dead_lettered_with_its_reason() {
    let hookline = Hookline::builder()
        .retry_schedule("50ms,50ms")
        .start()
        .await;
    let down = Receiver::start().await;
    down.set_status(500);
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": down.url(), "event_types": ["invoice.status.updated"]}),
        )
        .await;
    let accepted = hookline
        .post_event(
            "acme",
            json!({"id": "inv_1", "type": "invoice.status.updated", "data": {"invoice": 1}}),
        )
        .await;
    assert_eq!(accepted.status, 202);
    let records = hookline.dead_letters(1).await;
    let record = &records[0];
    assert_eq!(record["type"], "delivery_ref_v1");
    assert_eq!(record["reason"], "retries_exhausted");
    assert_eq!(record["attempts"], 3, "first attempt plus two retries");
    assert_eq!(record["endpoint_id"], endpoint["id"]);
    assert_eq!(record["last_error"]["class"], "http_error");
    assert_eq!(record["last_error"]["status"], 500);
    assert_eq!(record["event_id"], "inv_1");
    assert_eq!(record["tenant"], "acme");
    assert_eq!(record["event_type"], "invoice.status.updated");
    assert!(
        record.get("event").is_none(),
        "the ops record carries no event content: {record}"
    );
    // The event itself is in the (sealed) index the API reads, written by the index's
    // own consumer: the reference may be taken off the queue before it is there.
    let listed = hookline
        .get_until("/v1/tenants/acme/dead-letters", |body| {
            body["data"][0]["id"] == record["id"]
        })
        .await;
    assert_eq!(
        listed["data"][0]["event"]["data"],
        json!({"invoice": 1}),
        "{listed}"
    );
    assert_eq!(down.count(), 3);
    hookline.stop().await;
}

#[tokio::test]
async fn unparseable_amqp_message_is_dead_lettered_and_does_not_block_the_queue() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    hookline
        .publish_direct(
            "candidate.interested",
            b"{not json",
            BasicProperties::default().with_message_id("bad1".into()),
        )
        .await;
    hookline
        .publish_direct(
            "candidate.interested",
            br#"{"tenant": "acme", "type": "Bad..Type", "data": {}}"#,
            BasicProperties::default().with_message_id("bad2".into()),
        )
        .await;
    // Within serde's recursion limit, so the body parses; every free-form field of the
    // contract has the depth limit of data.
    let deep_actor = (0..120).fold(json!(1), |inner, _| json!({"a": inner}));
    hookline
        .publish_direct(
            "candidate.interested",
            &serde_json::to_vec(&json!({"tenant": "acme", "type": "candidate.interested",
                                        "data": {}, "actor": {"id": deep_actor}}))
            .expect("json"),
            BasicProperties::default().with_message_id("bad3".into()),
        )
        .await;
    hookline
        .publish_direct(
            "candidate.interested",
            br#"{"tenant": "acme", "type": "candidate.interested", "data": {"ok": true}}"#,
            BasicProperties::default(),
        )
        .await;
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].json()["data"], json!({"ok": true}));
    let mut records = hookline.dead_letters(3).await;
    records.sort_by_key(|r| r["message_id"].as_str().unwrap_or_default().to_owned());
    for record in &records {
        assert_eq!(record["type"], "message_v1");
        assert_eq!(record["reason"], "invalid_message");
    }
    assert!(
        records[0]["error"]
            .as_str()
            .expect("error")
            .starts_with("body:"),
        "{}",
        records[0]
    );
    assert_eq!(records[0]["body"], "{not json");
    assert!(
        records[1]["error"]
            .as_str()
            .expect("error")
            .starts_with("type:"),
        "{}",
        records[1]
    );
    assert!(
        records[2]["error"]
            .as_str()
            .expect("error")
            .starts_with("actor.id:"),
        "{}",
        records[2]
    );
    hookline.stop().await;
}

#[tokio::test]
async fn repeated_event_id_is_accepted_once() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let event = json!({"id": "evt_dup", "type": "candidate.declined", "data": {}});
    let first = hookline.post_event("acme", event.clone()).await;
    let second = hookline.post_event("acme", event.clone()).await;
    assert_eq!(
        (first.status, first.body["duplicate"].clone()),
        (202, json!(false))
    );
    assert_eq!(
        (second.status, second.body["duplicate"].clone()),
        (202, json!(true))
    );
    assert_eq!(second.body["id"], "evt_dup");
    // The same id under another tenant is another event.
    let other = hookline.post_event("globex", event).await;
    assert_eq!(other.body["duplicate"], false);
    hookline
        .post_event(
            "acme",
            json!({"id": "evt_marker", "type": "candidate.declined", "data": {}}),
        )
        .await;
    let received = receiver.wait_for(2).await;
    let ids: Vec<_> = received
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
        .collect();
    assert!(
        ids.contains(&"evt_marker".to_owned()) && ids.contains(&"evt_dup".to_owned()),
        "{ids:?}"
    );
    eventually("both published events consumed", || async {
        hookline
            .metric(
                hookline.deliverer_admins[0],
                "hookline_events_consumed_total",
                &[],
            )
            .await
            >= 3.0
    })
    .await;
    assert_eq!(receiver.count(), 2, "the duplicate was never published");
    assert_eq!(
        hookline
            .metric(
                hookline.ingest_admin,
                "hookline_events_duplicate_total",
                &[]
            )
            .await,
        1.0
    );
    hookline.stop().await;
}

#[tokio::test]
async fn duplicate_ids_racing_each_other_publish_once() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let event = json!({"id": "evt-race", "type": "a.b", "data": {}});
    let answers =
        futures::future::join_all((0..20).map(|_| hookline.post_event("acme", event.clone())))
            .await;
    let fresh = answers
        .iter()
        .filter(|a| a.status == 202 && a.body["duplicate"] == false)
        .count();
    assert_eq!(fresh, 1, "exactly one request publishes: {answers:?}");
    for answer in &answers {
        assert!(
            answer.status == 202 || (answer.status == 409 && answer.body["error"]["field"] == "id"),
            "the others are duplicates or told to retry: {answer:?}"
        );
    }
    // A marker event sent afterwards gives a second publish, had there been one, the
    // time to arrive too.
    hookline
        .post_event(
            "acme",
            json!({"id": "evt-after", "type": "a.b", "data": {}}),
        )
        .await;
    eventually("the raced event and the marker arrive", || async {
        let received = receiver.received();
        let has = |id| received.iter().any(|r| r.header("webhook-id") == Some(id));
        has("evt-after") && has("evt-race")
    })
    .await;
    let raced = receiver
        .received()
        .iter()
        .filter(|r| r.header("webhook-id") == Some("evt-race"))
        .count();
    assert_eq!(raced, 1, "published and delivered once");
    hookline.stop().await;
}

#[tokio::test]
async fn endpoint_created_just_before_an_event_receives_it() {
    // A long cache TTL makes the race certain: without the endpoints version stamped on
    // the event, the deliverer would match the second event against its cached list.
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__ENDPOINT_CACHE_TTL", "1h")
        .start()
        .await;
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": first.url(), "event_types": ["job.created"]}),
        )
        .await;
    let accepted = hookline
        .post_event("acme", json!({"type": "job.created", "data": {"n": 1}}))
        .await;
    assert_eq!(accepted.status, 202);
    first.wait_for(1).await;

    hookline
        .create_endpoint(
            "acme",
            json!({"url": second.url(), "event_types": ["job.created"]}),
        )
        .await;
    let accepted = hookline
        .post_event(
            "acme",
            json!({"id": "evt_after_create", "type": "job.created", "data": {"n": 2}}),
        )
        .await;
    assert_eq!(accepted.status, 202);
    let received = second.wait_for(1).await;
    assert_eq!(received[0].header("webhook-id"), Some("evt_after_create"));
    first.wait_for(2).await;
    hookline.stop().await;
}

#[tokio::test]
async fn a_slow_receiver_does_not_hold_its_message_and_still_gets_the_delivery_once() {
    // One message in hand at a time: a delivery that held its message would keep every
    // other event waiting until its receiver answered.
    let hookline = Hookline::builder()
        .setting("HOOKLINE__AMQP__PREFETCH", "1")
        .setting("HOOKLINE__DELIVERY__TIMEOUT", "5m")
        .setting("HOOKLINE__RETRY__LEASE", "10m")
        .start()
        .await;
    let slow = Receiver::start().await;
    slow.hold_answers();
    let fast = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": slow.url(), "event_types": ["application.status.updated"]}),
        )
        .await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": fast.url(), "event_types": ["candidate.interested"]}),
        )
        .await;

    let slow_event = hookline
        .post_event(
            "acme",
            json!({"type": "application.status.updated", "data": {"status": "hired"}}),
        )
        .await;
    let slow_id = slow_event.body["id"].as_str().expect("id").to_owned();
    slow.wait_for(1).await;
    hookline
        .post_event("acme", json!({"type": "candidate.interested", "data": {}}))
        .await;
    fast.wait_for(1).await;
    assert_eq!(
        slow.in_flight(),
        1,
        "the next event went out while the slow receiver still held its request"
    );
    let handed_off = hookline
        .metric(
            hookline.deliverer_admins[0],
            "hookline_deliveries_handed_off_total",
            &[],
        )
        .await;
    assert_eq!(handed_off, 1.0);
    // Until it is answered, the delivery is a claimed task in the retry pool: if this
    // deliverer died now, the task's lease would bring it back.
    let task_ids: Vec<String> = hookline
        .retry_pool()
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(task_ids.len(), 1, "{task_ids:?}");
    assert!(
        task_ids[0].starts_with(&format!("{slow_id}:")),
        "{task_ids:?}"
    );

    slow.release_answers();
    let state = hookline
        .get_until(&format!("/v1/tenants/acme/events/{slow_id}"), |body| {
            body["deliveries"]
                .as_object()
                .is_some_and(|d| d.values().any(|s| s["status"] == "delivered"))
        })
        .await;
    eventually("the handed-off task is completed", || async {
        hookline.retry_pool().await.is_empty()
    })
    .await;
    assert_eq!(slow.count(), 1, "delivered once: {state}");
    assert_eq!(fast.count(), 1);
    hookline.stop().await;
}

#[tokio::test]
async fn a_delivery_parked_behind_a_stuck_endpoint_waits_until_a_slot_can_free() {
    // One slot, held by a request the receiver never answers: the next delivery is parked
    // until that attempt times out, not on the 100 ms deferral timer, which would bring it
    // back to be parked again some five times before a slot could free.
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__MAX_IN_FLIGHT_PER_ENDPOINT", "1")
        .setting("HOOKLINE__DELIVERY__TIMEOUT", "5m")
        .setting("HOOKLINE__RETRY__LEASE", "10m")
        .start()
        .await;
    let receiver = Receiver::start().await;
    receiver.hold_answers();
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["candidate.interested"]}),
        )
        .await;
    hookline
        .post_event(
            "acme",
            json!({"type": "candidate.interested", "data": {"n": 1}}),
        )
        .await;
    receiver.wait_for(1).await;
    let attempt_started = std::time::SystemTime::now();
    let parked = hookline
        .post_event(
            "acme",
            json!({"type": "candidate.interested", "data": {"n": 2}}),
        )
        .await;
    let parked_id = format!(
        "{}:{}",
        parked.body["id"].as_str().expect("event id"),
        endpoint["id"].as_str().expect("endpoint id")
    );
    let due_ms = || async {
        hookline
            .retry_pool()
            .await
            .into_iter()
            .find(|(id, _)| *id == parked_id)
            .map(|(_, due)| due)
    };
    eventually("the second delivery is parked", || async {
        due_ms().await.is_some()
    })
    .await;
    let due = due_ms().await.expect("parked");
    let held_until =
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(due).expect("positive"));
    assert!(
        held_until >= attempt_started + Duration::from_secs(4 * 60),
        "parked until the first attempt's 5-minute timeout, not for a moment"
    );
    assert_eq!(receiver.count(), 1, "one request at a time");
    receiver.release_answers();
    hookline.stop().await;
}

#[tokio::test]
async fn an_event_larger_than_one_amqp_frame_arrives_whole() {
    // Frames are 32 KiB: this event crosses the broker in seven of them, both ways.
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["profile.parsing.success"]}),
        )
        .await;
    let resume: String = (0..200_000)
        .map(|n| char::from(b'a' + (n % 26) as u8))
        .collect();
    let accepted = hookline
        .post_event(
            "acme",
            json!({"type": "profile.parsing.success", "data": {"resume": resume}}),
        )
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].json()["data"]["resume"], resume.as_str());
    hookline.stop().await;
}

#[tokio::test]
async fn amqp_url_may_list_several_nodes_and_a_dead_one_is_passed_over() {
    let brokers = hookline_tests::Brokers::from_env();
    // Port 1 on loopback refuses at once: a node that is down.
    let nodes = format!("amqp://guest:guest@127.0.0.1:1/%2f, {}", brokers.amqp_url);
    let hookline = Hookline::builder()
        .setting("HOOKLINE__AMQP__URL", &nodes)
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    for _ in 0..5 {
        let answer = hookline
            .post_event("acme", json!({"type": "candidate.interested", "data": {}}))
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    receiver.wait_for(5).await;
    hookline.stop().await;
}

#[tokio::test]
async fn what_was_deleted_from_the_broker_is_declared_again_on_reconnect() {
    let mut hookline = Hookline::builder().deliverers(0).start().await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let accepted = hookline
        .post_event("acme", json!({"type": "candidate.interested", "data": {}}))
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);

    // The events exchange disappears under ingest (a broker that lost its definitions,
    // an operator's mistake): the publish that meets it fails, ingest reconnects, finds
    // the exchange missing and declares the topology again.
    let connection = hookline.amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_delete(
            format!("{}.events", hookline.prefix).as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete the events exchange");
    eventually("ingest accepts events again", || async {
        let answer = hookline
            .post_event("acme", json!({"type": "candidate.interested", "data": {}}))
            .await;
        assert!(
            answer.status == 202 || answer.status == 503,
            "accepted or unavailable: {} {}",
            answer.status,
            answer.body
        );
        answer.status == 202
    })
    .await;

    // A delivery queue deleted under a consuming deliverer: its consumer is cancelled,
    // reconnects, and declares the queue and its binding again.
    let admin = hookline.start_deliverer(&[]).await;
    let consuming = f64::from(hookline.partitions);
    eventually("every partition is consumed", || async {
        hookline
            .metric(admin, "hookline_consumer_connected", &[])
            .await
            >= consuming
    })
    .await;
    for partition in 0..hookline.partitions {
        channel
            .queue_delete(
                format!("{}.deliveries.{partition}", hookline.prefix)
                    .as_str()
                    .into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .expect("delete a delivery queue");
    }
    let _ = connection.close(200, "done".into()).await;
    eventually("every partition is declared and consumed again", || async {
        let mut declared = true;
        for partition in 0..hookline.partitions {
            declared &= hookline
                .queue_exists(&format!("deliveries.{partition}"))
                .await;
        }
        declared
            && hookline
                .metric(admin, "hookline_consumer_connected", &[])
                .await
                >= consuming
    })
    .await;
    let ids: Vec<String> = (0..3).map(|n| format!("after-the-deletes-{n}")).collect();
    for id in &ids {
        let answer = hookline
            .post_event(
                "acme",
                json!({"id": id, "type": "candidate.interested", "data": {}}),
            )
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    receiver.wait_for_events(&ids).await;
    hookline.stop().await;
}

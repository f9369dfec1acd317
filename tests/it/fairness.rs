//! Fairness between tenants: a backlog of one tenant does not hold back the others —
//! neither those in other partitions nor those that share its partition — bulk events
//! give way to real-time ones without starving, and changing the number of partitions
//! (or upgrading from the single queue) loses nothing. Order of arrival, not time, is
//! what these tests assert.

use hookline_tests::{Hookline, Receiver, eventually, eventually_within};
use lapin::BasicProperties;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Backlog of the heavy tenant: large enough that draining it takes seconds at the
/// receiver's pace (50 ms per answer, 32 at once: some 640 a second).
const BACKLOG: usize = 3_000;

async fn post_batches(hookline: &Hookline, tenant: &str, events: usize, extra: Value) {
    let mut sent = 0;
    while sent < events {
        let size = (events - sent).min(500);
        let batch: Vec<Value> = (sent..sent + size)
            .map(|n| {
                let mut event = json!({"type": "candidate.created", "data": {"n": n}});
                if let (Some(event), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
                    event.extend(extra.clone());
                }
                event
            })
            .collect();
        let answer = hookline
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/events/batch"),
                Some(json!({ "events": batch })),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        sent += size;
    }
}

async fn depths(hookline: &Hookline) -> Vec<u32> {
    let mut depths = Vec::new();
    for partition in 0..hookline.partitions {
        depths.push(
            hookline
                .queue_depth(&format!("deliveries.{partition}"))
                .await,
        );
    }
    depths
}

/// The partition a tenant's events go to, found by sending one event (no endpoint
/// receives it) while no deliverer consumes.
async fn partition_of(hookline: &Hookline, tenant: &str) -> usize {
    let before = depths(hookline).await;
    post_batches(hookline, tenant, 1, json!({})).await;
    let after = depths(hookline).await;
    after
        .iter()
        .zip(&before)
        .position(|(after, before)| after > before)
        .expect("the event is in one partition")
}

/// A tenant whose events share `heavy`'s partition, and one whose events do not.
async fn neighbours(hookline: &Hookline, heavy: &str) -> (String, String) {
    let heavy_partition = partition_of(hookline, heavy).await;
    let (mut shared, mut apart) = (None, None);
    for n in 0..200 {
        let tenant = format!("tenant-{n}");
        let partition = partition_of(hookline, &tenant).await;
        if partition == heavy_partition {
            shared.get_or_insert(tenant);
        } else {
            apart.get_or_insert(tenant);
        }
        if let (Some(shared), Some(apart)) = (&shared, &apart) {
            return (shared.clone(), apart.clone());
        }
    }
    panic!("no tenant shares partition {heavy_partition} among 200");
}

async fn endpoint_for(hookline: &Hookline, tenant: &str, receiver: &Receiver) {
    hookline
        .create_endpoint(tenant, json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
}

#[tokio::test]
async fn a_backlog_of_one_tenant_does_not_hold_back_the_others() {
    let mut hookline = Hookline::builder().deliverers(0).start().await;
    let (shared, apart) = neighbours(&hookline, "heavy").await;
    let heavy = Receiver::start().await;
    heavy.set_delay(Some(Duration::from_millis(50)));
    let (quiet_shared, quiet_apart) = (Receiver::start().await, Receiver::start().await);
    endpoint_for(&hookline, "heavy", &heavy).await;
    endpoint_for(&hookline, &shared, &quiet_shared).await;
    endpoint_for(&hookline, &apart, &quiet_apart).await;

    // The heavy tenant's backlog accumulates while no deliverer runs; the quiet
    // tenants' events are queued behind it, one of them in the same queue.
    post_batches(&hookline, "heavy", BACKLOG, json!({})).await;
    post_batches(&hookline, &shared, 3, json!({})).await;
    post_batches(&hookline, &apart, 3, json!({})).await;

    hookline.start_deliverer(&[]).await;
    // Each tenant also gets the event that found its partition, queued first.
    quiet_apart.wait_for(4).await;
    let heavy_when_apart_arrived = heavy.count();
    quiet_shared.wait_for(4).await;
    let heavy_when_shared_arrived = heavy.count();
    assert!(
        heavy_when_apart_arrived < BACKLOG / 2,
        "a tenant in another partition waited for {heavy_when_apart_arrived} of the backlog"
    );
    assert!(
        heavy_when_shared_arrived < BACKLOG / 2,
        "a tenant sharing the partition waited for {heavy_when_shared_arrived} of the backlog"
    );
    let parked = hookline
        .metric(
            hookline.deliverer_admins[0],
            "hookline_parked_total",
            &[("priority", "realtime")],
        )
        .await;
    assert!(parked > 0.0, "the heavy tenant's excess went to its lane");

    heavy.set_delay(None);
    eventually_within(
        "the whole backlog is delivered",
        Duration::from_secs(120),
        || async { heavy.count() > BACKLOG },
    )
    .await;
    eventually("the pool is empty", || async {
        hookline.retry_pool().await.is_empty()
    })
    .await;
    assert_eq!(
        distinct_ids(&heavy),
        BACKLOG + 1,
        "each event of the backlog (and the probe) once"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn bulk_events_give_way_to_real_time_ones_without_starving() {
    let mut hookline = Hookline::builder().deliverers(0).start().await;
    let receiver = Receiver::start().await;
    receiver.set_delay(Some(Duration::from_millis(50)));
    endpoint_for(&hookline, "importer", &receiver).await;
    post_batches(&hookline, "importer", BACKLOG, json!({"priority": "bulk"})).await;
    // Real-time events of the same tenant, queued behind its bulk import.
    let mut urgent = Vec::new();
    for n in 0..5 {
        let answer = hookline
            .post_event(
                "importer",
                json!({"type": "application.status.updated", "data": {"urgent": n}}),
            )
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        urgent.push(answer.body["id"].as_str().expect("id").to_owned());
    }

    hookline.start_deliverer(&[]).await;
    receiver.wait_for_events(&urgent).await;
    let bulk_first = receiver.count() - urgent.len();
    assert!(
        bulk_first < BACKLOG / 2,
        "real-time events waited for {bulk_first} bulk ones"
    );
    receiver.set_delay(None);
    eventually_within(
        "every bulk event is delivered too",
        Duration::from_secs(120),
        || async { receiver.count() >= BACKLOG + urgent.len() },
    )
    .await;
    let parked = hookline
        .metric(
            hookline.deliverer_admins[0],
            "hookline_parked_total",
            &[("priority", "bulk")],
        )
        .await;
    assert!(
        parked >= BACKLOG as f64,
        "bulk events go through bulk lanes: {parked}"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn lowering_the_partition_count_drains_the_queues_left_over() {
    let mut hookline = Hookline::builder()
        .setting("HOOKLINE__AMQP__PARTITIONS", "4")
        .deliverers(0)
        .start()
        .await;
    let receiver = Receiver::start().await;
    let tenants: Vec<String> = (0..12).map(|n| format!("tenant-{n}")).collect();
    for tenant in &tenants {
        endpoint_for(&hookline, tenant, &receiver).await;
        post_batches(&hookline, tenant, 20, json!({})).await;
    }
    let queued = depths(&hookline).await;
    assert!(
        queued[2..].iter().sum::<u32>() > 0,
        "some events wait in the partitions about to be retired: {queued:?}"
    );

    let admin = hookline
        .start_deliverer(&[("HOOKLINE__AMQP__PARTITIONS", "2")])
        .await;
    // Events accepted after the change go to the remaining partitions.
    for tenant in &tenants {
        post_batches(&hookline, tenant, 5, json!({})).await;
    }
    let expected = tenants.len() * 25;
    eventually_within(
        "every event before and after the change is delivered",
        Duration::from_secs(60),
        || async { receiver.count() >= expected },
    )
    .await;
    assert_eq!(distinct_ids(&receiver), expected);
    assert_eq!(depths(&hookline).await, vec![0; 4]);
    let consumed = hookline
        .metric(admin, "hookline_consumer_connected", &[])
        .await;
    assert_eq!(consumed, 4.0, "two partitions and two retired queues");

    // An operator deletes a drained retired queue: the deliverer stops consuming it
    // rather than reconnecting to it forever.
    let connection = hookline.amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_delete(
            format!("{}.deliveries.3", hookline.prefix).as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete");
    let _ = connection.close(200, "done".into()).await;
    eventually("the deleted queue is no longer consumed", || async {
        hookline
            .metric(admin, "hookline_consumer_connected", &[])
            .await
            == 3.0
    })
    .await;
    hookline.stop().await;
}

#[tokio::test]
async fn the_single_queue_of_an_older_installation_is_drained() {
    let mut hookline = Hookline::builder().deliverers(0).start().await;
    let receiver = Receiver::start().await;
    endpoint_for(&hookline, "acme", &receiver).await;
    // What an installation from before partitions has: `{prefix}.deliveries`, bound to
    // every event type, holding events published while it ran.
    let connection = hookline.amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    let legacy = format!("{}.deliveries", hookline.prefix);
    let events = format!("{}.events", hookline.prefix);
    channel
        .exchange_declare(
            events.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("events exchange");
    channel
        .queue_declare(
            legacy.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("legacy queue");
    channel
        .queue_bind(
            legacy.as_str().into(),
            events.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    // Published while the old installation ran: in that queue only.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for n in 0..10 {
        let body = json!({"tenant": "acme", "type": "candidate.created", "data": {"n": n}});
        channel
            .basic_publish(
                "".into(),
                legacy.as_str().into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(hookline.queue_depth("deliveries").await, 10);

    hookline.start_deliverer(&[]).await;
    receiver.wait_for(10).await;
    eventually("the old queue is empty", || async {
        hookline.queue_depth("deliveries").await == 0
    })
    .await;
    // Unbound: an event accepted now reaches the receiver once, from its partition.
    let answer = hookline
        .post_event("acme", json!({"type": "candidate.created", "data": {}}))
        .await;
    assert_eq!(answer.status, 202);
    receiver.wait_for(11).await;
    assert_eq!(distinct_ids(&receiver), 11);
    assert_eq!(receiver.count(), 11, "no event twice");
    hookline.stop().await;
}

fn distinct_ids(receiver: &Receiver) -> usize {
    receiver
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[tokio::test]
async fn retries_stored_by_an_earlier_version_are_delivered() {
    let mut hookline = Hookline::builder().deliverers(0).start().await;
    let receiver = Receiver::start().await;
    let endpoint = hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    // A retry as the single pool of an earlier version holds it, due now.
    let message: hookline_shared::domain::event::EventMessage = serde_json::from_value(json!({
        "id": "evt_from_before", "type": "candidate.created", "data": {"n": 1}
    }))
    .expect("message");
    let event = hookline_shared::domain::event::Event::from_message(
        message,
        hookline_shared::domain::event::Fallbacks {
            tenant: Some(hookline_shared::domain::event::TenantId::parse("acme").expect("tenant")),
            id: String::new(),
            occurred_at: time::OffsetDateTime::now_utc(),
        },
    )
    .expect("event");
    let mut task = hookline_shared::contract::PendingDelivery::new(
        event,
        endpoint["id"].as_str().expect("id").to_owned(),
    );
    task.attempts = 1;
    let id = task.id();
    let stored = serde_json::to_string(&hookline_shared::contract::RetryTask::DeliveryV1(task))
        .expect("task");
    let (due_key, tasks_key) = hookline.keys().legacy_retry_pool();
    let mut redis = hookline.redis().await;
    let _: () = redis::AsyncCommands::hset(&mut redis, &tasks_key, &id, stored)
        .await
        .expect("hset");
    let _: () = redis::AsyncCommands::zadd(&mut redis, &due_key, &id, 0)
        .await
        .expect("zadd");

    hookline.start_deliverer(&[]).await;
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].header("webhook-id"), Some("evt_from_before"));
    // Each task is scheduled in the new pool before it is removed from the old one, so
    // it can be delivered first.
    eventually("the old pool is emptied", || {
        let mut redis = redis.clone();
        let tasks_key = tasks_key.clone();
        async move {
            let left: u64 = redis::AsyncCommands::hlen(&mut redis, &tasks_key)
                .await
                .expect("hlen");
            left == 0
        }
    })
    .await;
    hookline.stop().await;
}

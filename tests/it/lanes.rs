//! The retry pool's lanes against the test Redis: one tenant's due backlog does not
//! crowd another's out of a claim, bulk lanes get what real-time ones leave and never
//! less than their floor, and leases still fence completion.

use hookline_shared::contract::PendingDelivery;
use hookline_shared::domain::event::{Event, EventMessage, Fallbacks, TenantId};
use hookline_shared::store::retries::{Lane, RetryStore, shard_of};
use hookline_shared::store::{Keyspace, RedisConnection};
use serde_json::json;
use std::time::Duration;

async fn store() -> (RetryStore, Keyspace) {
    let brokers = hookline_tests::Brokers::from_env();
    let redis = RedisConnection::connect(
        &brokers.redis_url,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await
    .expect("Redis");
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let keys = Keyspace::new(&prefix);
    (
        RetryStore::new(redis, keys.clone(), development_sealer()),
        keys,
    )
}

/// The tests' installations run with the development key.
fn development_sealer() -> std::sync::Arc<hookline_shared::store::sealing::Sealer> {
    std::sync::Arc::new(hookline_shared::store::sealing::Sealer::new(None, None).expect("sealer"))
}

fn task(tenant: &str, n: usize, priority: &str) -> PendingDelivery {
    let message: EventMessage = serde_json::from_value(json!({
        "id": format!("{tenant}-{n}"),
        "type": "candidate.created",
        "data": {},
        "priority": priority,
    }))
    .expect("message");
    let event = Event::from_message(
        message,
        Fallbacks {
            tenant: Some(TenantId::parse(tenant).expect("tenant")),
            id: String::new(),
            occurred_at: time::OffsetDateTime::now_utc(),
        },
    )
    .expect("event");
    PendingDelivery::new(event, "ep".into())
}

/// Two tenants of one shard, found by trying names.
fn same_shard_tenants() -> (String, String) {
    let heavy = "heavy".to_owned();
    let quiet = (0..)
        .map(|n| format!("quiet-{n}"))
        .find(|name| shard_of(name) == shard_of(&heavy))
        .expect("some name shares the shard");
    (heavy, quiet)
}

async fn clean(keys: &Keyspace) {
    let mut redis = redis::Client::open(hookline_tests::Brokers::from_env().redis_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let found: Vec<String> = redis::AsyncCommands::keys(&mut redis, format!("{}:*", keys.prefix()))
        .await
        .expect("keys");
    if !found.is_empty() {
        let _: () = redis::AsyncCommands::del(&mut redis, found)
            .await
            .expect("del");
    }
}

#[tokio::test]
async fn a_tenant_with_one_due_task_is_served_beside_one_with_thousands() {
    let (store, keys) = store().await;
    let (heavy, quiet) = same_shard_tenants();
    let now = 1_000_000;
    // The heavy tenant's tasks became due long before the quiet one's.
    let backlog: Vec<(PendingDelivery, i64)> = (0..2_000)
        .map(|n| (task(&heavy, n, "realtime"), now - 60_000))
        .collect();
    store.schedule(&backlog).await.expect("schedule");
    store
        .schedule(&[(task(&quiet, 0, "realtime"), now - 1)])
        .await
        .expect("schedule");

    let claimed = store
        .claim(shard_of(&heavy), now, 30_000, 10, 0)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 10);
    let quiet_lane = Lane::of(
        &TenantId::parse(&quiet).expect("tenant"),
        Default::default(),
    );
    assert!(
        claimed.iter().any(|c| c.lane == quiet_lane),
        "the quiet tenant's one task is in the first claim: {:?}",
        claimed.iter().map(|c| &c.lane.name).collect::<Vec<_>>()
    );
    // Round-robin: once served, the heavy lane goes to the back of the round, behind a
    // lane that became due since, so one-task claims alternate.
    store
        .schedule(&[(task(&quiet, 1, "realtime"), now + 5)])
        .await
        .expect("schedule");
    let mut turns = Vec::new();
    for at in [now + 10, now + 11] {
        let next = store
            .claim(shard_of(&heavy), at, 30_000, 1, 0)
            .await
            .expect("claim");
        assert_eq!(next.len(), 1);
        turns.push(next[0].lane == quiet_lane);
    }
    assert_eq!(
        turns,
        [false, true],
        "heavy's turn (due first), then quiet's"
    );

    // A claimed task is fenced by its lease: a stale token completes nothing.
    let first = &claimed[0];
    assert!(
        !store
            .complete(&first.lane, &first.id, first.token - 1)
            .await
            .expect("complete"),
        "a stale lease"
    );
    assert!(
        store
            .complete(&first.lane, &first.id, first.token)
            .await
            .expect("complete")
    );
    clean(&keys).await;
}

#[tokio::test]
async fn bulk_lanes_get_what_real_time_leaves_and_at_least_their_floor() {
    let (store, keys) = store().await;
    let (tenant, other) = same_shard_tenants();
    let now = 1_000_000;
    let shard = shard_of(&tenant);
    let bulk: Vec<(PendingDelivery, i64)> = (0..100)
        .map(|n| (task(&tenant, n, "bulk"), now - 60_000))
        .collect();
    let realtime: Vec<(PendingDelivery, i64)> = (0..100)
        .map(|n| (task(&other, n, "realtime"), now - 1))
        .collect();
    store.schedule(&bulk).await.expect("schedule");
    store.schedule(&realtime).await.expect("schedule");

    let count_bulk = |claimed: &[hookline_shared::store::retries::Claimed]| {
        claimed
            .iter()
            .filter(|c| c.lane.name.starts_with("bulk:"))
            .count()
    };
    // Real-time has more than enough: bulk gets its floor, though due long before.
    let claimed = store.claim(shard, now, 30_000, 20, 2).await.expect("claim");
    assert_eq!(claimed.len(), 20);
    assert_eq!(count_bulk(&claimed), 2, "the floor");
    // Real-time runs out: bulk takes the rest.
    let claimed = store
        .claim(shard, now, 30_000, 200, 2)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 180, "everything still due");
    assert_eq!(count_bulk(&claimed), 98);
    clean(&keys).await;
}

#[tokio::test]
async fn the_operator_overview_lists_the_largest_backlogs() {
    let hookline = hookline_tests::Hookline::start().await;
    let redis = RedisConnection::connect(
        &hookline.brokers.redis_url,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await
    .expect("Redis");
    let store = RetryStore::new(redis, hookline.keys(), development_sealer());
    // Waiting an hour: retries the deliverer will not touch during the test.
    let later = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 3_600_000;
    let mut tasks: Vec<(PendingDelivery, i64)> = (0..5)
        .map(|n| (task("big", n, "realtime"), later))
        .collect();
    tasks.extend((0..2).map(|n| (task("importer", n, "bulk"), later)));
    tasks.push((task("small", 0, "realtime"), later));
    store.schedule(&tasks).await.expect("schedule");

    let overview = hookline.get("/v1/operator/overview").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert_eq!(
        overview.body["retry_backlog"]["largest_lanes"],
        json!([
            {"tenant": "big", "priority": "realtime", "deliveries": 5},
            {"tenant": "importer", "priority": "bulk", "deliveries": 2},
            {"tenant": "small", "priority": "realtime", "deliveries": 1},
        ])
    );
    assert_eq!(overview.body["retry_backlog"]["scheduled"], 8);
    assert_eq!(overview.body["retry_backlog"]["due"], 0);
    hookline.stop().await;
}

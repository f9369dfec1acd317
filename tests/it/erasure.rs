//! Personal data on request: erasing a subject removes every stored copy of its events —
//! history, attempt log, pending retries, dead letters in both stores — while another
//! subject's stay readable; everything at rest is sealed; an event still queued when its
//! subject is erased is never delivered; deleting a tenant removes it whole.

use hookline_shared::store::sealing::Sealer;
use hookline_tests::{Hookline, Receiver, eventually};
use lapin::BasicProperties;
use reqwest::Method;
use serde_json::{Value, json};

struct Person {
    subject: &'static str,
    email: String,
    name: String,
}

impl Person {
    fn new(subject: &'static str) -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        Self {
            subject,
            email: format!("{tag}@mail.example"),
            name: format!("Name{tag}"),
        }
    }

    fn event(&self, id: &str) -> Value {
        json!({"id": id, "type": "candidate.created", "subject": self.subject,
               "data": {"candidate": {"email": self.email, "name": self.name}},
               "actor": {"name": self.name, "email": self.email}})
    }

    fn markers(&self) -> [&str; 2] {
        [&self.email, &self.name]
    }
}

/// Sealed values opened with the tests' (development) key; plain ones as they are.
fn opened(values: &[String]) -> String {
    let sealer = Sealer::new(None, None).expect("sealer");
    values
        .iter()
        .map(|value| sealer.open(value).unwrap_or_else(|_| value.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn publish_amqp(hookline: &Hookline, event: &Value) {
    let mut body = event.clone();
    body["tenant"] = json!("acme");
    hookline
        .publish_direct(
            "candidate.created",
            &serde_json::to_vec(&body).expect("json"),
            BasicProperties::default(),
        )
        .await;
}

/// `POST /v1/tenants/acme/erasures` as an operator.
async fn erase(hookline: &Hookline, request: Value) -> hookline_tests::Answer {
    hookline
        .call(Method::POST, "/v1/tenants/acme/erasures", Some(request))
        .await
}

#[tokio::test]
async fn erasing_a_subject_removes_every_stored_copy_and_keeps_the_others() {
    // Second retry 4 s out: deliveries to the failing endpoint wait in the retry pool
    // when the erasure runs.
    let hookline = Hookline::builder()
        .retry_schedule("50ms,4s")
        .setting("HOOKLINE__API__ERASURE_SETTLE", "300ms")
        .start()
        .await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_status(500);
    let gone = Receiver::start().await;
    gone.set_status(410);
    for receiver in [&ok, &failing, &gone] {
        hookline
            .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
            .await;
    }
    let alice = Person::new("candidate:81");
    let bob = Person::new("candidate:82");
    for (person, prefix) in [(&alice, "alice"), (&bob, "bob")] {
        let accepted = hookline
            .post_event("acme", person.event(&format!("{prefix}-http")))
            .await;
        assert_eq!(accepted.status, 202, "{}", accepted.body);
        publish_amqp(&hookline, &person.event(&format!("{prefix}-amqp"))).await;
    }
    ok.wait_for(4).await;
    eventually(
        "the gone endpoint's deliveries dead-lettered and indexed",
        || async {
            hookline.get("/v1/tenants/acme/dead-letters").await.body["data"]
                .as_array()
                .is_some_and(|d| d.len() >= 4)
        },
    )
    .await;
    // A replay of one of alice's: through the retry pool, dead-lettered again.
    let listed = hookline.get("/v1/tenants/acme/dead-letters").await;
    let alice_dead = listed.body["data"]
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["event"]["id"] == "alice-http")
        .and_then(|d| d["id"].as_str())
        .expect("alice's dead letter")
        .to_owned();
    let replayed = hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/dead-letters/{alice_dead}/replay"),
            None,
        )
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    eventually("the replay dead-lettered again", || async {
        hookline.get("/v1/tenants/acme/dead-letters").await.body["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["id"] == alice_dead.as_str()))
    })
    .await;
    eventually(
        "the failing endpoint's retries waiting in the pool",
        || async { hookline.retry_pool().await.len() >= 4 },
    )
    .await;
    let before = opened(&hookline.redis_dump().await);
    for marker in alice.markers().into_iter().chain(bob.markers()) {
        assert!(
            before.contains(marker),
            "{marker} is stored before the erasure"
        );
    }

    let erased = erase(&hookline, json!({"subject": "candidate:81"})).await;
    assert_eq!(erased.status, 200, "{}", erased.body);
    let counts = &erased.body["counts"];
    assert_eq!(counts["events"], 2, "{}", erased.body);
    assert!(
        counts["dead_letters"].as_u64() >= Some(2),
        "{}",
        erased.body
    );
    assert!(counts["retries"].as_u64() >= Some(1), "{}", erased.body);
    assert!(counts["attempts"].as_u64() >= Some(6), "{}", erased.body);

    // Tombstoned retries are completed, counted, never attempted.
    let deliverer = hookline.deliverer_admins[0];
    let tombstones = counts["retries"].as_f64().expect("count");
    eventually("the erased retries are dropped", || async {
        hookline
            .metric(
                deliverer,
                "hookline_erased_deliveries_total",
                &[("stage", "retry")],
            )
            .await
            >= tombstones
    })
    .await;
    let alice_requests = |receiver: &Receiver| {
        receiver
            .received()
            .iter()
            .filter(|r| {
                r.header("webhook-id")
                    .is_some_and(|id| id.starts_with("alice"))
            })
            .count()
    };
    let failing_seen = alice_requests(&failing);

    let raw = hookline.redis_dump().await.join("\n");
    let after = opened(&hookline.redis_dump().await);
    let queued = hookline.queued_bodies().await.join("\n");
    for marker in alice.markers() {
        assert!(!raw.contains(marker), "sealed at rest: {marker}");
        assert!(
            !after.contains(marker),
            "{marker} survived the erasure in Redis"
        );
        assert!(!queued.contains(marker), "{marker} is in a queue");
    }
    for marker in bob.markers() {
        assert!(!raw.contains(marker), "sealed at rest: {marker}");
        assert!(
            after.contains(marker),
            "the other subject's {marker} is kept"
        );
    }
    for id in ["alice-http", "alice-amqp"] {
        let history = hookline.get(&format!("/v1/tenants/acme/events/{id}")).await;
        assert_eq!(history.status, 404, "{id}: {}", history.body);
    }
    let bob_history = hookline.get("/v1/tenants/acme/events/bob-http").await;
    assert_eq!(bob_history.status, 200);
    assert_eq!(
        bob_history.body["event"]["data"]["candidate"]["email"],
        bob.email.as_str()
    );
    let dead = hookline.get("/v1/tenants/acme/dead-letters").await;
    let dead_ids: Vec<&str> = dead.body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["event"]["id"].as_str())
        .collect();
    assert!(
        dead_ids.iter().all(|id| id.starts_with("bob")),
        "{dead_ids:?}"
    );
    assert!(!dead_ids.is_empty(), "bob's dead letters stay");

    // Asked again: nothing more to remove.
    let again = erase(&hookline, json!({"subject": "candidate:81"})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    for count in ["events", "dead_letters", "retries", "attempts"] {
        assert_eq!(again.body["counts"][count], 0, "{}", again.body);
    }
    let audit = hookline.get("/v1/operator/audit").await;
    assert_eq!(audit.status, 200);
    let entries = audit.body["data"].as_array().expect("entries");
    let mine: Vec<&Value> = entries.iter().filter(|e| e["tenant"] == "acme").collect();
    assert_eq!(mine.len(), 2, "{}", audit.body);
    assert_eq!(mine[1]["action"], "erasure");
    assert_eq!(mine[1]["actor"], "operator");
    assert_eq!(mine[1]["counts"], *counts);
    assert!(
        !audit.body.to_string().contains("candidate:81"),
        "the audit names a digest, not the subject"
    );
    // Nothing of alice reached the failing receiver after the erasure.
    assert_eq!(alice_requests(&failing), failing_seen);
    hookline.stop().await;
}

#[tokio::test]
async fn an_event_still_queued_when_its_subject_is_erased_is_never_delivered() {
    let mut hookline = Hookline::builder()
        .deliverers(0)
        .setting("HOOKLINE__API__ERASURE_SETTLE", "100ms")
        .start()
        .await;
    let receiver = Receiver::start().await;
    hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let alice = Person::new("candidate:81");
    let bob = Person::new("candidate:82");
    assert_eq!(
        hookline
            .post_event("acme", alice.event("alice-queued"))
            .await
            .status,
        202
    );
    let erased = erase(&hookline, json!({"subject": "candidate:81"})).await;
    assert_eq!(erased.status, 200, "{}", erased.body);
    // Queued behind it in the tenant's partition.
    assert_eq!(
        hookline
            .post_event("acme", bob.event("bob-queued"))
            .await
            .status,
        202
    );
    let admin = hookline.start_deliverer(&[]).await;
    receiver.wait_for(1).await;
    eventually("the queue drained", || async {
        hookline.deliveries_depth().await == 0
    })
    .await;
    let delivered: Vec<String> = receiver
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(delivered, ["bob-queued"]);
    assert_eq!(
        hookline
            .metric(
                admin,
                "hookline_erased_deliveries_total",
                &[("stage", "queued")]
            )
            .await,
        1.0
    );
    let history = hookline.get("/v1/tenants/acme/events/alice-queued").await;
    assert_eq!(history.status, 404);
    // A later event about the same person is new data, delivered.
    assert_eq!(
        hookline
            .post_event("acme", alice.event("alice-later"))
            .await
            .status,
        202
    );
    receiver.wait_for(2).await;
    hookline.stop().await;
}

#[tokio::test]
async fn erasure_requests_are_checked_and_kept_from_portal_links() {
    let hookline = Hookline::builder()
        .setting(
            "HOOKLINE__API__PORTAL_KEY",
            "portal-signing-key-for-the-tests-0123456789",
        )
        .setting("HOOKLINE__API__TENANT_TOKENS", "acme:acme-secret-token")
        .setting("HOOKLINE__API__ERASURE_SETTLE", "50ms")
        .start()
        .await;
    for (body, field) in [
        (json!({}), "subject"),
        (json!({"subject": "a", "event_id": "b"}), "subject"),
        (json!({"subject": "no spaces"}), "subject"),
        (json!({"event_id": ""}), "event_id"),
    ] {
        hookline
            .call(
                Method::POST,
                "/v1/tenants/acme/erasures",
                Some(body.clone()),
            )
            .await
            .assert_invalid(field, &body.to_string());
    }
    let link = hookline
        .call(Method::POST, "/v1/tenants/acme/portal-links", None)
        .await;
    let portal = link.body["token"].as_str().expect("token").to_owned();
    let by_link = hookline
        .call_as(
            Some(&portal),
            Method::POST,
            "/v1/tenants/acme/erasures",
            Some(json!({"subject": "candidate:1"})),
        )
        .await;
    assert_eq!(by_link.status, 403, "{}", by_link.body);
    assert_eq!(by_link.body["error"]["code"], "api_token_required");
    let by_token = hookline
        .call_as(
            Some("acme-secret-token"),
            Method::POST,
            "/v1/tenants/acme/erasures",
            Some(json!({"event_id": "evt-1"})),
        )
        .await;
    assert_eq!(by_token.status, 200, "{}", by_token.body);
    let other_tenant = hookline
        .call_as(
            Some("acme-secret-token"),
            Method::POST,
            "/v1/tenants/globex/erasures",
            Some(json!({"event_id": "evt-1"})),
        )
        .await;
    assert_eq!(other_tenant.status, 403);
    let audit_by_tenant = hookline
        .call_as(
            Some("acme-secret-token"),
            Method::GET,
            "/v1/operator/audit",
            None,
        )
        .await;
    assert_eq!(audit_by_tenant.status, 403);
    let audit = hookline.get("/v1/operator/audit").await;
    assert_eq!(audit.body["data"][0]["actor"], "tenant-token");
    assert_eq!(audit.body["data"][0]["target"], "event");
    hookline.stop().await;
}

#[tokio::test]
async fn deleting_a_tenant_removes_it_whole_and_ends_its_portal_links() {
    let hookline = Hookline::builder()
        .retry_schedule("50ms")
        .setting(
            "HOOKLINE__API__PORTAL_KEY",
            "portal-signing-key-for-the-tests-0123456789",
        )
        .setting("HOOKLINE__API__TENANT_TOKENS", "acme:acme-secret-token")
        .setting("HOOKLINE__API__ERASURE_SETTLE", "200ms")
        .start()
        .await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_status(500);
    for tenant in ["acme", "globex"] {
        for receiver in [&ok, &failing] {
            hookline
                .create_endpoint(tenant, json!({"url": receiver.url(), "event_types": ["#"]}))
                .await;
        }
        let person = Person::new("candidate:1");
        assert_eq!(
            hookline
                .post_event(tenant, person.event(&format!("{tenant}-1")))
                .await
                .status,
            202
        );
    }
    ok.wait_for(2).await;
    eventually("both tenants' dead letters indexed", || async {
        let mut indexed = 0;
        for tenant in ["acme", "globex"] {
            indexed += hookline
                .get(&format!("/v1/tenants/{tenant}/dead-letters"))
                .await
                .body["data"]
                .as_array()
                .map_or(0, Vec::len);
        }
        indexed == 2
    })
    .await;
    let link = hookline
        .call(Method::POST, "/v1/tenants/acme/portal-links", None)
        .await;
    let portal = link.body["token"].as_str().expect("token").to_owned();
    let portal_get = || {
        let hookline = &hookline;
        let portal = portal.clone();
        async move {
            hookline
                .call_as(
                    Some(&portal),
                    Method::GET,
                    "/v1/tenants/acme/endpoints",
                    None,
                )
                .await
                .status
        }
    };
    assert_eq!(portal_get().await, 200);
    let by_link = hookline
        .call_as(Some(&portal), Method::DELETE, "/v1/tenants/acme", None)
        .await;
    assert_eq!(
        by_link.status, 403,
        "a portal link cannot delete its tenant"
    );

    let deleted = hookline
        .call_as(
            Some("acme-secret-token"),
            Method::DELETE,
            "/v1/tenants/acme",
            None,
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["counts"]["endpoints"], 2);
    assert!(
        deleted.body["counts"]["keys"].as_u64() > Some(5),
        "{}",
        deleted.body
    );
    assert_eq!(
        portal_get().await,
        401,
        "the tenant's portal links stop working"
    );
    let listed = hookline.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(listed.body["data"], json!([]), "{}", listed.body);
    let acme_keys = format!("{}:{{acme}}:", hookline.prefix);
    let globex_keys = format!("{}:{{globex}}:", hookline.prefix);
    let dump = hookline.redis_dump().await;
    assert!(
        !dump.iter().any(|value| value.starts_with(&acme_keys)),
        "a key of the deleted tenant remains: {:?}",
        dump.iter()
            .filter(|v| v.starts_with(&acme_keys))
            .collect::<Vec<_>>()
    );
    assert!(dump.iter().any(|value| value.starts_with(&globex_keys)));
    let globex_dead = hookline.get("/v1/tenants/globex/dead-letters").await;
    assert_eq!(globex_dead.body["data"].as_array().map(Vec::len), Some(1));
    // Deleting again is harmless.
    let again = hookline
        .call(Method::DELETE, "/v1/tenants/acme", None)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["counts"]["endpoints"], 0);
    let audit = hookline.get("/v1/operator/audit").await;
    let actions: Vec<(&str, &str)> = audit.body["data"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["actor"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("tenant_deletion", "operator"),
            ("tenant_deletion", "tenant-token")
        ]
    );
    hookline.stop().await;
}

//! Wire formats: each preset, through the real pipeline, delivers exactly the example
//! documented in docs/formats, signed; templates are validated at the API.

use hookline_shared::domain::payload::PayloadFormat;
use hookline_tests::{Hookline, Receiver, verify_signature};
use lapin::BasicProperties;
use serde_json::{Value, json};
use std::path::PathBuf;

fn vectors() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/formats");
    let mut vectors: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("docs/formats exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable vector");
            let name = path
                .file_stem()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, serde_json::from_str(&text).expect("vector is JSON"))
        })
        .collect();
    vectors.sort_by(|a, b| a.0.cmp(&b.0));
    vectors
}

#[tokio::test]
async fn every_documented_format_is_delivered_exactly_and_signed() {
    let vectors = vectors();
    let presets: Vec<&str> = vectors
        .iter()
        .filter_map(|(_, v)| v["endpoint"]["format"].as_str())
        .collect();
    // Every preset the product ships has its documented example.
    for preset in PayloadFormat::PRESETS {
        assert!(presets.contains(&preset), "docs/formats documents {preset}");
    }
    let hookline = Hookline::start().await;
    for (name, vector) in &vectors {
        let receiver = Receiver::start().await;
        let tenant = vector["tenant"].as_str().expect("tenant");
        let event_type = vector["event"]["type"].as_str().expect("type");
        let mut endpoint = vector["endpoint"].clone();
        endpoint["url"] = json!(receiver.url());
        endpoint["event_types"] = json!([event_type]);
        let created = hookline.create_endpoint(tenant, endpoint).await;
        let secret = created["secret"].as_str().expect("secret");

        // Events with an actor arrive over AMQP too: the contract carries it either way.
        if vector["event"].get("actor").is_some() {
            let mut message = vector["event"].clone();
            message["tenant"] = json!(tenant);
            hookline
                .publish_direct(
                    event_type,
                    &serde_json::to_vec(&message).expect("json"),
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await;
        } else {
            let accepted = hookline.post_event(tenant, vector["event"].clone()).await;
            assert_eq!(accepted.status, 202, "{name}: {}", accepted.body);
        }

        let received = receiver.wait_for(1).await;
        let webhook = &received[0];
        assert!(
            verify_signature(secret, webhook),
            "{name}: signature verifies"
        );
        match vector["expected_form"].as_str() {
            Some(form) => {
                assert_eq!(
                    webhook.header("content-type"),
                    Some("application/x-www-form-urlencoded"),
                    "{name}"
                );
                assert_eq!(
                    std::str::from_utf8(&webhook.body).expect("utf-8"),
                    form,
                    "{name}"
                );
            }
            None => {
                assert_eq!(
                    webhook.header("content-type"),
                    Some("application/json"),
                    "{name}"
                );
                assert_eq!(webhook.json(), vector["expected"], "{name}");
            }
        }
        hookline
            .call(
                reqwest::Method::DELETE,
                &format!(
                    "/v1/tenants/{tenant}/endpoints/{}",
                    created["id"].as_str().expect("id")
                ),
                None,
            )
            .await;
    }
    hookline.stop().await;
}

#[tokio::test]
async fn templates_are_checked_when_written_and_answer_with_a_sample() {
    let hookline = Hookline::start().await;
    let endpoint = |format: Value| {
        json!({"url": "https://hooks.example.com/in", "event_types": ["candidate.interested"],
               "format": format, "metadata": {"export_key": "k-1"}})
    };
    let template = |body: Value| json!({"template": {"body": body}});
    let refused = [
        (
            template(json!({"a": "{{data.x}}", "b": "{{candidat.name}}"})),
            "format.template.body.b",
            "unknown field",
        ),
        (
            template(json!({"s": "{{secret}}"})),
            "format.template.body.s",
            "secret",
        ),
        (
            template(json!({"t": "{{occurred_at | time: [hour]:[minit]}}"})),
            "format.template.body.t",
            "time layout",
        ),
        (
            template(json!(vec!["{{data}}"; 40])),
            "format.template.body",
            "bounded",
        ),
        (
            template(json!({"k": "{{metadata.company_key}}"})),
            "metadata.company_key",
            "required",
        ),
        (json!("yaml"), "format", "unknown preset"),
    ];
    for (format, field, message) in refused {
        let answer = hookline
            .call(
                reqwest::Method::POST,
                "/v1/tenants/acme/endpoints",
                Some(endpoint(format.clone())),
            )
            .await;
        answer.assert_invalid(field, &format.to_string());
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{format}: {}",
            answer.body
        );
    }
    let company = hookline
        .call(
            reqwest::Method::POST,
            "/v1/tenants/acme/endpoints",
            Some(json!({"url": "https://hooks.example.com/in", "event_types": ["invoice.status.updated"], "format": "company"})),
        )
        .await;
    company.assert_invalid(
        "metadata.export_key",
        "company format without its export key",
    );

    // Valid: the answer shows what the receiver would get for a sample event.
    let format = template(
        json!({"who": "{{actor.name}}", "kind": "{{event_name}}", "key": "{{metadata.export_key}}",
                                 "at": "{{occurred_at | time: unix}}"}),
    );
    let dry = hookline
        .call(
            reqwest::Method::POST,
            "/v1/tenants/acme/endpoints?dry_run=true",
            Some(endpoint(format.clone())),
        )
        .await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(dry.body["sample"]["body"]["kind"], "INTERESTED");
    assert_eq!(dry.body["sample"]["body"]["key"], "k-1");
    assert!(dry.body["sample"]["body"]["at"].is_i64(), "{}", dry.body);
    assert!(dry.body["sample"]["headers"]["webhook-signature"].is_string());
    let listed = hookline.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(listed.body["data"], json!([]), "a dry run stores nothing");

    let created = hookline.create_endpoint("acme", endpoint(format)).await;
    assert_eq!(created["sample"]["body"]["kind"], "INTERESTED");
    let id = created["id"].as_str().expect("id");
    let patched = hookline
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tenants/acme/endpoints/{id}"),
            Some(json!({"event_names": {"candidate.interested": "LIKED"},
                        "format": template(json!({"kind": "{{event_name}}"}))})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        patched.body["sample"]["body"],
        json!({"kind": "LIKED"}),
        "the new template replaces the old one whole"
    );
    let preview = hookline
        .call(
            reqwest::Method::POST,
            &format!("/v1/tenants/acme/endpoints/{id}/preview"),
            Some(json!({"event": {"type": "candidate.interested", "data": {}}})),
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_eq!(preview.body["body"], json!({"kind": "LIKED"}));
    hookline.stop().await;
}

/// A template cannot multiply what the event controls: every reference to `data`,
/// `changes` or `actor` (any field of it) counts toward the bound, however it is written,
/// and a template within the bound whose body would still pass the output limit for some
/// event is stopped there — the preview answers 422 naming the format.
#[tokio::test]
async fn templates_cannot_amplify_the_event() {
    let hookline = Hookline::start().await;
    let endpoint = |body: Value| {
        json!({"url": "https://hooks.example.com/in", "event_types": ["candidate.interested"],
               "format": {"template": {"body": body}}})
    };
    let references = [
        "actor.name",
        "actor.email",
        "actor.id",
        "actor",
        "data.x",
        "changes",
    ];
    for reference in references {
        let placeholder = format!("{{{{{reference}}}}}");
        let amplifying = [
            json!(vec![placeholder.clone(); 256]),
            json!({"text": placeholder.repeat(33)}),
            json!({"a": vec![placeholder.clone(); 32], "b": placeholder}),
        ];
        for body in amplifying {
            let answer = hookline
                .call(
                    reqwest::Method::POST,
                    "/v1/tenants/acme/endpoints",
                    Some(endpoint(body.clone())),
                )
                .await;
            answer.assert_invalid("format.template.body", &format!("{reference}: {body}"));
            assert!(
                answer.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("bounded")),
                "{reference}: {}",
                answer.body
            );
        }
    }

    let at_the_bound = hookline
        .create_endpoint("acme", endpoint(json!(vec!["{{actor.name}}"; 32])))
        .await;
    let id = at_the_bound["id"].as_str().expect("id");
    let preview = hookline
        .call(
            reqwest::Method::POST,
            &format!("/v1/tenants/acme/endpoints/{id}/preview"),
            Some(json!({"event": {"type": "candidate.interested", "data": {},
                                  "actor": {"name": "n".repeat(255 * 1024)}}})),
        )
        .await;
    preview.assert_invalid("format", "32 copies of a 255 KB name pass 4 MiB");
    assert!(
        preview.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("4194304")),
        "{}",
        preview.body
    );
    hookline.stop().await;
}

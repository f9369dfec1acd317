//! The HTTP API's contract: authentication, validation errors, endpoint management.

use hookline_tests::{Hookline, Receiver, TOKEN, answer, verify_signature};
use reqwest::Method;
use serde_json::{Value, json};

/// Long enough for `api.portal_key` (32 bytes at least).
const PORTAL_KEY: &str = "portal-signing-key-for-the-tests-0123456789";

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let hookline = Hookline::start().await;
    let url = hookline.url("/v1/tenants/acme/events");
    let event = json!({"type": "a.b", "data": {}});
    for token in [None, Some("wrong"), Some("")] {
        let mut request = hookline.http.post(&url).json(&event);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = answer(request.send().await.expect("reachable")).await;
        assert_eq!(answer.status, 401, "token {token:?}");
        assert_eq!(answer.body["error"]["code"], "unauthorized");
    }
    let answer = answer(
        hookline
            .http
            .get(hookline.url("/v1/tenants/acme/endpoints"))
            .send()
            .await
            .expect("reachable"),
    )
    .await;
    assert_eq!(answer.status, 401);
    let ok = answer_of(&hookline, Method::GET, "/v1/tenants/acme/endpoints", None).await;
    assert_eq!(ok.0, 200);
    hookline.stop().await;
}

async fn answer_of(
    hookline: &Hookline,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let answer = hookline.call(method, path, body).await;
    (answer.status, answer.body)
}

#[tokio::test]
async fn malformed_events_get_errors_naming_the_field() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__MAX_EVENT_BYTES", "2048")
        .start()
        .await;
    let raw = |body: &'static [u8]| {
        let request = hookline
            .http
            .post(hookline.url("/v1/tenants/acme/events"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body);
        async move { answer(request.send().await.expect("reachable")).await }
    };
    let cases: Vec<(&[u8], u16, Option<&str>)> = vec![
        (b"{", 400, None),
        (b"[1,2", 400, None),
        (b"{\"type\": \"a.b\", \"data\": \"\xff\"}", 400, None),
        (b"{\"data\": {}}", 422, Some("type")),
        (b"{\"type\": \"a.b\"}", 422, Some("data")),
        (b"{\"type\": 5, \"data\": {}}", 422, Some("type")),
        (b"{\"type\": \"a..b\", \"data\": {}}", 422, Some("type")),
        (
            b"{\"type\": \"Has Space\", \"data\": {}}",
            422,
            Some("type"),
        ),
        (
            b"{\"type\": \"a.b\", \"data\": {}, \"occurred_at\": \"yesterday\"}",
            422,
            Some("occurred_at"),
        ),
        (
            b"{\"type\": \"a.b\", \"data\": {}, \"id\": \"has space\"}",
            422,
            Some("id"),
        ),
        (
            b"{\"type\": \"a.b\", \"data\": {}, \"changes\": {\"s\": {\"from\": 1}}}",
            422,
            Some("changes.s.to"),
        ),
    ];
    for (body, status, field) in cases {
        let answer = raw(body).await;
        assert_eq!(
            answer.status,
            status,
            "{}: {}",
            String::from_utf8_lossy(body),
            answer.body
        );
        assert_eq!(
            answer.body["error"]["field"].as_str(),
            field,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Every field that holds the caller's JSON has the depth limit, not only data.
    for levels in [40, 120] {
        let deep = (0..levels).fold(json!(1), |inner, _| json!([inner]));
        let placements = [
            ("data", json!({"type": "a.b", "data": deep})),
            (
                "changes.s.from",
                json!({"type": "a.b", "data": {}, "changes": {"s": {"from": deep, "to": 1}}}),
            ),
            (
                "changes.s.to",
                json!({"type": "a.b", "data": {}, "changes": {"s": {"from": 1, "to": deep}}}),
            ),
            (
                "actor.id",
                json!({"type": "a.b", "data": {}, "actor": {"id": deep, "name": "Jo"}}),
            ),
        ];
        for (field, event) in placements {
            hookline
                .post_event("acme", event)
                .await
                .assert_invalid(field, &format!("{field} nested {levels} levels"));
        }
    }

    let too_big = json!({"type": "a.b", "data": {"blob": "x".repeat(4096)}});
    let answer = hookline.post_event("acme", too_big).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.body["error"]["code"], "body_too_large");

    let answer = hookline
        .post_event("bad tenant!", json!({"type": "a.b", "data": {}}))
        .await;
    assert_eq!(
        (answer.status, answer.body["error"]["field"].as_str()),
        (400, Some("tenant"))
    );
    assert_eq!(
        hookline.deliveries_depth().await,
        0,
        "nothing reached the queue"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn endpoints_can_be_managed_and_are_validated() {
    let hookline = Hookline::start().await;
    let created = hookline
        .create_endpoint(
            "acme",
            json!({"url": "https://hooks.example.com/ats", "event_types": ["job.#"], "description": "prod"}),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("ep_"));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["format"], "json");

    let (status, list) =
        answer_of(&hookline, Method::GET, "/v1/tenants/acme/endpoints", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert!(
        list["data"][0].get("secret").is_none(),
        "list never returns secrets"
    );
    let (_, other) = answer_of(&hookline, Method::GET, "/v1/tenants/globex/endpoints", None).await;
    assert_eq!(other["data"], json!([]), "another tenant sees nothing");
    let (status, _) = answer_of(
        &hookline,
        Method::GET,
        &format!("/v1/tenants/globex/endpoints/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "nor can it read the endpoint by id");

    let path = format!("/v1/tenants/acme/endpoints/{id}");
    let (status, patched) = answer_of(
        &hookline,
        Method::PATCH,
        &path,
        Some(json!({"enabled": false, "event_types": ["job.*.success"], "description": null})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["event_types"], json!(["job.*.success"]));
    assert!(patched.get("description").is_none());
    assert_eq!(patched["url"], "https://hooks.example.com/ats");

    let (status, secret) = answer_of(&hookline, Method::GET, &format!("{path}/secret"), None).await;
    assert_eq!((status, &secret["secret"]), (200, &created["secret"]));

    for (patch, field) in [
        (json!({"url": "ftp://x.example"}), "url"),
        (json!({"event_types": ["a..b"]}), "event_types[0]"),
        (
            json!({"headers": {"webhook-id": "x"}}),
            "headers.webhook-id",
        ),
        (json!({"secret": "whsec_abc"}), "secret"),
        (json!({"colour": "blue"}), "colour"),
    ] {
        let (status, body) = answer_of(&hookline, Method::PATCH, &path, Some(patch.clone())).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some(field)),
            "{patch}"
        );
    }

    let (status, _) = answer_of(&hookline, Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (status, body) = answer_of(&hookline, Method::GET, &path, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = answer_of(&hookline, Method::DELETE, &path, None).await;
    assert_eq!(status, 404);
    hookline.stop().await;
}

#[tokio::test]
async fn invalid_endpoints_are_refused_with_the_field() {
    let hookline = Hookline::start().await;
    let base = json!({"url": "https://x.example/hook", "event_types": ["#"]});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("url", json!("not a url")), "url"),
        (with("url", json!("https://user:pass@x.example/")), "url"),
        (with("url", json!("file:///etc/passwd")), "url"),
        (with("event_types", json!([])), "event_types"),
        (
            with("event_types", json!(["ok.one", "bad pattern"])),
            "event_types[1]",
        ),
        (
            with("headers", json!({"Content-Length": "1"})),
            "headers.Content-Length",
        ),
        (
            with("headers", json!({"x-ok": "line\r\nbreak"})),
            "headers.x-ok",
        ),
        (with("secret", json!("whsec_short")), "secret"),
        (with("format", json!("xml")), "format"),
        (json!({"event_types": ["#"]}), "url"),
    ];
    for (body, field) in cases {
        let (status, answer) = answer_of(
            &hookline,
            Method::POST,
            "/v1/tenants/acme/endpoints",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (422, Some(field)),
            "{body}: {answer}"
        );
    }
    let (_, list) = answer_of(&hookline, Method::GET, "/v1/tenants/acme/endpoints", None).await;
    assert_eq!(list["data"], json!([]), "nothing was stored");
    hookline.stop().await;
}

#[tokio::test]
async fn signing_secrets_are_sealed_at_rest() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    let endpoint = hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let secret = endpoint["secret"].as_str().expect("secret");
    let mut redis = hookline.redis().await;
    let stored: Vec<String> = redis::AsyncCommands::hvals(
        &mut redis,
        hookline
            .keys()
            .endpoints(&hookline_shared::domain::event::TenantId::parse("acme").expect("tenant")),
    )
    .await
    .expect("stored endpoints");
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].contains(secret.trim_start_matches("whsec_")) && !stored[0].contains("whsec_"),
        "the secret is not stored in the clear: {}",
        stored[0]
    );
    assert!(stored[0].contains("sealed:v1:"));
    hookline
        .post_event("acme", json!({"type": "a.b", "data": {}}))
        .await;
    let received = receiver.wait_for(1).await;
    assert!(
        verify_signature(secret, &received[0]),
        "the deliverer opens it"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn endpoints_on_blocked_addresses_are_refused() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "false")
        .start()
        .await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
    ] {
        let refused = hookline
            .call(
                Method::POST,
                "/v1/tenants/acme/endpoints",
                Some(json!({"url": url, "event_types": ["#"]})),
            )
            .await;
        refused.assert_invalid("url", url);
        assert_eq!(refused.body["error"]["code"], "blocked_address", "{url}");
    }
    let public = hookline
        .call(
            Method::POST,
            "/v1/tenants/acme/endpoints",
            Some(json!({"url": "https://hooks.example.com/x", "event_types": ["#"]})),
        )
        .await;
    assert_eq!(public.status, 201, "{}", public.body);
    hookline.stop().await;
}

#[tokio::test]
async fn tenant_tokens_and_portal_links_reach_only_their_tenant() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__TENANT_TOKENS", "acme:acme-secret-token")
        .setting("HOOKLINE__API__PORTAL_KEY", PORTAL_KEY)
        .start()
        .await;
    let get = |token: Option<String>, path: &'static str| {
        let hookline = &hookline;
        async move {
            hookline
                .call_as(token.as_deref(), Method::GET, path, None)
                .await
                .status
        }
    };
    let acme = Some("acme-secret-token".to_owned());
    assert_eq!(get(acme.clone(), "/v1/tenants/acme/endpoints").await, 200);
    assert_eq!(get(acme.clone(), "/v1/tenants/globex/endpoints").await, 403);
    assert_eq!(get(acme.clone(), "/v1/event-types").await, 200);

    let link = hookline
        .call(Method::POST, "/v1/tenants/acme/portal-links", None)
        .await;
    assert_eq!(link.status, 201, "{}", link.body);
    let token = link.body["token"].as_str().expect("token").to_owned();
    assert!(
        link.body["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("/console/"))
    );
    assert_eq!(
        get(Some(token.clone()), "/v1/tenants/acme/endpoints").await,
        200
    );
    assert_eq!(
        get(Some(token.clone()), "/v1/tenants/globex/endpoints").await,
        403
    );
    let tampered = token.replacen("acme", "globex", 1);
    assert_eq!(
        get(Some(tampered), "/v1/tenants/globex/endpoints").await,
        401
    );
    let forged_link = hookline
        .call_as(
            Some("acme-secret-token"),
            Method::POST,
            "/v1/tenants/globex/portal-links",
            None,
        )
        .await;
    assert_eq!(forged_link.status, 403);
    hookline.stop().await;
}

#[tokio::test]
async fn only_api_tokens_mint_portal_links_and_a_link_cannot_renew_itself() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__TENANT_TOKENS", "acme:acme-secret-token")
        .setting("HOOKLINE__API__PORTAL_KEY", PORTAL_KEY)
        .start()
        .await;
    let mint = |token: String| {
        let hookline = &hookline;
        async move {
            hookline
                .call_as(
                    Some(&token),
                    Method::POST,
                    "/v1/tenants/acme/portal-links",
                    None,
                )
                .await
        }
    };
    let by_operator = mint(TOKEN.to_owned()).await;
    assert_eq!(by_operator.status, 201, "{}", by_operator.body);
    let by_tenant_token = mint("acme-secret-token".to_owned()).await;
    assert_eq!(by_tenant_token.status, 201, "{}", by_tenant_token.body);

    for minted in [&by_operator, &by_tenant_token] {
        let link = minted.body["token"].as_str().expect("token").to_owned();
        let renewed = mint(link.clone()).await;
        assert_eq!(renewed.status, 403, "{}", renewed.body);
        assert_eq!(renewed.body["error"]["code"], "api_token_required");
        assert!(renewed.body["token"].is_null(), "no link in a refusal");
        // What the console needs still works with the link; publishing events does not.
        let own = hookline
            .call_as(Some(&link), Method::GET, "/v1/tenants/acme/endpoints", None)
            .await;
        assert_eq!(own.status, 200, "{}", own.body);
        let event = hookline
            .call_as(
                Some(&link),
                Method::POST,
                "/v1/tenants/acme/events",
                Some(json!({"type": "a.b", "data": {}})),
            )
            .await;
        assert_eq!(event.status, 403, "{}", event.body);
        assert_eq!(event.body["error"]["code"], "api_token_required");
    }
    hookline.stop().await;
}

#[tokio::test]
async fn without_a_portal_key_portal_links_are_off_and_none_is_accepted() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__TENANT_TOKENS", "acme:acme-secret-token")
        .start()
        .await;
    for token in [TOKEN, "acme-secret-token"] {
        let link = hookline
            .call_as(
                Some(token),
                Method::POST,
                "/v1/tenants/acme/portal-links",
                None,
            )
            .await;
        assert_eq!(link.status, 501, "{}", link.body);
        assert_eq!(link.body["error"]["code"], "portal_links_disabled");
        assert!(
            link.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("HOOKLINE__API__PORTAL_KEY")),
            "{}",
            link.body
        );
    }
    // Links signed with an empty or a guessable key open nothing.
    let expires = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    for key in ["", "k", PORTAL_KEY] {
        let forged = hookline_ingest::api::access::portal_token(
            &secrecy::SecretString::from(key.to_owned()),
            "acme",
            expires,
        );
        let answer = hookline
            .call_as(
                Some(&forged),
                Method::GET,
                "/v1/tenants/acme/endpoints",
                None,
            )
            .await;
        assert_eq!(answer.status, 401, "signed with {key:?}: {}", answer.body);
    }
    hookline.stop().await;
}

#[tokio::test]
async fn the_console_may_be_framed_only_by_the_origins_configured() {
    let framed_by = |setting: Option<&'static str>| async move {
        let mut builder = Hookline::builder();
        if let Some(value) = setting {
            builder = builder.setting("HOOKLINE__API__CONSOLE_FRAME_ANCESTORS", value);
        }
        let hookline = builder.start().await;
        let mut policies = Vec::new();
        for asset in ["/console/", "/console/console.js", "/console/console.css"] {
            let response = hookline
                .http
                .get(hookline.url(asset))
                .send()
                .await
                .expect("reachable");
            assert_eq!(response.status(), 200, "{asset}");
            let policy = response
                .headers()
                .get_all("content-security-policy")
                .iter()
                .map(|v| v.to_str().expect("ASCII").to_owned())
                .collect::<Vec<_>>();
            assert_eq!(policy.len(), 1, "{asset}: {policy:?}");
            policies.push(policy.join(""));
        }
        hookline.stop().await;
        policies
    };
    for policy in framed_by(None).await {
        assert!(
            policy.ends_with("; frame-ancestors 'none'"),
            "framing is forbidden by default: {policy}"
        );
        assert!(policy.starts_with("default-src 'none'; script-src 'self';"));
    }
    for policy in framed_by(Some("https://ats.example.com  https://*.ats.example")).await {
        assert!(
            policy.ends_with("; frame-ancestors https://ats.example.com https://*.ats.example"),
            "{policy}"
        );
        assert_eq!(policy.matches("frame-ancestors").count(), 1, "{policy}");
    }
}

#[tokio::test]
async fn openapi_describes_every_route_and_every_described_route_is_served() {
    let hookline = Hookline::start().await;
    let doc = hookline.get("/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            operations += 1;
            assert!(operation["summary"].is_string(), "{method} {path}");
            // Fill the path's parameters with values that pass validation, then check
            // that the router knows the route: anything but the fallback's 404 "route".
            let concrete = path
                .replace("{tenant}", "acme")
                .replace("{endpoint_id}", "ep_missing")
                .replace("{event_id}", "evt-missing")
                .replace("{dead_letter_id}", "dl-missing")
                .replace("{event_type}", "doc.check");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let body =
                matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            let answer = hookline.call(method.clone(), &concrete, body).await;
            assert!(
                !(answer.status == 404
                    && answer.body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("route"))),
                "{method} {path} is described but not served: {}",
                answer.body
            );
            assert_ne!(answer.status, 405, "{method} {path}");
        }
    }
    // Every route the README's API table names is described.
    for expected in [
        "/v1/tenants/{tenant}/events",
        "/v1/tenants/{tenant}/endpoints/{endpoint_id}/secret/rotate",
        "/v1/tenants/{tenant}/endpoints/{endpoint_id}/attempts",
        "/v1/tenants/{tenant}/dead-letters/replay",
        "/v1/event-types/{event_type}",
        "/v1/tenants/{tenant}/portal-links",
        "/v1/tenants/{tenant}/events/batch",
        "/v1/tenants/{tenant}/quota",
    ] {
        assert!(paths.contains_key(expected), "{expected} missing");
    }
    assert!(operations >= 19, "{operations} operations described");
    let undescribed = hookline.get("/v1/tenants/acme/not-a-route").await;
    assert_eq!(undescribed.status, 404);
    hookline.stop().await;
}

#[tokio::test]
async fn preview_renders_signed_headers_and_body_without_sending() {
    let hookline = Hookline::start().await;
    let receiver = Receiver::start().await;
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": receiver.url(), "event_types": ["candidate.interested"], "format": "form",
                   "headers": {"X-Team": "talent"}}),
        )
        .await;
    let id = endpoint["id"].as_str().expect("id");
    let preview = hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/endpoints/{id}/preview"),
            Some(json!({"event": {"id": "evt-p", "type": "candidate.interested",
                                  "occurred_at": "2026-01-02T03:04:05Z", "data": {"origin": "web"}}})),
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_eq!(
        preview.body["content_type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        preview.body["body"],
        "type=candidate.interested&id=evt-p&timestamp=2026-01-02T03%3A04%3A05Z&origin=web"
    );
    let headers = &preview.body["headers"];
    assert_eq!(headers["x-team"], "talent");
    assert_eq!(headers["webhook-id"], "evt-p");
    assert!(
        headers["user-agent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with("Hookline/"))
    );
    // The signature is what a receiver would verify.
    let as_received = hookline_tests::Received {
        headers: headers
            .as_object()
            .expect("headers")
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    reqwest::header::HeaderValue::from_str(v.as_str().expect("text"))
                        .expect("value"),
                )
            })
            .collect(),
        body: preview.body["body"]
            .as_str()
            .expect("body")
            .to_owned()
            .into(),
        at: std::time::Instant::now(),
    };
    assert!(verify_signature(
        endpoint["secret"].as_str().expect("secret"),
        &as_received
    ));

    let sample = hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/endpoints/{id}/preview"),
            None,
        )
        .await;
    assert_eq!(sample.status, 200, "{}", sample.body);
    let bad = hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/endpoints/{id}/preview"),
            Some(json!({"event": {"type": "a..b", "data": {}}})),
        )
        .await;
    bad.assert_invalid("event.type", "a preview of an invalid event");
    let deep_actor = (0..120).fold(json!(1), |inner, _| json!({"a": inner}));
    hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/endpoints/{id}/preview"),
            Some(json!({"event": {"type": "a.b", "data": {}, "actor": {"id": deep_actor}}})),
        )
        .await
        .assert_invalid("event.actor.id", "a preview of a deep actor");
    assert_eq!(receiver.count(), 0, "a preview sends nothing");
    hookline.stop().await;
}

#[tokio::test]
async fn operator_overview_reads_the_same_state_as_the_api() {
    let hookline = Hookline::builder()
        .retry_schedule("20ms,20ms")
        .setting("HOOKLINE__API__PORTAL_KEY", PORTAL_KEY)
        // The circuit opens with the last of the nine failures: before it, a delivery
        // held by the open circuit would wait for a probe instead of using up its retries.
        .setting("HOOKLINE__HEALTH__FAILING_AFTER", "9")
        .start()
        .await;
    let up = Receiver::start().await;
    let down = Receiver::start().await;
    down.set_status(500);
    hookline
        .create_endpoint("acme", json!({"url": up.url(), "event_types": ["job.#"]}))
        .await;
    hookline
        .create_endpoint("acme", json!({"url": down.url(), "event_types": ["job.#"]}))
        .await;
    hookline
        .create_endpoint(
            "globex",
            json!({"url": up.url(), "event_types": ["invoice.#"]}),
        )
        .await;
    for n in 0..3 {
        let accepted = hookline
            .post_event("acme", json!({"type": "job.created", "data": {"n": n}}))
            .await;
        assert_eq!(accepted.status, 202);
    }
    down.wait_for(9).await;

    // The dead-letter counts, the attempt counts and the retry backlog have writers of
    // their own (the dead-letter index, the history, the retry pool): each is waited for.
    let overview = hookline
        .get_until("/v1/operator/overview", |o| {
            o["tenants"][0]["dead_letters"]["retries_exhausted"] == 3
                && o["tenants"][0]["failed"] == 9
                && o["tenants"][0]["delivered"] == 3
                && o["retry_backlog"]["scheduled"] == 0
                && o["retry_backlog"]["due"] == 0
                && o["deliverers"]["connected"] == 1
        })
        .await;
    let acme = &overview["tenants"][0];
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["delivered"], 3, "{overview}");
    assert_eq!(
        acme["failed"], 9,
        "three attempts per event at the failing endpoint"
    );
    assert_eq!(acme["failure_ratio"], 0.75);
    assert_eq!(
        acme["endpoints"],
        json!({"healthy": 1, "failing": 1, "disabled": 0})
    );
    let globex = &overview["tenants"][1];
    assert_eq!(globex["tenant"], "globex");
    assert_eq!(globex["delivered"], 0);
    assert!(globex["failure_ratio"].is_null(), "no attempts, no ratio");
    assert_eq!(overview["totals"]["endpoints"]["healthy"], 2);
    assert_eq!(overview["totals"]["dead_letters"]["retries_exhausted"], 3);
    assert_eq!(
        overview["retry_backlog"],
        json!({
            "due": 0,
            "scheduled": 0,
            "oldest_due_seconds": {"realtime": 0.0, "bulk": 0.0},
            "largest_lanes": [],
        })
    );

    // The API's dead-letter list and the overview's counts move together.
    let listed = hookline.get("/v1/tenants/acme/dead-letters").await;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(3));
    let id = listed.body["data"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    down.set_status(204);
    let replayed = hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/dead-letters/{id}/replay"),
            None,
        )
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    hookline
        .get_until("/v1/operator/overview", |o| {
            o["tenants"][0]["dead_letters"]["retries_exhausted"] == 2
                && o["tenants"][0]["delivered"] == 4
        })
        .await;

    // Tenants see neither the overview nor each other; the session says who they are.
    let link = hookline
        .call(Method::POST, "/v1/tenants/acme/portal-links", None)
        .await;
    let token = link.body["token"].as_str().expect("token").to_owned();
    let session = hookline
        .call_as(Some(&token), Method::GET, "/v1/session", None)
        .await;
    assert_eq!(session.body, json!({"scope": "tenant", "tenant": "acme"}));
    let denied = hookline
        .call_as(Some(&token), Method::GET, "/v1/operator/overview", None)
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        hookline.get("/v1/session").await.body,
        json!({"scope": "operator"})
    );
    let bad_window = hookline.get("/v1/operator/overview?window_minutes=0").await;
    bad_window.assert_invalid("window_minutes", "an empty window");
    hookline.stop().await;
}

#[tokio::test]
async fn query_parameters_are_checked_and_named() {
    let hookline = Hookline::start().await;
    let endpoint = hookline
        .create_endpoint(
            "acme",
            json!({"url": "https://hooks.example.com/in", "event_types": ["#"]}),
        )
        .await;
    let id = endpoint["id"].as_str().expect("id");
    let cases = [
        (
            Method::GET,
            format!("/v1/tenants/acme/endpoints/{id}/attempts?limit=abc"),
            "limit",
        ),
        (
            Method::GET,
            format!("/v1/tenants/acme/endpoints/{id}/attempts?limit=0"),
            "limit",
        ),
        (
            Method::GET,
            "/v1/tenants/acme/dead-letters?cursor=yesterday".to_owned(),
            "cursor",
        ),
        (
            Method::GET,
            "/v1/operator/overview?window_minutes=x".to_owned(),
            "window_minutes",
        ),
        (
            Method::POST,
            "/v1/tenants/acme/endpoints?dry_run=maybe".to_owned(),
            "dry_run",
        ),
    ];
    for (method, path, field) in cases {
        let answer = hookline
            .call(
                method,
                &path,
                Some(json!({"url": "https://hooks.example.com/in", "event_types": ["#"]})),
            )
            .await;
        answer.assert_invalid(field, &path);
    }
    hookline.stop().await;
}

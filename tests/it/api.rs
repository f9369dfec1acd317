//! The HTTP API's contract: authentication, validation errors, endpoint management.

use hookline_tests::{Hookline, TOKEN, answer};
use reqwest::Method;
use serde_json::{Value, json};

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
    let deep = (0..40).fold(json!(1), |inner, _| json!([inner]));
    let answer = hookline
        .post_event("acme", json!({"type": "a.b", "data": deep}))
        .await;
    assert_eq!(
        (answer.status, answer.body["error"]["field"].as_str()),
        (422, Some("data"))
    );

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
        hookline.queue_depth("deliveries").await,
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

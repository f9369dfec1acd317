//! Attacks that need no valid token, or only a tenant's: holding connections open,
//! guessing tokens, and making Hookline send requests at a target through test
//! deliveries. Each limit is a setting; these tests set it small and check that the
//! attack is cut off, the limit is counted, and other clients are still served.

use hookline_tests::{Hookline, Receiver, TOKEN, answer, eventually};
use reqwest::Method;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server closed `stream` (a read returns end of file or a reset).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buffer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn closed_for(hookline: &Hookline, admin: SocketAddr, listener: &str, reason: &str) -> f64 {
    hookline
        .metric(
            admin,
            "hookline_http_connections_closed_total",
            &[("listener", listener), ("reason", reason)],
        )
        .await
}

#[tokio::test]
async fn a_client_trickling_a_request_head_is_disconnected_on_both_ports() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__HTTP__HEADER_READ_TIMEOUT", "300ms")
        .setting("HOOKLINE__ADMIN__HEADER_READ_TIMEOUT", "300ms")
        .start()
        .await;
    for (port, listener) in [(hookline.api, "api"), (hookline.ingest_admin, "admin")] {
        let mut stream = TcpStream::connect(port).await.expect("connect");
        stream
            .write_all(b"GET /v1/session HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("partial head");
        // A byte now and then keeps the connection from being idle: only the head's
        // own deadline can end it.
        let mut closed = false;
        for _ in 0..600 {
            if closed_by_server(&mut stream).await {
                closed = true;
                break;
            }
            if stream.write_all(b"X").await.is_err() {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "{listener}: a head that never completes keeps its connection"
        );
        eventually("the close counted as a header timeout", || async {
            closed_for(&hookline, hookline.ingest_admin, listener, "header_timeout").await >= 1.0
        })
        .await;
    }
    // Complete requests on fresh connections are still served.
    assert_eq!(hookline.get("/v1/session").await.status, 200);
    hookline.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_but_kept_alive_ones_outlive_the_header_timeout() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__HTTP__HEADER_READ_TIMEOUT", "200ms")
        .setting("HOOKLINE__HTTP__IDLE_TIMEOUT", "1s")
        .start()
        .await;
    // One request, then nothing: the connection is idle between requests.
    let mut kept_alive = TcpStream::connect(hookline.api).await.expect("connect");
    let request =
        format!("GET /v1/session HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    kept_alive
        .write_all(request.as_bytes())
        .await
        .expect("request");
    let mut answer = vec![0u8; 4096];
    let read = kept_alive.read(&mut answer).await.expect("answer");
    assert!(
        String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    // A connection that never sends anything.
    let mut silent = TcpStream::connect(hookline.api).await.expect("connect");
    for stream in [&mut kept_alive, &mut silent] {
        let deadline = tokio::time::Instant::now() + hookline_tests::PATIENCE;
        while !closed_by_server(stream).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "an idle connection stayed open"
            );
        }
    }
    assert_eq!(
        closed_for(&hookline, hookline.ingest_admin, "api", "idle_timeout").await,
        2.0,
        "both were closed as idle"
    );
    assert_eq!(
        closed_for(&hookline, hookline.ingest_admin, "api", "header_timeout").await,
        0.0,
        "waiting between requests is not a slow head"
    );
    hookline.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__HTTP__MAX_CONNECTIONS", "2")
        .setting("HOOKLINE__HTTP__IDLE_TIMEOUT", "60s")
        .start()
        .await;
    let held: Vec<TcpStream> = {
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(hookline.api).await.expect("connect"));
        }
        held
    };
    eventually("both connections served", || async {
        hookline
            .metric(
                hookline.ingest_admin,
                "hookline_http_connections",
                &[("listener", "api")],
            )
            .await
            == 2.0
    })
    .await;
    let waiting = tokio::spawn({
        let url = hookline.url("/v1/session");
        let http = reqwest::Client::new();
        async move {
            let response = http.get(url).bearer_auth(TOKEN).send().await;
            response.map(|r| r.status().as_u16())
        }
    });
    // An absence can only be observed for a while: the third connection is accepted by
    // the kernel but not served while the cap is reached.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served beyond the cap"
    );
    assert_eq!(
        hookline
            .metric(
                hookline.ingest_admin,
                "hookline_http_connections",
                &[("listener", "api")],
            )
            .await,
        2.0
    );
    drop(held);
    let status = tokio::time::timeout(hookline_tests::PATIENCE, waiting)
        .await
        .expect("served once a connection closed")
        .expect("task")
        .expect("answered");
    assert_eq!(status, 200);
    hookline.stop().await;
}

#[tokio::test]
async fn token_guessing_is_answered_429_after_a_burst_while_other_clients_go_on() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__AUTH_FAILURES__BURST", "5")
        .setting("HOOKLINE__API__AUTH_FAILURES__PER_MINUTE", "1")
        .setting("HOOKLINE__HTTP__TRUSTED_PROXIES", "127.0.0.0/8")
        .start()
        .await;
    let guess = |client: &'static str, token: &'static str| {
        let request = hookline
            .http
            .get(hookline.url("/v1/tenants/acme/endpoints"))
            .header("x-forwarded-for", client)
            .bearer_auth(token);
        async move { answer(request.send().await.expect("reachable")).await }
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(guess("203.0.113.7", "wrong").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let refused = guess("203.0.113.7", TOKEN).await;
    assert_eq!(
        refused.status, 429,
        "a throttled client is refused whatever it sends: {}",
        refused.body
    );
    assert_eq!(refused.body["error"]["code"], "too_many_auth_failures");
    // Another client, and another attacker, are unaffected.
    assert_eq!(guess("198.51.100.2", TOKEN).await.status, 200);
    assert_eq!(guess("198.51.100.3", "wrong").await.status, 401);
    let response = hookline
        .http
        .get(hookline.url("/v1/session"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .expect("reachable");
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(
        hookline
            .metric(
                hookline.ingest_admin,
                "hookline_http_throttled_total",
                &[("reason", "auth_failures")],
            )
            .await
            >= 4.0
    );
    hookline.stop().await;
}

#[tokio::test]
async fn test_deliveries_are_limited_per_endpoint_and_per_tenant() {
    let hookline = Hookline::builder()
        .setting("HOOKLINE__API__TEST_DELIVERIES_PER_ENDPOINT__BURST", "3")
        .setting(
            "HOOKLINE__API__TEST_DELIVERIES_PER_ENDPOINT__PER_MINUTE",
            "1",
        )
        .setting("HOOKLINE__API__TEST_DELIVERIES_PER_TENANT__BURST", "5")
        .setting("HOOKLINE__API__TEST_DELIVERIES_PER_TENANT__PER_MINUTE", "1")
        .start()
        .await;
    let receiver = Receiver::start().await;
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let endpoint = hookline
            .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
            .await;
        endpoints.push(endpoint["id"].as_str().expect("id").to_owned());
    }
    let test = |endpoint: &str| {
        let path = format!("/v1/tenants/acme/endpoints/{endpoint}/test");
        let hookline = &hookline;
        async move { hookline.call(Method::POST, &path, None).await }
    };
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(test(&endpoints[0]).await.status);
    }
    assert_eq!(first, [200, 200, 200, 429], "per endpoint");
    let over = test(&endpoints[0]).await;
    assert_eq!(over.body["error"]["code"], "too_many_test_deliveries");
    // The tenant's quota (5) has 2 left for its other endpoints, then none.
    let others = [
        test(&endpoints[1]).await.status,
        test(&endpoints[2]).await.status,
        test(&endpoints[1]).await.status,
    ];
    assert_eq!(others, [200, 200, 429], "per tenant");
    // Another tenant has its own quota.
    let beta = hookline
        .create_endpoint("beta", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let beta_test = hookline
        .call(
            Method::POST,
            &format!(
                "/v1/tenants/beta/endpoints/{}/test",
                beta["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(beta_test.status, 200, "{}", beta_test.body);
    assert_eq!(
        receiver.received().len(),
        6,
        "refused test deliveries send nothing"
    );
    hookline.stop().await;
}

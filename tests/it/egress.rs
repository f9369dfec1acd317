//! Where deliveries may go: the address guard against names on internal addresses,
//! proxies from the environment, and the configured delivery proxy; and what tenants are
//! told when a target is refused.

use base64::Engine;
use hookline_tests::{Asked, Hookline, Receiver, RecordingProxy};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};

/// Every token of `text` that is an IP address, alone or with a port.
fn addresses_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter(|token| {
            token.parse::<IpAddr>().is_ok()
                || token
                    .rsplit_once(':')
                    .is_some_and(|(ip, _)| ip.parse::<Ipv4Addr>().is_ok())
        })
        .map(str::to_owned)
        .collect()
}

/// What is wrong with `shown` as a refusal a tenant reads, if anything.
fn refusal_problem(what: &str, shown: &Value) -> Option<String> {
    let text = shown.to_string();
    let addresses = addresses_in(&text);
    if !text.contains("not allowed") {
        Some(format!("{what} does not say why: {text}"))
    } else if !addresses.is_empty() {
        Some(format!("{what} names {addresses:?}: {text}"))
    } else {
        None
    }
}

#[track_caller]
fn assert_refused_without_addresses(what: &str, shown: &Value) {
    if let Some(problem) = refusal_problem(what, shown) {
        panic!("{problem}");
    }
}

/// With `url` on a name this installation refuses, every answer a tenant can read a
/// delivery error in — verification on create, a test delivery, the attempt log, the
/// event's state, the dead letter — says the address is not allowed and names none.
async fn assert_refused_everywhere_without_addresses(hookline: &Hookline, url: &str) {
    let verified = hookline
        .call(
            Method::POST,
            "/v1/tenants/acme/endpoints",
            Some(json!({"url": url, "event_types": ["#"], "verify": true})),
        )
        .await;
    verified.assert_invalid("url", "verify on create");
    let mut shown = vec![("verification on create", verified.body)];

    let endpoint = hookline
        .create_endpoint("acme", json!({"url": url, "event_types": ["#"]}))
        .await;
    let id = endpoint["id"].as_str().expect("endpoint id").to_owned();
    let path = format!("/v1/tenants/acme/endpoints/{id}");
    let test = hookline
        .call(Method::POST, &format!("{path}/test"), None)
        .await;
    assert_eq!(test.status, 200, "{}", test.body);
    assert_eq!(test.body["delivered"], false, "{}", test.body);
    shown.push(("test delivery", test.body));

    let accepted = hookline
        .post_event("acme", json!({"type": "a.b", "data": {}}))
        .await;
    let event_id = accepted.body["id"].as_str().expect("event id").to_owned();
    let state = hookline
        .get_until(&format!("/v1/tenants/acme/events/{event_id}"), |body| {
            body["deliveries"][&id]["status"] == "dead_lettered"
        })
        .await;
    shown.push(("event state", state));
    let attempts = hookline.get(&format!("{path}/attempts")).await.body;
    let outcomes: Vec<&Value> = attempts["data"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|attempt| &attempt["outcome"])
        .collect();
    assert!(
        !outcomes.is_empty() && outcomes.iter().all(|o| *o == "blocked_address"),
        "{attempts}"
    );
    shown.push(("attempt log", attempts));
    let dead_letters = hookline
        .get_until("/v1/tenants/acme/dead-letters", |body| {
            body["data"].as_array().is_some_and(|d| !d.is_empty())
        })
        .await;
    shown.push(("dead letters", dead_letters));
    let problems: Vec<String> = shown
        .iter()
        .filter_map(|(what, body)| refusal_problem(what, body))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn a_name_on_a_refused_address_is_refused_without_saying_which_address() {
    let receiver = Receiver::start().await;
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "false")
        .start()
        .await;
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    assert_refused_everywhere_without_addresses(&hookline, &url).await;
    assert_eq!(receiver.count(), 0);
    hookline.stop().await;
}

const AMBIENT_CHILD: &str = "egress::ambient_proxy_child";
const CHILD_RECEIVER: &str = "HOOKLINE_TEST_EGRESS_RECEIVER";

/// The proxy variables are set for a child process running [`ambient_proxy_child`]: this
/// process's environment, shared by every other test, stays as it is.
#[tokio::test]
async fn proxy_variables_in_the_environment_do_not_carry_deliveries() {
    let receiver = Receiver::start().await;
    let proxy = RecordingProxy::start().await;
    let proxy_url = proxy.http_url();
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([AMBIENT_CHILD, "--exact", "--ignored", "--nocapture"])
        .env(CHILD_RECEIVER, receiver.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for variable in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        child.env(variable, &proxy_url);
    }
    let output = tokio::time::timeout(hookline_tests::PATIENCE * 2, child.output())
        .await
        .expect("the child finishes")
        .expect("the child runs");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child ran its test: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(proxy.asked(), vec![], "the proxy saw nothing");
    assert_eq!(receiver.count(), 0, "nothing reached loopback");
}

#[tokio::test]
#[ignore = "run by proxy_variables_in_the_environment_do_not_carry_deliveries, with them set"]
async fn ambient_proxy_child() {
    let receiver_url = std::env::var(CHILD_RECEIVER).expect("started by the parent test");
    let url = receiver_url.replacen("127.0.0.1", "localhost", 1);
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "false")
        .start()
        .await;
    assert_refused_everywhere_without_addresses(&hookline, &url).await;
    hookline.stop().await;
}

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

#[tokio::test]
async fn a_configured_proxy_is_asked_for_the_address_the_guard_checked() {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let proxy = RecordingProxy::start().await;
    let with_credentials = |url: String| url.replacen("://", "://hookline:proxy-pass@", 1);
    let cases = [
        (
            with_credentials(proxy.http_url()),
            Asked::Http {
                line: format!("POST http://127.0.0.1:{port}/hook HTTP/1.1"),
                host: Some(format!("localhost:{port}")),
                authorization: Some(basic("hookline:proxy-pass")),
            },
        ),
        (
            with_credentials(proxy.socks5_url()),
            Asked::Socks5 {
                target: format!("127.0.0.1:{port}"),
            },
        ),
    ];
    for (proxy_url, expected) in cases {
        let hookline = Hookline::builder()
            .setting("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "false")
            .setting("HOOKLINE__DELIVERY__ALLOWED_NETWORKS", "127.0.0.1/32")
            .setting("HOOKLINE__DELIVERY__PROXY", &proxy_url)
            .start()
            .await;
        let before = proxy.asked().len();
        let delivered_before = receiver.count();
        let endpoint = hookline
            .create_endpoint(
                "acme",
                json!({"url": format!("http://localhost:{port}/hook"), "event_types": ["#"]}),
            )
            .await;
        let id = endpoint["id"].as_str().expect("endpoint id");
        let test = hookline
            .call(
                Method::POST,
                &format!("/v1/tenants/acme/endpoints/{id}/test"),
                None,
            )
            .await;
        assert_eq!(test.body["delivered"], true, "{expected:?}: {}", test.body);
        assert_eq!(proxy.asked().get(before), Some(&expected));

        hookline
            .post_event("acme", json!({"type": "a.b", "data": {}}))
            .await;
        receiver.wait_for(delivered_before + 2).await;
        assert!(
            proxy.asked()[before..]
                .iter()
                .all(|asked| *asked == expected),
            "{:?}",
            proxy.asked()
        );
        hookline.stop().await;
    }
}

#[tokio::test]
async fn a_configured_proxy_never_sees_a_refused_target() {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let proxy = RecordingProxy::start().await;
    for proxy_url in [proxy.http_url(), proxy.socks5_url()] {
        let hookline = Hookline::builder()
            .setting("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "false")
            .setting("HOOKLINE__DELIVERY__PROXY", &proxy_url)
            .start()
            .await;
        for scheme in ["http", "https"] {
            let endpoint = hookline
                .create_endpoint(
                    "acme",
                    json!({"url": format!("{scheme}://localhost:{port}/hook"), "event_types": ["#"]}),
                )
                .await;
            let id = endpoint["id"].as_str().expect("endpoint id");
            let test = hookline
                .call(
                    Method::POST,
                    &format!("/v1/tenants/acme/endpoints/{id}/test"),
                    None,
                )
                .await;
            assert_eq!(test.body["delivered"], false, "{proxy_url} {scheme}");
            assert_refused_without_addresses(&format!("{proxy_url} {scheme}"), &test.body);
            hookline
                .call(
                    Method::DELETE,
                    &format!("/v1/tenants/acme/endpoints/{id}"),
                    None,
                )
                .await;
        }
        assert_refused_everywhere_without_addresses(
            &hookline,
            &format!("http://localhost:{port}/hook"),
        )
        .await;
        hookline.stop().await;
        assert_eq!(proxy.asked(), vec![], "{proxy_url}: the proxy saw nothing");
    }
    assert_eq!(receiver.count(), 0);
}

/// The proxy's own host is resolved without the guard — an egress proxy usually lives on
/// a private network — and only for reaching the proxy: an endpoint naming that host is
/// refused.
#[tokio::test]
async fn the_proxy_may_live_on_a_private_address_that_endpoints_may_not_use() {
    let receiver = Receiver::on("127.0.0.2").await;
    let proxy = RecordingProxy::start().await;
    let proxy_url = format!("socks5://localhost:{}", proxy.addr.port());
    let hookline = Hookline::builder()
        .setting("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "false")
        .setting("HOOKLINE__DELIVERY__ALLOWED_NETWORKS", "127.0.0.2/32")
        .setting("HOOKLINE__DELIVERY__PROXY", &proxy_url)
        .start()
        .await;
    let endpoint = hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let id = endpoint["id"].as_str().expect("endpoint id");
    let test = hookline
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/endpoints/{id}/test"),
            None,
        )
        .await;
    assert_eq!(test.body["delivered"], true, "{}", test.body);
    assert_eq!(
        proxy.asked(),
        vec![Asked::Socks5 {
            target: receiver.addr.to_string()
        }]
    );
    let proxy_host = hookline
        .call(
            Method::POST,
            "/v1/tenants/acme/endpoints",
            Some(json!({
                "url": format!("http://localhost:{}/", proxy.addr.port()),
                "event_types": ["#"],
            })),
        )
        .await;
    proxy_host.assert_invalid("url", "the proxy's host");
    assert_refused_without_addresses("the proxy's host", &proxy_host.body);
    assert_eq!(proxy.asked().len(), 1, "{:?}", proxy.asked());
    hookline.stop().await;
}

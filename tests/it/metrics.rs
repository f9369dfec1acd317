//! What ops scrape: both binaries' `/metrics` after real traffic pass `promtool check
//! metrics`.

use hookline_tests::{Hookline, Receiver, eventually};
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

async fn scrape(hookline: &Hookline, admin: SocketAddr) -> String {
    hookline
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text")
}

fn promtool_check(name: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (Debian package prometheus; make test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write scrape");
    let output = child.wait_with_output().expect("promtool ran");
    assert!(
        output.status.success(),
        "promtool check metrics failed for {name}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn scrapes_after_traffic_pass_promtool() {
    let hookline = Hookline::builder().retry_schedule("50ms").start().await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_status(500);
    hookline
        .create_endpoint("acme", json!({"url": ok.url(), "event_types": ["#"]}))
        .await;
    hookline
        .create_endpoint("acme", json!({"url": failing.url(), "event_types": ["#"]}))
        .await;
    hookline
        .post_event(
            "acme",
            json!({"id": "m-1", "type": "candidate.interested", "data": {}}),
        )
        .await;
    hookline
        .post_event(
            "acme",
            json!({"id": "m-1", "type": "candidate.interested", "data": {}}),
        )
        .await;
    ok.wait_for(1).await;
    hookline.dead_letters(1).await;
    let admin = hookline.deliverer_admins[0];
    eventually("the retry backlog gauge has been refreshed", || async {
        scrape(&hookline, admin)
            .await
            .contains("hookline_retry_backlog{")
    })
    .await;

    let ingest = scrape(&hookline, hookline.ingest_admin).await;
    let deliverer = scrape(&hookline, admin).await;
    promtool_check("ingest", &ingest);
    promtool_check("deliverer", &deliverer);
    for (text, name) in [
        (&ingest, "hookline_events_accepted_total"),
        (&ingest, "hookline_events_duplicate_total"),
        (&ingest, "hookline_build_info"),
        (&deliverer, "hookline_delivery_attempts_total"),
        (&deliverer, "hookline_dead_letters_total"),
        (&deliverer, "hookline_delivery_lag_seconds_bucket"),
        (&deliverer, "process_resident_memory_bytes"),
    ] {
        assert!(text.contains(name), "{name} exported");
    }

    hookline.stop().await;
}

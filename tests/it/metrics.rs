//! What ops scrape: both binaries' `/metrics` after real traffic pass `promtool check
//! metrics`, and every metric the alert rules, the dashboard and the KEDA trigger query is
//! one the binaries export.

use hookline_tests::{Hookline, Receiver, eventually};
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
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
async fn scrapes_after_traffic_pass_promtool_and_cover_alerts_and_dashboard() {
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

    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = Vec::new();
    for (name, text) in [("ingest", &ingest), ("deliverer", &deliverer)] {
        let path = dir.path().join(format!("{name}.prom"));
        std::fs::write(&path, text).expect("write scrape");
        args.push("--scrape".to_owned());
        args.push(path.display().to_string());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new("python3")
        .arg(root.join("tests/deploy/check_metric_names.py"))
        .args(&args)
        .current_dir(&root)
        .output()
        .expect("python3 runs the checker");
    assert!(
        output.status.success(),
        "alert rules, dashboard or KEDA query use metrics the binaries do not export:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    hookline.stop().await;
}

//! The console in a real browser: ingest and a deliverer run here against the test
//! brokers, and the Playwright tests in tests/console drive Debian's Chromium against
//! them (`make test` installs Chromium and the pinned playwright-core).

use hookline_tests::{Hookline, TOKEN};
use std::path::PathBuf;
use std::process::Stdio;

#[tokio::test]
async fn console_in_a_real_browser() {
    let hookline = Hookline::builder()
        .retry_schedule("20ms,20ms")
        // Deliveries held behind an open circuit come back this soon (scouts) or at most
        // this late: kept short so the failing endpoint's retries run out within the
        // page's patience.
        .setting("HOOKLINE__DELIVERY__DEFER_DELAY", "10ms")
        .setting("HOOKLINE__DELIVERY__MAX_HOLD", "20ms")
        .setting(
            "HOOKLINE__API__PORTAL_KEY",
            "console-test-portal-key-0123456789abcdef",
        )
        .start()
        .await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/console: run the tests with `make test`"
    );
    let mut command = tokio::process::Command::new("node");
    command
        .args(["--test", "--test-concurrency=1", "console.test.mjs"])
        .current_dir(&dir)
        .env("HOOKLINE_URL", hookline.url(""))
        .env("HOOKLINE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // `make screenshots` (or this variable) refreshes the pictures in docs/console.
    if let Ok(shots) = std::env::var("HOOKLINE_SCREENSHOTS") {
        command.env("HOOKLINE_SCREENSHOTS", shots);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(240), command.output())
        .await
        .expect("browser tests finish within four minutes")
        .expect("node runs (make test installs it with the test tools)");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The TAP report, with each browser test's duration (shown with --success-output).
    println!("{report}");
    assert!(output.status.success(), "browser tests failed:\n{report}");
    assert!(
        report.contains("# pass 8"),
        "all eight browser tests ran:\n{report}"
    );
    hookline.stop().await;
}

//! A webhook receiver as a subscriber would write one: it verifies the Standard Webhooks
//! signature and timestamp, prints each webhook, and answers 204 (or 401 when the
//! signature does not verify).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::Parser;
use hookline_shared::domain::signing::SigningSecret;
use std::sync::Arc;

/// Webhooks older or newer than this are refused, as the Standard Webhooks spec advises
/// against replays.
const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
    /// The endpoint's signing secret (whsec_…).
    #[arg(long, env = "HOOKLINE_RECEIVER_SECRET")]
    secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret = SigningSecret::parse(&args.secret).map_err(|e| anyhow::anyhow!("--secret {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "example receiver listening on http://{}/ (verifying signatures)",
        listener.local_addr()?
    );
    let app = Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .with_state(Arc::new(secret));
    axum::serve(listener, app)
        .with_graceful_shutdown(hookline_shared::lifecycle::shutdown_signal())
        .await?;
    Ok(())
}

async fn receive(
    State(secret): State<Arc<SigningSecret>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let id = header("webhook-id");
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or_default();
    let fresh =
        (time::OffsetDateTime::now_utc().unix_timestamp() - timestamp).abs() <= TOLERANCE_SECONDS;
    let verified = fresh && secret.verify(id, timestamp, &body, header("webhook-signature"));
    let text = String::from_utf8_lossy(&body);
    if verified {
        println!("✔ webhook {id} signature verified: {text}");
        StatusCode::NO_CONTENT
    } else {
        println!("✘ webhook {id} REJECTED (signature or timestamp does not verify): {text}");
        StatusCode::UNAUTHORIZED
    }
}

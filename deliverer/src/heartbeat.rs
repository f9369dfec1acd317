//! Announces this replica in Redis while it consumes a delivery queue, so the operator
//! overview can count the deliverers that are actually taking work.

use hookline_shared::store::health::to_ms;
use hookline_shared::store::replicas::{HEARTBEAT_MS, ReplicaRegistry};
use prometheus::IntGauge;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Heartbeat {
    pub registry: ReplicaRegistry,
    pub replica: String,
    /// `hookline_consumer_connected`: how many delivery queues this replica consumes.
    pub connected: IntGauge,
}

impl Heartbeat {
    pub async fn run(self, shutdown: CancellationToken) {
        // Checked every second so a replica shows up as soon as its consumer connects,
        // written every HEARTBEAT_MS after that.
        let mut last_written: Option<i64> = None;
        loop {
            let now_ms = to_ms(OffsetDateTime::now_utc());
            let connected = self.connected.get() > 0;
            let due = last_written.is_none_or(|at| now_ms - at >= HEARTBEAT_MS);
            if !connected {
                last_written = None;
            } else if due {
                match self.registry.heartbeat(&self.replica, now_ms).await {
                    Ok(()) => last_written = Some(now_ms),
                    Err(error) => tracing::debug!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        "heartbeat failed"
                    ),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let _ = self.registry.leave(&self.replica).await;
    }
}

/// `HOSTNAME` (the pod name on Kubernetes) and the process id.
pub fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "deliverer".to_owned());
    format!("{host}:{}", std::process::id())
}

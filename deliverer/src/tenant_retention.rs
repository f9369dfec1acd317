//! Tenants that keep their data shorter than the installation does
//! (`PUT /v1/tenants/{t}/retention`): every check, each deliverer trims those tenants'
//! event states, attempt logs and dead-letter index to their own retention. The
//! installation's retention is trimmed on every write; this only ever shortens it.

use hookline_shared::store::StoreError;
use hookline_shared::store::activity::ActivityStore;
use hookline_shared::store::dead_letters::DeadLetterStore;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::retention::RetentionStore;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct TenantRetentionTrim {
    pub overrides: RetentionStore,
    pub endpoints: EndpointStore,
    pub activity: ActivityStore,
    pub dead_letters: DeadLetterStore,
    pub every: Duration,
}

impl TenantRetentionTrim {
    pub async fn run(self, shutdown: CancellationToken) {
        crate::periodic::every(
            self.every,
            shutdown,
            "trimming tenants to their retention",
            || async {
                self.check()
                    .await
                    .map_err(|error| hookline_shared::telemetry::error_chain(&error))
            },
        )
        .await;
    }

    async fn check(&self) -> Result<(), StoreError> {
        let now_ms = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX);
        let cutoff = |keep: Duration| {
            now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
        };
        for (tenant, retention) in self.overrides.all().await? {
            if let Some(history) = retention.history {
                let endpoint_ids = self.endpoints.ids(&tenant).await?;
                self.activity
                    .trim_older(&tenant, cutoff(history), &endpoint_ids)
                    .await?;
            }
            if let Some(dead_letters) = retention.dead_letters {
                self.dead_letters
                    .trim_older(&tenant, cutoff(dead_letters))
                    .await?;
            }
        }
        Ok(())
    }
}

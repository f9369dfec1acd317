//! Counts endpoints by health state for `hookline_endpoints{state}`, from the same
//! records the API shows. Every replica reports the same totals; dashboards take `max`.

use hookline_shared::domain::health::{HealthPolicy, HealthState, count_states};
use hookline_shared::store::StoreError;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use prometheus::IntGaugeVec;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct HealthGauge {
    pub endpoints: EndpointStore,
    pub health: HealthStore,
    pub policy: HealthPolicy,
    pub gauge: IntGaugeVec,
}

impl HealthGauge {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.count().await {
                Ok(counts) => {
                    for (state, count) in counts {
                        self.gauge
                            .with_label_values(&[state.as_str()])
                            .set(i64::try_from(count).unwrap_or(i64::MAX));
                    }
                }
                Err(error) => tracing::debug!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "counting endpoints by health failed"
                ),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }

    async fn count(&self) -> Result<[(HealthState, u64); 3], StoreError> {
        let mut counts = HealthState::ALL.map(|state| (state, 0));
        for tenant in self.endpoints.tenants().await? {
            let (endpoints, health) =
                tokio::try_join!(self.endpoints.list(&tenant), self.health.all(&tenant))?;
            for (total, (_, count)) in
                counts
                    .iter_mut()
                    .zip(count_states(&endpoints, &health, &self.policy))
            {
                total.1 += count;
            }
        }
        Ok(counts)
    }
}

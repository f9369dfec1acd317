//! Counts endpoints by health state for `hookline_endpoints{state}`, from the same
//! records the API shows. Every replica reports the same totals; dashboards take `max`.

use hookline_shared::domain::health::{HealthPolicy, HealthState};
use hookline_shared::store::StoreError;
use hookline_shared::store::endpoints::EndpointStore;
use hookline_shared::store::health::HealthStore;
use prometheus::IntGaugeVec;
use std::collections::HashMap;
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
                    for state in HealthState::ALL {
                        let count = counts.get(&state).copied().unwrap_or(0);
                        self.gauge.with_label_values(&[state.as_str()]).set(count);
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

    async fn count(&self) -> Result<HashMap<HealthState, i64>, StoreError> {
        let mut counts = HashMap::new();
        for tenant in self.endpoints.tenants().await? {
            let (endpoints, health) =
                tokio::try_join!(self.endpoints.list(&tenant), self.health.all(&tenant))?;
            for endpoint in endpoints {
                let record = health.get(&endpoint.id).cloned().unwrap_or_default();
                *counts
                    .entry(record.state(endpoint.spec.enabled, &self.policy))
                    .or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}

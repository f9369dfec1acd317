//! The probe lease of an open circuit: while an endpoint is failing, only the delivery
//! holding it attempts the endpoint. The lease is a guard, so every path that does not
//! reach the attempt — a busy slot, a rate limit, an error — gives it back by dropping
//! it; the attempt gives it back explicitly once it knows the outcome.

use hookline_shared::domain::event::TenantId;
use hookline_shared::store::health::HealthStore;

#[derive(Debug)]
pub struct ProbeLease {
    health: HealthStore,
    tenant: TenantId,
    endpoint_id: String,
    replica_id: String,
    held: bool,
}

impl ProbeLease {
    /// A lease this replica took in Redis.
    pub fn taken(
        health: HealthStore,
        tenant: TenantId,
        endpoint_id: String,
        replica_id: String,
    ) -> Self {
        Self {
            health,
            tenant,
            endpoint_id,
            replica_id,
            held: true,
        }
    }

    /// Gives the lease back now, so the next delivery may probe at once.
    pub async fn release(mut self) {
        self.held = false;
        release(
            &self.health,
            &self.tenant,
            &self.endpoint_id,
            &self.replica_id,
        )
        .await;
    }
}

impl Drop for ProbeLease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // Drop cannot wait: the release goes on without the delivery. Outside a runtime
        // (never in the deliverer) the lease simply runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let health = self.health.clone();
            let tenant = self.tenant.clone();
            let endpoint_id = std::mem::take(&mut self.endpoint_id);
            let replica_id = std::mem::take(&mut self.replica_id);
            runtime.spawn(async move {
                release(&health, &tenant, &endpoint_id, &replica_id).await;
            });
        }
    }
}

async fn release(health: &HealthStore, tenant: &TenantId, endpoint_id: &str, replica_id: &str) {
    // If this fails the lease runs out by itself.
    if let Err(error) = health.release_probe(tenant, endpoint_id, replica_id).await {
        tracing::debug!(
            endpoint.id = endpoint_id,
            error = format!("{:#}", anyhow::Error::from(error)),
            "releasing a probe lease failed; it runs out"
        );
    }
}

//! Sharing a replica between tenants. Partitions keep one tenant's backlog out of the
//! other partitions' queues; within a partition, a tenant has at most its share of
//! messages in progress on this replica, and its further messages are parked in its
//! lane of the retry pool (the message is acked once they are stored). The partition's
//! queue so keeps moving past a heavy tenant for the tenants that share it, and the
//! parked deliveries come back through the pool, whose lanes are served round-robin.
//! Bulk events are always parked, in bulk lanes, which get what real-time lanes leave.

use crate::acks::AckWindow;
use crate::consumer::Handler;
use crate::delivery::Worker;
use crate::message::integer_header;
use hookline_shared::contract::ACCEPTED_AT_HEADER;
use hookline_shared::domain::event::TenantId;
use lapin::message::Delivery;
use prometheus::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use time::OffsetDateTime;

/// Messages in progress per tenant, in one partition of this replica.
#[derive(Debug)]
pub struct TenantShares {
    share: usize,
    in_progress: Mutex<HashMap<TenantId, usize>>,
}

impl TenantShares {
    pub fn new(share: usize) -> Arc<Self> {
        Arc::new(Self {
            share: share.max(1),
            in_progress: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more message of `tenant`, held until the guard is dropped; `None`
    /// when the tenant already has its share in progress.
    pub fn enter(self: &Arc<Self>, tenant: &TenantId) -> Option<ShareGuard> {
        let mut in_progress = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = in_progress.entry(tenant.clone()).or_default();
        if *count >= self.share {
            return None;
        }
        *count += 1;
        Some(ShareGuard {
            shares: self.clone(),
            tenant: tenant.clone(),
        })
    }

    fn leave(&self, tenant: &TenantId) {
        let mut in_progress = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_progress.get_mut(tenant) {
            *count -= 1;
            if *count == 0 {
                in_progress.remove(tenant);
            }
        }
    }

    #[cfg(test)]
    fn in_progress(&self, tenant: &TenantId) -> usize {
        self.in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

/// One message of a tenant in progress; its place is given back when dropped.
#[derive(Debug)]
pub struct ShareGuard {
    shares: Arc<TenantShares>,
    tenant: TenantId,
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        self.shares.leave(&self.tenant);
    }
}

/// The handler of one delivery queue: the worker, with this partition's shares and its
/// lag gauge.
#[derive(Debug)]
pub struct PartitionHandler {
    pub worker: Arc<Worker>,
    pub shares: Arc<TenantShares>,
    pub lag: Gauge,
}

impl Handler for PartitionHandler {
    async fn handle(self: Arc<Self>, delivery: Delivery, acks: AckWindow) {
        if let Some(accepted_ms) = accepted_at_ms(&delivery) {
            let now_ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
            // Milliseconds as seconds for a gauge: precision is ample.
            #[allow(clippy::cast_precision_loss)]
            let lag = (now_ms - i128::from(accepted_ms)).max(0) as f64 / 1000.0;
            self.lag.set(lag);
        }
        self.worker
            .clone()
            .handle_message(delivery, acks, &self.shares)
            .await;
    }
}

/// When the event was accepted (unix ms): ingest's header, else the message's
/// `timestamp` property (seconds), which a direct publisher may set.
fn accepted_at_ms(delivery: &Delivery) -> Option<i64> {
    match integer_header(delivery, ACCEPTED_AT_HEADER) {
        Some(ms) => i64::try_from(ms).ok(),
        None => delivery
            .properties
            .timestamp()
            .and_then(|seconds| i64::try_from(seconds).ok())
            .map(|seconds| seconds.saturating_mul(1000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_share_and_no_more_and_others_are_unaffected() {
        let shares = TenantShares::new(2);
        let heavy = TenantId::parse("heavy").expect("tenant");
        let quiet = TenantId::parse("quiet").expect("tenant");
        let first = shares.enter(&heavy).expect("within share");
        let second = shares.enter(&heavy).expect("within share");
        assert!(shares.enter(&heavy).is_none(), "a third is over the share");
        let other = shares
            .enter(&quiet)
            .expect("another tenant has its own share");
        drop(first);
        let third = shares.enter(&heavy).expect("a place came back");
        assert_eq!(shares.in_progress(&heavy), 2);
        drop((second, third, other));
        assert_eq!(shares.in_progress(&heavy), 0);
        assert_eq!(shares.in_progress(&quiet), 0);
    }

    #[test]
    fn a_zero_share_still_admits_one_message_at_a_time() {
        let shares = TenantShares::new(0);
        let tenant = TenantId::parse("acme").expect("tenant");
        let only = shares.enter(&tenant).expect("one");
        assert!(shares.enter(&tenant).is_none());
        drop(only);
        assert!(shares.enter(&tenant).is_some());
    }
}

//! Rate-limiting of per-endpoint side work inside one replica.

use hookline_shared::domain::event::TenantId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets something happen at most once per interval per endpoint in this replica: writing
/// a healthy endpoint's success (enough to keep `last_success_at` fresh without a Redis
/// write per delivery), or asking for an open circuit's probe lease.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    // A std Mutex: held for a map update, never across an await.
    written: Mutex<HashMap<(String, String), Instant>>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            written: Mutex::default(),
        }
    }

    /// True (and marks it done) when the interval since the last time has passed.
    pub fn due(&self, tenant: &TenantId, endpoint_id: &str) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (tenant.as_str().to_owned(), endpoint_id.to_owned());
        match written.get(&key) {
            Some(at) if now.duration_since(*at) < self.interval => false,
            _ => {
                if written.len() > 100_000 {
                    written.clear();
                }
                written.insert(key, now);
                true
            }
        }
    }
}

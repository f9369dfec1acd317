//! Operational events: what Hookline tells a tenant (and an operator tenant) about its
//! own endpoints, delivered through the same pipeline as any event, to the tenant's
//! endpoints that subscribe to them — never to the endpoint an event is about.

use crate::domain::endpoint::Endpoint;
use crate::domain::event::Event;
use crate::domain::health::HealthPolicy;
use serde_json::{Value, json};

/// Event types under this prefix are Hookline's own: the API refuses them from tenants.
pub const RESERVED_PREFIX: &str = "hookline.";

pub const FAILING: &str = "hookline.endpoint.failing";
pub const DISABLED: &str = "hookline.endpoint.disabled";
pub const RECOVERED: &str = "hookline.endpoint.recovered";
pub const DEAD_LETTERS_ACCUMULATED: &str = "hookline.dead_letters.accumulated";

/// Every operational event type, for the catalog and the console.
pub const TYPES: [&str; 4] = [FAILING, DISABLED, RECOVERED, DEAD_LETTERS_ACCUMULATED];

/// Something worth telling about an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Its circuit opened: `failures` attempts failed in a row.
    Failing {
        failures: u32,
        last_error: Option<String>,
    },
    /// Hookline disabled it (`reason`: `gone`, `failing_too_long`).
    Disabled { reason: String },
    /// It answered again after `failures` failures in a row.
    Recovered { failures: u32 },
    /// Deliveries to it were dead-lettered; the first of a window of `window_s`.
    DeadLettersAccumulated { window_s: u64, reason: String },
}

impl Notice {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Failing { .. } => FAILING,
            Self::Disabled { .. } => DISABLED,
            Self::Recovered { .. } => RECOVERED,
            Self::DeadLettersAccumulated { .. } => DEAD_LETTERS_ACCUMULATED,
        }
    }

    /// The event's `data`: the endpoint (never its secret or headers) and the facts.
    pub fn data(&self, endpoint: &Endpoint) -> Value {
        let mut data = json!({
            "endpoint_id": endpoint.id,
            "tenant": endpoint.tenant.as_str(),
            "url": endpoint.spec.url.as_str(),
        });
        if let Some(description) = &endpoint.spec.description {
            data["description"] = description.as_str().into();
        }
        match self {
            Self::Failing {
                failures,
                last_error,
            } => {
                data["consecutive_failures"] = (*failures).into();
                if let Some(error) = last_error {
                    data["last_error"] = error.as_str().into();
                }
            }
            Self::Disabled { reason } => data["reason"] = reason.as_str().into(),
            Self::Recovered { failures } => data["failures_before"] = (*failures).into(),
            Self::DeadLettersAccumulated { window_s, reason } => {
                data["window_seconds"] = (*window_s).into();
                data["first_reason"] = reason.as_str().into();
            }
        }
        data
    }
}

/// The failure count a failure left that makes the endpoint `failing`: exactly the
/// threshold, so the one attempt that crossed it (the count is atomic) tells.
pub fn turned_failing(failures_after: u32, policy: &HealthPolicy) -> bool {
    failures_after == policy.failing_after
}

/// A success that ended a streak long enough to have opened the circuit.
pub fn recovered(failures_ended: u32, policy: &HealthPolicy) -> bool {
    failures_ended >= policy.failing_after
}

/// An operational event is about one endpoint, and never delivered there.
pub fn is_about(event: &Event, endpoint_id: &str) -> bool {
    event.event_type.as_str().starts_with(RESERVED_PREFIX)
        && event.data.get("endpoint_id").and_then(Value::as_str) == Some(endpoint_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{EventMessage, Fallbacks, TenantId};

    fn policy() -> HealthPolicy {
        HealthPolicy {
            failing_after: 5,
            ..HealthPolicy::default()
        }
    }

    #[test]
    fn only_the_failure_that_crosses_the_threshold_and_a_success_after_it_tell() {
        let policy = policy();
        let told: Vec<u32> = (1..=8).filter(|&n| turned_failing(n, &policy)).collect();
        assert_eq!(told, vec![5]);
        assert!(!recovered(0, &policy), "a success while healthy");
        assert!(!recovered(4, &policy), "the circuit never opened");
        assert!(recovered(5, &policy));
        assert!(recovered(40, &policy));
    }

    #[test]
    fn an_event_is_about_the_endpoint_it_names_and_only_if_it_is_hookline_s_own() {
        let event = |event_type: &str, data: Value| {
            let message: EventMessage =
                serde_json::from_value(json!({"type": event_type, "data": data})).expect("message");
            Event::from_message(
                message,
                Fallbacks {
                    tenant: Some(TenantId::parse("acme").expect("tenant")),
                    id: "e".into(),
                    occurred_at: time::OffsetDateTime::UNIX_EPOCH,
                },
            )
            .expect("event")
        };
        assert!(is_about(
            &event(FAILING, json!({"endpoint_id": "ep_1"})),
            "ep_1"
        ));
        assert!(!is_about(
            &event(FAILING, json!({"endpoint_id": "ep_1"})),
            "ep_2"
        ));
        assert!(!is_about(
            &event("candidate.created", json!({"endpoint_id": "ep_1"})),
            "ep_1"
        ));
    }
}

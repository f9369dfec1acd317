//! Helpers the end-to-end modules about endpoints share: an endpoint's path, one
//! subscribed to everything, its health.

use hookline_tests::{Hookline, Receiver};
use serde_json::{Value, json};

pub fn endpoint_path(tenant: &str, endpoint: &Value) -> String {
    format!(
        "/v1/tenants/{tenant}/endpoints/{}",
        endpoint["id"].as_str().expect("endpoint id")
    )
}

/// An endpoint of acme's for `receiver`, subscribed to every event type, and its path.
pub async fn subscribe_to_everything(hookline: &Hookline, receiver: &Receiver) -> (Value, String) {
    let endpoint = hookline
        .create_endpoint("acme", json!({"url": receiver.url(), "event_types": ["#"]}))
        .await;
    let path = endpoint_path("acme", &endpoint);
    (endpoint, path)
}

pub async fn health_state(hookline: &Hookline, path: &str) -> Value {
    let answer = hookline.get(path).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["health"].clone()
}

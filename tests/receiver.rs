//! A real HTTP receiver on loopback that records what it gets and answers what the test
//! scripted: a queue of statuses first, then a default that can be flipped mid-test.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Debug, Default)]
struct Script {
    upcoming: VecDeque<u16>,
    default: u16,
    hang: bool,
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<Script>,
    arrived: Notify,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// A receiver answering 204 to everything.
    pub async fn start() -> Self {
        Self::answering(&[]).await
    }

    /// A receiver answering `statuses` in order, then 204.
    pub async fn answering(statuses: &[u16]) -> Self {
        let shared = Arc::new(Shared::default());
        {
            let mut script = shared.script.lock().expect("script");
            script.upcoming = statuses.iter().copied().collect();
            script.default = 204;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let app = Router::new()
            .route("/{*path}", post(receive))
            .route("/", post(receive))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Changes the answer for every request from now on (after any scripted ones).
    pub fn set_status(&self, status: u16) {
        self.shared.script.lock().expect("script").default = status;
    }

    /// Never answers (until the client gives up).
    pub fn hang(&self, hang: bool) {
        self.shared.script.lock().expect("script").hang = hang;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().expect("received").len()
    }

    /// Waits until at least `count` requests arrived; fails the test after `PATIENCE`.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            let arrived = self.shared.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("receiver got {} of {count} requests", self.count());
            }
        }
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (status, hang) = {
        let mut script = shared.script.lock().expect("script");
        let status = script.upcoming.pop_front().unwrap_or(script.default);
        (status, script.hang)
    };
    shared.received.lock().expect("received").push(Received {
        headers,
        body,
        at: std::time::Instant::now(),
    });
    shared.arrived.notify_waiters();
    if hang {
        std::future::pending::<()>().await;
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

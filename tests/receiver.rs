//! A real HTTP receiver on loopback that records what it gets and answers what the test
//! scripted: a queue of statuses first, then a default that can be flipped mid-test.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
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

/// Decides a request's answer from its body, before the scripted statuses.
#[derive(Clone)]
pub struct Rule(Arc<Answering>);

/// The status for a request's body, or `None` to answer as scripted; 0 never answers
/// (the request hangs until the sender gives up).
type Answering = dyn Fn(&[u8]) -> Option<u16> + Send + Sync;

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rule")
    }
}

#[derive(Debug, Default)]
struct Script {
    rule: Option<Rule>,
    upcoming: VecDeque<u16>,
    default: u16,
    hang: bool,
    retry_after: Option<String>,
    body: Option<String>,
    delay: Option<std::time::Duration>,
}

/// Requests being answered right now, and the most at once since the last reset.
#[derive(Debug, Default)]
struct Concurrency {
    now: usize,
    max: usize,
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<Script>,
    concurrency: Mutex<Concurrency>,
    arrived: Notify,
    /// While true, requests wait (received, unanswered) until released.
    holding: Mutex<bool>,
    released: Notify,
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
        Self::bound("127.0.0.1", statuses).await
    }

    /// A receiver answering 204 on another loopback address than 127.0.0.1, for tests
    /// that tell loopback addresses apart (e.g. `127.0.0.2`).
    pub async fn on(ip: &str) -> Self {
        Self::bound(ip, &[]).await
    }

    async fn bound(ip: &str, statuses: &[u16]) -> Self {
        let shared = Arc::new(Shared::default());
        {
            let mut script = shared.script.lock().expect("script");
            script.upcoming = statuses.iter().copied().collect();
            script.default = 204;
        }
        let listener = tokio::net::TcpListener::bind((ip, 0))
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

    /// Answers what `rule` says for the requests it has an answer for (by body), ahead
    /// of the scripted statuses; `None` removes the rule.
    pub fn set_rule(&self, rule: Option<impl Fn(&[u8]) -> Option<u16> + Send + Sync + 'static>) {
        self.shared.script.lock().expect("script").rule = rule.map(|rule| Rule(Arc::new(rule)));
    }

    /// Changes the answer for every request from now on (after any scripted ones).
    pub fn set_status(&self, status: u16) {
        self.shared.script.lock().expect("script").default = status;
    }

    /// Answers only after `delay` from now on, so deliveries stay in flight a while.
    pub fn set_delay(&self, delay: Option<std::time::Duration>) {
        self.shared.script.lock().expect("script").delay = delay;
    }

    /// Sends `Retry-After` with every answer from now on.
    pub fn set_retry_after(&self, value: Option<&str>) {
        self.shared.script.lock().expect("script").retry_after = value.map(str::to_owned);
    }

    /// Answers with this body from now on.
    pub fn set_body(&self, body: &str) {
        self.shared.script.lock().expect("script").body = Some(body.to_owned());
    }

    /// The most requests this receiver was answering at once since the last reset.
    pub fn max_concurrency(&self) -> usize {
        self.shared.concurrency.lock().expect("concurrency").max
    }

    pub fn reset_max_concurrency(&self) {
        let mut concurrency = self.shared.concurrency.lock().expect("concurrency");
        concurrency.max = concurrency.now;
    }

    /// Never answers (until the client gives up).
    pub fn hang(&self, hang: bool) {
        self.shared.script.lock().expect("script").hang = hang;
    }

    /// Requests are received but not answered until [`Receiver::release_answers`].
    pub fn hold_answers(&self) {
        *self.shared.holding.lock().expect("holding") = true;
    }

    pub fn release_answers(&self) {
        *self.shared.holding.lock().expect("holding") = false;
        self.shared.released.notify_waiters();
    }

    /// Requests received and not answered yet (nor abandoned by the client).
    pub fn in_flight(&self) -> usize {
        self.shared.concurrency.lock().expect("concurrency").now
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().expect("received").len()
    }

    /// Waits until at least `count` requests arrived; fails the test after `PATIENCE`.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        self.wait_until(|received| {
            (received.len() < count)
                .then(|| format!("receiver got {} of {count} requests", received.len()))
        })
        .await
    }

    /// Waits until a request for each event of `ids` (its `webhook-id`) arrived; fails
    /// the test after `PATIENCE`.
    pub async fn wait_for_events(&self, ids: &[String]) -> Vec<Received> {
        self.wait_until(|received| {
            let missing = ids
                .iter()
                .filter(|id| {
                    !received
                        .iter()
                        .any(|r| r.header("webhook-id") == Some(id.as_str()))
                })
                .count();
            (missing > 0).then(|| format!("receiver misses {missing} of {} events", ids.len()))
        })
        .await
    }

    /// Waits, woken by each arrival, until `shortfall` of what arrived is `None`; fails
    /// the test with the last shortfall after `PATIENCE`.
    async fn wait_until(&self, shortfall: impl Fn(&[Received]) -> Option<String>) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            let arrived = self.shared.arrived.notified();
            let received = self.received();
            let Some(missing) = shortfall(&received) else {
                return received;
            };
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{missing}");
            }
        }
    }
}

/// Decrements the in-flight count however the request ends (answered or abandoned).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.concurrency.lock().expect("concurrency").now -= 1;
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (status, hang, retry_after, answer, delay) = {
        let mut script = shared.script.lock().expect("script");
        let ruled = script.rule.as_ref().and_then(|rule| (rule.0)(&body));
        let status = match ruled {
            Some(status) => status,
            None => script.upcoming.pop_front().unwrap_or(script.default),
        };
        (
            status,
            script.hang,
            script.retry_after.clone(),
            script.body.clone(),
            script.delay,
        )
    };
    let _in_flight = {
        let mut concurrency = shared.concurrency.lock().expect("concurrency");
        concurrency.now += 1;
        concurrency.max = concurrency.max.max(concurrency.now);
        InFlight(shared.clone())
    };
    shared.received.lock().expect("received").push(Received {
        headers,
        body,
        at: std::time::Instant::now(),
    });
    shared.arrived.notify_waiters();
    if hang || status == 0 {
        std::future::pending::<()>().await;
    }
    loop {
        let released = shared.released.notified();
        if !*shared.holding.lock().expect("holding") {
            break;
        }
        released.await;
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.unwrap_or_default()).into_response();
    if let Some(value) = retry_after
        && let Ok(value) = value.parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

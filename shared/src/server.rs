//! The HTTP server both binaries run their routers on (the API and the admin port), with
//! the limits that keep unauthenticated clients from holding the process's connections:
//!
//! - **Header read timeout.** Bytes of a request head that do not complete it within
//!   `header_read_timeout` close the connection (a client trickling headers).
//! - **Idle timeout.** A connection on which no byte moved for `idle_timeout` while no
//!   request is being handled is closed: a kept-alive connection between requests, a
//!   connection that never sent anything, and a client that stopped reading its answer.
//! - **Connection cap.** At most `max_connections` are served at once; further accepts
//!   wait in the kernel's backlog until one closes, and the process never runs out of
//!   file descriptors for them.
//!
//! hyper's own `header_read_timeout` starts when the server starts waiting for the next
//! request, so it would also be the keep-alive idle limit; the two are different
//! settings, so both are measured here from what the connection's bytes and requests do.
//! Only HTTP/1.1 is served: the API's clients are HTTP/1.1 (TLS, and with it HTTP/2, is
//! terminated in front of Hookline), and cleartext HTTP/2 would bring its own stream and
//! flow-control limits to defend.

use crate::metrics::register;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The limits of one listener; `[http]` for the API, `[admin]` for the admin port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ConnectionLimits {
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "crate::settings::count")]
    pub max_connections: usize,
}

/// The settings keys (and their variables) of one listener's limits, for error messages.
pub type LimitKeys = [(&'static str, &'static str); 3];

impl ConnectionLimits {
    /// Zero would close every connection at once or never accept one.
    pub fn validate(&self, keys: LimitKeys) -> Result<(), crate::settings::SettingsError> {
        let zero = [
            self.header_read_timeout.is_zero(),
            self.idle_timeout.is_zero(),
            self.max_connections == 0,
        ];
        match zero.iter().zip(keys).find(|(zero, _)| **zero) {
            Some((_, (key, env))) => Err(crate::settings::SettingsError::invalid(
                key,
                env,
                "must be positive",
            )),
            None => Ok(()),
        }
    }
}

/// Connection metrics of every listener of a process, labelled by listener.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    open: IntGaugeVec,
    cap: IntGaugeVec,
    closed: IntCounterVec,
}

impl ServerMetrics {
    pub fn new(registry: &Registry) -> Self {
        let open = IntGaugeVec::new(
            Opts::new(
                "hookline_http_connections",
                "HTTP connections being served, by listener.",
            ),
            &["listener"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let cap = IntGaugeVec::new(
            Opts::new(
                "hookline_http_connections_max",
                "The connection cap of each listener (max_connections): connections beyond it wait.",
            ),
            &["listener"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let closed = IntCounterVec::new(
            Opts::new(
                "hookline_http_connections_closed_total",
                "HTTP connections the server closed for a limit (header_timeout, idle_timeout), by listener.",
            ),
            &["listener", "reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        register(registry, open.clone());
        register(registry, cap.clone());
        register(registry, closed.clone());
        Self { open, cap, closed }
    }
}

/// Raises the soft limit on open files to the hard limit, where the system allows, so
/// that `max_connections` is not cut short by a low default; returns the limit in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Serves `router` on `listener` until `shutdown`, then stops accepting and lets the
/// requests in progress finish. Every request carries [`ConnectInfo`] with the peer.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    name: &'static str,
    metrics: ServerMetrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let open = metrics.open.with_label_values(&[name]);
    metrics
        .cap
        .with_label_values(&[name])
        .set(i64::try_from(limits.max_connections).unwrap_or(i64::MAX));
    // Every reason starts at zero, so rates and alerts have a series from the start.
    for reason in ["header_timeout", "idle_timeout"] {
        metrics.closed.with_label_values(&[name, reason]);
    }
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors (or a connection reset before accept):
                    // a pause lets connections close instead of spinning on the error.
                    tracing::warn!(listener = name, %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let open = open.clone();
        open.inc();
        connections.spawn(async move {
            let closed_for = serve_connection(stream, peer, router, limits, shutdown).await;
            if let Some(reason) = closed_for {
                metrics.closed.with_label_values(&[name, reason]).inc();
            }
            open.dec();
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// What one connection is doing, shared by its socket wrapper, its service and its
/// watchdog. Times are milliseconds since the connection was accepted.
#[derive(Debug)]
struct Activity {
    started: Instant,
    last_io_ms: AtomicU64,
    /// When the first byte of a request head arrived, plus one; 0 while none is pending.
    head_since_ms: AtomicU64,
    handling: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            handling: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if !self.handling.load(Ordering::Relaxed) {
            // Only the first byte of a head starts its clock.
            let _ = self.head_since_ms.compare_exchange(
                0,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn wrote(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.handling.store(true, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
        self.handling.store(false, Ordering::Relaxed);
    }
}

/// The watchdog's decision at `now_ms`: close for a limit, or look again at the returned
/// time. A request being handled is bounded by the request timeout, not here. A head
/// may begin at any moment without waking the watchdog, so it looks again at least
/// every header timeout: a trickled head is cut off within twice that.
fn check(
    limits: &ConnectionLimits,
    now_ms: u64,
    last_io_ms: u64,
    head_since_ms: Option<u64>,
    handling: bool,
) -> Result<u64, &'static str> {
    let header_ms = millis(limits.header_read_timeout);
    let idle_ms = millis(limits.idle_timeout);
    if handling {
        return Ok(now_ms + idle_ms.min(header_ms).max(1));
    }
    let mut next = last_io_ms
        .saturating_add(idle_ms)
        .min(now_ms.saturating_add(header_ms));
    if let Some(since) = head_since_ms {
        let head_deadline = since.saturating_add(header_ms);
        if now_ms >= head_deadline {
            return Err("header_timeout");
        }
        next = next.min(head_deadline);
    }
    if now_ms >= last_io_ms.saturating_add(idle_ms) {
        return Err("idle_timeout");
    }
    Ok(next)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Serves one connection; returns the limit it was closed for, if any.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> Option<&'static str> {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = Tracked {
        inner: router,
        peer,
        activity: activity.clone(),
    };
    // hyper's own header timeout would also end kept-alive connections between
    // requests; the watchdog below measures both limits instead.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let now_ms = activity.now_ms();
        let head_since = match activity.head_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since - 1),
        };
        let next_ms = match check(
            &limits,
            now_ms,
            activity.last_io_ms.load(Ordering::Relaxed),
            head_since,
            activity.handling.load(Ordering::Relaxed),
        ) {
            Ok(next) => next,
            Err(reason) => return Some(reason),
        };
        let wake = activity.started + Duration::from_millis(next_ms);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%peer, error = format!("{:#}", anyhow::Error::from(error)), "connection ended with an error");
                }
                return None;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The socket, noting when bytes move.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, noting when a request is being handled and telling it who the peer is.
#[derive(Clone)]
struct Tracked {
    inner: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl tower::Service<hyper::Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    // A named future, not a boxed one: this runs for every request of the API.
    type Future = Handling<tower::util::Oneshot<Router, hyper::Request<Incoming>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.activity.request_started();
        Handling {
            response: tower::ServiceExt::oneshot(self.inner.clone(), request),
            activity: self.activity.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being handled; the connection's activity learns when it is answered.
    struct Handling<F> {
        #[pin]
        response: F,
        activity: Arc<Activity>,
    }
}

impl<F: Future> Future for Handling<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx));
        this.activity.request_finished();
        Poll::Ready(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10,
    };

    #[test]
    fn a_connection_that_sends_nothing_is_closed_when_idle() {
        assert_eq!(check(&LIMITS, 59_999, 0, None, false), Ok(60_000));
        assert_eq!(check(&LIMITS, 60_000, 0, None, false), Err("idle_timeout"));
    }

    #[test]
    fn an_idle_connection_is_looked_at_again_within_a_header_timeout() {
        // A head may start right after this look; its deadline must not wait for idle.
        assert_eq!(check(&LIMITS, 1_000, 0, None, false), Ok(6_000));
    }

    #[test]
    fn a_head_that_does_not_complete_in_time_closes_the_connection_although_bytes_move() {
        // Bytes trickle in (last I/O recent) but the head began 5 s ago.
        assert_eq!(
            check(&LIMITS, 5_000, 4_900, Some(0), false),
            Err("header_timeout")
        );
        assert_eq!(check(&LIMITS, 4_000, 3_900, Some(0), false), Ok(5_000));
    }

    #[test]
    fn a_kept_alive_connection_may_wait_longer_than_the_header_timeout() {
        // The last response went out at 10 s; no byte of a new head since.
        assert_eq!(check(&LIMITS, 30_000, 10_000, None, false), Ok(35_000));
        assert_eq!(check(&LIMITS, 67_000, 10_000, None, false), Ok(70_000));
        assert_eq!(
            check(&LIMITS, 70_000, 10_000, None, false),
            Err("idle_timeout")
        );
    }

    #[test]
    fn a_request_being_handled_is_left_to_the_request_timeout() {
        assert!(check(&LIMITS, 500_000, 0, Some(0), true).is_ok());
    }
}

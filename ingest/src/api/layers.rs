//! The middleware every API request passes — metrics for all routes, authentication for
//! `/v1` — as plain tower services. `axum::middleware::from_fn` clones the route's boxed
//! service and boxes a future for every request; at thousands of events a second that
//! was a measurable share of ingest's CPU, and neither middleware needs it: the checks
//! are synchronous and the metrics are recorded when the response is ready.

use super::AppState;
use super::access;
use super::error::ApiError;
use super::throttle;
use crate::metrics::IngestMetrics;
use axum::extract::ConnectInfo;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use hookline_shared::metrics::status_class;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::{Layer, Service};

/// Counts requests and times them by route, method and status class.
#[derive(Debug, Clone)]
pub struct RecordMetrics {
    metrics: Arc<IngestMetrics>,
}

impl RecordMetrics {
    pub fn new(metrics: Arc<IngestMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RecordMetrics {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Recorded {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recorded<S> {
    inner: S,
    metrics: Arc<IngestMetrics>,
}

impl<S> Service<Request> for Recorded<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Recording<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Layers on a router wrap each route, so the matched path is known here.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        Recording {
            response: self.inner.call(request),
            route,
            method,
            started: Instant::now(),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    pub struct Recording<F> {
        #[pin]
        response: F,
        route: Option<MatchedPath>,
        method: Method,
        started: Instant,
        metrics: Arc<IngestMetrics>,
    }
}

impl<F> Future for Recording<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.response.poll(cx));
        let response = match &result {
            Ok(response) => response,
            Err(never) => match *never {},
        };
        let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let class = status_class(Some(response.status().as_u16()));
        this.metrics
            .http_requests
            .with_label_values(&[route, this.method.as_str(), class])
            .inc();
        this.metrics
            .http_duration
            .with_label_values(&[route, this.method.as_str()])
            .observe(this.started.elapsed().as_secs_f64());
        Poll::Ready(result)
    }
}

/// Authenticates and authorizes each `/v1` request (see [`access::authorize`]) and
/// leaves the granted scope in its extensions; refuses the others at once.
#[derive(Debug, Clone)]
pub struct Authenticate {
    state: AppState,
}

impl Authenticate {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for Authenticate {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    state: AppState,
}

type Checked = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for Authenticated<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Either<S::Future, Checked>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let client = client_of(&self.state, &request);
        if let Some(wait) = client.and_then(|ip| self.state.auth_failures.refused(ip)) {
            self.state
                .metrics
                .throttled
                .with_label_values(&["auth_failures"])
                .inc();
            let refusal = ApiError::throttled(
                "too_many_auth_failures",
                "too many requests without a valid token from this address",
                wait,
            );
            return Either::Left(ready(Ok(refusal.into_response())));
        }
        match access::authorize(&self.state, &request) {
            Ok(
                scope @ access::Scope::Tenant {
                    via: access::Credential::PortalLink,
                    ..
                },
            ) => {
                // A portal link minted before its tenant was deleted no longer works: a
                // read of Redis, for console sessions only.
                let issued_at = access::bearer(&request)
                    .and_then(access::portal_expiry)
                    .map(|expires| {
                        expires
                            - i64::try_from(self.state.settings.portal_link_ttl.as_secs())
                                .unwrap_or(i64::MAX)
                    });
                let access::Scope::Tenant { tenant, .. } = &scope else {
                    unreachable!("matched above")
                };
                let tenant = tenant.clone();
                request.extensions_mut().insert(scope);
                let state = self.state.clone();
                // The clone that was made ready is the one called (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Either::Right(Box::pin(async move {
                    let deleted = state.erasures.tenant_deleted_at(&tenant).await;
                    match (deleted, issued_at) {
                        (Ok(Some(deleted_ms)), Some(issued)) if deleted_ms / 1000 >= issued => {
                            Ok(ApiError::unauthorized().into_response())
                        }
                        (Err(error), _) => Ok(ApiError::from(error).into_response()),
                        _ => inner.call(request).await,
                    }
                })))
            }
            Ok(scope) => {
                request.extensions_mut().insert(scope);
                Either::Right(Either::Left(self.inner.call(request)))
            }
            Err(refusal) => {
                if let Some(ip) = client
                    && refusal.status() == StatusCode::UNAUTHORIZED
                {
                    self.state.auth_failures.record(ip);
                }
                Either::Left(ready(Ok(refusal.into_response())))
            }
        }
    }
}

/// The client's address, as far as the connection and trusted proxies tell it.
fn client_of(state: &AppState, request: &Request) -> Option<IpAddr> {
    let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
    let forwarded_for = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok());
    Some(throttle::client_address(
        peer.ip(),
        forwarded_for,
        &state.trusted_proxies,
    ))
}

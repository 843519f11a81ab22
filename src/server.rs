//! The two listeners: HTTPS (rustls, HTTP/1.1) for admission reviews, plain HTTP for health.
//! Readiness is true only once the caches are synced and a certificate is loaded, and turns false
//! as soon as shutdown begins, so the webhook's own endpoints drain before it stops answering.
//!
//! Both accept loops are our own (hyper's HTTP/1.1 connection under a watchdog) so that nothing a
//! client does can hold resources without bound: a cap on open connections (past it a new one is
//! closed at once), on concurrent requests (past it: 503, which the API server treats by the
//! webhook's failurePolicy), a TLS handshake timeout, a header-read timeout (slow-loris), a
//! body-read timeout, and an idle timeout longer than the API server's own idle-connection
//! timeout (90 s), so that it is the client, never us, that closes a pooled connection and no
//! request is lost in that race.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::admission::{Admission, Slot};
use crate::core::review::MAX_REVIEW_BYTES;
use crate::metrics::Metrics;
use crate::tls::ServerTls;
use crate::tls::client_auth::{self, Caller};

/// Readiness, shared between the health server and whoever knows.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one listener allows a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections; past it, a new connection is closed at once.
    pub max_connections: usize,
    /// Requests being answered at once; past it, 503 at once.
    pub max_requests: usize,
    /// From accept to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// From the first byte of a request to its last header byte.
    pub header_timeout: Duration,
    /// From the end of the headers to the last byte of the body.
    pub body_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Open connections from one source address (one attacker's pod cannot take them all).
    pub max_connections_per_source: usize,
    /// Bytes of request bodies beyond their first [`FREE_BODY_BYTES`], all requests together:
    /// past it, 503.
    pub body_budget: usize,
}

impl Limits {
    /// The admission listener: the API server opens a connection per concurrent request (HTTP/1.1)
    /// and holds DELETEs up to the hold budget, so connections are many and long.
    pub const WEBHOOK: Limits = Limits {
        max_connections: 1024,
        max_requests: 256,
        handshake_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_connections_per_source: 256,
        // What bodies may hold beyond their first FREE_BODY_BYTES, all together: an eighth of the
        // replica's memory limit (256 requests x 256 KiB free is another quarter at most).
        body_budget: 32 * 1024 * 1024,
    };
    /// The health listener: the kubelet's probes, one at a time.
    pub const HEALTH: Limits = Limits {
        max_connections: 32,
        max_requests: 16,
        handshake_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_connections_per_source: 16,
        body_budget: 64 * 1024,
    };
}

/// Counts of what the listeners refused or cut short, for logs and the metrics.
#[derive(Debug, Default)]
pub struct Refusals {
    pub connections_over_cap: AtomicU64,
    pub connections_over_source_cap: AtomicU64,
    pub bodies_over_budget: AtomicU64,
    pub requests_over_cap: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Connections served in mode `optional` without an allowed client certificate.
    pub unverified_callers: AtomicU64,
}

impl Refusals {
    /// Every count, named for the metrics' `what` label.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("connection_over_cap", n(&self.connections_over_cap)),
            (
                "connection_over_source_cap",
                n(&self.connections_over_source_cap),
            ),
            ("body_over_budget", n(&self.bodies_over_budget)),
            ("request_over_cap", n(&self.requests_over_cap)),
            ("handshake_failed", n(&self.handshakes_failed)),
            ("header_timeout", n(&self.header_timeouts)),
            ("idle_closed", n(&self.idle_closed)),
            ("unverified_caller", n(&self.unverified_callers)),
        ]
    }
}

fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// Whether the `n`th refusal of a kind is logged: the first ones, then ever more rarely, so a
/// flood cannot turn the log into a second flood.
fn worth_logging(n: u64) -> bool {
    n.is_power_of_two() || n.is_multiple_of(10_000)
}

/// Where a connection is, for its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No request in flight and no byte of a new one, since then.
    Idle { since: Instant },
    /// Bytes of a request head arrived since then; the request has not been dispatched.
    Head { since: Instant },
    /// This many requests are being answered.
    Busy { in_flight: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    HeaderTimeout,
    Idle,
}

/// The watchdog's rule: a head that takes too long, or a connection idle too long, is cut.
pub fn verdict(phase: Phase, now: Instant, limits: &Limits) -> Option<Cut> {
    match phase {
        Phase::Head { since } if now.duration_since(since) > limits.header_timeout => {
            Some(Cut::HeaderTimeout)
        }
        Phase::Idle { since } if now.duration_since(since) > limits.idle_timeout => Some(Cut::Idle),
        _ => None,
    }
}

/// A connection's phase, moved by its reads (bytes arrive) and its service (a request starts and
/// ends).
#[derive(Debug)]
struct Activity(Mutex<Phase>);

impl Activity {
    /// A new connection owes its first request head: a client that opens a connection and sends
    /// nothing is cut after the header timeout, not the idle timeout.
    fn new() -> Arc<Activity> {
        Arc::new(Activity(Mutex::new(Phase::Head {
            since: Instant::now(),
        })))
    }
    fn with<R>(&self, f: impl FnOnce(&mut Phase) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn bytes_read(&self) {
        self.with(|p| {
            if let Phase::Idle { .. } = p {
                *p = Phase::Head {
                    since: Instant::now(),
                }
            }
        })
    }
    fn begin(&self) {
        self.with(|p| {
            *p = match *p {
                Phase::Busy { in_flight } => Phase::Busy {
                    in_flight: in_flight + 1,
                },
                _ => Phase::Busy { in_flight: 1 },
            }
        })
    }
    fn end(&self) {
        self.with(|p| {
            *p = match *p {
                Phase::Busy { in_flight } if in_flight > 1 => Phase::Busy {
                    in_flight: in_flight - 1,
                },
                _ => Phase::Idle {
                    since: Instant::now(),
                },
            }
        })
    }
    fn phase(&self) -> Phase {
        self.with(|p| *p)
    }
}

/// The connection's stream, telling its [`Activity`] when bytes arrive.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What every connection of one listener shares.
#[derive(Clone)]
struct Shared {
    limits: Limits,
    requests: Arc<Semaphore>,
    /// Handed to every request, for reading its body.
    body: BodyLimits,
    refusals: Arc<Refusals>,
}

/// Serves HTTP/1.1 on one connection until it ends, the listener shuts down gracefully, or the
/// watchdog cuts it.
async fn serve_connection<S>(
    shared: Shared,
    watcher: Watcher,
    stream: S,
    router: Router,
    caller: Option<Caller>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Shared {
        limits,
        requests,
        body,
        refusals,
    } = shared;
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let (service_activity, service_refusals) = (activity.clone(), refusals.clone());
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let (router, activity, requests, refusals) = (
                router.clone(),
                service_activity.clone(),
                requests.clone(),
                service_refusals.clone(),
            );
            if let Some(c) = &caller {
                req.extensions_mut().insert(c.clone());
            }
            req.extensions_mut().insert(body.clone());
            async move {
                activity.begin();
                let response = match requests.try_acquire_owned() {
                    Ok(permit) => {
                        let timeout = crate::core::review::caller_timeout(req.uri().query());
                        req.extensions_mut().insert(Slot::new(permit, timeout));
                        router.oneshot(req.map(Body::new)).await
                    }
                    Err(_) => {
                        let n = bump(&refusals.requests_over_cap);
                        if worth_logging(n) {
                            tracing::warn!(total = n, "too many requests at once; answering 503");
                        }
                        Ok((StatusCode::SERVICE_UNAVAILABLE, "too many requests").into_response())
                    }
                };
                activity.end();
                response
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    let connection = watcher.watch(connection);
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut connection => return,
            _ = tick.tick() => match verdict(activity.phase(), Instant::now(), &limits) {
                None => {}
                Some(Cut::HeaderTimeout) => {
                    let n = bump(&refusals.header_timeouts);
                    tracing::debug!(total = n, "request head too slow; connection closed");
                    return;
                }
                Some(Cut::Idle) => {
                    bump(&refusals.idle_closed);
                    return;
                }
            },
        }
    }
}

/// Bytes of every request body that need no share of the body budget: far more than a real
/// AdmissionReview of a pod (a few KiB).
const FREE_BODY_BYTES: usize = 256 * 1024;

/// How a handler may read a body: by when, and from the listener's byte budget.
#[derive(Clone)]
struct BodyLimits {
    timeout: Duration,
    budget: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

impl BodyLimits {
    /// Limits for one request outside any listener: the webhook port's time, a budget of its own.
    fn alone() -> BodyLimits {
        BodyLimits {
            timeout: Limits::WEBHOOK.body_timeout,
            budget: Arc::new(Semaphore::new(Limits::WEBHOOK.body_budget)),
            refusals: Arc::default(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum BodyRefused {
    TooLarge,
    OverBudget,
    TooSlow,
    Broken,
}

impl IntoResponse for BodyRefused {
    fn into_response(self) -> Response {
        match self {
            BodyRefused::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("AdmissionReview larger than the {MAX_REVIEW_BYTES} bytes accepted"),
            )
                .into_response(),
            BodyRefused::OverBudget => {
                (StatusCode::SERVICE_UNAVAILABLE, "too many bodies at once").into_response()
            }
            BodyRefused::TooSlow => (StatusCode::REQUEST_TIMEOUT, "body too slow").into_response(),
            BodyRefused::Broken => (StatusCode::BAD_REQUEST, "body not read").into_response(),
        }
    }
}

/// Reads a body of at most `max` bytes, frame by frame, taking each frame's bytes from the
/// budget first (a declared Content-Length over `max` is refused before anything is read). The
/// bytes come back with their permits; dropping both gives the budget back.
async fn read_body(
    request: Request,
    max: usize,
    limits: &BodyLimits,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyRefused> {
    use http_body_util::BodyExt as _;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyRefused::TooLarge);
    }
    let mut body = request.into_body();
    let mut buf = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyRefused::Broken)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(BodyRefused::TooLarge);
            }
            // The first FREE_BODY_BYTES of every body are its own (requests are capped, so this is
            // bounded too); only what is beyond competes for the shared budget, so large bodies
            // cannot starve the API server's ordinary reviews.
            let beyond = (buf.len() + data.len()).saturating_sub(FREE_BODY_BYTES.max(buf.len()));
            if beyond > 0 {
                let n = u32::try_from(beyond).map_err(|_| BodyRefused::TooLarge)?;
                let permit = limits
                    .budget
                    .clone()
                    .try_acquire_many_owned(n)
                    .map_err(|_| BodyRefused::OverBudget)?;
                match &mut held {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => Err(BodyRefused::TooSlow),
        Ok(Err(e)) => {
            if e == BodyRefused::OverBudget {
                let n = bump(&limits.refusals.bodies_over_budget);
                if worth_logging(n) {
                    tracing::warn!(
                        total = n,
                        "request bodies over their memory budget; answering 503"
                    );
                }
            }
            Err(e)
        }
        Ok(Ok(())) => Ok((Bytes::from(buf), held)),
    }
}

/// Answers one AdmissionReview. `Server-Timing` carries how long the answer took here (parse,
/// decide, act), so benchmarks can tell the server's share from the network's.
async fn review(
    State(admission): State<Arc<Admission>>,
    caller: Option<Extension<Caller>>,
    slot: Option<Extension<Slot>>,
    limits: Option<Extension<BodyLimits>>,
    request: Request,
) -> Response {
    // Set by the accept loop; a request routed without it (the router driven in process) reads
    // its body under limits of its own.
    let limits = limits.map_or_else(BodyLimits::alone, |Extension(l)| l);
    let caller = caller
        .map(|Extension(c)| c)
        .unwrap_or(Caller::Unverified(client_auth::Unverified::NotAsked));
    let slot = slot.map(|Extension(s)| s).unwrap_or_default();
    // The API server's trace, continued by ours: only from a caller it could be (an unverified
    // client of the cluster CA, or one without a certificate where one is asked for, gets a
    // trace of its own, so it cannot steer sampling).
    let traceparent = match &caller {
        Caller::Verified { .. } | Caller::Unverified(client_auth::Unverified::NotAsked) => request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Caller::Unverified(_) => None,
    };
    let (body, budget) = match read_body(request, MAX_REVIEW_BYTES, &limits).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // The bytes go back to the budget now: serve parses them before its first await and drops
    // them then, so they are not held while it waits on the API or a hold.
    drop(budget);
    let started = Instant::now();
    let answer = admission
        .serve(body, &caller, slot, traceparent.as_deref())
        .await;
    let timing = format!("review;dur={:.3}", started.elapsed().as_secs_f64() * 1000.0);
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_REQUEST);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (
        status,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::HeaderName::from_static("server-timing"), timing),
        ],
        answer.body,
    )
        .into_response()
}

/// Routes for the admission server: the same handler on every path the configurations use.
pub fn webhook_router(admission: Arc<Admission>) -> Router {
    Router::new()
        .route("/", post(review))
        .route("/pods/delete", post(review))
        .route("/pods/eviction", post(review))
        .with_state(admission)
}

/// The health port: the kubelet's probes and Prometheus' scrape.
pub fn health_router(ready: Readiness, metrics: Metrics) -> Router {
    let scrape = get(move || {
        let metrics = metrics.clone();
        async move {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics.encode(),
            )
        }
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", scrape)
        .route(
            "/readyz",
            get(|State(r): State<Readiness>| async move {
                if r.get() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(ready)
}

/// Open connections per source address.
#[derive(Clone, Default)]
struct Sources(Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place in its source's count; leaving gives it back.
struct FromSource {
    sources: Sources,
    ip: std::net::IpAddr,
}

impl Sources {
    /// A place for one more connection from `ip`, unless it has `max` already.
    fn enter(&self, ip: std::net::IpAddr, max: usize) -> Option<FromSource> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(FromSource {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for FromSource {
    fn drop(&mut self) {
        let mut map = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts until `stop` turns true, then lets the open connections finish for up to `drain`.
/// `handle` turns an accepted stream into the task that serves it.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    refusals: Arc<Refusals>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, Shared, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Shared {
        limits,
        requests: Arc::new(Semaphore::new(limits.max_requests)),
        body: BodyLimits {
            timeout: limits.body_timeout,
            budget: Arc::new(Semaphore::new(limits.body_budget)),
            refusals: refusals.clone(),
        },
        refusals: refusals.clone(),
    };
    let sources = Sources::default();
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(from_source) = sources.enter(peer.ip(), limits.max_connections_per_source) else {
            let n = bump(&refusals.connections_over_source_cap);
            if worth_logging(n) {
                tracing::warn!(%peer, total = n, "too many open connections from one address; closing a new one");
            }
            drop(stream);
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            let n = bump(&refusals.connections_over_cap);
            if worth_logging(n) {
                tracing::warn!(total = n, "too many open connections; closing a new one");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = handle(stream, peer, shared.clone(), graceful.watcher());
        tokio::spawn(async move {
            task.await;
            drop(permit);
            drop(from_source);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

/// Serves admission reviews over TLS on `listener` until `stop`, then gives held requests up to
/// `drain` to be answered.
pub async fn serve_webhook(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    router: Router,
    refusals: Arc<Refusals>,
    stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let limits = Limits::WEBHOOK;
    accept_loop(
        listener,
        limits,
        refusals.clone(),
        stop,
        drain,
        move |stream, peer, shared, watcher| {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let (tls, router, refusals) = (tls.clone(), router.clone(), refusals.clone());
            async move {
                let stream =
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            let n = bump(&refusals.handshakes_failed);
                            tracing::debug!(error = %e, total = n, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            bump(&refusals.handshakes_failed);
                            return;
                        }
                    };
                let caller = client_auth::classify(
                    tls.mode(),
                    stream.get_ref().1.peer_certificates(),
                    tls.allowed(),
                );
                if let Caller::Unverified(why) = &caller
                    && *why != client_auth::Unverified::NotAsked
                {
                    let n = bump(&refusals.unverified_callers);
                    if worth_logging(n) {
                        tracing::warn!(%peer, %caller, total = n, "unverified caller: served, but nothing in its requests is trusted");
                    }
                }
                serve_connection(shared, watcher, stream, router, Some(caller)).await;
            }
        },
    )
    .await
}

/// Serves /healthz, /readyz and /metrics on plain HTTP until `stop`.
pub async fn serve_health(
    listener: TcpListener,
    ready: Readiness,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) {
    let router = health_router(ready, metrics);
    accept_loop(
        listener,
        Limits::HEALTH,
        Arc::new(Refusals::default()),
        stop,
        Duration::from_secs(1),
        move |stream, _peer, shared, watcher| {
            serve_connection(shared, watcher, stream, router.clone(), None)
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_cuts_slow_heads_and_idle_connections_only() {
        let l = Limits::WEBHOOK;
        let t0 = Instant::now();
        let later = |d: Duration| t0 + d;
        let head = Phase::Head { since: t0 };
        let idle = Phase::Idle { since: t0 };
        assert_eq!(verdict(head, later(l.header_timeout), &l), None);
        assert_eq!(
            verdict(head, later(l.header_timeout + Duration::from_millis(1)), &l),
            Some(Cut::HeaderTimeout)
        );
        assert_eq!(
            verdict(idle, later(l.header_timeout * 2), &l),
            None,
            "idle is not slow"
        );
        assert_eq!(
            verdict(idle, later(l.idle_timeout + Duration::from_millis(1)), &l),
            Some(Cut::Idle)
        );
        assert_eq!(
            verdict(
                Phase::Busy { in_flight: 1 },
                later(Duration::from_secs(3600)),
                &l
            ),
            None,
            "a held request is never cut by the watchdog"
        );
        assert!(
            l.idle_timeout > Duration::from_secs(90),
            "the API server's pool (90 s idle) must close first"
        );
    }

    #[test]
    fn one_source_gets_at_most_its_share_of_connections() {
        let sources = Sources::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<FromSource> = (0..3).map(|_| sources.enter(a, 3).unwrap()).collect();
        assert!(
            sources.enter(a, 3).is_none(),
            "a fourth from the same address"
        );
        assert!(
            sources.enter(b, 3).is_some(),
            "another address is not affected"
        );
        drop(held);
        assert!(
            sources.enter(a, 3).is_some(),
            "leaving gives the places back"
        );
        assert!(
            sources.0.lock().unwrap().get(&b).is_none(),
            "no entry is kept for an address with no connection"
        );
    }

    #[test]
    fn a_connection_moves_idle_head_busy_idle() {
        let a = Activity::new();
        assert!(
            matches!(a.phase(), Phase::Head { .. }),
            "a new connection owes its first request within the header timeout"
        );
        a.begin();
        a.end();
        assert!(matches!(a.phase(), Phase::Idle { .. }));
        a.bytes_read();
        assert!(matches!(a.phase(), Phase::Head { .. }));
        a.begin();
        a.bytes_read();
        a.begin();
        assert_eq!(a.phase(), Phase::Busy { in_flight: 2 });
        a.end();
        assert_eq!(a.phase(), Phase::Busy { in_flight: 1 });
        a.end();
        assert!(matches!(a.phase(), Phase::Idle { .. }));
    }
}

//! The two listeners: HTTPS (rustls, HTTP/1.1) for admission reviews, plain HTTP for health.
//! Readiness is true only once the caches are synced and a certificate is loaded, and turns false
//! as soon as shutdown begins, so the webhook's own endpoints drain before it stops answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::admission::Admission;
use crate::review::MAX_REVIEW_BYTES;

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

/// Answers one AdmissionReview. `Server-Timing` carries how long the answer took here (parse,
/// decide, act), so benchmarks can tell the server's share from the network's.
async fn review(State(admission): State<Arc<Admission>>, body: Bytes) -> impl IntoResponse {
    let started = std::time::Instant::now();
    let answer = admission.serve(&body).await;
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
}

/// Routes for the admission server: the same handler on every path the configurations use.
pub fn webhook_router(admission: Arc<Admission>) -> Router {
    Router::new()
        .route("/", post(review))
        .route("/pods/delete", post(review))
        .route("/pods/eviction", post(review))
        // One byte over the limit lets the parser report the size itself.
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES + 1))
        .with_state(admission)
}

pub fn health_router(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
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

pub async fn serve_health(addr: SocketAddr, ready: Readiness) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, health_router(ready)).await
}

//! `/ready`, `/health` and `/metrics` on a small HTTP port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Lifecycle flags shared by the feeder (ready), the server (lameduck) and HTTP.
#[derive(Default)]
pub struct Status {
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Status {
    /// Called once the initial Service and EndpointSlice lists are in the snapshot: before
    /// that, answers would be NXDOMAIN for services that exist.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_stopping()
    }

    /// Lameduck: still answering, but telling health checks to send traffic elsewhere.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

pub fn router(status: Arc<Status>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { status, metrics })
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if s.status.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    if s.status.is_stopping() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render() + &component::process::metrics(),
    )
}

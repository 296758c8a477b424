use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::{Liveness, Metrics};

/// What the HTTP endpoints report.
pub struct Probes {
    /// Set once the operator can serve: its API server answered and it leads
    /// or stands by.
    pub ready: AtomicBool,
    /// What the controller reports as it reconciles (`/healthz`).
    pub liveness: Arc<Liveness>,
    /// `/healthz` fails once the controller loop has made no progress for
    /// this long (see [`Liveness`]).
    pub stall_timeout: Duration,
}

impl Probes {
    pub fn new(liveness: Arc<Liveness>, stall_timeout: Duration) -> Self {
        Self {
            ready: AtomicBool::new(false),
            liveness,
            stall_timeout,
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Probes>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text).with_state(metrics))
        .route("/healthz", get(healthz).with_state(health.clone()))
        .route("/readyz", get(readyz).with_state(health));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// 200 while the controller loop makes progress (or has nothing to do, or
/// stands by); 503 with the reason once it is stuck, so that the liveness
/// probe restarts the process.
async fn healthz(State(health): State<Arc<Probes>>) -> impl IntoResponse {
    match health.liveness.check(health.stall_timeout) {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => {
            tracing::error!(reason = %why, "controller stuck; /healthz fails");
            (StatusCode::SERVICE_UNAVAILABLE, format!("stuck: {why}\n"))
        }
    }
}

async fn readyz(State(health): State<Arc<Probes>>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

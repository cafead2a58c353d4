//! Admin HTTP on its own port: `/healthz` (alive), `/readyz` (200 only when NATS is
//! connected, every stream and bucket exists and every component started; 503 with the
//! reason otherwise) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// The readiness latch `/readyz` reports, set by the supervisor and its monitor.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<RwLock<Result<(), String>>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(RwLock::new(Err("starting".into()))))
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.set(Ok(()));
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(Err(reason.into()));
    }

    fn set(&self, state: Result<(), String>) {
        if let Ok(mut guard) = self.0.write() {
            if *guard != state {
                match &state {
                    Ok(()) => tracing::info!("ready"),
                    Err(reason) => tracing::info!(%reason, "not ready"),
                }
            }
            *guard = state;
        }
    }

    /// `Ok` when ready, else the reason.
    pub fn get(&self) -> Result<(), String> {
        self.0
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|_| Err("readiness lock poisoned".into()))
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// Binds the admin port (a busy port is one clear error) and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: PrometheusHandle,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::unavailable(format!(
                "admin address {addr} is already in use: stop what holds it or choose another with --admin"
            ))
        } else {
            Error::unavailable(format!("cannot listen on {addr}: {e}"))
        }
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("admin local address: {e}")))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics });
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(err) = server.await {
            tracing::error!(%err, "admin server failed");
        }
    });
    Ok((bound, task))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.get() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    crate::observability::metrics::record_process();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

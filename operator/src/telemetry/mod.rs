//! Observability plumbing kept out of the reconcile logic: logs, metrics,
//! health endpoints, request counting.
mod liveness;
mod metrics;
mod request_counter;
mod server;

pub use liveness::{Liveness, Reconcile};
pub use metrics::{Metrics, ReconcileResult};
pub use request_counter::{RequestCount, RequestCounter};
pub use server::{Probes, serve};

/// Installs the global tracing subscriber: human-readable, or JSON lines.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colours only for a person at a terminal, never in a pod's log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

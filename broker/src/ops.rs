//! The operational listener: an unauthenticated health probe for orchestrators and the
//! Prometheus metrics. Bound to loopback by default; it never serves participant data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::listener::AcceptLimits;

/// Whether the broker accepts participant calls, as the probe reports it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the broker ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the broker is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves `/healthz` (alive), `/readyz` (accepting calls, with the store's health) and
/// `/metrics` until `shutdown` resolves, within [`AcceptLimits::ops_max_connections`] and
/// [`AcceptLimits::ops_header_timeout`] (`crate::http_listener`).
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    store: Arc<dyn crate::store::Store>,
    limits: AcceptLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|| async { crate::metrics::handle().map_or(String::new(), |h| h.render()) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.get();
                let store = store.clone();
                async move {
                    // The store's line too: reachable, on the primary, its standby in sync.
                    let health = store.health().await;
                    match ready && health.ok {
                        true => (StatusCode::OK, format!("ready\n{}\n", health.report)),
                        false => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready\n{}\n", health.report),
                        ),
                    }
                }
            }),
        );
    crate::http_listener::serve(
        crate::http_listener::HttpLimits {
            proxies: Default::default(),
            name: "ops",
            max_connections: limits.ops_max_connections,
            // Loopback by default: one source for every client; the total bound is what counts.
            max_connections_per_source: usize::MAX,
            header_timeout: limits.ops_header_timeout,
            // A probe's answer is small: a client that takes none of it for as long as it may
            // take to send its headers is gone.
            write_timeout: limits.ops_header_timeout,
            gauge: |n| crate::metrics::connections_open("ops", "open", n),
        },
        listener,
        None,
        app,
        shutdown,
    )
    .await
}

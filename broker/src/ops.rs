//! The operational listener: an unauthenticated health probe for orchestrators and the
//! Prometheus metrics. Bound to loopback by default; it never serves participant data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::listener::{AcceptLimits, accept_failed, refused};
use crate::shed::{ShedTable, Source};

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
/// `/metrics` until `shutdown` resolves.
///
/// Its own accept loop, not `axum::serve`, for two bounds: at most
/// [`AcceptLimits::ops_max_connections`] connections (over it, the oldest one that is not being
/// answered is closed, so a new probe always gets through), and
/// [`AcceptLimits::ops_header_timeout`] to send request headers (slowloris; an idle keep-alive
/// connection is closed after it too).
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
    let open = ShedTable::new(
        limits.ops_max_connections,
        // Loopback by default: one source for every client; the total bound is what counts.
        usize::MAX,
        |n| crate::metrics::connections_open("ops", "open", n),
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.ops_header_timeout);
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed("ops", &e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let admitted = open.admit(Source::of(remote.ip()));
        for _ in &admitted.shed {
            refused("ops", "ops_total", None);
        }
        let Some(mut ticket) = admitted.ticket else {
            refused("ops", "ops_busy", Some(remote));
            continue;
        };
        let busy = ticket.busy();
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| {
            // Not shed while answering, until the answer's body is sent: only connections
            // still sending headers, or idle between requests, are.
            let answering = Answering::new(busy.clone());
            let answer = app.clone().oneshot(request);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    axum::body::Body::new(body.map_frame(move |frame| {
                        let _answering = &answering;
                        frame
                    }))
                }))
            }
        });
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served
                        && e.is_timeout()
                    {
                        refused("ops", "header_timeout", Some(remote));
                    }
                }
                () = ticket.shed() => {}
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
    }
    let _ = stop.send(true);
    Ok(())
}

/// Marks a connection busy while its request is answered.
struct Answering(Arc<AtomicBool>);

impl Answering {
    fn new(busy: Arc<AtomicBool>) -> Answering {
        busy.store(true, Ordering::Release);
        Answering(busy)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

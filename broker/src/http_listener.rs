//! The accept loop of the HTTP listeners (the operational listener, the web pages, the latter
//! over TLS when given a certificate): its own, not `axum::serve`, for two bounds. At most [`HttpLimits::max_connections`] connections
//! (and per source address): over it, the oldest one that is not being answered is closed, so
//! a new client always gets through; [`HttpLimits::header_timeout`] to send request headers
//! (slowloris; an idle keep-alive connection is closed after it too); and
//! [`HttpLimits::write_timeout`] for a client to take any of its answer: a connection is busy
//! while answered, and one that pipelines requests and never reads would otherwise stay busy,
//! never shed, for as long as it likes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::listener::{accept_failed, refused};
use crate::shed::{ShedTable, Source};

/// The bounds of one HTTP listener.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// The listener's name in metrics and logs (`ops`, `web`).
    pub name: &'static str,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one source (an IPv4 address, an IPv6 /64).
    pub max_connections_per_source: usize,
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// Longest wait for the client to take any byte of an answer (or of the TLS handshake):
    /// the connection is then closed.
    pub write_timeout: Duration,
    /// Publishes the number of open connections (its metric).
    pub gauge: fn(usize),
    /// Reverse proxies, each carrying many people's connections: the per-source cap does not
    /// apply to them (the total does).
    pub proxies: crate::forwarded::TrustedProxies,
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; connections then
/// finish their request (5 s at most), and it returns once they have: what a page in flight
/// records lands before the broker records its stop and closes its store. With `tls`, each connection first completes a TLS
/// handshake within the header timeout (a client that never finishes it holds its slot no
/// longer than one that never sends its headers).
pub async fn serve(
    limits: HttpLimits,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let name = limits.name;
    let open = ShedTable::new(
        limits.max_connections,
        limits.max_connections_per_source,
        limits.gauge,
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(name, &e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let proxy = limits.proxies.contains(remote.ip());
        let admitted = open.admit(Source::of(remote.ip()), !proxy);
        for _ in &admitted.shed {
            refused(name, "http_total", None);
        }
        let Some(mut ticket) = admitted.ticket else {
            refused(name, "http_busy", Some(remote));
            continue;
        };
        let busy = ticket.busy();
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            // Not shed while answering, until the answer's body is sent: only connections
            // still sending headers, or idle between requests, are.
            let answering = Answering::new(busy.clone());
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
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
        let http = http.clone();
        let mut stopping = stopping.clone();
        let tls = tls.clone();
        let header_timeout = limits.header_timeout;
        let mut tcp = tokio_io_timeout::TimeoutStream::new(tcp);
        tcp.set_write_timeout(Some(limits.write_timeout));
        let tcp = Box::pin(tcp);
        connections.spawn(async move {
            match tls {
                None => drive(http, tcp, service, ticket, stopping, name, remote).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        done = tokio::time::timeout(header_timeout, acceptor.accept(tcp)) => done,
                        () = ticket.shed() => return,
                        // Stopping: no request started on it yet, nothing to finish.
                        _ = stopping.wait_for(|stop| *stop) => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            drive(http, stream, service, ticket, stopping, name, remote).await;
                        }
                        Ok(Err(_)) => refused(name, "tls_handshake", Some(remote)),
                        Err(_) => refused(name, "handshake_timeout", Some(remote)),
                    }
                }
            }
        });
    }
    // Closed now, not once the connections are done: a new client is refused at once (and
    // its balancer tries another broker) rather than left in the backlog through the drain.
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection over `io` until it ends, is shed, or the listener stops.
async fn drive<IO, S>(
    http: hyper::server::conn::http1::Builder,
    io: IO,
    service: S,
    mut ticket: crate::shed::Ticket,
    mut stopping: watch::Receiver<bool>,
    name: &'static str,
    remote: std::net::SocketAddr,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                if e.is_timeout() {
                    refused(name, "header_timeout", Some(remote));
                } else if write_timed_out(&e) {
                    refused(name, "write_timeout", Some(remote));
                }
            }
        }
        () = ticket.shed() => {}
        () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}

/// Whether hyper gave up on a connection because a write made no progress for
/// [`HttpLimits::write_timeout`] (the error `tokio_io_timeout` returns, as hyper's source).
fn write_timed_out(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    false
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

//! Counts every gRPC call and its latency by method, for the Prometheus endpoint. Method labels
//! are bounded: methods the broker serves; any other path (one that the router answers with
//! UNIMPLEMENTED, or that is not shaped as a method of its services) is `other`. Otherwise a
//! participant could add a series per made-up method name.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

/// Wraps the gRPC routes with [`Observe`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

/// The method's label: `Service/Method` of the broker's services, or `other`.
fn method_label(path: &str) -> String {
    let known = ["/unefois.v1.", "/grpc.health.v1.", "/grpc.reflection.v1."];
    let bounded = path.len() <= 96
        && known.iter().any(|p| path.starts_with(p))
        && path[1..].bytes().filter(|b| *b == b'/').count() == 1
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._".contains(&b));
    if bounded {
        path.trim_start_matches('/').to_string()
    } else {
        "other".to_string()
    }
}

/// Whether the router answered that no service serves this path: gRPC's UNIMPLEMENTED, in a
/// trailers-only response (the broker's own methods never answer it).
fn unimplemented<RB>(response: &http::Response<RB>) -> bool {
    response.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(b"12")
}

impl<S, B, RB> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            let method = match &response {
                Ok(response) if unimplemented(response) => "other",
                _ => &method,
            };
            crate::metrics::grpc_request(method, started.elapsed().as_secs_f64());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(
            method_label("/unefois.v1.Exchange/Fetch"),
            "unefois.v1.Exchange/Fetch"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/unefois.v1.Exchange/Fetch/extra"), "other");
        assert_eq!(method_label("/attacker.Random/abc123"), "other");
        assert_eq!(
            method_label(&format!("/unefois.v1.X/{}", "a".repeat(200))),
            "other"
        );
    }
}

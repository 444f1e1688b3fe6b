//! Counts every gRPC call and its latency by method, for the Prometheus endpoint. Method labels
//! are bounded: the methods the broker's services declare (their descriptors); any other path
//! is `other`, even one shaped as a method of a service the broker serves, which the service's
//! authentication refuses before the router could answer UNIMPLEMENTED. Otherwise a participant
//! could add a series per made-up method name.

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

/// Every `/package.Service/Method` the broker's services declare: Une Fois's, health's and
/// reflection's.
static METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message as _;
        let mut methods = std::collections::HashSet::new();
        for set in [
            unefois_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(files) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &files.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        methods
    });

/// The method's label: `Service/Method` of the broker's services, or `other`.
fn method_label(path: &str) -> String {
    if METHODS.contains(path) {
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
        // Shaped as a method of a service served, but none it declares.
        assert_eq!(method_label("/unefois.v1.Exchange/ProbeA1"), "other");
        assert_eq!(
            method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(method_label("/attacker.Random/abc123"), "other");
        assert_eq!(
            method_label(&format!("/unefois.v1.X/{}", "a".repeat(200))),
            "other"
        );
    }
}

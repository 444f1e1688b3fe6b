//! Bounds on what a participant may send: an oversized request is refused with
//! RESOURCE_EXHAUSTED and the reason REQUEST_TOO_LARGE, before it is decoded.
//!
//! tonic refuses a message above `max_decoding_message_size` with OUT_OF_RANGE and no reason,
//! and a message it cannot decode with INTERNAL; this layer turns those answers into the
//! statuses DESIGN.md lists (RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE, INVALID_ARGUMENT). No
//! handler of the broker answers OUT_OF_RANGE itself, nor INTERNAL with tonic's decode message,
//! so the rewrite cannot hide another error.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::grpc::status::status;

/// How tonic's codec begins the message of a request it cannot decode.
const UNDECODABLE: &str = "failed to decode Protobuf message";

/// Default largest request message, in bytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Wraps the gRPC routes with [`RequestLimit`].
#[derive(Clone, Copy, Debug)]
pub struct RequestLimitLayer {
    /// The limit that services decode with.
    pub limit: usize,
}

impl<S> Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> RequestLimit<S> {
        RequestLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct RequestLimit<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<http::Request<B>> for RequestLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let out_of_range = response
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"11");
            if out_of_range {
                return Ok(status(ApiError::RequestTooLarge { limit }).into_http());
            }
            // tonic answers a message that is not valid protobuf (bad UTF-8, wrong wire type,
            // truncated field) with INTERNAL and no reason: it is the caller's error.
            if response
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"13")
                && let Some(internal) = Status::from_header_map(response.headers())
                && let Some(detail) = internal.message().strip_prefix(UNDECODABLE)
            {
                let refusal = ApiError::invalid(
                    "request",
                    format!("not a valid protobuf message of this method{detail}"),
                );
                return Ok(status(refusal).into_http());
            }
            Ok(response)
        })
    }
}

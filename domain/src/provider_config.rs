//! How the registry declares a provider's adapter, as data: the out-of-process gRPC provider's
//! endpoint and credentials (`provider_client` connects to it), and the limits that isolate
//! each type's provider (`resilience` enforces them). Plain configuration, so that the
//! registry model depends on no network code.

use std::path::PathBuf;
use std::time::Duration;

/// Default [`GrpcProviderConfig::timeout_ms`].
pub const DEFAULT_GRPC_TIMEOUT_MS: u64 = 2000;

/// How the broker reaches an out-of-process gRPC provider (declared in the registry).
///
/// Each call carries the subject, the attestation type, the requested claims, the consumer,
/// the purpose, the legal basis and the broker's request id (`ProvideRequest`).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcProviderConfig {
    /// `https://host:port`, or `http://host:port` (no TLS: only with `allow_plain_http`, which
    /// accepts any host). No path, no query.
    pub endpoint: String,
    /// PEM file of the CA certificates trusted for the provider's server certificate
    /// (required for `https://`; no system roots are used).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain the broker presents to the provider (mTLS; required for
    /// `https://`, with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The name checked in the provider's certificate, when it is not the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Time allowed to one call, in milliseconds; the request's deadline bounds it anyway.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Whether an `http://` endpoint is accepted (checked when the registry loads): the
    /// subject's id and the claims then travel in clear.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Calls per second to this provider, enforced by the broker and shared by every type of
    /// the provider participant (which must then all declare the same limit).
    #[serde(default)]
    pub rate_limit: Option<unefois_adapters::ProviderRateLimit>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_GRPC_TIMEOUT_MS
}

/// Limits of one provider's adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResilienceConfig {
    /// Calls in flight at once; more wait (within their deadline).
    pub max_concurrency: usize,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe.
    pub open_for: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            max_concurrency: 64,
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

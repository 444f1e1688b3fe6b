//! The `grpc` adapter: the broker is a client of an out-of-process provider that implements
//! the `unefois.v1.Provider` service (proto/unefois/v1/provider.proto), in any language.
//!
//! It lives in the broker crate, not in `unefois-adapters`, because that crate does not speak
//! protobuf.
//!
//! The registry declares the provider's `endpoint` (`https://host:port`, or `http://host:port`
//! for a provider on the same host, with `allow_plain_http = true`), the CA trusted for it, the broker's client certificate
//! and key (mTLS), an optional TLS name override and a timeout. The adapter keeps a few HTTP/2
//! connections to the provider ([`provider_connections`]), used in turn: one connection is
//! one task on each side, and it capped a many-core broker (BENCHMARKS.md, "Scaling over
//! cores"). Each is connected lazily, at its first call, and reconnects by itself after it is
//! lost (an HTTP/2 GOAWAY from a proxy, a restarted provider). A call that fails on the
//! connection itself has that connection replaced by a fresh one, and is tried again on the
//! next connection, at most once per connection plus once (a GOAWAY may close them all at
//! once), while time remains before the request's deadline.
//!
//! Status mapping: NOT_FOUND → [`AdapterError::NotFound`]; UNAVAILABLE and RESOURCE_EXHAUSTED
//! → [`AdapterError::Unavailable`], with the delay of a `google.rpc.RetryInfo` detail (the
//! broker then holds every call to the provider until it has passed: provider_gate.rs);
//! DEADLINE_EXCEEDED and CANCELLED → [`AdapterError::DeadlineExceeded`] once the request's
//! deadline has passed (before it, only the adapter's own `timeout_ms` ran out: the provider is
//! slow, [`AdapterError::Unavailable`]); UNAUTHENTICATED and PERMISSION_DENIED →
//! [`AdapterError::AuthFailed`]; any other status, and claims that do not fit the
//! schema or were not requested → [`AdapterError::InvalidResponse`].
//!
//! Proof of origin: with the provider's keys (`with_origin`), each call carries a fresh
//! challenge (`origin_nonce`, `origin_subject_key`) and the provider's signed statement
//! (`ProvideResponse.origin`) must verify and state exactly the claims answered
//! (`unefois_adapters::origin`); a missing one is refused when the registry requires it.
//!
//! Nothing here logs or reports a subject, a claim value, or the message of a provider's status
//! (a provider may echo the subject there): only the attestation type, the status code, the
//! attempts and the latency.

use std::fmt;
use std::fs;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;
use unefois_adapters::origin::{Challenge, Expected, OriginPolicy};
use unefois_adapters::{
    Adapter, AdapterError, AdapterRequest, Answer, Attempt, ClaimSpec, ClaimType, ClaimValue,
    Claims, LegalBasis, Origin, check_claims, check_request, quote,
};
use unefois_proto::v1 as pb;
use unefois_proto::v1::provider_client::ProviderClient;

use crate::gathered_writes::GatheredWrites;
use crate::provider_config::GrpcProviderConfig;

/// Most HTTP/2 connections an adapter keeps to its provider.
pub const MAX_PROVIDER_CONNECTIONS: usize = 8;

/// How many HTTP/2 connections an adapter keeps to its provider: one per CPU the broker may
/// run on, at most [`MAX_PROVIDER_CONNECTIONS`]. A connection's framing and TLS run in one
/// task, on one core at a time, so a single connection caps the calls that many cores can make.
pub fn provider_connections() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_PROVIDER_CONNECTIONS)
}

/// Largest `ProvideResponse` accepted from a provider, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a [`GrpcProviderConfig`] cannot be used. Names the attestation type and the
/// configuration field at fault; never quotes a key.
#[derive(Debug, thiserror::Error)]
#[error("grpc adapter for {attestation_type}: {field}: {reason}")]
pub struct GrpcConfigError {
    /// The attestation type, quoted.
    pub attestation_type: String,
    /// The field at fault, e.g. `endpoint`, `ca_file`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// One of an adapter's connections to its provider: a channel opened lazily at the first call
/// that needs it (creating one needs the Tokio runtime), and again after a call failed on it.
#[derive(Default)]
struct Connection {
    channel: Option<Channel>,
    /// How many channels this connection has had: tells a failed call's channel from its
    /// replacement.
    opened: u64,
}

/// The connection a call used: its place in turn, and which of its channels.
#[derive(Clone, Copy)]
struct Turn {
    index: usize,
    opened: u64,
}

/// The `grpc` adapter for one attestation type.
///
/// `Debug` shows the type, the endpoint and the timeout.
pub struct GrpcProviderAdapter {
    attestation_type: String,
    schema: Vec<ClaimSpec>,
    endpoint_text: String,
    endpoint: Endpoint,
    timeout: Duration,
    /// The connections, used in turn.
    channels: Box<[Mutex<Connection>]>,
    /// The next connection to use.
    next: AtomicUsize,
    /// The provider's keys, when its answers are signed.
    origin: Option<OriginPolicy>,
}

impl fmt::Debug for GrpcProviderAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcProviderAdapter")
            .field("attestation_type", &self.attestation_type)
            .field("endpoint", &self.endpoint_text)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl GrpcProviderAdapter {
    /// Validates `config` for `attestation_type` and builds the adapter (nothing is connected
    /// yet): the endpoint is `http://` or `https://` with a host and a port and nothing after;
    /// an `https://` endpoint has a CA file and a client certificate and key, all readable and
    /// well-formed PEM; an `http://` endpoint has no TLS setting; the timeout is not zero.
    pub fn new(
        attestation_type: &str,
        schema: &[ClaimSpec],
        config: &GrpcProviderConfig,
    ) -> Result<GrpcProviderAdapter, GrpcConfigError> {
        let err = |field: &str, reason: String| GrpcConfigError {
            attestation_type: quote(attestation_type),
            field: field.to_string(),
            reason,
        };

        let uri: http::Uri = config
            .endpoint
            .parse()
            .map_err(|e| err("endpoint", format!("not a URI: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(err(
                    "endpoint",
                    "must start with https:// or http://".into(),
                ));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(err("endpoint", "has no host".into()));
        };
        if authority.host().is_empty() {
            return Err(err("endpoint", "has no host".into()));
        }
        if authority.as_str().contains('@') {
            return Err(err("endpoint", "must not carry user information".into()));
        }
        if authority.port_u16().is_none() {
            return Err(err("endpoint", "must name a port (host:port)".into()));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(err(
                "endpoint",
                "must be scheme://host:port, without a path or a query".into(),
            ));
        }
        if config.timeout_ms == 0 {
            return Err(err("timeout_ms", "must be greater than 0".into()));
        }
        let timeout = Duration::from_millis(config.timeout_ms);

        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| err("endpoint", format!("unusable endpoint: {e}")))?
            .connect_timeout(timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));

        if https {
            let Some(ca_path) = &config.ca_file else {
                return Err(err(
                    "ca_file",
                    "required for an https:// endpoint (no system roots are trusted)".into(),
                ));
            };
            let ca_pem = read_certificates_pem(ca_path).map_err(|why| err("ca_file", why))?;
            let identity = match (&config.client_cert_file, &config.client_key_file) {
                (Some(cert_path), Some(key_path)) => {
                    let cert_pem = read_certificates_pem(cert_path)
                        .map_err(|why| err("client_cert_file", why))?;
                    let key_pem =
                        read_key_pem(key_path).map_err(|why| err("client_key_file", why))?;
                    Identity::from_pem(cert_pem, key_pem)
                }
                (None, _) => {
                    return Err(err(
                        "client_cert_file",
                        "required for an https:// endpoint (the broker authenticates with mTLS)"
                            .into(),
                    ));
                }
                (Some(_), None) => {
                    return Err(err(
                        "client_key_file",
                        "required with client_cert_file".into(),
                    ));
                }
            };
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .identity(identity);
            if let Some(name) = &config.server_name {
                if name.is_empty()
                    || name.len() > 253
                    || name.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(err("server_name", "not a valid TLS server name".into()));
                }
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| err("ca_file", format!("TLS configuration: {e}")))?;
        } else {
            for (field, set) in [
                ("ca_file", config.ca_file.is_some()),
                ("client_cert_file", config.client_cert_file.is_some()),
                ("client_key_file", config.client_key_file.is_some()),
                ("server_name", config.server_name.is_some()),
            ] {
                if set {
                    return Err(err(
                        field,
                        "only for an https:// endpoint (this one is http://)".into(),
                    ));
                }
            }
        }

        Ok(GrpcProviderAdapter {
            attestation_type: attestation_type.to_string(),
            schema: schema.to_vec(),
            endpoint_text: format!("{}://{}", uri.scheme_str().unwrap_or("?"), authority),
            endpoint,
            timeout,
            channels: (0..provider_connections())
                .map(|_| Mutex::default())
                .collect(),
            next: AtomicUsize::new(0),
            origin: None,
        })
    }

    /// Checks the provider's signed statements with `policy` (its keys from the registry): each
    /// call then carries a fresh challenge, and an answer whose statement fails, or is missing
    /// when the policy requires one, is an invalid response (docs/adapters/origin.md).
    pub fn with_origin(mut self, policy: OriginPolicy) -> GrpcProviderAdapter {
        self.origin = Some(policy);
        self
    }

    /// A client on the next connection in turn, and which connection that is.
    fn client(&self) -> (Turn, ProviderClient<Channel>) {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        let mut connection = self.channels[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let channel = match &connection.channel {
            Some(channel) => channel.clone(),
            None => {
                let channel = self
                    .endpoint
                    .connect_with_connector_lazy(GatheringConnector);
                connection.channel = Some(channel.clone());
                connection.opened += 1;
                channel
            }
        };
        let turn = Turn {
            index,
            opened: connection.opened,
        };
        let client = ProviderClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        (turn, client)
    }

    /// Forgets the channel a call failed on (unless another failed call already did): the
    /// next call in its turn opens a fresh connection. tonic's channel would reconnect by
    /// itself, but only once it has noticed the closed connection, and a call made before
    /// that is cancelled.
    fn forget(&self, turn: Turn) {
        let mut connection = self.channels[turn.index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if connection.opened == turn.opened {
            connection.channel = None;
        }
    }

    /// One call, bounded by `timeout_ms` and the request's deadline.
    async fn attempt(&self, request: &AdapterRequest) -> Attempt {
        let now = Instant::now();
        if now >= request.deadline {
            return Attempt::Final(AdapterError::DeadlineExceeded);
        }
        let call_deadline = (now + self.timeout).min(request.deadline);
        let caller_bound = call_deadline >= request.deadline;
        let challenge = self.origin.as_ref().map(|_| Challenge::new());
        let mut provide = provide_request(request);
        if let Some(challenge) = &challenge {
            provide.origin_nonce = challenge.nonce.clone();
            provide.origin_subject_key = challenge.subject_key.to_vec();
        }
        let mut call = tonic::Request::new(provide);
        call.set_timeout(call_deadline - now);
        let (turn, mut client) = self.client();
        let outcome = tokio::time::timeout_at(call_deadline, client.provide(call)).await;
        let status = match outcome {
            Ok(Ok(response)) => {
                return match self.convert(response.into_inner(), request, challenge.as_ref()) {
                    Ok(answer) => Attempt::Done(answer),
                    Err(e) => Attempt::Final(e),
                };
            }
            Ok(Err(status)) => status,
            Err(_) => return Attempt::Final(self.timed_out(caller_bound)),
        };
        let transport = std::error::Error::source(&status).is_some();
        tracing::debug!(
            attestation_type = %self.attestation_type,
            code = ?status.code(),
            transport,
            "grpc adapter: call failed"
        );
        if transport {
            let attempt = self.transport_failure(&status, call_deadline, caller_bound);
            if let Attempt::Retryable(_) = attempt {
                self.forget(turn);
            }
            return attempt;
        }
        match status.code() {
            Code::NotFound => Attempt::Final(AdapterError::NotFound),
            Code::Unavailable | Code::ResourceExhausted => {
                Attempt::Final(AdapterError::Unavailable {
                    reason: format!("provider answered {:?}", status.code()),
                    retry_after: status
                        .get_details_retry_info()
                        .and_then(|info| info.retry_delay),
                })
            }
            Code::DeadlineExceeded | Code::Cancelled => {
                Attempt::Final(self.timed_out(caller_bound || Instant::now() >= request.deadline))
            }
            // The provider refused the broker's client certificate or its rights.
            Code::Unauthenticated | Code::PermissionDenied => Attempt::Final(
                AdapterError::AuthFailed(format!("provider answered {:?}", status.code())),
            ),
            // The status message is the provider's text: not reported (it may name the subject).
            code => Attempt::Final(AdapterError::InvalidResponse(format!(
                "provider answered gRPC status {code:?}"
            ))),
        }
    }

    /// A call that failed in the client's transport, without a status from the provider.
    ///
    /// UNAVAILABLE (connection refused or lost), INTERNAL and UNKNOWN (an HTTP/2 stream ended
    /// by a GOAWAY or a reset, a connection closed mid-answer) and CANCELLED before the call's
    /// own deadline (hyper drops a request queued on a connection that closed) are connection
    /// failures: worth one more try, on a fresh connection, since `Provide` only reads.
    fn transport_failure(
        &self,
        status: &tonic::Status,
        call_deadline: Instant,
        caller_bound: bool,
    ) -> Attempt {
        let connection = match status.code() {
            Code::Unavailable | Code::Internal | Code::Unknown => true,
            Code::Cancelled | Code::DeadlineExceeded => Instant::now() < call_deadline,
            _ => false,
        };
        if connection {
            // tonic's own words about the connection: no provider text in them.
            return Attempt::Retryable(AdapterError::Unavailable {
                reason: format!(
                    "connection to the provider failed ({:?}): {}",
                    status.code(),
                    status.message()
                ),
                retry_after: None,
            });
        }
        match status.code() {
            Code::Cancelled | Code::DeadlineExceeded => {
                Attempt::Final(self.timed_out(caller_bound))
            }
            code => Attempt::Final(AdapterError::Unavailable {
                reason: format!("call to the provider failed ({code:?})"),
                retry_after: None,
            }),
        }
    }

    /// The error of a call that ran out of time: the caller's deadline, or only `timeout_ms`.
    fn timed_out(&self, caller_deadline: bool) -> AdapterError {
        if caller_deadline {
            AdapterError::DeadlineExceeded
        } else {
            AdapterError::Unavailable {
                reason: format!(
                    "provider did not answer within {} ms",
                    self.timeout.as_millis()
                ),
                retry_after: None,
            }
        }
    }

    /// The claims of an answer, typed by the schema and checked against the request, and the
    /// provider's statement of them verified (with the call's `challenge`) when it signs.
    fn convert(
        &self,
        response: pb::ProvideResponse,
        request: &AdapterRequest,
        challenge: Option<&Challenge>,
    ) -> Result<Answer, AdapterError> {
        let claims = self.claims(response.claims, &request.claims)?;
        let origin = match (&self.origin, challenge) {
            (Some(policy), Some(challenge)) => {
                self.origin(policy, &response.origin, request, challenge, &claims)?
            }
            _ => None,
        };
        Ok(Answer { claims, origin })
    }

    /// Verifies the provider's signed statement of `claims`, if it sent one (it must when the
    /// policy requires it).
    fn origin(
        &self,
        policy: &OriginPolicy,
        statement: &str,
        request: &AdapterRequest,
        challenge: &Challenge,
        claims: &Claims,
    ) -> Result<Option<Origin>, AdapterError> {
        if statement.is_empty() {
            return if policy.required() {
                Err(unefois_adapters::origin::missing())
            } else {
                Ok(None)
            };
        }
        let expected = Expected {
            attestation_type: &self.attestation_type,
            subject: &request.subject,
            challenge,
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        unefois_adapters::origin::verify_statement(
            policy,
            statement,
            &expected,
            &self.schema,
            claims,
        )
        .map(Some)
    }

    /// The claims of an answer, typed by the schema and checked against the request.
    fn claims(
        &self,
        answered: std::collections::HashMap<String, pb::ClaimValue>,
        requested: &[String],
    ) -> Result<Claims, AdapterError> {
        let mut claims = Claims::new();
        for (name, value) in answered {
            let Some(spec) = self.schema.iter().find(|s| s.name == name) else {
                return Err(AdapterError::InvalidResponse(format!(
                    "claim {} is not in the schema",
                    quote(&name)
                )));
            };
            let value = claim_value(spec.claim_type, value.value).map_err(|why| {
                AdapterError::InvalidResponse(format!("claim {}: {why}", quote(&name)))
            })?;
            claims.insert(name, value);
        }
        check_claims(&self.schema, requested, &claims)?;
        Ok(claims)
    }
}

#[async_trait::async_trait]
impl Adapter for GrpcProviderAdapter {
    /// Calls the provider, bounded by `timeout_ms` and the request's deadline. A call that
    /// failed on the connection (refused, reset, ended by a GOAWAY: see `transport_failure`)
    /// is made again on the next connection while the deadline has not passed, at most once
    /// per connection plus once; the failed connection is replaced by a fresh one. A request
    /// for another attestation type is a routing error in the broker: `Unavailable`.
    async fn fetch(&self, request: &AdapterRequest) -> Result<Claims, AdapterError> {
        self.answer(request).await.map(|answer| answer.claims)
    }

    /// [`GrpcProviderAdapter::fetch`], with the provider's verified statement when it signs.
    async fn answer(&self, request: &AdapterRequest) -> Result<Answer, AdapterError> {
        let started = Instant::now();
        check_request("grpc", &self.attestation_type, request)?;
        // One try per connection, and one more: a GOAWAY may close every connection at once
        // (they were opened together, and age together). A try that failed on its connection
        // has that connection replaced, so with N connections closing, the N+1st try lands on
        // a fresh one.
        let most = self.channels.len() + 1;
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match self.attempt(request).await {
                Attempt::Done(answer) => break Ok(answer),
                Attempt::Final(error) => break Err(error),
                Attempt::Retryable(error)
                    if attempts >= most || Instant::now() >= request.deadline =>
                {
                    break Err(error);
                }
                Attempt::Retryable(_) => tracing::debug!(
                    attestation_type = %self.attestation_type,
                    attempts,
                    "grpc adapter: connection failed, trying the next connection"
                ),
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => tracing::debug!(
                attestation_type = %self.attestation_type,
                attempts,
                latency_ms,
                "grpc adapter: fetched"
            ),
            Err(e) => tracing::info!(
                attestation_type = %self.attestation_type,
                attempts,
                latency_ms,
                error = %e,
                "grpc adapter: fetch failed"
            ),
        }
        result
    }

    fn kind(&self) -> &'static str {
        "grpc"
    }
}

/// Opens the adapter's TCP connections, their writes gathered until h2 flushes
/// ([`GatheredWrites`]): the calls that the runtime has ready leave in one system call, not
/// two each. tonic puts TLS (for `https://`), the connect timeout and HTTP/2 on top.
#[derive(Clone, Copy)]
struct GatheringConnector;

impl tower::Service<http::Uri> for GatheringConnector {
    type Response = TokioIo<GatheredWrites>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("http") => 80,
                _ => 443,
            });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(GatheredWrites::new(tcp)))
        })
    }
}

/// The `ProvideRequest` of an adapter request.
fn provide_request(request: &AdapterRequest) -> pb::ProvideRequest {
    let legal_basis = match &request.legal_basis {
        LegalBasis::Consent { consent_id } => pb::LegalBasis {
            kind: pb::LegalBasisKind::Consent as i32,
            law_citation: String::new(),
            consent_id: consent_id.clone(),
        },
        LegalBasis::Law { citation } => pb::LegalBasis {
            kind: pb::LegalBasisKind::Law as i32,
            law_citation: citation.clone(),
            consent_id: String::new(),
        },
    };
    pb::ProvideRequest {
        subject: request.subject.clone(),
        attestation_type: request.attestation_type.clone(),
        claims: request.claims.clone(),
        consumer: request.consumer.clone(),
        purpose: request.purpose.clone(),
        legal_basis: Some(legal_basis),
        request_id: request.request_id.clone(),
        ..Default::default()
    }
}

/// A protobuf claim value as a claim of type `t`: the oneof kind must be the schema's type
/// (no coercion); dates are `YYYY-MM-DD`. The error never quotes the value.
fn claim_value(t: ClaimType, value: Option<pb::claim_value::Value>) -> Result<ClaimValue, String> {
    use pb::claim_value::Value as V;
    let Some(value) = value else {
        return Err("no value".into());
    };
    let claim = match (t, value) {
        (ClaimType::String, V::StringValue(s)) => ClaimValue::String(s),
        (ClaimType::Integer, V::IntegerValue(i)) => ClaimValue::Integer(i),
        (ClaimType::Number, V::NumberValue(x)) => ClaimValue::Number(x),
        (ClaimType::Boolean, V::BooleanValue(b)) => ClaimValue::Boolean(b),
        (ClaimType::Date, V::DateValue(s)) => {
            ClaimValue::from_json(ClaimType::Date, &serde_json::Value::String(s))?
        }
        (t, other) => {
            let found = match other {
                V::StringValue(_) => "string_value",
                V::IntegerValue(_) => "integer_value",
                V::NumberValue(_) => "number_value",
                V::BooleanValue(_) => "boolean_value",
                V::DateValue(_) => "date_value",
            };
            return Err(format!("expected a {t} value, found {found}"));
        }
    };
    claim.validate()?;
    Ok(claim)
}

/// Reads a PEM file that must hold at least one certificate; returns its text.
fn read_certificates_pem(path: &Path) -> Result<Vec<u8>, String> {
    let pem = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("{}: bad PEM certificate: {e}", path.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(pem)
}

/// Reads a PEM private key file; returns its text (never quoted in errors).
fn read_key_pem(path: &Path) -> Result<Vec<u8>, String> {
    let pem = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("cannot read a PEM private key from {}: {e}", path.display()))?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider_config::DEFAULT_GRPC_TIMEOUT_MS;
    use std::path::PathBuf;

    fn schema() -> Vec<ClaimSpec> {
        vec![
            ClaimSpec {
                name: "est_etudiant".into(),
                claim_type: ClaimType::Boolean,
            },
            ClaimSpec {
                name: "annee_universitaire".into(),
                claim_type: ClaimType::String,
            },
            ClaimSpec {
                name: "date_inscription".into(),
                claim_type: ClaimType::Date,
            },
        ]
    }

    fn config(endpoint: &str) -> GrpcProviderConfig {
        GrpcProviderConfig {
            endpoint: endpoint.into(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: None,
            timeout_ms: DEFAULT_GRPC_TIMEOUT_MS,
            allow_plain_http: true,
            rate_limit: None,
        }
    }

    fn field_of(result: Result<GrpcProviderAdapter, GrpcConfigError>) -> String {
        match result {
            Ok(adapter) => panic!("accepted: {adapter:?}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn config_rejects_unknown_fields_and_defaults_the_timeout() {
        let parsed: GrpcProviderConfig =
            toml::from_str("endpoint = \"http://127.0.0.1:7000\"").expect("parses");
        assert_eq!(parsed.timeout_ms, DEFAULT_GRPC_TIMEOUT_MS);
        let unknown = toml::from_str::<GrpcProviderConfig>(
            "endpoint = \"http://127.0.0.1:7000\"\nretries = 3",
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn bad_configurations_name_their_field() {
        let s = schema();
        let at = "mesr.statut_etudiant";
        assert_eq!(
            field_of(GrpcProviderAdapter::new(at, &s, &config("ftp://h:1"))),
            "endpoint"
        );
        assert_eq!(
            field_of(GrpcProviderAdapter::new(at, &s, &config("http://h"))),
            "endpoint"
        );
        assert_eq!(
            field_of(GrpcProviderAdapter::new(at, &s, &config("http://h:1/x"))),
            "endpoint"
        );
        assert_eq!(
            field_of(GrpcProviderAdapter::new(at, &s, &config("https://h:1"))),
            "ca_file"
        );
        let mut zero = config("http://h:1");
        zero.timeout_ms = 0;
        assert_eq!(
            field_of(GrpcProviderAdapter::new(at, &s, &zero)),
            "timeout_ms"
        );
        let mut tls_on_http = config("http://h:1");
        tls_on_http.server_name = Some("provider.test".into());
        assert_eq!(
            field_of(GrpcProviderAdapter::new(at, &s, &tls_on_http)),
            "server_name"
        );
        let mut missing_ca = config("https://h:1");
        missing_ca.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert_eq!(
            field_of(GrpcProviderAdapter::new(at, &s, &missing_ca)),
            "ca_file"
        );
        let ok = GrpcProviderAdapter::new(at, &s, &config("http://127.0.0.1:7000")).expect("valid");
        assert_eq!(ok.kind(), "grpc");
    }

    #[test]
    fn claim_values_follow_the_schema_without_coercion() {
        use pb::claim_value::Value as V;
        assert_eq!(
            claim_value(ClaimType::Boolean, Some(V::BooleanValue(true))),
            Ok(ClaimValue::Boolean(true))
        );
        assert!(claim_value(ClaimType::Boolean, Some(V::StringValue("true".into()))).is_err());
        assert!(claim_value(ClaimType::Number, Some(V::IntegerValue(3))).is_err());
        assert!(claim_value(ClaimType::Number, Some(V::NumberValue(f64::NAN))).is_err());
        assert!(claim_value(ClaimType::String, None).is_err());
        assert!(matches!(
            claim_value(ClaimType::Date, Some(V::DateValue("2026-09-01".into()))),
            Ok(ClaimValue::Date(_))
        ));
        assert!(claim_value(ClaimType::Date, Some(V::DateValue("2026-02-30".into()))).is_err());
        assert!(claim_value(ClaimType::Date, Some(V::StringValue("2026-09-01".into()))).is_err());
    }

    #[test]
    fn answers_are_checked_against_the_schema_and_the_request() {
        let adapter = GrpcProviderAdapter::new(
            "mesr.statut_etudiant",
            &schema(),
            &config("http://127.0.0.1:7000"),
        )
        .expect("valid");
        let value = |v| pb::ClaimValue { value: Some(v) };
        let requested = vec!["est_etudiant".to_string()];
        let mut ok = pb::ProvideResponse::default();
        ok.claims.insert(
            "est_etudiant".into(),
            value(pb::claim_value::Value::BooleanValue(true)),
        );
        assert_eq!(
            adapter
                .claims(ok.claims.clone(), &requested)
                .expect("valid")["est_etudiant"],
            ClaimValue::Boolean(true)
        );
        let mut extra = ok.clone();
        extra.claims.insert(
            "annee_universitaire".into(),
            value(pb::claim_value::Value::StringValue("2026-2027".into())),
        );
        assert!(matches!(
            adapter.claims(extra.claims, &requested),
            Err(AdapterError::InvalidResponse(_))
        ));
        let mut unknown = ok;
        unknown.claims.insert(
            "nir".into(),
            value(pb::claim_value::Value::StringValue("x".into())),
        );
        assert!(matches!(
            adapter.claims(unknown.claims, &requested),
            Err(AdapterError::InvalidResponse(_))
        ));
    }
}

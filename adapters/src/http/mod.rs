//! The `http` adapter: the broker calls a provider's existing REST/JSON API.
//!
//! The registry declares, per attestation type, a URL template, query parameters and headers
//! whose `{placeholders}` are substituted percent-encoded (the request's context, the
//! consumer's SIRET, a `pivot:` subject's civil-status fields: placeholder.rs), a method, how
//! to authenticate (a bearer token read from a file, an mTLS client certificate), and where
//! each claim lies in the provider's answer (a JSON pointer, a JSONPath or a transform:
//! mapping.rs).
//!
//! Status mapping: 200 → the requested claims, read through their mappings and checked
//! against the schema; 404 → [`AdapterError::NotFound`]; 429 and 5xx →
//! [`AdapterError::Unavailable`] carrying the `Retry-After` delay (seconds form); any
//! other status, a body over the size limit, a body that is not JSON or is nested
//! deeper than [`MAX_JSON_DEPTH`] → [`AdapterError::InvalidResponse`].
//!
//! TLS is rustls with the ring provider only, trusting only the CA file of the
//! configuration (a private PKI; no system roots). Plain `http://` URLs are refused by the
//! broker's registry unless `allow_plain_http` is set, and never with a credential.
//!
//! Nothing here logs a subject or a claim value: tracing events carry the attestation
//! type, the HTTP status, the attempt and the latency.

mod answer;
mod mapping;
mod placeholder;
mod request;
mod retry;
mod template;

use crate::adapter::Attempt;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::time::Instant;

use crate::adapter::{Adapter, AdapterError, AdapterRequest};
use crate::claims::{ClaimSpec, Claims, check_claims, quote};
use answer::check_depth;
use mapping::Mapping;
pub use mapping::{ClaimMapping, MAX_PATH_BYTES};
use placeholder::legal_basis_text;
pub use placeholder::{Placeholder, SexCodes};
pub use request::PlaceholderUses;
use request::{RequestTemplates, header_template};
use retry::{backoff, retry_after};
use template::validate_url_template;

/// Deepest nesting of arrays and objects accepted in a provider's answer.
///
/// Checked by this adapter with a scan of the raw bytes before parsing (serde_json's
/// own recursion limit, 128, stays as a second guard).
pub const MAX_JSON_DEPTH: usize = 64;

/// Default [`HttpConfig::timeout_ms`].
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// Default [`HttpConfig::retries`].
pub const DEFAULT_RETRIES: u32 = 2;
/// Default [`HttpConfig::max_response_bytes`] (1 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Largest number of retries a configuration may ask for.
const MAX_RETRIES: u32 = 10;

/// Characters left as they are when substituting into the URL: RFC 3986 unreserved
/// (`A-Z a-z 0-9 - . _ ~`); everything else is percent-encoded, `/`, `:`, `?`, `#`,
/// `%` and space included.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Characters percent-encoded in the forwarded `X-Unefois-*` header values: controls,
/// `%` and (implicitly) every non-ASCII byte, so that any UTF-8 text travels as
/// visible ASCII.
const HEADER_VALUE: &AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Headers the broker sets itself, which static headers may not replace.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
];

/// Prefix of the headers the broker forwards (consumer, purpose, legal basis, request id).
const FORWARDED_PREFIX: &str = "x-unefois-";

/// The HTTP method of the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub enum HttpMethod {
    /// `GET`: idempotent, retried on connection errors, 429 and 5xx.
    #[default]
    #[serde(rename = "GET", alias = "get")]
    Get,
    /// `POST` with a JSON body `{"subject", "claims", "consumer", "purpose",
    /// "legal_basis", "request_id"}`; never retried.
    #[serde(rename = "POST", alias = "post")]
    Post,
}

impl HttpMethod {
    /// `"GET"` or `"POST"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }
}

/// How the broker calls an existing REST API (declared in the registry).
///
/// Besides the static headers, every call carries `X-Unefois-Consumer`,
/// `X-Unefois-Purpose`, `X-Unefois-Legal-Basis` (the law citation, or
/// `consent:<id>`) and `X-Unefois-Request-Id` (the request id as the audit log records it,
/// never the caller's own), so the provider can log and enforce them. Their values are
/// UTF-8, with control characters, `%` and non-ASCII bytes percent-encoded.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// URL template, `http://` or `https://`. Its [`Placeholder`]s (`{subject}`, `{claims}`,
    /// `{consumer_siret}`, `{family_name}`, ...) are replaced, percent-encoded (only
    /// `A-Z a-z 0-9 - . _ ~` stay as they are); they may appear in the path or the query
    /// only, never in the scheme or authority. E.g.
    /// `"https://api.caf.test/v1/quotient/{subject}"`.
    pub url: String,
    /// Query parameters appended to the URL: name → template, both percent-encoded. A value
    /// that renders empty is left out; `{given_names[]}` as the whole value repeats the
    /// parameter once per given name. E.g. `{ recipient = "{consumer_siret}" }`.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// How `{sex}` is written when the provider does not take `M`/`F`:
    /// `{ M = "1", F = "2" }`.
    #[serde(default)]
    pub sex_codes: Option<SexCodes>,
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Headers sent with every call. Names and values are validated; the broker's own
    /// headers (`Host`, `Content-Type`, `X-Unefois-*`, ...) and, with a bearer token,
    /// `Authorization` cannot be set here. A value may hold placeholders: their values are
    /// percent-encoded where they hold a control character, `%` or a non-ASCII byte, and a
    /// header that renders empty is left out.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// File holding a bearer token, read at load and trimmed; sent as
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// PEM file of the CA certificates trusted for `https://` (required for it). No
    /// system roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented for mTLS (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Claim name → where it lies in the answer: a JSON pointer (`"/data/qf"`), a JSONPath
    /// (`"$.data.qf"`) or a transform table ([`ClaimMapping`]). A path that selects nothing,
    /// or `null`, means the provider does not hold the claim.
    pub claims: BTreeMap<String, ClaimMapping>,
    /// Time allowed to one attempt (connection, request and body), in milliseconds;
    /// the request's deadline bounds the whole call anyway.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after a connection error, a 429 or a 5xx, for `GET` only (at most 10).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Largest response body accepted, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Whether a plain `http://` URL is accepted: the subject's id and the claims then travel
    /// in clear, so only for a provider on the broker's host or a link protected otherwise.
    /// Checked when the broker loads its registry, which never accepts a bearer token or a
    /// credential header over `http://`, even with this set.
    #[serde(default)]
    pub allow_plain_http: bool,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

fn default_max_response_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}

/// Why an [`HttpConfig`] cannot be used. Names the attestation type and the
/// configuration field at fault; never quotes a token or key.
#[derive(Debug, thiserror::Error)]
#[error("http adapter for {attestation_type}: {field}: {reason}")]
pub struct HttpConfigError {
    /// The attestation type, quoted.
    pub attestation_type: String,
    /// The field at fault, e.g. `url`, `claims.nir`, `query.recipient`, `ca_file`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// A configuration key's segment as TOML writes it: bare when it is made of `A-Z a-z 0-9 _ -`,
/// quoted otherwise (`headers."Bad Name"`).
pub(crate) fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { name.to_string() } else { quote(name) }
}

impl HttpConfig {
    /// Checks what needs no file: the URL template, the query table, the headers' templates,
    /// `sex_codes` and the claim mappings (against `schema`). Returns where each placeholder is
    /// used, for the checks that need the registry (`{consumer_siret}`).
    pub fn check(
        &self,
        attestation_type: &str,
        schema: &[ClaimSpec],
    ) -> Result<PlaceholderUses, HttpConfigError> {
        let (request, _) = self.compile(attestation_type, schema)?;
        Ok(request.uses())
    }

    /// The request templates and the claim mappings, compiled.
    fn compile(
        &self,
        attestation_type: &str,
        schema: &[ClaimSpec],
    ) -> Result<(RequestTemplates, Mapping), HttpConfigError> {
        let err = |(field, reason): (String, String)| HttpConfigError {
            attestation_type: quote(attestation_type),
            field,
            reason,
        };
        let mapping = Mapping::new(attestation_type, schema, &self.claims).map_err(err)?;
        let (url, _) = validate_url_template(&self.url).map_err(|why| err(("url".into(), why)))?;
        let mut request =
            RequestTemplates::new(url, &self.query, self.sex_codes.as_ref()).map_err(err)?;
        for (name, value) in &self.headers {
            let field = format!("headers.{}", key_segment(name));
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err((field.clone(), "invalid header name".into())))?;
            if let Some(template) = header_template(value).map_err(|why| err((field, why)))? {
                request.add_header(header_name, template);
            }
        }
        Ok((request, mapping))
    }
}

/// The `http` adapter for one attestation type.
///
/// `Debug` shows the type, the method, the target's scheme, host and port and the
/// claim names, never the path template's query nor a token.
pub struct HttpAdapter {
    attestation_type: String,
    schema: Vec<ClaimSpec>,
    request: RequestTemplates,
    target: String,
    method: HttpMethod,
    headers: HeaderMap,
    claims: Mapping,
    timeout: Duration,
    retries: u32,
    max_response_bytes: usize,
    client: reqwest::Client,
}

impl fmt::Debug for HttpAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAdapter")
            .field("attestation_type", &self.attestation_type)
            .field("method", &self.method)
            .field("target", &self.target)
            .field("claims", &self.claims.names().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl HttpAdapter {
    /// Validates `config` for `attestation_type` and builds the adapter: every claim
    /// of `config.claims` exists in `schema` and its mapping fits its type
    /// ([`HttpConfig::check`]), the URL template parses (placeholders only in the path or
    /// query), query parameters and headers are valid,
    /// the token, CA, certificate and key files are readable and well-formed, an
    /// `https://` URL has a `ca_file`, limits are non-zero.
    pub fn new(
        attestation_type: &str,
        schema: &[ClaimSpec],
        config: &HttpConfig,
    ) -> Result<HttpAdapter, HttpConfigError> {
        let err = |field: &str, reason: String| HttpConfigError {
            attestation_type: quote(attestation_type),
            field: field.to_string(),
            reason,
        };

        // Claim mappings, URL, query and header templates.
        let (request, claims) = config.compile(attestation_type, schema)?;
        let (_, target) = validate_url_template(&config.url).map_err(|why| err("url", why))?;
        let https = target.starts_with("https://");

        // Limits.
        if config.timeout_ms == 0 {
            return Err(err("timeout_ms", "must be greater than 0".into()));
        }
        if config.retries > MAX_RETRIES {
            return Err(err("retries", format!("at most {MAX_RETRIES}")));
        }
        if config.max_response_bytes == 0 {
            return Err(err("max_response_bytes", "must be greater than 0".into()));
        }

        // Headers.
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let field = format!("headers.{}", key_segment(name));
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err(&field, "invalid header name".into()))?;
            let lower = header_name.as_str();
            if RESERVED_HEADERS.contains(&lower) || lower.starts_with(FORWARDED_PREFIX) {
                return Err(err(&field, "this header is set by the broker".into()));
            }
            if header_name == AUTHORIZATION && config.bearer_token_file.is_some() {
                return Err(err(
                    &field,
                    "Authorization conflicts with bearer_token_file".into(),
                ));
            }
            if header_template(value).is_ok_and(|t| t.is_some()) {
                // Rendered per call (request.rs).
                continue;
            }
            let mut header_value = HeaderValue::from_str(value).map_err(|_| {
                err(
                    &field,
                    "invalid header value (visible ASCII and spaces only)".into(),
                )
            })?;
            if header_name == AUTHORIZATION {
                header_value.set_sensitive(true);
            }
            headers.append(header_name, header_value);
        }
        if let Some(path) = &config.bearer_token_file {
            let text = fs::read_to_string(path).map_err(|e| {
                err(
                    "bearer_token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(err(
                    "bearer_token_file",
                    format!("{} is empty", path.display()),
                ));
            }
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                err(
                    "bearer_token_file",
                    format!(
                        "{} holds characters not allowed in a header",
                        path.display()
                    ),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );

        // TLS.
        let mut roots = RootCertStore::empty();
        match &config.ca_file {
            Some(path) => {
                let certs = read_certificates(path).map_err(|why| err("ca_file", why))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        err(
                            "ca_file",
                            format!("{}: unusable CA certificate: {e}", path.display()),
                        )
                    })?;
                }
            }
            None if https => {
                return Err(err(
                    "ca_file",
                    "required for an https:// url (no system roots are trusted)".into(),
                ));
            }
            None => {}
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("ca_file", format!("TLS configuration: {e}")))?
            .with_root_certificates(roots);
        let tls = match (&config.client_cert_file, &config.client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_path), Some(key_path)) => {
                let chain =
                    read_certificates(cert_path).map_err(|why| err("client_cert_file", why))?;
                let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                    err(
                        "client_key_file",
                        format!(
                            "cannot read a PEM private key from {}: {e}",
                            key_path.display()
                        ),
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    err(
                        "client_key_file",
                        format!(
                            "{} does not fit {}: {e}",
                            key_path.display(),
                            cert_path.display()
                        ),
                    )
                })?
            }
            (Some(_), None) => {
                return Err(err(
                    "client_key_file",
                    "required with client_cert_file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "client_cert_file",
                    "required with client_key_file".into(),
                ));
            }
        };

        let timeout = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| err("url", format!("cannot build the HTTP client: {e}")))?;

        Ok(HttpAdapter {
            attestation_type: attestation_type.to_string(),
            schema: schema.to_vec(),
            request,
            target,
            method: config.method,
            headers,
            claims,
            timeout,
            retries: config.retries,
            max_response_bytes: config.max_response_bytes,
            client,
        })
    }

    /// The attestation type this adapter serves.
    pub fn attestation_type(&self) -> &str {
        &self.attestation_type
    }

    /// One attempt: sends the request (with its templated headers) and reads the answer.
    async fn attempt(
        &self,
        url: Url,
        templated: &[(HeaderName, HeaderValue)],
        request: &AdapterRequest,
    ) -> Attempt {
        let mut builder = match self.method {
            HttpMethod::Get => self.client.get(url),
            HttpMethod::Post => self.client.post(url).json(&serde_json::json!({
                "subject": request.subject,
                "claims": request.claims,
                "consumer": request.consumer,
                "purpose": request.purpose,
                "legal_basis": legal_basis_text(&request.legal_basis),
                "request_id": request.request_id,
            })),
        };
        builder = builder.headers(self.headers.clone());
        for (name, value) in templated {
            builder = builder.header(name.clone(), value.clone());
        }
        let legal_basis = legal_basis_text(&request.legal_basis);
        for (name, value) in [
            ("x-unefois-consumer", request.consumer.as_str()),
            ("x-unefois-purpose", request.purpose.as_str()),
            ("x-unefois-legal-basis", legal_basis.as_str()),
            ("x-unefois-request-id", request.request_id.as_str()),
        ] {
            let encoded = utf8_percent_encode(value, HEADER_VALUE).to_string();
            match HeaderValue::from_str(&encoded) {
                Ok(v) => builder = builder.header(name, v),
                Err(_) => {
                    return Attempt::Final(AdapterError::Unavailable {
                        reason: format!("cannot encode header {name}"),
                        retry_after: None,
                    });
                }
            }
        }

        let mut response = match builder.send().await {
            Ok(response) => response,
            Err(e) => {
                let retryable = e.is_connect();
                let error = AdapterError::Unavailable {
                    reason: format!("request failed: {}", describe_error(e)),
                    retry_after: None,
                };
                return if retryable {
                    Attempt::Retryable(error)
                } else {
                    Attempt::Final(error)
                };
            }
        };
        let status = response.status();
        tracing::debug!(
            attestation_type = %self.attestation_type,
            status = status.as_u16(),
            "http adapter: provider answered"
        );
        if status == StatusCode::NOT_FOUND {
            return Attempt::Final(AdapterError::NotFound);
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Attempt::Retryable(AdapterError::Unavailable {
                reason: format!("provider answered HTTP {}", status.as_u16()),
                retry_after: retry_after(response.headers()),
            });
        }
        if status != StatusCode::OK {
            return Attempt::Final(AdapterError::InvalidResponse(format!(
                "unexpected HTTP status {}",
                status.as_u16()
            )));
        }

        // The body, bounded.
        let limit = self.max_response_bytes;
        let too_large = || {
            Attempt::Final(AdapterError::InvalidResponse(format!(
                "response body larger than {limit} bytes"
            )))
        };
        if response
            .content_length()
            .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
        {
            return too_large();
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len().saturating_add(chunk.len()) > limit {
                        return too_large();
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Attempt::Final(AdapterError::Unavailable {
                        reason: format!("reading the response failed: {}", describe_error(e)),
                        retry_after: None,
                    });
                }
            }
        }
        match self.extract(&body, &request.claims) {
            Ok(claims) => Attempt::Done(claims),
            Err(e) => Attempt::Final(e),
        }
    }

    /// Reads the requested claims out of a 200 answer.
    fn extract(&self, body: &[u8], requested: &[String]) -> Result<Claims, AdapterError> {
        check_depth(body, MAX_JSON_DEPTH)?;
        let document: Value = serde_json::from_slice(body).map_err(|e| {
            AdapterError::InvalidResponse(format!(
                "response is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let claims = self.claims.extract(&document, requested)?;
        check_claims(&self.schema, requested, &claims)?;
        Ok(claims)
    }
}

#[async_trait::async_trait]
impl Adapter for HttpAdapter {
    /// Calls the provider. Each attempt is bounded by `timeout_ms` and by the request's
    /// deadline; a `GET` is retried up to `retries` times after a connection error, a
    /// 429 or a 5xx, with a random pause of 50–150 ms × the attempt number, never past
    /// the deadline (the last failure is returned when no retry fits). A request for
    /// another attestation type is a routing error in the broker: `Unavailable`.
    async fn fetch(&self, request: &AdapterRequest) -> Result<Claims, AdapterError> {
        let started = Instant::now();
        crate::adapter::check_request("http", &self.attestation_type, request)?;
        let values = self.request.values(request)?;
        let url = self.request.url(&values)?;
        let templated = self.request.headers(&values)?;
        let max_attempts = match self.method {
            HttpMethod::Get => self.retries.saturating_add(1),
            HttpMethod::Post => 1,
        };
        let mut attempt = 1;
        let result = loop {
            let attempt_deadline = (Instant::now() + self.timeout).min(request.deadline);
            let outcome = tokio::time::timeout_at(
                attempt_deadline,
                self.attempt(url.clone(), &templated, request),
            )
            .await;
            let error = match outcome {
                Ok(Attempt::Done(claims)) => break Ok(claims),
                Ok(Attempt::Final(error)) => break Err(error),
                Err(_) if attempt_deadline >= request.deadline => {
                    break Err(AdapterError::DeadlineExceeded);
                }
                Err(_) => {
                    break Err(AdapterError::Unavailable {
                        reason: format!(
                            "provider did not answer within {} ms",
                            self.timeout.as_millis()
                        ),
                        retry_after: None,
                    });
                }
                Ok(Attempt::Retryable(error)) => error,
            };
            if attempt >= max_attempts {
                break Err(error);
            }
            let pause = backoff(attempt);
            if Instant::now() + pause >= request.deadline {
                break Err(error);
            }
            tracing::debug!(
                attestation_type = %self.attestation_type,
                attempt,
                pause_ms = pause.as_millis() as u64,
                "http adapter: retrying"
            );
            tokio::time::sleep(pause).await;
            attempt += 1;
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => tracing::debug!(
                attestation_type = %self.attestation_type,
                attempts = attempt,
                latency_ms,
                "http adapter: fetched"
            ),
            Err(e) => tracing::info!(
                attestation_type = %self.attestation_type,
                attempts = attempt,
                latency_ms,
                error = %e,
                "http adapter: fetch failed"
            ),
        }
        result
    }

    fn kind(&self) -> &'static str {
        "http"
    }

    /// A route that matches on civil status refuses a subject that is not `pivot:`.
    fn precheck(&self, request: &AdapterRequest) -> Result<(), AdapterError> {
        self.request.values(request).map(|_| ())
    }
}

/// A reqwest error for an operator, without the URL (which holds the subject).
fn describe_error(e: reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "HTTP error"
    };
    let e = e.without_url();
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads the PEM certificates of `path` (at least one).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

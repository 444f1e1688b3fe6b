//! The `http` adapter: the broker calls a provider's existing REST/JSON API.
//!
//! The registry declares, per attestation type, a URL template, query parameters and headers
//! whose `{placeholders}` are substituted percent-encoded (the request's context, the
//! consumer's SIRET, a `pivot:` subject's civil-status fields: placeholder.rs), a method, how
//! to authenticate (a bearer token, an API key or OAuth2 client credentials read from files,
//! an mTLS client certificate: auth.rs), a forward proxy (proxy.rs), the provider's error
//! codes (errors.rs), and where each claim lies in the provider's answer (a JSON pointer, a
//! JSONPath or a transform: mapping.rs).
//!
//! Status mapping: 200 → the requested claims, read through their mappings and checked
//! against the schema; 401 and 403 → [`AdapterError::AuthFailed`] (with OAuth2, a 401 first
//! fetches a new token and retries once); 429 or 503 with a `Retry-After` (seconds or
//! HTTP-date, capped at [`MAX_RETRY_AFTER`]) → [`AdapterError::Unavailable`] carrying the
//! delay, never retried sooner; then the error-code table if declared (errors.rs); 404 →
//! [`AdapterError::NotFound`] (with a table, only for a not-found code); other 429 and 5xx →
//! `Unavailable`, retried for a `GET`; any other status, a body over the size limit, a body
//! that is not JSON or is nested deeper than [`MAX_JSON_DEPTH`] →
//! [`AdapterError::InvalidResponse`].
//!
//! TLS is rustls with the ring provider only, trusting only the CA file of the
//! configuration (a private PKI; no system roots). Plain `http://` URLs are refused by the
//! broker's registry unless `allow_plain_http` is set, and never with a credential.
//!
//! Proof of origin: with the provider's keys (`with_origin`), each call carries a fresh
//! challenge and the provider's detached JWS over its body is verified (origin.rs).
//!
//! Nothing here logs a subject or a claim value: tracing events carry the attestation
//! type, the HTTP status, the attempt and the latency.

mod answer;
mod auth;
mod errors;
mod mapping;
#[cfg(feature = "runtime")]
mod origin;
mod placeholder;
#[cfg(feature = "runtime")]
mod proxy;
mod request;
#[cfg(feature = "runtime")]
mod retry;
mod template;

#[cfg(feature = "runtime")]
pub use auth::TokenCaches;
pub use auth::{ClientAuth, OAuth2Config};
pub use errors::{ErrorCodes, ErrorOutcome};
#[cfg(feature = "runtime")]
pub use retry::MAX_RETRY_AFTER;

#[cfg(feature = "runtime")]
use crate::adapter::Attempt;
use std::collections::BTreeMap;
use std::path::PathBuf;
#[cfg(feature = "runtime")]
use std::{fmt, fs, path::Path, sync::Arc, time::Duration};

use http::header::HeaderName;
#[cfg(feature = "runtime")]
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
#[cfg(feature = "runtime")]
use percent_encoding::utf8_percent_encode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
#[cfg(feature = "runtime")]
use reqwest::{StatusCode, Url};
#[cfg(feature = "runtime")]
use rustls::RootCertStore;
#[cfg(feature = "runtime")]
use rustls_pki_types::pem::PemObject;
#[cfg(feature = "runtime")]
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
#[cfg(feature = "runtime")]
use serde_json::Value;
#[cfg(feature = "runtime")]
use tokio::time::Instant;

#[cfg(feature = "runtime")]
use crate::adapter::{Adapter, AdapterError, AdapterRequest, Answer};
use crate::claims::{ClaimSpec, quote};
#[cfg(feature = "runtime")]
use crate::claims::{Claims, check_claims};
#[cfg(feature = "runtime")]
use answer::check_depth;
use mapping::Mapping;
pub use mapping::{ClaimMapping, MAX_PATH_BYTES};
#[cfg(feature = "runtime")]
use placeholder::legal_basis_text;
pub use placeholder::{Placeholder, SexCodes};
pub use request::PlaceholderUses;
use request::{RequestTemplates, header_template};
#[cfg(feature = "runtime")]
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

#[cfg(feature = "runtime")]
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
    /// Checked when the broker loads its registry, which never accepts a bearer token, an API
    /// key, OAuth2 or a credential header over `http://`, even with this set.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// File holding an API key (trimmed), sent in the header named by `api_key_header` or
    /// the query parameter named by `api_key_query` (exactly one of them).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Header carrying the API key, e.g. `"X-Api-Key"`.
    #[serde(default)]
    pub api_key_header: Option<String>,
    /// Query parameter carrying the API key, e.g. `"apikey"`.
    #[serde(default)]
    pub api_key_query: Option<String>,
    /// OAuth2 client credentials: the access token is sent as `Authorization: Bearer`.
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
    /// Where the provider puts its error code, and what each code means.
    #[serde(default)]
    pub errors: Option<ErrorCodes>,
    /// Forward proxy for every call of this adapter (and its OAuth2 token endpoint), e.g.
    /// `"http://proxy:3128"`; `https://` providers are reached through a `CONNECT` tunnel.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Hosts, domains (`".gouv.fr"`), IP addresses or networks (`"10.0.0.0/8"`) reached
    /// without the proxy.
    #[serde(default)]
    pub no_proxy: Vec<String>,
    /// File holding the proxy's `user:password` (sent as `Proxy-Authorization: Basic`).
    #[serde(default)]
    pub proxy_credentials_file: Option<PathBuf>,
    /// Calls per second to this provider, enforced by the broker and shared by every type of
    /// the provider participant (which must then all declare the same limit).
    #[serde(default)]
    pub rate_limit: Option<crate::rate_limit::ProviderRateLimit>,
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

#[cfg(feature = "runtime")]
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
    /// The provider's keys, when its answers are signed (set by [`HttpAdapter::with_origin`]).
    origin: Option<crate::origin::OriginPolicy>,
    /// The API key's query parameter and value, when it travels in the query.
    query_key: Option<(String, String)>,
    oauth2: Option<std::sync::Arc<auth::OAuth2>>,
    errors: Option<ErrorCodes>,
}

#[cfg(feature = "runtime")]
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

#[cfg(feature = "runtime")]
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
        HttpAdapter::sharing_tokens(
            attestation_type,
            schema,
            config,
            &mut auth::TokenCaches::default(),
        )
    }

    /// [`HttpAdapter::new`], its OAuth2 token cache taken from `caches` when another adapter
    /// of the registry uses the same credential ([`auth::TokenCaches`]).
    pub fn sharing_tokens(
        attestation_type: &str,
        schema: &[ClaimSpec],
        config: &HttpConfig,
        caches: &mut auth::TokenCaches,
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
            if header_name == AUTHORIZATION
                && (config.bearer_token_file.is_some() || config.oauth2.is_some())
            {
                return Err(err(
                    &field,
                    "Authorization conflicts with bearer_token_file or oauth2".into(),
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
        if config.bearer_token_file.is_some() && config.oauth2.is_some() {
            return Err(err(
                "oauth2",
                "bearer_token_file and oauth2 both set Authorization: keep one".into(),
            ));
        }
        let query_key = api_key(config, &mut headers).map_err(|(f, why)| err(&f, why))?;
        if let Some(errors) = &config.errors {
            errors.validate().map_err(|(f, why)| err(&f, why))?;
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
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30));
        builder = match &config.proxy {
            // Setting a proxy also turns off the environment's (HTTP_PROXY, ...).
            Some(url) => builder.proxy(
                proxy::build(
                    url,
                    &config.no_proxy,
                    config.proxy_credentials_file.as_deref(),
                )
                .map_err(|(f, why)| err(&f, why))?,
            ),
            None if !config.no_proxy.is_empty() || config.proxy_credentials_file.is_some() => {
                return Err(err(
                    "proxy",
                    "no_proxy and proxy_credentials_file need a proxy".into(),
                ));
            }
            None => builder.no_proxy(),
        };
        let client = builder
            .build()
            .map_err(|e| err("url", format!("cannot build the HTTP client: {e}")))?;
        let oauth2 = match &config.oauth2 {
            Some(oauth2) => {
                let transport = format!(
                    "{:?}",
                    (
                        &config.ca_file,
                        &config.client_cert_file,
                        &config.client_key_file,
                        &config.proxy,
                        &config.no_proxy,
                        &config.proxy_credentials_file,
                        config.timeout_ms,
                    )
                );
                let key =
                    auth::credential_key(oauth2, &transport).map_err(|(f, why)| err(&f, why))?;
                Some(
                    caches
                        .get_or_make(key, || auth::OAuth2::new(oauth2, client.clone()))
                        .map_err(|(f, why)| err(&f, why))?,
                )
            }
            None => None,
        };

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
            origin: None,
            query_key,
            oauth2,
            errors: config.errors.clone(),
        })
    }

    /// Checks the provider's detached signatures with `policy` (its keys from the registry):
    /// each call then carries a fresh challenge, and a 200 answer whose signature fails, or is
    /// missing when the policy requires one, is an invalid response (docs/adapters/origin.md).
    pub fn with_origin(mut self, policy: crate::origin::OriginPolicy) -> HttpAdapter {
        self.origin = Some(policy);
        self
    }

    /// The attestation type this adapter serves.
    pub fn attestation_type(&self) -> &str {
        &self.attestation_type
    }

    /// One attempt: sends the request (with its templated headers) and reads the answer. With OAuth2, a 401 fetches a new
    /// token (unless another call already did) and sends the request once more.
    async fn attempt(
        &self,
        url: Url,
        templated: &[(HeaderName, HeaderValue)],
        request: &AdapterRequest,
    ) -> Attempt {
        // A fresh challenge per attempt when the provider signs (kept if a 401 resends).
        let challenge = self
            .origin
            .as_ref()
            .map(|_| crate::origin::Challenge::new());
        let challenge = challenge.as_ref();
        let token = match &self.oauth2 {
            Some(oauth2) => match oauth2.token().await {
                Ok(token) => Some(token),
                Err(e) => return Attempt::Final(e),
            },
            None => None,
        };
        let mut response = match self
            .send(url.clone(), templated, request, token.as_ref(), challenge)
            .await
        {
            Ok(response) => response,
            Err(failed) => return failed,
        };
        if let (Some(oauth2), Some(stale)) = (&self.oauth2, &token)
            && response.status() == StatusCode::UNAUTHORIZED
        {
            tracing::info!(
                attestation_type = %self.attestation_type,
                "http adapter: the provider refused the OAuth2 token (401); fetching a new one"
            );
            let fresh = match oauth2.renew(stale).await {
                Ok(token) => token,
                Err(e) => return Attempt::Final(e),
            };
            response = match self
                .send(url, templated, request, Some(&fresh), challenge)
                .await
            {
                Ok(response) => response,
                Err(failed) => return failed,
            };
        }
        self.judge(response, request, challenge).await
    }

    /// Sends one request: the method, the static and forwarded headers, the credentials.
    async fn send(
        &self,
        mut url: Url,
        templated: &[(HeaderName, HeaderValue)],
        request: &AdapterRequest,
        token: Option<&auth::Token>,
        challenge: Option<&crate::origin::Challenge>,
    ) -> Result<reqwest::Response, Attempt> {
        if let Some((name, key)) = &self.query_key {
            url.query_pairs_mut().append_pair(name, key);
        }
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
        if let Some(challenge) = challenge {
            builder = origin::challenge(builder, challenge);
        }
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, token.header.clone());
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
                    return Err(Attempt::Final(AdapterError::Unavailable {
                        reason: format!("cannot encode header {name}"),
                        retry_after: None,
                    }));
                }
            }
        }

        builder.send().await.map_err(|e| {
            let retryable = e.is_connect();
            let error = AdapterError::Unavailable {
                reason: format!("request failed: {}", describe_error(e)),
                retry_after: None,
            };
            if retryable {
                Attempt::Retryable(error)
            } else {
                Attempt::Final(error)
            }
        })
    }

    /// What an answer means (the module's status mapping).
    async fn judge(
        &self,
        response: reqwest::Response,
        request: &AdapterRequest,
        challenge: Option<&crate::origin::Challenge>,
    ) -> Attempt {
        let status = response.status();
        tracing::debug!(
            attestation_type = %self.attestation_type,
            status = status.as_u16(),
            "http adapter: provider answered"
        );
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Attempt::Final(AdapterError::AuthFailed(format!(
                "HTTP {}",
                status.as_u16()
            )));
        }
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) && let Some(asked) = retry_after(response.headers(), std::time::SystemTime::now())
            && !asked.delay.is_zero()
        {
            if asked.capped {
                tracing::warn!(
                    attestation_type = %self.attestation_type,
                    status = status.as_u16(),
                    honoured_s = asked.delay.as_secs(),
                    "http adapter: the provider's Retry-After is longer than the most honoured; \
                     calls are held for the maximum only"
                );
            }
            return Attempt::Final(AdapterError::Unavailable {
                reason: format!(
                    "provider answered HTTP {} and asked to wait {} s",
                    status.as_u16(),
                    asked.delay.as_secs_f64().ceil()
                ),
                retry_after: Some(asked.delay),
            });
        }
        if status != StatusCode::OK {
            let code = match &self.errors {
                Some(table) => {
                    let limit = self.max_response_bytes.min(errors::MAX_ERROR_BODY_BYTES);
                    read_body(response, limit)
                        .await
                        .ok()
                        .and_then(|body| table.code_of(&body))
                }
                None => None,
            };
            return errors::judge(status, self.errors.as_ref(), code.as_deref());
        }

        // The provider's signature, kept for after the body.
        let signature = origin::signature(response.headers());
        let limit = self.max_response_bytes;
        let body = match read_body(response, limit).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return Attempt::Final(AdapterError::InvalidResponse(format!(
                    "response body larger than {limit} bytes"
                )));
            }
            Err(BodyError::Failed(why)) => {
                return Attempt::Final(AdapterError::Unavailable {
                    reason: format!("reading the response failed: {why}"),
                    retry_after: None,
                });
            }
        };
        let origin = match (&self.origin, challenge) {
            (Some(policy), Some(challenge)) => {
                match origin::verify(policy, challenge, &signature, &body, request) {
                    Ok(origin) => origin,
                    Err(e) => return Attempt::Final(e),
                }
            }
            _ => None,
        };
        match self.extract(&body, &request.claims) {
            Ok(claims) => Attempt::Done(Answer { claims, origin }),
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

#[cfg(feature = "runtime")]
#[async_trait::async_trait]
impl Adapter for HttpAdapter {
    /// Calls the provider. Each attempt is bounded by `timeout_ms` and by the request's
    /// deadline; a `GET` is retried up to `retries` times after a connection error, a
    /// 429 or a 5xx, with a random pause of 50–150 ms × the attempt number, never past
    /// the deadline (the last failure is returned when no retry fits). A request for
    /// another attestation type is a routing error in the broker: `Unavailable`.
    async fn fetch(&self, request: &AdapterRequest) -> Result<Claims, AdapterError> {
        self.answer(request).await.map(|answer| answer.claims)
    }

    /// [`HttpAdapter::fetch`], with the provider's verified signature when it signs.
    async fn answer(&self, request: &AdapterRequest) -> Result<Answer, AdapterError> {
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
                Ok(Attempt::Done(answer)) => break Ok(answer),
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

#[cfg(feature = "runtime")]
/// A reqwest error for an operator, without the URL (which holds the subject, and may hold
/// an API key).
pub(crate) fn describe_error(e: reqwest::Error) -> String {
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

#[cfg(feature = "runtime")]
/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Failed(String),
}

#[cfg(feature = "runtime")]
/// Reads a body of at most `limit` bytes (refused early on a larger `Content-Length`).
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len().saturating_add(chunk.len()) > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Failed(describe_error(e))),
        }
    }
}

#[cfg(feature = "runtime")]
/// The API key setting: a header added to `headers` (sensitive), or the query parameter and
/// value to append to each URL. Errors are `(field, reason)`.
fn api_key(
    config: &HttpConfig,
    headers: &mut HeaderMap,
) -> Result<Option<(String, String)>, (String, String)> {
    let Some(path) = &config.api_key_file else {
        if config.api_key_header.is_some() || config.api_key_query.is_some() {
            return Err((
                "api_key_file".into(),
                "api_key_header and api_key_query need an api_key_file".into(),
            ));
        }
        return Ok(None);
    };
    let field = || "api_key_file".to_string();
    let key = auth::read_secret(path).map_err(|why| (field(), why))?;
    match (&config.api_key_header, &config.api_key_query) {
        (Some(name), None) => {
            let field = || "api_key_header".to_string();
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (field(), "invalid header name".to_string()))?;
            let lower = header_name.as_str();
            if RESERVED_HEADERS.contains(&lower) || lower.starts_with(FORWARDED_PREFIX) {
                return Err((field(), "this header is set by the broker".into()));
            }
            if headers.contains_key(&header_name)
                || (header_name == AUTHORIZATION
                    && (config.bearer_token_file.is_some() || config.oauth2.is_some()))
            {
                return Err((field(), format!("{name} is already set by another setting")));
            }
            let value = auth::sensitive_header(&key, path).map_err(|why| (field(), why))?;
            headers.insert(header_name, value);
            Ok(None)
        }
        (None, Some(name)) => {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
            if !valid {
                return Err((
                    "api_key_query".into(),
                    "a parameter name of 1 to 64 letters, digits, '-', '_', '.' or '~'".into(),
                ));
            }
            Ok(Some((name.clone(), key)))
        }
        _ => Err((
            field(),
            "name where the key goes: api_key_header or api_key_query (one of them)".into(),
        )),
    }
}

#[cfg(feature = "runtime")]
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

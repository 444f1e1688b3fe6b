//! How the broker proves itself to a provider, as the State's API gateways expect: an API key
//! (in a header or a query parameter) read from a file, and OAuth2 client credentials (RFC 6749,
//! 4.4) as PISTE and other gateways require. The bearer token file and mTLS are in `mod.rs`.
//!
//! Secrets are read from files when the adapter is built (at start and on every reload), kept
//! in memory only, and never written to a log, an error or the registry: header values are
//! marked sensitive, errors name the file and never its content.
//!
//! The OAuth2 access token is fetched with the `oauth2` crate over the adapter's own reqwest
//! client (same CA file, same proxy, no second HTTP stack), cached until shortly before it
//! expires, fetched once for all the calls waiting for it, and fetched again once when the
//! provider answers 401 (the call is then retried once with the new token).

use std::path::PathBuf;
#[cfg(feature = "runtime")]
use std::{fs, future::Future, path::Path, pin::Pin, time::Duration};

#[cfg(feature = "runtime")]
use oauth2::basic::{BasicClient, BasicErrorResponseType};
#[cfg(feature = "runtime")]
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
#[cfg(feature = "runtime")]
use reqwest::StatusCode;
#[cfg(feature = "runtime")]
use reqwest::header::HeaderValue;
#[cfg(feature = "runtime")]
use tokio::time::Instant;

#[cfg(feature = "runtime")]
use crate::error::AdapterError;

#[cfg(feature = "runtime")]
/// Largest token endpoint answer read (a token response is a few KiB at most).
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

#[cfg(feature = "runtime")]
/// Longest a fetched token is renewed before it expires.
const MAX_RENEW_MARGIN: Duration = Duration::from_secs(30);

#[cfg(feature = "runtime")]
/// Longest a fetched token is kept, whatever `expires_in` the token endpoint gives: its
/// lifetime is the endpoint's choice, up to `u64::MAX` seconds, which no clock can add.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// OAuth2 client credentials (the `oauth2` setting of an http adapter).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint, `https://` (trusted through the adapter's `ca_file`, reached through
    /// its `proxy`). Never plain `http://`: the client secret would travel in clear.
    pub token_url: String,
    /// File holding the client id (trimmed).
    pub client_id_file: PathBuf,
    /// File holding the client secret (trimmed).
    pub client_secret_file: PathBuf,
    /// Scopes asked for, space-separated (none by default).
    #[serde(default)]
    pub scope: Option<String>,
    /// How the client authenticates to the token endpoint: `basic` (HTTP Basic, the default,
    /// which RFC 6749 requires every server to support) or `request_body` (`client_id` and
    /// `client_secret` as form fields, as some gateways document).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// How the client id and secret reach the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749, 2.3.1).
    #[default]
    Basic,
    /// Form fields `client_id` and `client_secret`.
    RequestBody,
}

#[cfg(feature = "runtime")]
/// Reads a secret file: trimmed, non-empty. The error names the file, never its content.
pub(crate) fn read_secret(path: &Path) -> Result<String, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

#[cfg(feature = "runtime")]
/// A secret as a header value, marked sensitive (never printed by `Debug`).
pub(crate) fn sensitive_header(value: &str, path: &Path) -> Result<HeaderValue, String> {
    let mut header = HeaderValue::from_str(value).map_err(|_| {
        format!(
            "{} holds characters not allowed in a header",
            path.display()
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

#[cfg(feature = "runtime")]
type TokenClient =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

#[cfg(feature = "runtime")]
/// The OAuth2 token caches of a registry's http adapters, one per client credential: the types
/// of one provider reached with one client id at one token endpoint share one token. With a
/// cache each, they would fetch one each, and a gateway that keeps only the newest token it
/// issued would have them refuse each other's (401, then a new token, then the other's 401).
#[derive(Default)]
pub struct TokenCaches {
    by_credential: std::collections::HashMap<[u8; 32], std::sync::Arc<OAuth2>>,
}

#[cfg(feature = "runtime")]
impl TokenCaches {
    /// The cache for the credential `key` (see [`credential_key`]), made by `make` the first
    /// time.
    pub(crate) fn get_or_make(
        &mut self,
        key: [u8; 32],
        make: impl FnOnce() -> Result<OAuth2, (String, String)>,
    ) -> Result<std::sync::Arc<OAuth2>, (String, String)> {
        if let Some(shared) = self.by_credential.get(&key) {
            return Ok(shared.clone());
        }
        let made = std::sync::Arc::new(make()?);
        self.by_credential.insert(key, made.clone());
        Ok(made)
    }
}

#[cfg(feature = "runtime")]
/// What makes two adapters' OAuth2 settings one credential: the token endpoint, the client id
/// and secret (their contents, hashed: never kept), the scopes, the client authentication, and
/// `transport` (what reaches the endpoint: CA, client certificate, proxy).
pub(crate) fn credential_key(
    config: &OAuth2Config,
    transport: &str,
) -> Result<[u8; 32], (String, String)> {
    use sha2::Digest as _;
    let field = |f: &str| format!("oauth2.{f}");
    let id = read_secret(&config.client_id_file).map_err(|why| (field("client_id_file"), why))?;
    let secret = read_secret(&config.client_secret_file)
        .map_err(|why| (field("client_secret_file"), why))?;
    let mut hash = sha2::Sha256::new();
    for part in [
        config.token_url.as_str(),
        &id,
        &secret,
        config.scope.as_deref().unwrap_or_default(),
        &format!("{:?}", config.client_auth),
        transport,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    Ok(hash.finalize().into())
}

#[cfg(feature = "runtime")]
/// An access token as sent (`Bearer <token>`), with the generation it belongs to.
#[derive(Clone)]
pub(crate) struct Token {
    /// The `Authorization` header value, sensitive.
    pub header: HeaderValue,
    generation: u64,
}

#[cfg(feature = "runtime")]
struct Cached {
    token: Token,
    /// When to fetch a new one; `None` when the endpoint gave no lifetime (kept until a 401).
    renew_at: Option<Instant>,
}

#[cfg(feature = "runtime")]
/// OAuth2 client credentials with a cached access token.
pub(crate) struct OAuth2 {
    client: TokenClient,
    scopes: Vec<Scope>,
    transport: Transport,
    cached: std::sync::Mutex<Option<Cached>>,
    /// Held while a token is fetched, so that the calls waiting for one share one fetch.
    fetching: tokio::sync::Mutex<u64>,
}

#[cfg(feature = "runtime")]
impl OAuth2 {
    /// Reads the client id and secret files and checks the token URL. Errors are
    /// `(field, reason)`, the field relative to the adapter (`oauth2.client_id_file`).
    pub(crate) fn new(
        config: &OAuth2Config,
        http: reqwest::Client,
    ) -> Result<OAuth2, (String, String)> {
        let field = |f: &str| format!("oauth2.{f}");
        let url = reqwest::Url::parse(&config.token_url)
            .map_err(|e| (field("token_url"), format!("not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err((
                field("token_url"),
                "an http(s) URL with a host is needed".into(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err((
                field("token_url"),
                "credentials in the URL are not allowed (use client_id_file and \
                 client_secret_file)"
                    .into(),
            ));
        }
        let token_url = TokenUrl::new(config.token_url.clone())
            .map_err(|e| (field("token_url"), format!("not a valid URL: {e}")))?;
        let client_id =
            read_secret(&config.client_id_file).map_err(|why| (field("client_id_file"), why))?;
        let client_secret = read_secret(&config.client_secret_file)
            .map_err(|why| (field("client_secret_file"), why))?;
        let scopes = config
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(|s| Scope::new(s.to_string()))
            .collect();
        let client = BasicClient::new(ClientId::new(client_id))
            .set_client_secret(ClientSecret::new(client_secret))
            .set_token_uri(token_url)
            .set_auth_type(match config.client_auth {
                ClientAuth::Basic => AuthType::BasicAuth,
                ClientAuth::RequestBody => AuthType::RequestBody,
            });
        Ok(OAuth2 {
            client,
            scopes,
            transport: Transport { client: http },
            cached: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(0),
        })
    }

    /// The cached token while it is fresh, else a new one.
    pub(crate) async fn token(&self) -> Result<Token, AdapterError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let mut generation = self.fetching.lock().await;
        // Another call may have fetched one while this one waited.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        self.fetch(&mut generation).await
    }

    /// A new token after the provider refused `stale` (401), unless another call already
    /// replaced it.
    pub(crate) async fn renew(&self, stale: &Token) -> Result<Token, AdapterError> {
        let mut generation = self.fetching.lock().await;
        if *generation > stale.generation
            && let Some(token) = self.fresh()
        {
            return Ok(token);
        }
        self.fetch(&mut generation).await
    }

    fn fresh(&self) -> Option<Token> {
        let cached = self.cached.lock().ok()?;
        let cached = cached.as_ref()?;
        match cached.renew_at {
            Some(at) if Instant::now() >= at => None,
            _ => Some(cached.token.clone()),
        }
    }

    async fn fetch(&self, generation: &mut u64) -> Result<Token, AdapterError> {
        let started = Instant::now();
        let mut request = self.client.exchange_client_credentials();
        for scope in &self.scopes {
            request = request.add_scope(scope.clone());
        }
        let answer = request
            .request_async(&self.transport)
            .await
            .map_err(token_error)?;
        let header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token().secret()))
            .map_err(|_| AdapterError::Unavailable {
                reason: "the OAuth2 token endpoint gave a token that cannot be sent in a header"
                    .into(),
                retry_after: None,
            })
            .map(|mut h| {
                h.set_sensitive(true);
                h
            })?;
        let lifetime = answer.expires_in();
        // Checked anyway: a clock that cannot reach the renewal keeps the token until a 401,
        // as one without `expires_in`.
        let renew_at = lifetime.and_then(|d| {
            let d = d.min(MAX_TOKEN_LIFETIME);
            started.checked_add(d.saturating_sub((d / 10).min(MAX_RENEW_MARGIN)))
        });
        *generation += 1;
        let token = Token {
            header,
            generation: *generation,
        };
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(Cached {
                token: token.clone(),
                renew_at,
            });
        }
        tracing::info!(
            expires_in_s = lifetime.map(|d| d.as_secs()),
            latency_ms = started.elapsed().as_millis() as u64,
            "http adapter: OAuth2 access token fetched"
        );
        Ok(token)
    }
}

#[cfg(feature = "runtime")]
/// A token endpoint failure as the provider's failure: refused client credentials are
/// [`AdapterError::AuthFailed`]; an endpoint that cannot answer is `Unavailable` (with its
/// `Retry-After` on a 429 or 503, which holds the provider's calls as any throttling does).
fn token_error(
    e: RequestTokenError<TransportError, oauth2::basic::BasicErrorResponse>,
) -> AdapterError {
    match e {
        RequestTokenError::ServerResponse(answer) => {
            let code = match answer.error() {
                BasicErrorResponseType::Extension(_) => "an extension error",
                known => known.as_ref(),
            };
            AdapterError::AuthFailed(format!(
                "the OAuth2 token endpoint refused the client credentials ({code})"
            ))
        }
        RequestTokenError::Request(TransportError::Refused(status)) => AdapterError::AuthFailed(
            format!("the OAuth2 token endpoint refused the client credentials (HTTP {status})"),
        ),
        RequestTokenError::Request(TransportError::Unavailable {
            status,
            retry_after,
        }) => AdapterError::Unavailable {
            reason: format!("the OAuth2 token endpoint answered HTTP {status}"),
            retry_after,
        },
        RequestTokenError::Request(TransportError::Failed(why)) => AdapterError::Unavailable {
            reason: format!("the OAuth2 token endpoint: {why}"),
            retry_after: None,
        },
        RequestTokenError::Parse(..) | RequestTokenError::Other(_) => AdapterError::Unavailable {
            reason: "the OAuth2 token endpoint's answer is not a token response".into(),
            retry_after: None,
        },
    }
}

#[cfg(feature = "runtime")]
/// Why the token endpoint gave no usable answer (before `oauth2` reads it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// 401 or 403: the client is refused.
    #[error("HTTP {0}")]
    Refused(u16),
    /// 429 or 5xx.
    #[error("HTTP {status}")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer, or one too large.
    #[error("{0}")]
    Failed(String),
}

#[cfg(feature = "runtime")]
/// `oauth2`'s HTTP client over the adapter's reqwest client: bounded answers, no redirects
/// (the client follows none), statuses that `oauth2` cannot tell apart sorted out here.
struct Transport {
    client: reqwest::Client,
}

#[cfg(feature = "runtime")]
impl<'c> AsyncHttpClient<'c> for Transport {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let url = reqwest::Url::parse(&parts.uri.to_string())
                .map_err(|_| TransportError::Failed("invalid token URL".into()))?;
            let mut response = self
                .client
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| TransportError::Failed(super::describe_error(e)))?;
            let status = response.status();
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                return Err(TransportError::Refused(status.as_u16()));
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let retry_after = if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    super::retry::retry_after(response.headers(), std::time::SystemTime::now())
                        .map(|r| r.delay)
                        .filter(|d| !d.is_zero())
                } else {
                    None
                };
                return Err(TransportError::Unavailable {
                    status: status.as_u16(),
                    retry_after,
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| TransportError::Failed(super::describe_error(e)))?
            {
                if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                    return Err(TransportError::Failed(format!(
                        "answer larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = oauth2::http::Response::new(body);
            *answer.status_mut() = status;
            *answer.headers_mut() = response.headers().clone();
            Ok(answer)
        })
    }
}

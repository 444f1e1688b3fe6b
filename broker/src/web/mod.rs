//! The people's web pages (`unefois serve --web-listen`): server-rendered, French, accessible,
//! working without JavaScript. Citizens log in with OpenID Connect at the registry's identity
//! provider, never with a client certificate; the pages then act as a guichet of their own (the
//! registry's participant `WebConfig::guichet`) and call the very functions the gRPC services
//! call (`accesses::list`, `consents::list`, `consents::revoke`), so that one policy decides and
//! every act is journaled as its gRPC twin.
//!
//! Bounded like the other listeners (`crate::http_listener`); every answer carries a strict
//! Content-Security-Policy (no inline script or style) and is never cached; every POST needs
//! the session's CSRF token and a same-origin `Origin` or `Sec-Fetch-Site`. No subject id or
//! claim value is ever in a URL: the person lives in the server-side session only.

mod agent_login;
mod citizen;
mod client;
mod console;
mod desk;
mod dev_idp;
mod pages;
mod paris_time;
mod providers;
mod rows;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::state::State;

pub use session::{
    MAX_PENDING_LOGINS, MAX_PENDING_LOGINS_PER_SOURCE, MAX_SESSIONS, SESSION_LIFETIME,
};

/// The participant the citizen pages act as when `--web-guichet` is not given.
pub const DEFAULT_GUICHET: &str = "espace-usager";

/// The web listener and what it serves as.
pub struct WebConfig {
    /// Where the pages are served (plain HTTP; HTTPS behind a reverse proxy, docs/web.md).
    pub listener: TcpListener,
    /// The address people reach the pages at, for the OpenID Connect redirect (`https://…`
    /// behind a proxy); by default `http://` and the listener's address.
    pub public_url: Option<String>,
    /// The registry participant (a guichet) the citizen pages act as: its `oidc_audience` is
    /// their OpenID Connect client id.
    pub guichet: String,
    /// HTTPS on the listener itself ([`tls_config`]); `None`: plain HTTP (behind a reverse
    /// proxy that terminates HTTPS, or the development setup on loopback).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The reverse proxies in front (`--web-trusted-proxy`): their `X-Forwarded-For` names the
    /// client, and the per-source connection cap does not apply to them.
    pub trusted_proxies: TrustedProxies,
}

pub use crate::forwarded::TrustedProxies;

/// A `--web-trusted-proxy`: an address or a CIDR block (`10.0.0.0/8`, `::1`).
pub fn trusted_proxy(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a CIDR block"))
}

/// The address people reach the pages at (`--web-url`), checked: `http` or `https`, a host, an
/// optional port, nothing else (no path, query, fragment or user), without its trailing `/`.
/// The OpenID Connect redirect and the same-origin check of every form are built on it.
pub fn public_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: the scheme must be https (or http)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?}: a host is required"));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || url.path() != "/"
    {
        return Err(format!(
            "{text:?}: only scheme://host[:port], without a path, query, fragment or user"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Why the pages' certificate or key cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebTlsError {
    /// A PEM file could not be read.
    #[error(transparent)]
    Pem(#[from] unefois_certs::CertError),
    /// rustls refused the pair.
    #[error("{path}: {message}")]
    Rustls {
        /// The certificate file.
        path: std::path::PathBuf,
        /// rustls's reason.
        message: String,
    },
}

/// The pages' HTTPS configuration from a PEM certificate chain and its private key
/// (`--web-tls-cert`, `--web-tls-key`): TLS 1.2 and 1.3 on ring, no client certificate (people
/// log in with OpenID Connect), HTTP/1.1.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, WebTlsError> {
    let chain = unefois_certs::load_certificates(cert)?;
    let key = unefois_certs::load_private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let refused = |e: rustls::Error| WebTlsError::Rustls {
        path: cert.to_path_buf(),
        message: e.to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the pages' handlers share.
pub(crate) struct Web {
    state: Arc<State>,
    /// `scheme://host[:port]`, no trailing slash.
    base: String,
    /// Whether people reach the pages over HTTPS (cookies are then `Secure`).
    secure: bool,
    guichet: String,
    sessions: session::Sessions,
    /// The mediators' desk sessions (agents, and the person each welcomes).
    desk: session::Sessions<desk::DeskSession>,
    /// The auditors' console sessions.
    console: session::Sessions<console::ConsoleSession>,
    /// The development identity provider, when the registry the broker started with is a
    /// development federation's; served only while the registry in force still is
    /// ([`Web::dev_idp`]).
    dev_idp_at_start: Option<dev_idp::DevIdp>,
    /// Whose `X-Forwarded-For` is believed ([`client::ClientSource`]).
    trusted_proxies: TrustedProxies,
    /// How long a page may take ([`page_timeout`]).
    page_timeout: Duration,
}

/// Serves the pages on `web.listener` until `shutdown` resolves.
pub(crate) async fn serve(
    web: WebConfig,
    state: Arc<State>,
    limits: crate::listener::AcceptLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = web.listener.local_addr()?;
    let base = web
        .public_url
        .as_deref()
        .map(|u| public_url(u).unwrap_or_else(|_| u.trim_end_matches('/').to_string()))
        .unwrap_or_else(|| match web.tls {
            Some(_) => format!("https://{local}"),
            None => format!("http://{local}"),
        });
    let secure = base.starts_with("https://");
    let dev_idp = dev_idp::DevIdp::for_registry(&state.federation.registry());
    if dev_idp.is_some() {
        tracing::warn!(
            url = %format!("{base}/dev-idp/authorize"),
            "development identity provider served (development federation: test people only)"
        );
    }
    let shared = Arc::new(Web {
        state,
        base,
        secure,
        guichet: web.guichet,
        sessions: session::Sessions::new(MAX_SESSIONS, MAX_PENDING_LOGINS),
        desk: session::Sessions::<desk::DeskSession>::new(MAX_DESK_SESSIONS, MAX_PENDING_LOGINS),
        console: session::Sessions::<console::ConsoleSession>::new(
            MAX_CONSOLE_SESSIONS,
            MAX_PENDING_LOGINS,
        ),
        dev_idp_at_start: dev_idp,
        trusted_proxies: web.trusted_proxies.clone(),
        page_timeout: limits.web_page_timeout,
    });
    crate::http_listener::serve(
        crate::http_listener::HttpLimits {
            name: "web",
            max_connections: limits.web_max_connections,
            max_connections_per_source: limits.web_max_connections_per_source,
            header_timeout: limits.web_header_timeout,
            // A person who takes none of a page for as long as a page may take is gone.
            write_timeout: limits.web_page_timeout,
            gauge: |n| crate::metrics::connections_open("web", "open", n),
            proxies: web.trusted_proxies,
        },
        web.listener,
        web.tls.map(tokio_rustls::TlsAcceptor::from),
        router(shared),
        shutdown,
    )
    .await
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(pages::landing))
        .route("/accessibilite", get(pages::accessibility))
        .route("/static/site.css", get(pages::stylesheet))
        .route("/static/proofs.js", get(pages::proofs_script))
        .route("/static/verify.js", get(pages::verify_script))
        .route("/static/console.js", get(pages::console_script))
        .route("/static/session.js", get(pages::session_script))
        .route("/citizen", get(citizen::home))
        .route("/citizen/releve", get(citizen::statement))
        .route("/citizen/login", get(citizen::login))
        .route("/citizen/callback", get(citizen::callback))
        .route(
            "/citizen/consents/{id}/withdraw",
            get(citizen::confirm_withdraw).post(citizen::withdraw),
        )
        .route(
            "/citizen/mandates/{id}/revoke",
            get(citizen::confirm_revoke_mandate).post(citizen::revoke_mandate),
        )
        .route(
            "/citizen/contest/{entry}",
            get(citizen::contest_form).post(citizen::contest),
        )
        .route("/logout", post(citizen::logout))
        .route("/desk", get(desk::home))
        .route("/desk/login", get(desk::login))
        .route("/desk/callback", get(desk::callback))
        .route("/desk/logout", post(desk::logout))
        .route("/desk/person/login", get(desk::person_login))
        .route("/desk/person/callback", get(desk::person_callback))
        .route("/desk/person/end", post(desk::end_person))
        .route(
            "/desk/mandates/new",
            get(desk::new_mandate)
                .post(desk::create_mandate)
                // The signed mandate document comes with the form.
                .layer(axum::extract::DefaultBodyLimit::max(
                    desk::MAX_DOCUMENT_BYTES + MAX_FORM_BYTES,
                )),
        )
        .route("/desk/mandates/{id}", get(desk::mandate_page))
        .route("/desk/mandates/{id}/act", post(desk::act))
        .route(
            "/desk/mandates/{id}/revoke",
            get(desk::confirm_revoke).post(desk::revoke),
        )
        .route("/desk/agir", get(desk::acting_page))
        .route(
            "/desk/agir/formulaire",
            get(desk::prefilled).post(desk::prefill),
        )
        .route("/desk/agir/consentement", post(desk::grant))
        .route("/desk/agir/historique", get(desk::history))
        .route("/audit", get(console::home))
        .route("/audit/login", get(console::login))
        .route("/audit/callback", get(console::callback))
        .route("/audit/logout", post(console::logout))
        .route(
            "/audit/evenements",
            get(console::events).post(console::filter),
        )
        .route("/audit/export.csv", get(console::export_csv))
        .route("/audit/export.json", get(console::export_json))
        .route("/audit/signalements", get(console::contests))
        .route("/audit/preuves", get(console::proofs))
        .route("/audit/api/inclusion", get(console::api_inclusion))
        .route("/audit/api/coherence", get(console::api_consistency))
        .route("/audit/dossier/{n}", get(console::bundle))
        .route("/audit/verificateur.html", get(console::offline_verifier))
        .route(
            "/dev-idp/authorize",
            get(dev_idp::authorize_page).post(dev_idp::authorize),
        )
        .route(
            "/dev-idp/agents/authorize",
            get(dev_idp::agents_authorize_page).post(dev_idp::agents_authorize),
        )
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(contained))
        .layer(axum::middleware::from_fn_with_state(
            web.clone(),
            security_headers,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_PAGES,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(web)
}

/// Agents at desks at once (a structure's agents are a few; a national network, thousands).
const MAX_DESK_SESSIONS: usize = 5_000;
/// Auditors' staff at the console at once.
const MAX_CONSOLE_SESSIONS: usize = 500;
/// Pages answered at once; more wait (each is a few store reads).
const MAX_CONCURRENT_PAGES: usize = 256;
/// Largest form accepted, in bytes (the largest form is a few hundred).
const MAX_FORM_BYTES: usize = 16 * 1024;
/// The slowest upload a signed mandate's form is waited for, in bytes a second (256 kbit/s: a
/// poor mobile connection at a town hall); its 5 MiB then take 160 s more than a page.
const MIN_UPLOAD_BYTES_PER_SECOND: u64 = 32 * 1024;
/// How many pages' time the console's exports may take (up to 50,000 events read).
const EXPORT_PAGES: u32 = 3;

/// How long `request` may take before it is answered with an error page: `page` for a page,
/// more for what reads or receives more than a page.
fn page_timeout(page: Duration, request: &Request<Body>) -> Duration {
    let path = request.uri().path();
    if request.method() == axum::http::Method::POST && path == "/desk/mandates/new" {
        // The body's declared length, bounded by what the route accepts (chunked: the most).
        let most = (desk::MAX_DOCUMENT_BYTES + MAX_FORM_BYTES) as u64;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or(most, |n| n.min(most));
        page + Duration::from_secs(declared.div_ceil(MIN_UPLOAD_BYTES_PER_SECOND))
    } else if path.starts_with("/audit/export.") {
        page * EXPORT_PAGES
    } else {
        page
    }
}

/// A page that panics (a fault: none should) is answered with the error page, status 500, and
/// logged, instead of taking its connection down with it: the person reads that the service
/// failed, not that the network did, and the other pages on the connection go on.
async fn contained(request: Request<Body>, next: Next) -> Response {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("web: a page failed (a panic, reported above); answered 500");
            pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Erreur du service",
                "Le service a rencontré une erreur. Réessayez dans quelques instants ; si \
                 l'erreur revient, signalez-la.",
            )
        }
    }
}

/// The headers every answer carries: no script or style but the pages' own files, no framing,
/// no referrer, no caching (pages show a person's data), HSTS under HTTPS.
async fn security_headers(
    axum::extract::State(web): axum::extract::State<Arc<Web>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let api = request.uri().path().starts_with("/audit/api/");
    let timeout = page_timeout(web.page_timeout, &request);
    let mut response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => readable_refusal(response, api),
        Err(_) => pages::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service momentanément indisponible",
            "La page a mis trop de temps à répondre. Réessayez dans quelques instants.",
        ),
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not `no-referrer`: under it a browser sends `Origin: null` with the pages' own forms.
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::CACHE_CONTROL, "no-store");
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if web.secure {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        );
    }
    response
}

/// A request refused before any page saw it (axum's extractors: a form or query that does not
/// parse, a path segment that is not a number, a body too large or of another type; the
/// router: a method an address does not take) is answered in English plain text by axum: it
/// becomes the pages' error page in French (JSON for the console's proof API), with the same
/// status. What the refusal said is dropped, from the answer and the log alike: it may quote
/// the input, which may name a person.
fn readable_refusal(response: Response, api: bool) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|t| t.as_bytes().starts_with(b"text/plain"));
    if !status.is_client_error() || !plain || status == StatusCode::NOT_FOUND {
        return response;
    }
    tracing::info!(
        status = status.as_u16(),
        "web: request refused before any page"
    );
    let (title, text) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "Adresse utilisée autrement",
            "Cette adresse ne s'utilise pas de cette façon. Revenez à la page précédente ou à \
             l'accueil.",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "Envoi trop volumineux",
            "Les données envoyées dépassent la taille permise. Revenez à la page précédente et \
             réessayez.",
        ),
        _ => (
            "Demande illisible",
            "La demande n'a pas pu être lue : un champ manque ou n'a pas la forme attendue. \
             Revenez à la page précédente et réessayez.",
        ),
    };
    let mut page = if api {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "erreur": title }).to_string(),
        )
            .into_response()
    } else {
        pages::error_page(status, title, text)
    };
    // A 405 still says which methods the address takes.
    if let Some(allow) = response.headers().get(header::ALLOW) {
        page.headers_mut().insert(header::ALLOW, allow.clone());
    }
    page
}

impl Web {
    /// The development identity provider, while the registry in force is a development
    /// federation's with its committed key: a reload into a production registry ends it.
    fn dev_idp(&self) -> Option<&dev_idp::DevIdp> {
        let idp = self.dev_idp_at_start.as_ref()?;
        dev_idp::still_served(&self.state.federation.registry()).then_some(idp)
    }

    /// Whether a POST comes from the pages themselves: its `Origin` is the pages' origin, or,
    /// without one, `Sec-Fetch-Site` says same-origin; a browser that sends neither is judged
    /// by the CSRF token alone.
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        if let Some(origin) = headers.get(header::ORIGIN) {
            return origin.as_bytes() == self.base.as_bytes();
        }
        match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
            Some(site) => site == b"same-origin",
            None => true,
        }
    }

    /// Whether a GET that records a read (the console's events, exports, entries; the desk's
    /// history) was sent from another site: a page elsewhere that sends a logged-in auditor's
    /// browser there would have reads recorded in their name. A link of these pages, a typed
    /// address or a bookmark (`same-origin`, `none`, or a browser that does not say) passes.
    fn sent_from_elsewhere(&self, headers: &HeaderMap) -> bool {
        headers
            .get("sec-fetch-site")
            .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"))
    }

    /// The OpenID Connect client id of the citizen pages: their guichet's audience in the
    /// registry in force (`None` if the registry does not declare the guichet).
    fn client_id(&self) -> Option<String> {
        let registry = self.state.federation.registry();
        registry
            .participant(&self.guichet)
            .map(|p| p.audience().to_string())
    }

    /// Where the identity provider sends the browser back: the citizen space's `redirect_uri`.
    fn callback_url(&self) -> String {
        format!("{}/citizen/callback", self.base)
    }

    /// Where the citizens' identity provider sends back the person present at a desk.
    fn desk_person_callback_url(&self) -> String {
        format!("{}/desk/person/callback", self.base)
    }

    /// Where the agents' identity provider sends an agent back to the desk.
    fn agent_callback_url(&self) -> String {
        format!("{}/desk/callback", self.base)
    }

    /// Where the agents' identity provider sends an auditor's staff member back to the console.
    fn console_callback_url(&self) -> String {
        format!("{}/audit/callback", self.base)
    }

    /// The cookie `name` as this site names it: under HTTPS with the `__Host-` prefix, which
    /// browsers accept only from a secure origin, for the whole site and no other domain (a
    /// sibling site cannot plant one).
    fn cookie_name(&self, name: &str) -> String {
        match self.secure {
            true => format!("__Host-{name}"),
            false => name.to_string(),
        }
    }

    /// The value of this site's cookie `name` in `headers`.
    fn cookie_of<'h>(&self, headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
        cookie_value(headers, &self.cookie_name(name))
    }

    /// The cookie attributes: HttpOnly, SameSite=Lax, the whole site, `Secure` under HTTPS;
    /// `Max-Age` when `max_age` is given (zero clears it), otherwise none: a cookie of the
    /// browser session, gone when the browser closes.
    fn cookie(&self, name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
        let name = self.cookie_name(name);
        let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if let Some(age) = max_age {
            cookie += &format!("; Max-Age={}", age.as_secs());
        }
        if self.secure {
            cookie += "; Secure";
        }
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The value of cookie `name` in `headers`.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// A 303 to `to`, with `cookies` set.
fn see_other(to: &str, cookies: &[HeaderValue]) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    for cookie in cookies {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

/// Whether two secrets are equal, in a time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// 32 random bytes, base64url: session ids, CSRF tokens, OpenID Connect `state` and `nonce`,
/// PKCE verifiers, authorization codes. `None` only if the OS's generator fails: the page then
/// fails rather than hand out a guessable token.
fn random_token() -> Option<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// A page that panics is answered 500 with the error page, and the next page on the same
    /// service is answered as usual. (Without the layer the panic went up to the connection's
    /// task, which ended: the client read a closed connection.)
    #[tokio::test]
    async fn a_page_that_panics_is_answered_with_the_error_page() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        let router = axum::Router::new()
            .route(
                "/panne",
                axum::routing::get(|| async {
                    if std::hint::black_box(true) {
                        panic!("a fault in a page");
                    }
                    "jamais"
                }),
            )
            .route("/", axum::routing::get(|| async { "accueil" }))
            .layer(axum::middleware::from_fn(super::contained));
        let get = |path: &str| Request::get(path).body(Body::empty()).expect("a request");
        let failed = router
            .clone()
            .oneshot(get("/panne"))
            .await
            .expect("answered");
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(failed.into_body(), 1 << 20)
            .await
            .expect("a body");
        let page = String::from_utf8_lossy(&body);
        assert!(page.contains("Erreur du service"), "{page}");
        assert!(!page.contains("a fault in a page"), "{page}");
        let next = router.oneshot(get("/")).await.expect("answered");
        assert_eq!(next.status(), StatusCode::OK);
    }

    #[test]
    fn the_public_url_is_an_origin() {
        for (given, expect) in [
            (
                "https://usager.example.gouv.fr",
                Some("https://usager.example.gouv.fr"),
            ),
            (
                "https://usager.example.gouv.fr/",
                Some("https://usager.example.gouv.fr"),
            ),
            ("http://127.0.0.1:8080", Some("http://127.0.0.1:8080")),
            (
                "HTTPS://Usager.Example.fr:443/",
                Some("https://usager.example.fr"),
            ),
            ("https://usager.example.fr/pages", None),
            ("https://usager.example.fr/?a=b", None),
            ("https://user@usager.example.fr", None),
            ("javascript:alert(1)", None),
            ("ftp://usager.example.fr", None),
            ("usager.example.fr", None),
        ] {
            assert_eq!(super::public_url(given).ok().as_deref(), expect, "{given}");
        }
    }
}

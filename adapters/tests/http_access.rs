//! The `http` adapter's access to providers as the State's APIs expect it, against real servers
//! on 127.0.0.1:0: `Retry-After` honoured, error codes, refused credentials, API keys, OAuth2
//! client credentials (a token endpoint served by axum), and a forward proxy written here with
//! tokio (counting its `CONNECT` tunnels and forwarded requests).

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use unefois_adapters::{
    Adapter, AdapterError, AdapterRequest, ClaimSpec, ClaimType, ClaimValue, HttpAdapter,
    HttpConfig, LegalBasis,
};

const TYPE: &str = "caf.quotient_familial";
const GOOD_BODY: &str = r#"{"data":{"quotient_familial":612}}"#;
/// API Particulier's error document for "dossier allocataire absent".
const UNKNOWN_PERSON: &str = r#"{"errors":[{"code":"37003","title":"Entité non trouvée","detail":"Dossier allocataire inexistant.","source":null,"meta":{"provider":"CNAF"}}]}"#;

fn schema() -> Vec<ClaimSpec> {
    vec![ClaimSpec {
        name: "quotient_familial".into(),
        claim_type: ClaimType::Integer,
    }]
}

/// A configuration for `url` with `extra` settings (JSON, as the registry's TOML reads).
fn config(url: &str, extra: serde_json::Value) -> HttpConfig {
    let mut value = serde_json::json!({
        "url": url,
        "claims": { "quotient_familial": "/data/quotient_familial" },
        "timeout_ms": 2000,
        "retries": 2,
    });
    if let (Some(base), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(value).unwrap()
}

fn adapter(url: &str, extra: serde_json::Value) -> HttpAdapter {
    HttpAdapter::new(TYPE, &schema(), &config(url, extra)).unwrap()
}

fn request() -> AdapterRequest {
    AdapterRequest {
        subject: "test:alice".into(),
        attestation_type: TYPE.into(),
        claims: vec!["quotient_familial".into()],
        consumer: "mairie-lyon".into(),
        consumer_siret: None,
        purpose: "tarification_cantine".into(),
        purpose_label: "Tarif de la cantine".into(),
        civil_status: None,
        legal_basis: LegalBasis::Law {
            citation: "CRPA, art. L. 114-8".into(),
        },
        request_id: "01J0000000000000000000000".into(),
        deadline: Instant::now() + Duration::from_secs(5),
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A provider answering each request with `answer(request number from 1, uri, headers)`,
/// recording when each request came.
#[derive(Clone, Default)]
struct Provider {
    at: Arc<Mutex<Vec<Instant>>>,
    seen: Arc<Mutex<Vec<(Uri, HeaderMap)>>>,
}

impl Provider {
    fn hits(&self) -> usize {
        self.at.lock().unwrap().len()
    }
}

async fn provider<F>(answer: F) -> (SocketAddr, Provider)
where
    F: Fn(usize, &Uri, &HeaderMap) -> Response + Clone + Send + Sync + 'static,
{
    let provider = Provider::default();
    let recorded = provider.clone();
    let router = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let recorded = recorded.clone();
        let answer = answer.clone();
        async move {
            let n = {
                let mut at = recorded.at.lock().unwrap();
                at.push(Instant::now());
                at.len()
            };
            let response = answer(n, &uri, &headers);
            recorded.seen.lock().unwrap().push((uri, headers));
            response
        }
    });
    (serve(router).await, provider)
}

fn ok() -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        GOOD_BODY,
    )
        .into_response()
}

// ------------------------------------------------------------------- item 1: Retry-After

#[tokio::test]
async fn a_429_or_503_is_never_retried_before_its_retry_after() {
    // Seconds: one request, answered at once with the delay (the broker then holds calls).
    let (addr, seen) = provider(|_, _, _| {
        (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")], "").into_response()
    })
    .await;
    let started = Instant::now();
    let err = adapter(&format!("http://{addr}/{{subject}}"), serde_json::json!({}))
        .fetch(&request())
        .await
        .unwrap_err();
    let AdapterError::Unavailable {
        retry_after,
        reason,
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(retry_after, Some(Duration::from_secs(2)));
    assert!(
        reason.contains("429") && reason.contains("wait 2 s"),
        "{reason}"
    );
    assert_eq!(seen.hits(), 1, "not retried sooner than asked");
    assert!(started.elapsed() < Duration::from_millis(500));

    // An HTTP-date on a 503: the delay until then.
    let (addr, seen) = provider(|_, _, _| {
        let at = std::time::SystemTime::now() + Duration::from_secs(3);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", httpdate::fmt_http_date(at))],
            "",
        )
            .into_response()
    })
    .await;
    let err = adapter(&format!("http://{addr}/{{subject}}"), serde_json::json!({}))
        .fetch(&request())
        .await
        .unwrap_err();
    let AdapterError::Unavailable {
        retry_after: Some(delay),
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert!(
        (Duration::from_secs(2)..=Duration::from_secs(3)).contains(&delay),
        "{delay:?}"
    );
    assert_eq!(seen.hits(), 1);

    // An absurd delay is capped.
    let (addr, _) = provider(|_, _, _| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "86400")],
            "",
        )
            .into_response()
    })
    .await;
    let err = adapter(&format!("http://{addr}/{{subject}}"), serde_json::json!({}))
        .fetch(&request())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AdapterError::Unavailable { retry_after: Some(d), .. } if d == unefois_adapters::http::MAX_RETRY_AFTER),
        "{err:?}"
    );

    // Without Retry-After (or with 0), a GET is retried after a short pause, as before.
    let (addr, seen) = provider(|n, _, _| {
        if n < 3 {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], "").into_response()
        } else {
            ok()
        }
    })
    .await;
    let claims = adapter(&format!("http://{addr}/{{subject}}"), serde_json::json!({}))
        .fetch(&request())
        .await
        .unwrap();
    assert_eq!(claims["quotient_familial"], ClaimValue::Integer(612));
    assert_eq!(seen.hits(), 3);
}

// ------------------------------------------------------------------- item 2: error codes

fn particulier_errors() -> serde_json::Value {
    serde_json::json!({
        "errors": {
            "code_pointer": "/errors/0/code",
            "codes": { "37003": "not_found", "37999": "unavailable", "36001": "invalid" }
        }
    })
}

/// API Particulier's shape: a known route answers 404 + code 37003 for an unknown person; any
/// other route is a plain 404; `/v3/broken` answers 502 with a code listed as invalid.
async fn particulier() -> (SocketAddr, Provider) {
    provider(|_, uri, _| {
        let json = [("content-type", "application/json")];
        match uri.path() {
            "/v3/dss/quotient_familial/test%3Aalice" => ok(),
            p if p.starts_with("/v3/dss/quotient_familial/") => {
                (StatusCode::NOT_FOUND, json, UNKNOWN_PERSON).into_response()
            }
            "/v3/broken/test%3Aalice" => (
                StatusCode::BAD_GATEWAY,
                json,
                r#"{"errors":[{"code":"36001"}]}"#,
            )
                .into_response(),
            _ => (StatusCode::NOT_FOUND, "<html>Not Found</html>").into_response(),
        }
    })
    .await
}

#[tokio::test]
async fn error_codes_tell_an_unknown_person_from_a_wrong_route() {
    let (addr, seen) = particulier().await;
    let good = format!("http://{addr}/v3/dss/quotient_familial/{{subject}}");
    let wrong = format!("http://{addr}/v3/dss/quotient_familal/{{subject}}");
    let mut unknown = request();
    unknown.subject = "test:nobody".into();

    // With the table: code 37003 is "not found"; a wrong route is a provider failure.
    let table = adapter(&good, particulier_errors());
    assert!(table.fetch(&request()).await.is_ok());
    let err = table.fetch(&unknown).await.unwrap_err();
    assert!(matches!(err, AdapterError::NotFound), "{err:?}");
    let err = adapter(&wrong, particulier_errors())
        .fetch(&request())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::Unavailable { reason, retry_after: None } if reason.contains("not one of its not-found codes")),
        "{err:?}"
    );
    // A listed code decides over the status: 502 with an "invalid" code is not retried.
    let before = seen.hits();
    let err = adapter(
        &format!("http://{addr}/v3/broken/{{subject}}"),
        particulier_errors(),
    )
    .fetch(&request())
    .await
    .unwrap_err();
    assert!(
        matches!(&err, AdapterError::InvalidResponse(why) if why.contains("\"36001\"")),
        "{err:?}"
    );
    assert_eq!(seen.hits(), before + 1);

    // Without a table: today's behaviour, a wrong route reads as an unknown person.
    let err = adapter(&wrong, serde_json::json!({}))
        .fetch(&request())
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::NotFound), "{err:?}");
}

#[tokio::test]
async fn refused_credentials_are_auth_failures_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-bearer\n").unwrap();
    for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
        let (addr, seen) = provider(move |_, _, _| (status, "no").into_response()).await;
        let err = adapter(
            &format!("http://{addr}/{{subject}}"),
            serde_json::json!({ "bearer_token_file": token }),
        )
        .fetch(&request())
        .await
        .unwrap_err();
        let AdapterError::AuthFailed(why) = &err else {
            panic!("{err:?}")
        };
        assert!(why.contains(status.as_str()), "{why}");
        assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{err:?}");
        assert_eq!(seen.hits(), 1, "{status}: not retried");
        let (_, headers) = seen.seen.lock().unwrap()[0].clone();
        assert_eq!(headers["authorization"], "Bearer s3cr3t-bearer");
    }
}

// ------------------------------------------------------------------- item 6: API keys, OAuth2

#[tokio::test]
async fn an_api_key_goes_in_its_header_or_its_query_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api.key");
    std::fs::write(&key, "  k3y-0f-the-mairie \n").unwrap();
    let (addr, seen) = provider(|_, _, _| ok()).await;

    let header = adapter(
        &format!("http://{addr}/v3/{{subject}}"),
        serde_json::json!({ "api_key_file": key, "api_key_header": "X-Api-Key" }),
    );
    header.fetch(&request()).await.unwrap();
    let (uri, headers) = seen.seen.lock().unwrap()[0].clone();
    assert_eq!(headers["x-api-key"], "k3y-0f-the-mairie");
    assert_eq!(uri.query(), None);
    assert!(!format!("{header:?}").contains("k3y"), "Debug shows no key");

    let query = adapter(
        &format!("http://{addr}/v3/{{subject}}?recipient=21690123100011"),
        serde_json::json!({ "api_key_file": key, "api_key_query": "token" }),
    );
    query.fetch(&request()).await.unwrap();
    let (uri, headers) = seen.seen.lock().unwrap()[1].clone();
    assert_eq!(
        uri.query(),
        Some("recipient=21690123100011&token=k3y-0f-the-mairie")
    );
    assert!(headers.get("x-api-key").is_none());

    // A failing call never shows the URL, which holds the key.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = adapter(
        &format!("http://{closed}/v3/{{subject}}"),
        serde_json::json!({ "api_key_file": key, "api_key_query": "token", "retries": 0 }),
    )
    .fetch(&request())
    .await
    .unwrap_err();
    assert!(matches!(err, AdapterError::Unavailable { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("k3y"), "{err:?}");
}

#[tokio::test]
async fn api_key_and_oauth2_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api.key");
    std::fs::write(&key, "k").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let url = "http://127.0.0.1:9/{subject}";
    let cases = [
        (serde_json::json!({ "api_key_file": key }), "api_key_file"),
        (
            serde_json::json!({ "api_key_file": key, "api_key_header": "X-K", "api_key_query": "k" }),
            "api_key_file",
        ),
        (
            serde_json::json!({ "api_key_header": "X-Api-Key" }),
            "api_key_file",
        ),
        (
            serde_json::json!({ "api_key_file": empty, "api_key_header": "X-K" }),
            "api_key_file",
        ),
        (
            serde_json::json!({ "api_key_file": key, "api_key_header": "Host" }),
            "api_key_header",
        ),
        (
            serde_json::json!({ "api_key_file": key, "api_key_query": "a b" }),
            "api_key_query",
        ),
        (
            serde_json::json!({ "oauth2": { "token_url": "not a url", "client_id_file": key, "client_secret_file": key } }),
            "oauth2.token_url",
        ),
        (
            serde_json::json!({ "oauth2": { "token_url": "https://idp.test/token", "client_id_file": key, "client_secret_file": empty } }),
            "oauth2.client_secret_file",
        ),
        (
            serde_json::json!({ "bearer_token_file": key, "oauth2": { "token_url": "https://idp.test/token", "client_id_file": key, "client_secret_file": key } }),
            "oauth2",
        ),
        (
            serde_json::json!({ "errors": { "code_pointer": "errors/0/code" } }),
            "errors.code_pointer",
        ),
        (serde_json::json!({ "no_proxy": ["localhost"] }), "proxy"),
    ];
    for (extra, field) in cases {
        let e = HttpAdapter::new(TYPE, &schema(), &config(url, extra.clone())).unwrap_err();
        assert_eq!(e.field, field, "{extra}: {e}");
        assert!(!e.to_string().contains("k3y"), "{e}");
    }
}

/// An OAuth2 token endpoint (axum) and a provider accepting only the latest token issued.
#[derive(Default)]
struct Gateway {
    issued: AtomicUsize,
    /// Requests to the token endpoint: (authorization header, form body).
    token_requests: Mutex<Vec<(Option<String>, String)>>,
    provider_hits: AtomicUsize,
    /// Lifetime given with each token (seconds).
    expires_in: AtomicU64,
    /// When set, the provider refuses every token.
    refuse_all: std::sync::atomic::AtomicBool,
    /// The token endpoint's answer: 0 a token, else this status with an OAuth2 error.
    token_status: std::sync::atomic::AtomicU16,
}

async fn gateway() -> (SocketAddr, Arc<Gateway>) {
    let gw = Arc::new(Gateway::default());
    gw.expires_in.store(3600, Ordering::SeqCst);
    let (g1, g2) = (gw.clone(), gw.clone());
    let router = Router::new()
        .route(
            "/oauth/token",
            post(move |headers: HeaderMap, body: Bytes| {
                let gw = g1.clone();
                async move {
                    gw.token_requests.lock().unwrap().push((
                        headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string()),
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                    let status = gw.token_status.load(Ordering::SeqCst);
                    if status != 0 {
                        return (
                            StatusCode::from_u16(status).unwrap(),
                            [("content-type", "application/json")],
                            r#"{"error":"invalid_client"}"#.to_string(),
                        )
                            .into_response();
                    }
                    let n = gw.issued.fetch_add(1, Ordering::SeqCst) + 1;
                    let body = serde_json::json!({
                        "access_token": format!("tok-{n}"),
                        "token_type": "Bearer",
                        "expires_in": gw.expires_in.load(Ordering::SeqCst),
                    });
                    (
                        StatusCode::OK,
                        [("content-type", "application/json")],
                        body.to_string(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/v3/{subject}",
            get(move |headers: HeaderMap| {
                let gw = g2.clone();
                async move {
                    gw.provider_hits.fetch_add(1, Ordering::SeqCst);
                    let latest = format!("Bearer tok-{}", gw.issued.load(Ordering::SeqCst));
                    let sent = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if gw.refuse_all.load(Ordering::SeqCst) || sent != Some(latest.as_str()) {
                        return (StatusCode::UNAUTHORIZED, "expired").into_response();
                    }
                    ok()
                }
            }),
        );
    (serve(router).await, gw)
}

fn oauth2_adapter(addr: SocketAddr, dir: &std::path::Path, client_auth: &str) -> HttpAdapter {
    std::fs::write(dir.join("client_id"), "mairie-lyon\n").unwrap();
    std::fs::write(dir.join("client_secret"), "s3cr3t-client\n").unwrap();
    adapter(
        &format!("http://{addr}/v3/{{subject}}"),
        serde_json::json!({
            "retries": 0,
            "oauth2": {
                "token_url": format!("http://{addr}/oauth/token"),
                "client_id_file": dir.join("client_id"),
                "client_secret_file": dir.join("client_secret"),
                "scope": "api_particulier quotient_familial",
                "client_auth": client_auth,
            }
        }),
    )
}

/// Two types of one provider reached with one client credential share one token: with a cache
/// each, against a gateway that keeps only the newest token it issued, each one's renewal
/// refused the other's token, and calls failed PROVIDER_AUTH_FAILED.
#[tokio::test]
async fn oauth2_types_of_one_credential_share_one_token() {
    let (addr, gw) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client_id"), "mairie-lyon\n").unwrap();
    std::fs::write(dir.path().join("client_secret"), "s3cr3t-client\n").unwrap();
    let settings = || {
        config(
            &format!("http://{addr}/v3/{{subject}}"),
            serde_json::json!({
                "retries": 0,
                "oauth2": {
                    "token_url": format!("http://{addr}/oauth/token"),
                    "client_id_file": dir.path().join("client_id"),
                    "client_secret_file": dir.path().join("client_secret"),
                    "scope": "api_particulier quotient_familial",
                }
            }),
        )
    };
    let mut caches = unefois_adapters::TokenCaches::default();
    let adapters: Vec<Arc<HttpAdapter>> = (0..2)
        .map(|_| {
            Arc::new(
                HttpAdapter::sharing_tokens(TYPE, &schema(), &settings(), &mut caches).unwrap(),
            )
        })
        .collect();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let adapter = adapters[i % 2].clone();
            tokio::spawn(async move { adapter.fetch(&request()).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(gw.token_requests.lock().unwrap().len(), 1, "one token");

    // Another client secret is another credential: a token of its own.
    std::fs::write(dir.path().join("client_secret"), "another\n").unwrap();
    let other = HttpAdapter::sharing_tokens(TYPE, &schema(), &settings(), &mut caches).unwrap();
    other.fetch(&request()).await.unwrap();
    assert_eq!(gw.token_requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn oauth2_one_token_serves_many_calls_and_a_401_renews_it_once() {
    let (addr, gw) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let adapter = Arc::new(oauth2_adapter(addr, dir.path(), "basic"));

    // 20 calls at once: one token fetch.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let adapter = adapter.clone();
            tokio::spawn(async move { adapter.fetch(&request()).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(gw.token_requests.lock().unwrap().len(), 1);
    assert_eq!(gw.provider_hits.load(Ordering::SeqCst), 20);
    let (authorization, form) = gw.token_requests.lock().unwrap()[0].clone();
    // HTTP Basic with id:secret (RFC 6749, 2.3.1), the grant and the scopes in the form.
    assert_eq!(
        authorization.as_deref(),
        Some("Basic bWFpcmllLWx5b246czNjcjN0LWNsaWVudA==")
    );
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(
        form.contains("scope=api_particulier+quotient_familial"),
        "{form}"
    );
    assert!(!form.contains("s3cr3t"), "{form}");

    // The gateway revokes it (a new token was issued elsewhere): the next call gets a 401,
    // fetches one new token and is retried once.
    gw.issued.fetch_add(1, Ordering::SeqCst);
    adapter.fetch(&request()).await.unwrap();
    assert_eq!(gw.token_requests.lock().unwrap().len(), 2);
    assert_eq!(gw.provider_hits.load(Ordering::SeqCst), 22);

    // Refused even with a new token: AUTH_FAILED after one renewal, no loop.
    gw.refuse_all.store(true, Ordering::SeqCst);
    let err = adapter.fetch(&request()).await.unwrap_err();
    assert!(matches!(err, AdapterError::AuthFailed(_)), "{err:?}");
    assert_eq!(gw.token_requests.lock().unwrap().len(), 3);
    assert_eq!(gw.provider_hits.load(Ordering::SeqCst), 24);
    assert!(!format!("{err:?} {adapter:?}").contains("tok-"), "{err:?}");
}

#[tokio::test]
async fn oauth2_tokens_are_renewed_shortly_before_they_expire() {
    let (addr, gw) = gateway().await;
    gw.expires_in.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let adapter = oauth2_adapter(addr, dir.path(), "request_body");
    adapter.fetch(&request()).await.unwrap();
    adapter.fetch(&request()).await.unwrap();
    assert_eq!(gw.token_requests.lock().unwrap().len(), 1, "cached");
    // Renewed a tenth of its life before it expires: after 0.9 s, a new fetch.
    tokio::time::sleep(Duration::from_millis(950)).await;
    adapter.fetch(&request()).await.unwrap();
    assert_eq!(gw.token_requests.lock().unwrap().len(), 2);
    assert_eq!(gw.provider_hits.load(Ordering::SeqCst), 3);
    // request_body: the client's id and secret as form fields, no Basic header.
    let (authorization, form) = gw.token_requests.lock().unwrap()[0].clone();
    assert_eq!(authorization, None);
    assert!(
        form.contains("client_id=mairie-lyon") && form.contains("client_secret=s3cr3t-client"),
        "{form}"
    );
}

#[tokio::test]
async fn a_token_lifetime_past_any_clock_is_served_without_a_panic() {
    let (addr, gw) = gateway().await;
    // The endpoint's `expires_in` is any u64: one that no `Instant` can add once panicked.
    gw.expires_in.store(u64::MAX, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let adapter = oauth2_adapter(addr, dir.path(), "basic");
    adapter.fetch(&request()).await.unwrap();
    adapter.fetch(&request()).await.unwrap();
    assert_eq!(gw.token_requests.lock().unwrap().len(), 1, "cached");
    assert_eq!(gw.provider_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn token_endpoint_failures_are_auth_failures_or_unavailable() {
    let (addr, gw) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let adapter = oauth2_adapter(addr, dir.path(), "basic");
    for (status, auth_failed) in [(400, true), (401, true), (503, false), (500, false)] {
        gw.token_status.store(status, Ordering::SeqCst);
        let err = adapter.fetch(&request()).await.unwrap_err();
        match (&err, auth_failed) {
            (AdapterError::AuthFailed(why), true) => {
                assert!(why.contains("token endpoint refused"), "{why}")
            }
            (AdapterError::Unavailable { reason, .. }, false) => {
                assert!(reason.contains("token endpoint"), "{reason}")
            }
            _ => panic!("{status}: {err:?}"),
        }
        assert!(!format!("{err:?}").contains("s3cr3t"), "{err:?}");
    }
    assert_eq!(gw.provider_hits.load(Ordering::SeqCst), 0, "never called");
}

// ------------------------------------------------------------------- item 7: forward proxy

/// What the forward proxy saw.
#[derive(Default)]
struct ProxySeen {
    connects: AtomicUsize,
    forwarded: AtomicUsize,
    proxy_authorization: Mutex<Vec<String>>,
}

/// Reads an HTTP head (up to the blank line) byte by byte, leaving the rest in the stream.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// A forward proxy: `CONNECT host:port` opens a tunnel; an absolute-form request
/// (`GET http://host:port/path`) is forwarded in origin form, one request per connection.
async fn forward_proxy() -> (SocketAddr, Arc<ProxySeen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(ProxySeen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_string();
                let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
                for h in &headers {
                    if let Some((name, value)) = h.split_once(':')
                        && name.eq_ignore_ascii_case("proxy-authorization")
                    {
                        seen.proxy_authorization
                            .lock()
                            .unwrap()
                            .push(value.trim().to_string());
                    }
                }
                let mut parts = request_line.split(' ');
                let (method, target, version) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                if method == "CONNECT" {
                    seen.connects.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                let Some(rest) = target.strip_prefix("http://") else {
                    let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    return;
                };
                seen.forwarded.fetch_add(1, Ordering::SeqCst);
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let Ok(mut upstream) = TcpStream::connect(authority).await else {
                    return;
                };
                let mut forwarded = format!("{method} {path} {version}\r\n");
                for h in headers {
                    let name = h.split(':').next().unwrap_or_default().to_ascii_lowercase();
                    if !matches!(
                        name.as_str(),
                        "proxy-authorization" | "proxy-connection" | "connection"
                    ) {
                        forwarded.push_str(h);
                        forwarded.push_str("\r\n");
                    }
                }
                forwarded.push_str("connection: close\r\n\r\n");
                if upstream.write_all(forwarded.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

/// An HTTPS provider (a certificate of `pki`'s CA for 127.0.0.1) answering `GOOD_BODY`.
async fn https_provider(pki: &unefois_certs::Pki) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(pki.cert_path("broker"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.key_path("broker")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let served2 = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let served = served2.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                served.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{GOOD_BODY}",
                    GOOD_BODY.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn calls_go_through_the_proxy_tunnelled_or_forwarded_except_no_proxy_hosts() {
    let (proxy, seen) = forward_proxy().await;
    let proxy_url = format!("http://{proxy}");

    // Plain http: forwarded by the proxy, in absolute form.
    let (addr, provider_seen) = provider(|_, _, _| ok()).await;
    let plain = adapter(
        &format!("http://{addr}/v3/{{subject}}"),
        serde_json::json!({ "proxy": proxy_url }),
    );
    plain.fetch(&request()).await.unwrap();
    assert_eq!(seen.forwarded.load(Ordering::SeqCst), 1);
    assert_eq!(seen.connects.load(Ordering::SeqCst), 0);
    assert_eq!(provider_seen.hits(), 1);

    // https: a CONNECT tunnel, TLS end to end with the provider (its CA checked).
    let dir = tempfile::tempdir().unwrap();
    let pki = unefois_certs::Pki::init(dir.path(), "unefois.test", &["caf"]).unwrap();
    let (tls_addr, served) = https_provider(&pki).await;
    let tunnelled = adapter(
        &format!("https://127.0.0.1:{}/v3/{{subject}}", tls_addr.port()),
        serde_json::json!({ "proxy": proxy_url, "ca_file": pki.ca_cert_path() }),
    );
    let claims = tunnelled.fetch(&request()).await.unwrap();
    assert_eq!(claims["quotient_familial"], ClaimValue::Integer(612));
    assert_eq!(seen.connects.load(Ordering::SeqCst), 1);
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert_eq!(seen.forwarded.load(Ordering::SeqCst), 1);

    // A host of the no-proxy list is reached directly.
    let direct = adapter(
        &format!("http://{addr}/v3/{{subject}}"),
        serde_json::json!({ "proxy": proxy_url, "no_proxy": [".gouv.fr", "127.0.0.1"] }),
    );
    direct.fetch(&request()).await.unwrap();
    assert_eq!(provider_seen.hits(), 2);
    assert_eq!(seen.forwarded.load(Ordering::SeqCst), 1);
    assert_eq!(seen.connects.load(Ordering::SeqCst), 1);

    // The proxy down: the provider is unavailable (never reached around the proxy).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = adapter(
        &format!("http://{addr}/v3/{{subject}}"),
        serde_json::json!({ "proxy": format!("http://{closed}"), "retries": 0 }),
    )
    .fetch(&request())
    .await
    .unwrap_err();
    assert!(matches!(err, AdapterError::Unavailable { .. }), "{err:?}");
    assert_eq!(provider_seen.hits(), 2);
}

#[tokio::test]
async fn proxy_credentials_come_from_a_file_and_reach_only_the_proxy() {
    let (proxy, seen) = forward_proxy().await;
    let (addr, provider_seen) = provider(|_, _, _| ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("proxy.cred");
    std::fs::write(&credentials, "mairie:pr0xy-pw\n").unwrap();
    let proxied = adapter(
        &format!("http://{addr}/v3/{{subject}}"),
        serde_json::json!({
            "proxy": format!("http://{proxy}"),
            "proxy_credentials_file": credentials,
        }),
    );
    proxied.fetch(&request()).await.unwrap();
    assert_eq!(
        *seen.proxy_authorization.lock().unwrap(),
        vec!["Basic bWFpcmllOnByMHh5LXB3".to_string()]
    );
    let (_, headers) = provider_seen.seen.lock().unwrap()[0].clone();
    assert!(headers.get("proxy-authorization").is_none());
    assert!(!format!("{proxied:?}").contains("pr0xy"));
}

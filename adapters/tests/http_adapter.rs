//! The `http` adapter against real HTTP servers started on 127.0.0.1:0.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use time::macros::date;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use unefois_adapters::{
    Adapter, AdapterError, AdapterRequest, ClaimSpec, ClaimType, ClaimValue, HttpAdapter,
    HttpConfig, LegalBasis,
};

const TYPE: &str = "caf.quotient_familial";

fn schema() -> Vec<ClaimSpec> {
    [
        ("quotient_familial", ClaimType::Integer),
        ("mois_reference", ClaimType::String),
        ("allocataire", ClaimType::Boolean),
        ("date_debut", ClaimType::Date),
        ("montant", ClaimType::Number),
    ]
    .into_iter()
    .map(|(name, claim_type)| ClaimSpec {
        name: name.into(),
        claim_type,
    })
    .collect()
}

fn config(url: String) -> HttpConfig {
    let value = serde_json::json!({
        "url": url,
        "claims": {
            "quotient_familial": "/data/quotient_familial",
            "mois_reference": "/data/mois",
            "allocataire": "/data/flags/allocataire",
            "date_debut": "/data/periode/0/debut",
            "montant": "/data/absent",
        },
        "timeout_ms": 2000,
    });
    serde_json::from_value(value).unwrap()
}

fn request(subject: &str, claims: &[&str], deadline: Duration) -> AdapterRequest {
    AdapterRequest {
        subject: subject.into(),
        attestation_type: TYPE.into(),
        claims: claims.iter().map(|c| c.to_string()).collect(),
        consumer: "mairie-lyon".into(),
        purpose: "tarif-cantine".into(),
        legal_basis: LegalBasis::Law {
            citation: "Code de la sécurité sociale, art. L. 114-12".into(),
        },
        request_id: "hmac:00112233445566778899aabbccddeeff".into(),
        consumer_siret: Some("21690123100011".into()),
        purpose_label: "Tarif de la cantine".into(),
        civil_status: None,
        deadline: Instant::now() + deadline,
    }
}

/// Serves `router` on 127.0.0.1:0 and returns its address.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// One request as the server got it.
type SeenRequest = (Method, Uri, HeaderMap, Bytes);

/// What a server saw of the requests it got.
#[derive(Clone, Default)]
struct Seen {
    hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
}

impl Seen {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    fn last(&self) -> SeenRequest {
        self.requests.lock().unwrap().last().unwrap().clone()
    }
}

/// A server that records every request and answers with `answer()`.
async fn recording_server<F>(answer: F) -> (SocketAddr, Seen)
where
    F: Fn() -> Response + Clone + Send + Sync + 'static,
{
    let seen = Seen::default();
    let seen2 = seen.clone();
    let router = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen2.clone();
            let answer = answer.clone();
            async move {
                seen.hits.fetch_add(1, Ordering::SeqCst);
                seen.requests
                    .lock()
                    .unwrap()
                    .push((method, uri, headers, body));
                answer()
            }
        },
    );
    (serve(router).await, seen)
}

fn json(status: StatusCode, body: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

const GOOD_BODY: &str = r#"{"data": {"quotient_familial": 612, "mois": "2026-10",
    "flags": {"allocataire": true}, "periode": [{"debut": "2019-04-01"}]}}"#;

#[tokio::test]
async fn happy_path_reads_requested_claims_through_pointers() {
    let (addr, seen) = recording_server(|| json(StatusCode::OK, GOOD_BODY)).await;
    let adapter = HttpAdapter::new(
        TYPE,
        &schema(),
        &config(format!("http://{addr}/v1/q/{{subject}}")),
    )
    .unwrap();
    assert_eq!(adapter.kind(), "http");

    let claims = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial", "date_debut", "allocataire", "montant"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    // "mois_reference" was not requested; "montant" points at nothing: both absent.
    assert_eq!(claims.len(), 3, "{claims:?}");
    assert_eq!(claims["quotient_familial"], ClaimValue::Integer(612));
    assert_eq!(
        claims["date_debut"],
        ClaimValue::Date(date!(2019 - 04 - 01))
    );
    assert_eq!(claims["allocataire"], ClaimValue::Boolean(true));
    assert_eq!(seen.hits(), 1);
    let (method, uri, _, _) = seen.last();
    assert_eq!(method, Method::GET);
    assert_eq!(uri.path(), "/v1/q/test%3Aalice");

    let claims = adapter
        .fetch(&request(
            "test:alice",
            &["mois_reference"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(
        claims.into_iter().collect::<Vec<_>>(),
        [(
            "mois_reference".to_string(),
            ClaimValue::String("2026-10".into())
        )]
    );
}

#[tokio::test]
async fn subject_and_claims_are_percent_encoded() {
    let (addr, seen) = recording_server(|| json(StatusCode::OK, GOOD_BODY)).await;
    let adapter = HttpAdapter::new(
        TYPE,
        &schema(),
        &config(format!("http://{addr}/v1/q/{{subject}}?fields={{claims}}")),
    )
    .unwrap();
    adapter
        .fetch(&request(
            "test:a b/c?d#e%f",
            &["quotient_familial", "mois_reference"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    let (_, uri, _, _) = seen.last();
    assert_eq!(uri.path(), "/v1/q/test%3Aa%20b%2Fc%3Fd%23e%25f");
    assert_eq!(uri.query(), Some("fields=quotient_familial,mois_reference"));
}

#[tokio::test]
async fn bearer_token_static_and_forwarded_headers_reach_the_provider() {
    let (addr, seen) = recording_server(|| json(StatusCode::OK, GOOD_BODY)).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "  s3cret-token\n").unwrap();
    let mut cfg = config(format!("http://{addr}/v1/q/{{subject}}"));
    cfg.bearer_token_file = Some(token);
    cfg.headers = BTreeMap::from([("X-Api-Version".to_string(), "2".to_string())]);
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    // Debug never shows the token.
    assert!(!format!("{adapter:?}").contains("s3cret"));

    adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    let (_, _, headers, _) = seen.last();
    let h = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_string();
    assert_eq!(h("authorization"), "Bearer s3cret-token");
    assert_eq!(h("x-api-version"), "2");
    assert_eq!(h("x-unefois-consumer"), "mairie-lyon");
    assert_eq!(h("x-unefois-purpose"), "tarif-cantine");
    assert_eq!(
        h("x-unefois-legal-basis"),
        "Code de la s%C3%A9curit%C3%A9 sociale, art. L. 114-12"
    );
    assert_eq!(
        h("x-unefois-request-id"),
        "hmac:00112233445566778899aabbccddeeff"
    );

    // A consent is forwarded as consent:<id>.
    let mut req = request("test:alice", &["quotient_familial"], Duration::from_secs(5));
    req.legal_basis = LegalBasis::Consent {
        consent_id: "c-42".into(),
    };
    adapter.fetch(&req).await.unwrap();
    let (_, _, headers, _) = seen.last();
    assert_eq!(headers["x-unefois-legal-basis"], "consent:c-42");
}

#[tokio::test]
async fn not_found_maps_to_not_found() {
    let (addr, seen) = recording_server(|| json(StatusCode::NOT_FOUND, "{}")).await;
    let adapter = HttpAdapter::new(
        TYPE,
        &schema(),
        &config(format!("http://{addr}/{{subject}}")),
    )
    .unwrap();
    let err = adapter
        .fetch(&request(
            "test:nobody",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::NotFound), "{err:?}");
    assert_eq!(seen.hits(), 1);
}

#[tokio::test]
async fn unavailable_is_retried_then_reported() {
    let (addr, seen) =
        recording_server(|| (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()).await;
    let mut cfg = config(format!("http://{addr}/{{subject}}"));
    cfg.retries = 2;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let started = Instant::now();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    match err {
        AdapterError::Unavailable { retry_after, .. } => assert_eq!(retry_after, None),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.hits(), 3);
    // Pauses of 50-150 ms, then 100-300 ms.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn post_sends_a_json_body_and_is_never_retried() {
    let (addr, seen) =
        recording_server(|| (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()).await;
    let mut cfg = config(format!("http://{addr}/v1/q"));
    cfg.method = unefois_adapters::HttpMethod::Post;
    cfg.retries = 3;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AdapterError::Unavailable {
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(seen.hits(), 1);
    let (method, _, headers, body) = seen.last();
    assert_eq!(method, Method::POST);
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "subject": "test:alice",
            "claims": ["quotient_familial"],
            "consumer": "mairie-lyon",
            "purpose": "tarif-cantine",
            "legal_basis": "Code de la sécurité sociale, art. L. 114-12",
            "request_id": "hmac:00112233445566778899aabbccddeeff",
        })
    );
}

#[tokio::test]
async fn too_many_requests_is_honoured() {
    let (addr, seen) = recording_server(|| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "3")],
            "slow down",
        )
            .into_response()
    })
    .await;
    let mut cfg = config(format!("http://{addr}/{{subject}}"));
    cfg.retries = 1;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    match err {
        AdapterError::Unavailable {
            retry_after,
            reason,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
            assert!(reason.contains("429"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Never retried sooner than the provider asked (http_access.rs has the timing).
    assert_eq!(seen.hits(), 1);
}

#[tokio::test]
async fn slow_server_hits_the_deadline_quickly() {
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    let router = Router::new().fallback(move || {
        let hits = hits2.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(10)).await;
            json(StatusCode::OK, GOOD_BODY)
        }
    });
    let addr = serve(router).await;
    let mut cfg = config(format!("http://{addr}/{{subject}}"));
    cfg.timeout_ms = 5000;
    cfg.retries = 2;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let err = adapter
        .fetch(&request("test:alice", &["quotient_familial"], deadline))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, AdapterError::DeadlineExceeded), "{err:?}");
    assert!(
        elapsed < deadline + Duration::from_millis(200),
        "{elapsed:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A per-attempt timeout shorter than the deadline: Unavailable, not retried.
    cfg.timeout_ms = 100;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let started = Instant::now();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::Unavailable { reason, .. } if reason.contains("100 ms")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // A deadline already past: no call at all.
    let before = hits.load(Ordering::SeqCst);
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::ZERO,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::DeadlineExceeded), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn oversized_body_is_refused() {
    // With a Content-Length.
    let big = format!(
        r#"{{"data": {{"quotient_familial": 612, "pad": "{}"}}}}"#,
        "x".repeat(4096)
    );
    let big2 = big.clone();
    let (addr, _) = recording_server(move || json(StatusCode::OK, &big2)).await;
    let mut cfg = config(format!("http://{addr}/{{subject}}"));
    cfg.max_response_bytes = 1024;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::InvalidResponse(why) if why.contains("larger than 1024")),
        "{err:?}"
    );

    // Chunked, without a Content-Length: counted while streaming.
    let addr = raw_server(move |mut stream| {
        let big = big.clone();
        async move {
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for chunk in big.as_bytes().chunks(500) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            let _ = stream.write_all(&out).await;
        }
    })
    .await;
    let mut cfg = config(format!("http://{addr}/{{subject}}"));
    cfg.max_response_bytes = 1024;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::InvalidResponse(why) if why.contains("larger than 1024")),
        "{err:?}"
    );
}

/// A TCP server that reads one request head and lets `handle` write the answer by hand.
async fn raw_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            handle(stream).await;
        }
    });
    addr
}

#[tokio::test]
async fn malformed_answers_are_invalid_responses() {
    let deep = format!(
        r#"{{"data": {{"quotient_familial": 612, "x": {}1{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let cases: Vec<(Response, &str)> = vec![
        (json(StatusCode::OK, &deep), "nested deeper than 64"),
        (json(StatusCode::OK, "<html>oops</html>"), "not JSON"),
        (
            json(StatusCode::OK, r#"{"data": {"quotient_familial": 61"#),
            "not JSON",
        ),
        (
            json(StatusCode::OK, r#"{"data": {"quotient_familial": "612"}}"#),
            "claim \"quotient_familial\": expected an integer, found a string",
        ),
        (
            json(StatusCode::OK, r#"{"data": {"quotient_familial": 6.5}}"#),
            "claim \"quotient_familial\"",
        ),
        (
            json(StatusCode::BAD_REQUEST, "{}"),
            "unexpected HTTP status 400",
        ),
        (
            (
                StatusCode::FOUND,
                [("location", "http://elsewhere.test/")],
                "",
            )
                .into_response(),
            "unexpected HTTP status 302",
        ),
        (
            json(StatusCode::NO_CONTENT, ""),
            "unexpected HTTP status 204",
        ),
    ];
    for (response, expected) in cases {
        let response = Arc::new(Mutex::new(Some(response)));
        let (addr, seen) = recording_server(move || {
            response
                .lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| json(StatusCode::GONE, ""))
        })
        .await;
        let adapter = HttpAdapter::new(
            TYPE,
            &schema(),
            &config(format!("http://{addr}/{{subject}}")),
        )
        .unwrap();
        let err = adapter
            .fetch(&request(
                "test:alice",
                &["quotient_familial"],
                Duration::from_secs(5),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AdapterError::InvalidResponse(why) if why.contains(expected)),
            "{expected}: {err:?}"
        );
        assert_eq!(
            seen.hits(),
            1,
            "{expected}: InvalidResponse is never retried"
        );
        // Error messages never carry the subject.
        assert!(!err.to_string().contains("alice"), "{err}");
    }
}

#[tokio::test]
async fn null_means_absent() {
    let (addr, _) = recording_server(|| {
        json(
            StatusCode::OK,
            r#"{"data": {"quotient_familial": null, "mois": "2026-10"}}"#,
        )
    })
    .await;
    let adapter = HttpAdapter::new(
        TYPE,
        &schema(),
        &config(format!("http://{addr}/{{subject}}")),
    )
    .unwrap();
    let claims = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial", "mois_reference"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(claims.keys().collect::<Vec<_>>(), ["mois_reference"]);
}

#[tokio::test]
async fn connection_errors_are_retried_and_resets_are_unavailable() {
    // Nothing listens on the port any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let adapter = HttpAdapter::new(
        TYPE,
        &schema(),
        &config(format!("http://{addr}/{{subject}}")),
    )
    .unwrap();
    let started = Instant::now();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::Unavailable { reason, retry_after: None } if reason.contains("connection failed")),
        "{err:?}"
    );
    assert!(!err.to_string().contains("alice"), "{err}");
    // Two retries: at least 50 + 100 ms of pauses.
    assert!(started.elapsed() >= Duration::from_millis(150));

    // The server closes the connection without answering.
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    let addr = raw_server(move |stream| {
        hits2.fetch_add(1, Ordering::SeqCst);
        async move { drop(stream) }
    })
    .await;
    let adapter = HttpAdapter::new(
        TYPE,
        &schema(),
        &config(format!("http://{addr}/{{subject}}")),
    )
    .unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Unavailable { .. }), "{err:?}");
    assert!(!err.to_string().contains("alice"), "{err}");
}

#[tokio::test]
async fn new_validates_the_configuration() {
    let schema = schema();
    let base = || config("http://127.0.0.1:1/v1/{subject}".into());
    let refuse = |cfg: HttpConfig| {
        HttpAdapter::new(TYPE, &schema, &cfg)
            .unwrap_err()
            .to_string()
    };

    let mut cfg = base();
    cfg.claims.insert("nir".into(), "/data/nir".into());
    let err = refuse(cfg);
    assert!(err.contains("claims.nir: "), "{err}");
    assert!(err.contains("\"nir\" is not in the schema"), "{err}");

    let mut cfg = base();
    cfg.claims
        .insert("mois_reference".into(), "data/mois".into());
    assert!(refuse(cfg).contains("claims.mois_reference: "));

    let mut cfg = base();
    cfg.url = "http://{subject}.evil.test/".into();
    assert!(refuse(cfg).contains(": url: "));

    let mut cfg = base();
    cfg.url = "https://api.caf.test/{subject}".into();
    assert!(refuse(cfg).contains("ca_file"));

    let mut cfg = base();
    cfg.bearer_token_file = Some("/nonexistent/token".into());
    assert!(refuse(cfg).contains("bearer_token_file"));

    let mut cfg = base();
    cfg.ca_file = Some("/nonexistent/ca.crt".into());
    assert!(refuse(cfg).contains("ca_file"));

    let mut cfg = base();
    cfg.client_cert_file = Some("/nonexistent/c.crt".into());
    assert!(refuse(cfg).contains("client_key_file"));

    let mut cfg = base();
    cfg.headers
        .insert("X-Unefois-Consumer".into(), "forged".into());
    assert!(refuse(cfg).contains("headers.X-Unefois-Consumer: "));

    let mut cfg = base();
    cfg.headers.insert("Bad Name".into(), "x".into());
    assert!(refuse(cfg).contains("headers.\"Bad Name\""));

    let mut cfg = base();
    cfg.headers.insert("X-Ok".into(), "line\nbreak".into());
    assert!(refuse(cfg).contains("headers.X-Ok: "));

    // Unknown fields are refused by the registry's parser; defaults apply.
    let err = serde_json::from_value::<HttpConfig>(serde_json::json!({
        "url": "http://h/{subject}", "claims": {}, "retry": 3
    }))
    .unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    let cfg: HttpConfig = serde_json::from_value(serde_json::json!({
        "url": "http://h/{subject}", "claims": {"quotient_familial": "/qf"}
    }))
    .unwrap();
    assert_eq!(cfg.method, unefois_adapters::HttpMethod::Get);
    assert_eq!(
        (cfg.timeout_ms, cfg.retries, cfg.max_response_bytes),
        (2000, 2, 1 << 20)
    );
}

/// An HTTPS server requiring a client certificate from the PKI's CA; answers
/// `GOOD_BODY` to every request of a client that presented one.
async fn mtls_server(pki: &unefois_certs::Pki) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_certificate().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain = CertificateDer::pem_file_iter(pki.cert_path("broker"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.key_path("broker")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
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
                assert!(tls.get_ref().1.peer_certificates().is_some());
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
async fn mtls_with_a_client_certificate_from_the_private_pki() {
    let dir = tempfile::tempdir().unwrap();
    let pki = unefois_certs::Pki::init(dir.path(), "unefois.test", &["caf"]).unwrap();
    let (addr, served) = mtls_server(&pki).await;
    let url = format!("https://127.0.0.1:{}/v1/q/{{subject}}", addr.port());

    let mut cfg = config(url.clone());
    cfg.ca_file = Some(pki.ca_cert_path());
    cfg.client_cert_file = Some(pki.cert_path("caf"));
    cfg.client_key_file = Some(pki.key_path("caf"));
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let claims = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(claims["quotient_familial"], ClaimValue::Integer(612));
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // Without a client certificate the server refuses: Unavailable, nothing served.
    let mut cfg = config(url.clone());
    cfg.ca_file = Some(pki.ca_cert_path());
    cfg.retries = 0;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Unavailable { .. }), "{err:?}");
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // A server certificate from another CA is refused.
    let other = tempfile::tempdir().unwrap();
    let other = unefois_certs::Pki::init(other.path(), "other.test", &["mairie"]).unwrap();
    let mut cfg = config(url);
    cfg.ca_file = Some(other.ca_cert_path());
    cfg.client_cert_file = Some(pki.cert_path("caf"));
    cfg.client_key_file = Some(pki.key_path("caf"));
    cfg.retries = 0;
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["quotient_familial"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::Unavailable { reason, .. } if reason.contains("certificate")),
        "{err:?}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

// ------------------------------------------------- per-call parameters, identity, mappings

/// The civil status of `pivot:DUPONT|MARIE CLAIRE|1985-07-04|F|<place>|<country>`.
fn marie(place: &str, country: &str) -> unefois_adapters::CivilStatus {
    unefois_adapters::CivilStatus {
        family_name: "DUPONT-DE L ILE".into(),
        given_names: vec!["MARIE".into(), "CLAIRE".into()],
        birth_date: date!(1985 - 07 - 04),
        sex: unefois_adapters::Sex::Female,
        birth_place: place.into(),
        birth_country: country.into(),
    }
}

fn pivot_request(civil: unefois_adapters::CivilStatus) -> AdapterRequest {
    let mut req = request(
        "pivot:DUPONT-DE L ILE|MARIE CLAIRE|1985-07-04|F|69123|99100",
        &["quotient_familial"],
        Duration::from_secs(5),
    );
    req.civil_status = Some(civil);
    req
}

#[tokio::test]
async fn request_placeholders_are_percent_encoded_where_they_land() {
    let (addr, seen) = recording_server(|| json(StatusCode::OK, GOOD_BODY)).await;
    let mut cfg = config(format!(
        "http://{addr}/v1/{{consumer}}/{{purpose_label}}?fixed=1"
    ));
    cfg.query = BTreeMap::from([
        ("recipient".to_string(), "{consumer_siret}".to_string()),
        ("motif".to_string(), "{purpose_label}".to_string()),
        (
            "object".to_string(),
            "{purpose} ({legal_basis})".to_string(),
        ),
        ("request_id".to_string(), "{request_id}".to_string()),
        ("champs[]".to_string(), "{claims}".to_string()),
    ]);
    cfg.headers = BTreeMap::from([
        ("X-Recipient".to_string(), "{consumer_siret}".to_string()),
        ("X-Context".to_string(), "motif={purpose_label}".to_string()),
        ("X-Static".to_string(), "as written".to_string()),
    ]);
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    let mut req = request(
        "test:alice",
        &["quotient_familial", "mois_reference"],
        Duration::from_secs(5),
    );
    req.consumer = "mairie-lyon".into();
    req.purpose_label = "Tarif cantine & été / 50%".into();
    adapter.fetch(&req).await.unwrap();
    let (_, uri, headers, _) = seen.last();
    // Path segments: only A-Z a-z 0-9 - . _ ~ stay as they are; '/' cannot add a segment.
    assert_eq!(
        uri.path(),
        "/v1/mairie-lyon/Tarif%20cantine%20%26%20%C3%A9t%C3%A9%20%2F%2050%25"
    );
    // The URL's own query first, then the table in name order, names and values encoded.
    assert_eq!(
        uri.query().unwrap(),
        "fixed=1\
         &champs%5B%5D=quotient_familial%2Cmois_reference\
         &motif=Tarif%20cantine%20%26%20%C3%A9t%C3%A9%20%2F%2050%25\
         &object=tarif-cantine%20%28Code%20de%20la%20s%C3%A9curit%C3%A9%20sociale%2C%20art.%20L.%20114-12%29\
         &recipient=21690123100011\
         &request_id=hmac%3A00112233445566778899aabbccddeeff"
    );
    let h = |name: &str| headers[name].to_str().unwrap().to_string();
    assert_eq!(h("x-recipient"), "21690123100011");
    // Header values: literals as written, values with %, controls and non-ASCII encoded.
    assert_eq!(
        h("x-context"),
        "motif=Tarif cantine & %C3%A9t%C3%A9 / 50%25"
    );
    assert_eq!(h("x-static"), "as written");

    // No request id (the caller gave none): the parameter is left out, not sent empty.
    req.request_id = String::new();
    adapter.fetch(&req).await.unwrap();
    let (_, uri, _, _) = seen.last();
    let query = uri.query().unwrap();
    assert!(!query.contains("request_id"), "{query}");
    assert_eq!(seen.hits(), 2);
}

#[tokio::test]
async fn identity_routes_send_the_civil_status_of_a_pivot_subject() {
    let (addr, seen) = recording_server(|| json(StatusCode::OK, GOOD_BODY)).await;
    let mut cfg = config(format!("http://{addr}/v3/dss/quotient_familial/identite"));
    cfg.query = [
        ("recipient", "{consumer_siret}"),
        ("nomNaissance", "{family_name}"),
        ("prenoms[]", "{given_names[]}"),
        ("anneeDateNaissance", "{birth_year}"),
        ("moisDateNaissance", "{birth_month}"),
        ("jourDateNaissance", "{birth_day}"),
        ("sexeEtatCivil", "{sex}"),
        ("codeCogInseeCommuneNaissance", "{birth_place}"),
        ("codeCogInseePaysNaissance", "{birth_country}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    cfg.headers = BTreeMap::from([
        (
            "X-Naissance".to_string(),
            "{birth_date} {birth_month:02}".to_string(),
        ),
        ("X-Prenoms".to_string(), "{given_names}".to_string()),
    ]);
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();

    adapter
        .fetch(&pivot_request(marie("69123", "99100")))
        .await
        .unwrap();
    let (_, uri, headers, _) = seen.last();
    assert_eq!(uri.path(), "/v3/dss/quotient_familial/identite");
    assert_eq!(
        uri.query().unwrap(),
        "anneeDateNaissance=1985\
         &codeCogInseeCommuneNaissance=69123\
         &codeCogInseePaysNaissance=99100\
         &jourDateNaissance=4\
         &moisDateNaissance=7\
         &nomNaissance=DUPONT-DE%20L%20ILE\
         &prenoms%5B%5D=MARIE&prenoms%5B%5D=CLAIRE\
         &recipient=21690123100011\
         &sexeEtatCivil=F"
    );
    assert_eq!(headers["x-naissance"], "1985-07-04 07");
    assert_eq!(headers["x-prenoms"], "MARIE CLAIRE");

    // Born abroad: no commune, so the parameter is left out; other sex codes.
    cfg.sex_codes = Some(unefois_adapters::SexCodes {
        male: "1".into(),
        female: "2".into(),
    });
    let adapter = HttpAdapter::new(TYPE, &schema(), &cfg).unwrap();
    adapter
        .fetch(&pivot_request(marie("", "99243")))
        .await
        .unwrap();
    let (_, uri, _, _) = seen.last();
    let query = uri.query().unwrap();
    assert!(!query.contains("codeCogInseeCommuneNaissance"), "{query}");
    assert!(query.contains("codeCogInseePaysNaissance=99243"), "{query}");
    assert!(query.contains("sexeEtatCivil=2"), "{query}");
    assert_eq!(seen.hits(), 2);

    // A subject that is not pivot: refused before any call, the caller's fault.
    let req = request(
        "siret:11000201100044",
        &["quotient_familial"],
        Duration::from_secs(5),
    );
    let err = adapter.precheck(&req).unwrap_err();
    assert!(
        matches!(err, AdapterError::SubjectNotAccepted(_)),
        "{err:?}"
    );
    let err = adapter.fetch(&req).await.unwrap_err();
    let AdapterError::SubjectNotAccepted(why) = &err else {
        panic!("{err:?}");
    };
    assert!(
        why.contains("must be a pivot: identity") && why.contains("not a siret: subject"),
        "{why}"
    );
    assert!(!why.contains("11000201100044"), "{why}");
    assert_eq!(seen.hits(), 2, "nothing was sent");
    // Debug never shows the subject nor its civil status.
    let shown = format!("{:?}", pivot_request(marie("69123", "99100")));
    assert!(
        !shown.contains("DUPONT") && !shown.contains("1985"),
        "{shown}"
    );
    assert!(
        shown.contains("civil_status: Some(\"<redacted>\")"),
        "{shown}"
    );
}

/// API Particulier v3's answer to `GET /v3/dss/quotient_familial/identite` (its staging data
/// for a parent of two children).
const API_PARTICULIER_QF: &str = r#"{
  "data": {
    "allocataires": [
      {"nom_naissance": "BERNARD", "nom_usage": null, "prenoms": "JULIEN",
       "date_naissance": "1979-02-27", "sexe": "M"}
    ],
    "enfants": [
      {"nom_naissance": "BERNARD", "nom_usage": null, "prenoms": "THOMAS",
       "date_naissance": "2006-06-08", "sexe": "M"},
      {"nom_naissance": "BERNARD", "nom_usage": null, "prenoms": "LEO",
       "date_naissance": "2011-03-19", "sexe": "M"}
    ],
    "adresse": {"destinataire": "Monsieur BERNARD JULIEN", "code_postal_ville": "13008 MARSEILLE",
                "pays": "FRANCE"},
    "quotient_familial": {"fournisseur": "CNAF", "valeur": 1050, "annee": 2023, "mois": 6,
                          "annee_calcul": 2024, "mois_calcul": 12}
  },
  "links": {},
  "meta": {}
}"#;

fn qf_schema() -> Vec<ClaimSpec> {
    [
        ("quotient_familial", ClaimType::Integer),
        ("mois_reference", ClaimType::String),
        ("nombre_enfants", ClaimType::Integer),
        ("regime_msa", ClaimType::Boolean),
        ("naissance_aine", ClaimType::Date),
        ("prenom_cadet", ClaimType::String),
        ("premier_enfant", ClaimType::String),
    ]
    .into_iter()
    .map(|(name, claim_type)| ClaimSpec {
        name: name.into(),
        claim_type,
    })
    .collect()
}

fn qf_config(url: String, claims: serde_json::Value) -> HttpConfig {
    serde_json::from_value(serde_json::json!({"url": url, "claims": claims})).unwrap()
}

#[tokio::test]
async fn jsonpath_and_transforms_map_an_api_particulier_answer() {
    let (addr, seen) = recording_server(|| json(StatusCode::OK, API_PARTICULIER_QF)).await;
    let cfg = qf_config(
        format!("http://{addr}/v3/dss/quotient_familial/identite"),
        serde_json::json!({
            "quotient_familial": "$.data.quotient_familial.valeur",
            "mois_reference": {
                "format": "{annee}-{mois:02}",
                "paths": {"annee": "$.data.quotient_familial.annee", "mois": "$.data.quotient_familial.mois"}
            },
            "nombre_enfants": {"count": "$.data.enfants"},
            "regime_msa": {"map": {"CNAF": false, "MSA": true}, "path": "$.data.quotient_familial.fournisseur"},
            "naissance_aine": "$.data.enfants[0].date_naissance",
            "prenom_cadet": "$.data.enfants[?@.date_naissance > '2010-01-01'].prenoms",
            "premier_enfant": "/data/enfants/0/prenoms",
        }),
    );
    let adapter = HttpAdapter::new(TYPE, &qf_schema(), &cfg).unwrap();
    let schema = qf_schema();
    let all: Vec<&str> = schema.iter().map(|s| s.name.as_str()).collect();
    let claims = adapter
        .fetch(&request("test:alice", &all, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(claims["quotient_familial"], ClaimValue::Integer(1050));
    assert_eq!(
        claims["mois_reference"],
        ClaimValue::String("2023-06".into())
    );
    assert_eq!(claims["nombre_enfants"], ClaimValue::Integer(2));
    assert_eq!(claims["regime_msa"], ClaimValue::Boolean(false));
    assert_eq!(
        claims["naissance_aine"],
        ClaimValue::Date(date!(2006 - 06 - 08))
    );
    assert_eq!(claims["prenom_cadet"], ClaimValue::String("LEO".into()));
    assert_eq!(
        claims["premier_enfant"],
        ClaimValue::String("THOMAS".into())
    );
    assert_eq!(claims.len(), 7);
    assert_eq!(seen.hits(), 1);

    // A path that selects both children for one claim: an invalid answer, never a guess.
    let cfg = qf_config(
        format!("http://{addr}/q"),
        serde_json::json!({"premier_enfant": "$.data.enfants[*].prenoms"}),
    );
    let adapter = HttpAdapter::new(TYPE, &qf_schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["premier_enfant"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::InvalidResponse(why) if why.contains("selects 2 values")),
        "{err:?}"
    );
}

#[tokio::test]
async fn absent_values_stay_absent_and_limits_still_hold() {
    let (addr, _) = recording_server(|| {
        json(
            StatusCode::OK,
            r#"{"data": {"quotient_familial": {"valeur": null, "annee": 2023}}}"#,
        )
    })
    .await;
    let cfg = qf_config(
        format!("http://{addr}/q"),
        serde_json::json!({
            "quotient_familial": "$.data.quotient_familial.valeur",
            "mois_reference": {"format": "{a}-{m:02}", "paths": {"a": "$.data.quotient_familial.annee", "m": "$.data.quotient_familial.mois"}},
            "nombre_enfants": {"count": "$.data.enfants"},
            "prenom_cadet": "$.data.enfants[?@.rang == 2].prenoms",
        }),
    );
    let adapter = HttpAdapter::new(TYPE, &qf_schema(), &cfg).unwrap();
    let claims = adapter
        .fetch(&request(
            "test:alice",
            &[
                "quotient_familial",
                "mois_reference",
                "nombre_enfants",
                "prenom_cadet",
            ],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert!(
        claims.is_empty(),
        "the provider holds none of them: {claims:?}"
    );

    // The depth limit applies before any path is evaluated.
    let deep = format!(r#"{{"data": {}1{}}}"#, "[".repeat(100), "]".repeat(100));
    let (addr, _) = recording_server(move || json(StatusCode::OK, &deep)).await;
    let cfg = qf_config(
        format!("http://{addr}/q"),
        serde_json::json!({"nombre_enfants": {"count": "$..*"}}),
    );
    let adapter = HttpAdapter::new(TYPE, &qf_schema(), &cfg).unwrap();
    let err = adapter
        .fetch(&request(
            "test:alice",
            &["nombre_enfants"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::InvalidResponse(why) if why.contains("nested deeper than 64")),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_placeholders_and_mappings_name_their_field() {
    let schema = qf_schema();
    let refuse = |cfg: serde_json::Value| {
        let cfg: HttpConfig = serde_json::from_value(cfg).unwrap();
        let e = HttpAdapter::new(TYPE, &schema, &cfg).unwrap_err();
        // check() (what the registry calls) refuses the same way.
        let c = cfg.check(TYPE, &schema).unwrap_err();
        assert_eq!(
            (c.field.clone(), c.reason.clone()),
            (e.field.clone(), e.reason.clone())
        );
        (e.field, e.reason)
    };
    let base = |extra: serde_json::Value| {
        let mut cfg = serde_json::json!({
            "url": "http://127.0.0.1:1/q",
            "claims": {"quotient_familial": "$.data.qf"},
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    };
    for (extra, field, why) in [
        (
            serde_json::json!({"query": {"recipient": "{siret}"}}),
            "query.recipient",
            "unknown placeholder {siret}",
        ),
        (
            serde_json::json!({"query": {"prenoms[]": "x{given_names[]}"}}),
            "query.\"prenoms[]\"",
            "whole value",
        ),
        (
            serde_json::json!({"query": {"{consumer}": "x"}}),
            "query.\"{consumer}\"",
            "no placeholder",
        ),
        (
            serde_json::json!({"headers": {"X-Recipient": "{consumer_sirt}"}}),
            "headers.X-Recipient",
            "unknown placeholder {consumer_sirt}",
        ),
        (
            serde_json::json!({"headers": {"X-Names": "{given_names[]}"}}),
            "headers.X-Names",
            "use {given_names}",
        ),
        (
            serde_json::json!({"url": "http://127.0.0.1:1/q/{request}"}),
            "url",
            "unknown placeholder {request}",
        ),
        (
            serde_json::json!({"url": "http://127.0.0.1:1/q?p={given_names[]}"}),
            "url",
            "query table",
        ),
        (
            serde_json::json!({"sex_codes": {"M": "", "F": "2"}}),
            "sex_codes.M",
            "1 to 32 bytes",
        ),
        (
            serde_json::json!({"claims": {"quotient_familial": {"count": "$.data.enfants"}, "mois_reference": {"count": "$.x"}}}),
            "claims.mois_reference.count",
            "declared string",
        ),
        (
            serde_json::json!({"claims": {"quotient_familial": "data.qf"}}),
            "claims.quotient_familial",
            "neither a JSON pointer",
        ),
    ] {
        let (f, reason) = refuse(base(extra.clone()));
        assert_eq!(f, field, "{extra}: {reason}");
        assert!(reason.contains(why), "{extra}: {reason}");
    }
    // Where each placeholder is used, for the registry's checks.
    let cfg: HttpConfig = serde_json::from_value(base(serde_json::json!({
        "query": {"recipient": "{consumer_siret}"},
        "headers": {"X-Recipient": "{consumer_siret}"},
    })))
    .unwrap();
    let uses = cfg.check(TYPE, &schema).unwrap();
    assert_eq!(
        uses.get(&unefois_adapters::http::Placeholder::ConsumerSiret)
            .map(String::as_str),
        Some("query.recipient")
    );
}

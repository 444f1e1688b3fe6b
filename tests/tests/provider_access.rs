//! Providers as the State's APIs behave, end to end through a broker: a provider that asks to
//! wait is left alone until then (cool-down, shared by its types, visible in health, status and
//! metrics; from an HTTP `Retry-After` as from a gRPC `RetryInfo`), error codes tell an unknown
//! person from a wrong route, refused credentials are PROVIDER_AUTH_FAILED with their metric,
//! the per-provider rate limit queues then refuses, secrets are read again on reload and
//! appear nowhere, and bad settings refuse the start naming file and key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::registry_client::RegistryClient;
use unefois_tests::provider_api::{
    CLAIMS, OK, REFUSE, SITUATION, THROTTLE, fetch, http_adapter, registry, serve_api,
    serve_api_over_tls, situation_type, wait_health,
};
use unefois_tests::refusals::{assert_status, retry_delay};
use unefois_tests::sample::{DGFIP_STATIC, RFR};
use unefois_tests::{TestBroker, TestPki, http_get};

async fn providers_status(
    broker: &TestBroker,
) -> anyhow::Result<HashMap<String, pb::ProviderStatus>> {
    let mut registry = RegistryClient::new(broker.channel("dinum").await?);
    Ok(registry
        .get_providers_status(pb::GetProvidersStatusRequest {})
        .await?
        .into_inner()
        .providers
        .into_iter()
        .map(|p| (p.attestation_type.clone(), p))
        .collect())
}

/// The value of the metric line that has every one of `parts`.
async fn metric(broker: &TestBroker, parts: &[&str]) -> anyhow::Result<Option<f64>> {
    let (_, text) = http_get(broker.ops_addr, "/metrics").await?;
    Ok(text
        .lines()
        .find(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_holds_every_call_to_the_provider_until_it_has_passed() -> anyhow::Result<()>
{
    let (addr, api) = serve_api().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = registry(
        scratch.path(),
        &http_adapter(addr, "rfr", CLAIMS, ""),
        &situation_type(
            "dgfip",
            &http_adapter(
                addr,
                "situation",
                "claims = { revenu = \"/data/revenu\" }",
                "",
            ),
        ),
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    // The provider answers 429 with Retry-After: 2.
    api.mode.store(THROTTLE, Ordering::SeqCst);
    let status = lyon.fetch(fetch(RFR, "test:alice")).await.expect_err("429");
    let held_from = Instant::now();
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderUnavailable,
        "asked to wait 2 s",
    );
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(2)));
    // It would answer now; the broker leaves it alone all the same.
    api.mode.store(OK, Ordering::SeqCst);

    // Both types of the provider are NOT_SERVING, in health and in the operators' status.
    wait_health(&broker, RFR, ServingStatus::NotServing).await?;
    wait_health(&broker, SITUATION, ServingStatus::NotServing).await?;
    let status_now = providers_status(&broker).await?;
    for ty in [RFR, SITUATION] {
        let p = &status_now[ty];
        assert!(!p.ready, "{p:?}");
        assert!((1..=2000).contains(&p.cool_down_ms), "{p:?}");
        assert_eq!(p.breaker, "closed", "{p:?}");
    }
    assert_eq!(
        metric(
            &broker,
            &["unefois_provider_cool_downs_total{", "provider=\"dgfip\""]
        )
        .await?,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &broker,
            &["unefois_provider_cool_down_seconds{", "provider=\"dgfip\""]
        )
        .await?,
        Some(2.0)
    );

    // Every call in the next 2 s is answered at once, without calling the provider.
    let mut held = 0;
    while held_from.elapsed() < Duration::from_millis(1700) {
        for ty in [RFR, SITUATION] {
            let asked = Instant::now();
            let status = lyon.fetch(fetch(ty, "test:alice")).await.expect_err("held");
            assert!(
                asked.elapsed() < Duration::from_millis(500),
                "answered at once"
            );
            assert_status(
                &status,
                Code::Unavailable,
                ErrorReason::ProviderUnavailable,
                "asked to be called again later",
            );
            let delay = retry_delay(&status).expect("RetryInfo");
            assert!(
                delay > Duration::ZERO && delay <= Duration::from_secs(2),
                "{delay:?}"
            );
            held += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(held >= 10, "{held}");
    assert_eq!(api.hits("rfr").len(), 1, "one call in 2 s");
    assert!(api.hits("situation").is_empty());
    assert!(
        metric(
            &broker,
            &[
                "unefois_provider_held_total{",
                "provider=\"dgfip\"",
                "reason=\"cool_down\""
            ]
        )
        .await?
        .is_some_and(|n| n >= f64::from(held))
    );

    // Then the next call goes through, 2 s after the first at the earliest.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(held_from.elapsed())).await;
    lyon.fetch(fetch(RFR, "test:alice")).await?;
    let hits = api.hits("rfr");
    assert_eq!(hits.len(), 2);
    assert!(
        hits[1] - hits[0] >= Duration::from_secs(2),
        "{:?}",
        hits[1] - hits[0]
    );
    wait_health(&broker, RFR, ServingStatus::Serving).await?;
    wait_health(&broker, SITUATION, ServingStatus::Serving).await?;
    assert_eq!(providers_status(&broker).await?[RFR].cool_down_ms, 0);
    lyon.fetch(fetch(SITUATION, "test:alice")).await?;
    broker.stop().await
}

/// A gRPC provider (tonic) that answers UNAVAILABLE with a `RetryInfo` of 1 s first, then the
/// claims.
#[derive(Clone, Default)]
struct GrpcProvider {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl pb::provider_server::Provider for GrpcProvider {
    async fn provide(
        &self,
        _: tonic::Request<pb::ProvideRequest>,
    ) -> Result<tonic::Response<pb::ProvideResponse>, tonic::Status> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut details = tonic_types::ErrorDetails::new();
            details.set_retry_info(Some(Duration::from_secs(1)));
            return Err(tonic::Status::with_error_details(
                Code::Unavailable,
                "quota",
                details,
            ));
        }
        let claims = [(
            "revenu".to_string(),
            pb::ClaimValue {
                value: Some(pb::claim_value::Value::IntegerValue(23870)),
            },
        )]
        .into();
        // Built with defaults: the answer may carry more fields (a provider's signature).
        #[allow(clippy::needless_update)]
        let answer = pb::ProvideResponse {
            claims,
            ..Default::default()
        };
        Ok(tonic::Response::new(answer))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_providers_retry_info_holds_its_calls_too() -> anyhow::Result<()> {
    let provider = GrpcProvider::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let service = pb::provider_server::ProviderServer::new(provider.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let ty = "mesr.situation_fiscale";
    let registry = registry(
        scratch.path(),
        DGFIP_STATIC,
        &situation_type(
            "mesr",
            &format!(
                "adapter = {{ kind = \"grpc\", endpoint = \"http://127.0.0.1:{port}\", allow_plain_http = true }}"
            ),
        ),
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    let status = lyon
        .fetch(fetch(ty, "test:alice"))
        .await
        .expect_err("quota");
    let held_from = Instant::now();
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderUnavailable,
        "Unavailable",
    );
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(1)));
    // Held: the provider is not called until the delay has passed.
    let status = lyon.fetch(fetch(ty, "test:alice")).await.expect_err("held");
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderUnavailable,
        "asked to be called again later",
    );
    assert!(retry_delay(&status).is_some_and(|d| d <= Duration::from_secs(1)));
    wait_health(&broker, ty, ServingStatus::NotServing).await?;
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(held_from.elapsed())).await;
    lyon.fetch(fetch(ty, "test:alice")).await?;
    assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn error_codes_tell_an_unknown_person_from_a_wrong_route_and_refusals_are_auth_failures()
-> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let errors =
        ", errors = { code_pointer = \"/errors/0/code\", codes = { \"37003\" = \"not_found\" } }";
    // Another provider's type whose URL has a typo: its route does not exist.
    let wrong = "caf.situation_fiscale";
    let situation = situation_type(
        "caf",
        &format!(
            "{}\nresilience = {{ max_concurrency = 4, failure_threshold = 2, open_seconds = 30 }}",
            http_adapter(
                addr,
                "situatoin",
                "claims = { revenu = \"/data/revenu\" }",
                errors
            )
        ),
    );
    let registry = registry(
        scratch.path(),
        &http_adapter(addr, "rfr", CLAIMS, errors),
        &situation,
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    // 404 with code 37003: nobody is known.
    lyon.fetch(fetch(RFR, "test:alice")).await?;
    let status = lyon
        .fetch(fetch(RFR, "test:nobody"))
        .await
        .expect_err("37003");
    assert_status(
        &status,
        Code::NotFound,
        ErrorReason::SubjectNotFound,
        "does not know",
    );

    // 404 without it: a provider failure, which opens the breaker.
    for _ in 0..2 {
        let status = lyon
            .fetch(fetch(wrong, "test:alice"))
            .await
            .expect_err("wrong route");
        assert_status(
            &status,
            Code::Unavailable,
            ErrorReason::ProviderUnavailable,
            "not one of its not-found codes",
        );
    }
    let status = lyon
        .fetch(fetch(wrong, "test:alice"))
        .await
        .expect_err("open");
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderCircuitOpen,
        "failing",
    );
    assert_eq!(api.hits("situatoin").len(), 2);
    wait_health(&broker, wrong, ServingStatus::NotServing).await?;
    // The breaker is the type's own: other types still answer.
    lyon.fetch(fetch(RFR, "test:alice")).await?;

    // 401: the provider refused the broker's credentials.
    let label = [
        "unefois_provider_auth_failures_total{",
        "provider=\"dgfip\"",
    ];
    assert_eq!(metric(&broker, &label).await?, None);
    api.mode.store(REFUSE, Ordering::SeqCst);
    let before = api.hits("rfr").len();
    let status = lyon.fetch(fetch(RFR, "test:alice")).await.expect_err("401");
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderAuthFailed,
        "refused the broker's credentials (HTTP 401)",
    );
    assert_eq!(retry_delay(&status), None);
    assert_eq!(api.hits("rfr").len(), before + 1, "not retried");
    assert_eq!(metric(&broker, &label).await?, Some(1.0));
    assert_eq!(
        metric(
            &broker,
            &[
                "unefois_provider_calls_total{",
                "provider=\"dgfip\"",
                "result=\"auth_failed\""
            ]
        )
        .await?,
        Some(1.0)
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_queues_calls_within_their_deadline_then_refuses() -> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let limit = ", rate_limit = { per_second = 2, burst = 1 }";
    let registry = registry(
        scratch.path(),
        &http_adapter(addr, "rfr", CLAIMS, limit),
        &situation_type(
            "dgfip",
            &http_adapter(
                addr,
                "situation",
                "claims = { revenu = \"/data/revenu\" }",
                limit,
            ),
        ),
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let channel: Channel = broker.channel("mairie-lyon").await?;
    assert_eq!(
        providers_status(&broker).await?[RFR].rate_limit,
        "2/s, burst 1"
    );

    // Six calls at once, each with 1.5 s to live (1.35 s for the provider): slots at 0, 0.5
    // and 1 s; the other three are refused once no slot fits before their deadline.
    let started = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut lyon = ExchangeClient::new(channel.clone());
            let ty = if i % 2 == 0 { RFR } else { SITUATION };
            tokio::spawn(async move {
                let mut request = tonic::Request::new(fetch(ty, "test:alice"));
                request.set_timeout(Duration::from_millis(1500));
                let answer = lyon.fetch(request).await;
                (answer.map(|_| ()), started.elapsed())
            })
        })
        .collect();
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for call in calls {
        match call.await? {
            (Ok(()), after) => served.push(after),
            (Err(status), after) => refused.push((status, after)),
        }
    }
    served.sort();
    assert_eq!(
        served.len(),
        3,
        "served after {served:?}, refused {refused:?}"
    );
    // Queued, not refused: the later ones waited for their slot.
    assert!(served[1] >= Duration::from_millis(450), "{served:?}");
    assert!(served[2] >= Duration::from_millis(950), "{served:?}");
    assert_eq!(refused.len(), 3);
    for (status, after) in &refused {
        assert_status(
            status,
            Code::Unavailable,
            ErrorReason::ProviderUnavailable,
            "request-rate limit for this provider (2/s, burst 1)",
        );
        let delay = retry_delay(status).expect("RetryInfo");
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_secs(1),
            "{delay:?}"
        );
        assert!(
            *after < Duration::from_millis(1500),
            "before the deadline: {after:?}"
        );
    }
    // The provider saw its rate, its two types together.
    let mut hits: Vec<Instant> = api.hits("rfr");
    hits.extend(api.hits("situation"));
    hits.sort();
    assert_eq!(hits.len(), 3);
    for pair in hits.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(450), "{hits:?}");
    }
    assert!(
        metric(
            &broker,
            &[
                "unefois_provider_held_total{",
                "provider=\"dgfip\"",
                "reason=\"rate_limit\""
            ]
        )
        .await?
        .is_some_and(|n| n >= 3.0)
    );
    // Later, calls go through again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    ExchangeClient::new(channel)
        .fetch(fetch(RFR, "test:alice"))
        .await?;
    broker.stop().await
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_api_key_is_read_again_on_reload_and_written_nowhere() -> anyhow::Result<()> {
    let provider_pki_dir = tempfile::tempdir()?;
    let provider_pki = unefois_certs::Pki::init(provider_pki_dir.path(), "unefois.test", &["caf"])?;
    let (addr, api) = serve_api_over_tls(&provider_pki).await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    std::fs::create_dir_all(scratch.path().join("secrets"))?;
    std::fs::copy(
        provider_pki.ca_cert_path(),
        scratch.path().join("dgfip-ca.pem"),
    )?;
    let key_file = scratch.path().join("secrets/dgfip.key");
    std::fs::write(&key_file, "cl3-numero-1\n")?;
    let adapter = format!(
        "adapter = {{ kind = \"http\", url = \"https://127.0.0.1:{}/v1/rfr/{{subject}}\", ca_file = \"dgfip-ca.pem\", api_key_file = \"secrets/dgfip.key\", api_key_header = \"X-Api-Key\", retries = 0, claims = {{ revenu = \"/data/revenu\" }} }}",
        addr.port()
    );
    let ty = "caf.situation_fiscale";
    let registry = registry(
        scratch.path(),
        DGFIP_STATIC,
        &situation_type("caf", &adapter),
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry.clone()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    *api.accepted_key.lock().unwrap_or_else(|e| e.into_inner()) = Some("cl3-numero-1".into());
    lyon.fetch(fetch(ty, "test:alice")).await?;

    // The provider rotates the key; the new one is written to the file: until a reload the
    // broker still sends the old one, and the provider refuses it.
    *api.accepted_key.lock().unwrap_or_else(|e| e.into_inner()) = Some("cl3-numero-2".into());
    std::fs::write(&key_file, "cl3-numero-2\n")?;
    let status = lyon
        .fetch(fetch(ty, "test:alice"))
        .await
        .expect_err("old key");
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderAuthFailed,
        "HTTP 401",
    );
    assert!(!status.message().contains("cl3"), "{status:?}");
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    lyon.fetch(fetch(ty, "test:alice")).await?;
    let keys = api.keys.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        keys,
        ["cl3-numero-1", "cl3-numero-1", "cl3-numero-2"].map(|k| Some(k.to_string()))
    );

    // Neither key is in the registry, the journal, the audit log or any other file the broker
    // wrote.
    // (Read while the broker runs: its data directory goes with it.)
    let written = files(&broker.data_dir);
    assert!(written.len() > 1, "{written:?}");
    for file in written.iter().chain([&registry]) {
        let bytes = std::fs::read(file)?;
        assert!(
            !bytes.windows(3).any(|w| w == b"cl3"),
            "{} holds a key",
            file.display()
        );
    }
    broker.stop().await
}

#[tokio::test]
async fn bad_access_settings_refuse_the_start_naming_file_and_key() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let http = |extra: &str| {
        format!(
            "adapter = {{ kind = \"http\", url = \"http://api.dgfip.test/v1/rfr/{{subject}}\", allow_plain_http = true, {CLAIMS}{extra} }}"
        )
    };
    let https = |extra: &str| {
        format!(
            "adapter = {{ kind = \"http\", url = \"https://api.dgfip.test/v1/rfr/{{subject}}\", ca_file = \"secrets/k\", {CLAIMS}{extra} }}"
        )
    };
    let oauth2 = |token_url: &str| {
        format!(
            ", oauth2 = {{ token_url = \"{token_url}\", client_id_file = \"secrets/k\", client_secret_file = \"secrets/k\" }}"
        )
    };
    let rows: Vec<(&str, String, String, &str, &str)> = vec![
        (
            "an API key over plain http",
            http(", api_key_file = \"secrets/k\", api_key_header = \"X-Api-Key\""),
            String::new(),
            "attestation_types[1].adapter.api_key_file",
            "never sent over plain http://",
        ),
        (
            "OAuth2 over plain http",
            http(&oauth2("https://auth.dgfip.test/token")),
            String::new(),
            "attestation_types[1].adapter.oauth2",
            "never sent over plain http://",
        ),
        (
            "an OAuth2 token endpoint over plain http",
            https(&oauth2("http://auth.dgfip.test/token")),
            String::new(),
            "attestation_types[1].adapter.oauth2.token_url",
            "client secret would travel in clear",
        ),
        (
            "an API key outside the registry's folder",
            https(", api_key_file = \"../k\", api_key_header = \"X-Api-Key\""),
            String::new(),
            "attestation_types[1].adapter.api_key_file",
            "inside the registry's folder",
        ),
        (
            "a rate limit of zero",
            http(", rate_limit = { per_second = 0 }"),
            String::new(),
            "attestation_types[1].adapter.rate_limit",
            "per_second must be between 1 and 10000",
        ),
        (
            "two types of one provider with different rate limits",
            http(", rate_limit = { per_second = 20, burst = 20 }"),
            situation_type(
                "dgfip",
                "adapter = { kind = \"http\", url = \"http://api.dgfip.test/v1/s/{subject}\", allow_plain_http = true, claims = { revenu = \"/r\" }, rate_limit = { per_second = 10 } }",
            ),
            "attestation_types[5].adapter.rate_limit",
            "share one rate limit",
        ),
        (
            "a SOCKS proxy",
            http(", proxy = \"socks5://proxy.mairie.test:1080\""),
            String::new(),
            "attestation_types[1].adapter.proxy",
            "http:// or https:// proxy URL",
        ),
        (
            "a bad error-code pointer",
            http(", errors = { code_pointer = \"errors.0.code\" }"),
            String::new(),
            "attestation_types[1].adapter.errors.code_pointer",
            "must be empty or start with '/'",
        ),
        (
            "an unknown error outcome",
            http(
                ", errors = { code_pointer = \"/errors/0/code\", codes = { \"37003\" = \"absent\" } }",
            ),
            String::new(),
            "attestation_types[1]",
            "absent",
        ),
    ];
    for (label, adapter, extra, key, words) in rows {
        let scratch = tempfile::tempdir()?;
        std::fs::create_dir_all(scratch.path().join("secrets"))?;
        std::fs::write(scratch.path().join("secrets/k"), "s3cr3t-value\n")?;
        let registry = registry(scratch.path(), &adapter, &extra)?;
        let error = match TestBroker::start_with_registry(pki.dir(), registry.clone()).await {
            Ok(broker) => {
                broker.stop().await?;
                anyhow::bail!("{label}: the broker started");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            error.contains(&registry.display().to_string()) && error.contains(key),
            "{label}: the error names the file and {key}: {error}"
        );
        assert!(error.contains(words), "{label}: {error}");
        assert!(!error.contains("s3cr3t"), "{label}: {error}");
    }
    Ok(())
}

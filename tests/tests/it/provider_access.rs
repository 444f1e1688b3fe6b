//! Providers as the State's APIs behave, end to end through a broker: a gRPC provider's
//! `RetryInfo` holds its calls as an HTTP `Retry-After` does, secrets are read again on reload
//! and appear nowhere, and bad settings refuse the start naming file and key. The tests that
//! read the provider's metrics (cool-down, refused credentials, rate limit) are
//! `serial::provider_access`, in the test binary that runs them one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::provider_api::{
    CLAIMS, fetch, registry, serve_api_over_tls, situation_type, wait_health,
};
use unefois_tests::refusals::{assert_status, retry_delay};
use unefois_tests::sample::DGFIP_STATIC;
use unefois_tests::{TestBroker, TestPki};

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

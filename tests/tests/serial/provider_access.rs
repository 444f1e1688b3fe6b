//! Providers as the State's APIs behave, as their metrics show it: a provider that asks to
//! wait is left alone until then (cool-down, shared by its types, visible in health, status and
//! metrics), error codes tell an unknown person from a wrong route, refused credentials are
//! PROVIDER_AUTH_FAILED with their metric, and the per-provider rate limit queues then refuses.
//! The rest of the provider-access tests are `it::provider_access`.
//!
//! Here because they assert on the values of the process's metrics for provider `dgfip` (its
//! cool-downs, refused credentials and held calls), which tests of `it` move too (`providers`
//! has the DGFiP ask to wait); no other test of this binary touches those series.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::registry_client::RegistryClient;
use unefois_tests::provider_api::{
    CLAIMS, OK, REFUSE, SITUATION, THROTTLE, fetch, http_adapter, registry, serve_api,
    situation_type, wait_health,
};
use unefois_tests::refusals::{assert_status, retry_delay};
use unefois_tests::sample::RFR;
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
    let _alone = crate::alone().await;
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

#[tokio::test(flavor = "multi_thread")]
async fn error_codes_tell_an_unknown_person_from_a_wrong_route_and_refusals_are_auth_failures()
-> anyhow::Result<()> {
    let _alone = crate::alone().await;
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
    let _alone = crate::alone().await;
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

//! A consumer over its rate is refused with a retry-after, and the refusals are recorded once
//! per window with their count; a consumer reading too many people raises the harvesting
//! alarm; providers report their readiness in grpc.health.v1.

use broker::event::{Event, Record};
use broker::grpc::status::reason_of;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::journal::records;
use unefois_tests::refusals::retry_delay;
use unefois_tests::{BrokerOptions, TestBroker, TestPki};

fn energy(subject: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: "aide_energie".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn over_its_rate_a_consumer_waits_and_refusals_are_counted_once() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = unefois_tests::sample_registry_with(scratch.path(), |s| {
        s.replace(
            "rate_limit = { per_minute = 600, burst = 60 }",
            "rate_limit = { per_minute = 60, burst = 3 }",
        )
    })?;
    let data = scratch.path().join("broker-data");
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    )
    .await?;
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);
    for _ in 0..3 {
        ccas.fetch(energy("test:alice")).await?;
    }
    let mut refused = 0;
    for _ in 0..5 {
        let status = ccas
            .fetch(energy("test:alice"))
            .await
            .expect_err("admitted");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(reason_of(&status), Some(ErrorReason::RateLimited));
        let retry = retry_delay(&status);
        assert!(
            retry.is_some_and(|d| d.as_millis() > 0),
            "retry-after given"
        );
        refused += 1;
    }
    // Other consumers are not affected.
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    lyon.fetch(pb::FetchRequest {
        purpose: "tarification_cantine".into(),
        ..energy("test:alice")
    })
    .await?;
    broker.stop().await?;

    let journal = records(&data)?;
    let limited: Vec<_> = journal
        .iter()
        .filter_map(|r| match &r.event {
            Event::RateLimited {
                participant, count, ..
            } => Some((participant.clone(), *count)),
            _ => None,
        })
        .collect();
    assert_eq!(limited, vec![("ccas-lyon".to_string(), refused)]);
    let denied_exchanges = journal
        .iter()
        .filter(|r| matches!(&r.event, Event::Exchange(e) if e.participant == "ccas-lyon"))
        .count();
    assert_eq!(
        denied_exchanges, 3,
        "a flood does not write one entry per refusal"
    );
    Ok(())
}

#[tokio::test]
async fn reading_too_many_people_raises_one_harvesting_alarm() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = unefois_tests::sample_registry_with(scratch.path(), |s| {
        s.replace(
            "max_subjects_per_minute = 120",
            "max_subjects_per_minute = 2",
        )
    })?;
    let data = scratch.path().join("broker-data");
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    )
    .await?;
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);
    // Two distinct people: under the threshold.
    for subject in ["test:alice", "test:alice", "test:bob"] {
        ccas.fetch(energy(subject)).await?;
    }
    let alarms = |records: &[Record]| {
        records
            .iter()
            .filter(|r| matches!(r.event, Event::HarvestingAlarm { .. }))
            .count()
    };
    // A third raises the alarm; a fourth does not raise another in the same window.
    ccas.fetch(energy("test:carol")).await?;
    ccas.fetch(energy("test:eve")).await?;
    broker.stop().await?;
    let journal = records(&data)?;
    assert_eq!(
        alarms(&journal),
        1,
        "one alarm per window, not one per read"
    );
    let Some(Event::HarvestingAlarm {
        participant,
        habilitation,
        distinct_subjects,
        limit,
    }) = journal
        .iter()
        .map(|r| &r.event)
        .find(|e| matches!(e, Event::HarvestingAlarm { .. }))
    else {
        anyhow::bail!("no alarm");
    };
    assert_eq!(participant, "ccas-lyon");
    assert_eq!(habilitation, "ccas-lyon.dgfip.revenu_fiscal_reference");
    assert_eq!((*distinct_subjects, *limit), (3, 2));
    Ok(())
}

#[tokio::test]
async fn each_provider_reports_its_readiness() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut health = HealthClient::new(broker.channel("dinum").await?);
    for ty in [
        "caf.quotient_familial",
        "dgfip.revenu_fiscal_reference",
        "mesr.statut_etudiant",
    ] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: format!("unefois.provider.{ty}"),
            })
            .await?
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{ty}");
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "unefois.provider.dgfip.patrimoine".into(),
        })
        .await;
    assert_eq!(unknown.map_err(|s| s.code()).err(), Some(Code::NotFound));
    broker.stop().await
}

#[tokio::test]
async fn metrics_count_exchanges_by_consumer_type_and_outcome_without_subjects()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    lyon.fetch(pb::FetchRequest {
        purpose: "tarification_cantine".into(),
        ..energy("test:alice")
    })
    .await?;
    let mut test = ExchangeClient::new(broker.channel("mairie-test").await?);
    test.fetch(energy("test:bob"))
        .await
        .expect_err("no habilitation");
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);
    ccas.fetch(pb::FetchRequest {
        attestation_type: "x".repeat(100),
        ..energy("test:carol")
    })
    .await
    .expect_err("unknown type");

    // Paths no service serves, shaped like the broker's own methods: the router answers
    // UNIMPLEMENTED, and the method label stays `other`, whatever the name.
    for path in ["/unefois.v1.Exchange/Nope", "/unefois.v1.Madeup/Call"] {
        let mut grpc = tonic::client::Grpc::new(broker.channel("ccas-lyon").await?);
        grpc.ready().await?;
        let refused = grpc
            .unary::<pb::FetchRequest, pb::FetchResponse, _>(
                tonic::Request::new(energy("test:carol")),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(refused.code(), Code::Unimplemented, "{path}");
    }

    let (status, text) = unefois_tests::http_get(broker.ops_addr, "/metrics").await?;
    assert_eq!(status, 200);
    let line = |needle: &[&str]| {
        text.lines()
            .any(|l| !l.starts_with('#') && needle.iter().all(|n| l.contains(n)))
    };
    assert!(
        line(&[
            "unefois_fetch_total",
            "consumer=\"mairie-lyon\"",
            "attestation_type=\"dgfip.revenu_fiscal_reference\"",
            "outcome=\"granted\""
        ]),
        "{text}"
    );
    assert!(line(&[
        "unefois_fetch_total",
        "consumer=\"mairie-test\"",
        "outcome=\"denied\"",
        "reason=\"NO_HABILITATION\""
    ]));
    assert!(
        line(&[
            "unefois_fetch_total",
            "consumer=\"ccas-lyon\"",
            "attestation_type=\"(unregistered)\""
        ]),
        "a caller's input never becomes a label"
    );
    assert!(line(&[
        "unefois_provider_calls_total",
        "provider=\"dgfip\"",
        "result=\"ok\""
    ]));
    assert!(line(&["unefois_fetch_duration_seconds_bucket"]));
    assert!(line(&[
        "unefois_grpc_requests_total",
        "method=\"unefois.v1.Exchange/Fetch\""
    ]));
    assert!(
        line(&["unefois_grpc_requests_total", "method=\"other\"", "} 2"]),
        "{text}"
    );
    for made_up in ["Nope", "Madeup"] {
        assert!(!text.contains(made_up), "{made_up} became a label: {text}");
    }
    // The audit log's share of an answer's latency, and the disk's: one granted fetch and the
    // two refusals are three journal appends at least, each in a synced batch.
    let count = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("unefois_journal_append_seconds_count") >= 3.0,
        "{text}"
    );
    assert!(count("unefois_journal_sync_seconds_count") >= 1.0, "{text}");
    assert!(count("unefois_journal_batch_records_sum") >= 3.0, "{text}");
    assert!(line(&[
        "unefois_journal_batch_records_bucket",
        "le=\"1024\""
    ]));
    for secret in ["alice", "bob", "carol", "23870", "xxxxxxxx"] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }
    broker.stop().await
}

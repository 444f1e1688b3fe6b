//! A consumer over its rate is refused with a retry-after, and the refusals are recorded once
//! per window with their count; a consumer reading too many people raises the harvesting
//! alarm; providers report their readiness in grpc.health.v1.

use broker::client::reason_of;
use broker::event::{Event, Record};
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::journal::records;
use unefois_tests::refusals::retry_delay;
use unefois_tests::requests::energy;
use unefois_tests::{BrokerOptions, TestBroker, TestPki};

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
    let (broker, data) = watching_two_people(&pki, scratch.path(), None).await?;
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

/// The alarm's record cannot be appended (the disk fails): the read that raised it is refused,
/// and the alarm is raised again by the next person read once the disk is back, rather than
/// lost for the minute. (It was lost: the alarm counted as raised, its record nowhere.)
#[tokio::test]
async fn a_harvesting_alarm_whose_record_failed_is_raised_again() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let fail = Arc::new(AtomicBool::new(false));
    let faults = unefois_tests::journal::failing_after_write(&fail);
    let (broker, data) = watching_two_people(&pki, scratch.path(), Some(faults)).await?;
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);
    // All within one wall-clock minute: not in its last seconds.
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        % 60;
    if second >= 50 {
        tokio::time::sleep(std::time::Duration::from_secs(61 - second)).await;
    }
    for subject in ["test:alice", "test:bob"] {
        ccas.fetch(energy(subject)).await?;
    }
    // The third person raises the alarm, which cannot be recorded: the read is refused.
    fail.store(true, Ordering::SeqCst);
    let refused = ccas.fetch(energy("test:carol")).await;
    assert_eq!(
        refused.as_ref().err().map(|s| s.code()),
        Some(Code::Unavailable),
        "{refused:?}"
    );
    fail.store(false, Ordering::SeqCst);
    // The disk back, the next person read raises it again, within the same minute.
    ccas.fetch(energy("test:eve")).await?;
    broker.stop().await?;
    let alarms: Vec<u64> = records(&data)?
        .into_iter()
        .filter_map(|r| match r.event {
            Event::HarvestingAlarm {
                distinct_subjects, ..
            } => Some(distinct_subjects),
            _ => None,
        })
        .collect();
    // Past the limit no more people are counted: the alarm says three, as first raised.
    assert_eq!(alarms, [3], "one alarm, recorded");
    Ok(())
}

/// A broker whose habilitations allow two people a minute, its data under `scratch`, its
/// journal failing as `faults` says; its data directory.
async fn watching_two_people(
    pki: &TestPki,
    scratch: &std::path::Path,
    faults: Option<broker::journal::FaultInjector>,
) -> anyhow::Result<(TestBroker, std::path::PathBuf)> {
    let registry = unefois_tests::sample_registry_with(scratch, |s| {
        s.replace(
            "max_subjects_per_minute = 120",
            "max_subjects_per_minute = 2",
        )
    })?;
    let data = scratch.join("broker-data");
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            data_dir: Some(data.clone()),
            journal_faults: faults,
            ..Default::default()
        },
    )
    .await?;
    Ok((broker, data))
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

//! The brokers of a cluster enforce a participant's rate and the harvesting alarm together:
//! behind a balancer, three brokers let a consumer call at its rate, not three times it, and
//! raise the alarm for a consumer that read too many people through all of them together. A
//! provider's own limits are the cluster's too: its rate limit, and its requests to wait.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use broker::event::{Event, Record};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_tests::TestPki;
use unefois_tests::clients::{exchange, provider_health};
use unefois_tests::provider_api::{
    CLAIMS, OK, THROTTLE_LONG, fetch, http_adapter, registry, serve_api,
};
use unefois_tests::refusals::assert_status;
use unefois_tests::refusals::refused;
use unefois_tests::requests::energy;
use unefois_tests::sample::RFR;
use unefois_tlog::verify_checkpoint;

use crate::harness::{Cluster, Database, log_entries};

/// Longer than a few shares of the brokers' counts, on a machine busy with the other tests.
const SHARED: Duration = Duration::from_millis(3_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_gets_its_rate_once_across_the_brokers() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    // 6 at once, then one every 10 s.
    let registry = unefois_tests::sample_registry_with(scratch.path(), |s| {
        s.replace(
            "rate_limit = { per_minute = 600, burst = 60 }",
            "rate_limit = { per_minute = 6, burst = 6 }",
        )
    })?;
    let db = Database::start().await?;
    let cluster = Cluster::start_on_registry(pki.dir(), &db.url(), 3, &registry).await?;
    let mut clients = Vec::new();
    for broker in &cluster.brokers {
        clients.push(exchange(broker, "ccas-lyon").await?);
    }
    // The burst, spread over the brokers: two calls each.
    for i in 0..6 {
        clients[i % 3].fetch(energy("test:alice")).await?;
    }
    tokio::time::sleep(SHARED).await;
    // Each broker alone would admit four more; together they admit what the rate gave back
    // meanwhile (one call every 10 s), and refuse the rest with a retry-after.
    let mut admitted = 0;
    for i in 0..9 {
        let answer = clients[i % 3].fetch(energy("test:alice")).await;
        match answer {
            Ok(_) => admitted += 1,
            Err(_) => {
                let status = refused(answer, Code::ResourceExhausted, ErrorReason::RateLimited);
                assert!(
                    unefois_tests::refusals::retry_delay(&status).is_some(),
                    "a retry-after"
                );
            }
        }
    }
    assert!(admitted <= 1, "{admitted} calls admitted past the burst");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// Over its rate, a consumer's calls are shared fairly between the brokers: a broker that
/// joins while another admits the whole rate gets its part. (Charging each broker the calls the
/// others admitted, the first kept nearly all of it and the second refused nearly every call,
/// with a minute's retry-after.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_over_a_consumers_rate_share_it_fairly() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    // 20 a second, 10 at once.
    let registry = unefois_tests::sample_registry_with(scratch.path(), |s| {
        s.replace(
            "rate_limit = { per_minute = 600, burst = 60 }",
            "rate_limit = { per_minute = 1200, burst = 10 }",
        )
    })?;
    let db = Database::start().await?;
    let cluster = Cluster::start_on_registry(pki.dir(), &db.url(), 2, &registry).await?;
    /// Calls through `broker` at 60 a second for `seconds`: those admitted in the last
    /// `counted` seconds.
    async fn calls(
        broker: &unefois_tests::TestBroker,
        seconds: u64,
        counted: u64,
    ) -> anyhow::Result<u64> {
        let mut client = exchange(broker, "ccas-lyon").await?;
        let started = Instant::now();
        let (end, from) = (
            Duration::from_secs(seconds),
            Duration::from_secs(seconds - counted),
        );
        let mut admitted = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1_000 / 60));
        while started.elapsed() < end {
            tick.tick().await;
            let answer = client.fetch(energy("test:alice")).await;
            match answer {
                Ok(_) => admitted += u64::from(started.elapsed() >= from),
                Err(_) => {
                    refused(answer, Code::ResourceExhausted, ErrorReason::RateLimited);
                }
            }
        }
        Ok(admitted)
    }
    let (first, second) = (&cluster.brokers[0], &cluster.brokers[1]);
    // The first broker alone over the rate, then both.
    let (first_admitted, second_admitted) = tokio::join!(calls(first, 8, 3), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        calls(second, 6, 3).await
    });
    let (first_admitted, second_admitted) = (first_admitted?, second_admitted?);
    let total = first_admitted + second_admitted;
    // The rate over the last 3 s is 60 calls, shared about evenly.
    assert!(
        (45..=75).contains(&total),
        "{first_admitted} + {second_admitted} admitted"
    );
    assert!(
        first_admitted * 5 >= total * 2 && second_admitted * 5 >= total * 2,
        "{first_admitted} + {second_admitted} admitted"
    );
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// A broker that stops (a rolling restart) shares what it admitted since its last share: the
/// consumer's burst spent through it just before is not given again by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_that_stops_shares_what_it_admitted_last() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    // 6 at once, then one every 10 s.
    let registry = unefois_tests::sample_registry_with(scratch.path(), |s| {
        s.replace(
            "rate_limit = { per_minute = 600, burst = 60 }",
            "rate_limit = { per_minute = 6, burst = 6 }",
        )
    })?;
    let db = Database::start().await?;
    let mut cluster = Cluster::start_on_registry(pki.dir(), &db.url(), 2, &registry).await?;
    let mut other = exchange(&cluster.brokers[1], "ccas-lyon").await?;
    // The whole burst through the first broker, which stops at once (within one share's
    // interval of its last calls).
    let mut first = exchange(&cluster.brokers[0], "ccas-lyon").await?;
    for _ in 0..6 {
        first.fetch(energy("test:alice")).await?;
    }
    cluster.brokers.remove(0).stop().await?;
    tokio::time::sleep(SHARED).await;
    // The other broker knows of the six: it admits what the rate gave back meanwhile (one
    // call every 10 s) and refuses the rest.
    let mut admitted = 0;
    for _ in 0..4 {
        let answer = other.fetch(energy("test:alice")).await;
        match answer {
            Ok(_) => admitted += 1,
            Err(_) => {
                refused(answer, Code::ResourceExhausted, ErrorReason::RateLimited);
            }
        }
    }
    assert!(admitted <= 1, "{admitted} calls admitted past the burst");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn people_read_through_every_broker_raise_the_harvesting_alarm() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = unefois_tests::sample_registry_with(scratch.path(), |s| {
        s.replace(
            "max_subjects_per_minute = 120",
            "max_subjects_per_minute = 4",
        )
    })?;
    let db = Database::start().await?;
    let cluster = Cluster::start_on_registry(pki.dir(), &db.url(), 3, &registry).await?;
    // The people of one minute are counted together: not across the minute's end.
    let second = time::OffsetDateTime::now_utc().second();
    if second > 45 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
    // Six people, two through each broker: none saw more than the habilitation's 4. (The
    // provider knows four of them: each read is counted, answered or not.)
    let people = ["alice", "bob", "carol", "dave", "eve", "frank"];
    for (i, person) in people.iter().enumerate() {
        let answer = exchange(&cluster.brokers[i % 3], "ccas-lyon")
            .await?
            .fetch(energy(&format!("test:{person}")))
            .await;
        if let Err(status) = answer {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
        }
    }
    // A broker raises the alarm once it has the others' people: within a few shares; others
    // sharing at the same moment may raise it too.
    let mut audit = AuditClient::new(cluster.brokers[0].channel("cnil").await?);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alarms(&mut audit).await?.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(SHARED).await;
    let alarms = alarms(&mut audit).await?;
    assert!(
        (1..=3).contains(&alarms.len()),
        "{} alarms: {alarms:?}",
        alarms.len()
    );
    for (participant, distinct, limit) in alarms {
        assert_eq!((participant.as_str(), limit), ("ccas-lyon", 4));
        assert!((5..=6).contains(&distinct), "{distinct} people");
    }
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// The harvesting alarms in the log: consumer, people counted, limit.
async fn alarms(
    audit: &mut AuditClient<tonic::transport::Channel>,
) -> anyhow::Result<Vec<(String, u64, u32)>> {
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner();
    let size = verify_checkpoint(note.verifier_key.trim(), &note.checkpoint)?.size;
    Ok(log_entries(audit, size)
        .await?
        .iter()
        .map(|entry| serde_json::from_slice::<Record>(entry))
        .filter_map(|record| match record.map(|r| r.event) {
            Ok(Event::HarvestingAlarm {
                participant,
                distinct_subjects,
                limit,
                ..
            }) => Some((participant, distinct_subjects, limit)),
            _ => None,
        })
        .collect())
}

/// A provider that asks one broker to wait (429 with `Retry-After`) is left alone by every
/// broker until then: the others hold its calls too, and report its types NOT_SERVING.
/// (Without the share, the second broker went on calling it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_asked_one_broker_to_wait_is_left_alone_by_all() -> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = registry(scratch.path(), &http_adapter(addr, "rfr", CLAIMS, ""), "")?;
    let db = Database::start().await?;
    let cluster = Cluster::start_on_registry(pki.dir(), &db.url(), 2, &registry).await?;
    let (first, second) = (&cluster.brokers[0], &cluster.brokers[1]);
    let mut through_first = exchange(first, "mairie-lyon").await?;
    let mut through_second = exchange(second, "mairie-lyon").await?;
    through_second.fetch(fetch(RFR, "test:alice")).await?;

    api.mode.store(THROTTLE_LONG, Ordering::SeqCst);
    let status = through_first
        .fetch(fetch(RFR, "test:alice"))
        .await
        .expect_err("429");
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderUnavailable,
        "asked to wait 60 s",
    );
    // It would answer now; no broker calls it all the same.
    api.mode.store(OK, Ordering::SeqCst);
    let called = api.hits("rfr").len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider_health(second, RFR).await? != ServingStatus::NotServing {
        assert!(
            Instant::now() < deadline,
            "the other broker still serves the provider's type"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = through_second
        .fetch(fetch(RFR, "test:alice"))
        .await
        .expect_err("held");
    assert_status(
        &status,
        Code::Unavailable,
        ErrorReason::ProviderUnavailable,
        "asked to be called again later",
    );
    let delay = unefois_tests::refusals::retry_delay(&status).expect("RetryInfo");
    assert!(
        delay > Duration::from_secs(40) && delay <= Duration::from_secs(60),
        "{delay:?}"
    );
    assert_eq!(api.hits("rfr").len(), called, "the provider was called");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// A provider's `rate_limit` is the cluster's: what one broker sent it is waited for by the
/// others. (Without the share, the second broker sent it a whole burst of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_gets_its_rate_once_across_the_brokers() -> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    // 8 at once, then one a second.
    let adapter = http_adapter(
        addr,
        "rfr",
        CLAIMS,
        ", rate_limit = { per_second = 1, burst = 8 }",
    );
    let registry = registry(scratch.path(), &adapter, "")?;
    let db = Database::start().await?;
    let cluster = Cluster::start_on_registry(pki.dir(), &db.url(), 2, &registry).await?;
    let mut through_first = exchange(&cluster.brokers[0], "mairie-lyon").await?;
    let mut through_second = Vec::new();
    for _ in 0..8 {
        through_second.push(exchange(&cluster.brokers[1], "mairie-lyon").await?);
    }
    // The second broker cannot hear of the first's calls before they began.
    let first = Instant::now();
    for _ in 0..8 {
        through_first.fetch(fetch(RFR, "test:alice")).await?;
    }
    tokio::time::sleep(SHARED).await;
    // The second broker alone would send 8 at once; it sends what the rate gave back since
    // the burst was spent (one a second), and refuses the calls that cannot wait for more.
    let mut calls = tokio::task::JoinSet::new();
    for mut client in through_second {
        calls.spawn(async move {
            let mut request = tonic::Request::new(fetch(RFR, "test:alice"));
            request.set_timeout(Duration::from_millis(500));
            client.fetch(request).await
        });
    }
    let mut answered = 0;
    for answer in calls.join_all().await {
        match answer {
            Ok(_) => answered += 1,
            // A slot that came late may leave its call too little time to be answered.
            Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {}
            Err(status) => assert_status(
                &status,
                Code::Unavailable,
                ErrorReason::ProviderUnavailable,
                "request-rate limit",
            ),
        }
    }
    let sent = api.hits("rfr").len() - 8;
    let given_back = first.elapsed().as_secs() as usize;
    assert!(
        sent <= given_back,
        "{sent} calls sent past the burst, {given_back} given back"
    );
    assert!(answered <= sent, "{answered} answered, {sent} sent");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

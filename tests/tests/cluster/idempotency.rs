//! A consent grant retried through another broker while its first attempt is still being
//! committed records one consent: the person and the request id are held across the brokers
//! from the check of the request id to the record, and past a first attempt that timed out,
//! until its record's outcome is known.

use std::time::Duration;

use anyhow::anyhow;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_tests::TestPki;
use unefois_tests::clients::consents;
use unefois_tests::refusals::refused;
use unefois_tests::requests::consent;
use unefois_tests::sample::{CANTINE, QF};

use crate::harness::{APPEND_TIMEOUT, Cluster, Database};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_retried_on_another_broker_records_one_consent() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 2).await?;
    let [a, b] = &cluster.brokers[..] else {
        return Err(anyhow!("two brokers"));
    };
    let grant = pb::GrantConsentRequest {
        request_id: "grant-retried".into(),
        ..consent("test:carol", QF, CANTINE)
    };

    // Someone holds the log's row for 2 s: the first attempt's record waits there, uncommitted,
    // while the retry reaches the other broker.
    let mut holder = db
        .primary
        .sql_meanwhile("BEGIN; SELECT 1 FROM unefois_log FOR UPDATE; SELECT pg_sleep(2); COMMIT");
    let attempts = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut first_broker = consents(a, "mairie-lyon").await?;
        let first_grant = grant.clone();
        let first = tokio::spawn(async move { first_broker.grant(first_grant).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let retried = consents(b, "mairie-lyon").await?.grant(grant).await?;
        anyhow::Ok((first.await??.into_inner(), retried.into_inner()))
    }
    .await;
    tokio::task::block_in_place(|| holder.wait())?;
    let (first, retried) = attempts?;

    let (first, retried) = (
        first.consent.ok_or_else(|| anyhow!("no consent"))?,
        retried.consent.ok_or_else(|| anyhow!("no consent"))?,
    );
    assert_eq!(retried.id, first.id);
    let recorded =
        tokio::task::block_in_place(|| db.primary.sql("SELECT count(*) FROM unefois_consents"));
    assert_eq!(recorded, "1");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// The first attempt answered UNAVAILABLE at the append timeout while its record waits for the
/// stopped standby (committed on the primary, not yet visible): a retry through another broker
/// waits for that outcome, then returns the consent the first attempt recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_retried_after_its_first_attempt_timed_out_records_one_consent()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let mut db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 2).await?;
    let [a, b] = &cluster.brokers[..] else {
        return Err(anyhow!("two brokers"));
    };
    let grant = pb::GrantConsentRequest {
        request_id: "grant-timed-out".into(),
        ..consent("test:dave", QF, CANTINE)
    };

    tokio::task::block_in_place(|| db.standby.stop("fast"));
    let first = consents(a, "mairie-lyon").await?.grant(grant.clone()).await;
    refused(first, Code::Unavailable, ErrorReason::StoreUnavailable);
    let mut second_broker = consents(b, "mairie-lyon").await?;
    let retried = tokio::spawn(async move { second_broker.grant(grant).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| db.standby.start());
    let retried = retried
        .await??
        .into_inner()
        .consent
        .ok_or_else(|| anyhow!("no consent"))?;
    let recorded =
        tokio::task::block_in_place(|| db.primary.sql("SELECT id FROM unefois_consents"));
    assert_eq!(recorded, retried.id, "one consent, the first attempt's");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// The first attempt's COMMIT waited for the stopped standby until an administrator cancelled
/// that wait: committed on the primary alone, answered UNAVAILABLE. A retry finds the request
/// id recorded there, and is answered from it only once the standby has it: a failover before
/// would lose the consent the retry was told exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_is_not_answered_from_a_record_the_standby_lacks() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let mut db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    let grant = pb::GrantConsentRequest {
        request_id: "grant-on-the-primary-alone".into(),
        ..consent("test:erin", QF, CANTINE)
    };

    let mut first_client = consents(broker, "mairie-lyon").await?;
    let first_grant = grant.clone();
    let first = record_waiting_for_the_stopped_standby(&mut db, async move {
        first_client.grant(first_grant).await
    })
    .await?;
    // That wait cancelled: committed on the primary alone.
    tokio::task::block_in_place(|| {
        db.primary.sql(&format!(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE {RECORD_WAITING}"
        ))
    });
    refused(
        first.await?,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    let recorded =
        tokio::task::block_in_place(|| db.primary.sql("SELECT id FROM unefois_consents"));
    assert!(!recorded.trim().is_empty(), "committed on the primary");

    // The standby still stopped: the retry is not told the consent exists.
    let retried = consents(broker, "mairie-lyon")
        .await?
        .grant(grant.clone())
        .await;
    refused(retried, Code::Unavailable, ErrorReason::StoreUnavailable);

    // Once the standby has it, the retry gets the consent the first attempt recorded.
    tokio::task::block_in_place(|| db.standby.start());
    let retried =
        granted_once_available(&mut consents(broker, "mairie-lyon").await?, &grant).await?;
    assert_eq!(retried.id, recorded.trim(), "the first attempt's consent");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// A broker dies while its grant's COMMIT waits for the stopped standby: its hold on the person
/// and the request id ends with its connections, its commit goes on, not yet visible. A retry
/// through another broker must not record a second consent meanwhile: it waits for the log's
/// writes in flight, then returns the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_retried_after_its_broker_died_mid_commit_records_one_consent() -> anyhow::Result<()>
{
    let mut db = Database::start().await?;
    let grant = pb::GrantConsentRequest {
        request_id: "grant-of-a-broker-that-died".into(),
        ..consent("test:frank", QF, CANTINE)
    };
    let (_brokers, mut second_client) = broker_died_mid_commit(&mut db, grant.clone()).await?;

    // The retry through the other broker, while the first record waits; the standby comes back
    // within the retry's wait: the retry must not have recorded a second consent meanwhile.
    let mut retry_client = second_client.clone();
    let retry_grant = grant.clone();
    let retry = tokio::spawn(async move { retry_client.grant(retry_grant).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| db.standby.start());
    let _ = retry.await?;

    // The retry returns the first record's consent.
    let retried = granted_once_available(&mut second_client, &grant).await?;
    let recorded =
        tokio::task::block_in_place(|| db.primary.sql("SELECT id FROM unefois_consents"));
    assert_eq!(
        recorded.trim(),
        retried.id,
        "one consent, the first attempt's"
    );
    Ok(())
}

/// The same, with the request id reused for another person through the other broker: that act
/// holds another person, and waits for the first record through its request id alone. It is
/// refused as a reuse (REQUEST_ID_REUSED), not recorded beside the first consent under the same
/// request id. (Before the writer's transaction held the request ids it records, it was
/// granted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_reused_after_its_broker_died_mid_commit_is_refused() -> anyhow::Result<()> {
    let mut db = Database::start().await?;
    let request_id = "grant-reused-while-committing".to_string();
    let first_grant = pb::GrantConsentRequest {
        request_id: request_id.clone(),
        ..consent("test:frank", QF, CANTINE)
    };
    let reused = pb::GrantConsentRequest {
        request_id,
        ..consent("test:grace", QF, CANTINE)
    };
    let (_brokers, mut second_client) = broker_died_mid_commit(&mut db, first_grant).await?;

    // The reuse's act waits for the record in flight under the request id, then the standby
    // comes back; an answer UNAVAILABLE meanwhile (the act's wait is bounded) is sent again.
    let mut retry_client = second_client.clone();
    let retry_grant = reused.clone();
    let retry = tokio::spawn(async move { retry_client.grant(retry_grant).await });
    tokio::task::block_in_place(|| {
        db.primary.wait_for(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            "1",
            Duration::from_secs(10),
        );
        db.standby.start()
    });
    let mut answer = retry.await?;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while answer
        .as_ref()
        .is_err_and(|s| s.code() == Code::Unavailable && std::time::Instant::now() < until)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = second_client.grant(reused.clone()).await;
    }
    refused(answer, Code::AlreadyExists, ErrorReason::RequestIdReused);
    let recorded =
        tokio::task::block_in_place(|| db.primary.sql("SELECT count(*) FROM unefois_consents"));
    assert_eq!(recorded, "1", "the first attempt's consent alone");
    Ok(())
}

/// The first attempt's hold on the person and the request id ends while its record waits for
/// the log's row (its database session ended: a connection broken, an administrator's
/// `pg_terminate_backend`, a proxy's idle timeout): a retry through another broker is let in,
/// finds the request id unused, and records. The first attempt's record is then refused
/// (UNAVAILABLE) rather than committed beside it: one consent, which the first attempt, retried,
/// gets. (Before the writer checked the holds, both attempts were granted, each its own
/// consent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_whose_hold_ended_before_its_record_records_one_consent() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 2).await?;
    let [a, b] = &cluster.brokers[..] else {
        return Err(anyhow!("two brokers"));
    };
    let grant = pb::GrantConsentRequest {
        request_id: "grant-whose-hold-ended".into(),
        ..consent("test:grace", QF, CANTINE)
    };
    let waiting_for_the_row = |n: &str| {
        tokio::task::block_in_place(|| {
            db.primary.wait_for(
                "SELECT count(*) FROM pg_locks WHERE NOT granted",
                n,
                Duration::from_secs(5),
            )
        })
    };

    // Someone holds the log's row: each attempt's record waits there.
    let mut holder = db
        .primary
        .sql_meanwhile("BEGIN; SELECT 1 FROM unefois_log FOR UPDATE; SELECT pg_sleep(60)");
    let attempts = async {
        tokio::task::block_in_place(|| {
            db.primary.wait_for(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
                "1",
                Duration::from_secs(5),
            )
        });
        let mut first_client = consents(a, "mairie-lyon").await?;
        let first_grant = grant.clone();
        let first = tokio::spawn(async move {
            let sent = std::time::Instant::now();
            (first_client.grant(first_grant).await, sent.elapsed())
        });
        waiting_for_the_row("1");
        // The first attempt's hold (its session's advisory locks) ends, its backend gone.
        let ended = tokio::task::block_in_place(|| {
            db.primary.sql(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
                 FROM (SELECT DISTINCT pid FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted) AS held",
            )
        });
        assert_eq!(ended, "1", "one act held");
        // The retry through the other broker holds anew; its record waits for the row too.
        let mut second_client = consents(b, "mairie-lyon").await?;
        let second_grant = grant.clone();
        let second = tokio::spawn(async move { second_client.grant(second_grant).await });
        waiting_for_the_row("2");
        anyhow::Ok((first, second))
    }
    .await;
    tokio::task::block_in_place(|| {
        db.primary.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE wait_event = 'PgSleep'",
        );
        holder.wait()
    })?;
    let (first, second) = attempts?;

    // Refused once its hold was found ended, not at the append timeout (a record whose caller
    // gave up is dropped unwritten, whatever its hold).
    let (first, took) = first.await?;
    refused(first, Code::Unavailable, ErrorReason::StoreUnavailable);
    assert!(took < APPEND_TIMEOUT, "{took:?}");
    let retried = second
        .await??
        .into_inner()
        .consent
        .ok_or_else(|| anyhow!("no consent"))?;
    let recorded =
        tokio::task::block_in_place(|| db.primary.sql("SELECT id FROM unefois_consents"));
    assert_eq!(recorded, retried.id, "one consent, the retry's");
    let again = consents(a, "mairie-lyon").await?.grant(grant).await?;
    assert_eq!(again.into_inner().consent.map(|c| c.id), Some(retried.id));
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// Two broker processes on `db`; `grant` through the first, which dies while the grant's
/// record's COMMIT waits for the stopped standby. The brokers (their homes with them), and a
/// client of the second.
async fn broker_died_mid_commit(
    db: &mut Database,
    grant: pb::GrantConsentRequest,
) -> anyhow::Result<(
    (Vec<tempfile::TempDir>, Vec<crate::harness::Process>),
    unefois_proto::v1::consents_client::ConsentsClient<tonic::transport::Channel>,
)> {
    use unefois_proto::v1::consents_client::ConsentsClient;

    let (homes, mut brokers) = crate::harness::processes(&db.url(), 2).await?;
    let mut first_client = ConsentsClient::new(brokers[0].channel("mairie-lyon").await?);
    let second_client = ConsentsClient::new(brokers[1].channel("mairie-lyon").await?);
    let first =
        record_waiting_for_the_stopped_standby(db, async move { first_client.grant(grant).await })
            .await?;
    brokers[0].kill();
    let _ = first.await;
    Ok(((homes, brokers), second_client))
}

/// The consent `grant` returns through `client` once the store answers again (UNAVAILABLE
/// until then, 30 s at most).
async fn granted_once_available(
    client: &mut unefois_proto::v1::consents_client::ConsentsClient<tonic::transport::Channel>,
    grant: &pb::GrantConsentRequest,
) -> anyhow::Result<pb::Consent> {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let granted = loop {
        match client.grant(grant.clone()).await {
            Ok(answer) => break answer.into_inner(),
            Err(status)
                if std::time::Instant::now() < until && status.code() == Code::Unavailable =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => return Err(anyhow!("after the standby's return: {status:?}")),
        }
    };
    granted.consent.ok_or_else(|| anyhow!("no consent"))
}

/// A backend in the record's COMMIT, waiting for the standby (and not the holder's below).
const RECORD_WAITING: &str = "wait_event = 'SyncRep' AND query NOT LIKE '%pg_sleep%'";

/// Runs `act` (a grant, spawned) so that its record's COMMIT waits for the stopped standby: the
/// log's row held meanwhile, the grant's ID token is counted (a commit of its own) while the
/// standby streams and its record waits for the row; then the standby stops, and the holder's
/// own commit (its row lock was written) is let go. The act's task.
async fn record_waiting_for_the_stopped_standby<T: Send + 'static>(
    db: &mut Database,
    act: impl std::future::Future<Output = T> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<T>> {
    let mut holder = db
        .primary
        .sql_meanwhile("BEGIN; SELECT 1 FROM unefois_log FOR UPDATE; SELECT pg_sleep(2); COMMIT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let task = tokio::spawn(act);
    tokio::task::block_in_place(|| {
        db.primary.wait_for(
            "SELECT count(*) FROM pg_locks WHERE NOT granted",
            "1",
            Duration::from_secs(5),
        );
        db.standby.stop("fast");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.primary.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {RECORD_WAITING}"
        )) != "1"
            && std::time::Instant::now() < deadline
        {
            db.primary.sql(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                 WHERE wait_event = 'SyncRep' AND query LIKE '%pg_sleep%'",
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        holder.wait()
    })?;
    Ok(task)
}

/// A mandate revoked through one broker while an agent grants a consent under it through
/// another: the grant waits for the revocation and is refused, rather than recorded after it
/// and left in force under a revoked mandate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consent_granted_under_a_mandate_being_revoked_elsewhere_is_refused() -> anyhow::Result<()>
{
    use unefois_proto::v1::consents_client::ConsentsClient;
    use unefois_proto::v1::mandates_client::MandatesClient;
    use unefois_tests::sample::{AGENT, STRUCTURE};

    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 2).await?;
    let [a, b] = &cluster.brokers[..] else {
        return Err(anyhow!("two brokers"));
    };
    let mandate = unefois_tests::clients::take_mandate(a, "test:alice", "aide_energie").await?;
    let grant = pb::GrantConsentRequest {
        subject: "test:alice".into(),
        consumer: STRUCTURE.into(),
        attestation_types: vec![QF.into()],
        purpose: "aide_energie".into(),
        valid_days: 7,
        mandate_id: mandate.id.clone(),
        id_token: unefois_tests::id_token("test:alice", STRUCTURE),
        ..Default::default()
    };

    // The log's row held: the revocation, sent first, waits there to be recorded.
    let mut holder = db
        .primary
        .sql_meanwhile("BEGIN; SELECT 1 FROM unefois_log FOR UPDATE; SELECT pg_sleep(2); COMMIT");
    let attempts = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut revoker = MandatesClient::new(b.channel(AGENT).await?);
        let revoke = pb::RevokeMandateRequest {
            mandate_id: mandate.id.clone(),
            ..Default::default()
        };
        let revoked = tokio::spawn(async move { revoker.revoke(revoke).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let granted = ConsentsClient::new(a.channel(AGENT).await?)
            .grant(grant)
            .await;
        anyhow::Ok((revoked.await??, granted))
    }
    .await;
    tokio::task::block_in_place(|| holder.wait())?;
    let (revoked, granted) = attempts?;
    assert_eq!(
        revoked.into_inner().mandate.unwrap_or_default().status(),
        pb::MandateStatus::Revoked
    );
    refused(
        granted,
        Code::FailedPrecondition,
        ErrorReason::MandateRevoked,
    );
    let in_force = tokio::task::block_in_place(|| {
        db.primary
            .sql("SELECT count(*) FROM unefois_consents WHERE body->>'revoked_at' IS NULL")
    });
    assert_eq!(in_force, "0");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

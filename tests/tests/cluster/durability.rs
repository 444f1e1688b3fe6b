//! What synchronous replication promises, seen from participants: with the standby gone, no
//! write is acknowledged (UNAVAILABLE after the append timeout) while reads are still served;
//! once it is back, writes resume. A commit the primary made alone is never acknowledged.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_tests::clients::{consents, exchange};
use unefois_tests::refusals::refused;
use unefois_tests::requests::{consent, rfr};
use unefois_tests::sample::{CANTINE, QF};
use unefois_tests::{TestBroker, TestPki, http_get};

use crate::harness::{APPEND_TIMEOUT, Cluster, Database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_synchronous_standby_nothing_is_acknowledged_and_reads_go_on()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let mut db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    let (status, body) = http_get(broker.ops_addr, "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("primary; 1 synchronous standby in sync"),
        "{body}"
    );
    let before = receipt_of_a_fetch(broker).await?;

    tokio::task::block_in_place(|| db.standby.stop("fast"));
    let started = Instant::now();
    refused(
        exchange(broker, "mairie-lyon")
            .await?
            .fetch(rfr("test:bob"))
            .await,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    let waited = started.elapsed();
    assert!(
        waited >= APPEND_TIMEOUT && waited < APPEND_TIMEOUT + Duration::from_secs(5),
        "answered after {waited:?}"
    );
    refused(
        consents(broker, "mairie-lyon")
            .await?
            .grant(consent("test:alice", QF, CANTINE))
            .await,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    // Reads that write nothing are served: checkpoints and proofs of what was acknowledged,
    // and nothing after it (the refused appends may be committed on the primary alone: a
    // promoted standby could lack them, and an auditor would hold a checkpoint of another log).
    let mut audit = AuditClient::new(broker.channel("dgfip").await?);
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner()
        .checkpoint;
    assert_eq!(note, before.checkpoint);
    let given = unefois_tlog::verify_checkpoint(
        std::fs::read_to_string(pki.dir().join("log.vkey"))?.trim(),
        &before.checkpoint,
    )?;
    let proof = audit
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf_index: before.leaf_index,
            tree_size: given.size,
        })
        .await?
        .into_inner()
        .hashes;
    assert_eq!(proof, before.inclusion_proof);
    let (status, body) = http_get(broker.ops_addr, "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("no synchronous standby in sync"), "{body}");

    // The standby back: writes are acknowledged again.
    let receipt = receipt_once_the_standby_is_back(&mut db, broker).await?;
    assert!(receipt.leaf_index > before.leaf_index);
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// PostgreSQL answers a COMMIT whose wait for the standby an administrator cancelled
/// (`pg_cancel_backend`) with success and a warning: committed on the primary alone, which a
/// failover can lose. The broker must not acknowledge it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_wait_for_the_standby_is_cancelled_is_not_acknowledged() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let mut db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    let before = receipt_of_a_fetch(broker).await?;

    tokio::task::block_in_place(|| db.standby.stop("fast"));
    let mut lyon = exchange(broker, "mairie-lyon").await?;
    let fetch = tokio::spawn(async move { lyon.fetch(rfr("test:bob")).await });
    let started = Instant::now();
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'";
    tokio::task::block_in_place(|| {
        db.primary.wait_for(waiting, "1", APPEND_TIMEOUT / 2);
        db.primary
            .sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
    });
    refused(
        fetch.await?,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    // Refused at the commit's answer, not at the append timeout.
    assert!(
        started.elapsed() < APPEND_TIMEOUT,
        "{:?}",
        started.elapsed()
    );

    // The standby back: writes are acknowledged again, after the refused one.
    let receipt = receipt_once_the_standby_is_back(&mut db, broker).await?;
    assert!(receipt.leaf_index > before.leaf_index + 1, "{receipt:?}");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// The receipt of one fetch through `broker`.
async fn receipt_of_a_fetch(broker: &TestBroker) -> anyhow::Result<pb::Receipt> {
    exchange(broker, "mairie-lyon")
        .await?
        .fetch(rfr("test:bob"))
        .await?
        .into_inner()
        .receipt
        .ok_or_else(|| anyhow!("no receipt"))
}

/// Starts the stopped standby, then fetches through `broker` until a fetch is acknowledged
/// (UNAVAILABLE until the standby streams again, 30 s at most): its receipt.
async fn receipt_once_the_standby_is_back(
    db: &mut Database,
    broker: &TestBroker,
) -> anyhow::Result<pb::Receipt> {
    tokio::task::block_in_place(|| db.standby.start());
    let mut lyon = exchange(broker, "mairie-lyon").await?;
    let until = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match lyon.fetch(rfr("test:bob")).await {
            Ok(answer) => break answer.into_inner(),
            Err(status) if Instant::now() < until && status.code() == Code::Unavailable => {}
            Err(status) => return Err(anyhow!("after the standby's return: {status:?}")),
        }
    };
    after.receipt.ok_or_else(|| anyhow!("no receipt"))
}

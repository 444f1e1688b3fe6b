//! What synchronous replication promises, seen from participants: with the standby gone, no
//! write is acknowledged (UNAVAILABLE after the append timeout) while reads are still served;
//! once it is back, writes resume. A commit the primary made alone is never acknowledged, and no
//! checkpoint or proof of it is handed out until the standby has it.

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

use crate::harness::{
    APPEND_TIMEOUT, Cluster, Database, fetch_refused_as_unavailable, receipt_of_a_fetch,
};

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
    fetch_refused_as_unavailable(broker).await?;
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
    assert_eq!(checkpoint(&mut audit).await?, before.checkpoint);
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

/// A role (or database) set to `synchronous_commit = local` would have every commit acknowledged
/// once the primary alone has it. The writer commits with `on` whatever they say: with the
/// standby stopped, nothing is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_set_to_commit_locally_still_waits_for_the_standby() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let mut db = Database::start().await?;
    tokio::task::block_in_place(|| {
        db.primary
            .sql("ALTER ROLE unefois SET synchronous_commit = local")
    });
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    let before = receipt_of_a_fetch(broker).await?;

    tokio::task::block_in_place(|| db.standby.stop("fast"));
    fetch_refused_as_unavailable(broker).await?;
    let receipt = receipt_once_the_standby_is_back(&mut db, broker).await?;
    assert!(receipt.leaf_index > before.leaf_index, "{receipt:?}");
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
    a_commit_on_the_primary_alone_is_neither_acknowledged_nor_shown(|_| {}, cancel_the_wait).await
}

/// The same with a role whose settings would hide the cancelled wait: its warning not sent to
/// clients (`client_min_messages = error`), and transactions that fail when two writers meet
/// (`repeatable read`). The writer's session sets what it relies on, whatever the role's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_whose_settings_hide_the_warning_changes_nothing() -> anyhow::Result<()> {
    a_commit_on_the_primary_alone_is_neither_acknowledged_nor_shown(
        |db| {
            db.primary.sql(
                "ALTER ROLE unefois SET client_min_messages = error; \
                 ALTER ROLE unefois SET default_transaction_isolation = 'repeatable read'",
            );
        },
        cancel_the_wait,
    )
    .await
}

fn cancel_the_wait(db: &mut Database) {
    db.primary
        .sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
}

/// A fast shutdown of the primary ends the backends' waits for the standby as a cancel does: the
/// commit waiting is in the primary's WAL alone, and visible once it restarts (no failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_without_its_standby_shows_no_checkpoint_the_standby_lacks()
-> anyhow::Result<()> {
    a_commit_on_the_primary_alone_is_neither_acknowledged_nor_shown(
        |_| {},
        |db| {
            db.primary.stop("fast");
            db.primary.start();
        },
    )
    .await
}

/// Once `prepare` has set what it sets (before the brokers start), with the standby stopped, a
/// fetch's COMMIT waits for it until `end_the_wait` ends that wait
/// on the primary, leaving the record committed there alone: the fetch is refused at once (not
/// at the append timeout), and no checkpoint or proof of the record is handed out (a failover
/// now would give a log without it, and an auditor holding such a checkpoint would see a
/// fork). Once the standby is back, writes are acknowledged again and reads cover them.
async fn a_commit_on_the_primary_alone_is_neither_acknowledged_nor_shown(
    prepare: impl FnOnce(&mut Database),
    end_the_wait: impl FnOnce(&mut Database),
) -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let mut db = Database::start().await?;
    tokio::task::block_in_place(|| prepare(&mut db));
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
        end_the_wait(&mut db);
    });
    refused(
        fetch.await?,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    assert!(
        started.elapsed() < APPEND_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    let on_primary = tokio::task::block_in_place(|| db.primary.sql("SELECT size FROM unefois_log"));
    assert_eq!(on_primary.trim(), (before.leaf_index + 2).to_string());
    let mut audit = AuditClient::new(broker.channel("dgfip").await?);
    assert_eq!(checkpoint(&mut audit).await?, before.checkpoint);
    let refused_proof = audit
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf_index: before.leaf_index + 1,
            tree_size: before.leaf_index + 2,
        })
        .await;
    // In the log, not yet on a standby: not served, and to be asked for again.
    assert!(
        refused_proof
            .as_ref()
            .is_err_and(|s| s.code() == Code::Unavailable),
        "{refused_proof:?}"
    );

    let receipt = receipt_once_the_standby_is_back(&mut db, broker).await?;
    assert!(receipt.leaf_index > before.leaf_index + 1, "{receipt:?}");
    let size = unefois_tlog::verify_checkpoint(
        std::fs::read_to_string(pki.dir().join("log.vkey"))?.trim(),
        &checkpoint(&mut audit).await?,
    )?
    .size;
    assert!(size > receipt.leaf_index, "{size}");
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// Two brokers, one behind the other: B acknowledged records A has not seen confirmed when the
/// standby stops. A serves its own older head, as it must (nothing newer is known to be on a
/// standby); a proof at B's size through A is to be asked for again (UNAVAILABLE), not out of
/// range; an auditor who trusted B's checkpoint is told A is behind, not that the log forked,
/// and keeps its trusted checkpoint, which it verifies through A once the standby is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_behind_another_is_to_be_asked_again_not_a_fork() -> anyhow::Result<()> {
    use broker::auditor::{LogError, verify_log};
    let pki = TestPki::for_sample_registry()?;
    let mut db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 2).await?;
    let (a, b) = (&cluster.brokers[0], &cluster.brokers[1]);
    let vkey = std::fs::read_to_string(pki.dir().join("log.vkey"))?;
    let trusted_dir = tempfile::tempdir()?;
    let trusted = trusted_dir.path().join("cnil.checkpoint");

    receipt_of_a_fetch(a).await?;
    let mut audit_a = AuditClient::new(a.channel("dgfip").await?);
    checkpoint(&mut audit_a).await?;
    let newer = receipt_of_a_fetch(b).await?;
    let seen = verify_log(b.channel("cnil").await?, vkey.trim(), &trusted).await?;
    assert!(seen.checkpoint.size > newer.leaf_index);

    tokio::task::block_in_place(|| db.standby.stop("fast"));
    let served = unefois_tlog::verify_checkpoint(vkey.trim(), &checkpoint(&mut audit_a).await?)?;
    assert!(served.size <= newer.leaf_index, "{}", served.size);
    let proof = audit_a
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf_index: newer.leaf_index,
            tree_size: newer.leaf_index + 1,
        })
        .await;
    assert!(
        proof.as_ref().is_err_and(|s| s.code() == Code::Unavailable),
        "{proof:?}"
    );
    let consistency = audit_a
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size: 1,
            second_size: seen.checkpoint.size,
        })
        .await;
    assert!(
        consistency
            .as_ref()
            .is_err_and(|s| s.code() == Code::Unavailable),
        "{consistency:?}"
    );
    let at_size = audit_a
        .get_checkpoint(pb::GetCheckpointRequest {
            tree_size: seen.checkpoint.size,
        })
        .await;
    assert!(
        at_size
            .as_ref()
            .is_err_and(|s| s.code() == Code::Unavailable),
        "{at_size:?}"
    );
    match verify_log(a.channel("cnil").await?, vkey.trim(), &trusted).await {
        Err(LogError::Behind {
            trusted: t,
            served: s,
        }) => assert_eq!((t, s), (seen.checkpoint.size, served.size)),
        other => panic!("expected the broker behind, got {other:?}"),
    }
    assert_eq!(
        unefois_tlog::verify_checkpoint(vkey.trim(), &std::fs::read_to_string(&trusted)?)?.size,
        seen.checkpoint.size,
        "the trusted checkpoint is kept"
    );

    receipt_once_the_standby_is_back(&mut db, a).await?;
    verify_log(a.channel("cnil").await?, vkey.trim(), &trusted).await?;
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// An administrator's lock on the stored hashes (or a migration's, `store init --contract`
/// dropping a trigger): a read of the log behind it gives up within a second or so
/// (UNAVAILABLE), rather than hold every read of the broker behind it on their one pipelined
/// connection for as long as the lock lasts; once it goes, the reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_for_a_lock_gives_up_and_the_reads_go_on() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    let receipt = receipt_of_a_fetch(broker).await?;
    let proof_of_it = pb::GetInclusionProofRequest {
        leaf_index: 0,
        tree_size: receipt.leaf_index + 1,
    };
    let mut audit = AuditClient::new(broker.channel("dgfip").await?);
    audit.get_inclusion_proof(proof_of_it).await?;

    let mut holder = db.primary.sql_meanwhile(
        "BEGIN; LOCK TABLE unefois_tree_runs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
    );
    tokio::task::block_in_place(|| {
        db.primary.wait_for(
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' \
             AND relation = 'unefois_tree_runs'::regclass",
            "1",
            Duration::from_secs(10),
        )
    });
    let started = Instant::now();
    let waited = tokio::time::timeout(
        Duration::from_secs(15),
        audit.get_inclusion_proof(proof_of_it),
    )
    .await;
    assert!(
        matches!(&waited, Ok(Err(s)) if s.code() == Code::Unavailable),
        "{waited:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    tokio::task::block_in_place(|| {
        db.primary.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
        );
        holder.wait()
    })?;
    let until = Instant::now() + Duration::from_secs(10);
    while let Err(status) = audit.get_inclusion_proof(proof_of_it).await {
        assert!(Instant::now() < until, "{status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// The latest checkpoint, as `audit` is given it.
async fn checkpoint(audit: &mut AuditClient<tonic::transport::Channel>) -> anyhow::Result<String> {
    Ok(audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner()
        .checkpoint)
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

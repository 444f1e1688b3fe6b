//! What a database administrator cannot do unseen while the brokers run: a coordination row
//! rewritten without the log key, or the log rolled back to an earlier head (its later entries
//! deleted), even once written again past what a broker knew, is not extended by that broker. Extending either would fork the log under the checkpoints and
//! receipts already handed out; the brokers refuse the writes (UNAVAILABLE) instead.

use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_tests::TestPki;

use crate::harness::{Cluster, Database, fetch_refused_as_unavailable, receipt_of_a_fetch, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_rewritten_or_rolled_back_in_the_database_is_not_extended() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    let sql =
        |query: &str| tokio::task::block_in_place(|| db.primary.sql(query).trim().to_string());

    receipt_of_a_fetch(broker).await?;
    // What an administrator keeps to roll the log back to later.
    sql("CREATE TABLE kept_log AS SELECT * FROM unefois_log");
    let kept_size = sql("SELECT size FROM kept_log");
    let kept_runs = sql("SELECT max(first) FROM unefois_tree_runs");
    let rolled_away = receipt_of_a_fetch(broker).await?;

    // The row's checkpoint rewritten (without the log key, nobody can sign another).
    sql("UPDATE unefois_log SET checkpoint = checkpoint || 'x'");
    fetch_refused_as_unavailable(broker).await?;
    assert_eq!(
        sql("SELECT size FROM unefois_log"),
        (rolled_away.leaf_index + 1).to_string()
    );
    // Put back, the log goes on.
    sql("UPDATE unefois_log SET checkpoint = left(checkpoint, -1)");
    let after = receipt_of_a_fetch(broker).await?;
    assert_eq!(after.leaf_index, rolled_away.leaf_index + 1);

    // Rolled back to the kept head, the later entries, hashes and exchanges deleted: a validly
    // signed log, but shorter than the one whose receipts were handed out.
    sql(&format!(
        "BEGIN; \
         UPDATE unefois_log SET (size, frontier, checkpoint) = \
             (SELECT size, frontier, checkpoint FROM kept_log); \
         DELETE FROM unefois_entries WHERE idx >= {kept_size}; \
         DELETE FROM unefois_exchanges WHERE idx >= {kept_size}; \
         DELETE FROM unefois_tree_runs WHERE first > {kept_runs}; \
         COMMIT"
    ));
    fetch_refused_as_unavailable(broker).await?;
    assert_eq!(sql("SELECT size FROM unefois_log"), kept_size);
    assert_eq!(sql("SELECT count(*) FROM unefois_entries"), kept_size);

    // A broker that knows nothing of the longer log (a new one) writes the rolled-back one
    // again, past what the first broker knew: the sizes no longer tell, the stored tree does.
    let knew = after.leaf_index + 1;
    let mut cluster = cluster;
    cluster.add(pki.dir(), &db.url()).await?;
    while sql("SELECT size FROM unefois_log").parse::<u64>()? <= knew {
        receipt_of_a_fetch(&cluster.brokers[1]).await?;
    }
    let size = sql("SELECT size FROM unefois_log");
    // Read through the broker that knew, the longer head is served (an auditor holding an
    // earlier checkpoint sees the fork), but it is not what that broker vouches for.
    let served = AuditClient::new(cluster.brokers[0].channel("cnil").await?)
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner()
        .checkpoint;
    assert!(served.lines().nth(1) == Some(size.as_str()), "{served}");
    fetch_refused_as_unavailable(&cluster.brokers[0]).await?;
    assert_eq!(sql("SELECT size FROM unefois_log"), size);

    // Restarted, it still knows (the newest checkpoint it knew is in its data folder): it
    // refuses to start, and says how an operator accepts a database restored on purpose.
    cluster.brokers.remove(0).stop().await?;
    let refused = start(pki.dir(), &db.url(), &cluster.data(0)).await;
    let refused = refused.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        refused.contains("no longer holds") && refused.contains("log-checkpoint"),
        "{refused}"
    );
    assert_eq!(sql("SELECT size FROM unefois_log"), size);
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// An entry deleted in the database, the last of the checkpointed tree: the auditor names it.
/// Before the fix, each page that skipped it was asked for again, for ever, each request
/// recorded as one more read in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_in_the_database_is_named_by_the_auditor() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    receipt_of_a_fetch(broker).await?;
    let last = receipt_of_a_fetch(broker).await?.leaf_index;
    let deleted = tokio::task::block_in_place(|| {
        db.primary.sql(
            "WITH gone AS (DELETE FROM unefois_entries \
             WHERE idx = (SELECT size - 1 FROM unefois_log) RETURNING idx) SELECT idx FROM gone",
        )
    });
    assert_eq!(deleted.trim(), last.to_string());

    let vkey = std::fs::read_to_string(pki.dir().join("log.vkey"))?;
    let trusted = tempfile::tempdir()?;
    let verified = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        broker::auditor::verify_log(
            broker.channel("cnil").await?,
            vkey.trim(),
            &trusted.path().join("cnil.checkpoint"),
        ),
    )
    .await?;
    match verified {
        Err(broker::auditor::LogError::MissingEntry(index)) => assert_eq!(index, last),
        other => panic!("{other:?}"),
    }
    assert!(!trusted.path().join("cnil.checkpoint").exists());
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// A smaller tree's checkpoint is signed from the hashes stored in the database: one of them
/// changed by its administrator (the root of the first 4 entries) must not get the log key's
/// signature over another root, a fork no auditor could tell from the broker's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_hash_changed_in_the_database_gets_no_checkpoint_signed() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;
    let broker = &cluster.brokers[0];
    while receipt_of_a_fetch(broker).await?.leaf_index < 8 {}
    let mut audit = AuditClient::new(broker.channel("cnil").await?);
    let at_4 = pb::GetCheckpointRequest { tree_size: 4 };
    let honest = audit.get_checkpoint(at_4).await?.into_inner().checkpoint;

    // Stored index 6 is the level-2 hash of leaves 0 to 3: the root of a tree of 4 entries.
    let sql =
        |query: &str| tokio::task::block_in_place(|| db.primary.sql(query).trim().to_string());
    let change = |hash: &str| {
        sql(&format!(
            "UPDATE unefois_tree_runs SET hashes = overlay(hashes PLACING {hash} \
             FROM ((6 - first) * 32 + 1)::int FOR 32) \
             WHERE first = (SELECT max(first) FROM unefois_tree_runs WHERE first <= 6) \
             RETURNING first"
        ))
    };
    let kept = sql(
        "SELECT substring(hashes FROM ((6 - first) * 32 + 1)::int FOR 32) FROM unefois_tree_runs \
         WHERE first = (SELECT max(first) FROM unefois_tree_runs WHERE first <= 6)",
    );
    assert!(!change("decode(repeat('00', 32), 'hex')").is_empty());
    let forged = audit.get_checkpoint(at_4).await;
    assert!(
        forged.is_err(),
        "a checkpoint was signed over the changed hash: {forged:?}"
    );
    // Put back, the same checkpoint as before.
    change(&format!("'{kept}'::bytea"));
    assert_eq!(
        audit.get_checkpoint(at_4).await?.into_inner().checkpoint,
        honest
    );
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

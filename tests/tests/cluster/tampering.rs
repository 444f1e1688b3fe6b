//! What a database administrator cannot do unseen while the brokers run: a coordination row
//! rewritten without the log key, or the log rolled back to an earlier head (its later entries
//! deleted), is not extended. Extending either would fork the log under the checkpoints and
//! receipts already handed out; the brokers refuse the writes (UNAVAILABLE) instead.

use unefois_tests::TestPki;

use crate::harness::{Cluster, Database, fetch_refused_as_unavailable, receipt_of_a_fetch};

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
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

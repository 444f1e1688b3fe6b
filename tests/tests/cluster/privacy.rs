//! What a database administrator can read: after exchanges about a person with distinctive ids
//! and claim values through a broker on PostgreSQL, neither is in any table (every row of the
//! schema read as text, byte strings in hex too), nor in any file of the primary's or the
//! standby's data directory (tables, indexes, WAL), nor in the broker's own data folder
//! (docs/security.md, "A database administrator").

use unefois_tests::{TestPki, canary};

use crate::harness::{Cluster, Database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subject_id_or_claim_value_in_the_database() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = canary::canary_registry(scratch.path())?;
    let db = Database::start().await?;
    let cluster = Cluster::start_on_registry(pki.dir(), &db.url(), 1, &registry).await?;
    canary::exchanges(cluster.brokers[0].channel("mairie-lyon").await?).await?;
    let data = cluster.data(0);
    for broker in cluster.brokers {
        broker.stop().await?;
    }

    // Every row of every table of the schema, as text: a JSON or a number as written, a byte
    // string as `\x` and its hex.
    let sql = |query: &str| tokio::task::block_in_place(|| db.primary.sql(query));
    let rows_of_every_table = sql(
        "SELECT string_agg(format('SELECT %L || '' '' || t::text FROM %I.%I t', \
         tablename, schemaname, tablename), ' UNION ALL ') \
         FROM pg_tables WHERE schemaname = current_schema()",
    );
    let dump = sql(&rows_of_every_table);
    assert!(
        dump.contains("unefois_entries") && dump.lines().count() > 20,
        "the tables were read: {} lines",
        dump.lines().count()
    );
    // What the entries do record is found so: the search can find.
    let purpose = b"tarification_cantine";
    assert!(
        dump.contains(&hex::encode(purpose)),
        "the entries read as hex"
    );
    for needle in canary::needles() {
        let hex = hex::encode(&needle);
        let text = String::from_utf8_lossy(&needle);
        assert!(
            !dump.contains(&*text) && !dump.contains(&hex),
            "{text:?} is in the database"
        );
    }

    // At rest, byte for byte: the servers' files (a table's text and byte strings as stored,
    // the WAL that carried them) and the broker's folder.
    let needles = canary::needles();
    let needles: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    for dir in [db.primary.data(), db.standby.data()] {
        let seen = canary::files_containing(&dir, &[purpose])?;
        assert!(
            !seen.is_empty(),
            "the entries are on disk in {}",
            dir.display()
        );
    }
    for dir in [db.primary.data(), db.standby.data(), data] {
        let found = canary::files_containing(&dir, &needles)?;
        assert!(found.is_empty(), "found at rest: {found:?}");
    }
    Ok(())
}

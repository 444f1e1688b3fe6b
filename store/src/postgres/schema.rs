//! The schema, as versioned migrations applied in order, each in its own transaction, under an
//! advisory lock: `unefois store init` (and every broker at start) may run them any number of
//! times, from any number of machines at once.

use tokio_postgres::Client;

use super::db;
use crate::StoreError;

/// Arbitrary, fixed: the advisory lock that serialises migrations between processes.
const MIGRATION_LOCK: i64 = 0x756e_6566_6f69_7331;

/// The migrations, version `i + 1` at index `i`; never edited once released, only appended.
pub const MIGRATIONS: &[&str] = &[
    // 1: the log (its coordination row, entries and stored Merkle hashes) and the read models.
    r#"
    CREATE TABLE unefois_log (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        size bigint NOT NULL,
        frontier bytea NOT NULL,
        checkpoint text NOT NULL
    );
    INSERT INTO unefois_log (size, frontier, checkpoint) VALUES (0, '', '');
    CREATE TABLE unefois_entries (idx bigint PRIMARY KEY, entry bytea NOT NULL);
    CREATE TABLE unefois_tree (idx bigint PRIMARY KEY, hash bytea NOT NULL);
    CREATE TABLE unefois_consents (
        id text PRIMARY KEY,
        subject text NOT NULL,
        mandate_id text,
        body jsonb NOT NULL
    );
    CREATE INDEX unefois_consents_subject ON unefois_consents (subject, id);
    CREATE INDEX unefois_consents_mandate ON unefois_consents (mandate_id, id)
        WHERE mandate_id IS NOT NULL;
    CREATE TABLE unefois_consent_scopes (
        subject text, consumer text, attestation_type text, purpose text, consent_id text,
        PRIMARY KEY (subject, consumer, attestation_type, purpose, consent_id)
    );
    CREATE TABLE unefois_consent_parties (
        party text, subject text, consent_id text,
        PRIMARY KEY (party, subject, consent_id)
    );
    CREATE TABLE unefois_mandates (
        id text PRIMARY KEY,
        subject text NOT NULL,
        structure text NOT NULL,
        body jsonb NOT NULL
    );
    CREATE INDEX unefois_mandates_subject ON unefois_mandates (subject, id);
    CREATE INDEX unefois_mandates_structure ON unefois_mandates (structure, id);
    CREATE TABLE unefois_requests (
        actor text, request_id text, fingerprint text NOT NULL, result text NOT NULL,
        PRIMARY KEY (actor, request_id)
    );
    CREATE TABLE unefois_exchanges (subject text, idx bigint, PRIMARY KEY (subject, idx));
    CREATE TABLE unefois_meta (name text PRIMARY KEY, value jsonb NOT NULL);
    "#,
    // 2 (expand): the stored Merkle hashes one row per batch (`first`, the stored index of
    // the first hash; `hashes`, 32 bytes each, consecutive) instead of one row per hash: a
    // fetch's transaction then writes about 5 WAL records instead of 9 (BENCHMARKS.md, run X).
    // Kept inline up to ~250 hashes and never compressed (hashes do not compress). The rows of
    // version 1 become runs of one hash; until 3, triggers keep both tables in step, so that
    // brokers of either version read what the others wrote during a rolling upgrade.
    r#"
    CREATE TABLE unefois_tree_runs (first bigint PRIMARY KEY, hashes bytea NOT NULL)
        WITH (toast_tuple_target = 8160);
    ALTER TABLE unefois_tree_runs ALTER COLUMN hashes SET STORAGE EXTERNAL;
    INSERT INTO unefois_tree_runs (first, hashes) SELECT idx, hash FROM unefois_tree;
    CREATE FUNCTION unefois_tree_to_runs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF pg_trigger_depth() > 1 THEN RETURN NULL; END IF;
        INSERT INTO unefois_tree_runs (first, hashes) VALUES (NEW.idx, NEW.hash)
            ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$;
    CREATE TRIGGER unefois_tree_to_runs AFTER INSERT ON unefois_tree
        FOR EACH ROW EXECUTE FUNCTION unefois_tree_to_runs();
    CREATE FUNCTION unefois_runs_to_tree() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF pg_trigger_depth() > 1 THEN RETURN NULL; END IF;
        INSERT INTO unefois_tree (idx, hash)
            SELECT NEW.first + n, substring(NEW.hashes FROM n * 32 + 1 FOR 32)
            FROM generate_series(0, length(NEW.hashes) / 32 - 1) AS n
            ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$;
    CREATE TRIGGER unefois_runs_to_tree AFTER INSERT ON unefois_tree_runs
        FOR EACH ROW EXECUTE FUNCTION unefois_runs_to_tree();
    "#,
    // 3 (contract, see `CONTRACTS`): the hashes of version 1 and the triggers gone.
    r#"
    DROP TABLE unefois_tree;
    DROP FUNCTION unefois_tree_to_runs();
    DROP TRIGGER unefois_runs_to_tree ON unefois_tree_runs;
    DROP FUNCTION unefois_runs_to_tree();
    "#,
];

/// The migrations that drop what an earlier version of the broker still uses: applied only when
/// asked (`unefois store init --contract`, once every broker runs this version) or to a schema
/// made by the same call (no older broker can be using it). Those after one wait with it.
pub const CONTRACTS: &[usize] = &[3];

/// The oldest schema this build runs on: 2 and later store the hashes as runs.
const NEEDED: i32 = 2;

/// Brings the schema to the latest version, short of the first of `CONTRACTS` unless `contract`
/// or the schema is new; returns the versions it applied (none when it was already there).
/// Refuses a database whose schema is newer than this build knows.
pub async fn migrate(client: &mut Client, contract: bool) -> Result<Vec<usize>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS unefois_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db("create the schema table"))?;
    let fresh: i64 = client
        .query_one("SELECT count(*) FROM unefois_schema", &[])
        .await
        .map_err(db("read the schema version"))?
        .get(0);
    let contract = contract || fresh == 0;
    let mut applied = Vec::new();
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        if !contract && CONTRACTS.contains(&(i + 1)) {
            break;
        }
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let tx = client
            .transaction()
            .await
            .map_err(db("begin a migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db("lock the migrations"))?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM unefois_schema WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(db("read the schema version"))?;
        if done.is_some() {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(db("apply a migration"))?;
        tx.execute(
            "INSERT INTO unefois_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db("record a migration"))?;
        tx.commit().await.map_err(db("commit a migration"))?;
        applied.push(i + 1);
    }
    let newest: Option<i32> = client
        .query_one("SELECT max(version) FROM unefois_schema", &[])
        .await
        .map_err(db("read the schema version"))?
        .get(0);
    let known = MIGRATIONS.len();
    if newest.is_some_and(|v| usize::try_from(v).unwrap_or(usize::MAX) > known) {
        return Err(StoreError::Database(format!(
            "the database's schema is version {}, newer than this broker's {known}: upgrade the \
             broker",
            newest.unwrap_or_default()
        )));
    }
    Ok(applied)
}

/// What an operator should know of a schema at `version` this build runs on: `None` at the
/// newest; else that the contract migrations wait for `--contract`, and what that costs.
pub fn behind(version: i32) -> Option<String> {
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    (version < known).then(|| {
        format!(
            "schema at version {version} of {known}: once every broker runs this version, run \
             `unefois store init --contract` (until then each batch also writes what older \
             brokers read)"
        )
    })
}

/// Whether this build runs on the schema, and its version: from `NEEDED` (a broker refuses to
/// start on an older one, and names `unefois store init`) to its newest (a newer one: upgrade
/// the broker).
pub async fn check(client: &Client) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('unefois_schema') IS NOT NULL", &[])
        .await
        .map_err(db("read the schema version"))?
        .get(0);
    let newest: Option<i32> = match exists {
        false => None,
        true => client
            .query_one("SELECT max(version) FROM unefois_schema", &[])
            .await
            .map_err(db("read the schema version"))?
            .get(0),
    };
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    match newest {
        Some(v) if (NEEDED..=known).contains(&v) => Ok(v),
        Some(v) if v > known => Err(StoreError::Database(format!(
            "the database's schema is version {v}, newer than this broker's {known}: upgrade \
             the broker"
        ))),
        found => Err(StoreError::Database(format!(
            "the database's schema is at version {}, this broker needs {known}: run `unefois \
             store init --store URL` first",
            found.unwrap_or(0),
            known = NEEDED
        ))),
    }
}

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
];

/// Brings the schema to the latest version; returns the versions it applied (none when it was
/// already there). Refuses a database whose schema is newer than this build knows.
pub async fn migrate(client: &mut Client) -> Result<Vec<usize>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS unefois_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db("create the schema table"))?;
    let mut applied = Vec::new();
    for (i, sql) in MIGRATIONS.iter().enumerate() {
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

/// Whether the schema is at this build's version (a broker refuses to start otherwise, and
/// names `unefois store init`).
pub async fn check(client: &Client) -> Result<(), StoreError> {
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
        Some(v) if v == known => Ok(()),
        Some(v) if v > known => Err(StoreError::Database(format!(
            "the database's schema is version {v}, newer than this broker's {known}: upgrade \
             the broker"
        ))),
        found => Err(StoreError::Database(format!(
            "the database's schema is at version {}, this broker needs {known}: run `unefois \
             store init --store URL` first",
            found.unwrap_or(0)
        ))),
    }
}

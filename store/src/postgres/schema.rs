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
    // Version 1 brokers keep writing while it runs (a rolling upgrade): their table is locked
    // against writes first, so that none commits a hash after the copy and before the trigger
    // (added after release; the schema it leaves is the same).
    r#"
    LOCK TABLE unefois_tree IN SHARE ROW EXCLUSIVE MODE;
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
    // 4 (expand): the acts each ID token in use has proved (`max_acts_per_token`), counted for
    // every broker (`Store::spend_act`); `digest`, the SHA-256 of what its signature covers,
    // never the token. Rows go once the token can no longer be presented (`usable_until`).
    r#"
    CREATE TABLE unefois_evidence_uses (
        digest bytea PRIMARY KEY CHECK (length(digest) = 32),
        acts integer NOT NULL,
        usable_until bigint NOT NULL
    );
    CREATE INDEX unefois_evidence_uses_until ON unefois_evidence_uses (usable_until);
    "#,
    // 5 (expand): the counts of the limits the brokers enforce together
    // (`Store::share_limits`): the calls each broker admitted per participant, the people it
    // saw per habilitation and minute (a sketch of bits, no pseudonym). Unlogged: a count lost
    // at a failover costs a few calls, and writing one costs no WAL and no standby's wait.
    // `broker` is a broker's id for one run; `changed_at`, the server's clock in microseconds.
    r#"
    CREATE UNLOGGED TABLE unefois_limit_calls (
        participant text NOT NULL,
        broker text NOT NULL,
        admitted bigint NOT NULL,
        changed_at bigint NOT NULL,
        PRIMARY KEY (participant, broker)
    );
    CREATE INDEX unefois_limit_calls_changed ON unefois_limit_calls (changed_at);
    CREATE UNLOGGED TABLE unefois_limit_people (
        consumer text NOT NULL,
        habilitation text NOT NULL,
        minute bigint NOT NULL,
        broker text NOT NULL,
        sketch bytea NOT NULL,
        alarmed boolean NOT NULL,
        changed_at bigint NOT NULL,
        PRIMARY KEY (consumer, habilitation, minute, broker)
    );
    CREATE INDEX unefois_limit_people_changed ON unefois_limit_people (changed_at);
    "#,
    // 6 (expand): what each broker owes each provider (`Store::share_limits`): the calls it
    // sent it (the provider's `rate_limit` is the cluster's), and until when the provider asked
    // it to wait (microseconds since 1970), so that every broker holds its calls. Unlogged, as
    // 5's tables. And the calls each broker was asked per participant, admitted or refused:
    // over the rate, the brokers share it in proportion (a broker of version 5 writes none).
    r#"
    CREATE UNLOGGED TABLE unefois_limit_providers (
        provider text NOT NULL,
        broker text NOT NULL,
        sent bigint NOT NULL,
        held_until bigint NOT NULL,
        changed_at bigint NOT NULL,
        PRIMARY KEY (provider, broker)
    );
    CREATE INDEX unefois_limit_providers_changed ON unefois_limit_providers (changed_at);
    ALTER TABLE unefois_limit_calls ADD COLUMN asked bigint NOT NULL DEFAULT 0;
    "#,
];

/// The migrations that drop what an earlier version of the broker still uses: applied only when
/// asked (`unefois store init --contract`, once every broker runs this version) or to a schema
/// made by the same call (no older broker can be using it). The migrations after one do not
/// wait for it (none of them may need what it does): a schema is the set of versions applied.
/// Every other migration is an *expand* one: it leaves every statement of the previous
/// version working, so that a broker of that version runs on it (`unefois_schema.contract`
/// tells the brokers which are which, the newer ones included).
pub const CONTRACTS: &[usize] = &[3];

/// Brings the schema to the latest version, leaving out the `CONTRACTS` unless `contract` or
/// the schema is new; returns the versions it applied (none when it was already there).
/// Refuses a database whose schema is newer than this build knows.
pub async fn migrate(client: &mut Client, contract: bool) -> Result<Vec<usize>, StoreError> {
    // A migration that waits for a lock queues every broker's reads of that table behind it:
    // it gives up instead (run `store init` again once the session in the way is done).
    client
        .batch_execute("SET lock_timeout = '5s'")
        .await
        .map_err(db("set the migrations' lock timeout"))?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS unefois_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db("create the schema table"))?;
    // Which versions are contract ones, for brokers older than them (see `CONTRACTS`).
    let marked = CONTRACTS
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); \
             ALTER TABLE unefois_schema \
                 ADD COLUMN IF NOT EXISTS contract boolean NOT NULL DEFAULT false; \
             UPDATE unefois_schema SET contract = true \
                 WHERE version IN ({marked}) AND NOT contract; \
             COMMIT"
        ))
        .await
        .map_err(db("mark the contract migrations"))?;
    let fresh: i64 = client
        .query_one("SELECT count(*) FROM unefois_schema", &[])
        .await
        .map_err(db("read the schema version"))?
        .get(0);
    let contract = contract || fresh == 0;
    let mut applied = Vec::new();
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        if !contract && CONTRACTS.contains(&(i + 1)) {
            continue;
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
            "INSERT INTO unefois_schema (version, contract) VALUES ($1, $2)",
            &[&version, &CONTRACTS.contains(&(i + 1))],
        )
        .await
        .map_err(db("record a migration"))?;
        tx.commit().await.map_err(db("commit a migration"))?;
        applied.push(i + 1);
    }
    // A schema a newer version contracted is not this build's to run on.
    runs_on(&self::applied(client).await?)?;
    Ok(applied)
}

/// A version applied to a schema, and whether it is a contract one (as the schema records it;
/// `false` for rows recorded before the column existed: versions 1 to 3, which this build
/// knows).
pub type Applied = (i32, bool);

fn has(applied: &[Applied], version: usize) -> bool {
    applied
        .iter()
        .any(|&(v, _)| usize::try_from(v).ok() == Some(version))
}

/// The contract migrations this build knows that `applied` (a schema's versions) lacks.
fn pending(applied: &[Applied]) -> Vec<usize> {
    CONTRACTS
        .iter()
        .copied()
        .filter(|&c| !has(applied, c))
        .collect()
}

/// What an operator should know of a schema whose versions are `applied`, this build running
/// on it: `None` with every migration applied and none newer; else that the contract
/// migrations wait for `--contract`, and what that costs, or that newer brokers are rolling
/// out.
pub fn behind(applied: &[Applied]) -> Option<String> {
    let mut told = Vec::new();
    let pending = pending(applied);
    if !pending.is_empty() {
        let listed: Vec<String> = pending.iter().map(usize::to_string).collect();
        told.push(format!(
            "schema without its contract migration {}: once every broker runs this version, \
             run `unefois store init --contract` (until then each batch also writes what older \
             brokers read)",
            listed.join(", ")
        ));
    }
    let newer = newer(applied);
    if !newer.is_empty() {
        let listed: Vec<String> = newer.iter().map(|(v, _)| v.to_string()).collect();
        told.push(format!(
            "schema with migration {} that this broker does not know (an expand one: a newer \
             version is rolling out); upgrade this broker",
            listed.join(", ")
        ));
    }
    (!told.is_empty()).then(|| told.join("; "))
}

/// The versions applied that this build does not know.
fn newer(applied: &[Applied]) -> Vec<Applied> {
    let known = MIGRATIONS.len();
    applied
        .iter()
        .copied()
        .filter(|&(v, _)| usize::try_from(v).map_or(true, |v| v > known))
        .collect()
}

/// Whether this build runs on a schema whose versions are `applied`: every migration it knows
/// but the contract ones (a broker refuses to start without them, and names `unefois store
/// init`), and, of those it does not know, expand ones only (a newer contract migration drops
/// what this build uses: upgrade the broker).
fn runs_on(applied: &[Applied]) -> Result<(), StoreError> {
    let known = MIGRATIONS.len();
    if let Some((newer, _)) = newer(applied).into_iter().filter(|&(_, c)| c).max() {
        return Err(StoreError::Database(format!(
            "the database's schema has contract migration {newer}, newer than this broker's \
             {known}, which drops what this broker uses: upgrade the broker"
        )));
    }
    let missing: Vec<String> = (1..=known)
        .filter(|v| !CONTRACTS.contains(v))
        .filter(|&v| !has(applied, v))
        .map(|v| v.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::Database(format!(
            "the database's schema lacks migration {} of this broker's {known}: run `unefois \
             store init --store URL` first",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// The versions applied to the schema, if it has one (whether or not its table has the
/// `contract` column yet: a runner older than it made none).
async fn applied(client: &Client) -> Result<Vec<Applied>, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('unefois_schema') IS NOT NULL", &[])
        .await
        .map_err(db("read the schema version"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    client
        .query(
            "SELECT version, coalesce((to_jsonb(s) ->> 'contract')::boolean, false) \
             FROM unefois_schema AS s ORDER BY version",
            &[],
        )
        .await
        .map_err(db("read the schema version"))
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Whether this build runs on the database's schema (see `runs_on`); its versions.
pub async fn check(client: &Client) -> Result<Vec<Applied>, StoreError> {
    let applied = applied(client).await?;
    runs_on(&applied)?;
    Ok(applied)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Versions applied, whether a broker runs on them (else part of why not), part of what
    /// the operator is told.
    type Case<'a> = (Vec<Applied>, Result<(), &'a str>, Option<&'a str>);

    /// Versions applied, as a schema records them (3 the contract one).
    fn schema(versions: &[i32]) -> Vec<Applied> {
        versions.iter().map(|&v| (v, v == 3)).collect()
    }

    #[test]
    fn a_broker_runs_on_every_expand_it_knows_and_says_which_contract_waits() {
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        let all: Vec<i32> = (1..=known).collect();
        let expands: Vec<i32> = all.iter().copied().filter(|&v| v != 3).collect();
        let with = |extra: Applied| {
            let mut applied = schema(&all);
            applied.push(extra);
            applied
        };
        // (versions applied, runs on it, what the operator is told)
        let cases: Vec<Case> = vec![
            (schema(&all), Ok(()), None),
            (schema(&expands), Ok(()), Some("contract migration 3:")),
            (
                schema(&[]),
                Err("lacks migration 1, 2, 4"),
                Some("contract migration 3:"),
            ),
            (
                schema(&[1, 2]),
                Err("lacks migration 4, 5, 6 of"),
                Some("contract migration 3:"),
            ),
            (schema(&[1, 2, 3]), Err("lacks migration 4, 5, 6 of"), None),
            // A newer version rolling out: its expand migrations leave this build working.
            (
                with((known + 1, false)),
                Ok(()),
                Some("does not know (an expand one"),
            ),
            (
                with((known + 1, true)),
                Err("contract migration 7, newer than this broker's"),
                Some("does not know"),
            ),
        ];
        for (applied, runs, told) in cases {
            match (runs_on(&applied), runs) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(why)) => assert!(e.to_string().contains(why), "{applied:?}: {e}"),
                (got, want) => panic!("{applied:?}: {got:?} against {want:?}"),
            }
            let behind = behind(&applied);
            match told {
                None => assert_eq!(behind, None, "{applied:?}"),
                Some(part) => assert!(
                    behind.as_deref().is_some_and(|b| b.contains(part)),
                    "{applied:?}: {behind:?}"
                ),
            }
        }
    }
}

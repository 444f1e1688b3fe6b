//! The `Store` contract, run against every backend: the same appends give the same reads, the
//! same entries, the same checkpoints (byte for byte: the same log key signs the same roots) and
//! proofs that verify.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use unefois_tlog::tree::{root_of, verify_consistency, verify_inclusion};

use super::{Embedded, MandatesOf, Memory, Store, StoreError};
use crate::event::Record;
use crate::journal::JournalOptions;
use crate::seal::Sealer;
use crate::test_signer::TestSigner;

fn log() -> TestSigner {
    TestSigner::from_seed(&[7; 32])
}

fn sealer() -> Arc<Sealer> {
    Arc::new(Sealer::from_secret(&[0x5e; 32]))
}

/// A version-2 record of `kind` at a fixed instant (the same bytes in every backend).
fn record(kind: &str, fields: serde_json::Value) -> Record {
    let mut value = json!({ "v": 2, "time": "2026-06-01T12:00:00Z", "kind": kind });
    let object = value.as_object_mut().unwrap();
    object.extend(fields.as_object().unwrap().clone());
    Record::decode(&serde_json::to_vec(&value).unwrap()).unwrap()
}

/// The appends of the contract, in batches: a mandate, a consent under it (its expiry past the
/// mandate's), a consent recorded by a guichet, exchanges about two people (one retried with
/// the same request id), the keys and registry a broker started with, then the mandate's revocation.
fn batches(sealed: &dyn Fn(&str) -> String) -> Vec<Vec<Record>> {
    let exchange = |person: &str, request: &str| {
        record(
            "exchange",
            json!({
                "outcome": "granted", "participant": "caf", "agent": null,
                "subject_sealed": sealed(person), "attestation_type": "qf",
                "purpose": "cantine", "registry_sha256": "00", "request_id": request,
                "request_fingerprint": format!("fp-{request}"),
            }),
        )
    };
    vec![
        vec![record(
            "mandate_created",
            json!({
                "mandate_id": "m1", "subject_sealed": sealed("alice"), "pseudonym_key": "k1",
                "structure": "fs", "agent": "a1", "purposes": ["cantine"],
                "duration_days": 31, "document_sha256": "00",
                "expires_at": "2026-07-02T12:00:00Z", "request_id": "r1",
                "request_fingerprint": "fp-r1",
            }),
        )],
        vec![
            record(
                "consent_granted",
                json!({
                    "consent_id": "c1", "subject_sealed": sealed("alice"),
                    "pseudonym_key": "k1", "consumer": "caf", "participant": "fs",
                    "agent": "a1", "attestation_types": ["qf"], "purpose": "cantine",
                    "expires_at": "2027-06-01T12:00:00Z", "request_id": "r2",
                    "request_fingerprint": "fp-r2", "mandate_id": "m1",
                }),
            ),
            record(
                "consent_granted",
                json!({
                    "consent_id": "c2", "subject_sealed": sealed("alice"),
                    "pseudonym_key": "k1", "consumer": "dgfip", "participant": "mairie",
                    "agent": null, "attestation_types": ["rfr"], "purpose": "cantine",
                    "expires_at": "2027-06-01T12:00:00Z",
                }),
            ),
        ],
        vec![
            exchange("alice", "q1"),
            exchange("bob", "q2"),
            exchange("alice", "q1"),
        ],
        vec![
            record(
                "broker_started",
                json!({ "version": "0", "keys": { "audit.key": "id1", "log.key": "id2" } }),
            ),
            record(
                "registry_loaded",
                json!({ "registry_sha256": "ab", "files": { "(registry)": "ab" } }),
            ),
        ],
        vec![record(
            "mandate_revoked",
            json!({ "mandate_id": "m1", "participant": "fs", "agent": "a1" }),
        )],
    ]
}

/// Everything a reader can see of the store, in lines; checks the proofs on the way.
async fn contract(store: &dyn Store, batches: Vec<Vec<Record>>) -> Vec<String> {
    let mut seen = Vec::new();
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    assert_eq!(crate::all(store.entries_from(0)).await.len(), 0);
    assert!(matches!(
        store.checkpoint_at(1).await,
        Err(StoreError::OutOfRange(_))
    ));
    let mut appended = Vec::new();
    for batch in batches {
        let expected: Vec<Vec<u8>> = batch.iter().map(Record::encode).collect();
        let seqs = store.append(batch).await.unwrap();
        // Durable, applied and checkpointed when append returns.
        let (size, _) = store.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(size, seqs.last().unwrap() + 1);
        for (seq, bytes) in seqs.iter().zip(expected) {
            assert_eq!(store.entry(*seq).await.unwrap().unwrap(), bytes);
            appended.push(bytes);
        }
        seen.push(format!("batch {seqs:?}"));
    }
    let size = appended.len() as u64;
    let (latest, note) = store.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!(latest, size);
    assert_eq!(store.checkpoint_at(size).await.unwrap(), note);
    seen.push(format!("checkpoint {note}"));
    seen.push(format!(
        "checkpoint at 3 {}",
        store.checkpoint_at(3).await.unwrap()
    ));
    let root = root_of(&appended);
    for leaf in 0..size {
        let proof = store.inclusion_proof(leaf, size).await.unwrap();
        verify_inclusion(&proof, size, root, leaf, &appended[leaf as usize]).unwrap();
    }
    let proof = store.consistency_proof(3, size).await.unwrap();
    verify_consistency(&proof, 3, root_of(&appended[..3]), size, root).unwrap();
    for refused in [
        store.inclusion_proof(0, size + 1).await,
        store.inclusion_proof(size, size).await,
        store.consistency_proof(0, size).await,
        store.consistency_proof(2, size + 1).await,
    ] {
        assert!(
            matches!(refused, Err(StoreError::OutOfRange(_))),
            "{refused:?}"
        );
    }
    let from: Vec<u64> = crate::all(store.entries_from(4))
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    seen.push(format!("entries from 4: {from:?}"));

    let consents = |found: Vec<crate::consent::Consent>| -> String {
        let described = found.iter().map(|c| {
            let revoked = c.revoked_at.map_or("", |_| " revoked");
            format!(
                "{} of {} until {}{revoked}",
                c.id,
                c.subject,
                c.expires_at.date()
            )
        });
        described.collect::<Vec<_>>().join(", ")
    };
    let all = store.consents_of_after("alice", "").await.unwrap();
    seen.push(format!("alice: {}", consents(crate::all(all).await)));
    let after = store.consents_of_after("alice", "c1").await.unwrap();
    seen.push(format!(
        "alice after c1: {}",
        consents(crate::all(after).await)
    ));
    for party in ["fs", "caf", "dgfip", "mairie", "other"] {
        let found = store
            .consents_seen_by_after(party, "alice", "")
            .await
            .unwrap();
        let found = consents(crate::all(found).await);
        seen.push(format!("seen by {party}: {found}"));
    }
    seen.push(format!(
        "under m1: {}",
        consents(store.consents_under_mandate("m1").await.unwrap())
    ));
    seen.push(format!(
        "for caf qf cantine: {}",
        consents(
            store
                .consents_for("alice", "caf", "qf", "cantine")
                .await
                .unwrap()
        )
    ));
    seen.push(format!(
        "for caf rfr cantine: {}",
        consents(
            store
                .consents_for("alice", "caf", "rfr", "cantine")
                .await
                .unwrap()
        )
    ));
    seen.push(format!(
        "c2: {:?}",
        store.consent("c2").await.unwrap().map(|c| c.consumer)
    ));
    for of in [MandatesOf::Subject("alice"), MandatesOf::Structure("fs")] {
        let found = crate::all(store.mandates_after(of, "").await.unwrap()).await;
        let described: Vec<_> = found
            .iter()
            .map(|m| format!("{} revoked {}", m.id, m.revoked_at.is_some()))
            .collect();
        seen.push(format!("mandates of {of:?}: {described:?}"));
    }
    seen.push(format!("m9: {:?}", store.mandate("m9").await.unwrap()));
    seen.push(format!(
        "r1: {:?}",
        store.request_use("fs/a1", "r1").await.unwrap()
    ));
    seen.push(format!(
        "r2: {:?}",
        store.request_use("fs/a1", "r2").await.unwrap()
    ));
    seen.push(format!(
        "q1: {:?}",
        store.fetch_request_use("caf", "q1").await.unwrap()
    ));
    seen.push(format!(
        "q1 as consent: {:?}",
        store.request_use("caf", "q1").await.unwrap()
    ));
    for (before, limit) in [(None, 10), (Some(5), 10), (None, 1), (Some(3), 10)] {
        let found = store.exchanges_about("alice", before, limit).await.unwrap();
        seen.push(format!(
            "alice's exchanges before {before:?}, {limit}: {found:?}"
        ));
    }
    seen.push(format!(
        "bob's: {:?}",
        store.exchanges_about("bob", None, 10).await.unwrap()
    ));
    seen.push(format!("keys: {:?}", store.recorded_keys().await.unwrap()));
    seen.push(format!(
        "registry: {:?}",
        store.recorded_registry().await.unwrap()
    ));
    let entry = store.entry(3).await.unwrap().unwrap();
    let event = Record::decode(&entry).unwrap().event;
    seen.push(format!("entry 3 is about {:?}", store.subject_of(&event)));
    seen.push(format!(
        "entry {size}: {:?}",
        store.entry(size).await.unwrap()
    ));
    seen.push(format!("log key {}", store.log_vkey()));
    store.close().await;
    let after_close = store
        .append(vec![record("broker_stopped", json!({}))])
        .await;
    assert!(after_close.is_err(), "an append after close");
    seen
}

#[tokio::test]
async fn both_backends_keep_the_contract_and_agree_byte_for_byte() {
    let sealer = sealer();
    // Sealed once: both backends append the very same bytes.
    let batches = batches(&|person| sealer.seal(person));
    let dir = tempfile::tempdir().unwrap();
    let embedded = Embedded::open(dir.path(), JournalOptions::default(), log(), sealer.clone());
    let embedded = contract(&embedded.unwrap(), batches.clone()).await;
    let memory = contract(&Memory::new(log(), sealer), batches).await;
    assert_eq!(embedded, memory);
    let expected = [
        "batch [0]",
        "batch [1, 2]",
        "batch [3, 4, 5]",
        "batch [6, 7]",
        "batch [8]",
        "entries from 4: [4, 5, 6, 7, 8]",
        // The consent under the mandate lapses with it, and ended with it.
        "alice: c1 of alice until 2026-07-02 revoked, c2 of alice until 2027-06-01",
        "alice after c1: c2 of alice until 2027-06-01",
        "seen by fs: c1 of alice until 2026-07-02 revoked",
        "seen by caf: c1 of alice until 2026-07-02 revoked",
        "seen by dgfip: c2 of alice until 2027-06-01",
        "seen by mairie: c2 of alice until 2027-06-01",
        "seen by other: ",
        "under m1: c1 of alice until 2026-07-02 revoked",
        "for caf qf cantine: c1 of alice until 2026-07-02 revoked",
        "for caf rfr cantine: ",
        "c2: Some(\"dgfip\")",
        "mandates of Subject(\"alice\"): [\"m1 revoked true\"]",
        "mandates of Structure(\"fs\"): [\"m1 revoked true\"]",
        "m9: None",
        "r1: Some(RequestUse { fingerprint: \"fp-r1\", result: \"m1\" })",
        "r2: Some(RequestUse { fingerprint: \"fp-r2\", result: \"c1\" })",
        // A retried Fetch points to its first exchange; Fetch ids are apart from the others.
        "q1: Some(RequestUse { fingerprint: \"fp-q1\", result: \"3\" })",
        "q1 as consent: None",
        "alice's exchanges before None, 10: [5, 3]",
        "alice's exchanges before Some(5), 10: [3]",
        "alice's exchanges before None, 1: [5]",
        "alice's exchanges before Some(3), 10: []",
        "bob's: [4]",
        "registry: Some(RecordedRegistry { entry: 7, sha256: \"ab\", files: {\"(registry)\": \"ab\"} })",
        "entry 3 is about Some(\"alice\")",
        "entry 9: None",
    ];
    let without_notes: Vec<&String> = embedded
        .iter()
        .filter(|l| {
            !l.starts_with("checkpoint") && !l.starts_with("keys") && !l.starts_with("log key")
        })
        .collect();
    assert_eq!(without_notes, expected);
    let keys = embedded.iter().find(|l| l.starts_with("keys")).unwrap();
    assert!(
        keys.contains("entry: 6") && keys.contains("\"log.key\": \"id2\""),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_contract_byte_for_byte_with_the_embedded_backend() {
    let sealer = sealer();
    let batches = batches(&|person| sealer.seal(person));
    let dir = tempfile::tempdir().unwrap();
    let embedded = Embedded::open(dir.path(), JournalOptions::default(), log(), sealer.clone());
    let embedded = contract(&embedded.unwrap(), batches.clone()).await;

    let server = crate::postgres::test_server::Server::primary("");
    let url = server.url();
    // Before `store init`, a broker is told to run it.
    let refused = crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(5)).await;
    let refused = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("unefois store init"), "{refused}");
    assert_eq!(
        crate::postgres::init(&url, false).await.unwrap(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        crate::postgres::init(&url, false).await.unwrap(),
        Vec::<usize>::new(),
        "init is idempotent"
    );
    let postgres = crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(5));
    let postgres = contract(&postgres.await.unwrap(), batches).await;
    assert_eq!(embedded, postgres);

    // Lookups asked at once are answered together (one query for those waiting): each gets the
    // consents of its own scope, none of another's.
    let again = crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(5));
    let again = again.await.unwrap();
    let scopes = [
        (["alice", "caf", "qf", "cantine"], vec!["c1"]),
        (["alice", "dgfip", "rfr", "cantine"], vec!["c2"]),
        (["alice", "caf", "rfr", "cantine"], vec![]),
        (["bob", "caf", "qf", "cantine"], vec![]),
    ];
    let asked = (0..64).map(|i| {
        let (scope, _) = &scopes[i % scopes.len()];
        again.consents_for(scope[0], scope[1], scope[2], scope[3])
    });
    for (i, found) in futures::future::join_all(asked)
        .await
        .into_iter()
        .enumerate()
    {
        let ids: Vec<String> = found.unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, scopes[i % scopes.len()].1, "lookup {i}");
    }
    again.close().await;

    // Another log key than the one that signed the log: refused, naming why.
    let other = TestSigner::from_seed(&[8; 32]);
    let refused = crate::Postgres::open(&url, other, sealer.clone(), Duration::from_secs(5)).await;
    let refused = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("another log key"), "{refused}");

    // A schema whose runner did not mark contract migrations yet: a broker runs on it, and the
    // next `store init` marks them.
    server.sql("ALTER TABLE unefois_schema DROP COLUMN contract");
    let unmarked = crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(5));
    unmarked.await.unwrap().close().await;
    assert!(crate::postgres::init(&url, false).await.unwrap().is_empty());
    let marked = "SELECT string_agg(version::text, ',') FROM unefois_schema WHERE contract";
    assert_eq!(server.sql(marked), "3");

    // A newer version rolling out: its expand migration leaves this broker running (and
    // saying so); a newer contract migration does not.
    server.sql("INSERT INTO unefois_schema (version, contract) VALUES (99, false)");
    let on_newer = crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(5));
    let on_newer = on_newer.await.unwrap();
    let health = on_newer.health().await.report;
    assert!(
        health.contains("migration 99 that this broker does not know"),
        "{health}"
    );
    on_newer.close().await;
    server.sql("UPDATE unefois_schema SET contract = true WHERE version = 99");
    let refused = crate::Postgres::open(&url, log(), sealer, Duration::from_secs(5)).await;
    let refused = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("contract migration 99"), "{refused}");
}

/// A log written under schema version 1 (one row per stored hash) proves the same once version
/// 2 has made its hashes runs: the same checkpoints, inclusion and consistency proofs. Until
/// the contract step (3), each table receives what is written to the other, for the brokers of
/// either version during a rolling upgrade; `store init` applies it only when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_schema_1_proves_the_same_after_migration_2() {
    let sealer = sealer();
    let server = crate::postgres::test_server::Server::primary("");
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let store = crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(5));
    let store = store.await.unwrap();
    for batch in batches(&|person| sealer.seal(person)) {
        store.append(batch).await.unwrap();
    }
    let proven = proofs(&store).await;
    store.close().await;

    // The same log as version 1 stored it, in another database.
    server.sql("CREATE DATABASE v1");
    let v1 = url.replacen("/postgres", "/v1", 1);
    let connect = |url: String| async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    };
    let (now, old) = (connect(url.clone()).await, connect(v1.clone()).await);
    old.batch_execute(
        "CREATE TABLE unefois_schema (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO unefois_schema (version) VALUES (1)",
    )
    .await
    .unwrap();
    old.batch_execute(crate::postgres::MIGRATIONS[0])
        .await
        .unwrap();
    let head = now
        .query_one("SELECT size, frontier, checkpoint FROM unefois_log", &[])
        .await
        .unwrap();
    let (size, frontier, note): (i64, Vec<u8>, String) = (head.get(0), head.get(1), head.get(2));
    old.execute(
        "UPDATE unefois_log SET size = $1, frontier = $2, checkpoint = $3",
        &[&size, &frontier, &note],
    )
    .await
    .unwrap();
    // Rows of (index, bytes) from `now` into the version-1 database, by `insert`.
    let copy = |insert: &'static str, rows: Vec<tokio_postgres::Row>| {
        let old = &old;
        async move {
            for row in rows {
                let (idx, bytes): (i64, Vec<u8>) = (row.get(0), row.get(1));
                old.execute(insert, &[&idx, &bytes]).await.unwrap();
            }
        }
    };
    let entries = now.query("SELECT idx, entry FROM unefois_entries", &[]);
    let entries = entries.await.unwrap();
    copy(
        "INSERT INTO unefois_entries (idx, entry) VALUES ($1, $2)",
        entries,
    )
    .await;
    let hashes = now
        .query(
            "SELECT first + n, substring(hashes FROM (n * 32 + 1)::int FOR 32) \
             FROM unefois_tree_runs, generate_series(0, length(hashes) / 32 - 1) AS n",
            &[],
        )
        .await
        .unwrap();
    assert!(hashes.len() as i64 > size, "{} hashes", hashes.len());
    copy(
        "INSERT INTO unefois_tree (idx, hash) VALUES ($1, $2)",
        hashes,
    )
    .await;

    // The expand migrations, the one after the contract step included; not the contract.
    assert_eq!(
        crate::postgres::init(&v1, false).await.unwrap(),
        vec![2, 4, 5, 6]
    );
    assert!(crate::postgres::init(&v1, false).await.unwrap().is_empty());
    let migrated = crate::Postgres::open(&v1, log(), sealer.clone(), Duration::from_secs(5));
    let migrated = migrated.await.unwrap();
    assert_eq!(proofs(&migrated).await, proven);
    // The operator is told the contract step is still to run.
    let health = migrated.health().await.report;
    assert!(
        health.contains("without its contract migration 3") && health.contains("--contract"),
        "{health}"
    );

    // A batch of this version reaches the rows version 1 reads, one per hash.
    let count = |table: &'static str| {
        let old = &old;
        async move {
            let sql = format!("SELECT count(*) FROM {table}");
            old.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
        }
    };
    let rows = count("unefois_tree").await;
    let registry = || {
        let files = json!({ "registry_sha256": "cd", "files": { "(registry)": "cd" } });
        record("registry_loaded", files)
    };
    migrated.append(vec![registry(), registry()]).await.unwrap();
    assert!(count("unefois_tree").await >= rows + 2);
    let proven = proofs(&migrated).await;
    // A hash written by a broker of version 1 reaches the runs: taken out of both tables and
    // written again to the old one only, it is read back from the runs.
    let last = old
        .query_one("SELECT max(idx) FROM unefois_tree", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    let runs = count("unefois_tree_runs").await;
    let hash: Vec<u8> = old
        .query_one("SELECT hash FROM unefois_tree WHERE idx = $1", &[&last])
        .await
        .unwrap()
        .get(0);
    old.batch_execute(&format!(
        "DELETE FROM unefois_tree WHERE idx = {last}; \
         UPDATE unefois_tree_runs SET hashes = substring(hashes FROM 1 FOR length(hashes) - 32) \
         WHERE first = (SELECT max(first) FROM unefois_tree_runs)"
    ))
    .await
    .unwrap();
    old.execute(
        "INSERT INTO unefois_tree (idx, hash) VALUES ($1, $2)",
        &[&last, &hash],
    )
    .await
    .unwrap();
    assert_eq!(count("unefois_tree_runs").await, runs + 1);
    assert_eq!(proofs(&migrated).await, proven);

    // The contract step, asked for: the rows of version 1 and the triggers are gone; the
    // schema, made by a runner that did not mark contract migrations, marks it.
    assert_eq!(crate::postgres::init(&v1, true).await.unwrap(), vec![3]);
    let marked = old
        .query_one(
            "SELECT string_agg(version::text, ',') FROM unefois_schema WHERE contract",
            &[],
        )
        .await
        .unwrap()
        .get::<_, Option<String>>(0);
    assert_eq!(marked.as_deref(), Some("3"));
    assert_eq!(proofs(&migrated).await, proven);
    let gone: bool = old
        .query_one("SELECT to_regclass('unefois_tree') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the rows of version 1 are runs now");
    let health = migrated.health().await.report;
    assert!(!health.contains("contract migration"), "{health}");
    migrated.close().await;
}

/// The latest checkpoint, every inclusion proof in its tree, and every earlier checkpoint with
/// its consistency proof: everything read from the stored hashes.
async fn proofs(store: &dyn Store) -> Vec<String> {
    let (size, note) = store.latest_checkpoint().await.unwrap().unwrap();
    let mut seen = vec![note];
    for leaf in 0..size {
        let proof = store.inclusion_proof(leaf, size).await.unwrap();
        seen.push(format!("inclusion {leaf}: {proof:?}"));
    }
    for first in 1..size {
        let proof = store.consistency_proof(first, size).await.unwrap();
        seen.push(format!("consistency {first}: {proof:?}"));
        seen.push(store.checkpoint_at(first).await.unwrap());
    }
    seen
}

/// Two brokers on one database, taking turns: each batch starts where the other broker left the
/// log, whatever its own writer last saw. Every entry, checkpoint and proof is the embedded
/// backend's for the same appends in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_taking_turns_append_where_the_other_left_the_log() {
    let server = crate::postgres::test_server::Server::primary("");
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let open = || crate::Postgres::open(&url, log(), sealer(), Duration::from_secs(5));
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let embedded = Embedded::open(dir.path(), JournalOptions::default(), log(), sealer()).unwrap();
    for (turn, by) in ["a", "a", "b", "a", "b", "b", "a"].into_iter().enumerate() {
        let r = record("broker_stopped", json!({ "turn": turn }));
        let appended = match by {
            "a" => a.append_entry(r.clone()).await,
            _ => b.append_entry(r.clone()).await,
        }
        .unwrap_or_else(|e| panic!("turn {turn} by {by}: {e}"));
        let same = embedded.append_entry(r).await.unwrap();
        assert_eq!(
            (appended.seq, &appended.entry),
            (same.seq, &same.entry),
            "turn {turn}"
        );
        let proven = appended.proven.expect("a proof from the transaction");
        assert_eq!(proven.tree_size, turn as u64 + 1);
        assert_eq!(
            proven.checkpoint,
            embedded.checkpoint_at(proven.tree_size).await.unwrap(),
            "turn {turn}"
        );
        assert_eq!(
            proven.inclusion_proof,
            embedded
                .inclusion_proof(appended.seq, proven.tree_size)
                .await
                .unwrap(),
            "turn {turn}"
        );
    }
}

/// Another session's transaction holding the log's row lock, once it holds it, until a row is
/// inserted in `release` (30 s at most); its thread, to join.
fn hold_the_log_row(
    server: &Arc<crate::postgres::test_server::Server>,
) -> std::thread::JoinHandle<String> {
    server.sql("CREATE TABLE release ()");
    let holder = {
        let server = server.clone();
        std::thread::spawn(move || {
            server.sql(
                "SELECT size FROM unefois_log FOR UPDATE; \
                 DO $$ BEGIN FOR i IN 1..600 LOOP \
                   EXIT WHEN EXISTS (SELECT FROM release); PERFORM pg_sleep(0.05); \
                 END LOOP; END $$",
            )
        })
    };
    server.wait_for(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE a.query LIKE '%FROM release%' AND a.pid <> pg_backend_pid() \
         AND l.relation = 'unefois_log'::regclass AND l.granted",
        "1",
        Duration::from_secs(10),
    );
    holder
}

/// A writer stuck on one transaction (here the log's row held by another session; a stopped
/// standby does the same to a commit) fills its queue: every append, those waiting for room in
/// the queue included, is answered within the append timeout, none held until the writer moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_behind_a_stuck_writer_are_answered_within_the_timeout() {
    let server = Arc::new(crate::postgres::test_server::Server::primary(""));
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let store = Arc::new(
        crate::Postgres::open(&url, log(), sealer(), Duration::from_secs(1))
            .await
            .unwrap(),
    );
    let holder = hold_the_log_row(&server);
    // More appends than the writer's queue holds (4,096).
    let started = std::time::Instant::now();
    let appends: Vec<_> = (0..4_300_u64)
        .map(|turn| {
            let store = store.clone();
            tokio::spawn(async move {
                let r = record("broker_stopped", json!({ "turn": turn }));
                store.append_entry(r).await.map(|a| a.seq)
            })
        })
        .collect();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        let mut refused = 0;
        for append in appends {
            if append.await.unwrap().is_err() {
                refused += 1;
            }
        }
        refused
    })
    .await;
    server.sql("INSERT INTO release DEFAULT VALUES");
    holder.join().unwrap();
    assert_eq!(
        answered,
        Ok(4_300),
        "every append answered unavailable while the writer was stuck ({:?})",
        started.elapsed()
    );
}

/// Appends that arrive while another broker holds the log's lock join the transaction that was
/// waiting for it: brokers taking turns commit fewer, larger transactions (every entry a
/// transaction inserts carries its id, `xmin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_arriving_while_the_log_is_locked_join_the_waiting_transaction() {
    let server = Arc::new(crate::postgres::test_server::Server::primary(""));
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let store = Arc::new(
        crate::Postgres::open(&url, log(), sealer(), Duration::from_secs(30))
            .await
            .unwrap(),
    );
    // Another broker's transaction, holding the row's lock until the test releases it.
    let holder = hold_the_log_row(&server);
    let append = |turn: u64| {
        let store = store.clone();
        tokio::spawn(async move {
            let r = record("broker_stopped", json!({ "turn": turn }));
            store.append_entry(r).await.map(|a| a.seq)
        })
    };
    // The first append's transaction waits for the lock; nine more arrive meanwhile.
    let first = append(0);
    server.wait_for(
        "SELECT count(*) FROM pg_locks WHERE NOT granted",
        "1",
        Duration::from_secs(10),
    );
    let more: Vec<_> = (1..10).map(append).collect();
    // Time for the nine to reach the writer's queue, then the lock goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.sql("INSERT INTO release DEFAULT VALUES");
    let mut seqs = vec![first.await.unwrap().unwrap()];
    for append in more {
        seqs.push(append.await.unwrap().unwrap());
    }
    holder.join().unwrap();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..10).collect::<Vec<u64>>());
    assert_eq!(
        server.sql("SELECT count(DISTINCT xmin::text) FROM unefois_entries"),
        "1",
        "the ten appends in one transaction"
    );
    store.close().await;
}

/// The acts of an ID token are counted in the database: two brokers on it together allow the
/// token its provider's acts, not twice as many, and a broker opened since the token was
/// issued knows what it proved. Counts go once their token is past its use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acts_of_an_id_token_are_counted_for_every_broker_on_the_database() {
    use crate::identity::IdentityError;
    let server = crate::postgres::test_server::Server::primary("");
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let open = || crate::Postgres::open(&url, log(), sealer(), Duration::from_secs(5));
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Issued before either store was opened: a broker counting in memory would refuse it.
    let token = crate::evidence_uses::tests::token(1, now - 30, 3);
    for (i, store) in [&a, &b, &a].into_iter().enumerate() {
        let spent = store.spend_act(&token, now).await.unwrap();
        assert!(spent.is_ok(), "act {i}: {spent:?}");
    }
    for store in [&b, &a] {
        let refused = store.spend_act(&token, now).await.unwrap();
        assert!(
            matches!(refused, Err(IdentityError::Exhausted(3))),
            "{refused:?}"
        );
    }
    assert!(
        b.spend_act(&crate::evidence_uses::tests::token(2, now, 3), now)
            .await
            .unwrap()
            .is_ok()
    );
    let again = open().await.unwrap();
    let refused = again.spend_act(&token, now).await.unwrap();
    assert!(
        matches!(refused, Err(IdentityError::Exhausted(3))),
        "{refused:?}"
    );

    // A token past its use (and the clocks' skew) is forgotten by the next store to count.
    let past = crate::evidence_uses::tests::token(3, now - 3_600, 3);
    assert!(a.spend_act(&past, now).await.unwrap().is_ok());
    let later = open().await.unwrap();
    assert!(
        later
            .spend_act(&crate::evidence_uses::tests::token(4, now, 3), now)
            .await
            .unwrap()
            .is_ok()
    );
    let counted = || {
        let out = server.sql(
            "SELECT string_agg(get_byte(digest, 0)::text || ':' || acts, ',' \
                              ORDER BY digest) FROM unefois_evidence_uses",
        );
        out.trim().to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counted().contains("3:") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted(), "1:3,2:1,4:1");
    for store in [a, b, again, later] {
        store.close().await;
    }
}

/// The brokers on one database share their limits' counts: each reads the others' (never its
/// own), as the greatest each wrote; the embedded and in-memory backends share nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_counts_are_shared_between_the_brokers_on_the_database() {
    use crate::limits::{CallsAdmitted, LimitUse, PeopleSeen, ProviderUse, SKETCH_BYTES};
    let server = crate::postgres::test_server::Server::primary("");
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let open = || crate::Postgres::open(&url, log(), sealer(), Duration::from_secs(5));
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let minute = time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .div_euclid(60);
    let calls = |broker: &str, admitted| CallsAdmitted {
        broker: broker.into(),
        participant: "ccas".into(),
        admitted,
        asked: admitted * 2,
    };
    let people = |broker: &str, bits: u8, alarmed| PeopleSeen {
        broker: broker.into(),
        consumer: "ccas".into(),
        habilitation: "h".into(),
        minute,
        sketch: vec![bits; SKETCH_BYTES],
        alarmed,
    };
    let provider = |broker: &str, sent, held_until| ProviderUse {
        broker: broker.into(),
        provider: "dgfip".into(),
        sent,
        held_until,
    };
    let a_wrote = LimitUse {
        calls: vec![calls("a", 5)],
        people: vec![people("a", 1, false)],
        providers: vec![provider("a", 7, 1_000)],
    };
    let seen = a.share_limits("a", &a_wrote).await.unwrap().unwrap();
    assert_eq!(
        seen,
        LimitUse::default(),
        "its own counts are not read back"
    );
    let seen = b
        .share_limits(
            "b",
            &LimitUse {
                calls: vec![calls("b", 2)],
                people: vec![],
                providers: vec![],
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, a_wrote);
    // A count that went back keeps the greatest; an alarm, once raised, stays; a provider's
    // request to wait keeps the latest end.
    a.share_limits(
        "a",
        &LimitUse {
            calls: vec![calls("a", 3)],
            people: vec![people("a", 3, true)],
            providers: vec![provider("a", 9, 500)],
        },
    )
    .await
    .unwrap();
    a.share_limits(
        "a",
        &LimitUse {
            calls: vec![],
            people: vec![people("a", 3, false)],
            providers: vec![],
        },
    )
    .await
    .unwrap();
    let seen = b
        .share_limits("b", &LimitUse::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        LimitUse {
            calls: vec![calls("a", 5)],
            people: vec![people("a", 3, true)],
            providers: vec![provider("a", 9, 1_000)],
        }
    );
    let seen = a
        .share_limits("a", &LimitUse::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.calls, vec![calls("b", 2)]);
    for store in [a, b] {
        store.close().await;
    }

    let memory = crate::Memory::new(log(), sealer());
    assert_eq!(memory.share_limits("a", &a_wrote).await.unwrap(), None);
}

/// An act's hold across the brokers is its database session's locks: a session that ends
/// (its connection broken, `pg_terminate_backend`, a failover) while the act goes on lets
/// another broker's act about the same person and request id read, and record. The first
/// act's record is then refused, not committed beside the second's: one consent for one
/// request id. (Without the writer's check of the holds, both consents were recorded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_act_whose_hold_ended_first_records_nothing() {
    let server = crate::postgres::test_server::Server::primary("");
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let sealer = sealer();
    let open = || crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(5));
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let person = crate::person_key("alice-pseudonym");
    let keys = [person.as_str(), "request\0caf\0r1"];
    let grant = |consent: &str| {
        record(
            "consent_granted",
            json!({
                "consent_id": consent, "subject_sealed": sealer.seal("alice-pseudonym"),
                "pseudonym_key": "k1", "consumer": "caf", "participant": "caf",
                "agent": null, "attestation_types": ["qf"], "purpose": "cantine",
                "expires_at": "2027-06-01T12:00:00Z", "request_id": "r1",
                "request_fingerprint": "fp-r1",
            }),
        )
    };

    // Broker a's act holds the person and the request id, and found the request id unused.
    let first = a.serialise(&keys).await.unwrap();
    assert!(a.request_use("caf", "r1").await.unwrap().is_none());
    // Its hold's session ends.
    let ended = server.sql(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
         FROM (SELECT DISTINCT pid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()) AS held",
    );
    assert_eq!(ended, "1");
    // Broker b's act about the same person and request id is let in, finds the request id
    // unused too, and records its consent.
    let second = tokio::time::timeout(Duration::from_secs(10), b.serialise(&keys))
        .await
        .expect("the ended hold no longer holds other brokers' acts")
        .unwrap();
    assert!(b.request_use("caf", "r1").await.unwrap().is_none());
    let recorded = second.during(b.append_entry(grant("c-b"))).await.unwrap();
    second.release().await;
    // Broker a's act goes on, unaware: its record is refused.
    let refused = first.during(a.append_entry(grant("c-a"))).await;
    let refused = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains(crate::postgres::HOLD_LOST), "{refused}");
    drop(first);
    assert_eq!(
        server.sql(
            "SELECT string_agg(id, ',') FROM unefois_consents; \
             SELECT count(*) FROM unefois_entries"
        ),
        "c-b\n1"
    );
    assert_eq!(
        a.request_use("caf", "r1").await.unwrap().map(|u| u.result),
        Some("c-b".to_string())
    );
    assert_eq!(recorded.seq, 0);

    // A new act of broker a holds anew, and records.
    let third = a.serialise(&keys).await.unwrap();
    let revoked = record(
        "consent_revoked",
        json!({ "consent_id": "c-b", "participant": "caf", "agent": null }),
    );
    let appended = third.during(a.append_entry(revoked)).await.unwrap();
    assert_eq!(appended.seq, 1);
    third.release().await;
    a.close().await;
    b.close().await;
}

/// One batch holds appends of an act whose hold ended, of an act whose hold stands, and one
/// made under no hold: the first is refused, the others are committed together, numbered in a
/// row from where the log was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_without_the_appends_whose_hold_ended() {
    let server = Arc::new(crate::postgres::test_server::Server::primary(""));
    let url = server.url();
    crate::postgres::init(&url, false).await.unwrap();
    let sealer = sealer();
    let store = Arc::new(
        crate::Postgres::open(&url, log(), sealer.clone(), Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let grant = |consent: &str, person: &str| {
        record(
            "consent_granted",
            json!({
                "consent_id": consent, "subject_sealed": sealer.seal(person),
                "pseudonym_key": "k1", "consumer": "caf", "participant": "caf",
                "agent": null, "attestation_types": ["qf"], "purpose": "cantine",
                "expires_at": "2027-06-01T12:00:00Z",
            }),
        )
    };
    let ended = store
        .serialise(&[&crate::person_key("p-ended")])
        .await
        .unwrap();
    let ended_sessions = server.sql(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
         FROM (SELECT DISTINCT pid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()) AS held",
    );
    assert_eq!(ended_sessions, "1");
    let standing = store
        .serialise(&[&crate::person_key("p-standing")])
        .await
        .unwrap();

    // The first append waits for the log's row; the two others join its batch meanwhile.
    let holder = hold_the_log_row(&server);
    let append = |held: Option<&crate::Serialised>, r: Record| {
        let store = store.clone();
        let append = async move { store.append_entry(r).await.map(|a| a.seq) };
        match held {
            Some(held) => tokio::spawn(held.during(append)),
            None => tokio::spawn(append),
        }
    };
    let standing_append = append(Some(&standing), grant("c-standing", "p-standing"));
    server.wait_for(
        "SELECT count(*) FROM pg_locks WHERE NOT granted",
        "1",
        Duration::from_secs(10),
    );
    let ended_append = append(Some(&ended), grant("c-ended", "p-ended"));
    let unheld_append = append(None, record("broker_stopped", json!({})));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.sql("INSERT INTO release DEFAULT VALUES");
    holder.join().unwrap();

    let refused = ended_append.await.unwrap();
    let refused = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains(crate::postgres::HOLD_LOST), "{refused}");
    let mut seqs = vec![
        standing_append.await.unwrap().unwrap(),
        unheld_append.await.unwrap().unwrap(),
    ];
    seqs.sort_unstable();
    assert_eq!(seqs, [0, 1]);
    assert_eq!(
        server.sql(
            "SELECT string_agg(id, ',') FROM unefois_consents; \
             SELECT count(DISTINCT xmin::text) FROM unefois_entries"
        ),
        "c-standing\n1",
        "the standing act's consent, committed with the unheld append"
    );
    drop(ended);
    standing.release().await;
    store.close().await;
}

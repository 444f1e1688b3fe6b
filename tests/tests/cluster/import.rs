//! `unefois store import`: an embedded broker's log moves into PostgreSQL with its leaf
//! indices, roots and checkpoints, so that an auditor's trusted checkpoint stays consistent;
//! a non-empty target is refused.

use std::process::Command;

use anyhow::{Context, anyhow, ensure};
use unefois_tests::clients::exchange;
use unefois_tests::requests::rfr;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, repo_root, unefois_binary};

use crate::harness::{Database, copy_keys, start};

/// Runs the `unefois` binary from the checkout; its standard output, or why it failed.
fn unefois(args: &[&str]) -> anyhow::Result<Result<String, String>> {
    let out = Command::new(unefois_binary()?)
        .current_dir(repo_root())
        .args(args)
        .output()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(match out.status.success() {
        true => Ok(text(&out.stdout)),
        false => Err(format!("{}{}", text(&out.stdout), text(&out.stderr))),
    })
}

/// An embedded broker on the PKI's sample registry: its home (kept as long as the test needs
/// it), its data folder, the broker.
async fn embedded_broker(
    pki: &TestPki,
) -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf, TestBroker)> {
    let home = tempfile::tempdir()?;
    let data = home.path().join("data");
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            data_dir: Some(data.clone()),
            ..BrokerOptions::default()
        },
    )
    .await?;
    Ok((home, data, broker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_log_keeps_its_roots_and_the_auditors_trust() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let pki_home = pki.dir().parent().context("the PKI's home")?.to_path_buf();
    let pki_home = pki_home.to_str().context("a UTF-8 path")?;
    let (embedded_home, data, embedded) = embedded_broker(&pki).await?;
    let mut lyon = exchange(&embedded, "mairie-lyon").await?;
    for subject in ["test:alice", "test:bob", "test:carol"] {
        lyon.fetch(rfr(subject)).await?;
    }
    // The auditor verifies the embedded log and trusts its checkpoint from now on.
    let trusted = pki.scratch().join("cnil.checkpoint");
    let trusted = trusted.to_str().context("a UTF-8 path")?;
    let addr = embedded.addr.to_string();
    let verify = [
        "audit",
        "verify",
        "--home",
        pki_home,
        "--as",
        "cnil",
        "--trusted",
        trusted,
    ];
    let first = unefois(&[&verify[..], &["--addr", &addr]].concat())?.map_err(|e| anyhow!(e))?;
    ensure!(first.contains("first run"), "{first}");
    embedded.stop().await?;

    let db = Database::start().await?;
    let url = db.url();
    let home = embedded_home.path().to_str().context("a UTF-8 path")?;
    let import = ["store", "import", "--home", home, "--store", &url];
    let imported = unefois(&import)?.map_err(|e| anyhow!(e))?;
    ensure!(imported.contains("Imported"), "{imported}");

    // A broker of the cluster (the embedded one's keys) serves the same log, grown.
    let joined = tempfile::tempdir()?;
    copy_keys(&data, &joined.path().join("data"))?;
    let broker = start(pki.dir(), &url, &joined.path().join("data")).await?;
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(rfr("test:alice"))
        .await?;
    let addr = broker.addr.to_string();
    let again = unefois(&[&verify[..], &["--addr", &addr]].concat())?.map_err(|e| anyhow!(e))?;
    ensure!(
        again.contains("consistent with the trusted checkpoint"),
        "{again}"
    );

    // A second import into the same (now non-empty) log is refused.
    let refused = unefois(&import)?;
    let refused = refused.err().context("a second import was accepted")?;
    ensure!(refused.contains("already has"), "{refused}");
    broker.stop().await
}

/// An import cut short (here a trigger that fails the 600th entry; in production a standby
/// late beyond the append timeout, a network cut) leaves no log a broker would serve or
/// extend: brokers refuse to start, naming what to do, and the same command run again finishes
/// it with the same roots. Before the fix, the database kept 512 entries under a valid
/// checkpoint, a broker started on them and forked the log, and the import was refused as
/// "already has 512 entries".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cut_short_is_finished_by_running_it_again() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (embedded_home, data, embedded) = embedded_broker(&pki).await?;
    let mut fetches = Vec::new();
    for _ in 0..8 {
        let mut lyon = exchange(&embedded, "mairie-lyon").await?;
        fetches.push(tokio::spawn(async move {
            for _ in 0..80 {
                lyon.fetch(rfr("test:alice")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for fetch in fetches {
        fetch.await??;
    }
    embedded.stop().await?;

    let db = Database::start().await?;
    let url = db.url();
    let sql =
        |query: &str| tokio::task::block_in_place(|| db.primary.sql(query).trim().to_string());
    let cut_at = |n: u64| {
        format!(
            "CREATE OR REPLACE FUNCTION cut() RETURNS trigger AS $$ BEGIN \
             IF NEW.idx >= {n} THEN RAISE EXCEPTION 'cut short'; END IF; RETURN NEW; END $$ \
             LANGUAGE plpgsql"
        )
    };
    sql(&cut_at(100));
    sql("CREATE TRIGGER cut BEFORE INSERT ON unefois_entries FOR EACH ROW EXECUTE FUNCTION cut()");
    let home = embedded_home.path().to_str().context("a UTF-8 path")?;
    let import = ["store", "import", "--home", home, "--store", &url];
    // Cut in its first transaction: nothing copied, and run again it starts over (before the
    // fix it asked the source for a checkpoint of size 0, and no run could finish it).
    let failed = unefois(&import)?
        .err()
        .context("the cut import succeeded")?;
    ensure!(failed.contains("cut short"), "{failed}");
    ensure!(sql("SELECT size FROM unefois_log") == "0");
    sql(&cut_at(600));
    let failed = unefois(&import)?
        .err()
        .context("the cut import succeeded")?;
    ensure!(failed.contains("cut short"), "{failed}");
    ensure!(sql("SELECT size FROM unefois_log") == "512");

    // No broker starts on the part copied.
    let joined = tempfile::tempdir()?;
    copy_keys(&data, &joined.path().join("data"))?;
    let refused = start(pki.dir(), &url, &joined.path().join("data")).await;
    let refused = refused.err().map(|e| format!("{e:#}")).unwrap_or_default();
    ensure!(
        refused.contains("did not finish (512 of")
            && refused.contains("run `unefois store import` again"),
        "{refused}"
    );
    ensure!(sql("SELECT size FROM unefois_log") == "512");

    // Run again, it finishes; a broker then serves the whole log, with its roots.
    sql("DROP TRIGGER cut ON unefois_entries");
    let finished = unefois(&import)?.map_err(|e| anyhow!(e))?;
    ensure!(finished.contains("Imported "), "{finished}");
    let broker = start(pki.dir(), &url, &joined.path().join("data")).await?;
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(rfr("test:alice"))
        .await?;
    broker.stop().await
}

/// An import given a registry of another trust domain than the broker ran with is refused
/// before anything is copied: the copy would be a log under another name than its auditors
/// and receipts know, which no broker of the cluster could serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_under_another_trust_domain_is_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (embedded_home, _, embedded) = embedded_broker(&pki).await?;
    exchange(&embedded, "mairie-lyon")
        .await?
        .fetch(rfr("test:alice"))
        .await?;
    embedded.stop().await?;
    let other = unefois_tests::sample_registry_with(&pki.scratch().join("other"), |s| {
        s.replace(
            "trust_domain = \"unefois.test\"",
            "trust_domain = \"autre.test\"",
        )
    })?;
    let db = Database::start().await?;
    let url = db.url();
    let home = embedded_home.path().to_str().context("a UTF-8 path")?;
    let other = other.to_str().context("a UTF-8 path")?;
    let refused = unefois(&[
        "store",
        "import",
        "--home",
        home,
        "--store",
        &url,
        "--registry",
        other,
    ])?
    .err()
    .context("imported under another trust domain")?;
    ensure!(
        refused.contains("unefois.test/unefois/audit") && refused.contains("autre.test"),
        "{refused}"
    );
    let size = tokio::task::block_in_place(|| db.primary.sql("SELECT size FROM unefois_log"));
    ensure!(size == "0", "{size}");
    Ok(())
}

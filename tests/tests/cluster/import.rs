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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_log_keeps_its_roots_and_the_auditors_trust() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let pki_home = pki.dir().parent().context("the PKI's home")?.to_path_buf();
    let pki_home = pki_home.to_str().context("a UTF-8 path")?;
    let embedded_home = tempfile::tempdir()?;
    let data = embedded_home.path().join("data");
    let embedded = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            data_dir: Some(data.clone()),
            ..BrokerOptions::default()
        },
    )
    .await?;
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

//! The web pages in a real browser (issue 23): Debian's headless Chromium driven by
//! tests/browser/pages.mjs (playwright-core, axe-core). Alice has two consents and a mandate;
//! the script logs in by keyboard, checks a proof in the browser and withdraws one consent,
//! then without JavaScript withdraws the other and revokes the mandate; each must hold for the
//! next gRPC fetch. At the mediator's desk, a mandate is made and used by keyboard and without
//! JavaScript; the consent recorded there must serve the next gRPC fetch. Screenshots land in
//! `target/browser-screenshots/`.
//!
//! CI installs Chromium and the script's packages (`.ci/run`); elsewhere the test says what is
//! missing and passes, unless `CI` is set.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_tests::clients::{exchange, grant_consent, take_mandate};
use unefois_tests::refusals::refused;
use unefois_tests::requests::fetch;
use unefois_tests::sample::{AGENT, CANTINE, ENERGIE, QF, RFR};
use unefois_tests::{TestBroker, TestPki, repo_root};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The periscolaire purpose: a second consent of the same type, to withdraw without JavaScript.
const PERISCOLAIRE: &str = "tarification_periscolaire";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_passes_axe_and_works_by_keyboard_and_without_javascript() -> anyhow::Result<()>
{
    let script = repo_root().join("tests/browser/pages.mjs");
    let modules = repo_root().join("tests/browser/node_modules/playwright-core");
    if !Path::new(CHROMIUM).exists() || !modules.exists() {
        let missing = "Chromium (apt-get install chromium) or the script's packages \
                       (npm ci in tests/browser)";
        if std::env::var_os("CI").is_some() {
            return Err(anyhow!("browser tests cannot run: {missing} missing"));
        }
        eprintln!("browser tests skipped: {missing} missing");
        return Ok(());
    }
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    for purpose in [CANTINE, PERISCOLAIRE] {
        grant_consent(&broker, "test:alice", QF, purpose).await?;
        exchange(&broker, "mairie-lyon")
            .await?
            .fetch(fetch("test:alice", QF, purpose))
            .await?;
    }
    // And a mandate to France Services, acted under once, to revoke without JavaScript.
    let mandate = take_mandate(&broker, "test:alice", ENERGIE).await?;
    let under_mandate = || pb::FetchRequest {
        mandate_id: mandate.id.clone(),
        ..fetch("test:alice", RFR, ENERGIE)
    };
    exchange(&broker, AGENT)
        .await?
        .fetch(under_mandate())
        .await?;
    let web = broker.web_addr.context("no web pages")?;
    let out = repo_root().join("target/browser-screenshots");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{web}"))
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .context("the browser script took more than 180 s")??;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{printed}");
    assert!(output.status.success(), "browser checks failed:\n{printed}");
    assert!(printed.contains("all browser checks passed"), "{printed}");
    assert!(out.join("citizen.png").exists());

    // Both withdrawals, by keyboard and without JavaScript, hold for the next fetch.
    for purpose in [CANTINE, PERISCOLAIRE] {
        refused(
            exchange(&broker, "mairie-lyon")
                .await?
                .fetch(fetch("test:alice", QF, purpose))
                .await,
            Code::FailedPrecondition,
            ErrorReason::ConsentRevoked,
        );
    }
    refused(
        exchange(&broker, AGENT).await?.fetch(under_mandate()).await,
        Code::FailedPrecondition,
        ErrorReason::MandateRevoked,
    );
    // The consent Karim recorded for Carole at the desk, without JavaScript, is in force.
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch("test:carol", QF, CANTINE))
        .await?;
    broker.stop().await?;
    Ok(())
}

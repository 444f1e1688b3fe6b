//! The history page of a person with 10,000 accesses (issue 23: under 100 ms of server time):
//! a measurement, not a test that asserts it (performance is measured, BENCHMARKS.md). Ignored
//! by default; `bench/web-history.sh` runs it in release and prints its figures:
//!
//! ```sh
//! cargo test --release -p unefois-tests --test it web_history_bench -- --ignored --nocapture
//! ```
//!
//! Baseline of the same run: `Guichet.ListAccesses` over gRPC for the same page (the
//! orchestration alone, unfiltered), against which the page (templates, rows in the registry's
//! words, the consents and mandates lists beside it; the filters' scan) is a ratio.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use unefois_proto::v1 as pb;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_tests::clients::exchange;
use unefois_tests::requests::rfr;
use unefois_tests::web::Browser;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, id_token, sample_registry_with};

const ACCESSES: usize = 10_000;
const ROUNDS: usize = 50;

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: bench/web-history.sh"]
async fn web_history_bench() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    // The city's rate limit lifted: 10,000 fetches in a few seconds are the seeding, not a
    // harvest.
    let registry = sample_registry_with(&pki.scratch(), |text| {
        text.replacen(
            "siret = \"21690123100011\"",
            "siret = \"21690123100011\"\nrate_limit = { per_minute = 10000000, burst = 100000 }",
            1,
        )
    })?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            web: true,
            ..BrokerOptions::default()
        },
    )
    .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let mut client = exchange(&broker, "mairie-lyon").await?;
        tasks.push(tokio::spawn(async move {
            for _ in (worker..ACCESSES).step_by(16) {
                client.fetch(rfr("test:alice")).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "seeded {ACCESSES} accesses of one person in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut browser = Browser::new(broker.web_addr.context("no web pages")?)?;
    let home = browser.log_in("test:alice").await?;
    anyhow::ensure!(home.status == 200, "{}", home.body);
    // The oldest page's token, from the history's own pages.
    let deep = {
        let mut guichet = GuichetClient::new(broker.channel("espace-usager").await?);
        let token = id_token("test:alice", "espace-usager");
        let mut page_token = String::new();
        for _ in 0..(ACCESSES / 200 - 1) {
            page_token = guichet
                .list_accesses(pb::ListAccessesRequest {
                    subject: "test:alice".into(),
                    id_token: token.clone(),
                    page_size: 200,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .next_page_token;
        }
        page_token
    };
    let mut guichet = GuichetClient::new(broker.channel("espace-usager").await?);
    let token = id_token("test:alice", "espace-usager");
    // Filtered: by the organisation that made every access (the newest 20 match), and by one
    // that made none (the page examines its 2,000 accesses and offers to look further back).
    for (label, path, avant) in [
        ("newest page", "/citizen".to_string(), String::new()),
        (
            "oldest pages",
            format!("/citizen?avant={deep}"),
            deep.clone(),
        ),
        (
            "filtered, all match",
            "/citizen?org=mairie-lyon".to_string(),
            String::new(),
        ),
        (
            "filtered, none match",
            "/citizen?org=ccas-lyon".to_string(),
            String::new(),
        ),
    ] {
        let (mut page, mut grpc) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let answer = browser.get(&path).await?;
            page.push(t.elapsed());
            anyhow::ensure!(answer.status == 200, "{}", answer.status);
            let t = Instant::now();
            guichet
                .list_accesses(pb::ListAccessesRequest {
                    subject: "test:alice".into(),
                    id_token: token.clone(),
                    page_size: 20,
                    page_token: avant.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("{e}"))?;
            grpc.push(t.elapsed());
        }
        let (p50, p99) = (percentile(&mut page, 0.5), percentile(&mut page, 0.99));
        let (g50, g99) = (percentile(&mut grpc, 0.5), percentile(&mut grpc, 0.99));
        println!(
            "{label}: page p50 {p50:.2} ms p99 {p99:.2} ms; ListAccesses (baseline) p50 {g50:.2} ms \
             p99 {g99:.2} ms; ratio p50 {:.2}",
            p50 / g50
        );
    }
    broker.stop().await?;
    Ok(())
}

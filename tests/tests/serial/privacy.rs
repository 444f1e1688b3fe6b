//! Privacy canary: after exchanges about a person with distinctive ids and claim values, neither
//! appears anywhere in the broker's data directory (journal, derived state, keys) nor in its
//! TRACE-level logs.
//!
//! In the `serial` binary: it installs the process's log subscriber (a second would fail), at
//! TRACE while it runs and off once it is done, and what it captures must come from its own
//! broker alone.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Registry, fmt, reload};
use unefois_proto::v1 as pb;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, repo_root};

const CANARY_SUBJECT: &str = "test:canari-4451";
const CANARY_RFR: i64 = 918_273_645;
const CANARY_QF: i64 = 864_209_753;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log subscriber, writing everything at TRACE level to a [`Captured`] until
/// dropped; then off, so that the tests of this binary that run later are not slowed by it
/// and the capture stops growing. Installed once per process.
struct TraceLogs(reload::Handle<LevelFilter, Registry>);

impl TraceLogs {
    fn capture(log: Captured) -> anyhow::Result<TraceLogs> {
        let (filter, handle) = reload::Layer::new(LevelFilter::TRACE);
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .with_writer(move || log.clone())
                    .with_ansi(false),
            )
            .try_init()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(TraceLogs(handle))
    }
}

impl Drop for TraceLogs {
    fn drop(&mut self) {
        let _ = self.0.reload(LevelFilter::OFF);
    }
}

/// The sample registry and datasets, with the canary person added to two of them.
fn canary_registry(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    for entry in std::fs::read_dir(repo_root().join("examples/data"))? {
        let entry = entry?;
        let mut dataset: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(entry.path())?)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("dgfip.") {
            dataset.insert(
                CANARY_SUBJECT.into(),
                serde_json::json!({ "revenu_fiscal_reference": CANARY_RFR, "nombre_parts": 2.5 }),
            );
        } else if name.starts_with("caf.") {
            dataset.insert(
                CANARY_SUBJECT.into(),
                serde_json::json!({ "quotient_familial": CANARY_QF, "mois_reference": "2026-10" }),
            );
        }
        std::fs::write(data.join(&name), serde_json::to_vec(&dataset)?)?;
    }
    unefois_tests::copy_dir(&repo_root().join("examples/dev-idp"), &dir.join("dev-idp"))?;
    unefois_tests::copy_example_provider_files(dir)?;
    let registry = dir.join("registry.toml");
    std::fs::copy(repo_root().join("examples/registry.toml"), &registry)?;
    Ok(registry)
}

fn files_containing(dir: &Path, needles: &[&[u8]]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            found.extend(files_containing(&path, needles)?);
            continue;
        }
        let bytes = std::fs::read(&path)?;
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == *needle) {
                found.push(format!(
                    "{} holds {:?}",
                    path.display(),
                    String::from_utf8_lossy(needle)
                ));
            }
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_subject_id_or_claim_value_at_rest_or_in_trace_logs() -> anyhow::Result<()> {
    let _alone = crate::alone().await;
    let log = Captured::default();
    let trace = TraceLogs::capture(log.clone())?;

    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = canary_registry(scratch.path())?;
    let data = scratch.path().join("broker-data");
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    )
    .await?;

    let channel = broker.channel("mairie-lyon").await?;
    let mut exchange = ExchangeClient::new(channel.clone());
    let mut consents = ConsentsClient::new(channel);
    // Under law, under consent, denied without consent, refused by the provider's schema:
    // every path that sees the subject or its claims.
    let rfr = exchange
        .fetch(pb::FetchRequest {
            subject: CANARY_SUBJECT.into(),
            attestation_type: "dgfip.revenu_fiscal_reference".into(),
            purpose: "tarification_cantine".into(),
            request_id: "canary-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let value = &rfr.attestation.expect("attestation").claims["revenu_fiscal_reference"];
    assert_eq!(
        value.value,
        Some(pb::claim_value::Value::IntegerValue(CANARY_RFR)),
        "the canary value did go through the broker"
    );
    let qf = pb::FetchRequest {
        subject: CANARY_SUBJECT.into(),
        attestation_type: "caf.quotient_familial".into(),
        purpose: "tarification_cantine".into(),
        ..Default::default()
    };
    assert!(exchange.fetch(qf.clone()).await.is_err(), "no consent yet");
    let consent = consents
        .grant(unefois_tests::requests::consent(
            CANARY_SUBJECT,
            "caf.quotient_familial",
            "tarification_cantine",
        ))
        .await?
        .into_inner()
        .consent
        .expect("consent");
    exchange.fetch(qf.clone()).await?;
    consents
        .list(pb::ListConsentsRequest {
            subject: CANARY_SUBJECT.into(),
            ..Default::default()
        })
        .await?;
    consents
        .revoke(pb::RevokeConsentRequest {
            consent_id: consent.id,
            ..Default::default()
        })
        .await?;
    assert!(exchange.fetch(qf).await.is_err(), "revoked");
    broker.stop().await?;

    let needles: Vec<Vec<u8>> = vec![
        b"canari-4451".to_vec(),
        CANARY_RFR.to_string().into_bytes(),
        CANARY_QF.to_string().into_bytes(),
    ];
    let needles: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    let at_rest = files_containing(&data, &needles)?;
    assert!(at_rest.is_empty(), "found at rest: {at_rest:?}");

    drop(trace);
    let logs = log
        .0
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    assert!(
        logs.len() > 10_000,
        "TRACE logging was captured ({} bytes)",
        logs.len()
    );
    for needle in needles {
        assert!(
            !logs.windows(needle.len()).any(|w| w == needle),
            "{:?} appears in the TRACE logs",
            String::from_utf8_lossy(needle)
        );
    }
    Ok(())
}

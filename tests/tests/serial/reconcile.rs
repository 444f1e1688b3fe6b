//! The README walkthrough over the gRPC API, then the operator's metrics reconciled with the
//! auditor's log: every refusal of an act about a person is an entry (a mediator's refused
//! pre-fills too), and `unefois_fetch_total` and `unefois_audit_entries_total` count exactly
//! the log's entries, by kind, outcome and reason (previews and confirmations included).
//!
//! In the `serial` binary: the metrics recorder is one per process, shared by every broker of
//! it. The totals compared are what the process counted while this test's broker ran, what it
//! had counted before subtracted (the tests of this binary that ran earlier).

use std::collections::BTreeMap;

use broker::client::reason_of;
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_proto::v1::mandates_client::MandatesClient;
use unefois_tests::requests::fetch;
use unefois_tests::sample::AGENT;
use unefois_tests::{TestBroker, TestPki, http_get, id_token};

fn prefill(subject: &str, form: &str, mandate_id: &str) -> pb::PrefillRequest {
    pb::PrefillRequest {
        subject: subject.into(),
        form: form.into(),
        mandate_id: mandate_id.into(),
        ..Default::default()
    }
}

/// Every entry of the log, decoded, read as the auditor in one page (each read is itself an
/// entry: paging on until nothing is left would never end).
async fn log(broker: &TestBroker) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut audit = AuditClient::new(broker.channel("cnil").await?);
    let page = audit
        .list_events(pb::ListEventsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(page.events.len() < 1000, "more than one page");
    page.events
        .iter()
        .map(|e| Ok(serde_json::from_slice(&e.entry)?))
        .collect()
}

/// The value of `label` in a Prometheus sample line.
fn label<'a>(line: &'a str, label: &str) -> &'a str {
    let key = format!("{label}=\"");
    line.split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(value, _)| value)
}

/// The samples of counter `name`, summed by the values of `labels`.
fn counted(text: &str, name: &str, labels: &[&str]) -> BTreeMap<Vec<String>, u64> {
    let mut by = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        let key = labels.iter().map(|l| label(line, l).to_string()).collect();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        *by.entry(key).or_default() += value as u64;
    }
    by
}

/// The samples of counter `name` in `text`, less those in `before` (an earlier scrape), summed
/// by the values of `labels`: only what was counted in between.
fn counted_since(
    before: &str,
    text: &str,
    name: &str,
    labels: &[&str],
) -> BTreeMap<Vec<String>, u64> {
    let mut by = counted(text, name, labels);
    for (key, earlier) in counted(before, name, labels) {
        if let Some(count) = by.get_mut(&key) {
            *count = count.saturating_sub(earlier);
        }
    }
    by.retain(|_, count| *count > 0);
    by
}

#[tokio::test(flavor = "multi_thread")]
async fn the_walkthrough_is_on_the_record_and_the_metrics_agree_with_the_log() -> anyhow::Result<()>
{
    let _alone = crate::alone().await;
    // What the process had counted before this broker started.
    let before = broker::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let lyon: Channel = broker.channel("mairie-lyon").await?;
    let mut guichet = GuichetClient::new(lyon.clone());

    // Under the law; under consent, refused, granted, revoked.
    unefois_tests::clients::law_and_consent_round(lyon.clone(), "test:alice", "walkthrough-1")
        .await?;

    // Pre-fill, then a preview confirmed.
    guichet
        .prefill(pb::PrefillRequest {
            id_token: id_token("test:alice", "mairie-lyon"),
            ..prefill("test:alice", "inscription_cantine", "")
        })
        .await?;
    let shown = guichet
        .prefill(pb::PrefillRequest {
            id_token: id_token("test:alice", "mairie-lyon"),
            preview: true,
            ..prefill("test:alice", "inscription_cantine", "")
        })
        .await?
        .into_inner();
    guichet
        .confirm(pb::ConfirmRequest {
            subject: "test:alice".into(),
            prefill_id: shown.prefill_id,
            id_token: id_token("test:alice", "mairie-lyon"),
            ..Default::default()
        })
        .await?;

    // A mediator under Alice's mandate; then each way a mediator's pre-fill is refused.
    let mut mandates = MandatesClient::new(broker.channel(AGENT).await?);
    let mandate = mandates
        .create(pb::CreateMandateRequest {
            subject: "test:alice".into(),
            purposes: vec!["aide_energie".into()],
            duration_days: 31,
            signed_document: b"%PDF mandat".to_vec(),
            id_token: id_token("test:alice", "france-services-lyon"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    let mut agent = GuichetClient::new(broker.channel(AGENT).await?);
    agent
        .prefill(prefill("test:alice", "aide_energie", &mandate.id))
        .await?;
    let refusals = [
        (
            prefill("test:alice", "aide_energie", ""),
            ErrorReason::NoMandate,
        ),
        (
            prefill("test:alice", "inscription_cantine", &mandate.id),
            ErrorReason::MandateOutOfScope,
        ),
        (
            prefill("test:bob", "aide_energie", &mandate.id),
            ErrorReason::MandateSubjectMismatch,
        ),
    ];
    for (request, reason) in refusals.clone() {
        let refused = agent.prefill(request).await.expect_err("refused");
        assert_eq!(reason_of(&refused), Some(reason), "{}", refused.message());
    }
    mandates
        .revoke(pb::RevokeMandateRequest {
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?;
    let after = agent
        .prefill(prefill("test:alice", "aide_energie", &mandate.id))
        .await
        .expect_err("revoked");
    assert_eq!(reason_of(&after), Some(ErrorReason::MandateRevoked));

    // Deny by default.
    ExchangeClient::new(broker.channel("mairie-test").await?)
        .fetch(fetch(
            "test:alice",
            "dgfip.revenu_fiscal_reference",
            "tarification_cantine",
        ))
        .await
        .expect_err("no habilitation");

    // Scraped before the auditor reads (a read is itself an entry).
    let (status, metrics) = http_get(broker.ops_addr, "/metrics").await?;
    assert_eq!(status, 200);
    let entries = log(&broker).await?;

    // Every refused pre-fill of the mediator is on the record, one entry per type of the form.
    let mediator_denials: BTreeMap<String, usize> = entries
        .iter()
        .filter(|e| {
            e["kind"] == "exchange"
                && e["participant"] == "france-services-lyon"
                && e["outcome"] == "denied"
        })
        .fold(BTreeMap::new(), |mut by, e| {
            *by.entry(e["reason"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
            by
        });
    assert_eq!(
        mediator_denials,
        BTreeMap::from([
            ("MANDATE_OUT_OF_SCOPE".to_string(), 2),
            ("MANDATE_REVOKED".to_string(), 1),
            ("MANDATE_SUBJECT_MISMATCH".to_string(), 1),
            ("NO_MANDATE".to_string(), 1),
        ])
    );
    for e in entries
        .iter()
        .filter(|e| e["participant"] == "france-services-lyon" && e["outcome"] == "denied")
    {
        assert_eq!(e["agent"], "a.martin", "{e}");
        assert!(e["subject_sealed"].is_string(), "about the person: {e}");
    }

    // Entries by kind, as the log has them and as the metrics count them (all but the
    // auditor's read, which happened after the scrape).
    let mut by_kind: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for e in entries.iter().filter(|e| e["kind"] != "audit_read") {
        *by_kind
            .entry(vec![e["kind"].as_str().unwrap_or_default().to_string()])
            .or_default() += 1;
    }
    let mut counted_kinds =
        counted_since(&before, &metrics, "unefois_audit_entries_total", &["kind"]);
    counted_kinds.remove(&vec!["audit_read".to_string()]);
    assert_eq!(counted_kinds, by_kind, "{metrics}");
    for kind in ["consent_granted", "consent_revoked", "consents_read"] {
        assert!(by_kind.contains_key(&vec![kind.to_string()]), "{kind}");
    }

    // Exchanges by outcome and reason: previews and confirmations are counted too.
    let mut exchanges: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for e in entries.iter().filter(|e| e["kind"] == "exchange") {
        let key = vec![
            e["outcome"].as_str().unwrap_or_default().to_string(),
            e["reason"].as_str().unwrap_or_default().to_string(),
        ];
        *exchanges.entry(key).or_default() += 1;
    }
    let fetch_total = counted_since(
        &before,
        &metrics,
        "unefois_fetch_total",
        &["outcome", "reason"],
    );
    assert_eq!(fetch_total, exchanges, "{metrics}");
    let count = |outcome: &str, reason: &str| {
        exchanges
            .get(&vec![outcome.to_string(), reason.to_string()])
            .copied()
    };
    assert_eq!(count("previewed", ""), Some(1));
    assert_eq!(count("denied", "NO_CONSENT"), Some(1));
    assert_eq!(count("denied", "NO_HABILITATION"), Some(1));
    // The law fetch, the consent fetch, the pre-fill's DGFiP value, the confirmed one and the
    // mediator's.
    assert_eq!(count("granted", ""), Some(5));
    broker.stop().await
}

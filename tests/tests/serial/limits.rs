//! The operator's metrics count exchanges by consumer, type and outcome, never with a subject
//! or a caller's input as a label. The rest of the limits tests are `it::limits`.
//!
//! Here because it asserts that exactly two calls of this test are counted under
//! `method="other"`, a total of the process's metrics; no other test of this binary calls a
//! method no service serves.

use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::requests::energy;
use unefois_tests::{TestBroker, TestPki};

#[tokio::test]
async fn metrics_count_exchanges_by_consumer_type_and_outcome_without_subjects()
-> anyhow::Result<()> {
    let _alone = crate::alone().await;
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    lyon.fetch(pb::FetchRequest {
        purpose: "tarification_cantine".into(),
        ..energy("test:alice")
    })
    .await?;
    let mut test = ExchangeClient::new(broker.channel("mairie-test").await?);
    test.fetch(energy("test:bob"))
        .await
        .expect_err("no habilitation");
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);
    ccas.fetch(pb::FetchRequest {
        attestation_type: "x".repeat(100),
        ..energy("test:carol")
    })
    .await
    .expect_err("unknown type");

    // Paths no service serves, shaped like the broker's own methods: the router answers
    // UNIMPLEMENTED, and the method label stays `other`, whatever the name.
    for path in ["/unefois.v1.Exchange/Nope", "/unefois.v1.Madeup/Call"] {
        let mut grpc = tonic::client::Grpc::new(broker.channel("ccas-lyon").await?);
        grpc.ready().await?;
        let refused = grpc
            .unary::<pb::FetchRequest, pb::FetchResponse, _>(
                tonic::Request::new(energy("test:carol")),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(refused.code(), Code::Unimplemented, "{path}");
    }

    let (status, text) = unefois_tests::http_get(broker.ops_addr, "/metrics").await?;
    assert_eq!(status, 200);
    let line = |needle: &[&str]| {
        text.lines()
            .any(|l| !l.starts_with('#') && needle.iter().all(|n| l.contains(n)))
    };
    assert!(
        line(&[
            "unefois_fetch_total",
            "consumer=\"mairie-lyon\"",
            "attestation_type=\"dgfip.revenu_fiscal_reference\"",
            "outcome=\"granted\""
        ]),
        "{text}"
    );
    assert!(line(&[
        "unefois_fetch_total",
        "consumer=\"mairie-test\"",
        "outcome=\"denied\"",
        "reason=\"NO_HABILITATION\""
    ]));
    assert!(
        line(&[
            "unefois_fetch_total",
            "consumer=\"ccas-lyon\"",
            "attestation_type=\"(unregistered)\""
        ]),
        "a caller's input never becomes a label"
    );
    assert!(line(&[
        "unefois_provider_calls_total",
        "provider=\"dgfip\"",
        "result=\"ok\""
    ]));
    assert!(line(&["unefois_fetch_duration_seconds_bucket"]));
    assert!(line(&[
        "unefois_grpc_requests_total",
        "method=\"unefois.v1.Exchange/Fetch\""
    ]));
    assert!(
        line(&["unefois_grpc_requests_total", "method=\"other\"", "} 2"]),
        "{text}"
    );
    for made_up in ["Nope", "Madeup"] {
        assert!(!text.contains(made_up), "{made_up} became a label: {text}");
    }
    // The audit log's share of an answer's latency, and the disk's: one granted fetch and the
    // two refusals are three journal appends at least, each in a synced batch.
    let count = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("unefois_journal_append_seconds_count") >= 3.0,
        "{text}"
    );
    assert!(count("unefois_journal_sync_seconds_count") >= 1.0, "{text}");
    assert!(count("unefois_journal_batch_records_sum") >= 3.0, "{text}");
    assert!(line(&[
        "unefois_journal_batch_records_bucket",
        "le=\"1024\""
    ]));
    for secret in ["alice", "bob", "carol", "23870", "xxxxxxxx"] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }
    broker.stop().await
}

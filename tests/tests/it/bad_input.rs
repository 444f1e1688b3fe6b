//! Bad input, row by row: every malformed, oversized, confusable or hostile input gets its exact
//! status code and `ErrorReason`, never a panic, and the broker keeps serving the others
//! afterwards. docs/security.md lists the rows and names the test of each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use broker::client::reason_of;
use broker::event::{Event, ExchangeEvent, Outcome};
use tonic::Code;
use tonic::codegen::{Body as _, Service as _, http};
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::mandates_client::MandatesClient;
use unefois_tests::requests::rfr;
use unefois_tests::sample::{CANTINE, DGFIP_STATIC, RFR};
use unefois_tests::{BrokerOptions, TestBroker, TestPki, id_token, sample_registry_with};

const FETCH: &str = "/unefois.v1.Exchange/Fetch";

/// Asserts that `answer` is the refusal `code` with `reason`, explained in words.
fn assert_refused<T>(
    label: &str,
    answer: Result<T, tonic::Status>,
    code: Code,
    reason: ErrorReason,
) -> anyhow::Result<()> {
    let Err(status) = answer else {
        anyhow::bail!("{label}: accepted");
    };
    anyhow::ensure!(
        status.code() == code,
        "{label}: expected {code:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    anyhow::ensure!(
        reason_of(&status) == Some(reason),
        "{label}: expected {reason:?}, got {:?}",
        reason_of(&status)
    );
    anyhow::ensure!(!status.message().is_empty(), "{label}: not explained");
    Ok(())
}

/// A valid Fetch still succeeds: the broker keeps serving after the bad ones, on a new
/// connection as on the one that carried them.
async fn still_serves(
    broker: &TestBroker,
    used: &mut ExchangeClient<Channel>,
) -> anyhow::Result<()> {
    let answer = used.fetch(rfr("test:alice")).await?.into_inner();
    anyhow::ensure!(answer.attestation.is_some(), "no attestation");
    let mut fresh = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let answer = fresh.fetch(rfr("test:bob")).await?.into_inner();
    anyhow::ensure!(answer.attestation.is_some(), "no attestation");
    Ok(())
}

/// The exchange records of a stopped broker's journal.
fn exchanges(data_dir: &Path) -> anyhow::Result<Vec<ExchangeEvent>> {
    Ok(unefois_tests::journal::records(data_dir)?
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Exchange(e) => Some(*e),
            _ => None,
        })
        .collect())
}

// ------------------------------------------------------------------ subject ids

#[tokio::test]
async fn malformed_subject_ids_are_invalid_arguments() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let too_long = format!("test:{}", "a".repeat(252)); // 257 bytes, one over the bound
    let pivot_too_long = format!("pivot:{}|MARIE|1985-07-14|F|69123|99100", "A".repeat(250));
    let rows: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("no scheme", "alice".into()),
        ("no scheme, digits only", "110002011".into()),
        ("unknown scheme", "nir:185077512345678".into()),
        ("a NIR before the colon", "185077512345678:x".into()),
        ("a name before the colon", "Dupont:Marie".into()),
        ("scheme in capitals", "SIREN:110002011".into()),
        ("scheme only", "test:".into()),
        ("empty siren", "siren:".into()),
        ("siren of spaces", "siren:         ".into()),
        ("siren with a bad check digit", "siren:110002012".into()),
        ("siren too short", "siren:11000201".into()),
        ("siret given as a siren", "siren:11000201100044".into()),
        ("empty pivot", "pivot:".into()),
        (
            "pivot not canonical",
            "pivot:Dupont|Marie|1985-07-14|F|69123|99100".into(),
        ),
        ("NUL byte", "test:ali\0ce".into()),
        ("newline", "test:alice\n".into()),
        (
            "carriage return and log line",
            "test:alice\r\nGRANTED test:bob".into(),
        ),
        ("tab in a siren", "siren:110\t002\t011".into()),
        ("DEL", "test:\u{7f}alice".into()),
        ("escape sequence", "test:\u{1b}[31malice".into()),
        ("path traversal", "test:../../admin".into()),
        ("URL characters", "test:alice?x=1#y".into()),
        ("upper case test value", "test:Alice".into()),
        ("longer than 256 bytes", too_long),
        ("pivot longer than 256 bytes", pivot_too_long),
    ];
    for (label, subject) in rows {
        let answer = lyon.fetch(rfr(&subject)).await;
        // What a client logs of the refusal quotes none of what it sent.
        if let Err(status) = &answer {
            for quoted in ["18507751", "Dupont", "Marie"] {
                assert!(!status.message().contains(quoted), "{label}: {status:?}");
            }
        }
        assert_refused(
            label,
            answer,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        )?;
    }
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

#[tokio::test]
async fn an_oversized_subject_is_refused_before_it_is_decoded() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    // 1 MiB: over the 64 KiB bound on messages, refused before decoding.
    for size in [1 << 20, 64 * 1024 + 1, 8 << 20] {
        assert_refused(
            &format!("{size}-byte subject"),
            lyon.fetch(rfr(&format!("test:{}", "a".repeat(size)))).await,
            Code::ResourceExhausted,
            ErrorReason::RequestTooLarge,
        )?;
    }
    // Under the message bound but over the subject bound: decoded, then refused.
    assert_refused(
        "60 KiB subject",
        lyon.fetch(rfr(&format!("test:{}", "a".repeat(60 * 1024))))
            .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    )?;
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

#[tokio::test]
async fn unicode_confusable_subject_ids_are_refused_never_mapped_to_someone() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("broker-data");
    let broker = TestBroker::start_on(pki.dir(), &data).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let rows = [
        ("Cyrillic a in the value", "test:\u{430}lice"),
        ("Cyrillic e in the scheme", "t\u{435}st:alice"),
        ("Greek omicron", "test:b\u{3bf}b"),
        ("fullwidth latin letter", "test:\u{ff41}lice"),
        ("fullwidth colon", "test\u{ff1a}alice"),
        (
            "fullwidth digits in a SIREN",
            "siren:\u{ff11}\u{ff11}\u{ff10}\u{ff10}\u{ff10}\u{ff12}\u{ff10}\u{ff11}\u{ff11}",
        ),
        (
            "Arabic-Indic digits in a SIREN",
            "siren:\u{661}\u{661}\u{660}\u{660}\u{660}\u{662}\u{660}\u{661}\u{661}",
        ),
        ("no-break spaces in a SIREN", "siren:110\u{a0}002\u{a0}011"),
        ("figure space in a SIREN", "siren:110\u{2007}002011"),
        ("zero-width joiner", "test:al\u{200d}ice"),
        ("zero-width space at the end", "test:alice\u{200b}"),
        ("byte order mark first", "\u{feff}test:alice"),
        ("combining acute accent", "test:a\u{301}lice"),
        ("right-to-left override", "test:\u{202e}ecila"),
        ("soft hyphen", "test:al\u{ad}ice"),
        (
            "pivot with a Cyrillic letter",
            "pivot:DUP\u{41e}NT|MARIE|1985-07-14|F|69123|99100",
        ),
    ];
    for (label, subject) in rows {
        assert_refused(
            label,
            lyon.fetch(rfr(subject)).await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        )?;
    }
    // The ASCII SIREN the fullwidth one looks like passes validation: the provider only does
    // not know it.
    assert_refused(
        "ASCII SIREN",
        lyon.fetch(rfr("siren:110002011")).await,
        Code::NotFound,
        ErrorReason::SubjectNotFound,
    )?;
    // Consents.Grant refuses a confusable even with a valid ID token for the person it imitates.
    let mut consents = ConsentsClient::new(broker.channel("mairie-lyon").await?);
    assert_refused(
        "consent for a confusable",
        consents
            .grant(pb::GrantConsentRequest {
                subject: "test:\u{430}lice".into(),
                consumer: "mairie-lyon".into(),
                attestation_types: vec!["caf.quotient_familial".into()],
                purpose: CANTINE.into(),
                valid_days: 30,
                id_token: id_token("test:alice", "mairie-lyon"),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    )?;
    let granted = lyon.fetch(rfr("test:alice")).await?.into_inner();
    let alice = granted
        .attestation
        .map(|a| a.id)
        .ok_or_else(|| anyhow::anyhow!("no attestation"))?;
    broker.stop().await?;

    // Every refusal was recorded as a denial about nobody: no pseudonym was derived from a
    // confusable, so none can be linked to the person it imitates.
    let records = exchanges(&data)?;
    let (invalid, others): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|e| e.reason.as_deref() == Some("INVALID_ARGUMENT"));
    assert_eq!(invalid.len(), rows.len(), "one denial per confusable");
    for e in &invalid {
        assert_eq!(e.outcome, Outcome::Denied);
        assert_eq!(e.subject, None, "a pseudonym derived from a confusable");
        assert_eq!(e.attestation_id, None);
    }
    let granted: Vec<_> = others
        .iter()
        .filter(|e| e.outcome == Outcome::Granted)
        .collect();
    assert_eq!(granted.len(), 1, "only the valid request was granted");
    assert_eq!(granted[0].attestation_id.as_deref(), Some(alice.as_str()));
    Ok(())
}

#[tokio::test]
async fn the_other_fetch_fields_are_bounded_identifiers() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let rows: Vec<(&str, pb::FetchRequest)> = vec![
        (
            "confusable attestation type",
            pb::FetchRequest {
                attestation_type: "dgfip.revenu_fiscal_r\u{435}ference".into(),
                ..rfr("test:alice")
            },
        ),
        (
            "attestation type with a space",
            pb::FetchRequest {
                attestation_type: "dgfip.revenu fiscal".into(),
                ..rfr("test:alice")
            },
        ),
        (
            "attestation type of 129 bytes",
            pb::FetchRequest {
                attestation_type: "d".repeat(129),
                ..rfr("test:alice")
            },
        ),
        (
            "empty attestation type",
            pb::FetchRequest {
                attestation_type: String::new(),
                ..rfr("test:alice")
            },
        ),
        (
            "purpose with a NUL byte",
            pb::FetchRequest {
                purpose: "tarification_cantine\0".into(),
                ..rfr("test:alice")
            },
        ),
        (
            "purpose with a fullwidth letter",
            pb::FetchRequest {
                purpose: "tarification_\u{ff43}antine".into(),
                ..rfr("test:alice")
            },
        ),
        (
            "claim with a newline",
            pb::FetchRequest {
                claims: vec!["nombre_parts\n".into()],
                ..rfr("test:alice")
            },
        ),
        (
            "claim listed twice",
            pb::FetchRequest {
                claims: vec!["nombre_parts".into(), "nombre_parts".into()],
                ..rfr("test:alice")
            },
        ),
        (
            "request id of 129 bytes",
            pb::FetchRequest {
                request_id: "r".repeat(129),
                ..rfr("test:alice")
            },
        ),
        (
            "request id with a slash",
            pb::FetchRequest {
                request_id: "../r-1".into(),
                ..rfr("test:alice")
            },
        ),
        (
            "mandate id of 10 kB",
            pb::FetchRequest {
                mandate_id: "m".repeat(10_000),
                ..rfr("test:alice")
            },
        ),
        (
            "mandate id with a control character",
            pb::FetchRequest {
                mandate_id: "m-\u{7}1".into(),
                ..rfr("test:alice")
            },
        ),
    ];
    for (label, request) in rows {
        assert_refused(
            label,
            lyon.fetch(request).await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        )?;
    }
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

// ------------------------------------------------------------------ enum values

#[tokio::test]
async fn unknown_enum_values_are_refused_and_unknown_fields_ignored() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;

    // No request message of unefois.v1 has an enum field: closed sets travel as strings or
    // integers, and a value outside the set is refused.
    let mut cnil = AuditClient::new(broker.channel("cnil").await?);
    for (label, outcome, kind) in [
        ("unknown outcome", "approved", ""),
        ("outcome in capitals", "GRANTED", ""),
        ("outcome as its enum number", "1", ""),
        ("kind with a control character", "", "exchange\n"),
        ("kind with a non-ASCII letter", "", "\u{435}xchange"),
    ] {
        assert_refused(
            label,
            cnil.list_events(pb::ListEventsRequest {
                outcome: outcome.into(),
                kind: kind.into(),
                limit: 10,
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        )?;
    }
    let mut agent = MandatesClient::new(broker.channel("france-services-lyon/a.martin").await?);
    for days in [0, 2, 30, 366, u32::MAX] {
        assert_refused(
            &format!("mandate of {days} days"),
            agent
                .create(pb::CreateMandateRequest {
                    subject: "test:alice".into(),
                    purposes: vec![CANTINE.into()],
                    duration_days: days,
                    signed_document: b"mandat signe".to_vec(),
                    id_token: id_token("test:alice", "france-services-lyon"),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        )?;
    }
    let mut consents = ConsentsClient::new(broker.channel("mairie-lyon").await?);
    for days in [0, u32::MAX] {
        assert_refused(
            &format!("consent of {days} days"),
            consents
                .grant(pb::GrantConsentRequest {
                    subject: "test:alice".into(),
                    consumer: "mairie-lyon".into(),
                    attestation_types: vec!["caf.quotient_familial".into()],
                    purpose: CANTINE.into(),
                    valid_days: days,
                    id_token: id_token("test:alice", "mairie-lyon"),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        )?;
    }

    // Raw protobuf: an enum-like varint (999) under field numbers FetchRequest does not have is
    // skipped (proto3), never read as one of its fields; the request is served as if absent.
    let mut message = valid_fetch_message("test:alice");
    message.extend(varint_field(7, 999));
    message.extend(varint_field(15, 999));
    message.extend(varint_field(1000, u64::MAX));
    let status = raw_unary(broker.channel("mairie-lyon").await?, FETCH, frame(&message)).await?;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());

    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

// ------------------------------------------------------------------ repeated fields

#[tokio::test]
async fn huge_repeated_fields_are_bounded() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    // 10,000 one-letter claims (30 kB) fit in a message and are refused by count...
    assert_refused(
        "10,000 short claims",
        lyon.fetch(pb::FetchRequest {
            claims: vec!["x".into(); 10_000],
            ..rfr("test:alice")
        })
        .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    )?;
    // ... 10,000 distinct names do not fit and are refused before decoding.
    assert_refused(
        "10,000 distinct claims",
        lyon.fetch(pb::FetchRequest {
            claims: (0..10_000).map(|i| format!("claim_{i:05}")).collect(),
            ..rfr("test:alice")
        })
        .await,
        Code::ResourceExhausted,
        ErrorReason::RequestTooLarge,
    )?;
    // The same for a consent's attestation types and a mandate's purposes.
    let mut consents = ConsentsClient::new(broker.channel("mairie-lyon").await?);
    assert_refused(
        "10,000 consent types",
        consents
            .grant(pb::GrantConsentRequest {
                subject: "test:alice".into(),
                consumer: "mairie-lyon".into(),
                attestation_types: vec!["t".into(); 10_000],
                purpose: CANTINE.into(),
                valid_days: 30,
                id_token: id_token("test:alice", "mairie-lyon"),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    )?;
    let mut agent = MandatesClient::new(broker.channel("france-services-lyon/a.martin").await?);
    assert_refused(
        "10,000 mandate purposes",
        agent
            .create(pb::CreateMandateRequest {
                subject: "test:alice".into(),
                purposes: vec!["p".into(); 10_000],
                duration_days: 31,
                signed_document: b"mandat signe".to_vec(),
                id_token: id_token("test:alice", "france-services-lyon"),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    )?;
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

// ------------------------------------------------------------------ raw protobuf

/// A protobuf varint.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

/// A length-delimited field (wire type 2): how `string` and `bytes` fields are encoded.
fn bytes_field(number: u64, value: &[u8]) -> Vec<u8> {
    let mut out = varint(number << 3 | 2);
    out.extend(varint(value.len() as u64));
    out.extend_from_slice(value);
    out
}

/// A varint field (wire type 0): how enums and integers are encoded.
fn varint_field(number: u64, value: u64) -> Vec<u8> {
    let mut out = varint(number << 3);
    out.extend(varint(value));
    out
}

/// A valid `FetchRequest` (subject 1, attestation_type 2, purpose 3), encoded by hand.
fn valid_fetch_message(subject: &str) -> Vec<u8> {
    let mut m = bytes_field(1, subject.as_bytes());
    m.extend(bytes_field(2, RFR.as_bytes()));
    m.extend(bytes_field(3, CANTINE.as_bytes()));
    m
}

/// One gRPC message frame: uncompressed, 4-byte big-endian length, the message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(
        u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    out
}

/// Sends `body` as the request body of a unary gRPC call to `path` over an mTLS channel, as
/// any client could, and returns the status the broker ended the call with (OK included).
async fn raw_unary(
    mut channel: Channel,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<tonic::Status> {
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(axum::body::Body::from(body)))?;
    let response = channel.call(request).await?;
    let (parts, body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return Ok(status);
    }
    let mut body = std::pin::pin!(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Some(trailers) = frame?.trailers_ref() {
            return tonic::Status::from_header_map(trailers)
                .ok_or_else(|| anyhow::anyhow!("trailers without grpc-status"));
        }
    }
    anyhow::bail!("the call ended without a grpc-status")
}

/// Messages no protobuf encoder produces: invalid UTF-8 in `string` fields, a wrong wire
/// type, a truncated field.
fn undecodable_messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut bad_subject = bytes_field(1, b"test:al\xffce");
    bad_subject.extend(bytes_field(2, RFR.as_bytes()));
    bad_subject.extend(bytes_field(3, CANTINE.as_bytes()));
    let mut bad_type = bytes_field(1, b"test:alice");
    bad_type.extend(bytes_field(2, b"dgfip.\xc3\x28"));
    bad_type.extend(bytes_field(3, CANTINE.as_bytes()));
    let mut overlong = bytes_field(1, b"test:\xc0\xafalice"); // overlong '/'
    overlong.extend(bytes_field(2, RFR.as_bytes()));
    overlong.extend(bytes_field(3, CANTINE.as_bytes()));
    let mut surrogate = bytes_field(1, b"test:\xed\xa0\x80alice"); // UTF-16 surrogate
    surrogate.extend(bytes_field(2, RFR.as_bytes()));
    surrogate.extend(bytes_field(3, CANTINE.as_bytes()));
    let mut bad_claim = valid_fetch_message("test:alice");
    bad_claim.extend(bytes_field(4, b"\xfe\xff"));
    let mut wire_type = varint_field(1, 42); // subject sent as a varint
    wire_type.extend(bytes_field(2, RFR.as_bytes()));
    let mut truncated = valid_fetch_message("test:alice");
    truncated.extend(varint(3 << 3 | 2));
    truncated.extend(varint(1000)); // announces 1000 bytes, none follow
    vec![
        ("invalid UTF-8 in subject", bad_subject),
        ("invalid UTF-8 in attestation_type", bad_type),
        ("overlong UTF-8 encoding", overlong),
        ("UTF-8-encoded surrogate", surrogate),
        ("invalid UTF-8 in a repeated string", bad_claim),
        ("wrong wire type", wire_type),
        ("truncated field", truncated),
    ]
}

#[tokio::test]
async fn undecodable_requests_fail_cleanly_and_the_broker_keeps_serving() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let channel = broker.channel("mairie-lyon").await?;
    for (label, message) in undecodable_messages() {
        let status = raw_unary(channel.clone(), FETCH, frame(&message)).await?;
        assert!(
            status.code() == Code::InvalidArgument,
            "{label}: {:?} {}",
            status.code(),
            status.message()
        );
        assert!(!status.message().is_empty(), "{label}: not explained");
    }
    // A frame that announces 4 GiB is refused from its header, before anything is buffered.
    let mut huge = vec![0];
    huge.extend(u32::MAX.to_be_bytes());
    huge.extend(valid_fetch_message("test:alice"));
    let status = raw_unary(channel.clone(), FETCH, huge).await?;
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert_eq!(reason_of(&status), Some(ErrorReason::RequestTooLarge));
    // A frame flagged compressed with no grpc-encoding, and a frame cut short.
    let mut compressed = frame(&valid_fetch_message("test:alice"));
    compressed[0] = 1;
    let status = raw_unary(channel.clone(), FETCH, compressed).await?;
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    let mut cut = frame(&valid_fetch_message("test:alice"));
    cut.truncate(cut.len() - 3);
    let status = raw_unary(channel.clone(), FETCH, cut).await?;
    assert_eq!(status.code(), Code::Internal, "{}", status.message());

    // The well-formed hand-encoded request is served on the same connection.
    let status = raw_unary(
        channel.clone(),
        FETCH,
        frame(&valid_fetch_message("test:alice")),
    )
    .await?;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());
    let mut lyon = ExchangeClient::new(channel);
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

#[tokio::test]
async fn undecodable_requests_are_invalid_arguments_with_their_reason() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let channel = broker.channel("mairie-lyon").await?;
    for (label, message) in undecodable_messages() {
        let status = raw_unary(channel.clone(), FETCH, frame(&message)).await?;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{label}: {}",
            status.message()
        );
        assert_eq!(
            reason_of(&status),
            Some(ErrorReason::InvalidArgument),
            "{label}"
        );
    }
    let mut lyon = ExchangeClient::new(channel);
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

// ------------------------------------------------------------------ hostile HTTP provider

const NORMAL: u8 = 0;
const TEN_MB: u8 = 1;
const TEN_MB_STREAMED: u8 = 2;
const DEEP_ARRAYS: u8 = 3;
const DEEP_OBJECTS: u8 = 4;
const HUGE_NUMBER: u8 = 5;
const INVALID_UTF8: u8 = 6;

const ALICE: &str = r#"{"data":{"rfr":23870,"parts":3.0,"year":2025}"#;

/// A DGFiP-like API whose answer is switched between normal and hostile.
async fn hostile(State(mode): State<Arc<AtomicU8>>) -> Response {
    let ok = |body: axum::body::Body| (StatusCode::OK, body).into_response();
    match mode.load(Ordering::SeqCst) {
        TEN_MB => ok(format!("{ALICE},\"pad\":\"{}\"}}", "x".repeat(10 << 20)).into()),
        TEN_MB_STREAMED => {
            // Chunked, no Content-Length: the adapter must count as it reads.
            let head = std::iter::once(format!("{ALICE},\"pad\":\"").into_bytes());
            let chunks = std::iter::repeat_n(vec![b'x'; 64 * 1024], 160);
            let stream = tokio_stream::iter(head.chain(chunks).map(Ok::<_, std::io::Error>));
            ok(axum::body::Body::from_stream(stream))
        }
        DEEP_ARRAYS => ok(format!(
            "{ALICE},\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        )
        .into()),
        DEEP_OBJECTS => ok(format!(
            "{ALICE},\"x\":{}1{}}}",
            "{\"a\":".repeat(10_000),
            "}".repeat(10_000)
        )
        .into()),
        HUGE_NUMBER => ok(r#"{"data":{"rfr":1e999999,"parts":3.0,"year":2025}}"#.into()),
        INVALID_UTF8 => {
            let mut body = format!("{ALICE},\"name\":\"").into_bytes();
            body.extend_from_slice(b"\xff\xfe\"}");
            ok(body.into())
        }
        _ => ok(format!("{ALICE}}}").into()),
    }
}

async fn serve_hostile() -> anyhow::Result<(SocketAddr, Arc<AtomicU8>)> {
    let mode = Arc::new(AtomicU8::new(NORMAL));
    let app = axum::Router::new()
        .route("/v1/rfr/{subject}", get(hostile))
        .with_state(mode.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, mode))
}

/// The sample registry with the DGFiP type served over HTTP at `addr`, with a breaker that
/// stays closed through the hostile answers (each is its own row).
fn http_registry(dir: &Path, addr: SocketAddr) -> anyhow::Result<PathBuf> {
    let http = format!(
        "adapter = {{ kind = \"http\", url = \"http://{addr}/v1/rfr/{{subject}}\", allow_plain_http = true, timeout_ms = 5000, retries = 0, claims = {{ revenu_fiscal_reference = \"/data/rfr\", nombre_parts = \"/data/parts\", annee_revenus = \"/data/year\" }} }}\nresilience = {{ max_concurrency = 4, failure_threshold = 100, open_seconds = 1 }}"
    );
    sample_registry_with(dir, |sample| {
        sample.replacen(
            "adapter = { kind = \"static\", dataset = \"data/dgfip.revenu_fiscal_reference.json\" }",
            &http,
            1,
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_http_provider_answers_degrade_one_answer_only() -> anyhow::Result<()> {
    let (addr, mode) = serve_hostile().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: http_registry(scratch.path(), addr)?,
            ..Default::default()
        },
    )
    .await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    lyon.fetch(rfr("test:alice")).await?;
    for (label, hostile) in [
        ("10 MB body with its length", TEN_MB),
        ("10 MB body streamed", TEN_MB_STREAMED),
        ("arrays nested 10,000 deep", DEEP_ARRAYS),
        ("objects nested 10,000 deep", DEEP_OBJECTS),
        ("number out of range", HUGE_NUMBER),
        ("invalid UTF-8 in the JSON", INVALID_UTF8),
    ] {
        mode.store(hostile, Ordering::SeqCst);
        assert_refused(
            label,
            lyon.fetch(rfr("test:alice")).await,
            Code::Unavailable,
            ErrorReason::ProviderInvalidResponse,
        )?;
        // Other providers are untouched while this one misbehaves.
        let ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?)
            .fetch(pb::FetchRequest {
                subject: "test:alice".into(),
                attestation_type: "caf.quotient_familial".into(),
                purpose: "aide_energie".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(ccas.attestation.is_some(), "{label}: the CAF type failed");
    }
    mode.store(NORMAL, Ordering::SeqCst);
    still_serves(&broker, &mut lyon).await?;
    broker.stop().await
}

// ------------------------------------------------------------------ registry

/// Starts a broker on the sample registry with `edit` applied, expecting it to refuse: the
/// registry file and the start-up error.
async fn refused_start(
    pki: &TestPki,
    edit: impl Fn(&str) -> String,
) -> anyhow::Result<(PathBuf, anyhow::Error, tempfile::TempDir)> {
    let scratch = tempfile::tempdir()?;
    let registry = sample_registry_with(scratch.path(), edit)?;
    let started = TestBroker::start_with_registry(pki.dir(), registry.clone()).await;
    match started {
        Ok(broker) => {
            broker.stop().await?;
            anyhow::bail!("the broker started");
        }
        Err(e) => Ok((registry, e, scratch)),
    }
}

/// The start-up error of the sample registry with `edit` applied: a registry error naming the
/// file and the key (key, message, full text).
async fn start_error(
    pki: &TestPki,
    edit: impl Fn(&str) -> String,
) -> anyhow::Result<(String, String, String)> {
    let (registry, error, _scratch) = refused_start(pki, edit).await?;
    let text = format!("{error:#}");
    let Some(broker::BrokerError::Registry(e)) = error.downcast_ref::<broker::BrokerError>() else {
        anyhow::bail!("not a registry error: {text}");
    };
    anyhow::ensure!(e.file == registry, "the error names another file: {text}");
    anyhow::ensure!(
        text.contains(&registry.display().to_string()) && text.contains(&e.key),
        "the message names the file and the key: {text}"
    );
    Ok((e.key.clone(), e.message.clone(), text))
}

/// HTTP adapter limits out of range, and the field each one is.
const HTTP_LIMITS: [(&str, &str); 3] = [
    ("max_response_bytes", "max_response_bytes = 0"),
    ("retries", "retries = 11"),
    ("timeout_ms", "timeout_ms = 0"),
];

/// An edit of the sample registry's text.
type Edit = Box<dyn Fn(&str) -> String>;

const CAF_DATASET: &str = "dataset = \"data/caf.quotient_familial.json\"";

fn dgfip_http(extra: &str) -> String {
    format!(
        "adapter = {{ kind = \"http\", url = \"http://api.dgfip.test/v1/rfr/{{subject}}\", allow_plain_http = true, claims = {{ revenu_fiscal_reference = \"/rfr\" }}{extra} }}"
    )
}

#[tokio::test]
async fn path_traversal_in_registry_paths_refuses_the_start() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let rows: Vec<(&str, String, &str, &str)> = vec![
        (
            "dataset with ..",
            CAF_DATASET.replace("data/caf.quotient_familial.json", "../../etc/passwd"),
            "attestation_types[0].adapter.dataset",
            "../../etc/passwd",
        ),
        (
            "dataset with .. inside",
            CAF_DATASET.replace(
                "data/caf.quotient_familial.json",
                "data/../../../etc/passwd",
            ),
            "attestation_types[0].adapter.dataset",
            "data/../../../etc/passwd",
        ),
        (
            "absolute dataset",
            CAF_DATASET.replace("data/caf.quotient_familial.json", "/etc/passwd"),
            "attestation_types[0].adapter.dataset",
            "/etc/passwd",
        ),
    ];
    for (label, replacement, key, path) in rows {
        let (k, message, _) =
            start_error(&pki, |s| s.replacen(CAF_DATASET, &replacement, 1)).await?;
        assert_eq!(k, key, "{label}");
        assert!(message.contains(path), "{label}: {message}");
    }
    let (key, message, _) = start_error(&pki, |s| {
        s.replacen(
            "jwks = \"dev-idp/jwks.json\"",
            "jwks = \"../../../etc/passwd\"",
            1,
        )
    })
    .await?;
    assert_eq!(key, "identity_providers[0].jwks");
    assert!(message.contains("../../../etc/passwd"), "{message}");
    let (key, _, _) = start_error(&pki, |s| {
        s.replacen(
            "jwks = \"dev-idp/jwks.json\"",
            "jwks = \"/etc/hostname\"",
            1,
        )
    })
    .await?;
    assert_eq!(key, "identity_providers[0].jwks");
    for (field, value) in [
        ("bearer_token_file", "../../root/.token"),
        ("ca_file", "/etc/ssl/certs/ca-certificates.crt"),
        ("client_key_file", "../keys/broker.key"),
    ] {
        let extra = format!(", {field} = \"{value}\"");
        let (key, message, _) =
            start_error(&pki, |s| s.replacen(DGFIP_STATIC, &dgfip_http(&extra), 1)).await?;
        assert_eq!(key, format!("attestation_types[1].adapter.{field}"));
        assert!(message.contains(value), "{message}");
    }
    Ok(())
}

/// The registry error a broker started on `registry` (already written) refuses with.
async fn refused_registry(
    pki: &TestPki,
    registry: &Path,
) -> anyhow::Result<broker::registry::RegistryError> {
    let started = TestBroker::start_with_registry(pki.dir(), registry.to_path_buf()).await;
    let error = match started {
        Ok(broker) => {
            broker.stop().await?;
            anyhow::bail!("the broker started on {}", registry.display());
        }
        Err(e) => e,
    };
    match error.downcast::<broker::BrokerError>() {
        Ok(broker::BrokerError::Registry(e)) => {
            anyhow::ensure!(e.file == registry, "another file: {e}");
            Ok(e)
        }
        Ok(other) => anyhow::bail!("not a registry error: {other}"),
        Err(other) => anyhow::bail!("not a broker error: {other:#}"),
    }
}

#[tokio::test]
async fn a_symbolic_link_out_of_the_registry_folder_refuses_the_start() -> anyhow::Result<()> {
    use std::os::unix::fs::symlink;
    let pki = TestPki::for_sample_registry()?;
    // What an attacker wants served or sent: a file outside the registry's folder.
    let outside = tempfile::tempdir()?;
    let secret = outside.path().join("caf.quotient_familial.json");
    std::fs::copy(
        unefois_tests::repo_root().join("examples/data/caf.quotient_familial.json"),
        &secret,
    )?;
    std::fs::copy(
        unefois_tests::repo_root().join("examples/dev-idp/jwks.json"),
        outside.path().join("jwks.json"),
    )?;
    std::fs::write(outside.path().join("machine-id"), "0123456789abcdef\n")?;
    let scratch = tempfile::tempdir()?;
    let case = |name: &str, edit: &dyn Fn(&str) -> String| -> anyhow::Result<PathBuf> {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir)?;
        sample_registry_with(&dir, edit)
    };
    let same = |s: &str| format!("{s}\n# symbolic links\n");

    // The dataset file is a link out.
    let registry = case("file", &same)?;
    let dataset = registry.with_file_name("data/caf.quotient_familial.json");
    std::fs::remove_file(&dataset)?;
    symlink(&secret, &dataset)?;
    let e = refused_registry(&pki, &registry).await?;
    assert_eq!(e.key, "attestation_types[0].adapter.dataset", "{e}");
    assert!(
        e.message.contains("symbolic link")
            && e.message.contains(&outside.path().display().to_string()),
        "{e}"
    );

    // A folder on the way is a link out: the file's own name is innocent.
    let registry = case("folder", &same)?;
    let data = registry.with_file_name("data");
    std::fs::remove_dir_all(&data)?;
    symlink(outside.path(), &data)?;
    let e = refused_registry(&pki, &registry).await?;
    assert_eq!(e.key, "attestation_types[0].adapter.dataset", "{e}");
    assert!(e.message.contains("symbolic link"), "{e}");

    // The JWKS is a link out.
    let registry = case("jwks", &same)?;
    let jwks = registry.with_file_name("dev-idp/jwks.json");
    std::fs::remove_file(&jwks)?;
    symlink(outside.path().join("jwks.json"), &jwks)?;
    let e = refused_registry(&pki, &registry).await?;
    assert_eq!(e.key, "identity_providers[0].jwks", "{e}");

    // A bearer token file that leads to a host file, over https.
    let registry = case("token", &|s: &str| {
        s.replacen(
            DGFIP_STATIC,
            "adapter = { kind = \"http\", url = \"https://api.dgfip.test/v1/rfr/{subject}\", \
             ca_file = \"ca.crt\", bearer_token_file = \"dgfip.token\", \
             claims = { revenu_fiscal_reference = \"/rfr\" } }",
            1,
        )
    })?;
    std::fs::copy(pki.dir().join("ca.crt"), registry.with_file_name("ca.crt"))?;
    symlink(
        outside.path().join("machine-id"),
        registry.with_file_name("dgfip.token"),
    )?;
    let e = refused_registry(&pki, &registry).await?;
    assert_eq!(
        e.key, "attestation_types[1].adapter.bearer_token_file",
        "{e}"
    );
    assert!(e.message.contains("machine-id"), "{e}");

    // A link that stays inside the folder is followed.
    let registry = case("inside", &same)?;
    let dataset = registry.with_file_name("data/caf.quotient_familial.json");
    std::fs::rename(&dataset, registry.with_file_name("data/qf.json"))?;
    symlink("qf.json", &dataset)?;
    broker::registry::load(&registry)?;
    Ok(())
}

#[tokio::test]
async fn plain_http_providers_are_refused_unless_allowed_and_never_with_a_credential()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let http = |extra: &str| {
        format!(
            "adapter = {{ kind = \"http\", url = \"http://api.dgfip.test/v1/rfr/{{subject}}\", claims = {{ revenu_fiscal_reference = \"/rfr\" }}{extra} }}"
        )
    };
    let rows: Vec<(&str, String, String, &str)> = vec![
        ("http url", http(""), "url".into(), "allow_plain_http"),
        (
            "HTTP url in capitals",
            http("").replace("http://", "HTTP://"),
            "url".into(),
            "allow_plain_http",
        ),
        (
            "grpc endpoint",
            "adapter = { kind = \"grpc\", endpoint = \"http://127.0.0.1:50051\" }".into(),
            "endpoint".into(),
            "allow_plain_http",
        ),
        (
            "bearer token, allowed",
            http(", allow_plain_http = true, bearer_token_file = \"dgfip.token\""),
            "bearer_token_file".into(),
            "never sent over plain http://",
        ),
        (
            "bearer token, not allowed",
            http(", bearer_token_file = \"dgfip.token\""),
            "bearer_token_file".into(),
            "never sent over plain http://",
        ),
        (
            "API key header, allowed",
            http(", allow_plain_http = true, headers = { \"X-Api-Key\" = \"k-123\" }"),
            "headers.X-Api-Key".into(),
            "never sent over plain http://",
        ),
        (
            "authorization header, allowed",
            http(", allow_plain_http = true, headers = { authorization = \"Basic eDp5\" }"),
            "headers.authorization".into(),
            "never sent over plain http://",
        ),
    ];
    for (i, (label, adapter, field, why)) in rows.into_iter().enumerate() {
        let dir = scratch.path().join(i.to_string());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("dgfip.token"), "s3cr3t\n")?;
        let registry = sample_registry_with(&dir, |s| s.replacen(DGFIP_STATIC, &adapter, 1))?;
        let e = refused_registry(&pki, &registry).await?;
        assert_eq!(
            e.key,
            format!("attestation_types[1].adapter.{field}"),
            "{label}: {e}"
        );
        assert!(e.message.contains(why), "{label}: {e}");
        assert!(
            !e.message.contains("s3cr3t") && !e.message.contains("k-123"),
            "{e}"
        );
    }
    // Allowed, without a credential: the provider on this host is served (the sample's
    // Python provider is declared so: examples/providers/python/README.md).
    let registry = sample_registry_with(&scratch.path().join("allowed"), |s| {
        s.replacen(
            DGFIP_STATIC,
            &http(", allow_plain_http = true, headers = { \"X-Request-Source\" = \"unefois\" }"),
            1,
        )
    })?;
    broker::registry::load(&registry)?;
    Ok(())
}

#[tokio::test]
async fn invalid_configuration_values_refuse_the_start_naming_file_and_key() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let rows: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "rate limit of zero per minute",
            Box::new(|s: &str| {
                s.replacen(
                    "per_minute = 600, burst = 60",
                    "per_minute = 0, burst = 60",
                    1,
                )
            }),
            "participants[8].rate_limit",
            "positive",
        ),
        (
            "burst of zero",
            Box::new(|s: &str| {
                s.replacen(
                    "per_minute = 600, burst = 60",
                    "per_minute = 600, burst = 0",
                    1,
                )
            }),
            "participants[8].rate_limit",
            "positive",
        ),
        (
            "negative rate limit",
            Box::new(|s: &str| {
                s.replacen(
                    "per_minute = 600, burst = 60",
                    "per_minute = -1, burst = 60",
                    1,
                )
            }),
            "participants[8].rate_limit.per_minute",
            "-1",
        ),
        (
            "unknown role",
            Box::new(|s: &str| s.replacen("roles = [\"operator\"]", "roles = [\"root\"]", 1)),
            "participants[6].roles[0]",
            "root",
        ),
        (
            "no role",
            Box::new(|s: &str| s.replacen("roles = [\"operator\"]", "roles = []", 1)),
            "participants[6].roles",
            "role",
        ),
        (
            "habilitation for an unknown type",
            Box::new(|s: &str| {
                s.replacen(
                    "attestation_type = \"caf.quotient_familial\"\npurposes",
                    "attestation_type = \"caf.patrimoine\"\npurposes",
                    1,
                )
            }),
            "habilitations[0].attestation_type",
            "caf.patrimoine",
        ),
        (
            "habilitation for an unknown purpose",
            Box::new(|s: &str| {
                s.replacen(
                    "purposes = [\"tarification_cantine\", \"tarification_periscolaire\"]",
                    "purposes = [\"tarification_cantine\", \"surveillance\"]",
                    1,
                )
            }),
            "habilitations[0].purposes[1]",
            "surveillance",
        ),
        (
            "duplicated participant id",
            Box::new(|s: &str| s.replacen("id = \"mesr\"", "id = \"caf\"", 1)),
            "participants[2].id",
            "duplicate",
        ),
        (
            "participant id that is no SPIFFE path segment",
            Box::new(|s: &str| s.replacen("id = \"dinum\"", "id = \"../dinum\"", 1)),
            "participants[6].id",
            "",
        ),
        (
            "control character in a name",
            Box::new(|s: &str| {
                s.replacen(
                    "name = \"Ville de Lyon\"",
                    "name = \"Ville de\\u0000Lyon\"",
                    1,
                )
            }),
            "participants[3].name",
            "control",
        ),
        (
            "maximum age of zero",
            Box::new(|s: &str| s.replacen("max_age_days = 31", "max_age_days = 0", 1)),
            "attestation_types[0].max_age_days",
            "",
        ),
        (
            "provider that may never be called",
            Box::new(|s: &str| {
                s.replacen(
                    DGFIP_STATIC,
                    &format!(
                        "{DGFIP_STATIC}\nresilience = {{ max_concurrency = 0, failure_threshold = 3, open_seconds = 30 }}"
                    ),
                    1,
                )
            }),
            "attestation_types[1].resilience.max_concurrency",
            "",
        ),
    ];
    for (label, edit, key, needle) in rows {
        let (k, message, _) = start_error(&pki, edit).await?;
        assert_eq!(k, key, "{label}: {message}");
        assert!(message.contains(needle), "{label}: {message}");
    }
    // An HTTP adapter's limits are checked when the adapter is built: named by file and key
    // too (invalid_http_adapter_limits_name_file_and_key).
    Ok(())
}

#[tokio::test]
async fn invalid_http_adapter_limits_name_file_and_key() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    for (field, value) in HTTP_LIMITS {
        let extra = format!(", {value}");
        let (registry, error, _) =
            refused_start(&pki, |s| s.replacen(DGFIP_STATIC, &dgfip_http(&extra), 1)).await?;
        let text = format!("{error:#}");
        let key = format!("attestation_types[1].adapter.{field}");
        assert!(
            text.contains(&registry.display().to_string()) && text.contains(&key),
            "names neither {} nor {key}: {text}",
            registry.display()
        );
    }
    Ok(())
}

//! The files `unefois fetch --out` and `unefois accesses --out` write, made from the broker's
//! answers; what they hold and how anyone checks them offline is `unefois_tlog::receipt`
//! (docs/audit-log.md, "Receipts").

use unefois_proto::v1 as pb;

pub use unefois_tlog::receipt::*;

/// The envelope of an answer, as the file holds it.
pub fn envelope_file(e: &pb::Envelope) -> SignedEnvelope {
    SignedEnvelope {
        payload_type: e.payload_type.clone(),
        payload: Base64(e.payload.clone()),
        signatures: e
            .signatures
            .iter()
            .map(|s| EnvelopeSignatureFile {
                keyid: s.keyid.clone(),
                sig: Base64(s.sig.clone()),
            })
            .collect(),
    }
}

/// The receipt file of a Fetch answer.
pub fn receipt_file(answer: &pb::FetchResponse) -> Result<ReceiptFile, ReceiptError> {
    let envelope = answer
        .envelope
        .as_ref()
        .ok_or(ReceiptError::Incomplete("a signed envelope"))?;
    let receipt = answer
        .receipt
        .as_ref()
        .ok_or(ReceiptError::Incomplete("a receipt"))?;
    Ok(ReceiptFile {
        format: RECEIPT_FORMAT.to_string(),
        envelope: envelope_file(envelope),
        receipt: Inclusion {
            leaf_index: receipt.leaf_index,
            entry: Base64(receipt.entry.clone()),
            checkpoint: receipt.checkpoint.clone(),
            inclusion_proof: base64_list(&receipt.inclusion_proof),
        },
    })
}

/// The page of a ListAccesses answer.
pub fn access_page(answer: &pb::ListAccessesResponse) -> AccessPage {
    AccessPage {
        checkpoint: answer.checkpoint.clone(),
        accesses: answer
            .accesses
            .iter()
            .map(|a| AccessItem {
                time: rfc3339(a.time.as_ref()),
                consumer: a.consumer.clone(),
                attestation_type: a.attestation_type.clone(),
                purpose: a.purpose.clone(),
                outcome: a.outcome.clone(),
                leaf_index: a.leaf_index,
                entry: Base64(a.entry.clone()),
                inclusion_proof: base64_list(&a.inclusion_proof),
            })
            .collect(),
    }
}

/// A protobuf timestamp as RFC 3339 UTC (`2026-12-02T10:29:52Z`, fractions when it has
/// some); empty when absent or out of range.
pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| {
        let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
    })
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

fn base64_list(raw: &[Vec<u8>]) -> Vec<Base64> {
    raw.iter().cloned().map(Base64).collect()
}

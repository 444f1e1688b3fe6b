//! `unefois fetch`: a signed attestation, checked against the verifier key one already trusts,
//! and optionally its receipt file.

use std::path::PathBuf;

use anyhow::Context;
use unefois_proto::v1 as pb;
use unefois_proto::v1::exchange_client::ExchangeClient;

use crate::client::{ClientArgs, connect, rpc_error};
use crate::print::write_json;

#[derive(clap::Args)]
pub(crate) struct FetchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person or company, scheme:value (`test:alice`, `siren:…`).
    #[arg(long)]
    subject: String,
    /// The attestation type (`caf.quotient_familial`).
    #[arg(long = "type")]
    attestation_type: String,
    /// The purpose code the data is needed for.
    #[arg(long)]
    purpose: String,
    /// The claims wanted, comma-separated; all those the habilitation allows when omitted.
    #[arg(long, value_delimiter = ',')]
    claims: Vec<String>,
    /// An idempotency key: a retry with the same key returns the same attestation.
    #[arg(long, default_value = "")]
    request_id: String,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    mandate: String,
    /// Also write the whole answer (signed attestation and receipt) to FILE as JSON, for
    /// `unefois verify FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(crate) async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    // The verifier key comes from the PKI directory, distributed out of band, never from the
    // broker's answer: an attestation is only worth the key one already trusts.
    let key_path = args.client.home.join("pki").join("attestation.vkey");
    let vkey = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read the attestation verifier key {} (the broker writes it at start; \
             distribute it out of band)",
            key_path.display()
        )
    })?;
    let vkey = vkey.trim();
    let channel = connect(&args.client).await?;
    let answer = ExchangeClient::new(channel)
        .fetch(pb::FetchRequest {
            subject: args.subject,
            attestation_type: args.attestation_type,
            purpose: args.purpose,
            claims: args.claims,
            request_id: args.request_id,
            mandate_id: args.mandate,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let envelope = answer
        .envelope
        .as_ref()
        .map(|e| broker::receipt::envelope_file(e).to_envelope())
        .ok_or_else(|| anyhow::anyhow!("the broker answered without a signed envelope"))?;
    broker::signing::verify(vkey, &envelope).with_context(|| {
        format!(
            "the attestation's signature does not verify against {}",
            key_path.display()
        )
    })?;
    // Saved before anything is printed: a closed standard output must not lose it.
    if let Some(out) = &args.out {
        write_json(out, &broker::receipt::receipt_file(&answer)?)?;
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&envelope.payload).context("the signed payload is not JSON")?;
    outln!("{}", serde_json::to_string_pretty(&payload)?);
    let keyid = broker::signing::keyid_of(vkey).unwrap_or_else(|| vkey.to_string());
    outln!("signature: valid ({keyid})");
    if let Some(out) = &args.out {
        outln!(
            "receipt saved in {} (check it offline: unefois verify {})",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

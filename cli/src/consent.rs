//! `unefois consent`: grant, revoke and list the consents of a person.

use anyhow::bail;
use clap::Subcommand;
use unefois_proto::v1 as pb;
use unefois_proto::v1::consents_client::ConsentsClient;

use crate::client::{ClientArgs, EvidenceArgs, connect, rpc_error};

#[derive(Subcommand)]
pub(crate) enum ConsentCommand {
    /// Record a person's consent at a guichet.
    Grant(ConsentGrantArgs),
    /// Revoke a consent: one the caller recorded, or any of the person's with their ID token.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The consent id.
        consent_id: String,
        #[command(flatten)]
        evidence: EvidenceArgs,
    },
    /// List a person's consents that the caller may see (all of them with their ID token).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// The person, scheme:value.
        #[arg(long)]
        subject: String,
        /// Only the consents given to this consumer.
        #[arg(long, default_value = "")]
        consumer: String,
        #[command(flatten)]
        evidence: EvidenceArgs,
    },
}

#[derive(clap::Args)]
pub(crate) struct ConsentGrantArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person giving consent, scheme:value.
    #[arg(long)]
    subject: String,
    /// The participant the consent is given to.
    #[arg(long)]
    consumer: String,
    /// The attestation types covered (repeat the flag or separate with commas).
    #[arg(long = "type", value_delimiter = ',', required = true)]
    attestation_types: Vec<String>,
    /// The purpose code covered.
    #[arg(long)]
    purpose: String,
    /// How many days the consent lasts.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// An idempotency key: a retry with the same key returns the same consent.
    #[arg(long, default_value = "")]
    request_id: String,
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    id_token: String,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    mandate: String,
}

/// Runs a `consent` subcommand.
pub(crate) async fn consent(command: ConsentCommand) -> anyhow::Result<()> {
    match command {
        ConsentCommand::Grant(args) => consent_grant(args).await,
        ConsentCommand::Revoke {
            client,
            consent_id,
            evidence,
        } => consent_revoke(client, consent_id, evidence).await,
        ConsentCommand::List {
            client,
            subject,
            consumer,
            evidence,
        } => consent_list(client, subject, consumer, evidence).await,
    }
}

/// `ACTIVE`, `REVOKED`, `EXPIRED`.
fn status_name(c: &pb::Consent) -> &'static str {
    c.status()
        .as_str_name()
        .trim_start_matches("CONSENT_STATUS_")
}

fn expiry(c: &pb::Consent) -> Option<time::OffsetDateTime> {
    c.expires_at
        .as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
}

fn print_consent(c: &pb::Consent) -> anyhow::Result<()> {
    let until = match expiry(c) {
        Some(t) => t.format(&time::format_description::well_known::Rfc3339)?,
        None => "-".to_string(),
    };
    outln!("consent {} {}", c.id, status_name(c));
    outln!("  consumer: {}", c.consumer);
    outln!("  types:    {}", c.attestation_types.join(", "));
    outln!("  purpose:  {}", c.purpose);
    outln!("  expires:  {until}");
    Ok(())
}

async fn consent_grant(args: ConsentGrantArgs) -> anyhow::Result<()> {
    let channel = connect(&args.client).await?;
    let consent = ConsentsClient::new(channel)
        .grant(pb::GrantConsentRequest {
            subject: args.subject,
            consumer: args.consumer,
            attestation_types: args.attestation_types,
            purpose: args.purpose,
            valid_days: args.days,
            request_id: args.request_id,
            id_token: args.id_token,
            mandate_id: args.mandate,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let renewed = consent.renewed;
    let consent = consent
        .consent
        .ok_or_else(|| anyhow::anyhow!("the broker answered without the consent"))?;
    print_consent(&consent)?;
    if renewed {
        outln!("  renewed:  the consent already in force for this scope (one per scope)");
    }
    Ok(())
}

async fn consent_revoke(
    client: ClientArgs,
    consent_id: String,
    evidence: EvidenceArgs,
) -> anyhow::Result<()> {
    let channel = connect(&client).await?;
    let revoked = ConsentsClient::new(channel)
        .revoke(pb::RevokeConsentRequest {
            consent_id,
            id_token: evidence.id_token,
            mandate_id: evidence.mandate,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let ended = revoked.ended;
    let consent = revoked
        .consent
        .ok_or_else(|| anyhow::anyhow!("the broker answered without the consent"))?;
    outln!("consent {} {}", consent.id, status_name(&consent));
    match ended {
        0 => outln!("  ended: none (no consent of this scope was in force)"),
        n => outln!("  ended: {n} consent(s) in force of this scope"),
    }
    Ok(())
}

async fn consent_list(
    client: ClientArgs,
    subject: String,
    consumer: String,
    evidence: EvidenceArgs,
) -> anyhow::Result<()> {
    let channel = connect(&client).await?;
    let mut consents = ConsentsClient::new(channel);
    let mut page_token = String::new();
    let mut count = 0usize;
    loop {
        let page = consents
            .list(pb::ListConsentsRequest {
                subject: subject.clone(),
                consumer: consumer.clone(),
                page_token: page_token.clone(),
                id_token: evidence.id_token.clone(),
                mandate_id: evidence.mandate.clone(),
                ..Default::default()
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        for c in &page.consents {
            let until = expiry(c).map_or_else(|| "-".to_string(), |t| t.date().to_string());
            outln!(
                "{} {} {} {} {} until {until}",
                c.id,
                status_name(c),
                c.consumer,
                c.attestation_types.join(","),
                c.purpose
            );
        }
        count += page.consents.len();
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == page_token {
            bail!("the broker returned the same page token twice");
        }
        page_token = page.next_page_token;
    }
    if count == 0 {
        outln!("no consent");
    }
    Ok(())
}

//! `unefois mandate`: create, revoke and list the mandates people give mediation structures.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use unefois_proto::v1 as pb;

use crate::client::{ClientArgs, connect, rpc_error};

#[derive(Subcommand)]
pub(crate) enum MandateCommand {
    /// Record a mandate given by a person present at the desk (an agent's certificate:
    /// `--as france-services-lyon/a.martin`).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The person giving the mandate, scheme:value.
        #[arg(long)]
        subject: String,
        /// The purposes covered (comma-separated).
        #[arg(long = "purpose", value_delimiter = ',', required = true)]
        purposes: Vec<String>,
        /// Duration in days: 1, 31, 182 or 365.
        #[arg(long, default_value_t = 31)]
        days: u32,
        /// The signed mandate document (only its SHA-256 is sent).
        #[arg(long)]
        document: PathBuf,
        /// The person's OIDC ID token for the structure's audience (development:
        /// `unefois dev id-token --subject ... --aud france-services-lyon`).
        #[arg(long, env = "UNEFOIS_ID_TOKEN", hide_env_values = true)]
        id_token: String,
        /// An idempotency key: a retry with the same key returns the same mandate.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Revoke a mandate: an agent of its structure, or a guichet with the person's ID token.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The mandate id.
        mandate_id: String,
        /// The person's ID token, when a guichet revokes for them.
        #[arg(long, default_value = "")]
        id_token: String,
    },
    /// List mandates: a structure's own, or a person's (a guichet needs their ID token).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// The person, scheme:value; omitted: every mandate of the caller's structure.
        #[arg(long, default_value = "")]
        subject: String,
        /// The person's ID token, when a guichet lists for them.
        #[arg(long, default_value = "")]
        id_token: String,
    },
}

pub(crate) async fn mandate(command: MandateCommand) -> anyhow::Result<()> {
    use unefois_proto::v1::mandates_client::MandatesClient;
    match command {
        MandateCommand::Create {
            client,
            subject,
            purposes,
            days,
            document,
            id_token,
            request_id,
        } => {
            let bytes = std::fs::read(&document)
                .with_context(|| format!("cannot read {}", document.display()))?;
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes).to_vec();
            let created = MandatesClient::new(connect(&client).await?)
                .create(pb::CreateMandateRequest {
                    subject,
                    purposes,
                    duration_days: days,
                    document_sha256: digest,
                    id_token,
                    request_id,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .mandate
                .ok_or_else(|| anyhow::anyhow!("the broker answered without the mandate"))?;
            print_mandate(&created)?;
        }
        MandateCommand::Revoke {
            client,
            mandate_id,
            id_token,
        } => {
            let revoked = MandatesClient::new(connect(&client).await?)
                .revoke(pb::RevokeMandateRequest {
                    mandate_id,
                    id_token,
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .mandate
                .ok_or_else(|| anyhow::anyhow!("the broker answered without the mandate"))?;
            print_mandate(&revoked)?;
        }
        MandateCommand::List {
            client,
            subject,
            id_token,
        } => {
            let mut mandates = MandatesClient::new(connect(&client).await?);
            let mut page_token = String::new();
            let mut count = 0usize;
            loop {
                let page = mandates
                    .list(pb::ListMandatesRequest {
                        subject: subject.clone(),
                        id_token: id_token.clone(),
                        page_token: page_token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                for m in &page.mandates {
                    outln!(
                        "{} {} {} agent {} for {} until {}",
                        m.id,
                        mandate_status(m),
                        m.structure,
                        m.agent,
                        m.purposes.join(","),
                        date_of(m.expires_at.as_ref())
                    );
                }
                count += page.mandates.len();
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if count == 0 {
                outln!("no mandate");
            }
        }
    }
    Ok(())
}

fn mandate_status(m: &pb::Mandate) -> &'static str {
    m.status()
        .as_str_name()
        .trim_start_matches("MANDATE_STATUS_")
}

fn date_of(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .map_or_else(|| "-".to_string(), |t| t.date().to_string())
}

fn print_mandate(m: &pb::Mandate) -> anyhow::Result<()> {
    outln!("mandate {} {}", m.id, mandate_status(m));
    outln!("  structure: {} (agent {})", m.structure, m.agent);
    outln!("  purposes:  {}", m.purposes.join(", "));
    outln!("  days:      {}", m.duration_days);
    outln!("  expires:   {}", date_of(m.expires_at.as_ref()));
    outln!("  document:  sha256 {}", hex::encode(&m.document_sha256));
    Ok(())
}

//! `unefois registry show`: what the caller may do, or what the federation declares.

use clap::Subcommand;
use unefois_proto::v1 as pb;
use unefois_proto::v1::registry_client::RegistryClient;

use crate::client::{ClientArgs, connect, rpc_error};

#[derive(Subcommand)]
pub(crate) enum RegistryCommand {
    /// What the caller may do: its roles and habilitations; with --forms, --types or
    /// --purposes, what the federation declares.
    Show(RegistryShowArgs),
}

#[derive(clap::Args)]
pub(crate) struct RegistryShowArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The forms a guichet may pre-fill, with the source of each field.
    #[arg(long)]
    forms: bool,
    /// The attestation types, with their provider and claims.
    #[arg(long)]
    types: bool,
    /// The purposes, with their legal reference.
    #[arg(long)]
    purposes: bool,
}

/// Runs a `registry` subcommand.
pub(crate) async fn registry(command: RegistryCommand) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Show(args) => registry_show(args).await,
    }
}

/// What the federation declares, as `registry show --forms --types --purposes` lists it.
async fn registry_lists(args: &RegistryShowArgs) -> anyhow::Result<()> {
    let mut client = RegistryClient::new(connect(&args.client).await?);
    if args.purposes {
        let purposes = client
            .list_purposes(pb::ListPurposesRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        for p in &purposes.purposes {
            outln!("purpose {}: {} ({})", p.code, p.label, p.legal_reference);
        }
    }
    if args.types {
        let types = client
            .list_attestation_types(pb::ListAttestationTypesRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        for t in &types.attestation_types {
            let claims: Vec<&str> = t.claims.iter().map(|c| c.name.as_str()).collect();
            outln!(
                "attestation type {} v{} from {} ({}): {}",
                t.id,
                t.version,
                t.provider,
                t.adapter,
                t.description
            );
            outln!("  claims: {}", claims.join(", "));
        }
    }
    if args.forms {
        let forms = client
            .list_forms(pb::ListFormsRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        for f in &forms.forms {
            outln!("form {}: {} (purpose {})", f.id, f.label, f.purpose);
            for field in &f.fields {
                outln!(
                    "  {}{} <- {}.{}",
                    field.name,
                    if field.required { " (required)" } else { "" },
                    field.attestation_type,
                    field.claim
                );
            }
        }
    }
    Ok(())
}

async fn registry_show(args: RegistryShowArgs) -> anyhow::Result<()> {
    if args.forms || args.types || args.purposes {
        return registry_lists(&args).await;
    }
    let channel = connect(&args.client).await?;
    let mut client = RegistryClient::new(channel);
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    let habilitations = client
        .list_habilitations(pb::ListHabilitationsRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    let roles: Vec<&str> = me
        .roles()
        .map(|r| r.as_str_name().trim_start_matches("ROLE_"))
        .collect();
    let agent = if me.agent.is_empty() {
        String::new()
    } else {
        format!(", agent {}", me.agent)
    };
    outln!("{} ({}){agent}", me.participant, me.name);
    outln!("roles: {}", roles.join(", ").to_lowercase());
    outln!("registry: sha256 {}", me.registry_sha256);
    let own: Vec<_> = habilitations
        .habilitations
        .iter()
        .filter(|h| h.consumer == me.participant)
        .collect();
    if own.is_empty() {
        outln!("habilitations: none (deny by default: this participant may obtain nothing)");
    }
    for h in own {
        let basis = match &h.legal_basis {
            Some(b) if b.kind() == pb::LegalBasisKind::Law => format!("law: {}", b.law_citation),
            _ => "consent of the person".to_string(),
        };
        let until = h
            .expires_at
            .as_ref()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds - 1).ok())
            .map(|t| t.date().to_string())
            .unwrap_or_default();
        outln!("habilitation {}", h.id);
        outln!(
            "  may obtain {} [{}]",
            h.attestation_type,
            h.claims.join(", ")
        );
        outln!("  for {}", h.purposes.join(", "));
        outln!("  under {basis}, until {until} inclusive");
    }
    let others = habilitations.habilitations.len()
        - habilitations
            .habilitations
            .iter()
            .filter(|h| h.consumer == me.participant)
            .count();
    if others > 0 {
        outln!(
            "{others} habilitation(s) of other participants on its attestation types or in its audit scope"
        );
    }
    Ok(())
}

//! `unefois prefill` and `unefois confirm`: a form pre-filled for a person, each field with its
//! source or its reason; a preview confirmed (or rejected) by the person.

use std::path::Path;

use unefois_proto::v1 as pb;

use crate::client::{ClientArgs, DEFAULT_ADDR, DEFAULT_HOME, connect, rpc_error};

#[derive(clap::Args)]
pub(crate) struct PrefillArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person, scheme:value.
    #[arg(long)]
    subject: String,
    /// The form id (`inscription_cantine`).
    #[arg(long)]
    form: String,
    /// Preview: show the values for the person to check; nothing is issued until `confirm`.
    #[arg(long)]
    preview: bool,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    mandate: String,
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    id_token: String,
}

#[derive(clap::Args)]
pub(crate) struct ConfirmArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person, scheme:value (the preview's).
    #[arg(long)]
    subject: String,
    /// The prefill id the preview printed.
    #[arg(long)]
    prefill_id: String,
    /// Only these attestation types (comma-separated); all of the preview when omitted.
    #[arg(long = "type", value_delimiter = ',')]
    attestation_types: Vec<String>,
    /// The person rejects the preview: nothing is released.
    #[arg(long)]
    reject: bool,
    /// The mandate an agent of a mediation structure acts under (the preview's).
    #[arg(long, default_value = "")]
    mandate: String,
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    id_token: String,
}

/// A word as a POSIX shell reads it back: as it is when it is plain, single-quoted otherwise.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=@+,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The `confirm` command of a preview, to run as it is printed: this program, the same caller,
/// home, address, person and mandate.
fn confirm_command(args: &PrefillArgs, prefill_id: &str) -> String {
    let program = std::env::args().next().unwrap_or_else(|| "unefois".into());
    let mut words = vec![
        shell_word(&program),
        "confirm".into(),
        "--as".into(),
        shell_word(&args.client.as_participant),
    ];
    if args.client.home != Path::new(DEFAULT_HOME) {
        words.extend([
            "--home".into(),
            shell_word(&args.client.home.to_string_lossy()),
        ]);
    }
    if args.client.addr != DEFAULT_ADDR {
        words.extend(["--addr".into(), shell_word(&args.client.addr)]);
    }
    words.extend(["--subject".into(), shell_word(&args.subject)]);
    if !args.mandate.is_empty() {
        words.extend(["--mandate".into(), shell_word(&args.mandate)]);
    }
    words.extend(["--prefill-id".into(), prefill_id.to_string()]);
    words.join(" ")
}

pub(crate) async fn prefill(args: PrefillArgs) -> anyhow::Result<()> {
    let mut guichet =
        unefois_proto::v1::guichet_client::GuichetClient::new(connect(&args.client).await?);
    let answer = guichet
        .prefill(pb::PrefillRequest {
            subject: args.subject.clone(),
            form: args.form.clone(),
            preview: args.preview,
            mandate_id: args.mandate.clone(),
            id_token: args.id_token.clone(),
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    outln!("form {}", answer.form);
    if !answer.prefill_id.is_empty() {
        let until = answer
            .preview_expires_at
            .as_ref()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        outln!(
            "preview {} (nothing issued until the person confirms, before {until}):",
            answer.prefill_id
        );
        outln!("  {}", confirm_command(&args, &answer.prefill_id));
        if args.mandate.is_empty() && std::env::var_os("UNEFOIS_ID_TOKEN").is_none() {
            outln!("  with the person's ID token: --id-token, or UNEFOIS_ID_TOKEN");
        }
        outln!("  (add --reject if the person rejects it)");
    }
    print_fields(&answer.fields, &answer.unavailable)
}

pub(crate) async fn confirm(args: ConfirmArgs) -> anyhow::Result<()> {
    let mut guichet =
        unefois_proto::v1::guichet_client::GuichetClient::new(connect(&args.client).await?);
    let answer = guichet
        .confirm(pb::ConfirmRequest {
            subject: args.subject,
            prefill_id: args.prefill_id.clone(),
            reject: args.reject,
            attestation_types: args.attestation_types,
            mandate_id: args.mandate,
            id_token: args.id_token,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.reject {
        outln!("preview {} rejected: nothing released", args.prefill_id);
        return Ok(());
    }
    outln!(
        "preview {} confirmed: {} attestation(s) issued",
        args.prefill_id,
        answer.attestations.len()
    );
    print_fields(&answer.fields, &answer.unavailable)
}

/// One line per field: its value and source, or the reason to ask the person for it.
fn print_fields(
    fields: &[pb::PrefilledField],
    unavailable: &[pb::FieldError],
) -> anyhow::Result<()> {
    for f in fields {
        let value = match f.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(pb::claim_value::Value::StringValue(s)) => s.clone(),
            Some(pb::claim_value::Value::IntegerValue(i)) => i.to_string(),
            Some(pb::claim_value::Value::NumberValue(n)) => n.to_string(),
            Some(pb::claim_value::Value::BooleanValue(b)) => b.to_string(),
            Some(pb::claim_value::Value::DateValue(d)) => d.clone(),
            None => String::new(),
        };
        let attestation = if f.attestation_id.is_empty() {
            "preview, not issued".to_string()
        } else {
            format!("attestation {}", f.attestation_id)
        };
        outln!(
            "  {:<28} {:<16} from {} ({}, {attestation})",
            f.name,
            value,
            f.provider,
            f.attestation_type
        );
    }
    for m in unavailable {
        let reason = pb::ErrorReason::try_from(m.reason)
            .map(|r| r.as_str_name())
            .unwrap_or("UNSPECIFIED");
        outln!("  {:<28} to ask: {reason} ({})", m.name, m.message);
    }
    Ok(())
}

//! `unefois verify`: a receipt or access-history file checked offline, without the broker.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::client::DEFAULT_HOME;

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// A file of `unefois fetch --out` or `unefois accesses --out`.
    file: PathBuf,
    /// Where the verifier keys are by default (HOME/pki).
    #[arg(long, default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// The attestation verifier key (default HOME/pki/attestation.vkey).
    #[arg(long, value_name = "FILE")]
    attestation_key: Option<PathBuf>,
    /// The log verifier key (default HOME/pki/log.vkey).
    #[arg(long, value_name = "FILE")]
    log_key: Option<PathBuf>,
    /// A later checkpoint to check the file's against: `unefois audit checkpoint --for FILE
    /// --out LATER` (with the consistency proofs), or a bare signed note.
    #[arg(long, value_name = "LATER")]
    checkpoint: Option<PathBuf>,
}

/// A C2SP verifier key file, trimmed.
fn read_vkey(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the {what} verifier key {} (distribute it out of band)",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

/// Checks a receipt or access history file offline, printing each check that passes; the
/// first that fails ends it with an error naming it.
pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use broker::receipt::{LaterCheckpoint, VerifiableFile, VerifierKeys};
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let file = VerifiableFile::parse(&bytes).with_context(|| args.file.display().to_string())?;
    let pki = args.home.join("pki");
    let attestation = if file.needs_attestation_key() {
        let path = args
            .attestation_key
            .unwrap_or_else(|| pki.join("attestation.vkey"));
        Some(read_vkey(&path, "attestation")?)
    } else {
        None
    };
    let log = read_vkey(&args.log_key.unwrap_or_else(|| pki.join("log.vkey")), "log")?;
    let later = match &args.checkpoint {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(LaterCheckpoint::parse(&text).with_context(|| path.display().to_string())?)
        }
        None => None,
    };
    let keys = VerifierKeys { attestation, log };
    let verification = broker::receipt::verify(&file, &keys, later.as_ref());
    for passed in &verification.passed {
        outln!("{passed}");
    }
    if let Some(failure) = verification.failure {
        return Err(failure.into());
    }
    outln!("{}: verified offline", args.file.display());
    Ok(())
}

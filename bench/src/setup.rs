//! The bench's environment: a folder holding a federation PKI, the bench registry (every type
//! through the `grpc` adapter to the bench provider) and the development identity provider's
//! public keys; then, once the broker runs, the citizens' consents the scenarios need, granted
//! through `Consents.Grant` with development ID tokens minted by `unefois dev id-token`.
//!
//! Layout of the folder (`--dir`):
//! - `home/pki/`: the PKI (`ca.crt`, `crl.pem`, `broker.crt` for the broker, the echo server
//!   and the provider, one client certificate per sample participant, and `unefois-broker`,
//!   the client certificate the broker presents to the provider);
//! - `home/data/`: the broker's state (`unefois serve --home DIR/home`);
//! - `registry.toml`, `dev-idp/`: the registry and the keys it names.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::consents_client::ConsentsClient;

/// The client certificate the broker's `grpc` adapter presents to the provider.
pub const BROKER_CLIENT: &str = "unefois-broker";

/// The guichet (and consumer) every scenario acts as.
pub const GUICHET: &str = "mairie-lyon";

/// The purpose of the fetch-consent, fetch-law and pre-fill scenarios.
pub const PURPOSE: &str = "tarification_cantine";

/// The placeholder of the provider's address in the registry template.
const PROVIDER_PLACEHOLDER: &str = "PROVIDER_ADDR";

/// The PKI directory of a bench folder.
pub fn pki_dir(dir: &Path) -> PathBuf {
    dir.join("home").join("pki")
}

/// Writes the bench folder `dir` from the repository at `repo`: the PKI (kept if present), the
/// registry (from `template`, with the provider at `provider_addr`) and `dev-idp/`.
pub fn write_env(
    dir: &Path,
    repo: &Path,
    template: &Path,
    provider_addr: &str,
) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("cannot read {}", template.display()))?;
    ensure!(
        text.contains(PROVIDER_PLACEHOLDER),
        "{} does not mention {PROVIDER_PLACEHOLDER}",
        template.display()
    );
    let (trust_domain, mut participants) = registry_identities(&text)?;
    participants.push(BROKER_CLIENT.to_string());
    let ids: Vec<&str> = participants.iter().map(String::as_str).collect();
    std::fs::create_dir_all(dir.join("home").join("data"))?;
    unefois_certs::Pki::init(&pki_dir(dir), &trust_domain, &ids)
        .context("creating the bench PKI")?;

    let idp = dir.join("dev-idp");
    std::fs::create_dir_all(&idp)?;
    for entry in std::fs::read_dir(repo.join("examples").join("dev-idp"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), idp.join(entry.file_name()))?;
        }
    }
    let registry = dir.join("registry.toml");
    std::fs::write(&registry, text.replace(PROVIDER_PLACEHOLDER, provider_addr))?;
    Ok(registry)
}

/// The trust domain and the participant ids of a registry's text.
fn registry_identities(text: &str) -> anyhow::Result<(String, Vec<String>)> {
    let mut trust_domain = None;
    let mut participants = Vec::new();
    let mut in_participant = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_participant = line == "[[participants]]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match key.trim() {
            "trust_domain" => trust_domain = Some(value),
            "id" if in_participant => participants.push(value),
            _ => {}
        }
    }
    let Some(trust_domain) = trust_domain else {
        bail!("the registry declares no federation.trust_domain");
    };
    ensure!(
        !participants.is_empty(),
        "the registry declares no participant"
    );
    Ok((trust_domain, participants))
}

/// How to mint development ID tokens: the `unefois` binary and the dev identity provider's key.
#[derive(Clone, Debug)]
pub struct IdTokens {
    /// The `unefois` binary.
    pub broker_bin: PathBuf,
    /// examples/dev-idp/dev-signing-key.json.
    pub key: PathBuf,
}

impl IdTokens {
    /// A fresh ID token for `subject` at the guichet `audience` (`unefois dev id-token`).
    pub fn mint(&self, subject: &str, audience: &str) -> anyhow::Result<String> {
        let output = std::process::Command::new(&self.broker_bin)
            .args([
                "dev",
                "id-token",
                "--subject",
                subject,
                "--aud",
                audience,
                "--key",
            ])
            .arg(&self.key)
            .output()
            .with_context(|| format!("running {}", self.broker_bin.display()))?;
        ensure!(
            output.status.success(),
            "unefois dev id-token failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let token = String::from_utf8(output.stdout)?.trim().to_string();
        ensure!(!token.is_empty(), "unefois dev id-token printed nothing");
        Ok(token)
    }
}

/// The consents the scenarios need, as (attestation type, subjects).
pub const CONSENTS: [(&str, &[&str]); 2] = [
    (
        "caf.quotient_familial",
        &["test:alice", "test:bob", "test:carol", "test:david"],
    ),
    ("mesr.statut_etudiant", &["test:bob"]),
];

/// Grants the consents of [`CONSENTS`] to the guichet, for [`PURPOSE`], through `channel`
/// (connected as the guichet). Returns how many were granted.
pub async fn seed_consents(channel: Channel, tokens: &IdTokens) -> anyhow::Result<usize> {
    let mut client = ConsentsClient::new(channel);
    let mut granted = 0;
    for (attestation_type, subjects) in CONSENTS {
        for subject in subjects {
            let id_token = tokens.mint(subject, GUICHET)?;
            client
                .grant(pb::GrantConsentRequest {
                    subject: (*subject).into(),
                    consumer: GUICHET.into(),
                    attestation_types: vec![attestation_type.into()],
                    purpose: PURPOSE.into(),
                    valid_days: 30,
                    id_token,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("granting {attestation_type} for {subject}"))?;
            granted += 1;
        }
    }
    Ok(granted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bench_registry_names_its_participants() {
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("registry.toml");
        let text = std::fs::read_to_string(template).unwrap();
        let (td, ids) = registry_identities(&text).unwrap();
        assert_eq!(td, "unefois.test");
        assert!(ids.iter().any(|id| id == GUICHET));
        assert!(ids.iter().any(|id| id == "caf"));
        assert!(!ids.iter().any(|id| id.contains('.')));
    }
}

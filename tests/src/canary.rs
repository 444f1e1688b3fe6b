//! A person with distinctive ids and claim values, for the privacy canaries: after exchanges
//! about them, neither appears anywhere at rest (the embedded broker's data directory, the
//! PostgreSQL tables and files) nor in the logs.

use std::path::{Path, PathBuf};

use unefois_proto::v1 as pb;

use crate::repo_root;

/// The canary person's subject id.
pub const CANARY_SUBJECT: &str = "test:canari-4451";
/// Their revenu fiscal de référence (DGFiP).
pub const CANARY_RFR: i64 = 918_273_645;
/// Their quotient familial (CAF).
pub const CANARY_QF: i64 = 864_209_753;

/// What must never be found: the subject's distinctive part and both claim values.
pub fn needles() -> Vec<Vec<u8>> {
    vec![
        b"canari-4451".to_vec(),
        CANARY_RFR.to_string().into_bytes(),
        CANARY_QF.to_string().into_bytes(),
    ]
}

/// The sample registry and datasets in `dir`, with the canary person added to two of them;
/// the registry's path.
pub fn canary_registry(dir: &Path) -> anyhow::Result<PathBuf> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    for entry in std::fs::read_dir(repo_root().join("examples/data"))? {
        let entry = entry?;
        let mut dataset: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(entry.path())?)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("dgfip.") {
            dataset.insert(
                CANARY_SUBJECT.into(),
                serde_json::json!({ "revenu_fiscal_reference": CANARY_RFR, "nombre_parts": 2.5 }),
            );
        } else if name.starts_with("caf.") {
            dataset.insert(
                CANARY_SUBJECT.into(),
                serde_json::json!({ "quotient_familial": CANARY_QF, "mois_reference": "2026-10" }),
            );
        }
        std::fs::write(data.join(&name), serde_json::to_vec(&dataset)?)?;
    }
    crate::copy_dir(&repo_root().join("examples/dev-idp"), &dir.join("dev-idp"))?;
    crate::copy_example_provider_files(dir)?;
    let registry = dir.join("registry.toml");
    std::fs::copy(repo_root().join("examples/registry.toml"), &registry)?;
    Ok(registry)
}

/// Every path that sees the canary's subject or claims, as `mairie-lyon` on `channel`
/// ([`crate::clients::law_and_consent_round`]), the value fetched under the law checked to
/// have gone through the broker. Its request id holds the subject's distinctive part: kept
/// anywhere as the caller chose it (not blinded), it is found too.
pub async fn exchanges(channel: tonic::transport::Channel) -> anyhow::Result<()> {
    let rfr =
        crate::clients::law_and_consent_round(channel, CANARY_SUBJECT, "canari-4451-demande-1")
            .await?;
    let value = &rfr
        .attestation
        .ok_or_else(|| anyhow::anyhow!("no attestation"))?
        .claims["revenu_fiscal_reference"];
    anyhow::ensure!(
        value.value == Some(pb::claim_value::Value::IntegerValue(CANARY_RFR)),
        "the canary value did not go through the broker: {value:?}"
    );
    Ok(())
}

/// The files under `dir` (recursively, links followed) that hold one of `needles`, each named
/// with it. A running server's files come and go (WAL recycled, temporary files renamed): one
/// gone before it is read is passed over.
pub fn files_containing(dir: &Path, needles: &[&[u8]]) -> anyhow::Result<Vec<String>> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Err(e) if gone(&e) => return Ok(found),
        entries => entries?,
    };
    for entry in entries {
        let path = entry?.path();
        let kind = match std::fs::metadata(&path) {
            Err(e) if gone(&e) => continue,
            kind => kind?,
        };
        if kind.is_dir() {
            found.extend(files_containing(&path, needles)?);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Err(e) if gone(&e) => continue,
            bytes => bytes?,
        };
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == *needle) {
                found.push(format!(
                    "{} holds {:?}",
                    path.display(),
                    String::from_utf8_lossy(needle)
                ));
            }
        }
    }
    Ok(found)
}

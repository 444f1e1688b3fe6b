//! Receipts checked offline, with the published verifier keys only, never the broker.
//!
//! Three JSON files (docs/audit-log.md, "Receipts"), bytes in standard base64:
//!
//! - a **receipt file** (`unefois fetch --out`): the signed attestation (DSSE envelope) and its
//!   receipt (leaf index, exact entry, checkpoint, inclusion proof);
//! - an **access history file** (`unefois accesses --out`): a citizen's accesses as the guichet
//!   showed them, each with its exact entry and its inclusion proof in its page's checkpoint;
//! - a **later checkpoint** (`unefois audit checkpoint --out`): a signed checkpoint and the
//!   consistency proofs from the sizes of a file's checkpoints to it. A bare signed note (what
//!   `unefois audit verify` saves) is read as a later checkpoint without proofs.
//!
//! [`verify`] runs the checks in order and stops at the first that fails, returning the ones
//! passed so that a person sees how far the file holds.

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::checkpoint::{VerifiedCheckpoint, verify_checkpoint};
use crate::dsse::{Envelope, EnvelopeSignature, payload_sha256};
use crate::entry::ExchangeEntry;
use crate::tree::{verify_consistency, verify_inclusion};

/// `format` of a receipt file.
pub const RECEIPT_FORMAT: &str = "unefois-receipt/v1";
/// `format` of an access history file.
pub const ACCESSES_FORMAT: &str = "unefois-accesses/v1";
/// `format` of a later checkpoint file.
pub const CHECKPOINT_FORMAT: &str = "unefois-checkpoint/v1";

/// Bytes, written in JSON as standard base64 with padding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl AsRef<[u8]> for Base64 {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Base64, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Base64)
            .map_err(serde::de::Error::custom)
    }
}

/// A fetched attestation with its receipt, as `unefois fetch --out` writes it. The decoded
/// attestation is left out (the signed payload is the attestation), and so is the origin
/// subject key: this file may be shown to anyone, and that key would let them test guesses of
/// the subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFile {
    /// [`RECEIPT_FORMAT`].
    pub format: String,
    /// The signed attestation.
    pub envelope: SignedEnvelope,
    /// Its place in the audit log.
    pub receipt: Inclusion,
}

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEnvelope {
    /// The media type of the payload.
    pub payload_type: String,
    /// The attestation JSON, exactly as signed.
    pub payload: Base64,
    /// The signatures over PAE(payload_type, payload).
    pub signatures: Vec<EnvelopeSignatureFile>,
}

/// One DSSE signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignatureFile {
    /// The signing key's `<name>+<hash>`.
    pub keyid: String,
    /// The Ed25519 signature.
    pub sig: Base64,
}

/// An entry's place in the log: the receipt of an exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inclusion {
    /// The leaf index.
    pub leaf_index: u64,
    /// The exact entry bytes.
    pub entry: Base64,
    /// The signed note of a checkpoint whose tree holds the leaf.
    pub checkpoint: String,
    /// The RFC 9162 inclusion proof of the leaf in that tree.
    pub inclusion_proof: Vec<Base64>,
}

/// A citizen's access history, as `unefois accesses --out` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessesFile {
    /// [`ACCESSES_FORMAT`].
    pub format: String,
    /// The pages as the broker answered them, newest accesses first.
    pub pages: Vec<AccessPage>,
    /// The largest page's checkpoint with the consistency proofs from the others' (each page's
    /// read is recorded before it is read, so their checkpoints differ): what shows the pages
    /// are of one log, without a second step. A later checkpoint given to [`verify`] is used
    /// instead; absent from files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_log: Option<LaterCheckpoint>,
}

/// One page of the history: its checkpoint and its accesses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPage {
    /// The signed note every inclusion proof of the page is relative to.
    pub checkpoint: String,
    /// The accesses.
    pub accesses: Vec<AccessItem>,
}

/// One access as the citizen was shown it, with the entry it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessItem {
    /// When it happened, RFC 3339 UTC.
    pub time: String,
    /// The consumer.
    pub consumer: String,
    /// The attestation type read.
    pub attestation_type: String,
    /// The purpose code.
    pub purpose: String,
    /// `granted`, `denied`, `failed`, `previewed`, `rejected`.
    pub outcome: String,
    /// The leaf index.
    pub leaf_index: u64,
    /// The exact entry bytes.
    pub entry: Base64,
    /// Its inclusion proof in the page's checkpoint.
    pub inclusion_proof: Vec<Base64>,
}

/// A later checkpoint and the consistency proofs that tie earlier checkpoints to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaterCheckpoint {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// The signed note.
    pub checkpoint: String,
    /// Proofs from earlier sizes to this checkpoint's.
    #[serde(default)]
    pub consistency: Vec<ConsistencyProof>,
}

/// An RFC 9162 consistency proof from the tree of `first_size` leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The earlier tree's size.
    pub first_size: u64,
    /// The proof's hashes.
    pub proof: Vec<Base64>,
}

/// A file `unefois verify` checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifiableFile {
    /// A fetched attestation and its receipt.
    Receipt(ReceiptFile),
    /// A citizen's access history.
    Accesses(AccessesFile),
}

/// One check of the verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The attestation's DSSE signature against the attestation key.
    AttestationSignature,
    /// The checkpoint's signature against the log key.
    CheckpointSignature,
    /// The entry's inclusion proof against the checkpoint's root.
    InclusionProof,
    /// The entry's payload hash and attestation id against the signed payload.
    PayloadHash,
    /// The access shown against the entry it comes from.
    AccessEntry,
    /// The later checkpoint's signature.
    LaterCheckpointSignature,
    /// The consistency of an earlier checkpoint with the later one.
    Consistency,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::AttestationSignature => "attestation signature",
            Check::CheckpointSignature => "checkpoint signature",
            Check::InclusionProof => "inclusion proof",
            Check::PayloadHash => "payload hash",
            Check::AccessEntry => "access entry",
            Check::LaterCheckpointSignature => "later checkpoint signature",
            Check::Consistency => "consistency",
        })
    }
}

/// A check that passed, and what it established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passed {
    /// The access it is about (`leaf 41`), for an access history.
    pub item: Option<String>,
    /// The check.
    pub check: Check,
    /// What it established (`valid (leaf 41 of 57)`).
    pub detail: String,
}

impl fmt::Display for Passed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}: {}", prefix(&self.item), self.check, self.detail)
    }
}

/// Why a file could not be checked, or which check failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    /// A check failed; the ones before it passed.
    #[error("{}{check}: FAILED: {reason}", prefix(.item))]
    Failed {
        /// The access it is about, for an access history.
        item: Option<String>,
        /// The check that failed.
        check: Check,
        /// Why.
        reason: String,
    },
    /// The file is not one of ours.
    #[error("not a receipt, access history or checkpoint file: {0}")]
    Malformed(String),
    /// The broker's answer lacks a part the file needs.
    #[error("the broker answered without {0}")]
    Incomplete(&'static str),
    /// A check the file needs could not be made with what was given: nothing failed, but the
    /// file is not verified (an access history whose pages have checkpoints of different sizes,
    /// and no later checkpoint to prove them one log).
    #[error("{check}: NOT CHECKED: {reason}")]
    NotChecked {
        /// The check not made.
        check: Check,
        /// Why, and what to give for it to be made.
        reason: String,
    },
}

/// `leaf 41: ` before a check about one access.
fn prefix(item: &Option<String>) -> String {
    item.as_ref().map(|i| format!("{i}: ")).unwrap_or_default()
}

/// The verifier keys, distributed out of band (C2SP vkeys).
#[derive(Clone, Debug, Default)]
pub struct VerifierKeys {
    /// `attestation.vkey`: needed for a receipt file only.
    pub attestation: Option<String>,
    /// `log.vkey`.
    pub log: String,
}

/// The outcome of [`verify`]: the checks passed, in order, and the first failure if any.
#[derive(Debug)]
pub struct Verification {
    /// The checks that passed.
    pub passed: Vec<Passed>,
    /// The check that failed, which ended the verification.
    pub failure: Option<ReceiptError>,
}

impl SignedEnvelope {
    /// The envelope in the signing module's terms, to verify it.
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            payload: self.payload.0.clone(),
            payload_type: self.payload_type.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|s| EnvelopeSignature {
                    keyid: s.keyid.clone(),
                    sig: s.sig.0.clone(),
                })
                .collect(),
        }
    }
}

impl AccessesFile {
    /// An access history of these pages.
    pub fn new(pages: Vec<AccessPage>) -> AccessesFile {
        AccessesFile {
            format: ACCESSES_FORMAT.to_string(),
            pages,
            one_log: None,
        }
    }

    /// The sizes of its pages' checkpoints below the largest, and the largest's note: the
    /// consistency proofs that make it one log go from each of those sizes to the largest.
    pub fn to_prove_one_log(&self) -> Option<(Vec<u64>, String)> {
        let sized: Vec<(u64, &str)> = self
            .pages
            .iter()
            .filter_map(|p| Some((checkpoint_size(&p.checkpoint)?, p.checkpoint.as_str())))
            .collect();
        let (largest, note) = sized.iter().max_by_key(|(size, _)| *size)?;
        let mut smaller: Vec<u64> = sized
            .iter()
            .map(|(size, _)| *size)
            .filter(|size| size < largest && *size > 0)
            .collect();
        smaller.sort_unstable();
        smaller.dedup();
        (!smaller.is_empty()).then(|| (smaller, note.to_string()))
    }
}

impl VerifiableFile {
    /// Reads a receipt or access history file, told apart by its `format`.
    pub fn parse(bytes: &[u8]) -> Result<VerifiableFile, ReceiptError> {
        let malformed = |e: serde_json::Error| ReceiptError::Malformed(e.to_string());
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(RECEIPT_FORMAT) => Ok(VerifiableFile::Receipt(
                serde_json::from_value(value).map_err(malformed)?,
            )),
            Some(ACCESSES_FORMAT) => Ok(VerifiableFile::Accesses(
                serde_json::from_value(value).map_err(malformed)?,
            )),
            other => Err(ReceiptError::Malformed(format!(
                "format {other:?}, expected {RECEIPT_FORMAT:?} or {ACCESSES_FORMAT:?}"
            ))),
        }
    }

    /// Whether checking it needs the attestation key.
    pub fn needs_attestation_key(&self) -> bool {
        matches!(self, VerifiableFile::Receipt(_))
    }

    /// The tree sizes of its checkpoints, each once, as written (unverified): the sizes to ask
    /// consistency proofs from.
    pub fn checkpoint_sizes(&self) -> Result<Vec<u64>, ReceiptError> {
        let notes: Vec<&str> = match self {
            VerifiableFile::Receipt(r) => vec![&r.receipt.checkpoint],
            VerifiableFile::Accesses(a) => a.pages.iter().map(|p| p.checkpoint.as_str()).collect(),
        };
        let mut sizes = notes
            .into_iter()
            .map(|n| {
                checkpoint_size(n)
                    .ok_or_else(|| ReceiptError::Malformed("a checkpoint has no size".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        sizes.sort_unstable();
        sizes.dedup();
        Ok(sizes)
    }
}

impl LaterCheckpoint {
    /// A later checkpoint file, or a bare signed note (no consistency proof).
    pub fn parse(text: &str) -> Result<LaterCheckpoint, ReceiptError> {
        if !text.trim_start().starts_with('{') {
            return Ok(LaterCheckpoint {
                format: CHECKPOINT_FORMAT.to_string(),
                checkpoint: text.to_string(),
                consistency: Vec::new(),
            });
        }
        let file: LaterCheckpoint =
            serde_json::from_str(text).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if file.format != CHECKPOINT_FORMAT {
            return Err(ReceiptError::Malformed(format!(
                "format {:?}, expected {CHECKPOINT_FORMAT:?}",
                file.format
            )));
        }
        Ok(file)
    }
}

/// The tree size a signed note's body states (its second line), without checking anything.
pub fn checkpoint_size(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

/// The root hash a signed note's body states (its third line, base64), without checking
/// anything.
pub fn checkpoint_root(note: &str) -> Option<[u8; 32]> {
    let line = note.lines().nth(2)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()?;
    bytes.try_into().ok()
}

/// Runs every check of `file`, in order, until one fails: for a receipt, the attestation
/// signature, the checkpoint signature, the inclusion proof and the payload hash; for an access
/// history, each page's checkpoint signature, then each access's inclusion proof and entry; then,
/// given a later checkpoint (or, for a history, the one it carries: `one_log`), its signature
/// and each checkpoint's consistency with it. Without one, a history whose pages have
/// checkpoints of different sizes ends
/// [`ReceiptError::NotChecked`]: nothing shows that its pages are of one log.
pub fn verify(
    file: &VerifiableFile,
    keys: &VerifierKeys,
    later: Option<&LaterCheckpoint>,
) -> Verification {
    let mut checks = Checks::default();
    let failure = match file {
        VerifiableFile::Receipt(r) => checks.receipt(r, keys, later),
        VerifiableFile::Accesses(a) => match (later, &a.one_log) {
            (None, Some(carried)) if carried.format != CHECKPOINT_FORMAT => Err(
                ReceiptError::Malformed(format!("one_log: format {:?}", carried.format)),
            ),
            _ => checks.accesses(a, keys, later.or(a.one_log.as_ref())),
        },
    }
    .err();
    Verification {
        passed: checks.passed,
        failure,
    }
}

/// The checks passed so far.
#[derive(Default)]
struct Checks {
    passed: Vec<Passed>,
}

fn failed(item: Option<&str>, check: Check, reason: impl fmt::Display) -> ReceiptError {
    ReceiptError::Failed {
        item: item.map(str::to_string),
        check,
        reason: reason.to_string(),
    }
}

impl Checks {
    fn pass(&mut self, item: Option<&str>, check: Check, detail: String) {
        self.passed.push(Passed {
            item: item.map(str::to_string),
            check,
            detail,
        });
    }

    fn receipt(
        &mut self,
        file: &ReceiptFile,
        keys: &VerifierKeys,
        later: Option<&LaterCheckpoint>,
    ) -> Result<(), ReceiptError> {
        let check = Check::AttestationSignature;
        if file.format != RECEIPT_FORMAT {
            return Err(ReceiptError::Malformed(format!("format {:?}", file.format)));
        }
        let vkey = keys
            .attestation
            .as_deref()
            .ok_or_else(|| failed(None, check, "no attestation verifier key given"))?;
        crate::dsse::verify(vkey, &file.envelope.to_envelope())
            .map_err(|e| failed(None, check, e))?;
        let keyid = crate::dsse::keyid_of(vkey).unwrap_or_default();
        self.pass(None, check, format!("valid ({keyid})"));

        let checkpoint = self.checkpoint(None, &keys.log, &file.receipt.checkpoint)?;
        let r = &file.receipt;
        self.inclusion(
            None,
            &checkpoint,
            r.leaf_index,
            &r.entry,
            &r.inclusion_proof,
        )?;

        let check = Check::PayloadHash;
        let exchange = ExchangeEntry::read(&r.entry.0).map_err(|e| failed(None, check, e))?;
        let payload = &file.envelope.payload.0;
        let recorded = exchange.payload_sha256.as_deref().unwrap_or_default();
        if recorded != payload_sha256(payload) {
            return Err(failed(
                None,
                check,
                format!(
                    "the entry records {recorded:?}, the payload hashes to {}",
                    payload_sha256(payload)
                ),
            ));
        }
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|p| p.get("id")?.as_str().map(str::to_string))
            .unwrap_or_default();
        if exchange.attestation_id.as_deref() != Some(id.as_str()) {
            return Err(failed(
                None,
                check,
                format!(
                    "the entry is about attestation {:?}, the payload is attestation {id:?}",
                    exchange.attestation_id.as_deref().unwrap_or_default()
                ),
            ));
        }
        self.pass(None, check, format!("matches (attestation {id})"));

        if let Some(later) = later {
            self.consistency(&keys.log, later, &[checkpoint])?;
        }
        Ok(())
    }

    fn accesses(
        &mut self,
        file: &AccessesFile,
        keys: &VerifierKeys,
        later: Option<&LaterCheckpoint>,
    ) -> Result<(), ReceiptError> {
        if file.format != ACCESSES_FORMAT {
            return Err(ReceiptError::Malformed(format!("format {:?}", file.format)));
        }
        let mut checkpoints = Vec::new();
        for page in &file.pages {
            let checkpoint = self.checkpoint(None, &keys.log, &page.checkpoint)?;
            for access in &page.accesses {
                let item = format!("leaf {}", access.leaf_index);
                let item = Some(item.as_str());
                self.inclusion(
                    item,
                    &checkpoint,
                    access.leaf_index,
                    &access.entry,
                    &access.inclusion_proof,
                )?;
                let check = Check::AccessEntry;
                let shown = shown_access(access).map_err(|e| failed(item, check, e))?;
                let recorded =
                    recorded_access(&access.entry.0).map_err(|e| failed(item, check, e))?;
                if shown != recorded {
                    return Err(failed(
                        item,
                        check,
                        format!("shown as {shown}, the entry records {recorded}"),
                    ));
                }
                self.pass(item, check, format!("matches the access shown ({shown})"));
            }
            checkpoints.push(checkpoint);
        }
        // Every read of a history appends its own record first: two pages of one honest log
        // never share a size, and two signed trees of one size with other roots are a fork.
        if let Some(size) = fork_among(&checkpoints) {
            return Err(failed(
                None,
                Check::Consistency,
                format!(
                    "two pages' checkpoints of {size} entries have different roots: the log \
                     was rewritten"
                ),
            ));
        }
        match later {
            Some(later) => self.consistency(&keys.log, later, &checkpoints)?,
            None => unproven_pages(&checkpoints)?,
        }
        Ok(())
    }

    fn checkpoint(
        &mut self,
        item: Option<&str>,
        log_vkey: &str,
        note: &str,
    ) -> Result<VerifiedCheckpoint, ReceiptError> {
        let check = Check::CheckpointSignature;
        let checkpoint = verify_checkpoint(log_vkey, note).map_err(|e| failed(item, check, e))?;
        self.pass(
            item,
            check,
            format!("valid ({}, size {})", checkpoint.origin, checkpoint.size),
        );
        Ok(checkpoint)
    }

    fn inclusion(
        &mut self,
        item: Option<&str>,
        checkpoint: &VerifiedCheckpoint,
        leaf: u64,
        entry: &Base64,
        proof: &[Base64],
    ) -> Result<(), ReceiptError> {
        let check = Check::InclusionProof;
        if leaf >= checkpoint.size {
            return Err(failed(
                item,
                check,
                format!(
                    "leaf {leaf} is not in a tree of {} entries",
                    checkpoint.size
                ),
            ));
        }
        let proof = crate::tree::hashes(proof)
            .ok_or_else(|| failed(item, check, "a hash is not 32 bytes"))?;
        verify_inclusion(&proof, checkpoint.size, checkpoint.root, leaf, &entry.0)
            .map_err(|e| failed(item, check, e))?;
        self.pass(
            item,
            check,
            format!("valid (leaf {leaf} of {})", checkpoint.size),
        );
        Ok(())
    }

    fn consistency(
        &mut self,
        log_vkey: &str,
        later: &LaterCheckpoint,
        earlier: &[VerifiedCheckpoint],
    ) -> Result<(), ReceiptError> {
        let check = Check::LaterCheckpointSignature;
        let newer =
            verify_checkpoint(log_vkey, &later.checkpoint).map_err(|e| failed(None, check, e))?;
        self.pass(
            None,
            check,
            format!("valid ({}, size {})", newer.origin, newer.size),
        );
        let check = Check::Consistency;
        let mut seen = Vec::new();
        for old in earlier {
            // One proof per size: a second checkpoint of that size is the same tree (the
            // callers refused two roots of one size, `fork_among`).
            if seen.contains(&old.size) {
                continue;
            }
            seen.push(old.size);
            if old.size > newer.size {
                return Err(failed(
                    None,
                    check,
                    format!(
                        "the later checkpoint ({} entries) is older than the file's ({} entries)",
                        newer.size, old.size
                    ),
                ));
            }
            let proof = if old.size == newer.size {
                Vec::new()
            } else {
                let given = later
                    .consistency
                    .iter()
                    .find(|p| p.first_size == old.size)
                    .ok_or_else(|| {
                        failed(
                            None,
                            check,
                            format!(
                                "no proof from {} to {} entries in the later checkpoint file \
                                 (`unefois audit checkpoint --for FILE --out LATER` fetches it)",
                                old.size, newer.size
                            ),
                        )
                    })?;
                crate::tree::hashes(&given.proof)
                    .ok_or_else(|| failed(None, check, "a hash is not 32 bytes"))?
            };
            verify_consistency(&proof, old.size, old.root, newer.size, newer.root).map_err(
                |_| {
                    failed(
                        None,
                        check,
                        format!(
                            "the log of {} entries does not extend the checkpoint of {} (a fork)",
                            newer.size, old.size
                        ),
                    )
                },
            )?;
            self.pass(
                None,
                check,
                format!(
                    "valid (the checkpoint of {} entries is a prefix of the log of {})",
                    old.size, newer.size
                ),
            );
        }
        Ok(())
    }
}

/// What a person reads of an access: time, consumer, type, purpose, outcome.
#[derive(PartialEq, Eq)]
struct AccessView {
    time: time::OffsetDateTime,
    consumer: String,
    attestation_type: String,
    purpose: String,
    outcome: String,
}

impl fmt::Display for AccessView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = crate::entry::time_to_the_second(self.time);
        write!(
            f,
            "{time} {} {} {} {}",
            self.consumer, self.attestation_type, self.purpose, self.outcome
        )
    }
}

fn shown_access(a: &AccessItem) -> Result<AccessView, String> {
    let time = time::OffsetDateTime::parse(&a.time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("time {:?}: {e}", a.time))?;
    Ok(AccessView {
        time,
        consumer: a.consumer.clone(),
        attestation_type: a.attestation_type.clone(),
        purpose: a.purpose.clone(),
        outcome: a.outcome.clone(),
    })
}

fn recorded_access(entry: &[u8]) -> Result<AccessView, String> {
    let x = ExchangeEntry::read(entry)?;
    Ok(AccessView {
        time: x.time,
        consumer: x.participant,
        attestation_type: x.attestation_type,
        purpose: x.purpose,
        outcome: x.outcome,
    })
}

/// Pages whose checkpoints are of different sizes are each checked against their own tree;
/// that the trees are one log, the smaller a prefix of the larger, only consistency proofs to a
/// later checkpoint show (`--checkpoint`). Without them, two trees that differ anywhere (two
/// logs, or a rewritten one) would pass page by page: the file is then not verified, and says
/// what would verify it.
fn unproven_pages(checkpoints: &[VerifiedCheckpoint]) -> Result<(), ReceiptError> {
    let mut sizes: Vec<u64> = checkpoints.iter().map(|c| c.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() < 2 {
        return Ok(());
    }
    let sizes: Vec<String> = sizes.iter().map(u64::to_string).collect();
    Err(ReceiptError::NotChecked {
        check: Check::Consistency,
        reason: format!(
            "the pages' checkpoints ({} entries) are not proven to be of one log: give a later \
             checkpoint with its consistency proofs (`unefois audit checkpoint --for FILE --out \
             LATER`, then `unefois verify FILE --checkpoint LATER`)",
            sizes.join(", ")
        ),
    })
}

/// A size at which two of `checkpoints` have different roots, if any.
fn fork_among(checkpoints: &[VerifiedCheckpoint]) -> Option<u64> {
    checkpoints.iter().enumerate().find_map(|(i, a)| {
        checkpoints[i + 1..]
            .iter()
            .any(|b| b.size == a.size && b.root != a.root)
            .then_some(a.size)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tree::MemoryTree;

    /// The log key of the tests: the broker's checkpoint format, signed with ed25519-dalek.
    struct LogKey {
        key: ed25519_dalek::SigningKey,
        names: crate::checkpoint::LogKeyNames,
    }

    impl LogKey {
        fn new() -> LogKey {
            let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            let names = crate::checkpoint::log_key_names("unefois.test", &key.verifying_key());
            LogKey { key, names }
        }

        fn checkpoint(&self, tree: &MemoryTree, size: u64) -> String {
            let root = tlog_tiles::Hash(tree.root(size));
            let body = format!("{}\n{size}\n{root}\n", self.names.origin);
            let mut note = signed_note::Note::new(body.as_bytes(), &[]).unwrap();
            note.add_sigs(&[self]).unwrap();
            String::from_utf8(note.to_bytes()).unwrap()
        }
    }

    impl signed_note::Signer for LogKey {
        fn name(&self) -> &str {
            &self.names.origin
        }

        fn key_id(&self) -> u32 {
            self.names.key_id
        }

        fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
            Ok(ed25519_dalek::Signer::sign(&self.key, msg).to_vec())
        }
    }

    fn exchange(n: u64, consumer: &str) -> Vec<u8> {
        format!(
            r#"{{"v":2,"time":"2026-12-02T10:29:{:02}Z","kind":"exchange","outcome":"granted","participant":"{consumer}","attestation_type":"caf.quotient_familial","purpose":"tarification_cantine","registry_sha256":"00","n":{n}}}"#,
            n % 60
        )
        .into_bytes()
    }

    /// A tree of `size` exchanges, whose leaf 0 names `first_consumer`.
    fn tree(size: u64, first_consumer: &str) -> (MemoryTree, Vec<Vec<u8>>) {
        let mut tree = MemoryTree::default();
        let mut entries = Vec::new();
        for n in 0..size {
            let entry = exchange(
                n,
                if n == 0 {
                    first_consumer
                } else {
                    "mairie-lyon"
                },
            );
            tree.push(&entry);
            entries.push(entry);
        }
        (tree, entries)
    }

    /// A page of one access, leaf `leaf`, in the checkpoint of `size` entries of `tree`.
    fn page(
        key: &LogKey,
        tree: &MemoryTree,
        entries: &[Vec<u8>],
        size: u64,
        leaf: u64,
    ) -> AccessPage {
        let entry = &entries[leaf as usize];
        let read = ExchangeEntry::read(entry).unwrap();
        AccessPage {
            checkpoint: key.checkpoint(tree, size),
            accesses: vec![AccessItem {
                time: crate::entry::time_to_the_second(read.time),
                consumer: read.participant,
                attestation_type: read.attestation_type,
                purpose: read.purpose,
                outcome: read.outcome,
                leaf_index: leaf,
                entry: Base64(entry.clone()),
                inclusion_proof: tlog_tiles::prove_record(size, leaf, tree)
                    .unwrap()
                    .into_iter()
                    .map(|h| Base64(h.0.to_vec()))
                    .collect(),
            }],
        }
    }

    /// Two pages from two trees that differ at leaf 0 (120 entries of one, 121 of the other)
    /// each verify against their own checkpoint; that they are one log is not shown without a
    /// later checkpoint, so the file is not verified; with one, the fork is found.
    #[test]
    fn pages_of_two_trees_are_not_verified_as_one_log() {
        let key = LogKey::new();
        let keys = VerifierKeys {
            attestation: None,
            log: key.names.vkey.clone(),
        };
        let (a, a_entries) = tree(120, "mairie-lyon");
        let (b, b_entries) = tree(121, "caf");
        assert_ne!(a.root(1), b.root(1));
        let file = VerifiableFile::Accesses(AccessesFile::new(vec![
            page(&key, &a, &a_entries, 120, 0),
            page(&key, &b, &b_entries, 121, 0),
        ]));
        let verification = verify(&file, &keys, None);
        let passed: Vec<String> = verification.passed.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            passed
                .iter()
                .filter(|p| p.contains("access entry: matches"))
                .count(),
            2,
            "each page holds on its own: {passed:?}"
        );
        let failure = verification.failure.expect("verified as one log");
        assert!(
            matches!(
                failure,
                ReceiptError::NotChecked {
                    check: Check::Consistency,
                    ..
                }
            ),
            "{failure}"
        );
        let said = failure.to_string();
        assert!(said.starts_with("consistency: NOT CHECKED: "), "{said}");
        assert!(
            said.contains("120, 121") && said.contains("--checkpoint"),
            "{said}"
        );

        // With a later checkpoint of tree B and its proofs, page A is a fork.
        let later = LaterCheckpoint {
            format: CHECKPOINT_FORMAT.into(),
            checkpoint: key.checkpoint(&b, 121),
            consistency: vec![ConsistencyProof {
                first_size: 120,
                proof: tlog_tiles::prove_tree(121, 120, &b)
                    .unwrap()
                    .into_iter()
                    .map(|h| Base64(h.0.to_vec()))
                    .collect(),
            }],
        };
        let failure = verify(&file, &keys, Some(&later)).failure.unwrap();
        assert!(failure.to_string().contains("(a fork)"), "{failure}");

        // Pages of one tree, with the later checkpoint, verify; one page needs none.
        let one_log = VerifiableFile::Accesses(AccessesFile::new(vec![
            page(&key, &b, &b_entries, 120, 3),
            page(&key, &b, &b_entries, 121, 0),
        ]));
        let verification = verify(&one_log, &keys, Some(&later));
        assert!(verification.failure.is_none(), "{:?}", verification.failure);
        assert!(matches!(
            verify(&one_log, &keys, None).failure,
            Some(ReceiptError::NotChecked { .. })
        ));
        let single =
            VerifiableFile::Accesses(AccessesFile::new(vec![page(&key, &b, &b_entries, 121, 0)]));
        assert!(verify(&single, &keys, None).failure.is_none());

        // The proofs carried in the file itself (`unefois accesses --out`): the pages of one
        // log verify alone; a file of two trees carrying proofs is a fork.
        let mut carried = AccessesFile::new(vec![
            page(&key, &b, &b_entries, 120, 3),
            page(&key, &b, &b_entries, 121, 0),
        ]);
        assert_eq!(
            carried.to_prove_one_log(),
            Some((vec![120], key.checkpoint(&b, 121)))
        );
        carried.one_log = Some(later.clone());
        let verification = verify(&VerifiableFile::Accesses(carried.clone()), &keys, None);
        assert!(verification.failure.is_none(), "{:?}", verification.failure);
        // Carried proofs of another format are not read as a later checkpoint.
        if let Some(one_log) = carried.one_log.as_mut() {
            one_log.format = "unefois-checkpoint/v9".into();
        }
        assert!(matches!(
            verify(&VerifiableFile::Accesses(carried), &keys, None).failure,
            Some(ReceiptError::Malformed(_))
        ));
        let VerifiableFile::Accesses(mut forked) = file else {
            unreachable!()
        };
        forked.one_log = Some(later);
        let failure = verify(&VerifiableFile::Accesses(forked), &keys, None)
            .failure
            .unwrap();
        assert!(failure.to_string().contains("(a fork)"), "{failure}");
    }

    fn at(size: u64, root: u8) -> VerifiedCheckpoint {
        VerifiedCheckpoint {
            origin: "unefois.test/unefois/audit".into(),
            size,
            root: [root; 32],
        }
    }

    #[test]
    fn two_roots_of_one_size_are_a_fork() {
        for (pages, fork) in [
            (vec![at(3, 1), at(4, 2)], None),
            (vec![at(3, 1), at(3, 1)], None),
            (vec![at(3, 1), at(5, 2), at(3, 9)], Some(3)),
            (vec![], None),
        ] {
            assert_eq!(
                fork_among(&pages),
                fork,
                "{:?}",
                pages.iter().map(|c| c.size).collect::<Vec<_>>()
            );
        }
    }
}

//! The `Store` boundary: the journal (source of truth, synced before any answer) and the derived
//! state in sled (consents by id and by subject, idempotency keys, the exchange index), which
//! can always be rebuilt from the journal. Knows nothing of gRPC.
//!
//! Derived state is applied by the journal's commit hook, after the sync and before the appends
//! are answered: when a request learns that its record is durable, the derived state already
//! shows it (a revocation applies to the very next request). At start, what sled has not yet
//! applied is replayed from the journal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::consent::Consent;
use crate::event::{Event, Record};
use crate::journal::{CommittedBatch, Journal, JournalError, JournalOptions};

/// sled's cache, bounded (its default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Why the store cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The journal failed: nothing was recorded.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The derived state failed.
    #[error("derived state: {0}")]
    Sled(#[from] sled::Error),
    /// A journal record cannot be decoded.
    #[error("journal record {seq}: {source}")]
    Record {
        /// Its sequence number.
        seq: u64,
        /// Why.
        source: serde_json::Error,
    },
    /// The derived state fell behind the journal; it is rebuilt at the next start.
    #[error("derived state is behind the journal; restart the broker to rebuild it")]
    Degraded,
}

/// What an idempotency key was used for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestUse {
    /// A digest of the request's fields, to tell a retry from a different request.
    pub fingerprint: String,
    /// The id of what it created (a consent id).
    pub result: String,
}

struct Trees {
    meta: sled::Tree,
    consents: sled::Tree,
    consents_by_subject: sled::Tree,
    requests: sled::Tree,
    exchanges_by_subject: sled::Tree,
}

const APPLIED: &[u8] = b"applied_seq";

impl Trees {
    fn open(db: &sled::Db) -> Result<Trees, sled::Error> {
        Ok(Trees {
            meta: db.open_tree("meta")?,
            consents: db.open_tree("consents")?,
            consents_by_subject: db.open_tree("consents_by_subject")?,
            requests: db.open_tree("requests")?,
            exchanges_by_subject: db.open_tree("exchanges_by_subject")?,
        })
    }

    fn clear(&self) -> Result<(), sled::Error> {
        for tree in [
            &self.meta,
            &self.consents,
            &self.consents_by_subject,
            &self.requests,
            &self.exchanges_by_subject,
        ] {
            tree.clear()?;
        }
        Ok(())
    }

    /// The next journal sequence number not yet applied.
    fn applied(&self) -> Result<u64, sled::Error> {
        Ok(self
            .meta
            .get(APPLIED)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn apply(&self, seq: u64, payload: &[u8]) -> Result<(), StoreError> {
        let record =
            Record::decode(payload).map_err(|source| StoreError::Record { seq, source })?;
        match record.event {
            Event::ConsentGranted {
                consent_id,
                subject,
                pseudonym_key,
                consumer,
                participant,
                agent,
                attestation_types,
                purpose,
                expires_at,
                request_id,
                request_fingerprint,
            } => {
                let consent = Consent {
                    id: consent_id.clone(),
                    subject: subject.clone(),
                    pseudonym_key,
                    consumer,
                    participant: participant.clone(),
                    agent,
                    attestation_types,
                    purpose,
                    granted_at: record.time,
                    expires_at,
                    revoked_at: None,
                    seq,
                };
                self.consents
                    .insert(consent_id.as_bytes(), json(&consent))?;
                self.consents_by_subject
                    .insert(subject_key(&subject, consent_id.as_bytes()), &[])?;
                if let (Some(request_id), Some(fingerprint)) = (request_id, request_fingerprint) {
                    let used = RequestUse {
                        fingerprint,
                        result: consent_id,
                    };
                    self.requests
                        .insert(request_key(&participant, &request_id), json(&used))?;
                }
            }
            Event::ConsentRevoked { consent_id, .. } => {
                if let Some(bytes) = self.consents.get(consent_id.as_bytes())?
                    && let Ok(mut consent) = serde_json::from_slice::<Consent>(&bytes)
                    && consent.revoked_at.is_none()
                {
                    consent.revoked_at = Some(record.time);
                    self.consents
                        .insert(consent_id.as_bytes(), json(&consent))?;
                }
            }
            Event::Exchange(exchange) => {
                if let Some(subject) = &exchange.subject {
                    self.exchanges_by_subject
                        .insert(subject_key(subject, &seq.to_be_bytes()), &[])?;
                }
            }
            Event::RegistryLoaded { .. } => {}
        }
        self.meta.insert(APPLIED, &(seq + 1).to_be_bytes())?;
        Ok(())
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn subject_key(subject: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(subject.len() + 1 + suffix.len());
    key.extend_from_slice(subject.as_bytes());
    key.push(b'/');
    key.extend_from_slice(suffix);
    key
}

fn request_key(participant: &str, request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(participant.len() + 1 + request_id.len());
    key.extend_from_slice(participant.as_bytes());
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// The journal and the derived state behind one boundary.
#[derive(Clone)]
pub struct Store {
    journal: Journal,
    trees: Arc<Trees>,
    db: sled::Db,
    degraded: Arc<AtomicBool>,
}

impl Store {
    /// Opens the journal in `data_dir/journal` and the derived state in `data_dir/state`,
    /// replaying what the derived state has not applied yet.
    pub fn open(data_dir: &Path, options: JournalOptions) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(data_dir.join("state"))
            .cache_capacity(DEFAULT_CACHE_BYTES)
            .open()?;
        let trees = Arc::new(Trees::open(&db)?);
        let degraded = Arc::new(AtomicBool::new(false));
        let hook = {
            let trees = trees.clone();
            let degraded = degraded.clone();
            let mut user_hook = options.hook;
            Box::new(move |batch: &CommittedBatch<'_>| {
                if !degraded.load(Ordering::Acquire) {
                    for (seq, payload) in batch.records {
                        if let Err(e) = trees.apply(*seq, payload) {
                            tracing::error!(seq, error = %e, "derived state update failed; refusing requests until restart");
                            degraded.store(true, Ordering::Release);
                            break;
                        }
                    }
                }
                if let Some(h) = user_hook.as_mut() {
                    h(batch);
                }
            }) as crate::journal::CommitHook
        };
        let journal = Journal::open(
            &data_dir.join("journal"),
            JournalOptions {
                hook: Some(hook),
                ..options
            },
        )?;
        let mut from = trees.applied()?;
        if from > journal.next_seq() {
            // sled claims more than the journal holds: the journal is the truth.
            tracing::warn!(
                sled = from,
                journal = journal.next_seq(),
                "derived state ahead of the journal; rebuilding it"
            );
            trees.clear()?;
            from = 0;
        }
        let mut replayed = 0u64;
        for record in journal.read_from(from)? {
            let record = record?;
            trees.apply(record.seq, &record.payload)?;
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(replayed, "derived state caught up with the journal");
        }
        db.flush()?;
        Ok(Store {
            journal,
            trees,
            db,
            degraded,
        })
    }

    /// Appends records; returns their sequence numbers once they are durable and applied.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, StoreError> {
        self.check()?;
        let seqs = self
            .journal
            .append_batch(records.iter().map(Record::encode).collect())
            .await?;
        self.check()?;
        Ok(seqs)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.degraded.load(Ordering::Acquire) {
            Err(StoreError::Degraded)
        } else {
            Ok(())
        }
    }

    /// A consent by id.
    pub fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
        self.check()?;
        Ok(self
            .trees
            .consents
            .get(id.as_bytes())?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Every consent of a subject (by audit pseudonym), oldest first.
    pub fn consents_of(&self, subject: &str) -> Result<Vec<Consent>, StoreError> {
        self.check()?;
        let mut out = Vec::new();
        for entry in self
            .trees
            .consents_by_subject
            .scan_prefix(subject_key(subject, b""))
        {
            let (key, _) = entry?;
            let id = &key[subject.len() + 1..];
            if let Some(bytes) = self.trees.consents.get(id)?
                && let Ok(consent) = serde_json::from_slice(&bytes)
            {
                out.push(consent);
            }
        }
        Ok(out)
    }

    /// What `participant` used `request_id` for, if it did.
    pub fn request_use(
        &self,
        participant: &str,
        request_id: &str,
    ) -> Result<Option<RequestUse>, StoreError> {
        self.check()?;
        Ok(self
            .trees
            .requests
            .get(request_key(participant, request_id))?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Journal sequence numbers of the exchanges about a subject (by audit pseudonym).
    pub fn exchanges_of(&self, subject: &str) -> Result<Vec<u64>, StoreError> {
        self.check()?;
        let mut out = Vec::new();
        for entry in self
            .trees
            .exchanges_by_subject
            .scan_prefix(subject_key(subject, b""))
        {
            let (key, _) = entry?;
            if let Ok(seq) = <[u8; 8]>::try_from(&key[subject.len() + 1..]) {
                out.push(u64::from_be_bytes(seq));
            }
        }
        Ok(out)
    }

    /// The journal, for readers (the audit log, replay).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Flushes the derived state and closes the journal after the pending appends.
    pub async fn close(self) {
        if let Err(e) = self.db.flush_async().await {
            tracing::warn!(error = %e, "derived state flush at shutdown failed; it is replayed at next start");
        }
        self.journal.close().await;
    }
}

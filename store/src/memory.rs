//! The in-memory backend of the [`Store`]: nothing on disk, nothing survives the process. For
//! unit tests of what sits on the store, and as the contract's second implementation: the same
//! projection (the domain's), the same tree and checkpoints (`unefois-tlog`'s tree, the log
//! key's signature), the same answers as [`super::Embedded`] for the same appends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use unefois_tlog::tree::MemoryTree;

use super::{CheckpointSigner, Items, MandatesOf, Store, StoreError};
use crate::consent::Consent;
use crate::event::{Event, Record};
use crate::event::{RecordedKeys, RecordedRegistry};
use crate::evidence_uses::EvidenceUses;
use crate::identity::{IdentityError, Verified};
use crate::journal::JournalError;
use crate::mandate::Mandate;
use crate::projection::{self, Models, RequestUse};
use crate::seal::Sealer;

/// The log, its Merkle tree and the read models, in memory.
pub struct Memory {
    log: Box<dyn CheckpointSigner>,
    sealer: Arc<Sealer>,
    inner: Mutex<Inner>,
    /// The acts of the ID tokens in use, counted since the store was made.
    evidence: EvidenceUses,
}

#[derive(Default)]
struct Inner {
    entries: Vec<Vec<u8>>,
    tree: MemoryTree,
    latest: Option<(u64, String)>,
    /// Consents, mandates, request ids and recorded keys, as the domain's projection makes them.
    models: Models,
    /// Each person's exchanges, oldest first.
    exchanges: HashMap<String, Vec<u64>>,
    closed: bool,
}

impl Memory {
    /// An empty store whose checkpoints `log` signs and whose sealed persons `sealer` opens.
    pub fn new(log: impl CheckpointSigner + 'static, sealer: Arc<Sealer>) -> Memory {
        Memory {
            log: Box::new(log),
            sealer,
            inner: Mutex::new(Inner::default()),
            evidence: EvidenceUses::new(crate::evidence_uses::DEFAULT_CAPACITY),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves the maps as they were between two changes: still
        // readable, as the embedded backend's sled would be.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends, projects and checkpoints `records` under one lock: what a reader sees is
    /// always a whole batch or none of it.
    fn append_encoded(&self, records: Vec<Record>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut inner = self.inner();
        if inner.closed {
            return Err(StoreError::Journal(JournalError::Closed));
        }
        let mut appended = Vec::with_capacity(records.len());
        for record in records {
            let seq = inner.entries.len() as u64;
            let entry = record.encode();
            let subject = self.subject_of(&record.event);
            let exchange = matches!(record.event, Event::Exchange(_));
            let Ok(changes) = projection::apply(&inner.models, seq, record, subject.clone());
            for change in changes {
                inner.models.write(change);
            }
            if exchange && let Some(subject) = subject {
                inner.exchanges.entry(subject).or_default().push(seq);
            }
            inner.tree.push(&entry);
            inner.entries.push(entry.clone());
            appended.push((seq, entry));
        }
        let size = inner.tree.len();
        if size > 0 {
            let note = self.log.sign(size, inner.tree.root(size));
            inner.latest = Some((size, note));
        }
        Ok(appended)
    }

    /// Refuses sizes beyond the latest checkpoint.
    fn within(inner: &Inner, size: u64) -> Result<(), StoreError> {
        super::within(inner.latest.as_ref().map_or(0, |(s, _)| *s), size)
    }
}

fn items<'a, T: Send + 'a>(found: Vec<T>) -> Items<'a, T> {
    super::stream(found.into_iter().map(Ok))
}

#[async_trait::async_trait]
impl Store for Memory {
    async fn recorded_keys(&self) -> Result<Option<RecordedKeys>, StoreError> {
        Ok(self.inner().models.recorded_keys.clone())
    }

    async fn recorded_registry(&self) -> Result<Option<RecordedRegistry>, StoreError> {
        Ok(self.inner().models.recorded_registry.clone())
    }

    async fn append_entry(&self, record: Record) -> Result<super::Appended, StoreError> {
        let mut appended = self.append_encoded(vec![record])?;
        let (seq, entry) = appended
            .pop()
            .ok_or(StoreError::Journal(JournalError::Closed))?;
        Ok(super::Appended {
            seq,
            entry,
            proven: None,
        })
    }

    async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, StoreError> {
        let appended = self.append_encoded(records)?;
        Ok(appended.into_iter().map(|(seq, _)| seq).collect())
    }

    async fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
        Ok(self.inner().models.consents.get(id).cloned())
    }

    async fn consents_of_after<'a>(
        &'a self,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError> {
        let found = self
            .inner()
            .models
            .consents_after(after, |c| c.subject == subject);
        Ok(items(found))
    }

    async fn consents_seen_by_after<'a>(
        &'a self,
        party: &str,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError> {
        let found = self
            .inner()
            .models
            .consents_after(after, |c| c.subject == subject && c.visible_to(party));
        Ok(items(found))
    }

    async fn consents_under_mandate(&self, mandate_id: &str) -> Result<Vec<Consent>, StoreError> {
        let Ok(under) = projection::Views::consents_under(&self.inner().models, mandate_id);
        Ok(under)
    }

    async fn consents_for(
        &self,
        subject: &str,
        consumer: &str,
        attestation_type: &str,
        purpose: &str,
    ) -> Result<Vec<Consent>, StoreError> {
        Ok(self.inner().models.consents_after("", |c| {
            c.subject == subject && c.covers(consumer, attestation_type, purpose)
        }))
    }

    async fn mandate(&self, id: &str) -> Result<Option<Mandate>, StoreError> {
        Ok(self.inner().models.mandates.get(id).cloned())
    }

    async fn mandates_after<'a>(
        &'a self,
        of: MandatesOf<'_>,
        after: &str,
    ) -> Result<Items<'a, Mandate>, StoreError> {
        let found = self
            .inner()
            .models
            .mandates
            .values()
            .filter(|m| after.is_empty() || m.id.as_str() > after)
            .filter(|m| match of {
                MandatesOf::Subject(subject) => m.subject == subject,
                MandatesOf::Structure(structure) => m.structure == structure,
            })
            .cloned()
            .collect();
        Ok(items(found))
    }

    async fn spend_act(
        &self,
        token: &Verified,
        now: i64,
    ) -> Result<Result<(), IdentityError>, StoreError> {
        Ok(self.evidence.spend(token, now))
    }

    async fn request_use(
        &self,
        actor: &str,
        request_id: &str,
    ) -> Result<Option<RequestUse>, StoreError> {
        let key = (actor.to_string(), request_id.to_string());
        Ok(self.inner().models.requests.get(&key).cloned())
    }

    async fn exchanges_about(
        &self,
        subject: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let inner = self.inner();
        let chain = inner.exchanges.get(subject).map_or(&[][..], Vec::as_slice);
        Ok(chain
            .iter()
            .rev()
            .copied()
            .filter(|seq| before.is_none_or(|b| *seq < b))
            .take(limit)
            .collect())
    }

    async fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.inner();
        Ok(usize::try_from(index)
            .ok()
            .and_then(|i| inner.entries.get(i).cloned()))
    }

    fn entries_from(&self, start: u64) -> Items<'_, (u64, Vec<u8>)> {
        let inner = self.inner();
        let from = usize::try_from(start).unwrap_or(usize::MAX);
        let found: Vec<(u64, Vec<u8>)> = inner
            .entries
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, e)| (i as u64, e.clone()))
            .collect();
        items(found)
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self.inner().latest.clone())
    }

    async fn checkpoint_at(&self, size: u64) -> Result<String, StoreError> {
        let inner = self.inner();
        if let Some(note) = super::kept_checkpoint(inner.latest.clone(), size)? {
            return Ok(note);
        }
        Ok(self.log.sign(size, inner.tree.root(size)))
    }

    async fn inclusion_proof(&self, leaf: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        let inner = self.inner();
        Memory::within(&inner, size)?;
        if leaf >= size {
            return Err(StoreError::OutOfRange(format!(
                "leaf {leaf} is not in a tree of {size} entries"
            )));
        }
        tlog_tiles::prove_record(size, leaf, &inner.tree)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| StoreError::Tree(unefois_tlog::tree::ProofError::Storage(e.to_string())))
    }

    async fn consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        let inner = self.inner();
        Memory::within(&inner, second)?;
        if first == 0 || first > second {
            return Err(StoreError::OutOfRange(format!(
                "no consistency proof from {first} to {second} entries"
            )));
        }
        tlog_tiles::prove_tree(second, first, &inner.tree)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| StoreError::Tree(unefois_tlog::tree::ProofError::Storage(e.to_string())))
    }

    fn subject_of(&self, event: &Event) -> Option<String> {
        event.recorded_subject().and_then(|s| self.sealer.reveal(s))
    }

    fn log_vkey(&self) -> &str {
        self.log.vkey()
    }

    async fn close(&self) {
        self.inner().closed = true;
    }
}

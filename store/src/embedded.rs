//! The embedded backend of the [`Store`]: the journal (source of truth, synced before any answer)
//! and the derived state, which can always be rebuilt from the journal. Knows nothing of gRPC. The derived state
//! is in `DATA/state`:
//! - sled: consents and mandates by id, by subject and by structure, idempotency keys, the
//!   newest exchange about each subject, the applied mark and the latest checkpoint (any other
//!   is signed again on demand: a checkpoint is deterministic);
//! - `tree.hashes`: the Merkle tree's stored hashes ([`TreeFile`]);
//! - `entries.positions`: where each entry lies in the journal, and the previous exchange about
//!   the same subject ([`Positions`]): entries are read from the journal, never copied, and a
//!   subject's history is a chain walked from its newest exchange. Nothing in sled grows with
//!   the number of exchanges.
//!
//! Derived state is applied by the journal's commit hook, after the sync and before the appends
//! are answered: when a request learns that its record is durable, the derived state already
//! shows it (a revocation applies to the very next request). None of it is synced; at start the
//! store keeps what all three agree on and the journal vouches for, and replays the rest.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::caller::actor;
use crate::consent::Consent;
use crate::event::{Event, Record, RecordedSubject};
use crate::evidence_uses::EvidenceUses;
use crate::identity::{IdentityError, Verified};
use crate::journal::{CommittedBatch, Journal, JournalOptions, Position};
use crate::mandate::Mandate;
use crate::projection::{self, Change, RequestUse};
use crate::seal::Sealer;
use crate::tree::TreeFile;

use super::positions::{Positions, Slot};
use super::{CheckpointSigner, Items, MandatesOf, Store, StoreError};

/// The Merkle tree's file in the state directory.
const TREE_FILE: &str = "tree.hashes";
/// The entries' positions file in the state directory.
const POSITIONS_FILE: &str = "entries.positions";
/// sled trees of earlier versions, whose content now lives in the files above.
const LEGACY_TREES: [&str; 4] = [
    "audit_entries",
    "audit_hashes",
    "audit_checkpoints",
    "exchanges_by_subject",
];

/// sled's cache, bounded (its default is 1 GiB): it holds the hot nodes of the indexes only.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

struct Trees {
    /// The latest checkpoint, also kept in memory: every receipt reads it.
    latest: arc_swap::ArcSwapOption<(u64, String)>,
    /// Applied, not yet written to sled's `meta`.
    staged: std::sync::Mutex<Staged>,
    meta: sled::Tree,
    consents: sled::Tree,
    consents_by_subject: sled::Tree,
    /// `<subject>\0<consumer>\0<type>\0<purpose>\0<consent id>`: the consents that may be the
    /// basis of one fetch, so that a fetch reads those only, however many others the person
    /// holds.
    consents_by_scope: sled::Tree,
    /// `<party>\0<subject>\0<consent id>` for the guichet that recorded a consent and for
    /// its consumer: what a participant may see of a person's consents, read without touching
    /// the others (its answer takes no longer for a person with many consents elsewhere).
    consents_by_party: sled::Tree,
    /// `<mandate id>/<consent id>`: the consents recorded under a mandate, which end with it.
    consents_by_mandate: sled::Tree,
    requests: sled::Tree,
    mandates: sled::Tree,
    mandates_by_subject: sled::Tree,
    mandates_by_structure: sled::Tree,
    /// Opens the subjects of version 2 records.
    sealer: Arc<Sealer>,
}

const APPLIED: &[u8] = b"applied_seq";
/// The layout of the derived state (4 bytes, big-endian). A broker that finds another one, or
/// none in a store that has applied records, rebuilds the derived state from the journal.
const LAYOUT: &[u8] = b"layout";
/// 2: `consents_by_scope` added. 3: version 2 records (sealed subjects, blinded request ids
/// keyed by participant and agent), `consents_by_party`, `consents_by_mandate`. 4: the recorded
/// registry.
const CURRENT_LAYOUT: u32 = 4;
/// The latest checkpoint: its size (8 bytes, big-endian), then the note.
pub(crate) const LATEST: &[u8] = b"latest_checkpoint";
/// `head/<subject>`: the newest exchange about a subject (8 bytes, big-endian).
const HEAD: &[u8] = b"head/";
/// The key ids of the latest `broker_started` entry that recorded them
/// ([`crate::event::RecordedKeys`], JSON).
const RECORDED_KEYS: &[u8] = b"recorded_keys";
/// The registry of the latest `registry_loaded` entry ([`crate::event::RecordedRegistry`],
/// JSON).
const RECORDED_REGISTRY: &[u8] = b"recorded_registry";

fn head_key(subject: &str) -> Vec<u8> {
    [HEAD, subject.as_bytes()].concat()
}

/// The newest exchange about each subject among the records of a batch.
type Heads = HashMap<String, u64>;

/// How long the applied mark, the subjects' newest exchanges and the latest checkpoint wait in
/// memory before they are written to sled: by the first commit this long after the first change
/// not yet written, or at close. Between two writes they are read from memory; after a crash,
/// what was not written is replayed from the journal.
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The applied mark and heads since the last write to sled.
#[derive(Default)]
struct Staged {
    next: Option<u64>,
    heads: Heads,
    since: Option<std::time::Instant>,
}

/// A checkpoint kept as `size ‖ note`.
pub(crate) fn decode_checkpoint(bytes: &[u8]) -> Option<(u64, String)> {
    let (size, note) = bytes.split_first_chunk::<8>()?;
    Some((
        u64::from_be_bytes(*size),
        String::from_utf8_lossy(note).into_owned(),
    ))
}

impl Trees {
    fn open(db: &sled::Db, sealer: Arc<Sealer>) -> Result<Trees, sled::Error> {
        let meta = db.open_tree("meta")?;
        let mut latest = meta.get(LATEST)?.and_then(|v| decode_checkpoint(&v));
        if latest.is_none() {
            // Earlier versions kept every checkpoint in a tree of their own.
            latest = db.open_tree("audit_checkpoints")?.last()?.map(|(k, v)| {
                let size = <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes);
                (size, String::from_utf8_lossy(&v).into_owned())
            });
        }
        for legacy in LEGACY_TREES {
            db.drop_tree(legacy)?;
        }
        Ok(Trees {
            latest: arc_swap::ArcSwapOption::new(latest.map(Arc::new)),
            staged: std::sync::Mutex::new(Staged::default()),
            meta,
            consents: db.open_tree("consents")?,
            consents_by_subject: db.open_tree("consents_by_subject")?,
            consents_by_scope: db.open_tree("consents_by_scope")?,
            consents_by_party: db.open_tree("consents_by_party")?,
            consents_by_mandate: db.open_tree("consents_by_mandate")?,
            sealer,
            requests: db.open_tree("requests")?,
            mandates: db.open_tree("mandates")?,
            mandates_by_subject: db.open_tree("mandates_by_subject")?,
            mandates_by_structure: db.open_tree("mandates_by_structure")?,
        })
    }

    fn clear(&self) -> Result<(), sled::Error> {
        for tree in [
            &self.meta,
            &self.consents,
            &self.consents_by_subject,
            &self.consents_by_scope,
            &self.consents_by_party,
            &self.consents_by_mandate,
            &self.requests,
            &self.mandates,
            &self.mandates_by_subject,
            &self.mandates_by_structure,
        ] {
            tree.clear()?;
        }
        self.latest.store(None);
        *self.staged() = Staged::default();
        // What is rebuilt now is built with this version's layout.
        self.set_layout()
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs the checkpoint of the tree of `size` leaves: the latest, served from memory.
    fn checkpoint(
        &self,
        log: &dyn CheckpointSigner,
        tree: &TreeFile,
        size: u64,
    ) -> Result<(), StoreError> {
        let root = tree.root(size).map_err(StoreError::Tree)?;
        let note = log.sign(size, root);
        self.latest.store(Some(Arc::new((size, note))));
        Ok(())
    }

    /// Takes note that every journal record before `next` is applied, with the subjects' newest
    /// exchanges among them; writes them to sled once [`PERSIST_EVERY`] has passed.
    fn stage(&self, next: u64, heads: Heads) -> Result<(), sled::Error> {
        let mut staged = self.staged();
        staged.next = Some(next);
        staged.heads.extend(heads);
        let since = *staged.since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= PERSIST_EVERY {
            self.write(&mut staged)?;
        }
        Ok(())
    }

    /// Writes what is staged now.
    fn persist(&self) -> Result<(), sled::Error> {
        self.write(&mut self.staged())
    }

    /// Writes the applied mark, the heads and the latest checkpoint in one sled batch (so that
    /// sled's heads never disagree with its mark), then forgets them: sled has them.
    fn write(&self, staged: &mut Staged) -> Result<(), sled::Error> {
        let Some(next) = staged.next else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        batch.insert(APPLIED, &next.to_be_bytes());
        for (subject, seq) in &staged.heads {
            batch.insert(head_key(subject), &seq.to_be_bytes());
        }
        if let Some(latest) = self.latest.load_full().filter(|l| l.0 <= next) {
            let mut kept = Vec::with_capacity(8 + latest.1.len());
            kept.extend_from_slice(&latest.0.to_be_bytes());
            kept.extend_from_slice(latest.1.as_bytes());
            batch.insert(LATEST, kept);
        }
        self.meta.apply_batch(batch)?;
        *staged = Staged::default();
        Ok(())
    }

    /// The newest exchange about `subject` applied so far.
    fn head(&self, subject: &str) -> Result<Option<u64>, sled::Error> {
        if let Some(seq) = self.staged().heads.get(subject) {
            return Ok(Some(*seq));
        }
        Ok(self
            .meta
            .get(head_key(subject))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// The next journal sequence number not yet applied.
    fn applied(&self) -> Result<u64, sled::Error> {
        Ok(self
            .meta
            .get(APPLIED)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// The layout the derived state was built with; `None` before any was written (a new
    /// store, or one built before layouts were recorded).
    fn layout(&self) -> Result<Option<u32>, sled::Error> {
        Ok(self
            .meta
            .get(LAYOUT)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes))
    }

    fn set_layout(&self) -> Result<(), sled::Error> {
        self.meta.insert(LAYOUT, &CURRENT_LAYOUT.to_be_bytes())?;
        Ok(())
    }

    /// Applies record `seq`; returns the subject of an exchange about one, for its chain.
    fn apply(&self, seq: u64, payload: &[u8]) -> Result<Option<String>, StoreError> {
        let bad = |source| StoreError::Record { seq, source };
        // Exchanges are most records: only the fields the indexes need are read, borrowed.
        let peek: Peek<'_> = serde_json::from_slice(payload).map_err(bad)?;
        if peek.kind == "exchange" {
            // The projection's `Event::Exchange` arm, from the borrowed fields.
            if let (Some(request_id), Some(fingerprint)) =
                (&peek.request_id, &peek.request_fingerprint)
            {
                let used = RequestUse {
                    fingerprint: fingerprint.to_string(),
                    result: seq.to_string(),
                };
                let requester = actor(&peek.participant.unwrap_or_default(), peek.agent.as_deref());
                self.index_request(&requester, request_id, used)?;
            }
            let subject = match (&peek.subject_sealed, &peek.subject) {
                (Some(sealed), _) => Some(RecordedSubject::Sealed(sealed)),
                (None, Some(clear)) => Some(RecordedSubject::Clear(clear)),
                (None, None) => None,
            };
            return Ok(subject.and_then(|s| self.sealer.reveal(s)));
        }
        let record = Record::decode(payload).map_err(bad)?;
        let subject = record
            .event
            .recorded_subject()
            .and_then(|s| self.sealer.reveal(s));
        let exchange = matches!(record.event, Event::Exchange(_));
        let changes = projection::apply(self, seq, record, subject.clone())?;
        for change in changes {
            self.write_change(change)?;
        }
        Ok(if exchange { subject } else { None })
    }

    /// Writes one change of the projection into sled, with its indexes.
    fn write_change(&self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::ConsentGranted(consent) => {
                let (id, subject) = (consent.id.as_bytes(), consent.subject.as_str());
                for ty in &consent.attestation_types {
                    self.consents_by_scope.insert(
                        scope_key(subject, &consent.consumer, ty, &consent.purpose, id),
                        &[],
                    )?;
                }
                self.consents.insert(id, json(&consent))?;
                self.consents_by_subject
                    .insert(subject_key(subject, id), &[])?;
                for party in [&consent.participant, &consent.consumer] {
                    self.consents_by_party
                        .insert(party_key(party, subject, id), &[])?;
                }
                if let Some(mandate) = &consent.mandate_id {
                    self.consents_by_mandate
                        .insert(subject_key(mandate, id), &[])?;
                }
            }
            Change::ConsentChanged(consent) => {
                self.consents
                    .insert(consent.id.as_bytes(), json(&consent))?;
            }
            Change::MandateCreated(mandate) => {
                let id = mandate.id.as_bytes();
                self.mandates.insert(id, json(&mandate))?;
                self.mandates_by_subject
                    .insert(subject_key(&mandate.subject, id), &[])?;
                self.mandates_by_structure
                    .insert(subject_key(&mandate.structure, id), &[])?;
            }
            Change::MandateChanged(mandate) => {
                self.mandates
                    .insert(mandate.id.as_bytes(), json(&mandate))?;
            }
            Change::RequestUsed {
                actor,
                request_id,
                used,
            } => {
                self.requests
                    .insert(request_key(&actor, &request_id), json(&used))?;
            }
            Change::FetchRequestUsed {
                actor,
                request_id,
                used,
            } => self.index_request(&actor, &request_id, used)?,
            Change::KeysRecorded { entry, ids } => {
                let recorded = crate::event::RecordedKeys { entry, ids };
                self.meta.insert(RECORDED_KEYS, json(&recorded))?;
            }
            Change::RegistryRecorded(recorded) => {
                self.meta.insert(RECORDED_REGISTRY, json(&recorded))?;
            }
        }
        Ok(())
    }
}

/// What the projection reads: the consents and mandates as sled holds them (one that does not
/// decode is as if absent).
impl projection::Views for Trees {
    type Error = StoreError;

    fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
        Ok(self
            .consents
            .get(id.as_bytes())?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn mandate(&self, id: &str) -> Result<Option<Mandate>, StoreError> {
        Ok(self
            .mandates
            .get(id.as_bytes())?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn consents_under(&self, mandate_id: &str) -> Result<Vec<Consent>, StoreError> {
        indexed_after(&self.consents_by_mandate, &self.consents, mandate_id, "").collect()
    }
}

impl Trees {
    /// Indexes a Fetch's request id (the first exchange of a request id is the one later
    /// retries point to).
    fn index_request(
        &self,
        actor: &str,
        request_id: &str,
        used: RequestUse,
    ) -> Result<(), StoreError> {
        let key = request_key(actor, &projection::fetch_request_key(request_id));
        let _ = self
            .requests
            .compare_and_swap(key, None as Option<&[u8]>, Some(json(&used)))?;
        Ok(())
    }
}

/// The few fields of a record the indexes of an exchange need, borrowed from its bytes.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    participant: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    agent: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    subject: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    subject_sealed: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    request_fingerprint: Option<std::borrow::Cow<'a, str>>,
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

/// `<party>\0<subject>\0<suffix>`; with an empty suffix, the prefix of what one party may
/// see of one person.
fn party_key(party: &str, subject: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(party.len() + subject.len() + 2 + suffix.len());
    for part in [party, subject] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key.extend_from_slice(suffix);
    key
}

/// `<subject>\0<consumer>\0<type>\0<purpose>\0<suffix>`; with an empty suffix, the prefix
/// of one scope. Identifiers never hold a NUL, so no scope's prefix is another's.
fn scope_key(
    subject: &str,
    consumer: &str,
    attestation_type: &str,
    purpose: &str,
    suffix: &[u8],
) -> Vec<u8> {
    let mut key = Vec::with_capacity(
        subject.len() + consumer.len() + attestation_type.len() + purpose.len() + 4 + suffix.len(),
    );
    for part in [subject, consumer, attestation_type, purpose] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key.extend_from_slice(suffix);
    key
}

/// The records that an index of `<key>/<id>` keys points to in `records` (by id), after the id
/// `after` (exclusive; from the first when empty), in id order.
fn indexed_after<'a, T: serde::de::DeserializeOwned + 'a>(
    index: &'a sled::Tree,
    records: &'a sled::Tree,
    key: &str,
    after: &str,
) -> impl Iterator<Item = Result<T, StoreError>> + 'a {
    use std::ops::Bound;
    let start = if after.is_empty() {
        Bound::Included(subject_key(key, b""))
    } else {
        Bound::Excluded(subject_key(key, after.as_bytes()))
    };
    // Every key of this index's `key` starts with `<key>/`; '0' is the byte after '/'.
    let mut end = key.as_bytes().to_vec();
    end.push(b'/' + 1);
    pointed_to(
        index.range((start, Bound::Excluded(end))),
        records,
        key.len() + 1,
    )
}

/// The records that index entries point to in `records`: the id is each key after its first
/// `skip` bytes. Records that do not decode are skipped, as they are everywhere in derived
/// state.
fn pointed_to<'a, T: serde::de::DeserializeOwned + 'a>(
    entries: impl Iterator<Item = Result<(sled::IVec, sled::IVec), sled::Error>> + 'a,
    records: &'a sled::Tree,
    skip: usize,
) -> impl Iterator<Item = Result<T, StoreError>> + 'a {
    entries.filter_map(move |entry| {
        let read = || -> Result<Option<T>, StoreError> {
            let (key, _) = entry?;
            Ok(records
                .get(&key[skip..])?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
        };
        read().transpose()
    })
}

fn request_key(participant: &str, request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(participant.len() + 1 + request_id.len());
    key.extend_from_slice(participant.as_bytes());
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// Opens sled, waiting up to 10 s for a broker that is shutting down (in this process or
/// another) to release the directory lock; a broker still running there keeps it, and this
/// one then refuses to start rather than share the directory.
fn open_derived_state(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(DEFAULT_CACHE_BYTES)
            // Derived state needs no sync of its own (the journal is synced and replayed): no
            // periodic fsync thread on the commit path's core. Flushed at shutdown.
            .flush_every_ms(None)
            .open()
        {
            // sled reports a held lock as an `Other` I/O error with this message.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

/// The embedded backend: journal, sled, the tree file and the positions, in one data directory.
#[derive(Clone)]
pub struct Embedded {
    journal: Journal,
    trees: Arc<Trees>,
    tree: Arc<TreeFile>,
    positions: Arc<Positions>,
    log: Arc<dyn CheckpointSigner>,
    db: sled::Db,
    degraded: Arc<AtomicBool>,
    state_dir: Arc<std::path::PathBuf>,
    /// The acts of the ID tokens in use, counted since the store was opened.
    evidence: Arc<EvidenceUses>,
    /// The newest checkpoint the derived state held when opened, as it was signed then.
    found: Option<Arc<(u64, String)>>,
}

/// Applies records to the derived state: sled's indexes, then the positions (each exchange
/// linked to the previous one about its subject) and the Merkle tree; returns the subjects'
/// newest exchanges, for the applied mark, which the caller writes last (so that it never gets
/// ahead of the files).
fn apply_batch(
    trees: &Trees,
    tree: &TreeFile,
    positions: &Positions,
    records: &[(u64, &[u8])],
    at: &[Position],
) -> Result<Heads, StoreError> {
    let mut heads = Heads::new();
    let mut slots = Vec::with_capacity(records.len());
    for ((seq, payload), at) in records.iter().zip(at) {
        let previous = match trees.apply(*seq, payload)? {
            Some(subject) => {
                let previous = match heads.get(&subject) {
                    Some(newest) => Some(*newest),
                    None => trees.head(&subject)?,
                };
                heads.insert(subject, *seq);
                previous
            }
            None => None,
        };
        slots.push(Slot { at: *at, previous });
    }
    positions.append(&slots)?;
    tree.append(records.iter().map(|(_, payload)| *payload))
        .map_err(StoreError::Tree)?;
    Ok(heads)
}

impl Embedded {
    /// Opens the journal in `data_dir/journal` and the derived state in `data_dir/state`,
    /// replaying what the derived state has not applied yet.
    pub fn open(
        data_dir: &Path,
        options: JournalOptions,
        log: impl CheckpointSigner + 'static,
        sealer: Arc<Sealer>,
    ) -> Result<Embedded, StoreError> {
        let log: Arc<dyn CheckpointSigner> = Arc::new(log);
        let state_dir = data_dir.join("state");
        let state_err = |source| StoreError::StateDir {
            path: state_dir.clone(),
            source,
        };
        crate::private::private_dir(&state_dir).map_err(state_err)?;
        let db = open_derived_state(&state_dir)?;
        let trees = Arc::new(Trees::open(&db, sealer)?);
        let tree = Arc::new(TreeFile::open(&state_dir.join(TREE_FILE), u64::MAX)?);
        let positions = Arc::new(Positions::open(&state_dir.join(POSITIONS_FILE))?);
        // sled creates its files with the process's umask.
        crate::private::narrow_tree(&state_dir).map_err(state_err)?;
        let degraded = Arc::new(AtomicBool::new(false));
        let hook = {
            let (trees, tree, positions) = (trees.clone(), tree.clone(), positions.clone());
            let degraded = degraded.clone();
            let log = log.clone();
            let mut user_hook = options.hook;
            Box::new(move |batch: &CommittedBatch<'_>| {
                if !degraded.load(Ordering::Acquire) {
                    let size = batch.first_seq + batch.records.len() as u64;
                    let applied =
                        apply_batch(&trees, &tree, &positions, batch.records, batch.positions)
                            .and_then(|heads| {
                                trees.checkpoint(&*log, &tree, size)?;
                                Ok(trees.stage(size, heads)?)
                            });
                    if let Err(e) = applied {
                        tracing::error!(error = %e, "derived state update failed; refusing requests until restart");
                        degraded.store(true, Ordering::Release);
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
        // Read before anything clears it: the one witness of how far the log was handed out.
        let signed = trees.latest.load_full();
        // Both only ever move after the journal synced the records they count, so either being
        // past the journal's end means it lost acknowledged records. Extending it now would give
        // those sequence numbers other bytes: a fork under this broker's own log key.
        let acknowledged = from.max(signed.as_ref().map_or(0, |s| s.0));
        if acknowledged > journal.next_seq() {
            return Err(StoreError::JournalShort {
                journal: journal.next_seq(),
                acknowledged,
            });
        }
        let layout = trees.layout()?;
        if layout != Some(CURRENT_LAYOUT) && (from > 0 || layout.is_some()) {
            // Built by another version: an index it did not keep would be read as empty.
            tracing::warn!(
                found = ?layout,
                current = CURRENT_LAYOUT,
                "derived state built with another layout; rebuilding it from the journal"
            );
            trees.clear()?;
            from = 0;
        }
        trees.set_layout()?;
        let files = tree.leaves().min(positions.len());
        let kept = files.min(from);
        if files < from || (kept > 0 && !vouched(&journal, &tree, &positions, kept)) {
            // The files lost what sled applied (they are not synced), or disagree with the
            // journal: the subjects' chains cannot be trusted either. Everything is rebuilt.
            tracing::warn!(
                sled = from,
                files,
                "the entries' positions or the Merkle tree are behind or disagree with the journal; rebuilding the derived state"
            );
            trees.clear()?;
            from = 0;
        }
        let rebuild = |from: u64| -> Result<u64, StoreError> {
            tree.truncate(from)?;
            positions.truncate(from)?;
            replay(&journal, &trees, &tree, &positions, from)
        };
        let mut replayed = rebuild(from)?;
        // The tree must still have the root this broker signed last.
        if let Some(signed) = signed.as_deref()
            && let Some(size) = diverged(&tree, &*log, signed)
        {
            tracing::warn!(
                size,
                "the Merkle tree disagrees with the latest checkpoint; rebuilding the derived state from the journal"
            );
            trees.clear()?;
            replayed = rebuild(0)?;
            if let Some(size) = diverged(&tree, &*log, signed) {
                return Err(StoreError::Diverged { size });
            }
        }
        if replayed > 0 {
            tracing::info!(replayed, "derived state caught up with the journal");
        }
        if journal.next_seq() > 0 {
            trees.checkpoint(&*log, &tree, journal.next_seq())?;
        }
        trees.stage(journal.next_seq(), Heads::new())?;
        trees.persist()?;
        db.flush()?;
        crate::private::narrow_tree(&state_dir).map_err(state_err)?;
        Ok(Embedded {
            journal,
            trees,
            tree,
            positions,
            log,
            db,
            degraded,
            state_dir: Arc::new(state_dir),
            evidence: Arc::new(EvidenceUses::new(crate::evidence_uses::DEFAULT_CAPACITY)),
            found: signed,
        })
    }

    /// The newest checkpoint the derived state held when the store was opened, as the broker
    /// signed it then: opening signs the log's head again with the signer it is given, so this
    /// is where to check that a signer names the log as the broker did (`store import`).
    pub fn checkpoint_found(&self) -> Option<&(u64, String)> {
        self.found.as_deref()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.degraded.load(Ordering::Acquire) {
            Err(StoreError::Degraded)
        } else {
            Ok(())
        }
    }

    /// Refuses a tree size beyond the latest checkpoint's.
    fn within(&self, size: u64) -> Result<(), StoreError> {
        let latest = self.trees.latest.load();
        super::within(latest.as_ref().map_or(0, |l| l.0), size)
    }

    /// Closes the store ([`Store::close`]) and drops this handle: once no clone is left, sled's
    /// lock on the data directory is released for the next `open`.
    pub async fn close(self) {
        Store::close(&self).await;
    }

    /// The journal, for readers (the audit log, replay).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

#[async_trait::async_trait]
impl Store for Embedded {
    /// Not ready once the derived state failed: every request is then refused until a restart
    /// (`check`), and the load balancer must send them elsewhere.
    async fn health(&self) -> crate::StoreHealth {
        match self.degraded.load(Ordering::Acquire) {
            false => crate::StoreHealth {
                ok: true,
                report: "store: embedded (journal in the data directory)".into(),
            },
            true => crate::StoreHealth {
                ok: false,
                report: "store: embedded, its derived state failed: refusing requests until \
                         the broker restarts"
                    .into(),
            },
        }
    }

    async fn recorded_keys(&self) -> Result<Option<crate::event::RecordedKeys>, StoreError> {
        Ok(self
            .trees
            .meta
            .get(RECORDED_KEYS)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn recorded_registry(
        &self,
    ) -> Result<Option<crate::event::RecordedRegistry>, StoreError> {
        Ok(self
            .trees
            .meta
            .get(RECORDED_REGISTRY)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn append_entry(&self, record: Record) -> Result<super::Appended, StoreError> {
        self.check()?;
        let entry = record.encode();
        let seq = self.journal.append(entry.clone()).await?;
        self.check()?;
        crate::metrics::audit_entries(record.event.kind(), 1);
        Ok(super::Appended {
            seq,
            entry,
            proven: None,
        })
    }

    async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, StoreError> {
        self.check()?;
        let seqs = self
            .journal
            .append_batch(records.iter().map(Record::encode).collect())
            .await?;
        self.check()?;
        for record in &records {
            crate::metrics::audit_entries(record.event.kind(), 1);
        }
        Ok(seqs)
    }

    async fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
        self.check()?;
        Ok(self
            .trees
            .consents
            .get(id.as_bytes())?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn consents_of_after<'a>(
        &'a self,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError> {
        self.check()?;
        Ok(super::stream(indexed_after(
            &self.trees.consents_by_subject,
            &self.trees.consents,
            subject,
            after,
        )))
    }

    async fn consents_seen_by_after<'a>(
        &'a self,
        party: &str,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError> {
        use std::ops::Bound;
        self.check()?;
        let prefix = party_key(party, subject, b"");
        let start = if after.is_empty() {
            Bound::Included(prefix.clone())
        } else {
            Bound::Excluded(party_key(party, subject, after.as_bytes()))
        };
        // Every key of this prefix starts with `<party>\0<subject>\0`; 1 is the byte after 0.
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        Ok(super::stream(pointed_to(
            self.trees
                .consents_by_party
                .range((start, Bound::Excluded(end))),
            &self.trees.consents,
            prefix.len(),
        )))
    }

    async fn consents_under_mandate(&self, mandate_id: &str) -> Result<Vec<Consent>, StoreError> {
        self.check()?;
        indexed_after(
            &self.trees.consents_by_mandate,
            &self.trees.consents,
            mandate_id,
            "",
        )
        .collect()
    }

    async fn consents_for(
        &self,
        subject: &str,
        consumer: &str,
        attestation_type: &str,
        purpose: &str,
    ) -> Result<Vec<Consent>, StoreError> {
        self.check()?;
        let prefix = scope_key(subject, consumer, attestation_type, purpose, b"");
        pointed_to(
            self.trees.consents_by_scope.scan_prefix(&prefix),
            &self.trees.consents,
            prefix.len(),
        )
        .collect()
    }

    async fn mandate(&self, id: &str) -> Result<Option<Mandate>, StoreError> {
        self.check()?;
        Ok(self
            .trees
            .mandates
            .get(id.as_bytes())?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn mandates_after<'a>(
        &'a self,
        of: MandatesOf<'_>,
        after: &str,
    ) -> Result<Items<'a, Mandate>, StoreError> {
        self.check()?;
        let (index, key) = match of {
            MandatesOf::Subject(subject) => (&self.trees.mandates_by_subject, subject),
            MandatesOf::Structure(structure) => (&self.trees.mandates_by_structure, structure),
        };
        Ok(super::stream(indexed_after(
            index,
            &self.trees.mandates,
            key,
            after,
        )))
    }

    async fn settled(&self) {
        self.journal.settled().await;
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
        self.check()?;
        Ok(self
            .trees
            .requests
            .get(request_key(actor, request_id))?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn exchanges_about(
        &self,
        subject: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.check()?;
        let mut out = Vec::new();
        let mut next = self.trees.head(subject)?;
        while let Some(seq) = next {
            if out.len() >= limit {
                break;
            }
            if before.is_none_or(|b| seq < b) {
                out.push(seq);
            }
            next = match self.positions.get(seq)? {
                // A chain only goes back in time; anything else is damage, not a loop to follow.
                Some(slot) => slot.previous.filter(|p| *p < seq),
                None => None,
            };
        }
        Ok(out)
    }

    async fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.positions.get(index)? {
            Some(slot) => Ok(Some(self.journal.read_at(index, slot.at)?)),
            None => Ok(None),
        }
    }

    fn entries_from(&self, start: u64) -> Items<'_, (u64, Vec<u8>)> {
        let end = self.positions.len();
        // Straight to `start`'s position: no scan of its segment up to it.
        let reader = match self.positions.get(start) {
            Ok(Some(slot)) => self
                .journal
                .read_from_at(start, slot.at)
                .map_err(StoreError::from),
            Ok(None) => self.journal.read_from(start).map_err(StoreError::from),
            Err(e) => Err(StoreError::Positions(e)),
        };
        let (reader, failed) = match reader {
            Ok(reader) => (Some(reader), None),
            Err(e) => (None, Some(Err(e))),
        };
        super::stream(
            failed.into_iter().chain(
                reader
                    .into_iter()
                    .flatten()
                    .take_while(move |r| r.as_ref().map_or(true, |r| r.seq < end))
                    .map(|r| r.map(|r| (r.seq, r.payload)).map_err(StoreError::from)),
            ),
        )
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .trees
            .latest
            .load_full()
            .map(|latest| (*latest).clone()))
    }

    async fn checkpoint_at(&self, size: u64) -> Result<String, StoreError> {
        if let Some(note) = super::kept_checkpoint(self.latest_checkpoint().await?, size)? {
            return Ok(note);
        }
        let root = self.tree.root(size).map_err(StoreError::Tree)?;
        Ok(self.log.sign(size, root))
    }

    async fn inclusion_proof(&self, leaf: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.within(size)?;
        self.tree
            .inclusion_proof(leaf, size)
            .map_err(StoreError::from)
    }

    async fn consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        self.within(second)?;
        self.tree
            .consistency_proof(first, second)
            .map_err(StoreError::from)
    }

    fn subject_of(&self, event: &Event) -> Option<String> {
        event
            .recorded_subject()
            .and_then(|s| self.trees.sealer.reveal(s))
    }

    fn log_vkey(&self) -> &str {
        self.log.vkey()
    }

    async fn close(&self) {
        self.journal.clone().close().await;
        if let Err(e) = self.trees.persist() {
            tracing::warn!(error = %e, "derived state write at shutdown failed; it is replayed at next start");
        }
        if let Err(e) = self.db.flush_async().await {
            tracing::warn!(error = %e, "derived state flush at shutdown failed; it is replayed at next start");
        }
        // Files sled created while serving (snapshots) got the process's umask.
        if let Err(e) = crate::private::narrow_tree(&self.state_dir) {
            tracing::warn!(error = %e, dir = %self.state_dir.display(), "cannot narrow the derived state's file modes");
        }
    }
}

/// The key ids that the latest `broker_started` entry of the journal in `data_dir/journal`
/// recorded, read from its files without opening it (for the message of a broker that refuses
/// to start); `None` when none did, or the journal cannot be read. Reads the whole journal.
pub fn recorded_keys_in_journal(data_dir: &Path) -> Option<crate::event::RecordedKeys> {
    let reader = crate::journal::read_dir(&data_dir.join("journal")).ok()?;
    let mut last = None;
    for record in reader {
        let Ok(record) = record else { break };
        if !record
            .payload
            .windows(16)
            .any(|w| w == b"\"broker_started\"")
        {
            continue;
        }
        if let Ok(Record {
            event: Event::BrokerStarted { keys, .. },
            ..
        }) = Record::decode(&record.payload)
            && !keys.is_empty()
        {
            last = Some(crate::event::RecordedKeys {
                entry: record.seq,
                ids: keys,
            });
        }
    }
    last
}

/// Whether the journal vouches for the files' first `size` entries: the last entry's position
/// reads it back from the journal, and its leaf hash is the tree's.
fn vouched(journal: &Journal, tree: &TreeFile, positions: &Positions, size: u64) -> bool {
    use tlog_tiles::HashReader;
    let Some(last) = size.checked_sub(1) else {
        return true;
    };
    let entry = match positions.get(last) {
        Ok(Some(slot)) => journal.read_at(last, slot.at).ok(),
        _ => None,
    };
    let Some(entry) = entry else { return false };
    tree.read_hashes(&[tlog_tiles::stored_hash_index(0, last)])
        .ok()
        .and_then(|h| h.first().map(|h| h.0))
        == Some(crate::tree::leaf_hash(&entry))
}

/// The size of `signed` (a checkpoint this broker kept) when the tree's root at that size is
/// not the signed one, or the tree is shorter (it lost what was signed); `None` when it is, or
/// when it cannot be told (the note no longer verifies under the log key).
fn diverged(tree: &TreeFile, log: &dyn CheckpointSigner, signed: &(u64, String)) -> Option<u64> {
    let checkpoint = unefois_tlog::checkpoint::verify_checkpoint(log.vkey(), &signed.1).ok()?;
    if checkpoint.size == 0 {
        return None;
    }
    if checkpoint.size > tree.leaves() {
        return Some(checkpoint.size);
    }
    let root = tree.root(checkpoint.size).ok();
    (root != Some(checkpoint.root)).then_some(checkpoint.size)
}

/// Applies the journal's records from `from` to the derived state; returns how many.
fn replay(
    journal: &Journal,
    trees: &Trees,
    tree: &TreeFile,
    positions: &Positions,
    from: u64,
) -> Result<u64, StoreError> {
    const CHUNK: usize = 1024;
    let mut reader = journal.read_from(from)?;
    let (mut payloads, mut at) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK));
    let mut replayed = 0u64;
    loop {
        let record = reader.next().transpose()?;
        let done = record.is_none();
        if let Some(record) = record {
            let position = reader.position().ok_or_else(|| {
                StoreError::OutOfRange(format!("no position for record {}", record.seq))
            })?;
            payloads.push((record.seq, record.payload));
            at.push(position);
        }
        if payloads.len() == CHUNK || (done && !payloads.is_empty()) {
            let records: Vec<(u64, &[u8])> =
                payloads.iter().map(|(s, p)| (*s, p.as_slice())).collect();
            let heads = apply_batch(trees, tree, positions, &records, &at)?;
            replayed += records.len() as u64;
            if let Some((seq, _)) = payloads.last() {
                trees.stage(seq + 1, heads)?;
            }
            payloads.clear();
            at.clear();
        }
        if done {
            return Ok(replayed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_signer::TestSigner;

    /// Opens the store in `dir` with the test log key of `seed`.
    fn open_store(dir: &Path, seed: &[u8; 32]) -> Result<Embedded, StoreError> {
        Embedded::open(
            dir,
            JournalOptions::default(),
            TestSigner::from_seed(seed),
            sealer(),
        )
    }

    fn sealer() -> Arc<Sealer> {
        Arc::new(Sealer::from_secret(&[0x5e; 32]))
    }

    #[tokio::test]
    async fn appended_records_are_applied_logged_and_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let log = TestSigner::from_seed(&[1; 32]);
        let vkey = log.vkey().to_string();
        let store = Embedded::open(dir.path(), JournalOptions::default(), log, sealer()).unwrap();
        let record = Record::now(Event::RegistryLoaded {
            registry_sha256: "00".into(),
            files: Default::default(),
        });
        let seqs = store.append(vec![record.clone(), record]).await.unwrap();
        assert_eq!(seqs, vec![0, 1]);
        let (size, note) = store.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(size, 2);
        let checkpoint = unefois_tlog::checkpoint::verify_checkpoint(&vkey, &note).unwrap();
        let entry = store.entry(1).await.unwrap().unwrap();
        let proof = store.inclusion_proof(1, 2).await.unwrap();
        crate::tree::verify_inclusion(&proof, 2, checkpoint.root, 1, &entry).unwrap();
    }

    /// Opens a store of `n` records, closes it, damages its state directory with `damage`,
    /// reopens it and checks that every entry reads back and proves against the checkpoint.
    async fn reopened_after(damage: impl FnOnce(&Path)) {
        let dir = tempfile::tempdir().unwrap();
        let seed = [7; 32];
        let record = |i: u64| {
            Record::now(Event::RegistryLoaded {
                registry_sha256: format!("{i:064x}"),
                files: Default::default(),
            })
        };
        let store = open_store(dir.path(), &seed).unwrap();
        let mut entries = Vec::new();
        for i in 0..40u64 {
            let super::super::Appended { seq, entry, .. } =
                store.append_entry(record(i)).await.unwrap();
            assert_eq!(seq, i);
            entries.push(entry);
        }
        let (_, before) = store.latest_checkpoint().await.unwrap().unwrap();
        store.close().await;
        damage(&dir.path().join("state"));

        let log = TestSigner::from_seed(&seed);
        let vkey = log.vkey().to_string();
        let store = Embedded::open(dir.path(), JournalOptions::default(), log, sealer()).unwrap();
        let (size, note) = store.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(size, 40);
        assert_eq!(note, before, "the same tree, signed again");
        let checkpoint = unefois_tlog::checkpoint::verify_checkpoint(&vkey, &note).unwrap();
        for (i, entry) in entries.iter().enumerate() {
            let i = i as u64;
            assert_eq!(
                store.entry(i).await.unwrap().as_ref(),
                Some(entry),
                "entry {i}"
            );
            let proof = store.inclusion_proof(i, size).await.unwrap();
            crate::tree::verify_inclusion(&proof, size, checkpoint.root, i, entry).unwrap();
        }
        let listed: Vec<Vec<u8>> = crate::all(store.entries_from(10))
            .await
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(listed, entries[10..]);
        // And it goes on from there.
        let seq = store.append_entry(record(40)).await.unwrap().seq;
        assert_eq!(seq, 40);
        store.close().await;
    }

    fn granted(id: &str, subject: &str, consumer: &str, types: &[&str], purpose: &str) -> Record {
        Record::now(Event::ConsentGranted {
            consent_id: id.into(),
            subject: Some(subject.into()),
            subject_sealed: None,
            pseudonym_key: "k1".into(),
            consumer: consumer.into(),
            participant: "guichet".into(),
            agent: None,
            attestation_types: types.iter().map(|t| t.to_string()).collect(),
            purpose: purpose.into(),
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(30),
            request_id: None,
            request_fingerprint: None,
            mandate_id: None,
        })
    }

    fn ids(consents: Vec<Consent>) -> Vec<String> {
        consents.into_iter().map(|c| c.id).collect()
    }

    #[tokio::test]
    async fn a_fetch_reads_the_consents_of_its_scope_only_and_an_older_layout_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [3; 32];
        let open = || open_store(dir.path(), &seed).unwrap();
        let store = open();
        let mut records = vec![
            granted("c1", "s1", "lyon", &["caf.qf", "dgfip.rfr"], "cantine"),
            granted("c2", "s1", "lyon", &["caf.qf"], "transport"),
            granted("c3", "s1", "paris", &["caf.qf"], "cantine"),
            granted("c4", "s2", "lyon", &["caf.qf"], "cantine"),
            granted("c6", "s10", "lyon", &["caf.qf"], "cantine"),
        ];
        // Many consents of other scopes: none of them is read for lyon's caf.qf for cantine.
        for i in 0..50 {
            records.push(granted(
                &format!("d{i:02}"),
                "s1",
                "lyon",
                &["mesr.se"],
                "cantine",
            ));
        }
        records.push(granted("c5", "s1", "lyon", &["caf.qf"], "cantine"));
        records.push(Record::now(Event::ConsentRevoked {
            consent_id: "c1".into(),
            participant: "guichet".into(),
            agent: None,
            ended_with_mandate: None,
            with_identity_evidence: false,
            ended_with_consent: None,
        }));
        store.append(records).await.unwrap();
        let scope = async |store: &Embedded| {
            store
                .consents_for("s1", "lyon", "caf.qf", "cantine")
                .await
                .unwrap()
        };
        let found = scope(&store).await;
        assert_eq!(
            ids(found.clone()),
            ["c1", "c5"],
            "oldest first, this scope only"
        );
        assert!(found[0].revoked_at.is_some(), "whatever their status");
        assert_eq!(
            ids(store
                .consents_for("s1", "lyon", "dgfip.rfr", "cantine")
                .await
                .unwrap()),
            ["c1"]
        );
        assert_eq!(
            ids(store
                .consents_for("s1", "lyo", "caf.qf", "cantine")
                .await
                .unwrap()),
            Vec::<String>::new()
        );
        let after = async |after: &str| -> Vec<String> {
            let found = store.consents_of_after("s1", after).await.unwrap();
            crate::all(found).await.into_iter().map(|c| c.id).collect()
        };
        let all = after("").await;
        assert_eq!(all.len(), 54, "s1's, not s10's: {all:?}");
        assert_eq!(all[..5], ["c1", "c2", "c3", "c5", "d00"]);
        assert_eq!(after("c5").await[..2], ["d00", "d01"], "after, exclusive");
        assert_eq!(after("d49").await, Vec::<String>::new());
        store.close().await;

        // A store built before the scope index: no layout recorded, no index. It is rebuilt
        // from the journal at open, not read as "no consent".
        {
            let db = open_derived_state(&dir.path().join("state")).unwrap();
            db.open_tree("meta").unwrap().remove(LAYOUT).unwrap();
            db.open_tree("consents_by_scope").unwrap().clear().unwrap();
            db.flush().unwrap();
        }
        let store = open();
        assert_eq!(ids(scope(&store).await), ["c1", "c5"]);
        assert_eq!(store.trees.layout().unwrap(), Some(CURRENT_LAYOUT));
        store.close().await;

        // A store of another layout is rebuilt too; one of this layout is not.
        {
            let db = open_derived_state(&dir.path().join("state")).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(LAYOUT, &1u32.to_be_bytes())
                .unwrap();
            db.open_tree("consents_by_scope").unwrap().clear().unwrap();
            db.flush().unwrap();
        }
        let store = open();
        assert_eq!(ids(scope(&store).await), ["c1", "c5"]);
        store.close().await;
        {
            let db = open_derived_state(&dir.path().join("state")).unwrap();
            db.open_tree("consents_by_scope").unwrap().clear().unwrap();
            db.flush().unwrap();
        }
        let store = open();
        assert_eq!(
            ids(scope(&store).await),
            Vec::<String>::new(),
            "a store of this layout is not rebuilt at every start"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn the_derived_files_are_rebuilt_from_the_journal_when_lost_cut_or_damaged() {
        // Lost.
        reopened_after(|state| {
            std::fs::remove_file(state.join(TREE_FILE)).unwrap();
            std::fs::remove_file(state.join(POSITIONS_FILE)).unwrap();
        })
        .await;
        // Cut short (never synced before a power loss): a hash and a half, three slots.
        reopened_after(|state| {
            let cut = |name: &str, by: u64| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(state.join(name))
                    .unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - by).unwrap();
            };
            cut(TREE_FILE, 48);
            cut(POSITIONS_FILE, 48);
        })
        .await;
        // Damaged in place: a hash of the right edge zeroed, then a position pointing elsewhere.
        reopened_after(|state| {
            let path = state.join(TREE_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = tlog_tiles::stored_hash_index(5, 0) as usize * 32;
            bytes[at..at + 32].fill(0);
            std::fs::write(&path, bytes).unwrap();
        })
        .await;
        reopened_after(|state| {
            let path = state.join(POSITIONS_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 24;
            bytes[last..].fill(0);
            std::fs::write(&path, bytes).unwrap();
        })
        .await;
    }

    /// Twenty records, each acknowledged.
    async fn append_twenty(store: &Embedded) {
        for i in 0..20u64 {
            store
                .append_entry(Record::now(Event::RegistryLoaded {
                    registry_sha256: format!("{i:064x}"),
                    files: Default::default(),
                }))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_journal_that_no_longer_gives_the_signed_tree_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [9; 32];
        let open = || open_store(dir.path(), &seed);
        let store = open().unwrap();
        append_twenty(&store).await;
        store.close().await;

        // Record 5 rewritten in place with a valid checksum, and the tree's file lost: the
        // rebuilt tree is not the one signed.
        let segment = dir
            .path()
            .join("journal")
            .join(format!("journal-{:020}.seg", 0));
        let mut bytes = std::fs::read(&segment).unwrap();
        let (mut at, mut seq) = (0usize, 0u64);
        while seq < 5 {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += 16 + len;
            seq += 1;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let payload = String::from_utf8(bytes[at + 16..at + 16 + len].to_vec())
            .unwrap()
            .replace(&format!("{:064x}", 5), &format!("{:064x}", 6));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&5u64.to_le_bytes()), payload.as_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        bytes[at + 16..at + 16 + len].copy_from_slice(payload.as_bytes());
        std::fs::write(&segment, bytes).unwrap();
        std::fs::remove_file(dir.path().join("state").join(TREE_FILE)).unwrap();

        match open() {
            Err(StoreError::Diverged { size }) => assert_eq!(size, 20),
            Err(other) => panic!("expected Diverged, got {other}"),
            Ok(_) => panic!("expected Diverged, the store opened"),
        }
    }

    #[tokio::test]
    async fn a_failed_derived_state_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), &[11; 32]).unwrap();
        assert!(store.health().await.ok);
        // A record the derived state cannot read fails its update.
        store
            .journal()
            .append(b"not a record".to_vec())
            .await
            .unwrap();
        let health = store.health().await;
        assert!(!health.ok, "{}", health.report);
        assert!(matches!(
            store
                .append_entry(Record::now(Event::RegistryLoaded {
                    registry_sha256: "0".repeat(64),
                    files: Default::default(),
                }))
                .await,
            Err(StoreError::Degraded)
        ));
    }

    #[tokio::test]
    async fn a_journal_shorter_than_what_was_acknowledged_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [10; 32];
        let open = || open_store(dir.path(), &seed);
        let store = open().unwrap();
        append_twenty(&store).await;
        let (size, _) = store.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(size, 20);
        store.close().await;

        // The segment loses its last byte: the journal takes record 19 for a torn tail and cuts
        // it, though it was acknowledged and signed.
        let segment = dir
            .path()
            .join("journal")
            .join(format!("journal-{:020}.seg", 0));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len - 1).unwrap();
        drop(file);

        // Refused, and again at the next try: the witness is not thrown away by the first.
        for _ in 0..2 {
            match open() {
                Err(
                    e @ StoreError::JournalShort {
                        journal,
                        acknowledged,
                    },
                ) => {
                    assert_eq!((journal, acknowledged), (19, 20));
                    let said = e.to_string();
                    assert!(
                        said.contains("fewer than the 20 this broker acknowledged")
                            && said.contains("restore the data directory from a backup"),
                        "{said}"
                    );
                }
                Err(other) => panic!("expected JournalShort, got {other}"),
                Ok(store) => panic!(
                    "expected JournalShort, the store opened at {}",
                    store.journal().next_seq()
                ),
            }
        }
    }

    fn exchange_about(subject: &str) -> Record {
        use crate::event::{ExchangeEvent, Outcome};
        Record::now(Event::Exchange(Box::new(ExchangeEvent {
            outcome: Outcome::Granted,
            reason: None,
            participant: "mairie-lyon".into(),
            agent: None,
            subject: Some(subject.into()),
            subject_sealed: None,
            pseudonym_key: None,
            attestation_type: "dgfip.revenu_fiscal_reference".into(),
            purpose: "tarification_cantine".into(),
            legal_basis: None,
            habilitation: None,
            mandate_id: None,
            attestation_id: None,
            payload_sha256: None,
            provider: None,
            derived_rules: Vec::new(),
            request_id: None,
            registry_sha256: "00".into(),
            prefill_id: None,
            request_fingerprint: None,
            retry_of: None,
        })))
    }

    #[tokio::test]
    async fn sealed_subjects_are_indexed_and_consents_end_with_their_mandate() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), &[4; 32]).unwrap();
        let seal = sealer();
        let person = "ab".repeat(32);
        let now = time::OffsetDateTime::now_utc();
        let mandate = Record::now(Event::MandateCreated {
            mandate_id: "m1".into(),
            subject: None,
            subject_sealed: Some(seal.seal(&person)),
            pseudonym_key: "k".into(),
            structure: "fs".into(),
            agent: "a".into(),
            purposes: vec!["cantine".into()],
            duration_days: 1,
            document_sha256: "00".into(),
            expires_at: now + time::Duration::days(1),
            request_id: None,
            request_fingerprint: None,
        });
        let consent = |id: &str, mandate_id: Option<&str>, participant: &str| {
            Record::now(Event::ConsentGranted {
                consent_id: id.into(),
                subject: None,
                subject_sealed: Some(seal.seal(&person)),
                pseudonym_key: "k".into(),
                consumer: "lyon".into(),
                participant: participant.into(),
                agent: None,
                attestation_types: vec!["caf.qf".into()],
                purpose: "cantine".into(),
                expires_at: now + time::Duration::days(365),
                request_id: None,
                request_fingerprint: None,
                mandate_id: mandate_id.map(str::to_string),
            })
        };
        let mut exchange = exchange_about("unused");
        if let Event::Exchange(x) = &mut exchange.event {
            x.subject = None;
            x.subject_sealed = Some(seal.seal(&person));
        }
        let seqs = store
            .append(vec![
                mandate,
                consent("c1", Some("m1"), "fs"),
                consent("c2", None, "villeurbanne"),
                exchange,
            ])
            .await
            .unwrap();
        // Opened from their seals: the person's consents, mandate and exchange.
        assert_eq!(
            store.exchanges_about(&person, None, 10).await.unwrap(),
            [seqs[3]]
        );
        assert_eq!(
            ids(store
                .consents_for(&person, "lyon", "caf.qf", "cantine")
                .await
                .unwrap()),
            ["c1", "c2"]
        );
        // Capped at the mandate's expiry, even though the record asked for a year.
        let c1 = store.consent("c1").await.unwrap().unwrap();
        assert!(c1.expires_at <= now + time::Duration::days(1));
        // What each party may see: the recorder and the consumer, nobody else.
        let seen = async |party: &str| -> Vec<String> {
            let found = store.consents_seen_by_after(party, &person, "").await;
            crate::all(found.unwrap())
                .await
                .into_iter()
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(seen("lyon").await, ["c1", "c2"]);
        assert_eq!(seen("fs").await, ["c1"]);
        assert_eq!(seen("villeurbanne").await, ["c2"]);
        assert!(seen("caf").await.is_empty());
        assert_eq!(
            ids(store.consents_under_mandate("m1").await.unwrap()),
            ["c1"]
        );
        // The mandate revoked: the consent recorded under it ends with it, the other stays.
        store
            .append(vec![Record::now(Event::MandateRevoked {
                mandate_id: "m1".into(),
                participant: "fs".into(),
                agent: Some("a".into()),
            })])
            .await
            .unwrap();
        assert!(
            store
                .consent("c1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        assert!(
            store
                .consent("c2")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none()
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_subjects_exchanges_are_walked_newest_first_across_batches_restarts_and_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let open = || open_store(dir.path(), &[3; 32]).unwrap();
        let store = open();
        let (mut alice, mut bob) = (Vec::new(), Vec::new());
        for round in 0..5 {
            // Several exchanges about one subject in one batch, and others in between.
            let seqs = store
                .append(vec![
                    exchange_about("alice"),
                    exchange_about("bob"),
                    exchange_about("alice"),
                    Record::now(Event::BrokerStopped {}),
                ])
                .await
                .unwrap();
            alice.extend([seqs[0], seqs[2]]);
            bob.push(seqs[1]);
            if round % 2 == 0 {
                let seq = store
                    .append_entry(exchange_about("alice"))
                    .await
                    .unwrap()
                    .seq;
                alice.push(seq);
            }
        }
        alice.reverse();
        bob.reverse();
        let check = async |store: &Embedded| {
            assert_eq!(
                store.exchanges_about("alice", None, 100).await.unwrap(),
                alice
            );
            assert_eq!(store.exchanges_about("bob", None, 100).await.unwrap(), bob);
            assert_eq!(
                store.exchanges_about("carol", None, 100).await.unwrap(),
                Vec::<u64>::new()
            );
            assert_eq!(
                store.exchanges_about("alice", None, 3).await.unwrap(),
                alice[..3]
            );
            let before = alice[4];
            assert_eq!(
                store
                    .exchanges_about("alice", Some(before), 2)
                    .await
                    .unwrap(),
                alice[5..7]
            );
        };
        check(&store).await;
        store.close().await;
        let store = open();
        check(&store).await;
        store.close().await;
        // The derived state lost: the chains are rebuilt from the journal.
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        let store = open();
        check(&store).await;
        store.close().await;
    }
}

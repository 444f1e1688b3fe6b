//! The `Store` boundary (crate `unefois-store`): what the broker needs of its storage, whatever
//! keeps it. `append`
//! returns only once the records are durable, applied to every read model (through the domain's
//! `projection`) and covered by a signed checkpoint; every read sees at least every acknowledged
//! append. Two backends: [`Embedded`] (journal + sled + the tree and positions files, the
//! default) and [`Memory`] (nothing on disk: unit tests); the contract tests run both. Backup and
//! restore of an embedded data directory ([`backup`]) and the names of its key files
//! ([`key_files`]) live here too: what the data directory holds is the store's.

#![forbid(unsafe_code)]

pub mod backup;
#[cfg(test)]
mod contract;
mod embedded;
mod error;
mod evidence_uses;
pub mod key_files;
pub mod limits;
mod memory;
pub mod metrics;
mod positions;
pub mod postgres;
mod reserve;
mod serialised;
#[cfg(test)]
mod test_signer;
pub mod tree;

// What the backends name by these paths: the domain's models and rules, the journal.
use unefois_domain::{caller, consent, event, identity, mandate, policy, projection, seal};
use unefois_journal::{self as journal, private};

use crate::consent::Consent;
use crate::event::{Event, Record, RecordedKeys, RecordedRegistry};
use crate::identity::{IdentityError, Verified};
use crate::mandate::Mandate;
use crate::projection::RequestUse;

pub use embedded::{DEFAULT_CACHE_BYTES, Embedded, recorded_keys_in_journal};
pub use error::StoreError;
pub use limits::LimitUse;
pub use memory::Memory;
pub use positions::{Positions, Slot};
pub use postgres::Postgres;
pub use serialised::{Held, HoldToken, Serialised};

/// Items read as the caller goes (a page costs what it reads), each of which may fail.
pub type Items<'a, T> = futures::stream::BoxStream<'a, Result<T, StoreError>>;

/// Items from an iterator already at hand (the embedded and in-memory backends read as they
/// go without waiting).
fn stream<'a, T: Send + 'a>(
    items: impl Iterator<Item = Result<T, StoreError>> + Send + 'a,
) -> Items<'a, T> {
    use futures::StreamExt;
    futures::stream::iter(items).boxed()
}

/// Every item, for tests (any failure fails the test).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
async fn all<T>(items: Items<'_, T>) -> Vec<T> {
    use futures::StreamExt;
    items.map(Result::unwrap).collect().await
}

/// The first `size` items that `keep` selects, and the id of the last one when more follow (the
/// next page's token; empty at the end): a page read as it goes.
pub async fn page<T>(
    mut items: Items<'_, T>,
    size: usize,
    keep: impl Fn(&T) -> bool,
    id: impl Fn(&T) -> &str,
) -> Result<(Vec<T>, String), StoreError> {
    use futures::StreamExt;
    let mut page = Vec::with_capacity(size);
    while let Some(item) = items.next().await {
        let item = item?;
        if !keep(&item) {
            continue;
        }
        if page.len() == size {
            let next = page.last().map(|last| id(last).to_string());
            return Ok((page, next.unwrap_or_default()));
        }
        page.push(item);
    }
    Ok((page, String::new()))
}

/// Signs the log's checkpoints: the broker's log key (the store holds no key, and no signer's
/// crypto library).
pub trait CheckpointSigner: Send + Sync {
    /// The signed note (C2SP) of the checkpoint of a tree of `size` leaves with root `root`;
    /// deterministic: the same size and root give the same note.
    fn sign(&self, size: u64, root: [u8; 32]) -> String;
    /// The C2SP verifier key of the log key.
    fn vkey(&self) -> &str;
}

/// An entry just appended: its leaf index and exact bytes (what a receipt shows, without reading
/// it back), and, when the backend has them at hand, a signed tree that holds it.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Its leaf index (journal sequence number).
    pub seq: u64,
    /// Its exact bytes.
    pub entry: Vec<u8>,
    /// A checkpoint that covers it and its inclusion proof there (PostgreSQL: computed in the
    /// transaction that appended it, so a receipt costs no read).
    pub proven: Option<Proven>,
}

/// An entry's place in a signed tree.
#[derive(Clone, Debug)]
pub struct Proven {
    /// The tree's size.
    pub tree_size: u64,
    /// Its signed checkpoint.
    pub checkpoint: String,
    /// The entry's inclusion proof in it.
    pub inclusion_proof: Vec<[u8; 32]>,
}

/// What the store says of its own health, for the operational probe (`/readyz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// Whether it can serve: reachable, and (PostgreSQL) on the primary.
    pub ok: bool,
    /// One line for operators: the backend, where, and its replication state.
    pub report: String,
}

/// Whose mandates to read.
#[derive(Clone, Copy, Debug)]
pub enum MandatesOf<'k> {
    /// A subject's, by audit pseudonym.
    Subject(&'k str),
    /// A mediation structure's, by participant id.
    Structure(&'k str),
}

/// What the broker needs of its storage: appends that are durable before they are answered,
/// the read models the policy and the lists read, and the log's entries, checkpoints and
/// proofs.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The key ids the journal last recorded (its latest `broker_started` entry with them), as
    /// applied to the derived state; `None` when no entry recorded any.
    async fn recorded_keys(&self) -> Result<Option<RecordedKeys>, StoreError>;

    /// The registry the log last recorded (its latest `registry_loaded` entry), as applied to
    /// the derived state; `None` when no entry recorded one.
    async fn recorded_registry(&self) -> Result<Option<RecordedRegistry>, StoreError>;

    /// Appends one record; returns its sequence number and exact entry bytes once it is durable
    /// and applied (what a receipt shows, without reading it back).
    async fn append_entry(&self, record: Record) -> Result<Appended, StoreError>;

    /// Appends records, in order; returns their sequence numbers once they are durable, applied
    /// to every read model and covered by a signed checkpoint.
    async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, StoreError>;

    /// A consent by id.
    async fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError>;

    /// The consents of a subject (by audit pseudonym) after the consent id `after` (exclusive;
    /// from the first when empty), oldest first, read as the caller goes: a page of a long
    /// history costs what it reads, not the whole history.
    async fn consents_of_after<'a>(
        &'a self,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError>;

    /// The consents of a subject (by audit pseudonym) that `party` recorded or is the consumer
    /// of, after the consent id `after` (exclusive; from the first when empty), oldest first:
    /// what that party may see, read without touching the person's other consents.
    async fn consents_seen_by_after<'a>(
        &'a self,
        party: &str,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError>;

    /// The consents recorded under a mandate (by an agent acting for the person), oldest
    /// first: they end with it.
    async fn consents_under_mandate(&self, mandate_id: &str) -> Result<Vec<Consent>, StoreError>;

    /// The consents of a subject (by audit pseudonym) to this consumer, for this type and
    /// purpose, oldest first: the only ones that may be the basis of its fetch. Whatever their
    /// status; however many consents of other scopes the subject holds.
    async fn consents_for(
        &self,
        subject: &str,
        consumer: &str,
        attestation_type: &str,
        purpose: &str,
    ) -> Result<Vec<Consent>, StoreError>;

    /// A mandate by id.
    async fn mandate(&self, id: &str) -> Result<Option<Mandate>, StoreError>;

    /// The mandates of a subject (by audit pseudonym) or of a mediation structure, after the
    /// mandate id `after` (exclusive; from the first when empty), oldest first, read as the
    /// caller goes (see [`Store::consents_of_after`]).
    async fn mandates_after<'a>(
        &'a self,
        of: MandatesOf<'_>,
        after: &str,
    ) -> Result<Items<'a, Mandate>, StoreError>;

    /// Returns once every write the reads before the call may have seen is durable; fails
    /// (the store unavailable) when it is not. An answer given without an append of its own (a
    /// retry answered from what its first attempt recorded, a revocation already recorded) must
    /// not rest on a record a failover could lose: on PostgreSQL, a COMMIT whose wait for the
    /// standby was cancelled shows on the primary alone. The other backends read only durable
    /// records.
    async fn reads_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Returns once every append this broker submitted before has its outcome (durable and
    /// applied, or failed), whether or not its caller still waits: an act that failed or was
    /// dropped midway keeps its hold until then ([`Serialised`]). The in-memory backend
    /// answers its appends before it returns.
    async fn settled(&self) {}

    /// Spends one of the acts an ID token allows (`max_acts_per_token`) at `now` (Unix
    /// seconds), counted for every broker of this store: `Ok(Err(_))` when the token cannot
    /// prove one more (exhausted, or its count was not kept), `Err(_)` when the store failed.
    /// The embedded and in-memory backends count in memory, from when they were opened; on
    /// PostgreSQL every broker counts in one table.
    async fn spend_act(
        &self,
        token: &Verified,
        now: i64,
    ) -> Result<Result<(), IdentityError>, StoreError>;

    /// Shares the counts of its limits that `broker` (its id for this run, in each row of
    /// `mine`) changed with the other brokers of this store, and answers theirs, those changed
    /// lately (a row may come again: counts are cumulative). `None` when no other broker can
    /// share the store (the embedded and in-memory backends): nothing to share, now or later.
    async fn share_limits(
        &self,
        broker: &str,
        mine: &LimitUse,
    ) -> Result<Option<LimitUse>, StoreError> {
        let _ = (broker, mine);
        Ok(None)
    }

    /// Holds `keys` (a person's audit pseudonym, an actor's blinded request id) against every
    /// other broker of this store until the answer is released or dropped: acts that read, then
    /// record, about the same keys go one at a time across the cluster. Each broker also
    /// serialises its own acts; a store with one broker (the default) holds nothing more.
    async fn serialise(&self, keys: &[&str]) -> Result<Serialised, StoreError> {
        let _ = keys;
        Ok(Serialised::alone())
    }

    /// What `actor` ([`crate::caller::actor`]: a participant, or one of its agents) used `request_id` (as
    /// recorded: blinded) for, if it did.
    async fn request_use(
        &self,
        actor: &str,
        request_id: &str,
    ) -> Result<Option<RequestUse>, StoreError>;

    /// The first recorded Fetch of `actor` with this request id (as recorded: blinded): its
    /// fingerprint, and its leaf index as `result`.
    async fn fetch_request_use(
        &self,
        actor: &str,
        request_id_digest: &str,
    ) -> Result<Option<RequestUse>, StoreError> {
        self.request_use(
            actor,
            &crate::projection::fetch_request_key(request_id_digest),
        )
        .await
    }

    /// Journal sequence numbers of the exchanges about a subject (by audit pseudonym), newest
    /// first, before `before` (exclusive) when given, at most `limit` of them: a walk down the
    /// subject's chain.
    async fn exchanges_about(
        &self,
        subject: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// The exact bytes of audit entry (journal record) `index`, read from the journal.
    async fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Audit entries from `start`, in order: `(index, exact bytes)`, read from the journal.
    fn entries_from(&self, start: u64) -> Items<'_, (u64, Vec<u8>)>;

    /// The size of the log as the latest checkpoint states it, with that checkpoint.
    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;

    /// The signed checkpoint of the tree of `size` leaves (kept, or signed again: a checkpoint
    /// is deterministic), for any size up to the latest.
    async fn checkpoint_at(&self, size: u64) -> Result<String, StoreError>;

    /// The inclusion proof of entry `leaf` in the tree of `size` entries.
    async fn inclusion_proof(&self, leaf: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError>;

    /// The consistency proof from the tree of `first` entries to that of `second`.
    async fn consistency_proof(&self, first: u64, second: u64)
    -> Result<Vec<[u8; 32]>, StoreError>;

    /// The audit pseudonym of the person a record is about, opened from its seal (version 2)
    /// or as written (version 1).
    fn subject_of(&self, event: &Event) -> Option<String>;

    /// The log key's C2SP verifier key.
    fn log_vkey(&self) -> &str;

    /// Whether the store can serve, and what operators should know of it (the embedded
    /// backend is always there; a database is asked).
    async fn health(&self) -> StoreHealth {
        StoreHealth {
            ok: true,
            report: "store: embedded (journal in the data directory)".into(),
        }
    }

    /// Closes the store after the pending appends (the embedded backend then writes and flushes
    /// its derived state); appends after it fail.
    async fn close(&self);
}

/// The key [`Store::serialise`] holds for the acts about a person, by audit pseudonym; a
/// backend that commits their records after the hold ends (PostgreSQL, a broker gone mid-commit)
/// makes the next hold on it wait for them.
pub fn person_key(pseudonym: &str) -> String {
    format!("person\0{pseudonym}")
}

/// The key [`Store::serialise`] holds for the acts under a request id: `actor`'s (a participant,
/// or one of its agents), as recorded (blinded). Like [`person_key`], the next hold on it waits
/// for a record under it still committing.
pub fn request_key(actor: &str, request_id: &str) -> String {
    format!("request\0{actor}\0{request_id}")
}

/// Refuses a tree size beyond the latest checkpoint's (`latest` entries): no backend proves
/// anything about a tree it has not signed.
fn within(latest: u64, size: u64) -> Result<(), StoreError> {
    if size > latest {
        return Err(StoreError::OutOfRange(format!(
            "tree size {size} is beyond the log's {latest} entries"
        )));
    }
    Ok(())
}

/// The checkpoint of `size` leaves when it is the `latest` one; `None` when it is an earlier
/// size, to be signed again (a checkpoint is deterministic); or why there is none.
fn kept_checkpoint(latest: Option<(u64, String)>, size: u64) -> Result<Option<String>, StoreError> {
    let (latest, note) = latest.unwrap_or_default();
    if size == latest && latest > 0 {
        return Ok(Some(note));
    }
    if size == 0 || size > latest {
        return Err(StoreError::OutOfRange(format!(
            "no checkpoint of size {size}; the log has {latest} entries"
        )));
    }
    Ok(None)
}

/// The policy's facts, read from the store (lazily: a fetch on a legal basis reads no consent).
impl crate::policy::Facts for dyn Store + '_ {
    async fn mandate(&self, id: &str) -> Result<Option<Mandate>, unefois_domain::error::ApiError> {
        Ok(Store::mandate(self, id).await?)
    }

    async fn consents(
        &self,
        subject: &str,
        consumer: &str,
        attestation_type: &str,
        purpose: &str,
    ) -> Result<Vec<Consent>, unefois_domain::error::ApiError> {
        Ok(self
            .consents_for(subject, consumer, attestation_type, purpose)
            .await?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_stops_at_its_size_and_says_whether_more_follow() {
        let ids = ["a", "b", "c", "d", "e"];
        let items = || stream(ids.iter().map(|s| Ok(s.to_string())));
        let all = |_: &String| true;
        fn id(s: &String) -> &str {
            s
        }
        let got = page(items(), 2, all, id).await.unwrap();
        assert_eq!(got, (vec!["a".into(), "b".into()], "b".into()));
        let got = page(items(), 5, all, id).await.unwrap();
        assert_eq!(
            got,
            (ids.map(String::from).to_vec(), String::new()),
            "exactly a page: no next token"
        );
        // Skipped items neither fill the page nor make a next one.
        let not_b_or_e = |s: &String| s != "b" && s != "e";
        let got = page(items(), 3, not_b_or_e, id).await.unwrap();
        assert_eq!(
            got,
            (vec!["a".into(), "c".into(), "d".into()], String::new())
        );
        let failing = vec![Ok("a".to_string()), Err(StoreError::Degraded)];
        assert!(page(stream(failing.into_iter()), 5, all, id).await.is_err());
    }
}

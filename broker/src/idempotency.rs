//! Idempotent requests. Fetch: a retry with the same request id and the same request, within a
//! short window, gets the same answer; answers carry claim values, so they are kept in memory
//! only, bounded in time and in number, and never written anywhere. Consents and mandates: the
//! request id is recorded with what it created ([`create_once`]), so a retry gets it back even
//! after a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::event::RecordedBasis;
use crate::fetched::Fetched;
use crate::policy::FetchInput;

/// What [`create_once`] creates: by whom, about whom, under which request id.
pub struct Creation<'a> {
    /// A participant, or one of its agents.
    pub actor: &'a str,
    /// The person it is about, by audit pseudonym.
    pub person: &'a str,
    /// The request id, as given and as recorded (blinded), if the caller sent one.
    pub request_id: Option<(&'a str, &'a str)>,
    /// The request's fingerprint: a retry has the same, another request another.
    pub fingerprint: &'a str,
}

/// Creates something (a consent, a mandate) about `person` (by audit pseudonym) at most once
/// per actor (a participant, or one of its agents) and request id (`(as given, as recorded)`):
/// without a request id, `create` runs; with one recorded for the same request (same
/// `fingerprint`), what it created is returned (`find` by its id); recorded for another request,
/// REQUEST_ID_REUSED. Creations are serialised from the check to the record, in this broker
/// (under `serialised_here`, the state's `grants`) and across the brokers of a cluster (the store
/// holds the person and the request id): concurrent retries, wherever they arrive, find one
/// record, and what `create` reads (a consent in force for the same scope) cannot change under
/// it.
pub async fn create_once<T, Found, Fut>(
    store: &Arc<dyn crate::store::Store>,
    serialised_here: &crate::act_locks::ActLocks,
    creation: Creation<'_>,
    find: impl FnOnce(String) -> Found,
    create: impl FnOnce() -> Fut,
) -> Result<T, crate::error::ApiError>
where
    Found: std::future::Future<Output = Result<Option<T>, crate::store::StoreError>>,
    Fut: std::future::Future<Output = Result<T, crate::error::ApiError>>,
{
    use crate::error::ApiError;
    let Creation {
        actor,
        person,
        request_id,
        fingerprint,
    } = creation;
    let request = request_id.map(|(_, recorded)| crate::store::request_key(actor, recorded));
    serialised(store, serialised_here, person, request.as_deref(), async {
        if let Some((given, recorded)) = request_id
            && let Some(used) = store.request_use(actor, recorded).await?
        {
            if used.fingerprint != fingerprint {
                return Err(ApiError::RequestIdReused(given.to_string()));
            }
            let found = find(used.result).await?.ok_or(ApiError::StoreUnavailable)?;
            // Answered without an append: only once what the first attempt recorded is durable.
            store.reads_durable().await?;
            return Ok(found);
        }
        create().await
    })
    .await
}

/// How long an act waits for this broker's other acts about the same person or request id:
/// past it, the store is taken for unavailable (an act whose record's outcome is not known yet
/// holds the others, see [`serialised`]), as an act waiting for another broker's is after the
/// append timeout.
const WAIT_FOR_OTHER_ACTS: Duration = Duration::from_secs(10);

/// Runs `act`, an act that reads then records about `person` (by audit pseudonym; and under
/// `request`, a request id's key, if any), serialised with every other such act about the same
/// person or request id: in this broker under `here` (the state's `grants`, a lock per key),
/// across the brokers of a cluster held by the store. The
/// hold ends at once when the act succeeded or was refused; when the store failed under it
/// (maybe an append that timed out and may still commit) or it is dropped midway (its caller
/// went away while its record was queued), once the store has the outcome of its appends: a
/// retry must not read before it.
pub async fn serialised<T>(
    store: &Arc<dyn crate::store::Store>,
    here: &crate::act_locks::ActLocks,
    person: &str,
    request: Option<&str>,
    act: impl std::future::Future<Output = Result<T, crate::error::ApiError>>,
) -> Result<T, crate::error::ApiError> {
    let person = crate::store::person_key(person);
    let keys: Vec<&str> = std::iter::once(person.as_str()).chain(request).collect();
    let here = tokio::time::timeout(WAIT_FOR_OTHER_ACTS, here.hold(&keys))
        .await
        .map_err(|_| {
            tracing::warn!(
                waited = ?WAIT_FOR_OTHER_ACTS,
                "an act waited too long for this broker's other acts; answering STORE_UNAVAILABLE"
            );
            crate::error::ApiError::StoreUnavailable
        })?;
    let across = store.serialise(&keys).await?;
    // The act's appends carry the hold across brokers: not committed once it has ended.
    let act = across.during(act);
    let hold = Hold {
        held: Some((across, here)),
        store: store.clone(),
    };
    let done = act.await;
    // A refusal was decided before any append; a store failure may have one still committing.
    if !matches!(done, Err(crate::error::ApiError::StoreUnavailable)) {
        hold.release().await;
    }
    done
}

/// An act's hold, here and across the brokers. Dropped rather than released, it ends once the
/// store has the outcome of every append submitted before.
struct Hold {
    held: Option<(crate::store::Serialised, crate::act_locks::Held)>,
    store: Arc<dyn crate::store::Store>,
}

impl Hold {
    /// Ends the hold now: the act's appends were answered.
    async fn release(mut self) {
        if let Some((across, _here)) = self.held.take() {
            across.release().await;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some((across, here)) = self.held.take() else {
            return;
        };
        // Outside a runtime (the process ending), both go now.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        runtime.spawn(async move {
            store.settled().await;
            across.release().await;
            drop(here);
        });
    }
}

/// How long an answer is kept for retries.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(120);
/// Most answers kept at once (the oldest go first).
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Most answers kept for one actor: one participant's retries never push another's out.
pub const DEFAULT_PER_ACTOR: usize = DEFAULT_CAPACITY / 8;

type Key = (String, String);

struct Kept {
    fingerprint: [u8; 32],
    answer: Arc<Fetched>,
    at: Instant,
}

/// What a request id was last used for, per caller.
pub enum Previous {
    /// Never seen (or forgotten): serve it.
    New,
    /// The same request: here is its answer again.
    Same(Arc<Fetched>),
    /// The id was used for another request.
    Different,
}

/// Recent granted Fetch answers by (actor, request id): bounded in time, in number, and per
/// actor; dropped when a revocation covers them.
pub struct RecentAnswers {
    window: Duration,
    capacity: usize,
    per_actor: usize,
    inner: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    kept: HashMap<Key, Kept>,
    /// Every key, oldest first (with when it was kept: a key kept again is a new entry).
    order: VecDeque<(Instant, Key)>,
    /// Each actor's request ids, oldest first.
    by_actor: HashMap<String, VecDeque<(Instant, String)>>,
}

impl Index {
    /// Forgets `key` if it is still the answer kept at `at`.
    fn drop_if_kept_at(&mut self, key: &Key, at: Instant) {
        if self.kept.get(key).is_some_and(|k| k.at == at) {
            self.kept.remove(key);
        }
    }
}

/// The digest that tells a retry from a different request with the same id.
pub fn fingerprint(input: &FetchInput) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        &input.subject,
        &input.attestation_type,
        &input.purpose,
        &input.mandate_id,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    for claim in &input.claims {
        h.update((claim.len() as u64).to_be_bytes());
        h.update(claim.as_bytes());
    }
    h.finalize().into()
}

impl RecentAnswers {
    /// Keeps answers for `window`, at most `capacity` of them and `per_actor` of one actor.
    pub fn new(window: Duration, capacity: usize, per_actor: usize) -> RecentAnswers {
        RecentAnswers {
            window,
            capacity,
            per_actor: per_actor.max(1),
            inner: Mutex::new(Index::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expire(&self, index: &mut Index) {
        let now = Instant::now();
        while let Some((at, _)) = index.order.front() {
            if now.duration_since(*at) < self.window && index.kept.len() <= self.capacity {
                break;
            }
            if let Some((at, key)) = index.order.pop_front() {
                index.drop_if_kept_at(&key, at);
                if let Some(queue) = index.by_actor.get_mut(&key.0) {
                    while queue.front().is_some_and(|(t, _)| *t <= at) {
                        queue.pop_front();
                    }
                    if queue.is_empty() {
                        index.by_actor.remove(&key.0);
                    }
                }
            }
        }
    }

    /// What `actor` last did with `request_id`.
    pub fn previous(&self, actor: &str, request_id: &str, fingerprint: &[u8; 32]) -> Previous {
        let mut index = self.lock();
        self.expire(&mut index);
        match index.kept.get(&(actor.to_string(), request_id.to_string())) {
            None => Previous::New,
            Some(kept) if kept.fingerprint == *fingerprint => Previous::Same(kept.answer.clone()),
            Some(_) => Previous::Different,
        }
    }

    /// Keeps a granted answer for retries; past its share, the actor's oldest answer goes.
    pub fn keep(&self, actor: &str, request_id: &str, fingerprint: [u8; 32], answer: Arc<Fetched>) {
        let mut index = self.lock();
        let at = Instant::now();
        let key = (actor.to_string(), request_id.to_string());
        index.order.push_back((at, key.clone()));
        let queue = index.by_actor.entry(actor.to_string()).or_default();
        queue.push_back((at, request_id.to_string()));
        let mut evicted = Vec::new();
        while queue.len() > self.per_actor {
            if let Some((t, id)) = queue.pop_front() {
                evicted.push((t, id));
            }
        }
        for (t, id) in evicted {
            index.drop_if_kept_at(&(actor.to_string(), id), t);
        }
        index.kept.insert(
            key,
            Kept {
                fingerprint,
                answer,
                at,
            },
        );
        self.expire(&mut index);
    }

    /// Drops the answers given under a consent (it was revoked): a retry is decided again.
    pub fn forget_consent(&self, consent_id: &str) {
        self.lock().kept.retain(|_, k| {
            !matches!(
                &k.answer.attestation.legal_basis,
                RecordedBasis::Consent { consent_id: c } if c == consent_id
            )
        });
    }

    /// Drops the answers given under a mandate (it was revoked): a retry is decided again.
    pub fn forget_mandate(&self, mandate_id: &str) {
        self.lock()
            .kept
            .retain(|_, k| k.answer.attestation.mandate_id.as_deref() != Some(mandate_id));
    }

    /// Drops every answer (the registry they were given under was replaced).
    pub fn clear(&self) {
        *self.lock() = Index::default();
    }
}

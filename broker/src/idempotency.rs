//! Idempotent requests. Fetch: a retry with the same request id and the same request, within a
//! short window, gets the same answer; answers carry claim values, so they are kept in memory
//! only, bounded in time and in number, and never written anywhere. Consents and mandates: the
//! request id is recorded with what it created ([`create_once`]), so a retry gets it back even
//! after a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::exchange::{FetchInput, Fetched};

/// Creates something (a consent, a mandate) at most once per caller and request id: without a
/// request id, `create` runs; with one recorded for the same request (same `fingerprint`), what
/// it created is returned (`find` by its id); recorded for another request, REQUEST_ID_REUSED.
/// Concurrent retries are serialised from the check to the record.
pub async fn create_once<T, Fut>(
    state: &crate::state::State,
    participant: &str,
    request_id: Option<&String>,
    fingerprint: &str,
    find: impl Fn(&str) -> Result<Option<T>, crate::store::StoreError>,
    create: impl FnOnce() -> Fut,
) -> Result<T, crate::error::ApiError>
where
    Fut: std::future::Future<Output = Result<T, crate::error::ApiError>>,
{
    use crate::error::ApiError;
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "cannot read the request index");
        ApiError::StoreUnavailable
    };
    let _serialised = match request_id {
        Some(_) => Some(state.grants.lock().await),
        None => None,
    };
    if let Some(id) = request_id
        && let Some(used) = state
            .store
            .request_use(participant, id)
            .map_err(unavailable)?
    {
        if used.fingerprint != fingerprint {
            return Err(ApiError::RequestIdReused(id.clone()));
        }
        return find(&used.result)
            .map_err(unavailable)?
            .ok_or(ApiError::StoreUnavailable);
    }
    create().await
}

/// How long an answer is kept for retries.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(120);
/// Most answers kept at once (the oldest go first).
pub const DEFAULT_CAPACITY: usize = 10_000;

type Key = (String, String);

struct Kept {
    fingerprint: [u8; 32],
    answer: Arc<Fetched>,
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

/// Recent granted Fetch answers by (caller, request id).
pub struct RecentAnswers {
    window: Duration,
    capacity: usize,
    inner: Mutex<Index>,
}

/// The kept answers, and their keys oldest first.
type Index = (HashMap<Key, Kept>, VecDeque<(Instant, Key)>);

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
    /// Keeps answers for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> RecentAnswers {
        RecentAnswers {
            window,
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn expire(&self, map: &mut HashMap<Key, Kept>, order: &mut VecDeque<(Instant, Key)>) {
        let now = Instant::now();
        while let Some((at, _)) = order.front() {
            if now.duration_since(*at) < self.window && map.len() <= self.capacity {
                break;
            }
            if let Some((_, key)) = order.pop_front() {
                map.remove(&key);
            }
        }
    }

    /// What `caller` last did with `request_id`.
    pub fn previous(&self, caller: &str, request_id: &str, fingerprint: &[u8; 32]) -> Previous {
        let Ok(mut guard) = self.inner.lock() else {
            return Previous::New;
        };
        let (map, order) = &mut *guard;
        self.expire(map, order);
        match map.get(&(caller.to_string(), request_id.to_string())) {
            None => Previous::New,
            Some(kept) if kept.fingerprint == *fingerprint => Previous::Same(kept.answer.clone()),
            Some(_) => Previous::Different,
        }
    }

    /// Keeps a granted answer for retries.
    pub fn keep(
        &self,
        caller: &str,
        request_id: &str,
        fingerprint: [u8; 32],
        answer: Arc<Fetched>,
    ) {
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let (map, order) = &mut *guard;
        let key = (caller.to_string(), request_id.to_string());
        order.push_back((Instant::now(), key.clone()));
        map.insert(
            key,
            Kept {
                fingerprint,
                answer,
            },
        );
        self.expire(map, order);
    }
}

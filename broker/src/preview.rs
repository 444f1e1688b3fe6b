//! Previews (the EU once-only rule's explicit request and preview): values retrieved for the
//! citizen to check are held here, in memory only, bounded in time and number, until the
//! citizen confirms them (they become signed attestations), rejects them, or they expire.
//! Nothing of an open preview is ever written anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::error::ApiError;
use crate::exchange::{Fetched, Previewed};

/// How long a preview waits for the citizen's decision.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Most previews held at once.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Where a preview stands.
#[derive(Clone, Debug)]
pub enum PreviewState {
    /// Waiting for the citizen.
    Open(Vec<Previewed>),
    /// Confirmed: the attestations issued (a repeated Confirm gets them again).
    Confirmed(Vec<Arc<Fetched>>),
    /// Rejected: nothing was released.
    Rejected,
}

/// One preview of a form for one caller.
#[derive(Clone, Debug)]
pub struct Preview {
    /// The participant that asked for it; nobody else may confirm it.
    pub participant: String,
    /// The subject's audit pseudonym.
    pub subject: String,
    /// The form id.
    pub form: String,
    /// Open, confirmed or rejected.
    pub state: PreviewState,
    /// When it is forgotten.
    pub expires_at: OffsetDateTime,
    deadline: Instant,
}

impl Preview {
    /// A new open preview, forgotten after `ttl`.
    pub fn open(
        participant: &str,
        subject: String,
        form: &str,
        items: Vec<Previewed>,
        ttl: Duration,
    ) -> Preview {
        Preview {
            participant: participant.to_string(),
            subject,
            form: form.to_string(),
            state: PreviewState::Open(items),
            expires_at: OffsetDateTime::now_utc() + ttl,
            deadline: Instant::now() + ttl,
        }
    }
}

/// The previews held, by prefill id.
pub struct Previews {
    ttl: Duration,
    capacity: usize,
    held: Mutex<HashMap<String, Preview>>,
}

impl Previews {
    /// Holds previews for `ttl`, at most `capacity` at once.
    pub fn new(ttl: Duration, capacity: usize) -> Previews {
        Previews {
            ttl,
            capacity,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// How long a preview is held.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Preview>> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        held.retain(|_, p| p.deadline > now);
        held
    }

    /// Holds a preview under `id`; refused when too many are waiting.
    pub fn hold(&self, id: &str, preview: Preview) -> Result<(), ApiError> {
        let mut held = self.lock();
        if held.len() >= self.capacity {
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_secs(1),
            });
        }
        held.insert(id.to_string(), preview);
        Ok(())
    }

    /// Takes preview `id` of `participant` out, once `check` accepts it (otherwise it stays).
    pub fn take(
        &self,
        id: &str,
        participant: &str,
        check: impl FnOnce(&Preview) -> Result<(), ApiError>,
    ) -> Result<Preview, ApiError> {
        let mut held = self.lock();
        let Some(preview) = held.get(id).filter(|p| p.participant == participant) else {
            return Err(ApiError::UnknownPrefill(id.to_string()));
        };
        check(preview)?;
        held.remove(id)
            .ok_or_else(|| ApiError::UnknownPrefill(id.to_string()))
    }

    /// Puts a preview back (closed, or open again), keeping its original expiry.
    pub fn put_back(&self, id: &str, preview: Preview) {
        self.lock().insert(id.to_string(), preview);
    }

    /// How many previews are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn preview(participant: &str, ttl: Duration) -> Preview {
        Preview::open(participant, "p".into(), "form", Vec::new(), ttl)
    }

    #[test]
    fn a_preview_is_only_taken_by_its_participant_and_forgotten_after_its_ttl() {
        let previews = Previews::new(Duration::from_millis(50), 10);
        previews
            .hold("a", preview("mairie-lyon", Duration::from_secs(60)))
            .unwrap();
        assert!(matches!(
            previews.take("a", "ccas-lyon", |_| Ok(())),
            Err(ApiError::UnknownPrefill(_))
        ));
        assert!(previews.take("a", "mairie-lyon", |_| Ok(())).is_ok());
        assert!(previews.is_empty());

        previews
            .hold("b", preview("mairie-lyon", Duration::from_millis(20)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(previews.is_empty());
    }

    #[test]
    fn previews_are_bounded_in_number() {
        let previews = Previews::new(Duration::from_secs(60), 2);
        for id in ["a", "b"] {
            previews
                .hold(id, preview("mairie-lyon", Duration::from_secs(60)))
                .unwrap();
        }
        assert!(matches!(
            previews.hold("c", preview("mairie-lyon", Duration::from_secs(60))),
            Err(ApiError::RateLimited { .. })
        ));
    }
}

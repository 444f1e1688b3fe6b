//! Previews (the EU once-only rule's explicit request and preview): values retrieved for the
//! citizen to check are held here, in memory only, bounded in time and number, until the
//! citizen confirms them (they become signed attestations), rejects them, or they expire.
//! Nothing of an open preview is ever written anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::error::ApiError;
use crate::fetched::{Fetched, Previewed};

/// How long a preview waits for the citizen's decision.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Most previews held at once.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Most previews one participant holds at once: a share of the capacity, so that one guichet
/// filling the table never refuses another's.
pub const DEFAULT_PER_PARTICIPANT: usize = DEFAULT_CAPACITY / 8;

pub use unefois_domain::prefill::Unfilled;

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
    /// The mandate an agent made it under, if any: its confirmation needs that mandate still in
    /// force (otherwise, the citizen's identity evidence).
    pub mandate_id: Option<String>,
    /// Open, confirmed or rejected.
    pub state: PreviewState,
    /// The form's types that gave no value to preview, by type, and why (refused or failed).
    pub unfilled: std::collections::BTreeMap<String, Unfilled>,
    /// A Confirm of it is under way: a concurrent one is told so.
    in_progress: bool,
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
        mandate_id: Option<String>,
        items: Vec<Previewed>,
        unfilled: std::collections::BTreeMap<String, Unfilled>,
        ttl: Duration,
    ) -> Preview {
        Preview {
            participant: participant.to_string(),
            subject,
            form: form.to_string(),
            mandate_id,
            state: PreviewState::Open(items),
            unfilled,
            in_progress: false,
            expires_at: OffsetDateTime::now_utc() + ttl,
            deadline: Instant::now() + ttl,
        }
    }
}

/// The previews held, by prefill id.
pub struct Previews {
    ttl: Duration,
    capacity: usize,
    per_participant: usize,
    held: Mutex<HashMap<String, Preview>>,
}

impl Previews {
    /// Holds previews for `ttl`, at most `capacity` at once and `per_participant` of one
    /// participant.
    pub fn new(ttl: Duration, capacity: usize, per_participant: usize) -> Previews {
        Previews {
            ttl,
            capacity,
            per_participant: per_participant.max(1),
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

    /// Holds a preview under `id`; refused when its participant holds its share already, or
    /// when the table is full.
    pub fn hold(&self, id: &str, preview: Preview) -> Result<(), ApiError> {
        let mut held = self.lock();
        let own: Vec<Instant> = held
            .values()
            .filter(|p| p.participant == preview.participant)
            .map(|p| p.deadline)
            .collect();
        if own.len() >= self.per_participant {
            let now = Instant::now();
            let first_free = own.into_iter().min().unwrap_or(now);
            return Err(ApiError::TooManyPreviews {
                participant: preview.participant,
                limit: self.per_participant,
                retry_after: first_free
                    .saturating_duration_since(now)
                    .max(Duration::from_secs(1)),
            });
        }
        if held.len() >= self.capacity {
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_secs(1),
            });
        }
        held.insert(id.to_string(), preview);
        Ok(())
    }

    /// Begins the confirmation of preview `id` of `participant`, once `check` accepts it: the
    /// preview stays held, marked as under way (a concurrent Confirm is told so), and a copy
    /// comes back to work on; [`Previews::finish`] or [`Previews::abandon`] ends it.
    pub fn begin(
        &self,
        id: &str,
        participant: &str,
        check: impl FnOnce(&Preview) -> Result<(), ApiError>,
    ) -> Result<Preview, ApiError> {
        let mut held = self.lock();
        let Some(preview) = held.get_mut(id).filter(|p| p.participant == participant) else {
            return Err(ApiError::UnknownPrefill(id.to_string()));
        };
        if preview.in_progress {
            return Err(ApiError::PrefillInProgress(id.to_string()));
        }
        check(preview)?;
        preview.in_progress = true;
        Ok(preview.clone())
    }

    /// The requests of preview `id` of `participant` about the person `subject` (audit
    /// pseudonym) still open: what a refused Confirm of it is recorded against. Empty when
    /// there is none.
    pub fn open_requests(
        &self,
        id: &str,
        participant: &str,
        subject: &str,
    ) -> Vec<crate::policy::FetchInput> {
        let held = self.lock();
        match held
            .get(id)
            .filter(|p| p.participant == participant && p.subject == subject)
            .map(|p| &p.state)
        {
            Some(PreviewState::Open(items)) => items.iter().map(|i| i.input.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Ends a confirmation: the preview as it now stands (closed, or open again) replaces the
    /// one held, keeping its original expiry.
    pub fn finish(&self, id: &str, mut preview: Preview) {
        preview.in_progress = false;
        let mut held = self.lock();
        if held.contains_key(id) {
            held.insert(id.to_string(), preview);
        }
    }

    /// Gives a confirmation up: the preview stays as it was, open to another try.
    pub fn abandon(&self, id: &str) {
        if let Some(p) = self.lock().get_mut(id) {
            p.in_progress = false;
        }
    }

    /// How many previews are held (for tests and metrics).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn preview(participant: &str, ttl: Duration) -> Preview {
        Preview::open(
            participant,
            "p".into(),
            "form",
            None,
            Vec::new(),
            Default::default(),
            ttl,
        )
    }

    #[test]
    fn a_preview_is_only_taken_by_its_participant_and_forgotten_after_its_ttl() {
        let previews = Previews::new(Duration::from_millis(50), 10, 10);
        previews
            .hold("a", preview("mairie-lyon", Duration::from_secs(60)))
            .unwrap();
        assert!(matches!(
            previews.begin("a", "ccas-lyon", |_| Ok(())),
            Err(ApiError::UnknownPrefill(_))
        ));
        let taken = previews.begin("a", "mairie-lyon", |_| Ok(())).unwrap();
        assert!(matches!(
            previews.begin("a", "mairie-lyon", |_| Ok(())),
            Err(ApiError::PrefillInProgress(_))
        ));
        previews.finish("a", taken);
        assert!(previews.begin("a", "mairie-lyon", |_| Ok(())).is_ok());
        previews.abandon("a");
        assert!(previews.begin("a", "mairie-lyon", |_| Ok(())).is_ok());

        assert_eq!(previews.len(), 1, "a confirmation keeps its preview held");

        let previews = Previews::new(Duration::from_millis(50), 10, 10);
        previews
            .hold("b", preview("mairie-lyon", Duration::from_millis(20)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(previews.is_empty());
    }

    #[test]
    fn previews_are_bounded_in_number_and_per_participant() {
        let previews = Previews::new(Duration::from_secs(60), 3, 2);
        for id in ["a", "b"] {
            previews
                .hold(id, preview("mairie-lyon", Duration::from_secs(60)))
                .unwrap();
        }
        assert!(matches!(
            previews.hold("c", preview("mairie-lyon", Duration::from_secs(60))),
            Err(ApiError::TooManyPreviews { limit: 2, .. })
        ));
        previews
            .hold("c", preview("ccas-lyon", Duration::from_secs(60)))
            .unwrap();
        assert!(matches!(
            previews.hold("d", preview("ccas-lyon", Duration::from_secs(60))),
            Err(ApiError::RateLimited { .. })
        ));
    }
}

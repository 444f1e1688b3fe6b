//! Consents: a subject allows one consumer to obtain some attestation types for one purpose,
//! until an expiry, unless revoked. Derived from the journal's consent records.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a consent stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentStatus {
    /// In force.
    Active,
    /// Revoked by the citizen (or for them).
    Revoked,
    /// Past its expiry.
    Expired,
}

/// A consent as the derived state holds it (no raw subject id: the audit pseudonym).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// UUIDv7.
    pub id: String,
    /// The subject's audit pseudonym.
    pub subject: String,
    /// The pseudonym key's id.
    pub pseudonym_key: String,
    /// The consumer it allows.
    pub consumer: String,
    /// The guichet (or mediation structure) that recorded it.
    pub participant: String,
    /// The agent, if a mediator's agent recorded it.
    pub agent: Option<String>,
    /// The mandate the agent acted under, if any.
    #[serde(default)]
    pub mandate_id: Option<String>,
    /// Attestation types covered.
    pub attestation_types: Vec<String>,
    /// Purpose covered.
    pub purpose: String,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub granted_at: OffsetDateTime,
    /// When it lapses.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// When it was last granted again for the same scope (renewed), if it was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub renewed_at: Option<OffsetDateTime>,
    /// Journal sequence number of the grant.
    pub seq: u64,
}

impl Consent {
    /// Its status at `now`.
    pub fn status(&self, now: OffsetDateTime) -> ConsentStatus {
        if self.revoked_at.is_some() {
            ConsentStatus::Revoked
        } else if now >= self.expires_at {
            ConsentStatus::Expired
        } else {
            ConsentStatus::Active
        }
    }

    /// Whether it is about this consumer, type and purpose (whatever its status).
    pub fn covers(&self, consumer: &str, attestation_type: &str, purpose: &str) -> bool {
        self.consumer == consumer
            && self.purpose == purpose
            && self.attestation_types.iter().any(|t| t == attestation_type)
    }

    /// Whether `participant` may read it: the guichet that recorded it, or its consumer.
    pub fn visible_to(&self, participant: &str) -> bool {
        self.participant == participant || self.consumer == participant
    }
}

/// Longest a consent may last, in days.
pub const MAX_VALID_DAYS: u32 = 365;

/// When a consent granted at `now` for `valid_days` lapses: never after the mandate it was
/// recorded under (an agent cannot give a person's consent for longer than the person gave
/// the agent's structure a mandate).
pub fn expiry(
    now: OffsetDateTime,
    valid_days: u32,
    mandate_expires_at: Option<OffsetDateTime>,
) -> OffsetDateTime {
    let asked = now + time::Duration::days(i64::from(valid_days));
    mandate_expires_at.map_or(asked, |m| asked.min(m))
}

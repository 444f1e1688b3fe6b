//! The acts each ID token still usable has proved, as a store with one broker counts them
//! ([`crate::Store::spend_act`] of the embedded and in-memory backends): kept in memory, bounded
//! by the tokens still usable; a broker that restarts does not remember them, so it refuses the
//! tokens issued before it started rather than let them be spent again (issue 19, finding 3).
//! Brokers sharing a PostgreSQL store count in the database instead, where every broker sees
//! every act, across restarts.

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use unefois_domain::identity::{IdentityError, Verified};

/// Most tokens counted at once (about 80 bytes each); tokens leave when they expire.
pub const DEFAULT_CAPACITY: usize = 262_144;

/// The acts each ID token still usable has proved.
pub struct EvidenceUses {
    /// When this broker started (Unix seconds): a token issued before may have been spent.
    started_at: i64,
    capacity: usize,
    counted: Mutex<HashMap<[u8; 32], Counted>>,
}

struct Counted {
    acts: u32,
    usable_until: i64,
}

impl EvidenceUses {
    /// Counts from now, for at most `capacity` tokens at once.
    pub fn new(capacity: usize) -> EvidenceUses {
        EvidenceUses {
            started_at: OffsetDateTime::now_utc().unix_timestamp(),
            capacity,
            counted: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one act of `token` at `now` (Unix seconds), or says why it cannot prove one more.
    pub fn spend(&self, token: &Verified, now: i64) -> Result<(), IdentityError> {
        if token.issued_at < self.started_at {
            return Err(IdentityError::IssuedBeforeRestart);
        }
        let mut counted = self
            .counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !counted.contains_key(&token.digest) && counted.len() >= self.capacity {
            counted.retain(|_, c| c.usable_until > now);
            if counted.len() >= self.capacity {
                return Err(IdentityError::TooManyInUse);
            }
        }
        let entry = counted.entry(token.digest).or_insert(Counted {
            acts: 0,
            usable_until: token.usable_until,
        });
        if entry.acts >= token.max_acts {
            return Err(IdentityError::Exhausted(token.max_acts));
        }
        entry.acts += 1;
        Ok(())
    }

    /// How many tokens are counted now (for tests and metrics).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// An ID token as verified, `byte` its digest's, usable for ten minutes from `issued_at`.
    pub(crate) fn token(byte: u8, issued_at: i64, max_acts: u32) -> Verified {
        Verified {
            subject: unefois_domain::subject::Subject::parse("test:alice", true).unwrap(),
            digest: [byte; 32],
            issued_at,
            usable_until: issued_at + 600,
            max_acts,
            nonce: None,
            auth_time: None,
            display_name: None,
        }
    }

    #[test]
    fn a_token_proves_at_most_its_acts_and_others_are_counted_apart() {
        let uses = EvidenceUses::new(16);
        let now = uses.started_at + 10;
        let a = token(1, now, 3);
        for _ in 0..3 {
            uses.spend(&a, now).unwrap();
        }
        assert!(matches!(
            uses.spend(&a, now),
            Err(IdentityError::Exhausted(3))
        ));
        uses.spend(&token(2, now, 3), now).unwrap();
    }

    #[test]
    fn a_token_issued_before_the_start_is_refused() {
        let uses = EvidenceUses::new(16);
        let before = token(1, uses.started_at - 1, 8);
        assert!(matches!(
            uses.spend(&before, uses.started_at),
            Err(IdentityError::IssuedBeforeRestart)
        ));
    }

    #[test]
    fn the_count_is_bounded_and_expired_tokens_make_room() {
        let uses = EvidenceUses::new(2);
        let t0 = uses.started_at;
        uses.spend(&token(1, t0, 8), t0).unwrap();
        uses.spend(&token(2, t0, 8), t0).unwrap();
        assert!(matches!(
            uses.spend(&token(3, t0, 8), t0),
            Err(IdentityError::TooManyInUse)
        ));
        // Once the first two are past their use, a new one is counted; a counted token is
        // never forgotten while it can still be presented.
        uses.spend(&token(3, t0, 8), t0 + 601).unwrap();
        assert_eq!(uses.len(), 1);
    }
}

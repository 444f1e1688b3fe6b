//! What the brokers of one store share to enforce their limits together
//! ([`crate::Store::share_limits`]): each participant's rate, the harvesting alarm's count of
//! the people each habilitation was used for in a minute, and what each provider asked of the
//! brokers (its rate limit, its requests to wait). Behind a balancer N brokers would otherwise
//! let a participant call N times its rate, a harvester read N times the people before any
//! broker raised the alarm, and send a provider N times its rate, or go on calling it after it
//! asked one of them to wait.
//!
//! Each broker tells the store what it counted so far (cumulative: a reading repeated or
//! missed changes nothing), and reads what the others counted lately; the broker's rate limits
//! turn that into the use it did not see (`broker::ratelimit`). Nothing here names a person: the
//! people are folded into a fixed-size sketch of bits.

/// One broker's counts, as it shares them, or the other brokers' as it reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitUse {
    /// Calls admitted, per participant.
    pub calls: Vec<CallsAdmitted>,
    /// People seen, per habilitation and minute.
    pub people: Vec<PeopleSeen>,
    /// Calls sent to each provider, and its requests to wait.
    pub providers: Vec<ProviderUse>,
}

/// The calls of `participant` that `broker` admitted since it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallsAdmitted {
    /// The broker's id for this run (a new one at each start).
    pub broker: String,
    /// The participant whose calls they are.
    pub participant: String,
    /// How many, since the broker started: only grows.
    pub admitted: u64,
    /// How many it was asked, admitted or refused, since it started: only grows. Over the
    /// rate the brokers share it in proportion to these (`broker::ratelimit`); 0 from a broker
    /// of a version that did not count them.
    pub asked: u64,
}

/// What `broker` owes `provider`: the calls it sent it since it started, and until when the
/// provider asked it to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderUse {
    /// The broker's id for this run.
    pub broker: String,
    /// The provider participant.
    pub provider: String,
    /// Calls sent to it since the broker started: only grows.
    pub sent: u64,
    /// Until when the provider asked that broker to wait (a 429 or 503 with `Retry-After`), in
    /// microseconds since 1970 on that broker's clock; 0 when it never did. Only grows.
    pub held_until: i64,
}

/// The people `broker` saw `consumer` read under `habilitation` in one minute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeopleSeen {
    /// The broker's id for this run.
    pub broker: String,
    /// The consumer.
    pub consumer: String,
    /// The habilitation used.
    pub habilitation: String,
    /// The minute (Unix seconds / 60).
    pub minute: i64,
    /// The people, as the bits their pseudonyms' hashes set ([`SKETCH_BYTES`] bytes): only
    /// gains bits within the minute.
    pub sketch: Vec<u8>,
    /// Whether that broker raised the harvesting alarm for this minute.
    pub alarmed: bool,
}

/// The size of a sketch of people: 8,192 bits, which count up to tens of thousands of people
/// a minute within a few percent.
pub const SKETCH_BYTES: usize = 1024;

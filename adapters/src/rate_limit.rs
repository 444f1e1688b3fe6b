//! A provider's request-rate limit, as the registry declares it on an adapter. The broker
//! enforces it (queueing calls within their deadline), once per provider participant.

/// Calls per second to one provider, with a burst (e.g. API Particulier: 20 per second per
/// token: `rate_limit = { per_second = 20, burst = 20 }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRateLimit {
    /// Sustained calls per second (1 to 10,000).
    pub per_second: u32,
    /// Calls allowed at once after a quiet period (1 to 10,000; by default `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl ProviderRateLimit {
    /// Largest `per_second` and `burst` accepted.
    pub const MAX: u32 = 10_000;

    /// The burst in force: `burst`, or `per_second` when not given.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }

    /// Why the limit cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX).contains(&self.per_second) {
            return Err(format!("per_second must be between 1 and {}", Self::MAX));
        }
        if !(1..=Self::MAX).contains(&self.burst()) {
            return Err(format!("burst must be between 1 and {}", Self::MAX));
        }
        Ok(())
    }
}

impl std::fmt::Display for ProviderRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s, burst {}", self.per_second, self.burst())
    }
}

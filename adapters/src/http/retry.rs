//! When to try a provider again: its `Retry-After`, and the pause between retries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// Longest `Retry-After` honoured: a provider asking for more (a misconfiguration, a date in
/// the wrong year) is held this long, then tried again. Five minutes is longer than any real
/// throttling window (API Particulier counts per second and per minute) and short enough that
/// an absurd value does not cut a commune off a provider for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What a `Retry-After` header asks: its delay from `now`, capped at [`MAX_RETRY_AFTER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetryAfter {
    /// The delay to honour (capped).
    pub delay: Duration,
    /// Whether the provider asked for more than [`MAX_RETRY_AFTER`].
    pub capped: bool,
}

/// `Retry-After` (RFC 9110, 10.2.3) in either form: delay-seconds, or an HTTP-date (a date in
/// the past means no wait). `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<RetryAfter> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let asked = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is an absurd delay too.
        text.parse::<u64>()
            .map_or(Duration::MAX, Duration::from_secs)
    } else {
        let date = httpdate::parse_http_date(text).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(RetryAfter {
        delay: asked.min(MAX_RETRY_AFTER),
        capped: asked > MAX_RETRY_AFTER,
    })
}

/// Pause before retry number `attempt` (1-based): 50–150 ms × `attempt`, at random.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let jitter = 50 + random_u64() % 101;
    Duration::from_millis(jitter.saturating_mul(u64::from(attempt)))
}

/// A non-cryptographic random number (splitmix64 over the clock and a counter): enough
/// to spread retries, never for secrets.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_caps_them() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let at = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", HeaderValue::from_static(value));
            retry_after(&headers, now)
        };
        let asked = |secs| {
            Some(RetryAfter {
                delay: Duration::from_secs(secs),
                capped: false,
            })
        };
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        assert_eq!(at("7"), asked(7));
        assert_eq!(at(" 0 "), asked(0));
        assert_eq!(at("Wed, 21 Oct 2015 07:28:02 GMT"), asked(2));
        // A date already past: no wait.
        assert_eq!(at("Wed, 21 Oct 2015 07:27:00 GMT"), asked(0));
        // Absurd values are capped, and say so.
        let capped = Some(RetryAfter {
            delay: MAX_RETRY_AFTER,
            capped: true,
        });
        assert_eq!(at("86400"), capped);
        assert_eq!(at("99999999999999999999999"), capped);
        assert_eq!(at("Thu, 22 Oct 2015 07:28:00 GMT"), capped);
        for unreadable in ["-1", "1.5", "soon", "Wed, 21 Oct 2015"] {
            assert_eq!(at(unreadable), None, "{unreadable}");
        }
    }

    #[test]
    fn backoff_stays_in_range() {
        for attempt in 1..=3u32 {
            for _ in 0..100 {
                let ms = backoff(attempt).as_millis() as u64;
                let a = u64::from(attempt);
                assert!((50 * a..=150 * a).contains(&ms), "{ms}");
            }
        }
    }
}

//! The process's file-descriptor limit: raised to its ceiling at start, so that the connection
//! caps of [`crate::listener::AcceptLimits`] can be sized to fit under it with a reserve.
//!
//! Every connection, accepted or refused, costs a descriptor. Were the limit reached, `accept`
//! would fail on both listeners at once and the journal could not open its next segment: an
//! attack on the operational listener would starve the participants' one. The caps are
//! therefore fitted to the limit ([`crate::listener::AcceptLimits::fit_to_descriptors`]).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What the limit is taken to be when the system reports none (RLIM_INFINITY): Linux caps the
/// descriptors of a process at `fs.nr_open`, 1,048,576 by default.
const UNLIMITED: u64 = 1 << 20;

/// Raises the soft RLIMIT_NOFILE to the hard limit, and returns the soft limit in force
/// afterwards (the former one if it could not be raised). Idempotent; harmless when several
/// brokers share one process, as in tests.
pub fn raise_nofile_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(UNLIMITED);
    let Some(hard) = limit.maximum else {
        return current;
    };
    if hard <= current {
        return current;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    ) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(error = %e, soft = current, hard, "cannot raise the file-descriptor limit");
            current
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = super::raise_nofile_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(limit));
        assert_eq!(now.current, now.maximum);
    }
}

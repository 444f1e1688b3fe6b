//! What the broker currently trusts: the registry and the revoked certificate serials.
//!
//! Both are swapped whole (a reload builds a new value and publishes it), so a request sees one
//! consistent version from start to end, and readers never take a lock.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::registry::Registry;

/// The registry and revocation list in force.
pub struct Federation {
    registry: ArcSwap<Registry>,
    revoked: ArcSwap<HashSet<Vec<u8>>>,
}

impl Federation {
    /// Starts with a loaded registry and the serials of a verified CRL.
    pub fn new(registry: Registry, revoked: impl IntoIterator<Item = Vec<u8>>) -> Federation {
        Federation {
            registry: ArcSwap::from_pointee(registry),
            revoked: ArcSwap::from_pointee(revoked.into_iter().collect()),
        }
    }

    /// The registry in force now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Whether a certificate serial (big-endian, no leading zero bytes) is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.load().contains(serial)
    }
}

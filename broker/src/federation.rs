//! What the broker currently trusts: the registry, the adapters it declares, and the revoked
//! certificate serials.
//!
//! Each is swapped whole (a reload builds a new value and publishes it), so a request sees one
//! consistent version from start to end, and readers never take a lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use unefois_adapters::{Adapter, DatasetError, StaticDataset};

use crate::registry::{AdapterBinding, Registry};

/// The adapter of each attestation type, by type id.
pub type Adapters = HashMap<String, Arc<dyn Adapter>>;

/// Builds the adapters a registry declares (static datasets are loaded and validated here).
pub fn build_adapters(registry: &Registry) -> Result<Adapters, DatasetError> {
    let mut adapters: Adapters = HashMap::new();
    for ty in registry.attestation_types() {
        let adapter: Arc<dyn Adapter> = match &ty.adapter {
            AdapterBinding::Static { dataset } => {
                Arc::new(StaticDataset::load(dataset, &ty.id, &ty.claim_specs())?)
            }
        };
        adapters.insert(ty.id.clone(), adapter);
    }
    Ok(adapters)
}

/// A registry with its adapters: published together.
pub struct Loaded {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Its adapters.
    pub adapters: Adapters,
}

/// The registry, adapters and revocation list in force.
pub struct Federation {
    loaded: ArcSwap<Loaded>,
    revoked: ArcSwap<HashSet<Vec<u8>>>,
}

impl Federation {
    /// Starts with a loaded registry, its adapters and the serials of a verified CRL.
    pub fn new(
        registry: Registry,
        adapters: Adapters,
        revoked: impl IntoIterator<Item = Vec<u8>>,
    ) -> Federation {
        Federation {
            loaded: ArcSwap::from_pointee(Loaded {
                registry: Arc::new(registry),
                adapters,
            }),
            revoked: ArcSwap::from_pointee(revoked.into_iter().collect()),
        }
    }

    /// The registry in force now.
    pub fn registry(&self) -> Arc<Registry> {
        self.loaded.load().registry.clone()
    }

    /// The registry and adapters in force now, as one consistent pair.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// Whether a certificate serial (big-endian, no leading zero bytes) is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.load().contains(serial)
    }
}

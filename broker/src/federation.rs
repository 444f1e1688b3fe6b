//! What the broker currently trusts: the registry, the adapters it declares, and the revoked
//! certificate serials.
//!
//! Each is swapped whole (a reload builds a new value and publishes it), so a request sees one
//! consistent version from start to end, and readers never take a lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use unefois_adapters::{Adapter, DatasetError, HttpAdapter, HttpConfigError, StaticDataset};

/// Why the adapters a registry declares cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AdapterSetupError {
    /// A static dataset is invalid.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// An HTTP or gRPC adapter's setting is invalid: named by registry file and key, as
    /// registry errors are.
    #[error("{file}: {key}: {reason}")]
    Setting {
        /// The registry file.
        file: std::path::PathBuf,
        /// The key, e.g. `attestation_types[1].adapter.timeout_ms`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl AdapterSetupError {
    fn setting(registry: &Registry, index: usize, field: &str, reason: String) -> Self {
        AdapterSetupError::Setting {
            file: registry.file().to_path_buf(),
            key: format!("attestation_types[{index}].adapter.{field}"),
            reason,
        }
    }
}

use crate::provider_gate::{Member, ProviderGate};
use crate::registry::{AdapterBinding, Registry};
use crate::resilience::{Guarded, ReadinessHook};

/// The adapter of each attestation type, by type id, behind its guard.
pub type Adapters = HashMap<String, Arc<Guarded>>;

/// Builds the adapters a registry declares (static datasets are loaded and validated here),
/// each behind its concurrency limit and circuit breaker, and those that call a provider behind
/// their provider participant's gate (cool-down, rate limit: provider_gate.rs), one per
/// participant, counting in `limits` what the broker owes each provider; `readiness` hears of
/// types becoming ready or not.
pub fn build_adapters(
    registry: &Registry,
    readiness: Option<ReadinessHook>,
    limits: &crate::ratelimit::RateLimits,
) -> Result<Adapters, AdapterSetupError> {
    let mut adapters: Adapters = HashMap::new();
    let mut gates: HashMap<String, Arc<ProviderGate>> = HashMap::new();
    let mut tokens = unefois_adapters::TokenCaches::default();
    for ty in registry.attestation_types() {
        let index = ty.declared_at;
        // The provider's keys, when it signs its answers (a static dataset never does).
        let origin = registry
            .participant(&ty.provider)
            .and_then(|p| p.origin.as_ref())
            .map(|o| o.policy.clone());
        let adapter: Arc<dyn Adapter> = match &ty.adapter {
            AdapterBinding::Static { dataset } => {
                Arc::new(StaticDataset::load(dataset, &ty.id, &ty.claim_specs())?)
            }
            AdapterBinding::Http(config) => {
                let adapter =
                    HttpAdapter::sharing_tokens(&ty.id, &ty.claim_specs(), config, &mut tokens)
                        .map_err(|e: HttpConfigError| {
                            AdapterSetupError::setting(registry, index, &e.field, e.reason)
                        })?;
                Arc::new(match origin {
                    Some(policy) => adapter.with_origin(policy),
                    None => adapter,
                })
            }
            AdapterBinding::Grpc(config) => {
                let adapter = crate::provider_client::GrpcProviderAdapter::new(
                    &ty.id,
                    &ty.claim_specs(),
                    config,
                )
                .map_err(|e| AdapterSetupError::setting(registry, index, &e.field, e.reason))?;
                Arc::new(match origin {
                    Some(policy) => adapter.with_origin(policy),
                    None => adapter,
                })
            }
        };
        let mut guarded = Guarded::new(&ty.id, adapter, ty.resilience, readiness.clone());
        // The registry checked that the types of one provider declare the same rate limit.
        let rate_limit = match &ty.adapter {
            AdapterBinding::Static { .. } => None,
            AdapterBinding::Http(config) => Some(config.rate_limit),
            AdapterBinding::Grpc(config) => Some(config.rate_limit),
        };
        if let Some(rate_limit) = rate_limit {
            let gate = gates.entry(ty.provider.clone()).or_insert_with(|| {
                Arc::new(ProviderGate::new(
                    &ty.provider,
                    rate_limit,
                    limits.owed_to(&ty.provider),
                ))
            });
            guarded = guarded.with_gate(gate.clone());
        }
        let guarded = Arc::new(guarded);
        if let Some(gate) = guarded.gate() {
            let member: Arc<dyn Member> = guarded.clone();
            gate.join(Arc::downgrade(&member));
        }
        adapters.insert(ty.id.clone(), guarded);
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

    /// Publishes a new registry with its adapters and a new revocation list, whole: requests
    /// already running finish on the old pair, the next ones see the new one.
    pub fn replace(
        &self,
        registry: Registry,
        adapters: Adapters,
        revoked: impl IntoIterator<Item = Vec<u8>>,
    ) {
        self.loaded.store(Arc::new(Loaded {
            registry: Arc::new(registry),
            adapters,
        }));
        self.revoked.store(Arc::new(revoked.into_iter().collect()));
    }

    /// The provider gates in force, one per provider participant that is called out to.
    pub fn gates(&self) -> Vec<Arc<ProviderGate>> {
        let loaded = self.loaded.load();
        let mut gates: Vec<Arc<ProviderGate>> = Vec::new();
        for gate in loaded.adapters.values().filter_map(|a| a.gate()) {
            if !gates.iter().any(|g| Arc::ptr_eq(g, gate)) {
                gates.push(gate.clone());
            }
        }
        gates
    }

    /// Whether a certificate serial (big-endian, no leading zero bytes) is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.load().contains(serial)
    }
}

//! The federation registry: who takes part, which purposes exist, which attestation types
//! providers offer, and which consumer may obtain what (habilitations, deny by default).
//!
//! Loaded from one TOML file, validated whole before use: an error names the file and the key,
//! so that an operator fixes the right line. The registry's SHA-256 identifies the exact
//! version that a decision was taken under.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::{Date, OffsetDateTime, Time};

/// Largest registry file accepted: a registry is configuration, not data.
pub const MAX_REGISTRY_BYTES: u64 = 4 * 1024 * 1024;

/// A registry that failed to load, with the file and the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {message}", file.display())]
pub struct RegistryError {
    /// The registry file.
    pub file: PathBuf,
    /// Where in the file: a dotted key path such as `habilitations[2].consumer`, or `(file)`.
    pub key: String,
    /// What is wrong, in words.
    pub message: String,
}

/// What a participant does in the federation; a participant may hold several roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Answers for attestation types it owns.
    Provider,
    /// Obtains attestations under a habilitation.
    Consumer,
    /// A citizen portal: records consents, pre-fills forms.
    Guichet,
    /// A mediation structure whose agents act for citizens under a mandate.
    Mediator,
    /// Reads and verifies the audit log.
    Auditor,
    /// Runs the federation: registry, health, metrics.
    Operator,
}

impl Role {
    /// The registry's spelling of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Consumer => "consumer",
            Role::Guichet => "guichet",
            Role::Mediator => "mediator",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An administration, a guichet or a mediation structure of the federation.
#[derive(Clone, Debug)]
pub struct Participant {
    /// Stable id, the one in its certificate's SPIFFE ID.
    pub id: String,
    /// Name shown to people (citizens see it in their access history).
    pub name: String,
    /// What it may do.
    pub roles: BTreeSet<Role>,
    /// Calls per minute it may make, if limited.
    pub rate_limit: Option<RateLimit>,
    /// The audience its citizens' ID tokens carry (guichets and mediators; default: its id).
    pub oidc_audience: Option<String>,
    /// A provider's keys for its signed answers (proof of origin), if it signs.
    pub origin: Option<OriginKeys>,
    /// Its SIRET (14 digits, normalised), which providers such as API Particulier require as the
    /// `recipient` of each call (an http adapter's `{consumer_siret}`).
    pub siret: Option<String>,
}

/// A provider's proof of origin (docs/adapters/origin.md): declared on the participant, since
/// the keys are the administration's, whatever adapter reaches it, and a consumer checks an
/// attestation with the keys of the provider it names.
#[derive(Clone, Debug)]
pub struct OriginKeys {
    /// Its JWKS file (inside the registry's folder).
    pub jwks: PathBuf,
    /// That file's text, as loaded with the registry (published by `GetVerifierKeys`).
    pub jwks_text: String,
    /// Its keys, and whether every answer must be signed (`required`, default true).
    pub policy: unefois_adapters::OriginPolicy,
}

/// An identity provider whose signed OIDC ID tokens are identity evidence.
#[derive(Clone, Debug)]
pub struct IdentityProvider {
    /// Registry id.
    pub id: String,
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Its signing keys (a JWKS file inside the registry's folder).
    pub jwks: PathBuf,
    /// The keys of that file, as loaded with the registry.
    pub keys: jsonwebtoken::jwk::JwkSet,
    /// How long after issuance (`iat`) a token is still evidence of presence.
    pub max_token_age_seconds: u64,
    /// How many acts that change state (a consent granted or withdrawn, a mandate created or
    /// revoked, a form pre-filled or confirmed) one token may prove: a token serves one sitting.
    pub max_acts_per_token: u32,
    /// How the people's pages log citizens in there, if they do.
    pub login: Option<OidcLogin>,
}

/// How the broker's pages log people in at an identity provider: OpenID Connect's
/// authorization code flow with PKCE, the code redeemed at its token endpoint over HTTPS.
#[derive(Clone, Debug)]
pub struct OidcLogin {
    /// Where the browser is sent to log in (`https://`).
    pub authorization_endpoint: String,
    /// Where the broker redeems the code (`https://`).
    pub token_endpoint: String,
    /// The CA of the token endpoint's certificate (no system root is trusted).
    pub ca_file: PathBuf,
    /// The client secret (`client_secret_post`), in a file of the registry's folder kept out
    /// of the manifest; none for a public client (PKCE only).
    pub client_secret_file: Option<PathBuf>,
    /// The scopes asked for besides `openid` (FranceConnect's identity claims for citizens).
    pub scopes: Vec<String>,
}

/// The identity provider of the agents of mediation structures and of auditors' staff
/// (ProConnect-like): its ID tokens log an enrolled agent into the people's pages, never serve
/// as a citizen's identity evidence (their issuers differ), and must show multi-factor
/// authentication.
#[derive(Clone, Debug)]
pub struct AgentIdentityProvider {
    /// Registry id.
    pub id: String,
    /// The `iss` of its tokens (never a citizens' identity provider's).
    pub issuer: String,
    /// Its signing keys (a JWKS file inside the registry's folder).
    pub jwks: PathBuf,
    /// The keys of that file, as loaded with the registry.
    pub keys: jsonwebtoken::jwk::JwkSet,
    /// The client id the broker's pages are registered with at this provider: the audience
    /// of the tokens they accept.
    pub client_id: String,
    /// How long after issuance (`iat`) a token still logs an agent in.
    pub max_token_age_seconds: u64,
    /// The `acr` values that mean multi-factor authentication at this provider; a token whose
    /// `amr` lists `mfa` (RFC 8176) is accepted too.
    pub multi_factor_acr: Vec<String>,
    /// How the pages log agents in there, if they do.
    pub login: Option<OidcLogin>,
}

/// ProConnect's `acr` values that mean a second factor (eIDAS substantial and high, and its
/// two-factor assurance levels): the default of `multi_factor_acr`.
pub const DEFAULT_MULTI_FACTOR_ACR: &[&str] = &[
    "eidas2",
    "eidas3",
    "https://proconnect.gouv.fr/assurance/self-asserted-2fa",
    "https://proconnect.gouv.fr/assurance/consistency-checked-2fa",
];

/// An agent enrolled in the registry: who they are at an agents' identity provider (`sub`), and
/// as whom they act (a mediation structure's agent, or an auditor's staff member).
#[derive(Clone, Debug)]
pub struct EnrolledAgent {
    /// The agents' identity provider (its registry id).
    pub provider: String,
    /// Their `sub` at that provider.
    pub sub: String,
    /// The mediation structure or auditor they act for.
    pub participant: String,
    /// Their agent id within it (as in an agent certificate's SPIFFE ID).
    pub agent: String,
    /// Their name, as pages and printed mandates show it.
    pub name: String,
}

/// Default freshness of an ID token, in seconds.
pub const DEFAULT_MAX_TOKEN_AGE_SECONDS: u64 = 600;
/// Default number of acts one ID token may prove.
pub const DEFAULT_MAX_ACTS_PER_TOKEN: u32 = 8;
/// The most acts per token a registry may allow.
pub const MAX_ACTS_PER_TOKEN_LIMIT: u32 = 1_000_000;

/// The rate limit of every participant that declares none (calls to Exchange.Fetch and
/// Guichet.Prefill, per participant): 100 calls a second sustained, 1,000 at once. A registry
/// sets its own in `federation.default_rate_limit`.
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    per_minute: 6_000,
    burst: 1_000,
};

/// A consumer's declared rate: a sustained rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained calls per minute.
    pub per_minute: u32,
    /// Calls allowed at once above the sustained rate.
    pub burst: u32,
}

impl Participant {
    /// Whether the participant holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The audience of the ID tokens a guichet presents: its declared `oidc_audience`, or its id.
    pub fn audience(&self) -> &str {
        self.oidc_audience.as_deref().unwrap_or(&self.id)
    }
}

/// A registered reason for processing data, with its legal reference.
#[derive(Clone, Debug)]
pub struct Purpose {
    /// Code used in requests, e.g. `tarification_cantine`.
    pub code: String,
    /// What it means, for people.
    pub label: String,
    /// The text that allows it.
    pub legal_reference: String,
}

pub use unefois_adapters::ClaimType;

/// One claim of an attestation type's schema.
#[derive(Clone, Debug)]
pub struct ClaimSchema {
    /// Claim name, unique within the type.
    pub name: String,
    /// Value type.
    pub claim_type: ClaimType,
    /// What the claim states, for people.
    pub description: String,
}

/// How the broker reaches the provider of an attestation type.
#[derive(Clone, Debug)]
pub enum AdapterBinding {
    /// A JSON dataset keyed by subject, loaded at start.
    Static {
        /// Absolute path of the dataset (declared relative to the registry file).
        dataset: PathBuf,
    },
    /// An existing REST API (its files resolved relative to the registry file).
    Http(Box<unefois_adapters::HttpConfig>),
    /// An out-of-process provider implementing `unefois.v1.Provider` (its files resolved
    /// relative to the registry file).
    Grpc(Box<crate::provider_config::GrpcProviderConfig>),
}

impl AdapterBinding {
    /// The adapter's kind, as written in the registry.
    pub fn kind(&self) -> &'static str {
        match self {
            AdapterBinding::Static { .. } => "static",
            AdapterBinding::Http(_) => "http",
            AdapterBinding::Grpc(_) => "grpc",
        }
    }
}

/// A kind of verified fact a provider offers, e.g. `caf.quotient_familial`.
#[derive(Clone, Debug)]
pub struct AttestationType {
    /// `<provider>.<name>`.
    pub id: String,
    /// Schema version, carried in every attestation.
    pub version: u32,
    /// The participant that answers for it.
    pub provider: String,
    /// What it attests, for people.
    pub description: String,
    /// The claims it may carry.
    pub claims: Vec<ClaimSchema>,
    /// How long an attestation of this type stays valid, in days.
    pub max_age_days: u32,
    /// How the broker reaches the provider.
    pub adapter: AdapterBinding,
    /// The provider's concurrency limit and circuit breaker.
    pub resilience: crate::provider_config::ResilienceConfig,
    /// Its position in the registry file (`attestation_types[i]`), to name it in errors.
    pub declared_at: usize,
}

impl AttestationType {
    /// The schema as adapters check it.
    pub fn claim_specs(&self) -> Vec<unefois_adapters::ClaimSpec> {
        self.claims
            .iter()
            .map(|c| unefois_adapters::ClaimSpec {
                name: c.name.clone(),
                claim_type: c.claim_type,
            })
            .collect()
    }

    /// The schema of claim `name`, if the type has it.
    pub fn claim(&self, name: &str) -> Option<&ClaimSchema> {
        self.claims.iter().find(|c| c.name == name)
    }
}

/// Why a consumer may obtain an attestation: a person's consent or a law.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegalBasis {
    /// Only with an active consent of the subject.
    Consent,
    /// Under the cited text, without consent.
    Law(String),
}

/// Consumer × attestation type × purposes × allowed claims × legal basis × expiry.
#[derive(Clone, Debug)]
pub struct Habilitation {
    /// Stable id, recorded with every exchange it allows.
    pub id: String,
    /// The participant allowed to obtain.
    pub consumer: String,
    /// What it may obtain.
    pub attestation_type: String,
    /// For which purposes.
    pub purposes: BTreeSet<String>,
    /// Which claims (a subset of the type's).
    pub claims: BTreeSet<String>,
    /// Values derived from claims that it allows instead of the claims themselves.
    pub derived: Vec<crate::derived::DerivedClaim>,
    /// On what basis.
    pub legal_basis: LegalBasis,
    /// End of validity (the end of the `expires` day, UTC).
    pub expires_at: OffsetDateTime,
    /// Distinct subjects per minute above which the harvesting alarm is raised.
    pub max_subjects_per_minute: Option<u32>,
}

impl Habilitation {
    /// Whether the habilitation is still in force at `now`.
    pub fn is_active_at(&self, now: SystemTime) -> bool {
        OffsetDateTime::from(now) < self.expires_at
    }
}

/// A form a guichet pre-fills: its purpose and each field's source.
#[derive(Clone, Debug)]
pub struct Form {
    /// Form id, e.g. `inscription_cantine`.
    pub id: String,
    /// What it is, for people.
    pub label: String,
    /// The purpose every field is obtained for.
    pub purpose: String,
    /// The fields, in form order.
    pub fields: Vec<FormField>,
}

/// One field of a form, filled from one claim of one attestation type.
#[derive(Clone, Debug)]
pub struct FormField {
    /// Field name in the form.
    pub name: String,
    /// The attestation type that provides it.
    pub attestation_type: String,
    /// The claim of that type.
    pub claim: String,
    /// Whether the form needs it.
    pub required: bool,
}

/// The validated registry, immutable once loaded (a reload builds a new one).
#[derive(Debug)]
pub struct Registry {
    file: PathBuf,
    sha256: [u8; 32],
    /// The same, hex: written into every entry (`registry_sha256`), so encoded once.
    sha256_hex: String,
    manifest: BTreeMap<String, String>,
    trust_domain: String,
    allow_test_subjects: bool,
    default_rate_limit: RateLimit,
    participants: BTreeMap<String, Participant>,
    purposes: BTreeMap<String, Purpose>,
    attestation_types: BTreeMap<String, AttestationType>,
    habilitations: Vec<Habilitation>,
    forms: BTreeMap<String, Form>,
    identity_providers: Vec<IdentityProvider>,
    agent_identity_providers: Vec<AgentIdentityProvider>,
    agents: Vec<EnrolledAgent>,
}

/// The files a registry references (datasets, JWKS, credential files), as its validation sees
/// them. The model reads nothing: the broker gives it its folder on disk
/// (`broker::registry::Folder`, which the tests and fuzzing use too), the domain's unit tests a
/// [`MemoryFolder`].
pub trait Referenced {
    /// `declared` (a relative path that stays lexically inside the folder) resolved in the
    /// registry's folder, every symbolic link followed: the file must still be in the folder and
    /// be a readable file. The refusal says why, for the operator.
    fn resolve(&self, declared: &Path) -> Result<PathBuf, String>;
    /// The bytes of a resolved file (a JWKS).
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// The SHA-256 of a resolved file's bytes (for the registry's manifest).
    fn sha256(&self, path: &Path) -> std::io::Result<[u8; 32]>;
}

/// A registry's folder held in memory: relative path → bytes (no symbolic links).
#[derive(Clone, Debug, Default)]
pub struct MemoryFolder {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl MemoryFolder {
    /// A folder holding `files` (relative path, bytes).
    pub fn new<P: Into<PathBuf>>(files: impl IntoIterator<Item = (P, Vec<u8>)>) -> MemoryFolder {
        MemoryFolder {
            files: files.into_iter().map(|(p, b)| (p.into(), b)).collect(),
        }
    }

    fn get(&self, path: &Path) -> std::io::Result<&[u8]> {
        self.files
            .get(path)
            .map(Vec::as_slice)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

impl Referenced for MemoryFolder {
    fn resolve(&self, declared: &Path) -> Result<PathBuf, String> {
        let path: PathBuf = declared
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        match self.files.contains_key(&path) {
            true => Ok(path),
            false => Err(format!("{} is not a readable file", declared.display())),
        }
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.get(path).map(<[u8]>::to_vec)
    }

    fn sha256(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        self.get(path).map(|bytes| Sha256::digest(bytes).into())
    }
}

impl Registry {
    /// Parses and validates registry bytes; `file` names them in errors and `files` gives the
    /// files they reference (relative paths, resolved in the registry's folder). Reads nothing
    /// itself: the broker's `registry::load` reads the file and its folder from disk.
    pub fn parse(
        file: &Path,
        files: &dyn Referenced,
        bytes: &[u8],
    ) -> Result<Registry, RegistryError> {
        let err = |key: &str, message: String| RegistryError {
            file: file.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| err("(file)", format!("not valid UTF-8: {e}")))?;
        let de = toml::Deserializer::parse(text).map_err(|e| err("(syntax)", one_line(&e)))?;
        let raw: raw::Registry = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            // The root, or a key whose name is empty (`[""]`), still gets a name.
            let key = if key == "." || key.is_empty() {
                "(top level)".into()
            } else {
                key
            };
            err(&key, one_line(e.inner()))
        })?;
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        Validator {
            file,
            files,
            errors: Vec::new(),
            referenced: Vec::new(),
        }
        .validate(raw, sha256)
    }

    /// The identity providers whose ID tokens are identity evidence.
    pub fn identity_providers(&self) -> &[IdentityProvider] {
        &self.identity_providers
    }

    /// The identity provider with issuer `iss`.
    pub fn identity_provider_by_issuer(&self, iss: &str) -> Option<&IdentityProvider> {
        self.identity_providers.iter().find(|p| p.issuer == iss)
    }

    /// The agents' identity providers.
    pub fn agent_identity_providers(&self) -> &[AgentIdentityProvider] {
        &self.agent_identity_providers
    }

    /// The agents' identity provider with issuer `iss`.
    pub fn agent_identity_provider_by_issuer(&self, iss: &str) -> Option<&AgentIdentityProvider> {
        self.agent_identity_providers
            .iter()
            .find(|p| p.issuer == iss)
    }

    /// The agents enrolled.
    pub fn agents(&self) -> &[EnrolledAgent] {
        &self.agents
    }

    /// The agent enrolled as `sub` at the agents' identity provider `provider`.
    pub fn enrolled_agent(&self, provider: &str, sub: &str) -> Option<&EnrolledAgent> {
        self.agents
            .iter()
            .find(|a| a.provider == provider && a.sub == sub)
    }

    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The registry's hash, recorded in the log (`registry_sha256`): SHA-256 of its
    /// [`Registry::manifest`] as [`manifest_text`] writes it, so that it covers the registry
    /// file and every file it references that is not a secret.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// [`Registry::sha256`], lowercase hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256_hex.clone()
    }

    /// What [`Registry::sha256`] covers, recorded beside it in `registry_loaded` so that an
    /// auditor sees which file changed: [`MANIFEST_REGISTRY_KEY`] → hex SHA-256 of the registry
    /// file's bytes, and each referenced file that is not a secret (datasets, JWKS, adapters'
    /// CA and certificate files) by its registry key (`attestation_types[0].adapter.dataset`)
    /// → hex SHA-256 of its bytes. Bearer tokens and private keys are left out.
    pub fn manifest(&self) -> &BTreeMap<String, String> {
        &self.manifest
    }

    /// The SPIFFE trust domain of the federation's certificates.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Whether `test:` subjects are accepted (development federations only).
    pub fn allow_test_subjects(&self) -> bool {
        self.allow_test_subjects
    }

    /// The rate limit of a participant: its own, or the federation's default.
    pub fn rate_limit_of(&self, participant: &Participant) -> RateLimit {
        participant.rate_limit.unwrap_or(self.default_rate_limit)
    }

    /// A participant by id.
    pub fn participant(&self, id: &str) -> Option<&Participant> {
        self.participants.get(id)
    }

    /// Every participant, by id.
    pub fn participants(&self) -> impl Iterator<Item = &Participant> {
        self.participants.values()
    }

    /// A purpose by code.
    pub fn purpose(&self, code: &str) -> Option<&Purpose> {
        self.purposes.get(code)
    }

    /// Every purpose, by code.
    pub fn purposes(&self) -> impl Iterator<Item = &Purpose> {
        self.purposes.values()
    }

    /// An attestation type by id.
    pub fn attestation_type(&self, id: &str) -> Option<&AttestationType> {
        self.attestation_types.get(id)
    }

    /// Every attestation type, by id.
    pub fn attestation_types(&self) -> impl Iterator<Item = &AttestationType> {
        self.attestation_types.values()
    }

    /// A form by id.
    pub fn form(&self, id: &str) -> Option<&Form> {
        self.forms.get(id)
    }

    /// Every form, by id.
    pub fn forms(&self) -> impl Iterator<Item = &Form> {
        self.forms.values()
    }

    /// Every habilitation, in file order.
    pub fn habilitations(&self) -> &[Habilitation] {
        &self.habilitations
    }

    /// The habilitations held by `consumer`.
    pub fn habilitations_of<'a, 'c>(
        &'a self,
        consumer: &'c str,
    ) -> impl Iterator<Item = &'a Habilitation> + use<'a, 'c> {
        self.habilitations
            .iter()
            .filter(move |h| h.consumer == consumer)
    }
}

/// The manifest's key for the registry file itself.
pub const MANIFEST_REGISTRY_KEY: &str = "(registry)";

/// The bytes [`Registry::sha256`] hashes: the line `unefois-registry-manifest/v1`, then one line
/// per entry in the manifest's (byte) order of keys: the key, a space, the hex SHA-256, a
/// newline (docs/audit-log.md).
pub fn manifest_text(manifest: &BTreeMap<String, String>) -> String {
    let mut text = String::from("unefois-registry-manifest/v1\n");
    for (key, sha256) in manifest {
        text.push_str(key);
        text.push(' ');
        text.push_str(sha256);
        text.push('\n');
    }
    text
}

/// How two registry manifests differ, one line per file (`registry key: changed`, `added`,
/// `removed`), in key order; empty when they are the same. `recorded` is the one the log
/// holds, `ours` the one at hand. An old entry without a manifest compares as `(registry)`
/// alone, its hash being the registry file's.
pub fn manifest_changes(
    recorded: &BTreeMap<String, String>,
    ours: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut changes = Vec::new();
    for (key, sha256) in ours {
        match recorded.get(key) {
            None => changes.push(format!("{key}: added")),
            Some(theirs) if theirs != sha256 => changes.push(format!("{key}: changed")),
            Some(_) => {}
        }
    }
    for key in recorded.keys().filter(|k| !ours.contains_key(*k)) {
        changes.push(format!("{key}: removed"));
    }
    changes.sort();
    changes
}

/// Static headers whose name says they carry a credential (an API key, a token, a session):
/// never sent over plain `http://`. Matched on the lowercase name.
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || [
        "key",
        "token",
        "secret",
        "auth",
        "passw",
        "session",
        "credential",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Whether a URL, URL template or endpoint is plain http as the adapters' URL parser (WHATWG)
/// reads it: `HTTP://h`, `http:/h`, `http:h` and `http:\\h` all reach `http://h/`, so a text
/// comparison would let a typo send a credential in clear. A template's placeholders are read
/// as text. One that does not parse is judged by its text (a gRPC endpoint is read by another
/// parser): plain when it starts with `http:`.
fn is_plain_http(url: &str) -> bool {
    match url::Url::parse(&url.replace(['{', '}'], "")) {
        Ok(parsed) => parsed.scheme() == "http",
        Err(_) => url
            .trim_start()
            .get(..5)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http:")),
    }
}

fn one_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The registry as written, before validation.
mod raw {
    use std::path::PathBuf;

    use serde::Deserialize;

    use super::{ClaimType, Role};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Registry {
        pub federation: Federation,
        #[serde(default)]
        pub participants: Vec<Participant>,
        #[serde(default)]
        pub purposes: Vec<Purpose>,
        #[serde(default)]
        pub attestation_types: Vec<AttestationType>,
        #[serde(default)]
        pub habilitations: Vec<Habilitation>,
        #[serde(default)]
        pub forms: Vec<Form>,
        #[serde(default)]
        pub identity_providers: Vec<IdentityProvider>,
        #[serde(default)]
        pub agent_identity_providers: Vec<AgentIdentityProvider>,
        #[serde(default)]
        pub agents: Vec<Agent>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AgentIdentityProvider {
        pub id: String,
        pub issuer: String,
        pub jwks: PathBuf,
        pub client_id: String,
        #[serde(default)]
        pub max_token_age_seconds: Option<u64>,
        #[serde(default)]
        pub multi_factor_acr: Option<Vec<String>>,
        #[serde(default)]
        pub login: Option<Login>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Agent {
        pub provider: String,
        pub sub: String,
        pub participant: String,
        pub agent: String,
        pub name: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct IdentityProvider {
        pub id: String,
        pub issuer: String,
        pub jwks: PathBuf,
        #[serde(default)]
        pub max_token_age_seconds: Option<u64>,
        #[serde(default)]
        pub max_acts_per_token: Option<u32>,
        #[serde(default)]
        pub login: Option<Login>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Login {
        pub authorization_endpoint: String,
        pub token_endpoint: String,
        pub ca_file: PathBuf,
        #[serde(default)]
        pub client_secret_file: Option<PathBuf>,
        #[serde(default)]
        pub scopes: Option<Vec<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Form {
        pub id: String,
        pub label: String,
        pub purpose: String,
        pub fields: Vec<FormField>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FormField {
        pub name: String,
        pub claim: String,
        #[serde(default)]
        pub required: bool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Federation {
        pub trust_domain: String,
        #[serde(default)]
        pub allow_test_subjects: bool,
        #[serde(default)]
        pub default_rate_limit: Option<super::RateLimit>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Participant {
        pub id: String,
        pub name: String,
        pub roles: Vec<Role>,
        #[serde(default)]
        pub rate_limit: Option<super::RateLimit>,
        #[serde(default)]
        pub oidc_audience: Option<String>,
        #[serde(default)]
        pub origin: Option<ParticipantOrigin>,
        #[serde(default)]
        pub siret: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ParticipantOrigin {
        pub jwks: PathBuf,
        #[serde(default)]
        pub required: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Purpose {
        pub code: String,
        pub label: String,
        pub legal_reference: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AttestationType {
        pub id: String,
        pub version: u32,
        pub provider: String,
        pub description: String,
        pub max_age_days: u32,
        pub adapter: Adapter,
        pub claims: Vec<Claim>,
        #[serde(default)]
        pub resilience: Option<Resilience>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Resilience {
        pub max_concurrency: usize,
        pub failure_threshold: u32,
        pub open_seconds: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Claim {
        pub name: String,
        #[serde(rename = "type")]
        pub claim_type: ClaimType,
        pub description: String,
    }

    #[derive(Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
    pub enum Adapter {
        Static { dataset: PathBuf },
        Http(Box<unefois_adapters::HttpConfig>),
        Grpc(Box<crate::provider_config::GrpcProviderConfig>),
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Habilitation {
        pub id: String,
        pub consumer: String,
        pub attestation_type: String,
        pub purposes: Vec<String>,
        #[serde(default)]
        pub claims: Vec<String>,
        #[serde(default)]
        pub derived_claims: Vec<crate::derived::DerivedClaim>,
        pub legal_basis: LegalBasis,
        pub expires: toml::value::Datetime,
        #[serde(default)]
        pub max_subjects_per_minute: Option<u32>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    pub enum LegalBasis {
        Consent,
        Law(String),
    }
}

/// Most entries of each kind: bounds memory and start-up time whatever the file says.
const MAX_ENTRIES: usize = 10_000;
/// Longest free text (names, labels, descriptions, citations).
const MAX_TEXT: usize = 1_000;

struct Validator<'a> {
    file: &'a Path,
    files: &'a dyn Referenced,
    errors: Vec<(String, String)>,
    /// Referenced files that are not secrets, by key, for the manifest.
    referenced: Vec<(String, PathBuf)>,
}

impl Validator<'_> {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push((key.into(), message.into()));
    }

    fn text(&mut self, key: String, value: &str) {
        if value.trim().is_empty() {
            self.fail(key, "must not be empty");
        } else if value.len() > MAX_TEXT {
            self.fail(key, format!("longer than {MAX_TEXT} bytes"));
        } else if value.chars().any(char::is_control) {
            self.fail(key, "contains control characters");
        }
    }

    fn code(&mut self, key: String, value: &str) {
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && value.as_bytes()[0].is_ascii_lowercase();
        if !ok {
            self.fail(
                key,
                format!("{value:?} is not a code ([a-z][a-z0-9_]{{0,63}})"),
            );
        }
    }

    fn count(&mut self, key: &str, n: usize) {
        if n > MAX_ENTRIES {
            self.fail(
                key,
                format!("{n} entries, more than the {MAX_ENTRIES} allowed"),
            );
        }
    }

    fn relative_file(&mut self, key: String, declared: &Path) -> PathBuf {
        let escapes = declared.is_absolute()
            || declared
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            self.fail(
                key,
                format!(
                    "{} must be a path inside the registry's folder (no absolute path, no '..')",
                    declared.display()
                ),
            );
            return PathBuf::new();
        }
        // Every symbolic link resolved, at any level: the file must still be in the folder.
        match self.files.resolve(declared) {
            Ok(resolved) => resolved,
            Err(why) => {
                self.fail(key, why);
                PathBuf::new()
            }
        }
    }

    /// [`Validator::relative_file`] for a file that is not a secret: also in the manifest.
    fn public_file(&mut self, key: String, declared: &Path) -> PathBuf {
        let path = self.relative_file(key.clone(), declared);
        self.referenced.push((key, path.clone()));
        path
    }

    /// A participant's `origin`: only a provider's; its JWKS inside the registry's folder, in
    /// the manifest, with keys the broker can verify with; never the example provider's
    /// committed key outside a development federation.
    fn provider_origin(
        &mut self,
        at: &str,
        roles: &BTreeSet<Role>,
        declared: raw::ParticipantOrigin,
        development: bool,
    ) -> Option<OriginKeys> {
        if !roles.contains(&Role::Provider) {
            self.fail(
                format!("{at}.origin"),
                "only a provider signs answers: this participant does not have the provider role",
            );
        }
        let key = format!("{at}.origin.jwks");
        let jwks = self.public_file(key.clone(), &declared.jwks);
        if jwks.as_os_str().is_empty() {
            return None;
        }
        // As `read_to_string` says it: the same words whatever reads the folder.
        let text = match self.files.read(&jwks).and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            })
        }) {
            Ok(text) => text,
            Err(e) => {
                self.fail(key, format!("cannot read {}: {e}", jwks.display()));
                return None;
            }
        };
        let set: jsonwebtoken::jwk::JwkSet = match serde_json::from_str(&text) {
            Ok(set) => set,
            Err(e) => {
                self.fail(
                    key,
                    format!("{} is not a JWKS: {e}", declared.jwks.display()),
                );
                return None;
            }
        };
        if !development && let Some(j) = set.keys.iter().position(crate::origin::is_example_key) {
            self.fail(
                key.clone(),
                format!(
                    "key {j} of {} is the example provider's, whose private key is committed in \
                     examples/providers/python: anyone can sign answers with it. A federation \
                     that is not a development one (allow_test_subjects = false) must not \
                     declare it",
                    declared.jwks.display()
                ),
            );
        }
        match unefois_adapters::OriginPolicy::new(&set, declared.required.unwrap_or(true)) {
            Ok(policy) => Some(OriginKeys {
                jwks,
                jwks_text: text,
                policy,
            }),
            Err(why) => {
                self.fail(key, format!("{}: {why}", declared.jwks.display()));
                None
            }
        }
    }

    /// A provider's `http://` URL (or endpoint) is refused unless `allow_plain_http`, and never
    /// carries a credential (`credentials`: the keys of the adapter's credential settings).
    fn plain_http(
        &mut self,
        at: &str,
        field: &str,
        url: &str,
        allowed: bool,
        credentials: &[String],
    ) {
        if !is_plain_http(url) {
            return;
        }
        for key in credentials {
            self.fail(
                key.clone(),
                format!(
                    "a credential is never sent over plain http:// ({at}.adapter.{field} is \
                     {url:?}): use https:// with a ca_file"
                ),
            );
        }
        if !allowed {
            self.fail(
                format!("{at}.adapter.{field}"),
                format!(
                    "{url:?} is plain http://: the subject's id and the claims would travel in \
                     clear. Use https:// with a ca_file, or set allow_plain_http = true for a \
                     provider on this host or a link protected otherwise"
                ),
            );
        }
    }

    /// A provider's rate limit is one limiter shared by all its types that call out (see
    /// provider_gate.rs): they must all declare the same one, or none.
    fn shared_rate_limits(&mut self, types: &BTreeMap<String, AttestationType>) {
        let mut types: Vec<&AttestationType> = types.values().collect();
        types.sort_by_key(|t| t.declared_at);
        let mut first: BTreeMap<&str, (usize, Option<unefois_adapters::ProviderRateLimit>)> =
            BTreeMap::new();
        for t in types {
            let limit = match &t.adapter {
                AdapterBinding::Static { .. } => continue,
                AdapterBinding::Http(config) => config.rate_limit,
                AdapterBinding::Grpc(config) => config.rate_limit,
            };
            match first.get(t.provider.as_str()) {
                None => {
                    first.insert(&t.provider, (t.declared_at, limit));
                }
                Some((j, other)) if *other != limit => {
                    let shown = |l: Option<unefois_adapters::ProviderRateLimit>| {
                        l.map_or("none".to_string(), |l| l.to_string())
                    };
                    self.fail(
                        format!("attestation_types[{}].adapter.rate_limit", t.declared_at),
                        format!(
                            "{} differs from attestation_types[{j}].adapter.rate_limit ({}): the \
                             types of provider {:?} share one rate limit, so they declare the \
                             same one (or none)",
                            shown(limit),
                            shown(*other),
                            t.provider
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }

    fn validate(mut self, raw: raw::Registry, sha256: [u8; 32]) -> Result<Registry, RegistryError> {
        if let Err(e) = unefois_certs::validate_trust_domain(&raw.federation.trust_domain) {
            self.fail("federation.trust_domain", e.to_string());
        }
        if let Some(limit) = raw.federation.default_rate_limit
            && (limit.per_minute == 0 || limit.burst == 0)
        {
            self.fail(
                "federation.default_rate_limit",
                "per_minute and burst must be positive",
            );
        }
        for (key, n) in [
            ("participants", raw.participants.len()),
            ("purposes", raw.purposes.len()),
            ("attestation_types", raw.attestation_types.len()),
            ("habilitations", raw.habilitations.len()),
        ] {
            self.count(key, n);
        }

        let mut participants = BTreeMap::new();
        // Each participant's effective audience, its id, and whether it declared it, by index.
        let mut audiences: Vec<(String, String, bool)> = Vec::new();
        for (i, p) in raw.participants.into_iter().enumerate() {
            let at = format!("participants[{i}]");
            if let Err(e) = unefois_certs::validate_participant_id(&p.id) {
                self.fail(format!("{at}.id"), e.to_string());
            }
            self.text(format!("{at}.name"), &p.name);
            if p.roles.is_empty() {
                self.fail(
                    format!("{at}.roles"),
                    "a participant needs at least one role",
                );
            }
            if let Some(limit) = p.rate_limit
                && (limit.per_minute == 0 || limit.burst == 0)
            {
                self.fail(
                    format!("{at}.rate_limit"),
                    "per_minute and burst must be positive",
                );
            }
            let roles: BTreeSet<Role> = p.roles.iter().copied().collect();
            if roles.len() != p.roles.len() {
                self.fail(format!("{at}.roles"), "a role is listed twice");
            }
            if let Some(aud) = &p.oidc_audience {
                if !roles.contains(&Role::Guichet) && !roles.contains(&Role::Mediator) {
                    self.fail(
                        format!("{at}.oidc_audience"),
                        "only a guichet or a mediator has an OIDC audience",
                    );
                }
                self.text(format!("{at}.oidc_audience"), aud);
            }
            // An ID token serves one guichet (DESIGN, identity evidence): two participants with
            // one audience would each accept the tokens issued for the other. The one that
            // declared the shared audience is named (a duplicate id is refused below).
            let audience = p.oidc_audience.clone().unwrap_or_else(|| p.id.clone());
            if let Some(j) = audiences.iter().position(|(a, _, _)| *a == audience) {
                let (_, other, other_declared) = &audiences[j];
                let message = |other: &str| {
                    format!(
                        "audience {audience:?} is also participant {other:?}'s: an ID token \
                         issued for one would be accepted by the other"
                    )
                };
                if p.oidc_audience.is_some() {
                    self.fail(format!("{at}.oidc_audience"), message(other));
                } else if *other_declared {
                    self.fail(format!("participants[{j}].oidc_audience"), message(&p.id));
                }
            }
            audiences.push((audience, p.id.clone(), p.oidc_audience.is_some()));
            let siret = p.siret.as_deref().and_then(|value| {
                crate::subject::siret(value)
                    .map_err(|e| self.fail(format!("{at}.siret"), format!("{value:?}: {e}")))
                    .ok()
            });
            let origin = p.origin.and_then(|o| {
                self.provider_origin(&at, &roles, o, raw.federation.allow_test_subjects)
            });
            let id = p.id.clone();
            if participants
                .insert(
                    id.clone(),
                    Participant {
                        id: p.id,
                        name: p.name,
                        roles,
                        rate_limit: p.rate_limit,
                        oidc_audience: p.oidc_audience,
                        origin,
                        siret,
                    },
                )
                .is_some()
            {
                self.fail(
                    format!("{at}.id"),
                    format!("duplicate participant id {id:?}"),
                );
            }
        }

        let mut purposes = BTreeMap::new();
        for (i, p) in raw.purposes.into_iter().enumerate() {
            let at = format!("purposes[{i}]");
            self.code(format!("{at}.code"), &p.code);
            self.text(format!("{at}.label"), &p.label);
            self.text(format!("{at}.legal_reference"), &p.legal_reference);
            let code = p.code.clone();
            let purpose = Purpose {
                code: p.code,
                label: p.label,
                legal_reference: p.legal_reference,
            };
            if purposes.insert(code.clone(), purpose).is_some() {
                self.fail(format!("{at}.code"), format!("duplicate purpose {code:?}"));
            }
        }

        let mut attestation_types = BTreeMap::new();
        // Per type id: the registry key of the adapter setting that sends `{consumer_siret}`.
        let mut sends_siret: BTreeMap<String, String> = BTreeMap::new();
        for (i, t) in raw.attestation_types.into_iter().enumerate() {
            let at = format!("attestation_types[{i}]");
            match t.id.split_once('.') {
                Some((provider, name)) if provider == t.provider => {
                    self.code(format!("{at}.id"), name);
                }
                _ => self.fail(
                    format!("{at}.id"),
                    format!(
                        "{:?} must be \"<provider>.<name>\" with provider {:?}",
                        t.id, t.provider
                    ),
                ),
            }
            match participants.get(&t.provider) {
                None => self.fail(
                    format!("{at}.provider"),
                    format!("unknown participant {:?}", t.provider),
                ),
                Some(p) if !p.has_role(Role::Provider) => self.fail(
                    format!("{at}.provider"),
                    format!(
                        "participant {:?} does not have the provider role",
                        t.provider
                    ),
                ),
                Some(_) => {}
            }
            if t.version == 0 {
                self.fail(format!("{at}.version"), "versions start at 1");
            }
            self.text(format!("{at}.description"), &t.description);
            if !(1..=3650).contains(&t.max_age_days) {
                self.fail(format!("{at}.max_age_days"), "must be between 1 and 3650");
            }
            if t.claims.is_empty() {
                self.fail(format!("{at}.claims"), "a type needs at least one claim");
            }
            self.count(&format!("{at}.claims"), t.claims.len());
            let mut claims = Vec::with_capacity(t.claims.len());
            for (j, c) in t.claims.into_iter().enumerate() {
                let cat = format!("{at}.claims[{j}]");
                self.code(format!("{cat}.name"), &c.name);
                self.text(format!("{cat}.description"), &c.description);
                if claims.iter().any(|k: &ClaimSchema| k.name == c.name) {
                    self.fail(
                        format!("{cat}.name"),
                        format!("duplicate claim {:?}", c.name),
                    );
                }
                claims.push(ClaimSchema {
                    name: c.name,
                    claim_type: c.claim_type,
                    description: c.description,
                });
            }
            let must_sign = participants
                .get(&t.provider)
                .and_then(|p: &Participant| p.origin.as_ref())
                .is_some_and(|o| o.policy.required());
            let adapter = match t.adapter {
                raw::Adapter::Static { dataset } => {
                    if must_sign {
                        self.fail(
                            format!("{at}.adapter"),
                            format!(
                                "provider {:?} must sign its answers (its origin.required), which \
                                 a static dataset cannot: serve this type through an http or \
                                 grpc adapter, or set origin.required = false",
                                t.provider
                            ),
                        );
                    }
                    AdapterBinding::Static {
                        dataset: self.public_file(format!("{at}.adapter.dataset"), &dataset),
                    }
                }
                raw::Adapter::Http(mut config) => {
                    // (field, file, secret): secrets stay out of the manifest.
                    for (field, file, secret) in [
                        ("bearer_token_file", &mut config.bearer_token_file, true),
                        ("ca_file", &mut config.ca_file, false),
                        ("client_cert_file", &mut config.client_cert_file, false),
                        ("client_key_file", &mut config.client_key_file, true),
                        ("api_key_file", &mut config.api_key_file, true),
                        (
                            "proxy_credentials_file",
                            &mut config.proxy_credentials_file,
                            true,
                        ),
                    ] {
                        if let Some(declared) = file.take() {
                            let key = format!("{at}.adapter.{field}");
                            *file = Some(if secret {
                                self.relative_file(key, &declared)
                            } else {
                                self.public_file(key, &declared)
                            });
                        }
                    }
                    if let Some(o) = config.oauth2.as_mut() {
                        for (field, file) in [
                            ("client_id_file", &mut o.client_id_file),
                            ("client_secret_file", &mut o.client_secret_file),
                        ] {
                            let resolved =
                                self.relative_file(format!("{at}.adapter.oauth2.{field}"), file);
                            *file = resolved;
                        }
                    }
                    let mut credentials = Vec::new();
                    for (set, field) in [
                        (config.bearer_token_file.is_some(), "bearer_token_file"),
                        (config.api_key_file.is_some(), "api_key_file"),
                        (config.oauth2.is_some(), "oauth2"),
                    ] {
                        if set {
                            credentials.push(format!("{at}.adapter.{field}"));
                        }
                    }
                    // The client secret goes to the token endpoint: never in clear.
                    if let Some(o) = &config.oauth2
                        && is_plain_http(&o.token_url)
                    {
                        self.fail(
                            format!("{at}.adapter.oauth2.token_url"),
                            format!(
                                "{:?} is plain http://: the client secret would travel in clear; \
                                 use https:// with the adapter's ca_file",
                                o.token_url
                            ),
                        );
                    }
                    if let Some(limit) = &config.rate_limit
                        && let Err(why) = limit.check()
                    {
                        self.fail(format!("{at}.adapter.rate_limit"), why);
                    }
                    for name in config.headers.keys().filter(|n| is_credential_header(n)) {
                        credentials.push(format!("{at}.adapter.headers.{name}"));
                    }
                    self.plain_http(
                        &at,
                        "url",
                        &config.url,
                        config.allow_plain_http,
                        &credentials,
                    );
                    // Templates and claim mappings (no file needed): refused here, by key.
                    let specs: Vec<unefois_adapters::ClaimSpec> = claims
                        .iter()
                        .map(|c| unefois_adapters::ClaimSpec {
                            name: c.name.clone(),
                            claim_type: c.claim_type,
                        })
                        .collect();
                    match config.check(&t.id, &specs) {
                        Ok(uses) => {
                            if let Some(field) =
                                uses.get(&unefois_adapters::http::Placeholder::ConsumerSiret)
                            {
                                sends_siret.insert(t.id.clone(), format!("{at}.adapter.{field}"));
                            }
                        }
                        Err(e) => self.fail(format!("{at}.adapter.{}", e.field), e.reason),
                    }
                    AdapterBinding::Http(config)
                }
                raw::Adapter::Grpc(mut config) => {
                    for (field, file, secret) in [
                        ("ca_file", &mut config.ca_file, false),
                        ("client_cert_file", &mut config.client_cert_file, false),
                        ("client_key_file", &mut config.client_key_file, true),
                    ] {
                        if let Some(declared) = file.take() {
                            let key = format!("{at}.adapter.{field}");
                            *file = Some(if secret {
                                self.relative_file(key, &declared)
                            } else {
                                self.public_file(key, &declared)
                            });
                        }
                    }
                    self.plain_http(
                        &at,
                        "endpoint",
                        &config.endpoint,
                        config.allow_plain_http,
                        &[],
                    );
                    if let Some(limit) = &config.rate_limit
                        && let Err(why) = limit.check()
                    {
                        self.fail(format!("{at}.adapter.rate_limit"), why);
                    }
                    AdapterBinding::Grpc(config)
                }
            };
            let resilience = match t.resilience {
                None => crate::provider_config::ResilienceConfig::default(),
                Some(r) => {
                    if !(1..=10_000).contains(&r.max_concurrency) {
                        self.fail(
                            format!("{at}.resilience.max_concurrency"),
                            "must be between 1 and 10000",
                        );
                    }
                    if !(1..=1_000).contains(&r.failure_threshold) {
                        self.fail(
                            format!("{at}.resilience.failure_threshold"),
                            "must be between 1 and 1000",
                        );
                    }
                    if !(1..=3_600).contains(&r.open_seconds) {
                        self.fail(
                            format!("{at}.resilience.open_seconds"),
                            "must be between 1 and 3600",
                        );
                    }
                    crate::provider_config::ResilienceConfig {
                        max_concurrency: r.max_concurrency,
                        failure_threshold: r.failure_threshold,
                        open_for: std::time::Duration::from_secs(r.open_seconds),
                    }
                }
            };
            let id = t.id.clone();
            let ty = AttestationType {
                id: t.id,
                version: t.version,
                provider: t.provider,
                description: t.description,
                claims,
                max_age_days: t.max_age_days,
                adapter,
                resilience,
                declared_at: i,
            };
            if attestation_types.insert(id.clone(), ty).is_some() {
                self.fail(
                    format!("{at}.id"),
                    format!("duplicate attestation type {id:?}"),
                );
            }
        }
        self.shared_rate_limits(&attestation_types);

        let mut habilitations = Vec::new();
        let mut habilitation_ids = BTreeSet::new();
        for (i, h) in raw.habilitations.into_iter().enumerate() {
            let at = format!("habilitations[{i}]");
            let id_ok = (1..=128).contains(&h.id.len())
                && h.id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !id_ok {
                self.fail(
                    format!("{at}.id"),
                    format!("{:?} is not an id ([a-z0-9._-]{{1,128}})", h.id),
                );
            }
            if !habilitation_ids.insert(h.id.clone()) {
                self.fail(
                    format!("{at}.id"),
                    format!("duplicate habilitation id {:?}", h.id),
                );
            }
            match participants.get(&h.consumer) {
                None => self.fail(
                    format!("{at}.consumer"),
                    format!("unknown participant {:?}", h.consumer),
                ),
                Some(p)
                    if !(p.has_role(Role::Consumer)
                        || p.has_role(Role::Guichet)
                        || p.has_role(Role::Mediator)) =>
                {
                    self.fail(
                        format!("{at}.consumer"),
                        format!(
                            "participant {:?} is neither consumer, guichet nor mediator",
                            h.consumer
                        ),
                    )
                }
                Some(_) => {}
            }
            if let Some(key) = sends_siret.get(&h.attestation_type)
                && participants
                    .get(&h.consumer)
                    .is_some_and(|p: &Participant| p.siret.is_none())
            {
                self.fail(
                    format!("{at}.consumer"),
                    format!(
                        "{key} sends {{consumer_siret}} to the provider, and participant {:?} \
                         declares no siret: the provider would get an empty recipient. Declare \
                         its siret in [[participants]]",
                        h.consumer
                    ),
                );
            }
            let ty = attestation_types.get(&h.attestation_type);
            if ty.is_none() {
                self.fail(
                    format!("{at}.attestation_type"),
                    format!("unknown attestation type {:?}", h.attestation_type),
                );
            }
            if h.purposes.is_empty() {
                self.fail(format!("{at}.purposes"), "at least one purpose is needed");
            }
            for (j, p) in h.purposes.iter().enumerate() {
                if !purposes.contains_key(p) {
                    self.fail(
                        format!("{at}.purposes[{j}]"),
                        format!("unknown purpose {p:?}"),
                    );
                }
            }
            if h.claims.is_empty() && h.derived_claims.is_empty() {
                self.fail(
                    format!("{at}.claims"),
                    "at least one claim or derived claim is needed",
                );
            }
            for (j, d) in h.derived_claims.iter().enumerate() {
                let dat = format!("{at}.derived_claims[{j}]");
                self.code(format!("{dat}.name"), &d.name);
                if h.claims.contains(&d.name)
                    || h.derived_claims[..j].iter().any(|x| x.name == d.name)
                {
                    self.fail(
                        format!("{dat}.name"),
                        format!("{:?} is declared twice", d.name),
                    );
                }
                if let Err(why) = d.check() {
                    self.fail(format!("{dat}.rule"), why);
                }
                let numeric = ty.and_then(|t| t.claim(&d.from)).is_some_and(|c| {
                    matches!(c.claim_type, ClaimType::Integer | ClaimType::Number)
                });
                if ty.is_some() && !numeric {
                    self.fail(
                        format!("{dat}.from"),
                        format!("{:?} is not a numeric claim of the type", d.from),
                    );
                }
            }
            if let Some(ty) = ty {
                for (j, c) in h.claims.iter().enumerate() {
                    if ty.claim(c).is_none() {
                        self.fail(
                            format!("{at}.claims[{j}]"),
                            format!("{:?} has no claim {c:?}", ty.id),
                        );
                    }
                }
            }
            let legal_basis = match h.legal_basis {
                raw::LegalBasis::Consent => LegalBasis::Consent,
                raw::LegalBasis::Law(citation) => {
                    self.text(format!("{at}.legal_basis.law"), &citation);
                    LegalBasis::Law(citation)
                }
            };
            let expires_at = match end_of_day(&h.expires) {
                Some(t) => t,
                None => {
                    self.fail(
                        format!("{at}.expires"),
                        format!("{} is not a date (YYYY-MM-DD)", h.expires),
                    );
                    OffsetDateTime::UNIX_EPOCH
                }
            };
            habilitations.push(Habilitation {
                id: h.id,
                consumer: h.consumer,
                attestation_type: h.attestation_type,
                purposes: h.purposes.into_iter().collect(),
                claims: h.claims.into_iter().collect(),
                derived: h.derived_claims,
                legal_basis,
                expires_at,
                max_subjects_per_minute: h.max_subjects_per_minute,
            });
        }

        let mut forms = BTreeMap::new();
        self.count("forms", raw.forms.len());
        for (i, f) in raw.forms.into_iter().enumerate() {
            let at = format!("forms[{i}]");
            self.code(format!("{at}.id"), &f.id);
            self.text(format!("{at}.label"), &f.label);
            if !purposes.contains_key(&f.purpose) {
                self.fail(
                    format!("{at}.purpose"),
                    format!("unknown purpose {:?}", f.purpose),
                );
            }
            if f.fields.is_empty() || f.fields.len() > 100 {
                self.fail(format!("{at}.fields"), "between 1 and 100 fields");
            }
            let mut fields: Vec<FormField> = Vec::with_capacity(f.fields.len());
            for (j, field) in f.fields.into_iter().enumerate() {
                let fat = format!("{at}.fields[{j}]");
                self.code(format!("{fat}.name"), &field.name);
                if fields.iter().any(|x| x.name == field.name) {
                    self.fail(
                        format!("{fat}.name"),
                        format!("duplicate field {:?}", field.name),
                    );
                }
                let (ty, claim) = match field.claim.rsplit_once('.') {
                    Some((ty, claim))
                        if attestation_types
                            .get(ty)
                            .is_some_and(|t: &AttestationType| t.claim(claim).is_some()) =>
                    {
                        (ty.to_string(), claim.to_string())
                    }
                    _ => {
                        self.fail(
                            format!("{fat}.claim"),
                            format!(
                                "{:?} is not \"<attestation type>.<claim>\" of the registry",
                                field.claim
                            ),
                        );
                        (String::new(), String::new())
                    }
                };
                fields.push(FormField {
                    name: field.name,
                    attestation_type: ty,
                    claim,
                    required: field.required,
                });
            }
            let id = f.id.clone();
            let form = Form {
                id: f.id,
                label: f.label,
                purpose: f.purpose,
                fields,
            };
            if forms.insert(id.clone(), form).is_some() {
                self.fail(format!("{at}.id"), format!("duplicate form {id:?}"));
            }
        }

        self.count("identity_providers", raw.identity_providers.len());
        let development = raw.federation.allow_test_subjects;
        let mut identity_providers: Vec<IdentityProvider> = Vec::new();
        for (i, p) in raw.identity_providers.into_iter().enumerate() {
            let at = format!("identity_providers[{i}]");
            if let Err(e) = unefois_certs::validate_participant_id(&p.id) {
                self.fail(format!("{at}.id"), e.to_string());
            }
            self.text(format!("{at}.issuer"), &p.issuer);
            let (jwks, keys) = self.provider_keys(&at, &p.jwks, &p.issuer, development);
            let max_age = p
                .max_token_age_seconds
                .unwrap_or(DEFAULT_MAX_TOKEN_AGE_SECONDS);
            if !(1..=86_400).contains(&max_age) {
                self.fail(
                    format!("{at}.max_token_age_seconds"),
                    "must be between 1 and 86400",
                );
            }
            let max_acts = p.max_acts_per_token.unwrap_or(DEFAULT_MAX_ACTS_PER_TOKEN);
            if !(1..=MAX_ACTS_PER_TOKEN_LIMIT).contains(&max_acts) {
                self.fail(
                    format!("{at}.max_acts_per_token"),
                    format!("must be between 1 and {MAX_ACTS_PER_TOKEN_LIMIT}"),
                );
            }
            if identity_providers.iter().any(|q| q.id == p.id) {
                self.fail(
                    format!("{at}.id"),
                    format!("duplicate identity provider {:?}", p.id),
                );
            }
            if identity_providers.iter().any(|q| q.issuer == p.issuer) {
                self.fail(
                    format!("{at}.issuer"),
                    format!("issuer {:?} is declared twice", p.issuer),
                );
            }
            let login = p.login.map(|l| {
                self.login(
                    &format!("{at}.login"),
                    l,
                    &[
                        "given_name",
                        "family_name",
                        "birthdate",
                        "gender",
                        "birthplace",
                        "birthcountry",
                    ],
                )
            });
            identity_providers.push(IdentityProvider {
                id: p.id,
                issuer: p.issuer,
                jwks,
                keys,
                max_token_age_seconds: max_age,
                max_acts_per_token: max_acts,
                login,
            });
        }

        let (agent_identity_providers, agents) = self.agents(
            raw.agent_identity_providers,
            raw.agents,
            &identity_providers,
            &participants,
            development,
        );

        let mut manifest = BTreeMap::new();
        manifest.insert(MANIFEST_REGISTRY_KEY.to_string(), hex::encode(sha256));
        if self.errors.is_empty() {
            for (key, path) in std::mem::take(&mut self.referenced) {
                match self.files.sha256(&path) {
                    Ok(sha) => {
                        manifest.insert(key, hex::encode(sha));
                    }
                    Err(e) => self.fail(key, format!("{}: {e}", path.display())),
                }
            }
        }
        if let Some((key, message)) = self.errors.into_iter().next() {
            return Err(RegistryError {
                file: self.file.to_path_buf(),
                key,
                message,
            });
        }
        let manifest_sha256: [u8; 32] = Sha256::digest(manifest_text(&manifest).as_bytes()).into();
        Ok(Registry {
            file: self.file.to_path_buf(),
            sha256: manifest_sha256,
            sha256_hex: hex::encode(manifest_sha256),
            manifest,
            trust_domain: raw.federation.trust_domain,
            allow_test_subjects: raw.federation.allow_test_subjects,
            default_rate_limit: raw
                .federation
                .default_rate_limit
                .unwrap_or(DEFAULT_RATE_LIMIT),
            participants,
            purposes,
            attestation_types,
            habilitations,
            forms,
            identity_providers,
            agent_identity_providers,
            agents,
        })
    }

    /// A provider's login endpoints (`at`): both `https://` without a fragment, the token
    /// endpoint's CA in the manifest, the client secret out of it; `scopes` by default.
    fn login(&mut self, at: &str, l: raw::Login, scopes: &[&str]) -> OidcLogin {
        for (field, url) in [
            ("authorization_endpoint", &l.authorization_endpoint),
            ("token_endpoint", &l.token_endpoint),
        ] {
            match url::Url::parse(url) {
                Ok(u) if u.scheme() == "https" && u.fragment().is_none() && u.host().is_some() => {}
                Ok(_) => self.fail(
                    format!("{at}.{field}"),
                    format!("{url:?} must be an https:// URL without a fragment"),
                ),
                Err(e) => self.fail(format!("{at}.{field}"), format!("{url:?}: {e}")),
            }
        }
        let scopes = l
            .scopes
            .unwrap_or_else(|| scopes.iter().map(ToString::to_string).collect());
        for (i, scope) in scopes.iter().enumerate() {
            if scope.is_empty() || scope.len() > 64 || !scope.bytes().all(|b| b.is_ascii_graphic())
            {
                self.fail(format!("{at}.scopes[{i}]"), "not a scope");
            }
        }
        OidcLogin {
            authorization_endpoint: l.authorization_endpoint,
            token_endpoint: l.token_endpoint,
            ca_file: self.public_file(format!("{at}.ca_file"), &l.ca_file),
            client_secret_file: l
                .client_secret_file
                .map(|f| self.relative_file(format!("{at}.client_secret_file"), &f)),
            scopes,
        }
    }

    /// An identity provider's JWKS (`at.jwks`): inside the folder, in the manifest, keys the
    /// broker can verify with; and outside a development federation, never the development
    /// identity provider's issuer or committed key (anyone can mint its tokens).
    fn provider_keys(
        &mut self,
        at: &str,
        declared: &Path,
        issuer: &str,
        development: bool,
    ) -> (PathBuf, jsonwebtoken::jwk::JwkSet) {
        let jwks = self.public_file(format!("{at}.jwks"), declared);
        let keys = if !jwks.as_os_str().is_empty() {
            self.files
                .read(&jwks)
                .map_err(|e| format!("cannot read {}: {e}", jwks.display()))
                .and_then(|bytes| crate::idp::parse_jwks(&jwks, &bytes))
                .unwrap_or_else(|e| {
                    self.fail(format!("{at}.jwks"), e);
                    jsonwebtoken::jwk::JwkSet { keys: Vec::new() }
                })
        } else {
            jsonwebtoken::jwk::JwkSet { keys: Vec::new() }
        };
        // The development provider's private key is public (examples/dev-idp): anyone can
        // mint its tokens. Only a development federation may trust it, under any issuer.
        if !development {
            use crate::idp::dev;
            let why = if issuer == dev::ISSUER || issuer == dev::AGENTS_ISSUER {
                Some(format!(
                    "its issuer {issuer:?} is the development identity provider's"
                ))
            } else {
                keys.keys.iter().position(dev::is_committed_key).map(|j| {
                    format!(
                        "key {j} of {} is the development identity provider's public key",
                        declared.display()
                    )
                })
            };
            if let Some(why) = why {
                self.fail(
                    at.to_string(),
                    format!(
                        "{why}, whose private key is committed in examples/dev-idp: anyone can \
                         mint ID tokens with it. A federation that is not a development one \
                         (allow_test_subjects = false) must not declare it: remove this \
                         identity provider, or declare the real one's issuer and keys"
                    ),
                );
            }
        }
        (jwks, keys)
    }

    /// The agents' identity providers and the agents enrolled at them: each agent acts for a
    /// mediation structure or an auditor of the registry, under an agent id unique there.
    fn agents(
        &mut self,
        providers: Vec<raw::AgentIdentityProvider>,
        agents: Vec<raw::Agent>,
        citizens: &[IdentityProvider],
        participants: &BTreeMap<String, Participant>,
        development: bool,
    ) -> (Vec<AgentIdentityProvider>, Vec<EnrolledAgent>) {
        self.count("agent_identity_providers", providers.len());
        self.count("agents", agents.len());
        let mut out: Vec<AgentIdentityProvider> = Vec::new();
        for (i, p) in providers.into_iter().enumerate() {
            let at = format!("agent_identity_providers[{i}]");
            if let Err(e) = unefois_certs::validate_participant_id(&p.id) {
                self.fail(format!("{at}.id"), e.to_string());
            }
            self.text(format!("{at}.issuer"), &p.issuer);
            self.text(format!("{at}.client_id"), &p.client_id);
            let (jwks, keys) = self.provider_keys(&at, &p.jwks, &p.issuer, development);
            let max_age = p
                .max_token_age_seconds
                .unwrap_or(DEFAULT_MAX_TOKEN_AGE_SECONDS);
            if !(1..=86_400).contains(&max_age) {
                self.fail(
                    format!("{at}.max_token_age_seconds"),
                    "must be between 1 and 86400",
                );
            }
            let acr = p.multi_factor_acr.unwrap_or_else(|| {
                DEFAULT_MULTI_FACTOR_ACR
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            });
            if acr.is_empty() || acr.len() > 16 {
                self.fail(
                    format!("{at}.multi_factor_acr"),
                    "must list between 1 and 16 values",
                );
            }
            for (j, value) in acr.iter().enumerate() {
                self.text(format!("{at}.multi_factor_acr[{j}]"), value);
            }
            if out.iter().any(|q| q.id == p.id) {
                self.fail(
                    format!("{at}.id"),
                    format!("duplicate agents' identity provider {:?}", p.id),
                );
            }
            // A citizen's token never logs an agent in, nor the reverse.
            if out.iter().any(|q| q.issuer == p.issuer)
                || citizens.iter().any(|q| q.issuer == p.issuer)
            {
                self.fail(
                    format!("{at}.issuer"),
                    format!(
                        "issuer {:?} is declared twice (an agents' identity provider never \
                         shares its issuer with another identity provider)",
                        p.issuer
                    ),
                );
            }
            let login = p.login.map(|l| {
                self.login(
                    &format!("{at}.login"),
                    l,
                    &["email", "given_name", "usual_name"],
                )
            });
            out.push(AgentIdentityProvider {
                id: p.id,
                issuer: p.issuer,
                jwks,
                keys,
                client_id: p.client_id,
                max_token_age_seconds: max_age,
                multi_factor_acr: acr,
                login,
            });
        }
        let mut enrolled: Vec<EnrolledAgent> = Vec::new();
        for (i, a) in agents.into_iter().enumerate() {
            let at = format!("agents[{i}]");
            if !out.iter().any(|p| p.id == a.provider) {
                self.fail(
                    format!("{at}.provider"),
                    format!(
                        "{:?} is not an agents' identity provider of the registry",
                        a.provider
                    ),
                );
            }
            self.text(format!("{at}.sub"), &a.sub);
            self.text(format!("{at}.name"), &a.name);
            match participants.get(&a.participant) {
                Some(p)
                    if p.roles.contains(&Role::Mediator) || p.roles.contains(&Role::Auditor) => {}
                Some(_) => self.fail(
                    format!("{at}.participant"),
                    format!(
                        "{:?} is neither a mediator nor an auditor: only their agents log in",
                        a.participant
                    ),
                ),
                None => self.fail(
                    format!("{at}.participant"),
                    format!("{:?} is not a participant of the registry", a.participant),
                ),
            }
            if let Err(e) = unefois_certs::validate_agent_id(&a.agent) {
                self.fail(format!("{at}.agent"), e.to_string());
            }
            if enrolled
                .iter()
                .any(|b| b.provider == a.provider && b.sub == a.sub)
            {
                self.fail(
                    format!("{at}.sub"),
                    format!("{:?} is enrolled twice at {:?}", a.sub, a.provider),
                );
            }
            if enrolled
                .iter()
                .any(|b| b.participant == a.participant && b.agent == a.agent)
            {
                self.fail(
                    format!("{at}.agent"),
                    format!(
                        "agent {:?} of {:?} is enrolled twice",
                        a.agent, a.participant
                    ),
                );
            }
            enrolled.push(EnrolledAgent {
                provider: a.provider,
                sub: a.sub,
                participant: a.participant,
                agent: a.agent,
                name: a.name,
            });
        }
        (out, enrolled)
    }
}

/// The first instant after the given TOML date (a habilitation is valid through its last day).
fn end_of_day(d: &toml::value::Datetime) -> Option<OffsetDateTime> {
    if d.time.is_some() || d.offset.is_some() {
        return None;
    }
    let date = d.date?;
    let month = time::Month::try_from(date.month).ok()?;
    let day = Date::from_calendar_date(i32::from(date.year), month, date.day).ok()?;
    Some(day.next_day()?.with_time(Time::MIDNIGHT).assume_utc())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Registry, RegistryError> {
        let folder = MemoryFolder::new([("qf.json", b"{}".to_vec())]);
        Registry::parse(Path::new("reg.toml"), &folder, text.as_bytes())
    }

    #[test]
    fn manifest_changes_name_each_file_that_differs() {
        let manifest = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let base = manifest(&[("(registry)", "aa"), ("types[0].dataset", "bb")]);
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[("(registry)", "aa"), ("types[0].dataset", "bb")], &[]),
            (
                &[("(registry)", "aa"), ("types[0].dataset", "cc")],
                &["types[0].dataset: changed"],
            ),
            (
                &[
                    ("(registry)", "ff"),
                    ("types[0].dataset", "bb"),
                    ("jwks", "dd"),
                ],
                &["(registry): changed", "jwks: added"],
            ),
            (&[("(registry)", "aa")], &["types[0].dataset: removed"]),
        ];
        for (ours, expected) in cases {
            assert_eq!(
                manifest_changes(&base, &manifest(ours)),
                expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{ours:?}"
            );
        }
    }

    const BASE: &str = r#"
[federation]
trust_domain = "unefois.test"

[[participants]]
id = "caf"
name = "CAF"
roles = ["provider"]

[[participants]]
id = "mairie-lyon"
name = "Ville de Lyon"
roles = ["guichet", "consumer"]

[[purposes]]
code = "tarification_cantine"
label = "Cantine"
legal_reference = "Code de l'éducation"

[[attestation_types]]
id = "caf.quotient_familial"
version = 1
provider = "caf"
description = "QF"
max_age_days = 31
adapter = { kind = "static", dataset = "qf.json" }
claims = [{ name = "quotient_familial", type = "integer", description = "QF" }]

[[habilitations]]
id = "lyon-qf"
consumer = "mairie-lyon"
attestation_type = "caf.quotient_familial"
purposes = ["tarification_cantine"]
claims = ["quotient_familial"]
legal_basis = "consent"
expires = 2030-12-31
"#;

    #[test]
    fn a_valid_registry_loads_with_its_hash() {
        let r = parse(BASE).unwrap();
        assert_eq!(r.trust_domain(), "unefois.test");
        // The hash covers the registry file and its dataset.
        let manifest = format!(
            "unefois-registry-manifest/v1\n(registry) {}\nattestation_types[0].adapter.dataset {}\n",
            hex::encode(Sha256::digest(BASE.as_bytes())),
            hex::encode(Sha256::digest(b"{}")),
        );
        assert_eq!(r.manifest().len(), 2);
        assert_eq!(
            r.sha256_hex(),
            hex::encode(Sha256::digest(manifest.as_bytes()))
        );
        let h = &r.habilitations()[0];
        assert_eq!(h.legal_basis, LegalBasis::Consent);
        assert_eq!(
            h.expires_at,
            time::macros::datetime!(2031-01-01 00:00 UTC),
            "valid through its last day"
        );
    }

    #[test]
    fn law_basis_carries_its_citation() {
        let text = BASE.replace(
            "legal_basis = \"consent\"",
            "legal_basis = { law = \"CRPA, art. L. 114-8\" }",
        );
        let r = parse(&text).unwrap();
        assert_eq!(
            r.habilitations()[0].legal_basis,
            LegalBasis::Law("CRPA, art. L. 114-8".into())
        );
    }

    #[test]
    fn unknown_adapter_field_names_its_key() {
        let text = BASE.replace(
            "dataset = \"qf.json\"",
            "dataset = \"qf.json\", url = \"x\"",
        );
        let e = parse(&text).unwrap_err();
        assert!(e.key.starts_with("attestation_types[0]"), "{e}");
        assert!(e.message.contains("url"), "{e}");
    }

    #[test]
    fn dataset_outside_the_registry_folder_is_refused() {
        let text = BASE.replace("\"qf.json\"", "\"../../etc/passwd\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "attestation_types[0].adapter.dataset");
    }

    #[test]
    fn login_endpoints_are_https_and_their_secret_stays_out_of_the_manifest() {
        let jwks =
            serde_json::to_vec(&crate::idp::dev::DevKey::generate("k").unwrap().jwks()).unwrap();
        let folder = MemoryFolder::new([
            ("qf.json", b"{}".to_vec()),
            ("jwks.json", jwks),
            ("ca.pem", b"-".to_vec()),
            ("secret.txt", b"s".to_vec()),
        ]);
        let provider = |token: &str| {
            format!(
                "{BASE}\n[[identity_providers]]\nid = \"fc\"\nissuer = \"https://fc.test\"\njwks = \"jwks.json\"\nlogin = {{ authorization_endpoint = \"https://fc.test/authorize\", token_endpoint = \"{token}\", ca_file = \"ca.pem\", client_secret_file = \"secret.txt\" }}\n"
            )
        };
        let parse = |text: String| Registry::parse(Path::new("reg.toml"), &folder, text.as_bytes());
        let ok = parse(provider("https://fc.test/token")).unwrap();
        let login = ok.identity_providers()[0].login.as_ref().unwrap();
        assert_eq!(login.scopes[0], "given_name");
        assert!(
            ok.manifest()
                .contains_key("identity_providers[0].login.ca_file")
        );
        assert!(!ok.manifest().keys().any(|k| k.contains("secret")));
        for bad in [
            "http://fc.test/token",
            "https://fc.test/token#x",
            "not a url",
        ] {
            let e = parse(provider(bad)).unwrap_err();
            assert_eq!(e.key, "identity_providers[0].login.token_endpoint", "{bad}");
        }
    }

    #[test]
    fn plain_http_is_read_as_the_url_parser_reads_it_and_refused_by_key() {
        let folder = MemoryFolder::new([
            ("qf.json", b"{}".to_vec()),
            ("token", b"t".to_vec()),
            ("id", b"i".to_vec()),
            ("secret", b"s".to_vec()),
        ]);
        // TOML literal strings: the backslashes of `http:\\host\x` stay as written.
        let http = |url: &str, extra: &str| {
            BASE.replace(
                "adapter = { kind = \"static\", dataset = \"qf.json\" }",
                &format!(
                    "adapter = {{ kind = \"http\", url = '{url}', claims = {{ quotient_familial = \"/qf\" }}{extra} }}"
                ),
            )
        };
        let bearer = ", bearer_token_file = \"token\"";
        let oauth2 = |token_url: &str| {
            format!(
                ", oauth2 = {{ token_url = '{token_url}', client_id_file = \"id\", client_secret_file = \"secret\" }}"
            )
        };
        let at = "attestation_types[0].adapter";
        // The url crate (WHATWG), which the adapters call with, reads each as http://host/...
        let plain = [
            "http://127.0.0.1:1/{subject}",
            "HTTP://127.0.0.1:1/{subject}",
            "http:/127.0.0.1:1/{subject}",
            "http:127.0.0.1:1/{subject}",
            r"http:\\127.0.0.1:1\{subject}",
            " http:/127.0.0.1:1/{subject}",
        ];
        let mut rows: Vec<(String, String, &str)> = Vec::new();
        for url in plain {
            rows.push((
                http(url, bearer),
                format!("{at}.bearer_token_file"),
                "never sent over plain http://",
            ));
            rows.push((http(url, ""), format!("{at}.url"), "allow_plain_http"));
        }
        for token_url in [
            "http://127.0.0.1:1/t",
            "http:/127.0.0.1:1/t",
            "HTTP:127.0.0.1:1/t",
            r"http:\\127.0.0.1:1\t",
        ] {
            rows.push((
                http("https://127.0.0.1:1/{subject}", &oauth2(token_url)),
                format!("{at}.oauth2.token_url"),
                "client secret would travel in clear",
            ));
        }
        for (text, key, why) in rows {
            let e = Registry::parse(Path::new("reg.toml"), &folder, text.as_bytes()).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(why), "{e}");
        }
        // What the parser reads as https is https, however written.
        for (url, extra) in [
            ("https://127.0.0.1:1/{subject}", bearer.to_string()),
            ("HTTPS:/127.0.0.1:1/{subject}", bearer.to_string()),
            (
                "https:127.0.0.1:1/{subject}",
                oauth2("HTTPS:/127.0.0.1:1/t"),
            ),
        ] {
            let text = http(url, &extra);
            Registry::parse(Path::new("reg.toml"), &folder, text.as_bytes()).unwrap();
        }
    }

    #[test]
    fn agents_are_enrolled_for_a_mediator_or_an_auditor_at_a_provider_of_the_registry() {
        let jwks =
            serde_json::to_vec(&crate::idp::dev::DevKey::generate("k").unwrap().jwks()).unwrap();
        let folder = MemoryFolder::new([("qf.json", b"{}".to_vec()), ("jwks.json", jwks)]);
        let structure =
            "[[participants]]\nid = \"fs\"\nname = \"France Services\"\nroles = [\"mediator\"]\n";
        let provider = "[[agent_identity_providers]]\nid = \"pro\"\nissuer = \"https://pro.test\"\njwks = \"jwks.json\"\nclient_id = \"pages\"\n";
        let agent = |provider: &str, sub: &str, participant: &str, id: &str| {
            format!(
                "[[agents]]\nprovider = \"{provider}\"\nsub = \"{sub}\"\nparticipant = \"{participant}\"\nagent = \"{id}\"\nname = \"A\"\n"
            )
        };
        let outcome = |extra: &str| {
            let text = format!("{BASE}\n{structure}\n{provider}\n{extra}");
            match Registry::parse(Path::new("reg.toml"), &folder, text.as_bytes()) {
                Ok(r) => format!("ok {}", r.agents().len()),
                Err(e) => e.key,
            }
        };
        let one = agent("pro", "s1", "fs", "a.one");
        let cases: Vec<(String, &str)> = vec![
            (one.clone(), "ok 1"),
            (agent("nope", "s1", "fs", "a.one"), "agents[0].provider"),
            (agent("pro", "s1", "caf", "a.one"), "agents[0].participant"),
            (agent("pro", "s1", "ghost", "a.one"), "agents[0].participant"),
            (agent("pro", "s1", "fs", "A One"), "agents[0].agent"),
            (agent("pro", "", "fs", "a.one"), "agents[0].sub"),
            (
                format!("{one}{}", agent("pro", "s1", "fs", "a.two")),
                "agents[1].sub",
            ),
            (
                format!("{one}{}", agent("pro", "s2", "fs", "a.one")),
                "agents[1].agent",
            ),
            (
                // One issuer for citizens and agents: a citizen's token would log an agent in.
                "[[identity_providers]]\nid = \"fc\"\nissuer = \"https://pro.test\"\njwks = \"jwks.json\"\n"
                    .to_string(),
                "agent_identity_providers[0].issuer",
            ),
        ];
        for (extra, expect) in cases {
            assert_eq!(outcome(&extra), expect, "{extra}");
        }
    }

    #[test]
    fn identity_providers_are_validated() {
        let outside = format!(
            "{BASE}\n[[identity_providers]]\nid = \"idp\"\nissuer = \"https://idp.test\"\njwks = \"../jwks.json\"\n"
        );
        let e = parse(&outside).unwrap_err();
        assert_eq!(e.key, "identity_providers[0].jwks");
        let not_a_guichet = BASE.replacen(
            "roles = [\"provider\"]",
            "roles = [\"provider\"]\noidc_audience = \"caf\"",
            1,
        );
        let e = parse(&not_a_guichet).unwrap_err();
        assert_eq!(e.key, "participants[0].oidc_audience");
        let lyon = parse(BASE).unwrap();
        assert_eq!(
            lyon.participant("mairie-lyon").unwrap().audience(),
            "mairie-lyon"
        );
    }

    #[test]
    fn no_two_participants_share_an_audience() {
        // mairie-lyon's `oidc_audience` line, a participant added as participants[2], and the
        // key refused with the other participant it names, or `None` if the registry loads.
        let guichet = |id: &str, aud: &str| {
            format!(
                "[[participants]]\nid = \"{id}\"\nname = \"{id}\"\nroles = [\"guichet\"]\n{aud}"
            )
        };
        let cases = [
            (
                "oidc_audience = \"lyon\"",
                guichet("mairie-paris", "oidc_audience = \"lyon\""),
                Some(("participants[2].oidc_audience", "mairie-lyon")),
            ),
            (
                "",
                guichet("france-services", "oidc_audience = \"mairie-lyon\""),
                Some(("participants[2].oidc_audience", "mairie-lyon")),
            ),
            (
                "oidc_audience = \"mairie-paris\"",
                guichet("mairie-paris", ""),
                Some(("participants[1].oidc_audience", "mairie-paris")),
            ),
            (
                "oidc_audience = \"caf\"",
                String::new(),
                Some(("participants[1].oidc_audience", "caf")),
            ),
            (
                "oidc_audience = \"lyon\"",
                guichet("mairie-paris", "oidc_audience = \"paris\""),
                None,
            ),
            (
                "oidc_audience = \"mairie-lyon\"",
                guichet("mairie-paris", ""),
                None,
            ),
        ];
        for (lyon, extra, expect) in cases {
            let text = BASE.replacen(
                "roles = [\"guichet\", \"consumer\"]",
                &format!("roles = [\"guichet\", \"consumer\"]\n{lyon}"),
                1,
            ) + &extra;
            match (parse(&text), expect) {
                (Ok(_), None) => {}
                (Err(e), Some((key, other))) => {
                    assert_eq!(e.key, key, "{lyon} {extra}");
                    assert!(e.message.contains(&format!("{other:?}")), "{e}");
                }
                (r, _) => panic!("{lyon} {extra}: {:?}", r.map(|_| ())),
            }
        }
    }

    #[test]
    fn claim_not_in_the_type_is_refused() {
        let text = BASE.replace("claims = [\"quotient_familial\"]", "claims = [\"revenu\"]");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "habilitations[0].claims[0]");
    }

    #[test]
    fn bad_dates_and_ids_are_refused() {
        let e = parse(&BASE.replace("2030-12-31", "2030-12-31T10:00:00Z")).unwrap_err();
        assert_eq!(e.key, "habilitations[0].expires");
        let e = parse(&BASE.replace("id = \"caf\"", "id = \"CAF\"")).unwrap_err();
        assert_eq!(e.key, "participants[0].id");
    }
}

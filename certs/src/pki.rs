//! The federation PKI directory: its CA, the certificates it issues and its CRL.
//!
//! Layout of a PKI directory:
//! - `ca.crt`, `ca.key`: the federation CA (SAN URI `spiffe://<trust-domain>`);
//! - `crl.pem`: the CRL, the only record of revocations;
//! - `broker.crt`, `broker.key`: the broker's server certificate;
//! - `<participant>.crt`, `<participant>.key`: participants' client certificates;
//! - `agents/<participant>/<agent>.crt`, `.key`: agents' client certificates;
//! - `issued.log`: every certificate issued, by name and serial (what revoking a name reaches).
//!
//! Private keys are ECDSA P-256, PKCS#8 PEM, mode 0600; certificates and the CRL are mode 0644.
//! Every file is replaced atomically.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;

use crate::crl::{ParsedCrl, RevokedEntry, parse_crl};
use crate::peer::{parse_certificate, uri_sans};
use crate::pem::{
    KEY_MODE, PUBLIC_MODE, create_dir_all, load_certificates, load_crls, read_to_string,
    write_atomic,
};
use crate::serial::{normalize_serial, random_serial};
use crate::spiffe::{validate_agent_id, validate_participant_id, validate_trust_domain};
use crate::{CertError, SpiffeId};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CRL_FILE: &str = "crl.pem";
const AGENTS_DIR: &str = "agents";
/// The name of the broker's server certificate, for [`Pki::cert_path`] and [`Pki::key_path`].
pub const BROKER_NAME: &str = "broker";
/// Participant ids that would collide with the PKI's own files (`ca.crt`, `broker.crt`).
const RESERVED_PARTICIPANT_IDS: [&str; 2] = ["ca", BROKER_NAME];
/// Subject alternative names of the broker certificate that [`Pki::init`] creates.
pub const DEFAULT_BROKER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// How long a CRL written by [`Pki::init`] or [`Pki::revoke`] stays valid.
pub const CRL_VALIDITY: Duration = Duration::days(30);
/// Lifetime of the federation CA.
const CA_VALIDITY: Duration = Duration::days(3653);
/// Backdating of new certificates, to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::minutes(5);

/// Validity window of an issued certificate (default: now - 5 min .. now + 365 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Default for Validity {
    fn default() -> Self {
        Validity::days(365)
    }
}

impl Validity {
    /// From five minutes ago (clock skew) to `days` days from now.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - BACKDATE,
            not_after: now + Duration::days(days),
        }
    }
}

/// A certificate and key just written by the PKI.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The PEM certificate file.
    pub cert_path: PathBuf,
    /// The PEM private key file (mode 0600).
    pub key_path: PathBuf,
    /// The identity in the certificate's URI SAN.
    pub spiffe_id: SpiffeId,
    /// The serial, normalised as [`crate::peer_certificate`] and [`crate::crl_info`] report it.
    pub serial: Vec<u8>,
}

/// The broker's server certificate and key just written by the PKI.
#[derive(Clone, Debug)]
pub struct ServerCertificate {
    /// The PEM certificate file.
    pub cert_path: PathBuf,
    /// The PEM private key file (mode 0600).
    pub key_path: PathBuf,
    /// The serial, normalised.
    pub serial: Vec<u8>,
}

/// A federation PKI directory, opened with its CA's certificate and key.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    trust_domain: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// Subject key identifier of the CA, repeated as the CRL's authority key identifier.
    ca_key_id: KeyIdMethod,
}

/// Validates a certificate name: "broker", "<participant>" or "<participant>/<agent>".
fn validate_name(name: &str) -> Result<(), CertError> {
    if name == BROKER_NAME {
        return Ok(());
    }
    let valid = match name.split_once('/') {
        None => validate_participant_id(name).is_ok(),
        Some((participant, agent)) => {
            validate_participant_id(participant).is_ok() && validate_agent_id(agent).is_ok()
        }
    };
    if valid {
        Ok(())
    } else {
        Err(CertError::InvalidName(name.to_owned()))
    }
}

fn check_not_reserved(id: &str) -> Result<(), CertError> {
    if RESERVED_PARTICIPANT_IDS.contains(&id) {
        return Err(CertError::ReservedParticipantId(id.to_owned()));
    }
    Ok(())
}

fn new_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CertError::generate(format!("a key for {what}"), e))
}

fn uri_san(uri: &str, what: &str) -> Result<SanType, CertError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| CertError::invalid(what, format!("URI SAN {uri:?}: {e}")))
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

impl Pki {
    /// Creates what is missing in a PKI directory and opens it: the CA (`ca.crt`, `ca.key`), a
    /// certificate for every listed participant lacking `<id>.crt`, the broker's
    /// server certificate (SAN DNS localhost, IP 127.0.0.1 and ::1, EKU serverAuth only) and an
    /// empty CRL valid 30 days. Idempotent: existing files are kept. Errors if an existing CA
    /// belongs to another trust domain, or a participant id is invalid or reserved ("ca", "broker").
    pub fn init(dir: &Path, trust_domain: &str, participants: &[&str]) -> Result<Pki, CertError> {
        validate_trust_domain(trust_domain)?;
        for id in participants {
            validate_participant_id(id)?;
            check_not_reserved(id)?;
        }
        create_dir_all(dir)?;
        let ca_cert = dir.join(CA_CERT);
        let ca_key = dir.join(CA_KEY);
        let pki = if ca_cert.exists() || ca_key.exists() {
            let pki = Pki::open(dir)?;
            if pki.trust_domain != trust_domain {
                return Err(CertError::TrustDomainMismatch {
                    path: ca_cert,
                    found: pki.trust_domain,
                    expected: trust_domain.to_owned(),
                });
            }
            pki
        } else {
            Pki::create_ca(dir, trust_domain)?
        };
        for id in participants {
            // A certificate without its key is one whose key was handed over (the key is
            // written first): reissuing it would leave the one in use out of this folder.
            if !pki.cert_path(id).exists() {
                pki.issue_participant(id, &Validity::default())?;
            }
        }
        if !pki.cert_path(BROKER_NAME).exists() || !pki.key_path(BROKER_NAME).exists() {
            pki.issue_broker(&DEFAULT_BROKER_NAMES, &Validity::default())?;
        }
        if !pki.crl_path().exists() {
            let now = OffsetDateTime::now_utc();
            pki.sign_crl(&[], 1, now, now + CRL_VALIDITY)?;
        }
        Ok(pki)
    }

    /// Generates the CA, writes `ca.key` then `ca.crt` (so `ca.crt` implies a complete CA), opens it.
    fn create_ca(dir: &Path, trust_domain: &str) -> Result<Pki, CertError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let what = display(&cert_path);
        let key = new_key(&what)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(&what)?));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Une Fois federation CA ({trust_domain})"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri_san(&SpiffeId::trust_domain_uri(trust_domain), &what)?];
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertError::generate(what.clone(), e))?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), PUBLIC_MODE)?;
        Pki::open(dir)
    }

    /// Opens an existing PKI directory: reads `ca.crt` and `ca.key`, checks that they match, and
    /// takes the trust domain from the CA's SAN URI `spiffe://<trust-domain>`.
    pub fn open(dir: &Path) -> Result<Pki, CertError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let what = display(&cert_path);
        let ca_der = load_certificates(&cert_path)?.swap_remove(0);
        let key = KeyPair::from_pem(&read_to_string(&key_path)?)
            .map_err(|e| CertError::invalid(display(&key_path), e.to_string()))?;

        let cert = parse_certificate(&ca_der, &what)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::invalid(
                display(&key_path),
                format!("the key does not match the certificate {what}"),
            ));
        }
        let trust_domains: Vec<&str> = uri_sans(&cert, &what)?
            .into_iter()
            .filter_map(|uri| uri.strip_prefix("spiffe://"))
            .collect();
        let trust_domain = match trust_domains.as_slice() {
            [td] => *td,
            _ => {
                return Err(CertError::invalid(
                    what,
                    "expected exactly one SAN URI spiffe://<trust-domain>",
                ));
            }
        };
        validate_trust_domain(trust_domain)
            .map_err(|e| CertError::invalid(what.clone(), e.to_string()))?;
        let ca_key_id = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let trust_domain = trust_domain.to_owned();
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| CertError::invalid(what.clone(), e.to_string()))?;
        Ok(Pki {
            dir: dir.to_owned(),
            trust_domain,
            ca_der,
            issuer,
            ca_key_id,
        })
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The federation's trust domain, from the CA certificate.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate (DER), the trust anchor of every TLS peer.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// `<dir>/ca.crt`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// `<dir>/crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL_FILE)
    }

    /// Where the certificate of `name` lives: "caf" -> `<dir>/caf.crt`, "caf/a.martin" ->
    /// `<dir>/agents/caf/a.martin.crt`, "broker" -> `<dir>/broker.crt`. The name is not
    /// validated here (the issuing and revoking methods do).
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.file_path(name, "crt")
    }

    /// Where the private key of `name` lives, as [`Pki::cert_path`] with `.key`.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.file_path(name, "key")
    }

    fn file_path(&self, name: &str, ext: &str) -> PathBuf {
        match name.split_once('/') {
            Some((participant, agent)) => self
                .dir
                .join(AGENTS_DIR)
                .join(participant)
                .join(format!("{agent}.{ext}")),
            None => self.dir.join(format!("{name}.{ext}")),
        }
    }

    /// (Re)issues `<id>.crt`/`<id>.key` for a participant: EKU clientAuth only, SAN URI
    /// `spiffe://<td>/participant/<id>`. The previous certificate, if any, stays valid until
    /// revoked (revoking the participant revokes every certificate it was issued: `issued.log`).
    pub fn issue_participant(
        &self,
        id: &str,
        validity: &Validity,
    ) -> Result<IssuedCertificate, CertError> {
        check_not_reserved(id)?;
        let spiffe_id = SpiffeId::participant(&self.trust_domain, id)?;
        self.issue_client(id, spiffe_id, validity)
    }

    /// (Re)issues `agents/<participant>/<agent>.crt`/`.key`: EKU clientAuth only, SAN URI
    /// `spiffe://<td>/participant/<participant>/agent/<agent>`.
    pub fn issue_agent(
        &self,
        participant: &str,
        agent: &str,
        validity: &Validity,
    ) -> Result<IssuedCertificate, CertError> {
        let spiffe_id = SpiffeId::agent(&self.trust_domain, participant, agent)?;
        let name = format!("{participant}/{agent}");
        // A revoked structure gets no new agent (until it gets a new certificate itself).
        if self.is_revoked(participant)? {
            return Err(CertError::invalid(
                display(&self.cert_path(&name)),
                format!(
                    "the certificate of {participant} is revoked: issue {participant} a new one \
                     before its agents"
                ),
            ));
        }
        create_dir_all(&self.dir.join(AGENTS_DIR).join(participant))?;
        self.issue_client(&name, spiffe_id, validity)
    }

    /// (Re)issues `broker.crt`/`broker.key`, the broker's TLS server certificate: EKU serverAuth
    /// only, one SAN per name (an IP address if it parses as one, a DNS name otherwise).
    pub fn issue_broker(
        &self,
        names: &[&str],
        validity: &Validity,
    ) -> Result<ServerCertificate, CertError> {
        let cert_path = self.cert_path(BROKER_NAME);
        let what = display(&cert_path);
        if names.is_empty() {
            return Err(CertError::invalid(
                what,
                "the broker needs at least one name",
            ));
        }
        let sans = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ia5String::try_from(*name)
                    .map(SanType::DnsName)
                    .map_err(|e| {
                        CertError::invalid(what.clone(), format!("DNS name {name:?}: {e}"))
                    }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let serial = self.issue_leaf(
            BROKER_NAME,
            BROKER_NAME,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
        )?;
        Ok(ServerCertificate {
            cert_path,
            key_path: self.key_path(BROKER_NAME),
            serial,
        })
    }

    fn issue_client(
        &self,
        name: &str,
        spiffe_id: SpiffeId,
        validity: &Validity,
    ) -> Result<IssuedCertificate, CertError> {
        let cert_path = self.cert_path(name);
        let san = uri_san(&spiffe_id.to_string(), &display(&cert_path))?;
        let serial = self.issue_leaf(
            name,
            name,
            vec![san],
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )?;
        Ok(IssuedCertificate {
            cert_path,
            key_path: self.key_path(name),
            spiffe_id,
            serial,
        })
    }

    /// Generates a key and a CA-signed leaf certificate, writes both, returns the serial.
    fn issue_leaf(
        &self,
        name: &str,
        common_name: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        validity: &Validity,
    ) -> Result<Vec<u8>, CertError> {
        let cert_path = self.cert_path(name);
        let what = display(&cert_path);
        if validity.not_after <= validity.not_before {
            return Err(CertError::InvalidValidity {
                what,
                not_before: validity.not_before,
                not_after: validity.not_after,
            });
        }
        let key = new_key(&what)?;
        let serial = random_serial(&what)?;
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CertError::generate(what, e))?;
        crate::issued::record(
            &self.dir,
            name,
            &normalize_serial(&serial),
            validity.not_after,
        )?;
        write_atomic(
            &self.key_path(name),
            key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        write_atomic(&cert_path, cert.pem().as_bytes(), PUBLIC_MODE)?;
        Ok(normalize_serial(&serial))
    }

    /// Adds every unexpired certificate issued to `name` ("caf", "caf/a.martin", "broker") to
    /// the CRL: the one at `cert_path(name)` and those `issued.log` records (reissued ones,
    /// whose files were replaced), and re-signs `crl.pem` with the next CRL number, valid 30
    /// days. Revoking a participant also revokes every agent certificate this PKI issued under
    /// it (`agents/<participant>/*.crt` and the record's): an agent acts in its structure's
    /// name, and must not outlive it. Returns the names newly revoked, the participant first; a
    /// serial already in the CRL is left as it is (revoking again is not an error, and revokes
    /// the certificates issued since).
    pub fn revoke(&self, name: &str) -> Result<Vec<String>, CertError> {
        validate_name(name)?;
        let issued = crate::issued::read(&self.dir)?;
        let now = OffsetDateTime::now_utc();
        let mut names = vec![name.to_owned()];
        if name != BROKER_NAME && !name.contains('/') {
            let mut agents = self.agents_of(name)?;
            let prefix = format!("{name}/");
            agents.extend(
                issued
                    .iter()
                    .filter(|i| i.name.starts_with(&prefix) && validate_name(&i.name).is_ok())
                    .map(|i| i.name.clone()),
            );
            agents.sort();
            agents.dedup();
            names.extend(agents);
        }
        let current = self.read_crl()?;
        let mut revoked = current.revoked;
        let mut newly = Vec::new();
        for each in names {
            let mut serials: Vec<Vec<u8>> = issued
                .iter()
                .filter(|i| i.name == each && i.not_after > now.unix_timestamp())
                .map(|i| i.serial.clone())
                .collect();
            // A certificate issued before the record existed is known by its file alone; the
            // name asked for must have one or the other.
            if self.cert_path(&each).exists() || (each == name && serials.is_empty()) {
                serials.push(self.issued_serial(&each)?);
            }
            let mut any = false;
            for serial in serials {
                if revoked.iter().any(|r| r.serial == serial) {
                    continue;
                }
                revoked.push(RevokedEntry {
                    serial,
                    revocation_time: now,
                    reason: Some(RevocationReason::Unspecified),
                });
                any = true;
            }
            if any {
                newly.push(each);
            }
        }
        if newly.is_empty() {
            return Ok(newly);
        }
        let number = self.next_crl_number(current.crl_number)?;
        self.sign_crl(&revoked, number, now, now + CRL_VALIDITY)?;
        Ok(newly)
    }

    /// The agents whose certificates this PKI holds under `participant`
    /// (`agents/<participant>/<agent>.crt`), as `participant/agent` names, sorted.
    pub fn agents_of(&self, participant: &str) -> Result<Vec<String>, CertError> {
        let dir = self.dir.join(AGENTS_DIR).join(participant);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CertError::io("cannot read", &dir, source)),
        };
        let mut agents = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CertError::io("cannot read", &dir, source))?;
            let file = entry.file_name();
            let Some(agent) = file.to_str().and_then(|f| f.strip_suffix(".crt")) else {
                continue;
            };
            let name = format!("{participant}/{agent}");
            if validate_name(&name).is_ok() {
                agents.push(name);
            }
        }
        agents.sort();
        Ok(agents)
    }

    /// The normalised serial of the certificate at `cert_path(name)`, checked to be this CA's.
    fn issued_serial(&self, name: &str) -> Result<Vec<u8>, CertError> {
        let cert_path = self.cert_path(name);
        let what = display(&cert_path);
        let der = load_certificates(&cert_path)?.swap_remove(0);
        let cert = parse_certificate(&der, &what)?;
        let ca = parse_certificate(&self.ca_der, &display(&self.ca_cert_path()))?;
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CertError::invalid(
                what,
                format!("not issued by {}", self.ca_cert_path().display()),
            ));
        }
        Ok(normalize_serial(cert.raw_serial()))
    }

    /// Whether the certificate at `cert_path(name)` is in the CRL (`false` when there is none).
    pub fn is_revoked(&self, name: &str) -> Result<bool, CertError> {
        if !self.cert_path(name).exists() {
            return Ok(false);
        }
        let serial = self.issued_serial(name)?;
        Ok(self.read_crl()?.revoked.iter().any(|r| r.serial == serial))
    }

    /// Re-signs `crl.pem` with its current revoked list, the next CRL number and the given dates
    /// (operators renew it before `next_update`; tests make an expired one).
    pub fn write_crl(
        &self,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<(), CertError> {
        let current = self.read_crl()?;
        let number = self.next_crl_number(current.crl_number)?;
        self.sign_crl(&current.revoked, number, this_update, next_update)
    }

    fn read_crl(&self) -> Result<ParsedCrl, CertError> {
        let path = self.crl_path();
        let crls = load_crls(&path)?;
        if crls.len() != 1 {
            return Err(CertError::invalid(
                display(&path),
                format!("{} CRLs, expected one", crls.len()),
            ));
        }
        parse_crl(&crls[0], &display(&path))
    }

    fn next_crl_number(&self, current: Option<u64>) -> Result<u64, CertError> {
        current
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| CertError::invalid(display(&self.crl_path()), "CRL number overflow"))
    }

    fn sign_crl(
        &self,
        revoked: &[RevokedEntry],
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<(), CertError> {
        let path = self.crl_path();
        let what = display(&path);
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&normalize_serial(&number.to_be_bytes())),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.revocation_time,
                    reason_code: r.reason,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.ca_key_id.clone(),
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| CertError::generate(what.clone(), e))?;
        let pem = crl.pem().map_err(|e| CertError::generate(what, e))?;
        write_atomic(&path, pem.as_bytes(), PUBLIC_MODE)
    }
}

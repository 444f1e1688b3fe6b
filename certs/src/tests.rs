//! Behaviour of a PKI directory, observed through its files and the public API.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::UnixTime;
use time::{Duration, OffsetDateTime};

use crate::*;

const TD: &str = "unefois.test";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cert_der(path: &Path) -> Vec<u8> {
    load_certificates(path).unwrap().remove(0).to_vec()
}

fn crl(pki: &Pki) -> CrlInfo {
    crl_info(&load_crls(&pki.crl_path()).unwrap()[0]).unwrap()
}

#[test]
fn init_creates_all_files_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &["caf", "dgfip"]).unwrap();
    assert_eq!(pki.dir(), dir.path());
    assert_eq!(pki.trust_domain(), TD);
    for f in [
        "ca.crt",
        "caf.crt",
        "dgfip.crt",
        "broker.crt",
        "crl.pem",
        "issued.log",
    ] {
        let p = dir.path().join(f);
        assert_eq!(mode(&p), 0o644, "{f}");
    }
    for f in ["ca.key", "caf.key", "dgfip.key", "broker.key"] {
        let p = dir.path().join(f);
        assert_eq!(mode(&p), 0o600, "{f}");
        load_private_key(&p).unwrap();
    }
    assert_eq!(pki.ca_cert_path(), dir.path().join("ca.crt"));
    assert_eq!(pki.crl_path(), dir.path().join("crl.pem"));
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 10, "{names:?}");

    let info = crl(&pki);
    assert!(info.revoked_serials.is_empty());
    assert_eq!(info.crl_number, Some(1));
    let next = info.next_update.unwrap();
    let in_29_days = SystemTime::now() + std::time::Duration::from_secs(29 * 86400);
    assert!(next > in_29_days);
}

#[test]
fn init_is_idempotent_and_adds_new_participants() {
    let dir = tempfile::tempdir().unwrap();
    Pki::init(dir.path(), TD, &["caf"]).unwrap();
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let caf = std::fs::read(dir.path().join("caf.crt")).unwrap();
    let broker = std::fs::read(dir.path().join("broker.crt")).unwrap();
    let crl_pem = std::fs::read(dir.path().join("crl.pem")).unwrap();

    let pki = Pki::init(dir.path(), TD, &["caf", "mairie-lyon"]).unwrap();
    assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca);
    assert_eq!(std::fs::read(dir.path().join("caf.crt")).unwrap(), caf);
    assert_eq!(
        std::fs::read(dir.path().join("broker.crt")).unwrap(),
        broker
    );
    assert_eq!(std::fs::read(dir.path().join("crl.pem")).unwrap(), crl_pem);
    let peer = peer_certificate(&cert_der(&pki.cert_path("mairie-lyon"))).unwrap();
    assert_eq!(
        peer.spiffe_id,
        SpiffeId::participant(TD, "mairie-lyon").unwrap()
    );
}

#[test]
fn init_rejects_another_trust_domain_and_bad_ids() {
    let dir = tempfile::tempdir().unwrap();
    Pki::init(dir.path(), TD, &[]).unwrap();
    let err = Pki::init(dir.path(), "other.test", &[]).unwrap_err();
    assert!(
        matches!(err, CertError::TrustDomainMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ca.crt"), "{err}");

    assert!(Pki::init(dir.path(), TD, &["CAF"]).is_err());
    assert!(matches!(
        Pki::init(dir.path(), TD, &["broker"]).unwrap_err(),
        CertError::ReservedParticipantId(_)
    ));
    assert!(Pki::init(dir.path(), TD, &["ca"]).is_err());
    let empty = tempfile::tempdir().unwrap();
    assert!(Pki::init(empty.path(), "Bad_TD", &[]).is_err());
}

#[test]
fn open_reads_back_the_trust_domain_and_names_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    Pki::init(dir.path(), TD, &["caf"]).unwrap();
    let pki = Pki::open(dir.path()).unwrap();
    assert_eq!(pki.trust_domain(), TD);
    assert_eq!(pki.ca_certificate().as_ref(), cert_der(&pki.ca_cert_path()));

    let empty = tempfile::tempdir().unwrap();
    let err = Pki::open(empty.path()).unwrap_err();
    assert!(err.to_string().contains("ca.crt"), "{err}");
}

#[test]
fn open_rejects_a_key_that_does_not_match_the_ca() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    Pki::init(a.path(), TD, &[]).unwrap();
    Pki::init(b.path(), TD, &[]).unwrap();
    std::fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
    let err = Pki::open(a.path()).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn participant_certificate_identity_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &[]).unwrap();
    let issued = pki.issue_participant("caf", &Validity::default()).unwrap();
    assert_eq!(issued.cert_path, dir.path().join("caf.crt"));
    assert_eq!(issued.key_path, dir.path().join("caf.key"));
    assert_eq!(mode(&issued.key_path), 0o600);
    let peer = peer_certificate(&cert_der(&issued.cert_path)).unwrap();
    assert_eq!(peer.spiffe_id, issued.spiffe_id);
    assert_eq!(
        peer.spiffe_id.to_string(),
        "spiffe://unefois.test/participant/caf"
    );
    assert_eq!(peer.serial, issued.serial);
    assert!(peer.not_after > SystemTime::now() + std::time::Duration::from_secs(364 * 86400));

    // Re-issuing gives a new serial.
    let again = pki.issue_participant("caf", &Validity::default()).unwrap();
    assert_ne!(again.serial, issued.serial);
}

#[test]
fn agent_certificate_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &["mediation-x"]).unwrap();
    let issued = pki
        .issue_agent("mediation-x", "a.martin", &Validity::default())
        .unwrap();
    assert_eq!(
        issued.cert_path,
        dir.path().join("agents/mediation-x/a.martin.crt")
    );
    assert_eq!(pki.cert_path("mediation-x/a.martin"), issued.cert_path);
    assert_eq!(pki.key_path("mediation-x/a.martin"), issued.key_path);
    assert_eq!(mode(&issued.key_path), 0o600);
    let peer = peer_certificate(&cert_der(&issued.cert_path)).unwrap();
    assert_eq!(
        peer.spiffe_id.to_string(),
        "spiffe://unefois.test/participant/mediation-x/agent/a.martin"
    );
    assert_eq!(peer.spiffe_id.agent.as_deref(), Some("a.martin"));
    assert_eq!(peer.serial, issued.serial);

    assert!(
        pki.issue_agent("mediation-x", "../x", &Validity::default())
            .is_err()
    );
    assert!(
        pki.issue_agent("Mediation", "a", &Validity::default())
            .is_err()
    );
}

#[test]
fn peer_certificate_rejects_certificates_without_a_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &[]).unwrap();
    // The broker's certificate has DNS and IP SANs only.
    let err = peer_certificate(&cert_der(&pki.cert_path("broker"))).unwrap_err();
    assert!(err.to_string().contains("URI SAN"), "{err}");
    // The CA's URI is not a participant's.
    assert!(peer_certificate(&cert_der(&pki.ca_cert_path())).is_err());
    assert!(peer_certificate(b"not a certificate").is_err());
}

#[test]
fn revoke_adds_the_serial_to_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &["caf", "dgfip"]).unwrap();
    let caf = peer_certificate(&cert_der(&pki.cert_path("caf"))).unwrap();
    let dgfip = peer_certificate(&cert_der(&pki.cert_path("dgfip"))).unwrap();

    pki.revoke("caf").unwrap();
    let info = crl(&pki);
    assert_eq!(info.revoked_serials, vec![caf.serial.clone()]);
    assert_eq!(info.crl_number, Some(2));
    assert!(info.next_update.unwrap() > SystemTime::now());

    // Twice: not an error, nothing changes.
    let before = std::fs::read(pki.crl_path()).unwrap();
    pki.revoke("caf").unwrap();
    assert_eq!(std::fs::read(pki.crl_path()).unwrap(), before);

    let agent = pki
        .issue_agent("dgfip", "a.martin", &Validity::default())
        .unwrap();
    pki.revoke("dgfip/a.martin").unwrap();
    let info = crl(&pki);
    assert_eq!(info.revoked_serials, vec![caf.serial, agent.serial]);
    assert!(!info.revoked_serials.contains(&dgfip.serial));
    assert_eq!(info.crl_number, Some(3));
    assert_eq!(mode(&pki.crl_path()), 0o644);

    // Survives reopening: the CRL file is the only record.
    let reopened = Pki::open(dir.path()).unwrap();
    reopened.revoke("broker").unwrap();
    assert_eq!(crl(&reopened).revoked_serials.len(), 3);

    let err = pki.revoke("unknown").unwrap_err();
    assert!(err.to_string().contains("unknown.crt"), "{err}");
    assert!(matches!(
        pki.revoke("../ca").unwrap_err(),
        CertError::InvalidName(_)
    ));
}

#[test]
fn revoking_a_structure_revokes_its_agents_and_no_new_one_is_issued() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &["fs-lyon", "fs-paris"]).unwrap();
    let serial = |name: &str| {
        peer_certificate(&cert_der(&pki.cert_path(name)))
            .unwrap()
            .serial
    };
    for agent in ["fs-lyon/b.durand", "fs-lyon/a.martin", "fs-paris/c.petit"] {
        let (structure, agent) = agent.split_once('/').unwrap();
        pki.issue_agent(structure, agent, &Validity::default())
            .unwrap();
    }
    assert_eq!(
        pki.revoke("fs-lyon").unwrap(),
        ["fs-lyon", "fs-lyon/a.martin", "fs-lyon/b.durand"]
    );
    let info = crl(&pki);
    for name in ["fs-lyon", "fs-lyon/a.martin", "fs-lyon/b.durand"] {
        assert!(info.revoked_serials.contains(&serial(name)), "{name}");
    }
    assert!(!info.revoked_serials.contains(&serial("fs-paris/c.petit")));
    assert_eq!(
        info.crl_number,
        Some(2),
        "one CRL for the structure and its agents"
    );
    // No agent under a revoked structure; again with a new certificate for it.
    let err = pki
        .issue_agent("fs-lyon", "d.moreau", &Validity::default())
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    // Revoking again changes nothing; an agent's own revocation stays its own.
    assert!(pki.revoke("fs-lyon").unwrap().is_empty());
    assert_eq!(
        pki.revoke("fs-paris/c.petit").unwrap(),
        ["fs-paris/c.petit"]
    );
    assert!(!crl(&pki).revoked_serials.contains(&serial("fs-paris")));
    pki.issue_participant("fs-lyon", &Validity::default())
        .unwrap();
    pki.issue_agent("fs-lyon", "d.moreau", &Validity::default())
        .unwrap();
}

/// A certificate whose file was replaced (reissued) stays valid until it expires: revoking
/// its name must reach it too, and `init` must not replace a certificate whose key was handed
/// over.
#[test]
fn revoking_a_name_reaches_every_certificate_it_was_issued() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &["caf", "fs-lyon"]).unwrap();
    let serial = |name: &str| {
        peer_certificate(&cert_der(&pki.cert_path(name)))
            .unwrap()
            .serial
    };
    // caf's key handed over and removed from the CA's machine: init for a new participant
    // keeps caf's certificate.
    let caf_first = serial("caf");
    std::fs::remove_file(pki.key_path("caf")).unwrap();
    Pki::init(dir.path(), TD, &["caf", "fs-lyon", "dgfip"]).unwrap();
    assert_eq!(serial("caf"), caf_first, "init kept the certificate in use");
    // Reissued on purpose (its files removed), and an agent issued twice (a lost laptop).
    std::fs::remove_file(pki.cert_path("caf")).unwrap();
    pki.issue_participant("caf", &Validity::default()).unwrap();
    let caf_second = serial("caf");
    pki.issue_agent("fs-lyon", "a.martin", &Validity::default())
        .unwrap();
    let agent_first = serial("fs-lyon/a.martin");
    pki.issue_agent("fs-lyon", "a.martin", &Validity::default())
        .unwrap();
    let agent_second = serial("fs-lyon/a.martin");
    // An agent whose files left the CA's machine.
    pki.issue_agent("fs-lyon", "b.durand", &Validity::default())
        .unwrap();
    let moved = serial("fs-lyon/b.durand");
    std::fs::remove_file(pki.cert_path("fs-lyon/b.durand")).unwrap();
    std::fs::remove_file(pki.key_path("fs-lyon/b.durand")).unwrap();

    assert_eq!(pki.revoke("caf").unwrap(), ["caf"]);
    assert_eq!(
        pki.revoke("fs-lyon").unwrap(),
        ["fs-lyon", "fs-lyon/a.martin", "fs-lyon/b.durand"]
    );
    let info = crl(&pki);
    for (what, s) in [
        ("caf's first", &caf_first),
        ("caf's second", &caf_second),
        ("the agent's first", &agent_first),
        ("the agent's second", &agent_second),
        ("the moved agent's", &moved),
    ] {
        assert!(info.revoked_serials.contains(s), "{what} certificate");
    }
    assert!(!info.revoked_serials.contains(&serial("dgfip")));
}

#[test]
fn write_crl_with_a_past_next_update_gives_an_expired_crl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &["caf"]).unwrap();
    pki.revoke("caf").unwrap();
    let now = OffsetDateTime::now_utc();
    pki.write_crl(now - Duration::days(2), now - Duration::days(1))
        .unwrap();
    let info = crl(&pki);
    assert!(info.next_update.unwrap() < SystemTime::now());
    assert!(info.this_update < info.next_update.unwrap());
    assert_eq!(info.revoked_serials.len(), 1, "the revoked list is kept");
    assert_eq!(info.crl_number, Some(3));
}

#[test]
fn a_certificate_issued_in_the_past_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &[]).unwrap();
    let now = OffsetDateTime::now_utc();
    let past = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let issued = pki.issue_participant("caf", &past).unwrap();
    let peer = peer_certificate(&cert_der(&issued.cert_path)).unwrap();
    assert!(peer.not_after < SystemTime::now());

    let inverted = Validity {
        not_before: now,
        not_after: now - Duration::days(1),
    };
    assert!(matches!(
        pki.issue_participant("caf", &inverted).unwrap_err(),
        CertError::InvalidValidity { .. }
    ));
}

#[test]
fn pem_loaders_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let err = load_certificates(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.crt"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(
        load_certificates(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty.pem")
    );
    assert!(
        load_crls(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty.pem")
    );
    assert!(
        load_private_key(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty.pem")
    );
}

/// rustls's webpki verifier, built as the broker builds it, accepts the chain and honours the CRL.
#[test]
fn rustls_verifier_accepts_issued_certificates_and_rejects_revoked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), TD, &["caf", "dgfip"]).unwrap();
    let agent = pki
        .issue_agent("dgfip", "a.martin", &Validity::default())
        .unwrap();
    pki.revoke("dgfip").unwrap();

    let verifier = || {
        let mut roots = RootCertStore::empty();
        for ca in load_certificates(&pki.ca_cert_path()).unwrap() {
            roots.add(ca).unwrap();
        }
        WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(load_crls(&pki.crl_path()).unwrap())
        .build()
        .unwrap()
    };
    let v = verifier();
    let now = UnixTime::now();
    let leaf = |name: &str| load_certificates(&pki.cert_path(name)).unwrap().remove(0);

    v.verify_client_cert(&leaf("caf"), &[], now).unwrap();
    let err = v.verify_client_cert(&leaf("dgfip"), &[], now).unwrap_err();
    assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
    // The structure's agent went with it.
    let err = v
        .verify_client_cert(&load_certificates(&agent.cert_path).unwrap()[0], &[], now)
        .unwrap_err();
    assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
    // A server certificate is not a client certificate.
    assert!(v.verify_client_cert(&leaf("broker"), &[], now).is_err());
    // Neither is a certificate from another federation CA.
    let other = tempfile::tempdir().unwrap();
    let other = Pki::init(other.path(), TD, &["caf"]).unwrap();
    let foreign = load_certificates(&other.cert_path("caf"))
        .unwrap()
        .remove(0);
    assert!(v.verify_client_cert(&foreign, &[], now).is_err());
}

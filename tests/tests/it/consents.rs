//! Consents end to end: a guichet records a citizen's consent, the consumer fetches under it, a
//! revocation applies to the very next Fetch; the rules of Grant, who sees what, idempotency,
//! durability across restarts and a lost derived state, and nothing answered before its journal
//! record is synced.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker::journal::{FaultInjector, FaultPoint};
use tonic::Code;
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_tests::clients::{consents, exchange};
use unefois_tests::refusals::refused;
use unefois_tests::requests::fetch;
use unefois_tests::sample::{CANTINE, ETU, QF, RFR};
use unefois_tests::{BrokerOptions, TestBroker, TestPki};

const PERISCOLAIRE: &str = "tarification_periscolaire";

/// A valid grant toward `mairie-lyon` for the CAF's family quotient, by mairie-lyon, with the
/// person's ID token (when the subject can have one).
fn grant(subject: &str, purpose: &str) -> pb::GrantConsentRequest {
    grant_at("mairie-lyon", subject, purpose)
}

/// A grant at guichet `guichet`, with the person's ID token for that guichet.
fn grant_at(guichet: &str, subject: &str, purpose: &str) -> pb::GrantConsentRequest {
    let id_token = if subject.starts_with("test:") || subject.starts_with("pivot:") {
        unefois_tests::id_token(subject, guichet)
    } else {
        String::new()
    };
    pb::GrantConsentRequest {
        subject: subject.into(),
        consumer: "mairie-lyon".into(),
        attestation_types: vec![QF.into()],
        purpose: purpose.into(),
        valid_days: 30,
        id_token,
        ..Default::default()
    }
}

fn list(subject: &str) -> pb::ListConsentsRequest {
    pb::ListConsentsRequest {
        subject: subject.into(),
        ..Default::default()
    }
}

fn get(consent_id: &str) -> pb::GetConsentRequest {
    pb::GetConsentRequest {
        consent_id: consent_id.into(),
    }
}

fn revoke(consent_id: &str) -> pb::RevokeConsentRequest {
    pb::RevokeConsentRequest {
        consent_id: consent_id.into(),
        ..Default::default()
    }
}

/// The consent of a Grant, Revoke or Get answer.
fn consent_of(consent: Option<pb::Consent>) -> pb::Consent {
    consent.unwrap_or_else(|| panic!("the answer carries no consent"))
}

async fn listed_ids(
    client: &mut ConsentsClient<Channel>,
    subject: &str,
) -> anyhow::Result<Vec<String>> {
    let page = client.list(list(subject)).await?.into_inner();
    assert!(page.next_page_token.is_empty(), "more than one page");
    Ok(page.consents.into_iter().map(|c| c.id).collect())
}

#[tokio::test]
async fn grant_then_fetch_then_revoke() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let mut fetcher = exchange(&broker, "mairie-lyon").await?;

    let granted = consent_of(
        lyon.grant(grant("test:alice", CANTINE))
            .await?
            .into_inner()
            .consent,
    );
    assert!(!granted.id.is_empty());
    assert_eq!(granted.status(), pb::ConsentStatus::Active);
    assert!(!granted.subject_pseudonym.is_empty());
    assert!(
        !granted.subject_pseudonym.contains("alice"),
        "{}",
        granted.subject_pseudonym
    );
    assert_eq!(granted.consumer, "mairie-lyon");
    assert_eq!(granted.guichet, "mairie-lyon");
    assert_eq!(granted.attestation_types, vec![QF]);
    assert_eq!(granted.purpose, CANTINE);
    assert!(granted.revoked_at.is_none());
    let (Some(granted_at), Some(expires_at)) = (granted.granted_at, granted.expires_at) else {
        panic!("granted_at and expires_at must be set: {granted:?}");
    };
    let lasts = expires_at.seconds - granted_at.seconds;
    assert!(
        (30 * 86_400 - 2..=30 * 86_400 + 2).contains(&lasts),
        "{lasts} s"
    );

    // The consumer fetches under the consent, and the attestation names it as legal basis.
    let fetched = fetcher
        .fetch(fetch("test:alice", QF, CANTINE))
        .await?
        .into_inner();
    let attestation = fetched
        .attestation
        .unwrap_or_else(|| panic!("no attestation"));
    assert_eq!(attestation.attestation_type, QF);
    assert_eq!(attestation.audience, "mairie-lyon");
    assert_eq!(attestation.purpose, CANTINE);
    assert!(!attestation.subject_pseudonym.contains("alice"));
    let basis = attestation
        .legal_basis
        .unwrap_or_else(|| panic!("no legal basis"));
    assert_eq!(basis.kind(), pb::LegalBasisKind::Consent);
    assert_eq!(basis.consent_id, granted.id);
    let mut claims: Vec<&str> = attestation.claims.keys().map(String::as_str).collect();
    claims.sort_unstable();
    assert_eq!(claims, vec!["mois_reference", "quotient_familial"]);
    assert_eq!(
        attestation.claims["quotient_familial"].value,
        Some(pb::claim_value::Value::IntegerValue(612))
    );

    // Revoked: the very next Fetch is refused.
    let revoked = consent_of(lyon.revoke(revoke(&granted.id)).await?.into_inner().consent);
    assert_eq!(revoked.id, granted.id);
    assert_eq!(revoked.status(), pb::ConsentStatus::Revoked);
    assert!(revoked.revoked_at.is_some());
    let status = refused(
        fetcher.fetch(fetch("test:alice", QF, CANTINE)).await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    assert!(
        status.message().contains(&granted.id),
        "{}",
        status.message()
    );

    // Revoking again changes nothing.
    let again = consent_of(lyon.revoke(revoke(&granted.id)).await?.into_inner().consent);
    assert_eq!(again, revoked);
    let read = consent_of(lyon.get(get(&granted.id)).await?.into_inner().consent);
    assert_eq!(read, revoked);
    broker.stop().await
}

#[tokio::test]
async fn fetch_without_consent_is_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let mut fetcher = exchange(&broker, "mairie-lyon").await?;

    refused(
        fetcher.fetch(fetch("test:bob", QF, CANTINE)).await,
        Code::FailedPrecondition,
        ErrorReason::NoConsent,
    );

    // A consent for another purpose allows that purpose only.
    let periscolaire = consent_of(
        lyon.grant(grant("test:bob", PERISCOLAIRE))
            .await?
            .into_inner()
            .consent,
    );
    refused(
        fetcher.fetch(fetch("test:bob", QF, CANTINE)).await,
        Code::FailedPrecondition,
        ErrorReason::NoConsent,
    );
    let fetched = fetcher
        .fetch(fetch("test:bob", QF, PERISCOLAIRE))
        .await?
        .into_inner();
    let basis = fetched
        .attestation
        .and_then(|a| a.legal_basis)
        .unwrap_or_else(|| panic!("no legal basis"));
    assert_eq!(basis.consent_id, periscolaire.id);

    // Bob's consent does not allow fetching about Alice.
    refused(
        fetcher.fetch(fetch("test:alice", QF, PERISCOLAIRE)).await,
        Code::FailedPrecondition,
        ErrorReason::NoConsent,
    );
    broker.stop().await
}

#[tokio::test]
async fn grant_rules() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;

    // Only a guichet records consents.
    for name in ["caf", "cnil", "mairie-test"] {
        let mut client = consents(&broker, name).await?;
        refused(
            client.grant(grant("test:alice", CANTINE)).await,
            Code::PermissionDenied,
            ErrorReason::WrongRole,
        );
    }

    // Only for a consumer holding a consent habilitation for that type and purpose.
    let without_habilitation = [
        pb::GrantConsentRequest {
            consumer: "mairie-test".into(),
            ..grant("test:alice", CANTINE)
        },
        // A law habilitation is not a consent habilitation.
        pb::GrantConsentRequest {
            attestation_types: vec![RFR.into()],
            ..grant("test:alice", CANTINE)
        },
        // One type without habilitation spoils the whole grant.
        pb::GrantConsentRequest {
            attestation_types: vec![QF.into(), RFR.into()],
            ..grant("test:alice", CANTINE)
        },
    ];
    for request in without_habilitation {
        refused(
            lyon.grant(request).await,
            Code::PermissionDenied,
            ErrorReason::NoHabilitation,
        );
    }
    // A consent habilitation for other purposes only: one answer for one cause, the one a
    // Fetch of the same type for the same purpose gives.
    refused(
        lyon.grant(pb::GrantConsentRequest {
            attestation_types: vec!["mesr.statut_etudiant".into()],
            ..grant("test:alice", CANTINE)
        })
        .await,
        Code::PermissionDenied,
        ErrorReason::PurposeNotAllowed,
    );
    refused(
        exchange(&broker, "mairie-lyon")
            .await?
            .fetch(fetch("test:alice", "mesr.statut_etudiant", CANTINE))
            .await,
        Code::PermissionDenied,
        ErrorReason::PurposeNotAllowed,
    );

    let invalid = [
        pb::GrantConsentRequest {
            valid_days: 0,
            ..grant("test:alice", CANTINE)
        },
        pb::GrantConsentRequest {
            valid_days: 366,
            ..grant("test:alice", CANTINE)
        },
        pb::GrantConsentRequest {
            attestation_types: Vec::new(),
            ..grant("test:alice", CANTINE)
        },
        pb::GrantConsentRequest {
            attestation_types: vec![QF.into(), QF.into()],
            ..grant("test:alice", CANTINE)
        },
        pb::GrantConsentRequest {
            consumer: String::new(),
            ..grant("test:alice", CANTINE)
        },
        grant("alice", CANTINE),
        grant("test:Alice", CANTINE),
        grant("", CANTINE),
        grant(&format!("test:{}", "a".repeat(295)), CANTINE),
    ];
    for request in invalid {
        refused(
            lyon.grant(request).await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        );
    }

    refused(
        lyon.grant(pb::GrantConsentRequest {
            attestation_types: vec!["caf.inconnu".into()],
            ..grant("test:alice", CANTINE)
        })
        .await,
        Code::NotFound,
        ErrorReason::UnknownAttestationType,
    );
    refused(
        lyon.grant(grant("test:alice", "cantine_gratuite")).await,
        Code::InvalidArgument,
        ErrorReason::UnknownPurpose,
    );

    // Nothing refused was recorded; the longest allowed consent is.
    assert!(listed_ids(&mut lyon, "test:alice").await?.is_empty());
    let year = consent_of(
        lyon.grant(pb::GrantConsentRequest {
            valid_days: 365,
            ..grant("test:alice", CANTINE)
        })
        .await?
        .into_inner()
        .consent,
    );
    assert_eq!(year.status(), pb::ConsentStatus::Active);
    assert_eq!(listed_ids(&mut lyon, "test:alice").await?, vec![year.id]);
    broker.stop().await
}

/// The sample federation plus `mairie-villeurbanne`, a guichet that is not a consumer, so that
/// the guichet recording a consent and the consumer it is for are different participants.
/// Returns the PKI and the registry file (in the PKI's scratch folder).
fn federation_with_a_second_guichet() -> anyhow::Result<(TestPki, PathBuf)> {
    let sample = broker::registry::load(&unefois_tests::sample_registry())?;
    let mut ids: Vec<&str> = sample.participants().map(|p| p.id.as_str()).collect();
    ids.push("mairie-villeurbanne");
    let pki = TestPki::new(sample.trust_domain(), &ids)?;

    let dir = pki.scratch();
    let examples = unefois_tests::repo_root().join("examples");
    unefois_tests::copy_sample_files(&dir)?;
    let mut registry = std::fs::read_to_string(examples.join("registry.toml"))?;
    registry.push_str(
        "\n[[participants]]\nid = \"mairie-villeurbanne\"\nname = \"Ville de Villeurbanne\"\n\
         roles = [\"guichet\"]\n",
    );
    let path = dir.join("registry.toml");
    std::fs::write(&path, registry)?;
    let extended = broker::registry::load(&path)?;
    assert!(extended.participant("mairie-villeurbanne").is_some());
    Ok((pki, path))
}

/// The same scope granted at two guichets is two consents, each its guichet's: the second
/// guichet sees and answers for what it recorded, and the first, withdrawing on its own
/// standing, ends only its own. Before the fix, the second grant renewed the first guichet's
/// consent, which the second could not see, and the first could end it without the person.
#[tokio::test]
async fn a_scope_granted_at_two_guichets_is_each_guichets_own() -> anyhow::Result<()> {
    let (pki, registry) = federation_with_a_second_guichet()?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut villeurbanne = consents(&broker, "mairie-villeurbanne").await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;

    let at_lyon = consent_of(
        lyon.grant(grant_at("mairie-lyon", "test:carol", CANTINE))
            .await?
            .into_inner()
            .consent,
    );
    let granted = villeurbanne
        .grant(grant_at("mairie-villeurbanne", "test:carol", CANTINE))
        .await?
        .into_inner();
    assert!(!granted.renewed, "another guichet's consent is not renewed");
    let at_villeurbanne = consent_of(granted.consent);
    assert_ne!(at_villeurbanne.id, at_lyon.id);
    let seen = consent_of(
        villeurbanne
            .get(get(&at_villeurbanne.id))
            .await?
            .into_inner()
            .consent,
    );
    assert_eq!(seen.status(), pb::ConsentStatus::Active);

    let revoked = lyon.revoke(revoke(&at_lyon.id)).await?.into_inner();
    assert_eq!(revoked.ended, 1, "{revoked:?}");
    let still = consent_of(
        villeurbanne
            .get(get(&at_villeurbanne.id))
            .await?
            .into_inner()
            .consent,
    );
    assert_eq!(still.status(), pb::ConsentStatus::Active);
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch("test:carol", QF, CANTINE))
        .await?;

    // The person, withdrawing with her ID token, ends every one.
    let withdrawn = villeurbanne
        .revoke(pb::RevokeConsentRequest {
            consent_id: at_lyon.id.clone(),
            id_token: unefois_tests::id_token("test:carol", "mairie-villeurbanne"),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(withdrawn.ended, 1, "{withdrawn:?}");
    refused(
        exchange(&broker, "mairie-lyon")
            .await?
            .fetch(fetch("test:carol", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    broker.stop().await
}

#[tokio::test]
async fn visibility() -> anyhow::Result<()> {
    let (pki, registry) = federation_with_a_second_guichet()?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut villeurbanne = consents(&broker, "mairie-villeurbanne").await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let mut caf = consents(&broker, "caf").await?;

    let first = consent_of(
        villeurbanne
            .grant(grant_at("mairie-villeurbanne", "test:carol", CANTINE))
            .await?
            .into_inner()
            .consent,
    );
    assert_eq!(first.guichet, "mairie-villeurbanne");
    assert_eq!(first.consumer, "mairie-lyon");

    // The guichet that recorded it and the consumer it is for read it; nobody else does.
    // Read by id, it carries no pseudonym of the person (the grant's answer carries the
    // guichet's own pairwise one): never the audit pseudonym, which would link the person
    // across participants.
    assert!(!first.subject_pseudonym.is_empty());
    let without_pseudonym = pb::Consent {
        subject_pseudonym: String::new(),
        ..first.clone()
    };
    let by_guichet = consent_of(villeurbanne.get(get(&first.id)).await?.into_inner().consent);
    assert_eq!(by_guichet, without_pseudonym);
    let by_consumer = consent_of(lyon.get(get(&first.id)).await?.into_inner().consent);
    assert_eq!(by_consumer, without_pseudonym);
    for name in ["caf", "cnil", "mairie-test"] {
        let mut other = consents(&broker, name).await?;
        refused(
            other.get(get(&first.id)).await,
            Code::NotFound,
            ErrorReason::UnknownConsent,
        );
    }
    refused(
        lyon.get(get("0190a8c2-0000-7000-8000-000000000000")).await,
        Code::NotFound,
        ErrorReason::UnknownConsent,
    );
    refused(
        lyon.get(get("")).await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );

    // Only the guichet that recorded it revokes it.
    refused(
        caf.revoke(revoke(&first.id)).await,
        Code::NotFound,
        ErrorReason::UnknownConsent,
    );
    refused(
        lyon.revoke(revoke(&first.id)).await,
        Code::PermissionDenied,
        ErrorReason::WrongRole,
    );
    let still = consent_of(lyon.get(get(&first.id)).await?.into_inner().consent);
    assert_eq!(still.status(), pb::ConsentStatus::Active);
    let fetched = exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch("test:carol", QF, CANTINE))
        .await?
        .into_inner();
    let basis = fetched.attestation.and_then(|a| a.legal_basis);
    assert_eq!(basis.map(|b| b.consent_id), Some(first.id.clone()));

    // Three consents of Carol recorded by Villeurbanne, one recorded by Lyon itself: each
    // guichet walks the ones it may see, one page at a time; the consumer sees all four. (A
    // grant of a scope in force renews it: the later ones follow revocations.)
    let second = consent_of(
        villeurbanne
            .grant(grant_at("mairie-villeurbanne", "test:carol", PERISCOLAIRE))
            .await?
            .into_inner()
            .consent,
    );
    villeurbanne.revoke(revoke(&second.id)).await?;
    let third = consent_of(
        villeurbanne
            .grant(grant_at("mairie-villeurbanne", "test:carol", PERISCOLAIRE))
            .await?
            .into_inner()
            .consent,
    );
    villeurbanne.revoke(revoke(&third.id)).await?;
    let own = consent_of(
        lyon.grant(grant("test:carol", PERISCOLAIRE))
            .await?
            .into_inner()
            .consent,
    );
    assert_eq!(own.guichet, "mairie-lyon");
    // Someone else's consents are not listed with Carol's.
    lyon.grant(grant("test:alice", CANTINE)).await?;
    let mut recorded = vec![first.id.clone(), second.id.clone(), third.id.clone()];
    recorded.sort();
    let mut received = [recorded.clone(), vec![own.id.clone()]].concat();
    received.sort();

    for (client, expected) in [(&mut villeurbanne, recorded), (&mut lyon, received)] {
        let mut walked = Vec::new();
        let mut token = String::new();
        for _ in 0..10 {
            let page = client
                .list(pb::ListConsentsRequest {
                    page_size: 1,
                    page_token: token.clone(),
                    ..list("test:carol")
                })
                .await?
                .into_inner();
            assert!(page.consents.len() <= 1, "{page:?}");
            walked.extend(page.consents.into_iter().map(|c| c.id));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert!(token.is_empty(), "the pages do not end: {walked:?}");
        walked.sort();
        assert_eq!(walked, expected);
    }
    // Nobody sees consents it neither recorded nor receives.
    assert!(listed_ids(&mut caf, "test:carol").await?.is_empty());
    assert_eq!(
        listed_ids(&mut lyon, "test:alice").await?.len(),
        1,
        "alice's consent"
    );

    refused(
        lyon.list(list("alice")).await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );
    broker.stop().await
}

#[tokio::test]
async fn idempotent_grant() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let request = pb::GrantConsentRequest {
        request_id: "inscription-cantine-42".into(),
        ..grant("test:david", CANTINE)
    };

    let first = consent_of(lyon.grant(request.clone()).await?.into_inner().consent);
    let retried = consent_of(lyon.grant(request.clone()).await?.into_inner().consent);
    assert_eq!(retried, first);
    assert_eq!(listed_ids(&mut lyon, "test:david").await?, vec![first.id]);

    let status = refused(
        lyon.grant(pb::GrantConsentRequest {
            purpose: PERISCOLAIRE.into(),
            ..request.clone()
        })
        .await,
        Code::AlreadyExists,
        ErrorReason::RequestIdReused,
    );
    assert!(
        status.message().contains("inscription-cantine-42"),
        "{}",
        status.message()
    );
    refused(
        lyon.grant(pb::GrantConsentRequest {
            subject: "test:carol".into(),
            id_token: unefois_tests::id_token("test:carol", "mairie-lyon"),
            ..request.clone()
        })
        .await,
        Code::AlreadyExists,
        ErrorReason::RequestIdReused,
    );
    assert_eq!(listed_ids(&mut lyon, "test:david").await?.len(), 1);
    assert!(listed_ids(&mut lyon, "test:carol").await?.is_empty());

    // Malformed request ids are refused; without a request id, a grant of the same scope renews
    // the consent in force (one consent per scope), and a retry of a renewal gets it again.
    refused(
        lyon.grant(pb::GrantConsentRequest {
            request_id: "pas d'espace".into(),
            ..grant("test:david", CANTINE)
        })
        .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );
    lyon.grant(grant("test:david", CANTINE)).await?;
    let renewal = pb::GrantConsentRequest {
        request_id: "inscription-cantine-43".into(),
        ..grant("test:david", CANTINE)
    };
    let renewed = lyon.grant(renewal.clone()).await?.into_inner();
    let retried = lyon.grant(renewal).await?.into_inner();
    assert!(renewed.renewed && retried.renewed);
    assert_eq!(retried.consent, renewed.consent);
    assert_eq!(
        listed_ids(&mut lyon, "test:david").await?,
        vec![consent_of(renewed.consent).id]
    );
    broker.stop().await
}

async fn get_consent(broker: &TestBroker, id: &str) -> anyhow::Result<pb::Consent> {
    let mut lyon = consents(broker, "mairie-lyon").await?;
    Ok(consent_of(lyon.get(get(id)).await?.into_inner().consent))
}

#[tokio::test]
async fn consents_survive_a_restart_and_a_lost_derived_state() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let idempotent = pb::GrantConsentRequest {
        request_id: "retry-after-restart".into(),
        ..grant("test:alice", CANTINE)
    };
    let active = consent_of(lyon.grant(idempotent.clone()).await?.into_inner().consent);
    let other = consent_of(
        lyon.grant(grant("test:alice", PERISCOLAIRE))
            .await?
            .into_inner()
            .consent,
    );
    let revoked = consent_of(lyon.revoke(revoke(&other.id)).await?.into_inner().consent);
    assert_eq!(revoked.status(), pb::ConsentStatus::Revoked);
    drop(lyon);
    broker.stop().await?;

    for lost_state in [false, true] {
        if lost_state {
            let state = data.path().join("state");
            assert!(state.exists(), "no derived state at {}", state.display());
            std::fs::remove_dir_all(&state)?;
        }
        let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
        let what = if lost_state {
            "after losing the derived state"
        } else {
            "after a restart"
        };
        // Read by id: the same consent, without the grant's pairwise pseudonym.
        assert_eq!(
            get_consent(&broker, &active.id).await?,
            pb::Consent {
                subject_pseudonym: String::new(),
                ..active.clone()
            },
            "{what}"
        );
        assert_eq!(get_consent(&broker, &other.id).await?, revoked, "{what}");

        let mut lyon = consents(&broker, "mairie-lyon").await?;
        let mut listed = listed_ids(&mut lyon, "test:alice").await?;
        listed.sort();
        let mut expected = vec![active.id.clone(), other.id.clone()];
        expected.sort();
        assert_eq!(listed, expected, "{what}");

        // The revocation still holds, the active consent still allows, the request id is
        // still remembered.
        let mut fetcher = exchange(&broker, "mairie-lyon").await?;
        refused(
            fetcher.fetch(fetch("test:alice", QF, PERISCOLAIRE)).await,
            Code::FailedPrecondition,
            ErrorReason::ConsentRevoked,
        );
        let fetched = fetcher
            .fetch(fetch("test:alice", QF, CANTINE))
            .await?
            .into_inner();
        let basis = fetched.attestation.and_then(|a| a.legal_basis);
        assert_eq!(
            basis.map(|b| b.consent_id),
            Some(active.id.clone()),
            "{what}"
        );
        let retried = consent_of(lyon.grant(idempotent.clone()).await?.into_inner().consent);
        assert_eq!(retried, active, "{what}");
        refused(
            lyon.grant(pb::GrantConsentRequest {
                valid_days: 31,
                ..idempotent.clone()
            })
            .await,
            Code::AlreadyExists,
            ErrorReason::RequestIdReused,
        );
        drop((lyon, fetcher));
        broker.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_answered_before_it_is_durable() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let fail = Arc::new(AtomicBool::new(false));
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            data_dir: Some(data.path().to_path_buf()),
            journal_faults: Some(unefois_tests::journal::failing_after_write(&fail)),
            ..BrokerOptions::default()
        },
    )
    .await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let mut fetcher = exchange(&broker, "mairie-lyon").await?;
    let request = pb::GrantConsentRequest {
        request_id: "grant-while-the-disk-fails".into(),
        ..grant("test:alice", CANTINE)
    };

    fail.store(true, Ordering::SeqCst);
    refused(
        lyon.grant(request.clone()).await,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    // A List is on the record too: not answered either.
    refused(
        lyon.list(list("test:alice")).await,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    // No attestation leaves without its record.
    refused(
        fetcher.fetch(fetch("test:alice", RFR, CANTINE)).await,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    // Nor another consent.
    refused(
        lyon.grant(grant("test:bob", CANTINE)).await,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );

    // The disk comes back: the broker records again, without a restart.
    fail.store(false, Ordering::SeqCst);
    let granted = consent_of(lyon.grant(request.clone()).await?.into_inner().consent);
    assert_eq!(granted.status(), pb::ConsentStatus::Active);
    assert_eq!(
        listed_ids(&mut lyon, "test:alice").await?,
        vec![granted.id.clone()]
    );
    let fetched = fetcher
        .fetch(fetch("test:alice", RFR, CANTINE))
        .await?
        .into_inner();
    assert_eq!(
        fetched.attestation.map(|a| a.attestation_type),
        Some(RFR.to_string())
    );

    // A revocation that cannot be recorded is not acknowledged, and does not apply.
    fail.store(true, Ordering::SeqCst);
    refused(
        lyon.revoke(revoke(&granted.id)).await,
        Code::Unavailable,
        ErrorReason::StoreUnavailable,
    );
    fail.store(false, Ordering::SeqCst);
    assert_eq!(
        get_consent(&broker, &granted.id).await?.status(),
        pb::ConsentStatus::Active
    );
    drop((lyon, fetcher));
    broker.stop().await?;

    // After a restart, what was refused never shows up.
    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    assert_eq!(
        listed_ids(&mut lyon, "test:alice").await?,
        vec![granted.id.clone()]
    );
    assert!(listed_ids(&mut lyon, "test:bob").await?.is_empty());
    assert_eq!(
        get_consent(&broker, &granted.id).await?,
        pb::Consent {
            subject_pseudonym: String::new(),
            ..granted
        }
    );
    drop(lyon);
    broker.stop().await
}

/// Sets its flag when dropped, so that a failing test does not leave the journal blocked.
struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A broker on a disk that takes its time to sync: its journal holds each batch after its
/// write, before its sync (on the journal's own thread), while the first flag is set and until
/// the second is.
async fn on_a_slow_disk(
    pki: &TestPki,
) -> anyhow::Result<(TestBroker, Arc<AtomicBool>, Arc<AtomicBool>)> {
    let hold = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicBool::new(false));
    let faults: FaultInjector = {
        let (hold, released) = (hold.clone(), released.clone());
        Arc::new(move |point| {
            if point == FaultPoint::AfterWrite && hold.load(Ordering::SeqCst) {
                while !released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        })
    };
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            journal_faults: Some(faults),
            ..BrokerOptions::default()
        },
    )
    .await?;
    Ok((broker, hold, released))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_sync_holds_the_answer() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, hold, released) = on_a_slow_disk(&pki).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let release = Release(released.clone());

    hold.store(true, Ordering::SeqCst);
    let pending = tokio::spawn({
        let mut lyon = lyon.clone();
        async move { lyon.grant(grant("test:eve", CANTINE)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "the grant was answered before its record was synced"
    );
    // Nor is anything answered about it before it is durable: a List is on the record too, so
    // it waits for the same disk, and then sees the consent recorded before it.
    let listing = tokio::spawn({
        let mut lyon = lyon.clone();
        async move { listed_ids(&mut lyon, "test:eve").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!listing.is_finished(), "a List answered before its record");

    drop(release);
    let granted = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the grant did not complete once the sync was released")
        })???;
    let granted = consent_of(granted.into_inner().consent);
    assert_eq!(granted.status(), pb::ConsentStatus::Active);
    let listed = tokio::time::timeout(Duration::from_secs(10), listing).await???;
    assert_eq!(listed, vec![granted.id.clone()]);
    assert_eq!(listed_ids(&mut lyon, "test:eve").await?, vec![granted.id]);
    hold.store(false, Ordering::SeqCst);
    drop(lyon);
    broker.stop().await
}

/// A grant whose caller went away while its record waited for a slow disk holds the person
/// until that record is applied: the retry, with the same request id on the same broker, gets
/// the consent the first attempt recorded, and one consent is recorded. Released when the first
/// attempt was dropped, the retry found no request id and recorded a second consent.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_retried_after_its_caller_went_away_records_one_consent() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, hold, released) = on_a_slow_disk(&pki).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let release = Release(released.clone());
    let request = pb::GrantConsentRequest {
        request_id: "grant-abandoned".into(),
        ..grant("test:frank", CANTINE)
    };

    hold.store(true, Ordering::SeqCst);
    let mut abandoned = tonic::Request::new(request.clone());
    abandoned.set_timeout(Duration::from_millis(300));
    // The broker ends the call at its deadline (CANCELLED), or the client gives up first.
    let first = lyon.grant(abandoned).await.err().map(|s| s.code());
    assert!(
        matches!(first, Some(Code::Cancelled | Code::DeadlineExceeded)),
        "{first:?}"
    );
    let retried = tokio::spawn({
        let mut lyon = lyon.clone();
        async move { lyon.grant(request).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(release);
    let retried = tokio::time::timeout(Duration::from_secs(10), retried).await???;
    let retried = consent_of(retried.into_inner().consent);
    hold.store(false, Ordering::SeqCst);
    assert_eq!(
        listed_ids(&mut lyon, "test:frank").await?,
        vec![retried.id],
        "one consent, the first attempt's"
    );
    drop(lyon);
    broker.stop().await
}

/// One consent per scope: granting again renews the consent in force (one consent, the later
/// expiry, recorded as a renewal), and one revocation ends every consent in force of its scope,
/// so that the very next Fetch is refused whatever was granted before. Without the renewal, the
/// second grant made a second consent that the revocation left in force.
#[tokio::test]
async fn one_consent_per_scope_and_one_revocation_ends_it() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    // The student status is also a basis for the canteen's pricing here, so that one consent
    // can cover two types of one purpose.
    let registry = unefois_tests::sample_registry_with(&pki.scratch(), |r| {
        r.replace(
            "purposes = [\"tarif_etudiant\"]",
            "purposes = [\"tarif_etudiant\", \"tarification_cantine\"]",
        )
    })?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = consents(&broker, "mairie-lyon").await?;
    let mut consumer = exchange(&broker, "mairie-lyon").await?;

    let first = lyon
        .grant(pb::GrantConsentRequest {
            valid_days: 10,
            ..grant("test:alice", CANTINE)
        })
        .await?
        .into_inner();
    assert!(!first.renewed);
    let first = consent_of(first.consent);
    let again = lyon
        .grant(pb::GrantConsentRequest {
            valid_days: 60,
            ..grant("test:alice", CANTINE)
        })
        .await?
        .into_inner();
    assert!(again.renewed, "the second grant renews the first");
    let again = consent_of(again.consent);
    assert_eq!(again.id, first.id, "one consent for the scope");
    let expiry = |c: &pb::Consent| c.expires_at.unwrap_or_default().seconds;
    assert!(
        expiry(&again) >= expiry(&first) + 49 * 86_400,
        "the later expiry: {} then {}",
        expiry(&first),
        expiry(&again)
    );
    assert!(again.renewed_at.is_some());
    // A shorter grant renews too, and never shortens what is in force.
    let shorter = consent_of(
        lyon.grant(pb::GrantConsentRequest {
            valid_days: 1,
            ..grant("test:alice", CANTINE)
        })
        .await?
        .into_inner()
        .consent,
    );
    assert_eq!(
        (shorter.id.as_str(), expiry(&shorter)),
        (first.id.as_str(), expiry(&again))
    );
    assert_eq!(
        listed_ids(&mut lyon, "test:alice").await?,
        vec![first.id.clone()]
    );
    // The renewals are on the record, attributed to the guichet.
    let mut audit =
        unefois_proto::v1::audit_client::AuditClient::new(broker.channel("cnil").await?);
    let renewals = audit
        .list_events(pb::ListEventsRequest {
            kind: "consent_renewed".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    assert_eq!(renewals.len(), 2, "{renewals:?}");
    for r in &renewals {
        let entry: serde_json::Value = serde_json::from_slice(&r.entry)?;
        assert_eq!(entry["consent_id"], first.id.as_str());
        assert_eq!(entry["participant"], "mairie-lyon");
    }

    // A broader consent of the same person, consumer and purpose (two types) is another scope;
    // revoking the first ends it too: nothing the person granted before still stands, and the
    // answer says how many consents ended.
    let broader = lyon
        .grant(pb::GrantConsentRequest {
            attestation_types: vec![QF.into(), ETU.into()],
            ..grant("test:alice", CANTINE)
        })
        .await?
        .into_inner();
    assert!(!broader.renewed, "another scope");
    let broader = consent_of(broader.consent);
    assert_ne!(broader.id, first.id);
    // Another purpose is another scope, left alone.
    let periscolaire = consent_of(
        lyon.grant(grant("test:alice", PERISCOLAIRE))
            .await?
            .into_inner()
            .consent,
    );
    consumer.fetch(fetch("test:alice", QF, CANTINE)).await?;
    let revoked = lyon.revoke(revoke(&first.id)).await?.into_inner();
    assert_eq!(revoked.ended, 2, "{revoked:?}");
    assert_eq!(
        get_consent(&broker, &broader.id).await?.status(),
        pb::ConsentStatus::Revoked
    );
    refused(
        consumer.fetch(fetch("test:alice", ETU, CANTINE)).await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    assert_eq!(
        get_consent(&broker, &periscolaire.id).await?.status(),
        pb::ConsentStatus::Active
    );
    consumer
        .fetch(fetch("test:alice", QF, PERISCOLAIRE))
        .await?;
    assert_eq!(
        consent_of(revoked.consent).status(),
        pb::ConsentStatus::Revoked
    );
    refused(
        consumer.fetch(fetch("test:alice", QF, CANTINE)).await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    // Granted again after the revocation: a new consent, not the revoked one renewed.
    let fresh = consent_of(
        lyon.grant(grant("test:alice", CANTINE))
            .await?
            .into_inner()
            .consent,
    );
    assert_ne!(fresh.id, first.id);
    consumer.fetch(fetch("test:alice", QF, CANTINE)).await?;
    // Revoking the old, already revoked consent still ends what is in force for its scope.
    let again = lyon.revoke(revoke(&first.id)).await?.into_inner();
    assert_eq!(again.ended, 1, "{again:?}");
    refused(
        consumer.fetch(fetch("test:alice", QF, CANTINE)).await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    let none = lyon.revoke(revoke(&first.id)).await?.into_inner();
    assert_eq!(none.ended, 0, "{none:?}");
    Ok(())
}

//! Participants' clients of a [`TestBroker`], each on its own mTLS channel, and the one-call
//! questions tests ask through them.

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unefois_proto::v1 as pb;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;

use crate::TestBroker;

/// An Exchange client as `name`.
pub async fn exchange(broker: &TestBroker, name: &str) -> anyhow::Result<ExchangeClient<Channel>> {
    Ok(ExchangeClient::new(broker.channel(name).await?))
}

/// A Consents client as `name`.
pub async fn consents(broker: &TestBroker, name: &str) -> anyhow::Result<ConsentsClient<Channel>> {
    Ok(ConsentsClient::new(broker.channel(name).await?))
}

/// Records the consent of `subject` to mairie-lyon for `attestation_type` and `purpose`, through
/// mairie-lyon's guichet ([`crate::requests::consent`]): the consent, once durable.
pub async fn grant_consent(
    broker: &TestBroker,
    subject: &str,
    attestation_type: &str,
    purpose: &str,
) -> anyhow::Result<pb::Consent> {
    consents(broker, crate::sample::LYON)
        .await?
        .grant(crate::requests::consent(subject, attestation_type, purpose))
        .await?
        .into_inner()
        .consent
        .ok_or_else(|| anyhow::anyhow!("no consent in the answer"))
}

/// The 31-day mandate `subject` gives the agent a.martin of France Services Lyon for `purpose`,
/// with the person present (their ID token for the structure) and a signed document.
pub async fn take_mandate(
    broker: &TestBroker,
    subject: &str,
    purpose: &str,
) -> anyhow::Result<pb::Mandate> {
    use crate::sample::{AGENT, STRUCTURE};
    unefois_proto::v1::mandates_client::MandatesClient::new(broker.channel(AGENT).await?)
        .create(pb::CreateMandateRequest {
            subject: subject.into(),
            purposes: vec![purpose.into()],
            duration_days: 31,
            signed_document: b"%PDF mandat signe par la personne et l'aidant".to_vec(),
            id_token: crate::id_token(subject, STRUCTURE),
            ..Default::default()
        })
        .await?
        .into_inner()
        .mandate
        .ok_or_else(|| anyhow::anyhow!("no mandate in the answer"))
}

/// The readiness of attestation type `ty`'s provider, as grpc.health.v1 reports it to `dinum`
/// (service `unefois.provider.<ty>`).
pub async fn provider_health(broker: &TestBroker, ty: &str) -> anyhow::Result<ServingStatus> {
    let mut health = HealthClient::new(broker.channel("dinum").await?);
    Ok(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: format!("unefois.provider.{ty}"),
        })
        .await?
        .into_inner()
        .status())
}

/// Every path of Fetch and Consents that sees `subject`, as `mairie-lyon` on `channel`: its
/// revenu fiscal de référence under the law, under `request_id` (the answer returned), its
/// quotient familial
/// refused without consent, a consent granted, the quotient familial fetched under it, the
/// consents listed, the consent revoked, the quotient familial refused again.
pub async fn law_and_consent_round(
    channel: Channel,
    subject: &str,
    request_id: &str,
) -> anyhow::Result<pb::FetchResponse> {
    let mut exchange = ExchangeClient::new(channel.clone());
    let mut consents = ConsentsClient::new(channel);
    let purpose = "tarification_cantine";
    let under_law = exchange
        .fetch(pb::FetchRequest {
            request_id: request_id.into(),
            ..crate::requests::fetch(subject, "dgfip.revenu_fiscal_reference", purpose)
        })
        .await?
        .into_inner();
    let qf = crate::requests::fetch(subject, "caf.quotient_familial", purpose);
    // Refused for what the round says, not for another reason (an unavailable store).
    let refused_for = |answer: Result<_, tonic::Status>, reason| match answer {
        Err(status) => broker::client::reason_of(&status) == Some(reason),
        Ok(_) => false,
    };
    let no_consent = exchange.fetch(qf.clone()).await;
    anyhow::ensure!(
        refused_for(no_consent, unefois_proto::v1::ErrorReason::NoConsent),
        "the quotient familial without consent"
    );
    let consent = consents
        .grant(crate::requests::consent(
            subject,
            "caf.quotient_familial",
            purpose,
        ))
        .await?
        .into_inner()
        .consent
        .ok_or_else(|| anyhow::anyhow!("no consent"))?;
    exchange.fetch(qf.clone()).await?;
    consents
        .list(pb::ListConsentsRequest {
            subject: subject.into(),
            ..Default::default()
        })
        .await?;
    consents
        .revoke(pb::RevokeConsentRequest {
            consent_id: consent.id,
            ..Default::default()
        })
        .await?;
    let revoked = exchange.fetch(qf).await;
    anyhow::ensure!(
        refused_for(revoked, unefois_proto::v1::ErrorReason::ConsentRevoked),
        "the quotient familial after the consent's revocation"
    );
    Ok(under_law)
}

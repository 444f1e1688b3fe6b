//! An ID token serves one sitting across the cluster: the brokers count its acts in the
//! database, so it proves at most its identity provider's `max_acts_per_token` acts whichever
//! brokers the balancer sends them to, and a broker started during the sitting (a rolling
//! upgrade) knows what the token already proved instead of refusing it.

use anyhow::anyhow;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_tests::TestPki;
use unefois_tests::clients::consents;
use unefois_tests::refusals::refused;
use unefois_tests::requests::consent;
use unefois_tests::sample::{CANTINE, LYON, QF};

use crate::harness::{Cluster, Database};

/// The sample registry's identity provider allows a token 8 acts.
const ACTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_token_proves_its_acts_once_across_the_brokers() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let mut cluster = Cluster::start(pki.dir(), &db.url(), 2).await?;
    let token = unefois_tests::id_token("test:erin", LYON);
    // A consent granted, then renewed, through one broker then the other.
    let act = |_: usize| pb::GrantConsentRequest {
        id_token: token.clone(),
        ..consent("test:erin", QF, CANTINE)
    };
    for i in 0..ACTS {
        let broker = &cluster.brokers[i % 2];
        consents(broker, LYON)
            .await?
            .grant(act(i))
            .await
            .map_err(|e| anyhow!("act {i}: {e}"))?;
    }
    for broker in &cluster.brokers {
        let status = refused(
            consents(broker, LYON).await?.grant(act(0)).await,
            Code::FailedPrecondition,
            ErrorReason::IdentityEvidenceInvalid,
        );
        assert!(
            status
                .message()
                .contains(&format!("already used for {ACTS} acts")),
            "{}",
            status.message()
        );
    }

    // A broker started after the token was issued (a restart, a rolling upgrade) takes the
    // sitting's next act from another token issued before it, and refuses the spent one.
    let fresh = unefois_tests::id_token("test:erin", LYON);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    cluster.add(pki.dir(), &db.url()).await?;
    let started_after = &cluster.brokers[2];
    consents(started_after, LYON)
        .await?
        .grant(pb::GrantConsentRequest {
            id_token: fresh,
            ..consent("test:erin", QF, CANTINE)
        })
        .await?;
    refused(
        consents(started_after, LYON).await?.grant(act(1)).await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceInvalid,
    );
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

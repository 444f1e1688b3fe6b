//! The people's web pages over real HTTP (issue 23): a citizen logs in through the development
//! identity provider, sees who read their data, withdraws a consent, and the very next gRPC
//! fetch under it is refused; an agent's acts under a mandate show on the person's page, and
//! her revocation stops the agent; a contested access reaches the auditors; forms from
//! elsewhere are refused; a login answer serves its own
//! browser once; no person is ever in a URL. The headless-browser tests (tests/browser/) check
//! layout, keyboard and accessibility.

use anyhow::Context;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_tests::clients::{exchange, grant_consent, take_mandate};
use unefois_tests::refusals::refused;
use unefois_tests::requests::{fetch, rfr};
use unefois_tests::sample::{AGENT, CANTINE, ENERGIE, QF, RFR};
use unefois_tests::web::Browser;
use unefois_tests::{BrokerOptions, TestBroker, TestPki};

async fn broker_with_pages(pki: &TestPki) -> anyhow::Result<(TestBroker, Browser)> {
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    let browser = Browser::new(broker.web_addr.context("no web pages")?)?;
    Ok((broker, browser))
}

#[tokio::test]
async fn the_pages_are_served_in_french_with_strict_headers() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    for (path, status, title) in [
        ("/", 200, "<title>Accueil — Une Fois</title>"),
        (
            "/accessibilite",
            200,
            "<title>Déclaration d&#39;accessibilité — Une Fois</title>",
        ),
        (
            "/citizen",
            200,
            "<title>Espace usager : connexion — Une Fois</title>",
        ),
        (
            "/nulle-part",
            404,
            "<title>Page introuvable — Une Fois</title>",
        ),
    ] {
        let page = browser.get(path).await?;
        assert_eq!(page.status, status, "{path}");
        assert!(page.body.contains(title), "{path}: {}", page.body);
        assert!(page.body.contains("<html lang=\"fr\">"), "{path}");
        assert_eq!(page.body.matches("<h1").count(), 1, "{path}: one h1");
        assert!(page.body.contains("href=\"#contenu\""), "{path}: skip link");
        let csp = page.headers.get("content-security-policy").cloned();
        assert!(
            csp.as_deref()
                .is_some_and(|c| c.contains("script-src 'self'")
                    && c.contains("frame-ancestors 'none'")
                    && !c.contains("unsafe")),
            "{path}: {csp:?}"
        );
        assert_eq!(
            page.headers.get("cache-control").map(String::as_str),
            Some("no-store")
        );
        assert_eq!(
            page.headers
                .get("x-content-type-options")
                .map(String::as_str),
            Some("nosniff")
        );
        assert!(!page.body.contains("<script>"), "{path}: no inline script");
        assert!(!page.body.contains(" style=\""), "{path}: no inline style");
    }
    // The landing page says where to get help in person.
    let landing = browser.get("/").await?;
    assert!(landing.body.contains("France Services"));
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn requests_refused_before_any_page_are_answered_in_french() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, browser) = broker_with_pages(&pki).await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = |path: &str| format!("{}{path}", browser.base);
    // A path segment that is not a number, a form of another type, a method an address does
    // not take: axum refuses them itself, in English plain text, before any page sees them.
    for (request, status, title) in [
        (
            client.get(url("/audit/dossier/douze")),
            400,
            "Demande illisible",
        ),
        (
            client
                .post(url("/logout"))
                .header("content-type", "text/plain")
                .body("csrf=x"),
            415,
            "Demande illisible",
        ),
        (
            client.put(url("/citizen")),
            405,
            "Adresse utilisée autrement",
        ),
    ] {
        let answer = request.send().await?;
        assert_eq!(answer.status().as_u16(), status, "{title}");
        let allow = answer.headers().get("allow").cloned();
        let csp = answer.headers().get("content-security-policy").cloned();
        let body = answer.text().await?;
        assert!(body.contains("<html lang=\"fr\">"), "{status}: {body}");
        assert!(
            body.contains(&format!("<title>{title} — Une Fois</title>")),
            "{body}"
        );
        assert!(
            !body.contains("Failed") && !body.contains("Invalid"),
            "{body}"
        );
        assert!(csp.is_some(), "{status}: the pages' headers");
        if status == 405 {
            assert_eq!(
                allow.as_ref().and_then(|a| a.to_str().ok()),
                Some("GET,HEAD")
            );
        }
    }
    // The console's proof API answers in its own JSON.
    let answer = client
        .get(url("/audit/api/inclusion?n=douze"))
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 400);
    let body: serde_json::Value = answer.json().await?;
    assert_eq!(body["erreur"], "Demande illisible");
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_citizen_sees_who_read_their_data_and_a_withdrawal_stops_the_next_fetch()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    // Alice consents at the city's guichet; the city fetches her family quotient.
    let granted = grant_consent(&broker, "test:alice", QF, CANTINE).await?;
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch("test:alice", QF, CANTINE))
        .await?;

    let home = browser.log_in("test:alice").await?;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(
        home.body
            .contains("<title>Qui a consulté mes données — Une Fois</title>")
    );
    // The access: who, what, why, on what basis, by which channel.
    for shown in [
        "Ville de Lyon",
        "Calcul du tarif de la restauration scolaire",
        "Quotient familial CAF",
        "Votre consentement",
        "Directement entre administrations",
        "Transmises",
    ] {
        assert!(
            home.body.contains(shown),
            "{shown} not shown:\n{}",
            home.body
        );
    }
    let session = browser
        .cookie("unefois_session")
        .context("no session")?
        .to_string();
    let withdraw = format!("/citizen/consents/{}/withdraw", granted.id);
    assert!(home.links().contains(&withdraw), "{:?}", home.links());

    // The confirmation page, then the withdrawal.
    let confirm = browser.get(&withdraw).await?;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(confirm.body.contains("Confirmer le retrait"));
    let csrf = confirm.field("csrf").context("no CSRF token")?;
    let done = browser.post(&withdraw, &[("csrf", &csrf)], None).await?;
    assert_eq!(done.status, 303, "{}", done.body);
    let after = browser.follow(done).await?;
    assert!(
        after.body.contains("Votre consentement a été retiré."),
        "{}",
        after.body
    );
    assert!(after.body.contains("role=\"status\""));
    assert!(after.body.contains("Retiré"));
    // Said once, from the session: neither a reload nor a forged link says it again.
    for again in ["/citizen", "/citizen?fait=retire"] {
        let page = browser.get(again).await?;
        assert!(
            !page.body.contains("a été retiré"),
            "{again}: {}",
            page.body
        );
    }
    assert_eq!(browser.cookie("unefois_session"), Some(session.as_str()));
    // Sent again (a second tab, a consent that expired meanwhile): nothing was in force, and
    // the page does not say it withdrew anything.
    let twice = browser.post(&withdraw, &[("csrf", &csrf)], None).await?;
    let twice = browser.follow(twice).await?;
    assert!(
        twice.body.contains("il n&#39;y avait rien à retirer")
            && !twice.body.contains("a été retiré"),
        "{}",
        twice.body
    );

    // The very next gRPC fetch under it is refused.
    refused(
        exchange(&broker, "mairie-lyon")
            .await?
            .fetch(fetch("test:alice", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    // No person in any URL the browser was sent to.
    for url in &browser.visited {
        assert!(!url.contains("alice"), "{url}");
    }
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn forms_without_their_token_or_from_elsewhere_are_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    let granted = grant_consent(&broker, "test:alice", QF, CANTINE).await?;

    // The session cookie: HttpOnly, SameSite=Lax, the whole site.
    let to_idp = browser.get("/citizen/login").await?;
    let login_cookie = to_idp.set_cookies.join("\n");
    assert!(
        login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Lax"),
        "{login_cookie}"
    );
    let idp_page = browser.follow(to_idp).await?;
    let answer = browser.choose_person(&idp_page, "test:alice").await?;
    let callback = answer.location().context("no callback")?.to_string();
    let landed = browser.get(&callback).await?;
    let session_cookie = landed.set_cookies.join("\n");
    assert!(
        session_cookie.contains("unefois_session=")
            && session_cookie.contains("HttpOnly")
            && session_cookie.contains("SameSite=Lax")
            && session_cookie.contains("Path=/"),
        "{session_cookie}"
    );
    browser.follow(landed).await?;

    let withdraw = format!("/citizen/consents/{}/withdraw", granted.id);
    let csrf = browser
        .get(&withdraw)
        .await?
        .field("csrf")
        .context("no CSRF token")?;
    // No token, a wrong one, or the right one from another site: 403, nothing withdrawn.
    for (form, origin) in [
        (vec![], None),
        (vec![("csrf", "forged")], None),
        (vec![("csrf", csrf.as_str())], Some("http://evil.example")),
    ] {
        let page = browser.post(&withdraw, &form, origin).await?;
        assert_eq!(page.status, 403, "{form:?} {origin:?}: {}", page.body);
        assert!(page.body.contains("Action refusée"));
    }
    let logout = browser.post("/logout", &[], None).await?;
    assert_eq!(logout.status, 403);
    // A form sent once the session is gone: nothing done, and the person told so.
    let mut elsewhere = Browser::new(broker.web_addr.context("no web")?)?;
    let ended = elsewhere.post(&withdraw, &[("csrf", &csrf)], None).await?;
    assert_eq!(ended.status, 403);
    assert!(
        ended.body.contains("Votre session a pris fin"),
        "{}",
        ended.body
    );
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch("test:alice", QF, CANTINE))
        .await?;
    broker.stop().await?;
    Ok(())
}

/// Behind a reverse proxy the pages count people by the address the proxy forwarded: a flood of
/// login starts from one address ends its own logins, not another person's. A client that sends
/// the header itself, not through a trusted proxy, is counted by its own address.
#[tokio::test]
async fn a_flood_of_logins_from_one_address_ends_only_its_own() -> anyhow::Result<()> {
    for trusted in [true, false] {
        let pki = TestPki::for_sample_registry()?;
        let proxies = match trusted {
            true => vec![broker::web::trusted_proxy("127.0.0.1").map_err(anyhow::Error::msg)?],
            false => vec![],
        };
        let broker = TestBroker::start_with(
            pki.dir(),
            BrokerOptions {
                web: true,
                web_trusted_proxies: broker::web::TrustedProxies::new(proxies),
                ..BrokerOptions::default()
            },
        )
        .await?;
        let addr = broker.web_addr.context("no web pages")?;
        let mut person = Browser::new(addr)?.forwarded_for("198.51.100.7");
        let to_idp = person.get("/citizen/login").await?;
        let idp_page = person.follow(to_idp).await?;
        let mut flood = Browser::new(addr)?.forwarded_for("203.0.113.5");
        for _ in 0..=broker::web::MAX_PENDING_LOGINS_PER_SOURCE {
            let started = flood.get("/citizen/login").await?;
            assert_eq!(started.status, 303);
        }
        let answer = person.choose_person(&idp_page, "test:alice").await?;
        let callback = answer.location().context("no callback")?.to_string();
        let landed = person.get(&callback).await?;
        let home = person.follow(landed).await?;
        match trusted {
            true => assert!(
                home.body.contains("Qui a consulté mes données"),
                "{}",
                home.body
            ),
            false => {
                assert_eq!(home.status, 400, "{}", home.body);
                assert!(home.body.contains("Connexion échouée"));
            }
        }
        broker.stop().await?;
    }
    Ok(())
}

/// A client that sends many requests at once and never reads the answers held its connection,
/// and up to hyper's 400 KiB of answers waiting to be sent, for as long as it liked: no timeout
/// runs while an answer waits for the client (only a newcomer over the cap would shed it). Such
/// a connection is now closed once it has taken no byte for a page's time (here 1 s): reading
/// later, the client gets what its own buffer held, then the end. Fails without the listener's
/// write timeout (every answer then arrives, megabytes of them).
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_closed() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::for_sample_registry()?;
    let mut options = BrokerOptions {
        web: true,
        ..BrokerOptions::default()
    };
    options.accept.web_page_timeout = std::time::Duration::from_secs(1);
    let broker = TestBroker::start_with(pki.dir(), options).await?;
    let addr = broker.web_addr.context("no web pages")?;
    // 4,000 stylesheets asked at once (7 KiB each, 28 MB): far more than both sides' buffers.
    let requests = "GET /static/site.css HTTP/1.1\r\nHost: pages\r\n\r\n".repeat(4000);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let (mut reader, mut writer) = socket.connect(addr).await?.into_split();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(requests.as_bytes()).await;
        writer
    });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    let mut received = 0usize;
    let mut buffer = vec![0; 64 * 1024];
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok() && received < 1024 * 1024,
        "the connection kept serving a client that read nothing for 3 s: {received} bytes"
    );
    drop(sending);
    broker.stop().await?;
    Ok(())
}

/// A person who cancels at the identity provider (its answer `error=access_denied`) is told
/// the login was cancelled, not that it failed; the login it answered ends.
#[tokio::test]
async fn a_login_cancelled_at_the_identity_provider_says_so() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    let to_idp = browser.get("/citizen/login").await?;
    let authorize = to_idp.location().context("no redirect")?.to_string();
    let state = authorize
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .context("no state")?
        .to_string();
    let idp_page = browser.follow(to_idp).await?;
    let cancelled = browser
        .get(&format!(
            "/citizen/callback?error=access_denied&error_description=Vous+avez+gagn%C3%A9&state={state}"
        ))
        .await?;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert!(
        cancelled.body.contains("Connexion annulée")
            && cancelled.body.contains("rien n&#39;a été fait"),
        "{}",
        cancelled.body
    );
    assert!(
        !cancelled.body.contains("gagné"),
        "the provider's text shown"
    );
    assert!(browser.cookie("unefois_session").is_none());
    // The login the cancel answered is over: an answer for it now fails.
    let answer = browser.choose_person(&idp_page, "test:alice").await?;
    let callback = answer.location().context("no callback")?.to_string();
    let late = browser.get(&callback).await?;
    assert_eq!(late.status, 400, "{}", late.body);
    assert!(late.body.contains("Connexion échouée"));
    // « Prolonger la session » cancelled: the session open in this browser stays open, and the
    // page says so, never « vous n'êtes pas connecté » to someone about to leave a shared device.
    let home = browser.log_in("test:alice").await?;
    assert_eq!(home.status, 200, "{}", home.body);
    let again = browser.get("/citizen/login").await?;
    let state = again
        .location()
        .context("no redirect")?
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .context("no state")?
        .to_string();
    let cancelled = browser
        .get(&format!(
            "/citizen/callback?error=access_denied&state={state}"
        ))
        .await?;
    assert!(
        cancelled.body.contains("reste ouverte")
            && cancelled.body.contains("Se déconnecter")
            && !cancelled.body.contains("vous n&#39;êtes pas connecté"),
        "{}",
        cancelled.body
    );
    let still = browser.get("/citizen").await?;
    assert!(still.body.contains("Qui a consulté"), "{}", still.body);
    // The provider down: a 503 that says so.
    let unavailable = browser
        .get("/citizen/callback?error=temporarily_unavailable&state=x")
        .await?;
    assert_eq!(unavailable.status, 503);
    assert!(
        unavailable
            .body
            .contains("Fournisseur d&#39;identité indisponible")
    );
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_login_answer_serves_its_own_browser_once() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    let to_idp = browser.get("/citizen/login").await?;
    let idp_page = browser.follow(to_idp).await?;
    let answer = browser.choose_person(&idp_page, "test:alice").await?;
    let callback = answer.location().context("no callback")?.to_string();

    // Another browser (without this one's login cookie) presenting the answer: refused.
    let mut other = Browser::new(broker.web_addr.context("no web")?)?;
    let stolen = other.get(&callback).await?;
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    assert!(other.cookie("unefois_session").is_none());

    // The answer was spent by that attempt: the right browser cannot use it either now, and
    // starts again (an answer serves once).
    let replay = browser.get(&callback).await?;
    assert_eq!(replay.status, 400);
    assert!(replay.body.contains("Connexion échouée"));
    let home = browser.log_in("test:bob").await?;
    assert!(
        home.body.contains("Qui a consulté mes données"),
        "{}",
        home.body
    );
    // An unknown person on the identity provider's page: an error summary, no code.
    let to_idp = browser.get("/citizen/login").await?;
    let idp_page = browser.follow(to_idp).await?;
    let wrong = browser.choose_person(&idp_page, "test:mallory").await?;
    assert_eq!(wrong.status, 400);
    assert!(wrong.body.contains("role=\"alert\""));
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_agents_acts_show_on_the_persons_page_and_she_revokes_the_mandate() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    let mut browser = Browser::new(broker.web_addr.context("no web pages")?)?;
    // At the desk: a.martin takes Alice's mandate and reads her reference tax income under it.
    let mandate = take_mandate(&broker, "test:alice", ENERGIE).await?;
    let under_mandate = || pb::FetchRequest {
        mandate_id: mandate.id.clone(),
        ..fetch("test:alice", RFR, ENERGIE)
    };
    exchange(&broker, AGENT)
        .await?
        .fetch(under_mandate())
        .await?;

    // On her own page: the access, attributed to the agent and the structure, and the mandate.
    let home = browser.log_in("test:alice").await?;
    let attributed = format!(
        "Par un médiateur : France Services Lyon 8e, agent a.martin, mandat n° {}",
        mandate.id
    );
    assert!(home.body.contains(&attributed), "{}", home.body);
    assert!(home.body.contains("Vos mandats"));
    let revoke = format!("/citizen/mandates/{}/revoke", mandate.id);
    assert!(home.links().contains(&revoke), "{:?}", home.links());
    let confirm = browser.get(&revoke).await?;
    let csrf = confirm.field("csrf").context("no CSRF token")?;
    let done = browser.post(&revoke, &[("csrf", &csrf)], None).await?;
    let after = browser.follow(done).await?;
    assert!(
        after.body.contains("Votre mandat a été révoqué."),
        "{}",
        after.body
    );
    assert!(after.body.contains("Révoqué"));

    // The agent's very next act under it is refused.
    refused(
        exchange(&broker, AGENT).await?.fetch(under_mandate()).await,
        Code::FailedPrecondition,
        ErrorReason::MandateRevoked,
    );
    broker.stop().await?;
    Ok(())
}

/// A withdrawal sent once the session's proof of identity has served all its acts is not done,
/// and the person is told so and asked to log in again (not sent to the login page without a
/// word, the consent still in force); logged in again, the withdrawal goes through.
#[tokio::test]
async fn a_withdrawal_past_the_proofs_acts_says_nothing_was_done() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    let granted = grant_consent(&broker, "test:alice", QF, CANTINE).await?;
    let fetched = exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch("test:alice", QF, CANTINE))
        .await?
        .into_inner();
    let entry = fetched.receipt.context("no receipt")?.leaf_index;
    browser.log_in("test:alice").await?;
    // Each report spends one of the proof's acts, until none is left.
    let contest = format!("/citizen/contest/{entry}");
    let mut reports = 0;
    let spent = loop {
        let form = browser.get(&contest).await?;
        let csrf = form.field("csrf").context("no CSRF token")?;
        let sent = browser
            .post(&contest, &[("csrf", &csrf), ("raison", "other")], None)
            .await?;
        if sent.status != 303 {
            break sent;
        }
        reports += 1;
        anyhow::ensure!(reports < 50, "the proof's acts never ran out");
    };
    assert!(reports > 0);
    assert_eq!(spent.status, 403, "{}", spent.body);
    assert!(
        spent.body.contains("Reconnectez-vous pour agir"),
        "{}",
        spent.body
    );

    let withdraw = format!("/citizen/consents/{}/withdraw", granted.id);
    let confirm = browser.get(&withdraw).await?;
    let csrf = confirm.field("csrf").context("no CSRF token")?;
    let refused_page = browser.post(&withdraw, &[("csrf", &csrf)], None).await?;
    assert_eq!(refused_page.status, 403, "{}", refused_page.body);
    assert!(
        refused_page.body.contains("Rien n&#39;a été fait")
            && refused_page.links().contains(&"/citizen/login".to_string()),
        "{}",
        refused_page.body
    );
    // Still in force.
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch("test:alice", QF, CANTINE))
        .await?;
    // Logged in again, the withdrawal is done.
    browser.log_in("test:alice").await?;
    let confirm = browser.get(&withdraw).await?;
    let csrf = confirm.field("csrf").context("no CSRF token")?;
    let done = browser.post(&withdraw, &[("csrf", &csrf)], None).await?;
    assert_eq!(done.status, 303, "{}", done.body);
    refused(
        exchange(&broker, "mairie-lyon")
            .await?
            .fetch(fetch("test:alice", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    broker.stop().await?;
    Ok(())
}

/// The printable statement (up to ten pages of reads, each recorded), reached from another site,
/// reads nothing until the person goes on from a link of these pages: a page elsewhere cannot
/// have those reads recorded in their name. The history page, where guichets' links and the
/// identity provider's answer lead, is served from anywhere.
#[tokio::test]
async fn the_statement_reached_from_elsewhere_reads_nothing_until_asked() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    browser.log_in("test:alice").await?;
    let mut audit = AuditClient::new(broker.channel("cnil").await?);
    let mut log_size = async || -> anyhow::Result<String> {
        let checkpoint = audit
            .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
            .await?
            .into_inner()
            .checkpoint;
        Ok(checkpoint.lines().nth(1).unwrap_or_default().to_string())
    };
    let before = log_size().await?;
    for (path, site) in [
        ("/citizen/releve", "cross-site"),
        ("/citizen/releve", "same-site"),
        // The confirmation pages read the person's consents or mandates (a consents read is
        // recorded): not from elsewhere either.
        (
            "/citizen/consents/0190a8c2-0000-7000-8000-000000000000/withdraw",
            "cross-site",
        ),
        (
            "/citizen/mandates/0190a8c2-0000-7000-8000-000000000000/revoke",
            "cross-site",
        ),
    ] {
        let page = browser.get_from(path, site).await?;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.contains("Continuer vers votre espace")
                && page.links().contains(&path.to_string()),
            "{path} from {site}: {}",
            page.body
        );
    }
    assert_eq!(log_size().await?, before, "no read recorded");
    // From the pages themselves: the statement, its reads recorded.
    let statement = browser.get_from("/citizen/releve", "same-origin").await?;
    assert!(
        statement.body.contains("Relevé des consultations"),
        "{}",
        statement.body
    );
    assert_ne!(log_size().await?, before);
    // The history page from a guichet's link.
    let home = browser.get_from("/citizen", "cross-site").await?;
    assert!(
        home.body.contains("Qui a consulté mes données"),
        "{}",
        home.body
    );
    broker.stop().await?;
    Ok(())
}

/// A request the broker refuses is explained in French, with the status that fits and the
/// reason's code for the assistance, not « the service refused (INVALID_ARGUMENT) » for all.
#[tokio::test]
async fn refusals_are_explained_in_french_with_their_status() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    browser.log_in("test:alice").await?;
    let page = browser.get("/citizen?avant=x").await?;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(
        page.body
            .contains("<title>Demande invalide — Une Fois</title>")
            && page
                .body
                .contains("Code à indiquer à l&#39;assistance : INVALID_ARGUMENT."),
        "{}",
        page.body
    );
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_contested_access_is_recorded_for_auditors_and_only_ones_own() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    let mut browser = Browser::new(broker.web_addr.context("no web pages")?)?;
    let mut city = exchange(&broker, "mairie-lyon").await?;
    let alices = city.fetch(rfr("test:alice")).await?.into_inner();
    let bobs = city.fetch(rfr("test:bob")).await?.into_inner();
    let index = |answer: &pb::FetchResponse| -> anyhow::Result<u64> {
        Ok(answer.receipt.as_ref().context("no receipt")?.leaf_index)
    };
    let (alices, bobs) = (index(&alices)?, index(&bobs)?);

    let home = browser.log_in("test:alice").await?;
    let form_path = format!("/citizen/contest/{alices}");
    assert!(home.links().contains(&form_path), "{:?}", home.links());
    let form = browser.get(&form_path).await?;
    let csrf = form.field("csrf").context("no CSRF token")?;
    // No reason chosen: the error is summarised, nothing recorded.
    let empty = browser.post(&form_path, &[("csrf", &csrf)], None).await?;
    assert_eq!(empty.status, 400);
    assert!(empty.body.contains("role=\"alert\""));
    let sent = browser
        .post(
            &form_path,
            &[("csrf", &csrf), ("raison", "no_procedure")],
            None,
        )
        .await?;
    let after = browser.follow(sent).await?;
    assert!(
        after
            .body
            .contains("Votre signalement est inscrit au journal"),
        "{}",
        after.body
    );
    // Bob's exchange is not hers to contest: refused, and the form does not tell whose it is.
    let bob_path = format!("/citizen/contest/{bobs}");
    let refused_page = browser
        .post(&bob_path, &[("csrf", &csrf), ("raison", "other")], None)
        .await?;
    assert_eq!(refused_page.status, 400, "{}", refused_page.body);
    assert!(!refused_page.body.contains("bob"));

    // The auditor sees the report among the events: which exchange, why; the person sealed.
    let events = AuditClient::new(broker.channel("cnil").await?)
        .list_events(pb::ListEventsRequest {
            kind: "access_contested".into(),
            limit: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].contested_index, alices);
    assert_eq!(events[0].contest_reason, "no_procedure");
    assert_eq!(events[0].participant, "espace-usager");
    assert!(!String::from_utf8_lossy(&events[0].entry).contains("alice"));
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_pages_serve_https_themselves_with_secure_cookies_and_hsts() -> anyhow::Result<()> {
    use std::sync::Arc;
    // A certificate for the pages (`--web-tls-cert`, `--web-tls-key`), as PEM files.
    let scratch = tempfile::tempdir()?;
    let issued = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let (cert, key) = (
        scratch.path().join("web.crt"),
        scratch.path().join("web.key"),
    );
    std::fs::write(&cert, issued.cert.pem())?;
    std::fs::write(&key, issued.signing_key.serialize_pem())?;
    let tls = broker::web::tls_config(&cert, &key)?;
    // The key of another certificate is refused, named.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let wrong_key = scratch.path().join("other.key");
    std::fs::write(&wrong_key, other.signing_key.serialize_pem())?;
    let e = broker::web::tls_config(&cert, &wrong_key)
        .err()
        .context("a key that does not fit was accepted")?;
    assert!(e.to_string().contains("web.crt"), "{e}");

    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            web: true,
            web_tls: Some(tls),
            ..Default::default()
        },
    )
    .await?;
    let web = broker.web_addr.context("no web pages")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(issued.cert.der().clone())?;
    let client_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(client_tls)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let landing = client.get(format!("https://{web}/")).send().await?;
    assert_eq!(landing.status(), 200);
    assert!(
        landing
            .headers()
            .get("strict-transport-security")
            .is_some_and(|v| v.to_str().unwrap_or_default().contains("max-age=")),
        "{:?}",
        landing.headers()
    );
    // The login's cookie is Secure, and the identity provider sends the browser back over HTTPS.
    let login = client
        .get(format!("https://{web}/citizen/login"))
        .send()
        .await?;
    assert_eq!(login.status(), 303);
    let cookie = login
        .headers()
        .get("set-cookie")
        .context("no login cookie")?
        .to_str()?
        .to_string();
    // Under HTTPS, the `__Host-` prefix: only this origin can set it, for the whole site.
    assert!(cookie.starts_with("__Host-unefois_login="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let to = login
        .headers()
        .get("location")
        .context("no redirect")?
        .to_str()?
        .to_string();
    let back = format!(
        "redirect_uri=https%3A%2F%2F{}",
        web.to_string().replace(':', "%3A")
    );
    assert!(to.contains(&back), "{to}");
    // Plain HTTP on the HTTPS port gets no page.
    let plain = reqwest::Client::new()
        .get(format!("http://{web}/"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status() != 200),
        "{plain:?}"
    );
    broker.stop().await?;
    Ok(())
}

/// The session cookies of the citizen space, the desk and the console last as long as the
/// browser: no `Max-Age`, no `Expires`, so that at a shared desk or a kiosk closing the browser
/// ends the session for the next person who opens it (the server still ends it at its limit);
/// a logout still clears the cookie (`Max-Age=0`). Fails while the cookies carry the session's
/// lifetime as their `Max-Age`.
#[tokio::test]
async fn session_cookies_end_when_the_browser_closes() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut citizen) = broker_with_pages(&pki).await?;
    let web = broker.web_addr.context("no web pages")?;
    let home = citizen.log_in("test:alice").await?;
    assert_eq!(home.status, 200, "{}", home.body);
    let mut desk = Browser::new(web)?;
    let home = desk.log_in_agent("agent-marie", true).await?;
    assert_eq!(home.status, 200, "{}", home.body);
    let mut console = Browser::new(web)?;
    let home = console
        .log_in_staff("/audit/login", "agent-cnil", true)
        .await?;
    assert_eq!(home.status, 200, "{}", home.body);
    for (browser, name) in [
        (&citizen, "unefois_session"),
        (&desk, "unefois_desk"),
        (&console, "unefois_audit"),
    ] {
        let cookie = browser
            .set_cookie_of(name)
            .with_context(|| format!("no {name} cookie"))?;
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(
            !cookie.to_ascii_lowercase().contains("max-age")
                && !cookie.to_ascii_lowercase().contains("expires"),
            "{name} outlives the browser: {cookie}"
        );
    }

    // « Se déconnecter » still clears the cookie at once.
    let page = citizen.get("/citizen").await?;
    let csrf = page.field("csrf").context("no CSRF token")?;
    let out = citizen.post("/logout", &[("csrf", &csrf)], None).await?;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(
        citizen
            .set_cookie_of("unefois_session")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the cookie is not cleared"
    );
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_citizen_filters_her_history_by_organisation_data_and_period() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    // The city reads her family quotient (consent) and her tax income (law); the CCAS reads
    // her tax income (law).
    grant_consent(&broker, "test:alice", QF, CANTINE).await?;
    let mut city = exchange(&broker, "mairie-lyon").await?;
    city.fetch(fetch("test:alice", QF, CANTINE)).await?;
    city.fetch(rfr("test:alice")).await?;
    exchange(&broker, "ccas-lyon")
        .await?
        .fetch(fetch("test:alice", RFR, ENERGIE))
        .await?;
    browser.log_in("test:alice").await?;
    let shown = |page: &unefois_tests::web::Page| page.body.matches("class=\"contest\"").count();

    let all = browser.get("/citizen").await?;
    assert_eq!(shown(&all), 3, "{}", all.body);
    let ccas = browser.get("/citizen?org=ccas-lyon").await?;
    assert_eq!(ccas.status, 200, "{}", ccas.body);
    assert_eq!(shown(&ccas), 1, "{}", ccas.body);
    assert!(
        ccas.body
            .contains("Centre communal d&#39;action sociale de Lyon")
    );
    assert!(ccas.body.contains("Effacer les filtres"));
    let income = browser.get(&format!("/citizen?donnees={RFR}")).await?;
    assert_eq!(shown(&income), 2, "{}", income.body);
    let both = browser
        .get(&format!("/citizen?org=mairie-lyon&donnees={RFR}"))
        .await?;
    assert_eq!(shown(&both), 1, "{}", both.body);
    // A period: today (Paris) holds all three; a day to come, none.
    let today = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+1));
    let day = |d: time::OffsetDateTime| {
        format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
    };
    let period = browser
        .get(&format!(
            "/citizen?du={}&au={}",
            day(today - time::Duration::days(1)),
            day(today + time::Duration::days(1))
        ))
        .await?;
    assert_eq!(shown(&period), 3, "{}", period.body);
    let later = browser
        .get(&format!(
            "/citizen?du={}",
            day(today + time::Duration::days(2))
        ))
        .await?;
    assert_eq!(shown(&later), 0, "{}", later.body);
    assert!(
        later
            .body
            .contains("Aucune consultation ne correspond à ces filtres")
    );
    // Paged: 30 more accesses by the CCAS, among the city's; 31 in all, 20 then 11, the filter
    // kept in the link to the older ones.
    let mut ccas = exchange(&broker, "ccas-lyon").await?;
    for i in 0..30 {
        ccas.fetch(fetch("test:alice", RFR, ENERGIE)).await?;
        if i % 3 == 0 {
            city.fetch(rfr("test:alice")).await?;
        }
    }
    let first = browser.get("/citizen?org=ccas-lyon").await?;
    assert_eq!(shown(&first), 20, "{}", first.body);
    let older = first
        .links()
        .into_iter()
        .find(|l| l.starts_with("/citizen?avant=") && l.contains("org=ccas-lyon"))
        .context("no link to older accesses with the filter")?;
    let second = browser.get(&older).await?;
    assert_eq!(shown(&second), 11, "{}", second.body);
    assert!(
        !second
            .links()
            .iter()
            .any(|l| l.starts_with("/citizen?avant=")),
        "nothing older remains"
    );

    // A filter that is not one: said, linked, marked; nothing filtered.
    let wrong = browser.get("/citizen?org=nulle-part&du=hier").await?;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert!(
        wrong.body.contains("Le filtre contient 2 erreurs"),
        "{}",
        wrong.body
    );
    assert!(wrong.body.contains("href=\"#org\"") && wrong.body.contains("href=\"#du\""));
    assert!(wrong.body.contains("aria-invalid=\"true\""));
    assert_eq!(shown(&wrong), 20);
    broker.stop().await?;
    Ok(())
}

/// A FranceConnect-like provider for the citizen pages and the structure's desk, a
/// ProConnect-like one for agents, both over HTTPS with the federation's CA, and a broker with
/// pages whose registry declares them.
struct RealProviders {
    citizens: unefois_tests::identity_provider::IdentityProvider,
    agents: unefois_tests::identity_provider::IdentityProvider,
    broker: TestBroker,
    /// The registry's folder (`idp/ca.pem`, the secrets' files).
    scratch: tempfile::TempDir,
}

impl RealProviders {
    async fn start(pki: &TestPki) -> anyhow::Result<RealProviders> {
        use broker::idp::dev::DevKey;
        use unefois_tests::identity_provider::IdentityProvider;
        let citizens = IdentityProvider::start(
            &pki.pki,
            "https://fc.example",
            &["espace-usager", "france-services-lyon"],
            "fc-secret",
            DevKey::generate("fc-2026")?,
            serde_json::json!({
                "sub": "fc-4242",
                "given_name": "MARIE",
                "family_name": "DUPONT",
                "birthdate": "1980-01-02",
                "gender": "female",
                "birthplace": "69123",
                "birthcountry": "99100",
            }),
        )
        .await?;
        let citizens_key = provider_jwks(&citizens)?;
        let agents = IdentityProvider::start(
            &pki.pki,
            "https://pc.example",
            &["pages-test"],
            "pc-secret",
            DevKey::generate("pc-2026")?,
            serde_json::json!({ "sub": "pc-marie", "acr": "eidas2", "amr": ["pwd", "otp", "mfa"] }),
        )
        .await?;
        let scratch = tempfile::tempdir()?;
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("idp"))?;
        std::fs::copy(pki.pki.ca_cert_path(), dir.join("idp/ca.pem"))?;
        std::fs::write(dir.join("idp/fc.json"), citizens_key)?;
        std::fs::write(dir.join("idp/pc.json"), provider_jwks(&agents)?)?;
        std::fs::write(dir.join("idp/fc-secret.txt"), "fc-secret\n")?;
        std::fs::write(dir.join("idp/pc-secret.txt"), "pc-secret\n")?;
        let (fc, pc) = (citizens.base.clone(), agents.base.clone());
        let registry = unefois_tests::sample_registry_with(dir, |s| {
            format!(
                r#"{s}
[[identity_providers]]
id = "fc-test"
issuer = "https://fc.example"
jwks = "idp/fc.json"
login = {{ authorization_endpoint = "{fc}/authorize", token_endpoint = "{fc}/token", ca_file = "idp/ca.pem", client_secret_file = "idp/fc-secret.txt" }}

[[agent_identity_providers]]
id = "pc-test"
issuer = "https://pc.example"
jwks = "idp/pc.json"
client_id = "pages-test"
login = {{ authorization_endpoint = "{pc}/authorize", token_endpoint = "{pc}/token", ca_file = "idp/ca.pem", client_secret_file = "idp/pc-secret.txt" }}

[[agents]]
provider = "pc-test"
sub = "pc-marie"
participant = "france-services-lyon"
agent = "marie.pc"
name = "Marie Dupuis"
"#
            )
        })?;
        let broker = TestBroker::start_with(
            pki.dir(),
            unefois_tests::BrokerOptions {
                registry,
                web: true,
                ..Default::default()
            },
        )
        .await?;
        Ok(RealProviders {
            citizens,
            agents,
            broker,
            scratch,
        })
    }

    /// The registry's folder.
    fn dir(&self) -> &std::path::Path {
        self.scratch.path()
    }

    /// A browser on the pages that trusts the providers' CA.
    fn browser(&self) -> anyhow::Result<Browser> {
        Browser::trusting(
            self.broker.web_addr.context("no web pages")?,
            &self.dir().join("idp/ca.pem"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_log_in_at_real_identity_providers_over_https() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let real = RealProviders::start(&pki).await?;
    let (citizens, dir) = (&real.citizens, real.dir());
    let (fc, pc) = (real.citizens.base.clone(), real.agents.base.clone());

    // The citizen: sent to the provider with the identity scopes, back with a code the broker
    // redeems over HTTPS with its secret and the PKCE verifier.
    let mut browser = real.browser()?;
    let to_idp = browser.get("/citizen/login").await?;
    let at = to_idp
        .location()
        .context("not sent to the provider")?
        .to_string();
    assert!(at.starts_with(&format!("{fc}/authorize?")), "{at}");
    assert!(at.contains("scope=openid+given_name+family_name"), "{at}");
    let home = browser.follow(to_idp).await?;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(
        home.body
            .contains("<title>Qui a consulté mes données — Une Fois</title>"),
        "{}",
        home.body
    );
    assert_eq!(citizens.redeemed(), 1);

    // An agent at the desk, then the person present (a fresh login asked for).
    let mut desk = real.browser()?;
    let to_idp = desk.get("/desk/login").await?;
    assert!(
        to_idp
            .location()
            .is_some_and(|l| l.starts_with(&format!("{pc}/authorize?"))),
        "{to_idp:?}"
    );
    let page = desk.follow(to_idp).await?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Marie Dupuis, France Services Lyon 8e"),
        "{}",
        page.body
    );
    let to_idp = desk.get("/desk/person/login").await?;
    let at = to_idp
        .location()
        .context("not sent to the provider")?
        .to_string();
    assert!(at.contains("client_id=france-services-lyon"), "{at}");
    assert!(
        at.contains("prompt=login") && at.contains("max_age=0"),
        "{at}"
    );
    let present = desk.follow(to_idp).await?;
    assert!(
        present
            .body
            .contains("Personne présente : <strong>MARIE DUPONT</strong>"),
        "{}",
        present.body
    );

    // A secret the provider does not know: no session, the person told the login failed.
    std::fs::write(dir.join("idp/fc-secret.txt"), "not-the-secret\n")?;
    let mut other = real.browser()?;
    let to_idp = other.get("/citizen/login").await?;
    let failed = other.follow(to_idp).await?;
    assert_eq!(failed.status, 400, "{}", failed.body);
    assert!(failed.body.contains("Connexion échouée"), "{}", failed.body);
    assert!(other.cookie("unefois_session").is_none());
    real.broker.stop().await?;
    Ok(())
}

/// An agent logs in at a ProConnect-like provider that, as ProConnect does, gives a two-factor
/// `acr` only when the authorization request asks for one: the pages ask for it (`claims`, the
/// ID token's `acr` essential among the registry's `multi_factor_acr`), and the agent reaches
/// the desk. Fails without the `claims` parameter: the token says one factor and the agent
/// reads « Second facteur exigé ».
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_at_a_real_provider_is_asked_for_a_second_factor_and_logs_in() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let real = RealProviders::start(&pki).await?;
    let mut desk = real.browser()?;
    let to_idp = desk.get("/desk/login").await?;
    let at = url::Url::parse(to_idp.location().context("not sent to the provider")?)?;
    let home = desk.follow(to_idp).await?;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(
        home.body.contains("Marie Dupuis, France Services Lyon 8e"),
        "{}",
        home.body
    );
    let claims = at
        .query_pairs()
        .find(|(k, _)| k == "claims")
        .map(|(_, v)| v.into_owned())
        .context("no claims asked for")?;
    let claims: serde_json::Value = serde_json::from_str(&claims)?;
    assert_eq!(
        claims,
        serde_json::json!({"id_token": {"acr": {"essential": true, "values": [
            "eidas2",
            "eidas3",
            "https://proconnect.gouv.fr/assurance/self-asserted-2fa",
            "https://proconnect.gouv.fr/assurance/consistency-checked-2fa",
        ]}}})
    );
    real.broker.stop().await?;
    Ok(())
}

/// The person at a desk is asked for a fresh authentication (`prompt=login`, `max_age=0`); a
/// provider that ignores it and answers with an earlier one (the previous visitor's, on a
/// shared device), or without saying when (`auth_time`), makes nobody present. Fails without
/// the desk's check of `auth_time`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_at_a_desk_is_present_only_after_a_fresh_authentication() -> anyhow::Result<()> {
    use unefois_tests::identity_provider::AuthTime;
    let pki = TestPki::for_sample_registry()?;
    let real = RealProviders::start(&pki).await?;
    for when in [
        AuthTime::SecondsAgo(15 * 60),
        AuthTime::Absent,
        AuthTime::Fresh,
    ] {
        real.citizens.set_auth_time(when);
        let mut desk = real.browser()?;
        let to_idp = desk.get("/desk/login").await?;
        let home = desk.follow(to_idp).await?;
        assert!(
            home.body.contains("La personne se connecte"),
            "{}",
            home.body
        );
        let to_idp = desk.get("/desk/person/login").await?;
        let answer = desk.follow(to_idp).await?;
        let home = desk.get("/desk").await?;
        if let AuthTime::Fresh = when {
            assert!(
                answer
                    .body
                    .contains("Personne présente : <strong>MARIE DUPONT</strong>"),
                "{}",
                answer.body
            );
            continue;
        }
        assert_eq!(answer.status, 403, "{when:?}: {}", answer.body);
        assert!(
            answer.body.contains("Personne n&#39;est accueilli"),
            "{when:?}: {}",
            answer.body
        );
        assert!(answer.links().contains(&"/desk".to_string()));
        assert!(
            !home.body.contains("Personne présente")
                && home.body.contains("La personne se connecte"),
            "{when:?}: someone present\n{}",
            home.body
        );
    }
    real.broker.stop().await?;
    Ok(())
}

/// The JWKS of a test provider's key.
fn provider_jwks(
    provider: &unefois_tests::identity_provider::IdentityProvider,
) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&provider.jwks())?)
}

/// A person with more than a page of consents (100 ended ones, then one in force) sees the one
/// in force and can withdraw it: before the fix the page read the first 100, oldest first, and
/// the newest were missing, their withdrawal page answering « n'existe pas ».
#[tokio::test]
async fn a_consent_in_force_after_a_hundred_ended_ones_is_shown_and_withdrawn() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut browser) = broker_with_pages(&pki).await?;
    let mandate = take_mandate(&broker, "test:alice", CANTINE).await?;
    let mut agent =
        unefois_proto::v1::consents_client::ConsentsClient::new(broker.channel(AGENT).await?);
    let grant = || pb::GrantConsentRequest {
        subject: "test:alice".into(),
        consumer: "mairie-lyon".into(),
        attestation_types: vec![QF.into()],
        purpose: CANTINE.into(),
        valid_days: 30,
        mandate_id: mandate.id.clone(),
        ..Default::default()
    };
    for _ in 0..100 {
        let id = agent
            .grant(grant())
            .await?
            .into_inner()
            .consent
            .context("no consent")?
            .id;
        agent
            .revoke(pb::RevokeConsentRequest {
                consent_id: id,
                mandate_id: mandate.id.clone(),
                ..Default::default()
            })
            .await?;
    }
    let in_force = agent
        .grant(grant())
        .await?
        .into_inner()
        .consent
        .context("no consent")?
        .id;
    let home = browser.log_in("test:alice").await?;
    let withdraw = format!("/citizen/consents/{in_force}/withdraw");
    assert!(home.links().contains(&withdraw), "not shown");
    let confirm = browser.get(&withdraw).await?;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    broker.stop().await?;
    Ok(())
}

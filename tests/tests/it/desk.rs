//! The mediator's desk over real HTTP (issue 23): an agent logs in at the agents' identity
//! provider only with a second factor and an enrolment; the person present proves who they are
//! on the desk's device; the mandate created there (without JavaScript: a plain multipart
//! form) is used to pre-fill a form and record a consent, and all of it shows on the person's
//! own citizen page, attributed to the agent and the structure; the agent revokes it and acts
//! no more. No person is ever in a URL.

use anyhow::Context;
use tonic::Code;
use unefois_proto::v1::ErrorReason;
use unefois_tests::clients::exchange;
use unefois_tests::refusals::refused;
use unefois_tests::requests::fetch;
use unefois_tests::sample::{CANTINE, LYON, QF};
use unefois_tests::web::{Browser, Page};
use unefois_tests::{TestBroker, TestPki};

async fn desk(broker: &TestBroker) -> anyhow::Result<Browser> {
    Browser::new(broker.web_addr.context("no web pages")?)
}

fn shows(page: &Page, text: &str) {
    assert!(
        page.body.contains(text),
        "{text:?} not shown:\n{}",
        page.body
    );
}

#[tokio::test]
async fn an_agent_logs_in_only_with_a_second_factor_and_an_enrolment() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    let mut browser = desk(&broker).await?;
    let invitation = browser.get("/desk").await?;
    shows(
        &invitation,
        "<title>Espace des agents : connexion — Une Fois</title>",
    );

    for (sub, two, status, title) in [
        ("agent-marie", false, 403, "Second facteur exigé"),
        ("agent-non-inscrit", true, 403, "Agent non inscrit"),
        // The CNIL's staff member is enrolled, but for an auditor: not a desk.
        (
            "agent-cnil",
            true,
            403,
            "Espace réservé aux structures d&#39;accompagnement",
        ),
    ] {
        let refused = browser.log_in_agent(sub, two).await?;
        assert_eq!(refused.status, status, "{sub}: {}", refused.body);
        shows(&refused, title);
        assert!(
            browser.cookie("unefois_desk").is_none(),
            "{sub}: no session"
        );
    }

    let home = browser.log_in_agent("agent-marie", true).await?;
    assert_eq!(home.status, 200, "{}", home.body);
    shows(&home, "Marie Dupont, France Services Lyon 8e");
    shows(&home, "La personne se connecte");
    let cookie = browser
        .set_cookie_of("unefois_desk")
        .context("no desk cookie")?;
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );

    // A login answer replayed in another browser opens nothing.
    let mut other = desk(&broker).await?;
    let replay = browser
        .visited
        .iter()
        .rev()
        .find(|u| u.contains("/desk/callback"))
        .context("no callback visited")?
        .clone();
    let replayed = other.get(&replay).await?;
    assert_eq!(replayed.status, 400, "{}", replayed.body);
    assert!(other.cookie("unefois_desk").is_none());
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_mandate_made_at_the_desk_is_used_and_shows_on_the_persons_page() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    let mut browser = desk(&broker).await?;
    browser.log_in_agent("agent-marie", true).await?;
    let home = browser.person_at_desk("test:alice").await?;
    assert_eq!(home.status, 200, "{}", home.body);
    shows(&home, "Personne présente : <strong>Alice Martin</strong>");
    shows(&home, "Elle n'a donné aucun mandat à votre structure.");

    // The form, sent incomplete: every error summarised, linked, and its fields marked.
    let form = browser.get("/desk/mandates/new").await?;
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.field("csrf").context("no CSRF token")?;
    let demande = form.field("demande").context("no request id")?;
    let visite = form.field("visite").context("no visit")?;
    let incomplete = browser
        .post_multipart(
            "/desk/mandates/new",
            &[("csrf", &csrf), ("visite", &visite)],
            None,
        )
        .await?;
    assert_eq!(incomplete.status, 400, "{}", incomplete.body);
    shows(&incomplete, "Le formulaire contient 4 erreurs");
    for anchor in ["#finalite-0", "#duree-0", "#informee", "#document"] {
        shows(&incomplete, &format!("href=\"{anchor}\""));
    }
    assert!(incomplete.body.matches("aria-invalid=\"true\"").count() >= 4);

    // The signed document attached, the box left unchecked: the form comes back with the
    // document's SHA-256 in place of the file a browser never fills again.
    let signed = b"%PDF-1.4 mandat signe par Alice Martin";
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(signed));
    let unchecked = browser
        .post_multipart(
            "/desk/mandates/new",
            &[
                ("csrf", &csrf),
                ("visite", &visite),
                ("finalite", CANTINE),
                ("duree", "31"),
            ],
            Some(("document", "mandat.pdf", signed)),
        )
        .await?;
    assert_eq!(unchecked.status, 400, "{}", unchecked.body);
    shows(&unchecked, "Le formulaire contient 1 erreur");
    shows(&unchecked, "Le document joint a été reçu");
    shows(&unchecked, &format!("id=\"empreinte\" value=\"{digest}\""));

    // Complete: two purposes, a month, the person informed, the signed document attached.
    let complete = [
        ("csrf", csrf.as_str()),
        ("visite", visite.as_str()),
        ("demande", demande.as_str()),
        ("finalite", "aide_energie"),
        ("finalite", CANTINE),
        ("duree", "31"),
        ("informee", "oui"),
    ];
    let created = browser
        .post_multipart(
            "/desk/mandates/new",
            &complete,
            Some(("document", "mandat.pdf", signed)),
        )
        .await?;
    assert_eq!(created.status, 303, "{}", created.body);
    // Sent twice (a double click, a retry): one mandate.
    let again = browser
        .post_multipart(
            "/desk/mandates/new",
            &complete,
            Some(("document", "mandat.pdf", signed)),
        )
        .await?;
    assert_eq!(again.location(), created.location(), "{}", again.body);
    let printable = browser.follow(created).await?;
    assert_eq!(printable.status, 200, "{}", printable.body);
    let mandate_id = printable
        .body
        .split("Mandat n° <span class=\"id\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .context("no mandate number")?
        .to_string();
    shows(
        &printable,
        "Alice Martin donne mandat à <strong>France Services Lyon 8e</strong>",
    );
    shows(&printable, "Marie Dupont (marie.dupont)");
    shows(&printable, "31 jours");
    shows(&printable, &digest);
    shows(
        &printable,
        &format!(
            "Vous agissez pour <strong>Alice Martin</strong> — mandat n° <span class=\"id\">{mandate_id}</span>"
        ),
    );

    // The banner stays on every page while the agent acts under it, the desk's home included.
    let home = browser.get("/desk").await?;
    shows(&home, "Vous agissez pour <strong>Alice Martin</strong>");

    // Under it: the energy-aid form, each field with its value and source.
    let acting = browser.get("/desk/agir").await?;
    assert_eq!(acting.status, 200, "{}", acting.body);
    shows(&acting, "Vous agissez pour");
    let filled = browser
        .post(
            "/desk/agir/formulaire",
            &[
                ("csrf", &csrf),
                ("mandat", &mandate_id),
                ("formulaire", "aide_energie"),
            ],
            None,
        )
        .await?;
    assert_eq!(filled.status, 303, "{}", filled.body);
    let filled = browser.follow(filled).await?;
    assert_eq!(filled.status, 200, "{}", filled.body);
    shows(&filled, "23870");
    shows(&filled, "Direction générale des Finances publiques");
    shows(&filled, "Vous agissez pour");
    // A reload shows it no more and reads nothing again: each read is in Alice's history.
    let reloaded = browser.get("/desk/agir/formulaire").await?;
    assert_eq!(reloaded.status, 303, "{}", reloaded.body);
    let reloaded = browser.follow(reloaded).await?;
    assert!(!reloaded.body.contains("23870"), "{}", reloaded.body);
    shows(&reloaded, "n&#39;est affiché qu&#39;une fois");

    // A consent for the city's canteen pricing, recorded under the mandate: the city's next
    // gRPC fetch of Alice's family quotient is granted.
    refused(
        exchange(&broker, LYON)
            .await?
            .fetch(fetch("test:alice", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::NoConsent,
    );
    let offer = format!("mairie-lyon.caf.quotient_familial|{CANTINE}");
    // A form served under another mandate (another person's, in another tab): nothing done.
    let elsewhere = browser
        .post(
            "/desk/agir/consentement",
            &[
                ("csrf", &csrf),
                ("mandat", "0190aaaa-1111-7000-8000-000000000001"),
                ("offre", &offer),
            ],
            None,
        )
        .await?;
    assert_eq!(elsewhere.status, 409, "{}", elsewhere.body);
    shows(&elsewhere, "rien n&#39;a été fait");
    refused(
        exchange(&broker, LYON)
            .await?
            .fetch(fetch("test:alice", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::NoConsent,
    );
    let granted = browser
        .post(
            "/desk/agir/consentement",
            &[("csrf", &csrf), ("mandat", &mandate_id), ("offre", &offer)],
            None,
        )
        .await?;
    assert_eq!(granted.status, 303, "{}", granted.body);
    let after = browser.follow(granted).await?;
    shows(&after, "Le consentement est enregistré.");
    exchange(&broker, LYON)
        .await?
        .fetch(fetch("test:alice", QF, CANTINE))
        .await?;

    // The person's history, as the agent sees it under the mandate.
    let history = browser.get("/desk/agir/historique").await?;
    assert_eq!(history.status, 200, "{}", history.body);
    shows(&history, "Ville de Lyon");
    // Whose data they are: the person's, not the agent's.
    shows(&history, "Consultations des données de la personne");
    assert!(
        !history.body.contains("Consultations de vos données"),
        "{}",
        history.body
    );
    // Reached from another site, it reads nothing until the agent goes on from the page.
    let elsewhere = browser
        .get_from("/desk/agir/historique", "cross-site")
        .await?;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.body);
    shows(&elsewhere, "Continuer vers votre espace");
    assert!(
        elsewhere
            .links()
            .contains(&"/desk/agir/historique".to_string()),
        "{}",
        elsewhere.body
    );

    // On Alice's own page: the mandate and the accesses, attributed to the agent.
    let mut alice = desk(&broker).await?;
    let page = alice.log_in("test:alice").await?;
    assert_eq!(page.status, 200, "{}", page.body);
    shows(
        &page,
        &format!(
            "Par un médiateur : France Services Lyon 8e, agent Marie Dupont (marie.dupont), \
             mandat n° {mandate_id}"
        ),
    );
    shows(&page, "<td>Marie Dupont (marie.dupont)</td>");
    // The consent too: recorded by the structure, by its agent, under the mandate.
    shows(
        &page,
        &format!(
            "<td>France Services Lyon 8e, agent Marie Dupont (marie.dupont), mandat n° \
             {mandate_id}</td>"
        ),
    );

    // The agent revokes it at the desk: the consent ends with it, and acting under it stops.
    let revoke = format!("/desk/mandates/{mandate_id}/revoke");
    let confirm = browser.get(&revoke).await?;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let done = browser.post(&revoke, &[("csrf", &csrf)], None).await?;
    assert_eq!(done.status, 303, "{}", done.body);
    let home = browser.follow(done).await?;
    shows(&home, "Le mandat est révoqué.");
    shows(&home, "Révoqué");
    let stopped = browser.get("/desk/agir").await?;
    assert_eq!(stopped.location(), Some("/desk"));
    refused(
        exchange(&broker, LYON)
            .await?
            .fetch(fetch("test:alice", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );

    // Forms without the session's token or from elsewhere do nothing.
    let forged = browser
        .post("/desk/person/end", &[("csrf", "forged")], None)
        .await?;
    assert_eq!(forged.status, 403);
    let foreign = browser
        .post(
            "/desk/person/end",
            &[("csrf", &csrf)],
            Some("https://evil.example"),
        )
        .await?;
    assert_eq!(foreign.status, 403);
    for url in browser.visited.iter().chain(&alice.visited) {
        assert!(!url.contains("alice"), "{url}");
    }
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_structure_that_is_also_a_guichet_keeps_its_desk() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    // France Services is a guichet too: its agents still see their structure's mandates
    // without the person's token.
    let registry = unefois_tests::sample_registry_with(scratch.path(), |s| {
        s.replacen(
            "name = \"France Services Lyon 8e\"\nroles = [\"mediator\"]",
            "name = \"France Services Lyon 8e\"\nroles = [\"mediator\", \"guichet\"]",
            1,
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
    let mut browser = desk(&broker).await?;
    browser.log_in_agent("agent-marie", true).await?;
    let home = browser.person_at_desk("test:alice").await?;
    assert_eq!(home.status, 200, "{}", home.body);
    shows(&home, "Elle n'a donné aucun mandat à votre structure.");
    let form = browser.get("/desk/mandates/new").await?;
    let csrf = form.field("csrf").context("no CSRF token")?;
    let visite = form.field("visite").context("no visit")?;
    let created = browser
        .post_multipart(
            "/desk/mandates/new",
            &[
                ("csrf", &csrf),
                ("visite", &visite),
                ("finalite", "aide_energie"),
                ("duree", "1"),
                ("informee", "oui"),
            ],
            Some(("document", "mandat.pdf", b"%PDF mandat")),
        )
        .await?;
    assert_eq!(created.status, 303, "{}", created.body);
    let printable = browser.follow(created).await?;
    assert_eq!(printable.status, 200, "{}", printable.body);
    shows(&printable, "Alice Martin donne mandat");
    broker.stop().await?;
    Ok(())
}

/// The hidden fields of the mandate form that `agent-marie` is served with `test:alice` at
/// her desk.
struct MandateForm {
    csrf: String,
    demande: String,
    visite: String,
}

impl MandateForm {
    /// Sends the form for the cantine's purpose, 31 days, the person informed, with `scan` as
    /// the signed document, over `over`: the answer's status and `Location`.
    async fn upload_slowly(
        &self,
        browser: &mut Browser,
        scan: &[u8],
        over: std::time::Duration,
    ) -> anyhow::Result<(u16, String)> {
        browser
            .post_multipart_slowly(
                "/desk/mandates/new",
                &[
                    ("csrf", &self.csrf),
                    ("visite", &self.visite),
                    ("demande", &self.demande),
                    ("finalite", CANTINE),
                    ("duree", "31"),
                    ("informee", "oui"),
                ],
                Some(("document", "mandat.pdf", scan)),
                over,
            )
            .await
    }
}

/// `agent-marie` logged in at `broker`'s desk with `test:alice` present, and the mandate form
/// she is served.
async fn mandate_form(broker: &TestBroker) -> anyhow::Result<(Browser, MandateForm)> {
    let mut browser = desk(broker).await?;
    browser.log_in_agent("agent-marie", true).await?;
    browser.person_at_desk("test:alice").await?;
    let form = browser.get("/desk/mandates/new").await?;
    let fields = MandateForm {
        csrf: form.field("csrf").context("no CSRF token")?,
        demande: form.field("demande").context("no request id")?,
        visite: form.field("visite").context("no visit")?,
    };
    Ok((browser, fields))
}

/// A signed mandate uploaded over a slow connection is received: its upload has time by its
/// size, beyond a page's time (here 1 s; 20 s in production, where 5 MiB at 256 kbit/s take
/// 160 s). Fails when the upload has a page's time only.
#[tokio::test]
async fn a_signed_mandate_uploaded_slowly_is_received() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let mut options = unefois_tests::BrokerOptions {
        web: true,
        ..Default::default()
    };
    options.accept.web_page_timeout = std::time::Duration::from_secs(1);
    let broker = TestBroker::start_with(pki.dir(), options).await?;
    let (mut browser, form) = mandate_form(&broker).await?;
    let scan = vec![b'%'; 256 * 1024];
    let (status, location) = form
        .upload_slowly(&mut browser, &scan, std::time::Duration::from_secs(3))
        .await?;
    assert_eq!(status, 303, "the upload was cut off");
    assert!(location.starts_with("/desk/mandates/"), "{location}");
    let printable = browser.get(&location).await?;
    shows(
        &printable,
        &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&scan)),
    );
    broker.stop().await?;
    Ok(())
}

/// A broker asked to stop while an agent's signed mandate is still being uploaded lets the page
/// finish: the mandate is recorded, before the broker's stop, and the agent sees it. The web
/// listener used to return as soon as it stopped accepting: with no gRPC call in flight the
/// broker then recorded its stop and closed its store under the page, whose act failed. Fails
/// without the listener waiting for its connections; and, were the listening socket kept open
/// through that wait, on the new client left in its backlog.
#[tokio::test]
async fn a_page_in_flight_when_the_broker_stops_is_finished_and_recorded() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let options = unefois_tests::BrokerOptions {
        web: true,
        data_dir: Some(data.path().join("data")),
        ..Default::default()
    };
    let broker = TestBroker::start_with(pki.dir(), options).await?;
    let (mut browser, form) = mandate_form(&broker).await?;
    let scan = vec![b'%'; 64 * 1024];
    let upload = tokio::spawn(async move {
        form.upload_slowly(&mut browser, &scan, std::time::Duration::from_secs(2))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let addr = broker.web_addr.context("no web pages")?;
    let stopping = tokio::spawn(broker.stop());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Meanwhile a new client is refused at once (its balancer tries another broker), not left
    // waiting in the listener's backlog through the drain.
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a connection during the drain: {refused:?}"
    );
    stopping.await??;
    let (status, location) = upload.await??;
    assert_eq!(status, 303, "the page in flight failed");
    assert!(location.starts_with("/desk/mandates/"), "{location}");
    let kinds: Vec<&str> = unefois_tests::journal::records(&data.path().join("data"))?
        .iter()
        .map(|r| r.event.kind())
        .collect();
    let created = kinds.iter().position(|k| *k == "mandate_created");
    let stopped = kinds.iter().rposition(|k| *k == "broker_stopped");
    assert!(
        matches!((created, stopped), (Some(c), Some(s)) if c < s),
        "the mandate recorded before the stop: {kinds:?}"
    );
    Ok(())
}

/// A broker with pages on the sample registry, copied to `dir/registry.toml` to be rewritten
/// and reloaded; the registry's path.
async fn reloadable(
    pki: &TestPki,
    dir: &std::path::Path,
) -> anyhow::Result<(TestBroker, std::path::PathBuf)> {
    let registry = unefois_tests::sample_registry_with(dir, |s| format!("{s}\n# Rechargé.\n"))?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            registry: registry.clone(),
            web: true,
            ..Default::default()
        },
    )
    .await?;
    Ok((broker, registry))
}

/// Rewrites the registry at `path` as the sample one with `edit` applied, and reloads it.
async fn reload_with(
    broker: &TestBroker,
    path: &std::path::Path,
    edit: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    let sample = std::fs::read_to_string(unefois_tests::sample_registry())?;
    let edited = edit(&sample);
    std::fs::write(path, &edited)?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The sample registry without Marie Dupont's enrolment.
fn without_marie(sample: &str) -> String {
    sample.replacen(
        "[[agents]]\nprovider = \"dev-agents\"\nsub = \"agent-marie\"\nparticipant = \
         \"france-services-lyon\"\nagent = \"marie.dupont\"\nname = \"Marie Dupont\"\n",
        "",
        1,
    )
}

/// The mandate form filled for the person present (the school canteen, a month), sent with the
/// visit it was served with; the answer.
async fn create_mandate(browser: &mut Browser) -> anyhow::Result<Page> {
    let form = browser.get("/desk/mandates/new").await?;
    let csrf = form.field("csrf").context("no CSRF token")?;
    let visite = form.field("visite").unwrap_or_default();
    browser
        .post_multipart(
            "/desk/mandates/new",
            &[
                ("csrf", &csrf),
                ("visite", &visite),
                ("finalite", CANTINE),
                ("duree", "31"),
                ("informee", "oui"),
            ],
            Some(("document", "mandat.pdf", b"%PDF mandat")),
        )
        .await
}

/// An agent whom a reloaded registry no longer enrols still ends their session: the person
/// present, their ID token and the mandate acted under go with it. Fails when the logout first
/// asks the registry for the agent (403, the session left open).
#[tokio::test]
async fn a_logout_closes_the_desk_even_when_the_agent_is_no_longer_enrolled() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, registry) = reloadable(&pki, scratch.path()).await?;
    let mut browser = desk(&broker).await?;
    browser.log_in_agent("agent-marie", true).await?;
    let home = browser.person_at_desk("test:alice").await?;
    shows(&home, "Personne présente : <strong>Alice Martin</strong>");
    let csrf = home.field("csrf").context("no CSRF token")?;
    let cookie = browser
        .cookie("unefois_desk")
        .context("no desk cookie")?
        .to_string();

    reload_with(&broker, &registry, without_marie).await?;
    let refused = browser.get("/desk").await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // The person leaves, then the agent logs out: both done, whatever the registry says.
    let ended = browser
        .post("/desk/person/end", &[("csrf", &csrf)], None)
        .await?;
    assert_eq!(ended.status, 303, "{}", ended.body);
    let out = browser
        .post("/desk/logout", &[("csrf", &csrf)], None)
        .await?;
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(out.location(), Some("/"));
    assert!(
        browser
            .set_cookie_of("unefois_desk")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the cookie is not cleared"
    );
    assert!(browser.cookie("unefois_desk").is_none());

    // Enrolled again, the old cookie finds nothing open.
    reload_with(&broker, &registry, |s| format!("{s}\n# De nouveau.\n")).await?;
    browser.set_cookie("unefois_desk", &cookie);
    let home = browser.get("/desk").await?;
    assert_eq!(home.status, 200, "{}", home.body);
    shows(
        &home,
        "<title>Espace des agents : connexion — Une Fois</title>",
    );
    assert!(!home.body.contains("Alice"), "{}", home.body);
    broker.stop().await?;
    Ok(())
}

/// A desk or console session acts only while the registry in force maps the account that
/// opened it to the same agent: once a reload enrols Marie Dupont under another account id
/// (`sub`), and Claire Roux at another agents' identity provider (as after a compromise of the
/// provider), their sessions open before serve no page, exactly as when an enrolment is
/// removed; Marie's new account logs in. Fails when a page checks only that the participant
/// and agent id are still enrolled (the old sessions keep acting for up to an hour).
#[tokio::test]
async fn a_session_ends_once_the_registry_enrols_another_account_as_its_agent() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, registry) = reloadable(&pki, scratch.path()).await?;
    let mut marie = desk(&broker).await?;
    let home = marie.log_in_agent("agent-marie", true).await?;
    shows(&home, "Marie Dupont, France Services Lyon 8e");
    let mut claire = desk(&broker).await?;
    let console = claire
        .log_in_staff("/audit/login", "agent-cnil", true)
        .await?;
    assert_eq!(console.status, 200, "{}", console.body);
    shows(&console, "Claire Roux");

    reload_with(&broker, &registry, |s| {
        assert!(s.contains("provider = \"dev-agents\"\nsub = \"agent-cnil\""));
        format!(
            "{}\n[[agent_identity_providers]]\nid = \"dev-agents-bis\"\nissuer = \
             \"https://agents-bis.unefois.test\"\njwks = \"dev-idp/jwks.json\"\nclient_id = \
             \"unefois-pages\"\n",
            s.replacen("sub = \"agent-marie\"", "sub = \"agent-marie-2\"", 1)
                .replacen(
                    "provider = \"dev-agents\"\nsub = \"agent-cnil\"",
                    "provider = \"dev-agents-bis\"\nsub = \"agent-cnil\"",
                    1,
                )
        )
    })
    .await?;
    let refused = marie.get("/desk").await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    shows(&refused, "n&#39;inscrit plus cet agent");
    assert!(
        !refused.body.contains("La personne se connecte"),
        "{}",
        refused.body
    );
    let refused = claire.get("/audit").await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    shows(&refused, "n&#39;inscrit plus ce compte");
    assert!(!refused.body.contains("Claire Roux"), "{}", refused.body);

    // Marie's account now enrolled logs in.
    let home = marie.log_in_agent("agent-marie-2", true).await?;
    assert_eq!(home.status, 200, "{}", home.body);
    shows(&home, "Marie Dupont, France Services Lyon 8e");
    broker.stop().await?;
    Ok(())
}

/// A mandate form opened for Alice and sent after Bob was welcomed (in another tab) records
/// nothing: Alice's purposes and document are not Bob's. Fails when the form takes whoever is
/// present when it is sent.
#[tokio::test]
async fn a_mandate_form_opened_for_one_person_is_refused_once_another_is_present()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    let mut browser = desk(&broker).await?;
    browser.log_in_agent("agent-marie", true).await?;
    browser.person_at_desk("test:alice").await?;
    let form = browser.get("/desk/mandates/new").await?;
    let csrf = form.field("csrf").context("no CSRF token")?;
    let visite = form.field("visite").unwrap_or_default();
    let demande = form.field("demande").context("no request id")?;

    // Another tab: Bob is welcomed.
    let home = browser.person_at_desk("test:bob").await?;
    shows(&home, "Personne présente : <strong>Bob Durand</strong>");
    let stale = browser
        .post_multipart(
            "/desk/mandates/new",
            &[
                ("csrf", &csrf),
                ("visite", &visite),
                ("demande", &demande),
                ("finalite", CANTINE),
                ("duree", "365"),
                ("informee", "oui"),
            ],
            Some(("document", "mandat.pdf", b"%PDF mandat signe par Alice")),
        )
        .await?;
    assert_eq!(stale.status, 409, "{}", stale.body);
    shows(&stale, "La personne à l&#39;accueil a changé");
    shows(&stale, "aucun mandat n&#39;a été enregistré");
    let home = browser.get("/desk").await?;
    shows(&home, "Elle n'a donné aucun mandat à votre structure.");

    // Filled again for Bob: recorded.
    let created = create_mandate(&mut browser).await?;
    assert_eq!(created.status, 303, "{}", created.body);
    let printable = browser.follow(created).await?;
    shows(&printable, "Bob Durand donne mandat");
    broker.stop().await?;
    Ok(())
}

/// « Prolonger la session » is a new login: the same agent goes on with the person present and
/// the mandate acted under; another agent logging in on the same browser starts afresh. Fails
/// when the new login drops the person whoever logs in.
#[tokio::test]
async fn extending_the_session_keeps_the_person_for_the_same_agent_only() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    let mut browser = desk(&broker).await?;
    browser.log_in_agent("agent-marie", true).await?;
    browser.person_at_desk("test:alice").await?;
    let created = create_mandate(&mut browser).await?;
    assert_eq!(created.status, 303, "{}", created.body);
    let home = browser.get("/desk").await?;
    shows(&home, "Vous agissez pour <strong>Alice Martin</strong>");

    // Marie extends her session: Alice and the mandate stay.
    let extended = browser.log_in_agent("agent-marie", true).await?;
    assert_eq!(extended.status, 200, "{}", extended.body);
    shows(&extended, "Vous agissez pour <strong>Alice Martin</strong>");
    shows(
        &extended,
        "Personne présente : <strong>Alice Martin</strong>",
    );
    let acting = browser.get("/desk/agir").await?;
    assert_eq!(acting.status, 200, "{}", acting.body);

    // Karim logs in on the same browser: nobody is at his desk.
    let karim = browser.log_in_agent("agent-karim", true).await?;
    assert_eq!(karim.status, 200, "{}", karim.body);
    shows(&karim, "Karim Benali, France Services Lyon 8e");
    assert!(!karim.body.contains("Alice"), "{}", karim.body);
    shows(&karim, "La personne se connecte");
    let acting = browser.get("/desk/agir").await?;
    assert_eq!(acting.location(), Some("/desk"));
    broker.stop().await?;
    Ok(())
}

/// What the desk says when the person's login cannot be made: the person cancelled at the
/// identity provider (they did not log in; back to the desk), or no citizens' identity
/// provider is there (theirs is missing, not the agents'). Fails with the earlier texts.
#[tokio::test]
async fn the_desk_says_what_became_of_the_persons_login() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, registry) = reloadable(&pki, scratch.path()).await?;
    let mut browser = desk(&broker).await?;
    browser.log_in_agent("agent-marie", true).await?;
    let to_idp = browser.get("/desk/person/login").await?;
    let state = to_idp
        .location()
        .context("not sent to the provider")?
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .context("no state")?
        .to_string();
    let cancelled = browser
        .get(&format!(
            "/desk/person/callback?error=access_denied&state={state}"
        ))
        .await?;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    shows(&cancelled, "La personne ne s&#39;est pas connectée");
    assert!(
        cancelled.links().contains(&"/desk".to_string()),
        "{}",
        cancelled.body
    );
    assert!(
        !cancelled.body.contains("déconnectez-vous"),
        "{}",
        cancelled.body
    );

    // The citizens' identity provider gone from the registry: the agents' is still there.
    reload_with(&broker, &registry, |s| {
        s.replacen(
            "[[identity_providers]]\nid = \"dev-idp\"\nissuer = \"https://idp.unefois.test\"\n\
             jwks = \"dev-idp/jwks.json\"\nmax_token_age_seconds = 600\n",
            "",
            1,
        )
    })
    .await?;
    let home = browser.get("/desk").await?;
    assert_eq!(home.status, 200, "{}", home.body);
    let none = browser.get("/desk/person/login").await?;
    assert_eq!(none.status, 503, "{}", none.body);
    shows(&none, "Aucun fournisseur d&#39;identité des usagers");
    assert!(!none.body.contains("identité des agents"), "{}", none.body);
    broker.stop().await?;
    Ok(())
}

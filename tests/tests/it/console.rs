//! The auditors' console over real HTTP (issue 23): only an auditor's enrolled staff member
//! logs in (second factor); the events filtered by kind and by a person given in full, shown
//! under their audit pseudonym only, each read recorded in the log first; CSV and JSON exports;
//! the citizens' contest reports with the exchange they contest; the proof API and the bundle
//! verify with the log key; the offline verifier is one self-contained HTML file.

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use unefois_tests::clients::{exchange, grant_consent};
use unefois_tests::requests::fetch;
use unefois_tests::sample::{CANTINE, LYON, QF};
use unefois_tests::web::{Browser, Page};
use unefois_tests::{TestBroker, TestPki};

fn shows(page: &Page, text: &str) {
    assert!(
        page.body.contains(text),
        "{text:?} not shown:\n{}",
        page.body
    );
}

/// Rows of the page's first table body.
fn rows(page: &Page) -> usize {
    page.body
        .split("<tbody>")
        .nth(1)
        .and_then(|b| b.split("</tbody>").next())
        .map_or(0, |b| b.matches("<tr>").count())
}

#[tokio::test]
async fn auditors_read_filtered_events_each_read_recorded_and_check_proofs() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    // Alice and Bob consent; the city reads both family quotients.
    for person in ["test:alice", "test:bob"] {
        grant_consent(&broker, person, QF, CANTINE).await?;
        exchange(&broker, LYON)
            .await?
            .fetch(fetch(person, QF, CANTINE))
            .await?;
    }
    let web = broker.web_addr.context("no web pages")?;

    // A mediator's agent is not an auditor: no console.
    let mut marie = Browser::new(web)?;
    let refused = marie
        .log_in_staff("/audit/login", "agent-marie", true)
        .await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    shows(&refused, "Console réservée aux contrôleurs");
    // One factor: refused.
    let mut browser = Browser::new(web)?;
    let one = browser
        .log_in_staff("/audit/login", "agent-cnil", false)
        .await?;
    assert_eq!(one.status, 403);
    shows(&one, "Second facteur exigé");

    let home = browser
        .log_in_staff("/audit/login", "agent-cnil", true)
        .await?;
    assert_eq!(home.status, 200, "{}", home.body);
    shows(
        &home,
        "Claire Roux, Commission nationale de l&#39;informatique et des libertés",
    );
    let csrf = home.field("csrf").context("no CSRF token")?;

    // A person that is not one: the error, linked and marked.
    let bad = browser
        .post(
            "/audit/evenements",
            &[("csrf", &csrf), ("personne", "alice")],
            None,
        )
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    shows(&bad, "href=\"#personne\"");
    shows(&bad, "aria-invalid=\"true\"");

    // Alice's exchanges, the person given in full, never in a URL.
    let filtered = browser
        .post(
            "/audit/evenements",
            &[
                ("csrf", &csrf),
                ("genre", "exchange"),
                ("personne", "test:alice"),
            ],
            None,
        )
        .await?;
    assert_eq!(filtered.status, 303, "{}", filtered.body);
    let events = browser.follow(filtered).await?;
    assert_eq!(events.status, 200, "{}", events.body);
    assert_eq!(rows(&events), 1, "Alice's one exchange:\n{}", events.body);
    shows(&events, "Échange de données");
    shows(&events, "Ville de Lyon");
    assert!(!events.body.contains("alice"), "{}", events.body);

    // A period to come: the listing starts at its first entry (none), not at the log's start.
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let day = format!(
        "{:04}-{:02}-{:02}",
        tomorrow.year(),
        u8::from(tomorrow.month()),
        tomorrow.day()
    );
    let later = browser
        .post("/audit/evenements", &[("csrf", &csrf), ("du", &day)], None)
        .await?;
    let later = browser.follow(later).await?;
    assert_eq!(rows(&later), 0, "{}", later.body);
    assert!(
        !later.body.contains("Inscriptions n° 0 à"),
        "{}",
        later.body
    );
    shows(&later, "Aucune inscription de cette période");

    // A period that ended before the log began: nothing is read through the entries since.
    let ended = browser
        .post(
            "/audit/evenements",
            &[("csrf", &csrf), ("au", "2020-01-31")],
            None,
        )
        .await?;
    let ended = browser.follow(ended).await?;
    assert_eq!(rows(&ended), 0, "{}", ended.body);
    shows(
        &ended,
        "Aucune inscription de cette période à partir du n° 0.",
    );
    assert!(
        !ended.body.contains("Inscriptions suivantes"),
        "{}",
        ended.body
    );

    // A start after the end: an error of the form, not an empty listing.
    let reversed = browser
        .post(
            "/audit/evenements",
            &[("csrf", &csrf), ("du", "2026-03-02"), ("au", "2026-03-01")],
            None,
        )
        .await?;
    assert_eq!(reversed.status, 400, "{}", reversed.body);
    shows(
        &reversed,
        "La date de début (« Du ») est après la date de fin (« Au »).",
    );
    shows(&reversed, "href=\"#du\"");

    // A value no list offers (not sent by the form): an error, and the filters in force stay.
    let bad = browser
        .post(
            "/audit/evenements",
            &[("csrf", &csrf), ("resultat", "x")],
            None,
        )
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("Choisissez une valeur de la liste.")
            && bad.body.contains("href=\"#resultat\""),
        "{}",
        bad.body
    );
    let still = browser.get("/audit/evenements").await?;
    assert_eq!(still.status, 200, "{}", still.body);

    // Every read is in the log, the person under her pseudonym only.
    let reads = browser
        .post(
            "/audit/evenements",
            &[("csrf", &csrf), ("genre", "audit_read")],
            None,
        )
        .await?;
    let reads = browser.follow(reads).await?;
    shows(&reads, "web:ListEvents");
    shows(&reads, "Claire Roux (controleur.1)");
    assert!(!reads.body.contains("alice"), "{}", reads.body);
    assert!(rows(&reads) >= 2, "{}", reads.body);

    // A page of another site that sends the auditor's browser to an export, an entry or the
    // events has nothing read, and nothing recorded in their name: the page offers to go on
    // from here, as the citizen's pages do, and says nothing of a missing security token.
    let recorded = rows(&reads);
    for path in [
        "/audit/export.csv",
        "/audit/export.json",
        "/audit/evenements",
        "/audit/evenements?debut=1",
        "/audit/dossier/0",
        "/audit/signalements",
    ] {
        let page = browser.get_from(path, "cross-site").await?;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        shows(&page, "Continuer vers votre espace");
        assert!(!page.body.contains("jeton"), "{path}: {}", page.body);
        assert!(
            page.links().contains(&path.to_string()),
            "{path}: {}",
            page.body
        );
    }
    let api = browser
        .get_from("/audit/api/inclusion?n=0", "same-site")
        .await?;
    assert_eq!(api.status, 403);
    let again = browser.get("/audit/evenements").await?;
    assert_eq!(rows(&again), recorded + 1, "only this listing was recorded");

    // Exports of the exchanges: CSV and JSON agree, with the entries' bytes.
    browser
        .post(
            "/audit/evenements",
            &[("csrf", &csrf), ("genre", "exchange")],
            None,
        )
        .await?;
    let csv = browser.get("/audit/export.csv").await?;
    assert_eq!(csv.status, 200);
    assert!(
        csv.headers
            .get("content-disposition")
            .is_some_and(|d| d.contains("attachment")),
        "{:?}",
        csv.headers
    );
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(
        lines[0].starts_with("index,time,kind,participant"),
        "{}",
        csv.body
    );
    assert_eq!(lines.len(), 3, "a header and two exchanges:\n{}", csv.body);
    let json = browser.get("/audit/export.json").await?;
    let export: serde_json::Value = serde_json::from_str(&json.body)?;
    assert_eq!(export["format"], "unefois-audit-export/v1");
    let exported = export["events"].as_array().context("no events")?;
    assert_eq!(exported.len(), 2);
    assert!(exported.iter().all(|e| e["kind"] == "exchange"));

    // A proof bundle of Alice's exchange: its checkpoint verifies with the log key, its entry
    // is included.
    let index = exported[0]["index"].as_u64().context("no index")?;
    let bundle = browser.get(&format!("/audit/dossier/{index}")).await?;
    assert_eq!(bundle.status, 200, "{}", bundle.body);
    let bundle: serde_json::Value = serde_json::from_str(&bundle.body)?;
    assert_eq!(bundle["format"], "unefois-proof-bundle/v1");
    let vkey = bundle["log_key"].as_str().context("no key")?;
    let checkpoint =
        unefois_tlog::verify_checkpoint(vkey, bundle["checkpoint"].as_str().context("note")?)?;
    let entry = &bundle["entries"][0];
    let bytes = B64.decode(entry["entry"].as_str().context("entry")?)?;
    assert_eq!(
        bytes,
        B64.decode(exported[0]["entry"].as_str().context("e")?)?
    );
    let proof: Vec<[u8; 32]> = entry["inclusion_proof"]
        .as_array()
        .context("proof")?
        .iter()
        .map(|h| {
            let v = B64.decode(h.as_str().unwrap_or_default())?;
            <[u8; 32]>::try_from(v.as_slice()).map_err(|_| anyhow::anyhow!("not a hash"))
        })
        .collect::<anyhow::Result<_>>()?;
    unefois_tlog::verify_inclusion(&proof, checkpoint.size, checkpoint.root, index, &bytes)?;
    // A bundle of an entry beyond the log: a page that says so, not the script's JSON.
    let beyond = browser.get("/audit/dossier/999999999").await?;
    assert_eq!(beyond.status, 404, "{}", beyond.body);
    assert!(
        beyond
            .body
            .contains("<title>Inscription introuvable — Une Fois</title>"),
        "{}",
        beyond.body
    );

    // The consistency API from an early tree to the latest.
    let api = browser.get("/audit/api/coherence?premier=1").await?;
    assert_eq!(api.status, 200, "{}", api.body);
    let out_of_range = browser.get("/audit/api/coherence?premier=0").await?;
    assert_eq!(out_of_range.status, 400);

    // The offline verifier: one HTML file, its scripts inline, downloaded.
    let verifier = browser.get("/audit/verificateur.html").await?;
    assert_eq!(verifier.status, 200);
    assert!(verifier.body.contains("const UnefoisProofs"));
    assert!(verifier.body.contains("unefois-proof-bundle/v1"));
    assert!(!verifier.body.contains("src=\""), "no script to fetch");

    // Without a console session, nothing of this.
    let mut stranger = Browser::new(web)?;
    for path in [
        "/audit/evenements",
        "/audit/export.csv",
        "/audit/signalements",
    ] {
        let page = stranger.get(path).await?;
        assert_eq!(page.location(), Some("/audit"), "{path}");
    }
    let api = stranger.get("/audit/api/inclusion?n=0").await?;
    assert_eq!(api.status, 403);
    for url in &browser.visited {
        assert!(!url.contains("alice"), "{url}");
    }
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_citizens_report_reaches_the_console_with_the_exchange_it_contests() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with_pages(pki.dir()).await?;
    grant_consent(&broker, "test:alice", QF, CANTINE).await?;
    exchange(&broker, LYON)
        .await?
        .fetch(fetch("test:alice", QF, CANTINE))
        .await?;
    let web = broker.web_addr.context("no web pages")?;
    let mut alice = Browser::new(web)?;
    let home = alice.log_in("test:alice").await?;
    let contest = home
        .links()
        .into_iter()
        .find(|l| l.starts_with("/citizen/contest/"))
        .context("no contest link")?;
    let entry = contest.trim_start_matches("/citizen/contest/").to_string();
    let form = alice.get(&contest).await?;
    let csrf = form.field("csrf").context("no CSRF token")?;
    let sent = alice
        .post(
            &contest,
            &[("csrf", &csrf), ("raison", "no_procedure")],
            None,
        )
        .await?;
    assert_eq!(sent.status, 303, "{}", sent.body);

    let mut auditor = Browser::new(web)?;
    auditor
        .log_in_staff("/audit/login", "agent-cnil", true)
        .await?;
    let reports = auditor.get("/audit/signalements").await?;
    assert_eq!(reports.status, 200, "{}", reports.body);
    assert_eq!(rows(&reports), 1, "{}", reports.body);
    shows(
        &reports,
        &format!("n° {entry} : Ville de Lyon : Quotient familial CAF"),
    );
    shows(
        &reports,
        "Je n&#39;ai fait aucune démarche auprès de cet organisme",
    );
    shows(&reports, "Espace usager Une Fois");
    broker.stop().await?;
    Ok(())
}

/// A proof the console's script asks for while the store cannot record the read is refused
/// as the store's failure (503), not as the auditor's mistake (400). Fails when every refused
/// read answers 400.
#[tokio::test(flavor = "multi_thread")]
async fn the_proof_api_says_when_the_store_is_unavailable() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let pki = TestPki::for_sample_registry()?;
    let fail = Arc::new(AtomicBool::new(false));
    let faults: broker::journal::FaultInjector = {
        let fail = fail.clone();
        Arc::new(move |point| {
            if point == broker::journal::FaultPoint::AfterWrite && fail.load(Ordering::SeqCst) {
                Err(std::io::Error::other("injected"))
            } else {
                Ok(())
            }
        })
    };
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            web: true,
            journal_faults: Some(faults),
            ..Default::default()
        },
    )
    .await?;
    let mut browser = Browser::new(broker.web_addr.context("no web pages")?)?;
    browser
        .log_in_staff("/audit/login", "agent-cnil", true)
        .await?;
    let api = browser.get("/audit/api/inclusion?n=0").await?;
    assert_eq!(api.status, 200, "{}", api.body);

    // The disk fails: the read cannot be recorded, so nothing is read.
    fail.store(true, Ordering::SeqCst);
    let api = browser.get("/audit/api/inclusion?n=0").await?;
    assert_eq!(api.status, 503, "{}", api.body);
    assert!(api.body.contains("STORE_UNAVAILABLE"), "{}", api.body);
    let page = browser.get("/audit/dossier/0").await?;
    assert_eq!(page.status, 503, "{}", page.body);

    fail.store(false, Ordering::SeqCst);
    let api = browser.get("/audit/api/inclusion?n=0").await?;
    assert_eq!(api.status, 200, "{}", api.body);
    broker.stop().await?;
    Ok(())
}

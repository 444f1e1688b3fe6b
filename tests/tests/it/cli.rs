//! The `unefois` binary as a person uses it: the README's run command from a fresh checkout,
//! the PKI commands, and a clear refusal of a bad registry.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unefois_tests::{install_crypto, repo_root, unefois_binary};

/// A copy of what a fresh clone has that the broker reads: the examples folder.
fn fresh_checkout() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    unefois_tests::copy_dir(&repo_root().join("examples"), &dir.path().join("examples"))?;
    Ok(dir)
}

struct Served {
    child: Child,
    addr: SocketAddr,
}

/// A failing test never leaves a broker running.
impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `unefois serve` with the README's defaults, except ephemeral ports, and reads the
/// addresses it prints.
fn serve(cwd: &Path) -> anyhow::Result<Served> {
    let mut child = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (addr, _) = unefois_tests::served_addresses(stdout)?;
    Ok(Served { child, addr })
}

async fn terminate(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("the broker did not stop within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_run_command_works_from_a_fresh_checkout() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let mut served = serve(checkout.path())?;
    let pki = checkout.path().join(".unefois-dev/pki");
    for file in [
        "ca.crt",
        "broker.crt",
        "crl.pem",
        "mairie-lyon.crt",
        "cnil.key",
    ] {
        assert!(pki.join(file).is_file(), "{file} created on first run");
    }
    assert!(
        pki.join("agents/france-services-lyon/a.martin.crt")
            .is_file()
    );

    let mut status = None;
    for _ in 0..100 {
        if let Ok(channel) =
            broker::client::connect(&pki, "mairie-lyon", &served.addr.to_string()).await
        {
            let answer = HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if let Ok(answer) = answer {
                status = Some(answer.into_inner().status());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(ServingStatus::Serving));

    // The command the broker suggests works and shows the caller's habilitations.
    let shown = Command::new(unefois_binary()?)
        .current_dir(checkout.path())
        .args([
            "registry",
            "show",
            "--addr",
            &served.addr.to_string(),
            "--as",
            "mairie-lyon",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    assert!(
        text.contains("habilitation mairie-lyon.dgfip.revenu_fiscal_reference"),
        "{text}"
    );
    assert!(text.contains("law: Code des relations"), "{text}");

    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "SIGTERM ends the broker cleanly: {exit}");
    Ok(())
}

#[test]
fn a_bad_registry_stops_serve_with_the_file_and_key() -> anyhow::Result<()> {
    let checkout = fresh_checkout()?;
    let registry = checkout.path().join("examples/registry.toml");
    let text = std::fs::read_to_string(&registry)?;
    std::fs::write(
        &registry,
        text.replacen("expires = 2028-12-31", "expires = \"2028-12-31\"", 1),
    )?;
    let out = Command::new(unefois_binary()?)
        .current_dir(checkout.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("examples/registry.toml"), "{stderr}");
    assert!(stderr.contains("habilitations[0].expires"), "{stderr}");
    Ok(())
}

/// A store URL with a password goes in the environment (`UNEFOIS_STORE`), which other users of
/// the host cannot read, unlike the command line: `serve` uses it, and neither its help nor its
/// errors show the password.
#[test]
fn a_store_url_from_the_environment_is_used_and_its_password_never_shown() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let home = home
        .path()
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("a UTF-8 path"))?;
    let url = "postgresql://unefois:s3cret-pw@127.0.0.1:1/unefois";
    let run = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = Command::new(unefois_binary()?)
            .current_dir(repo_root())
            .env("UNEFOIS_STORE", url)
            .args(args)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    };
    let (_, help) = run(&["serve", "--help"])?;
    assert!(help.contains("UNEFOIS_STORE"), "{help}");
    assert!(!help.contains("s3cret-pw"), "{help}");
    let (_, help) = run(&["store", "init", "--help"])?;
    assert!(!help.contains("s3cret-pw"), "{help}");

    // Nothing listens on port 1: the broker tried the database, not its embedded store.
    let (served, said) = run(&[
        "serve",
        "--dev",
        "--home",
        home,
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--web-listen",
        "127.0.0.1:0",
    ])?;
    assert!(!served, "{said}");
    assert!(said.contains("store: database: connect"), "{said}");
    // The operator is told which database, without its password.
    assert!(
        said.contains("(postgresql://unefois@127.0.0.1:1/unefois)"),
        "{said}"
    );
    assert!(!said.contains("s3cret-pw"), "{said}");
    Ok(())
}

#[test]
fn the_certs_commands_build_a_pki_with_private_keys_kept_private() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(unefois_binary()?).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let pki_arg = pki.to_string_lossy().into_owned();
    run(&[
        "certs",
        "init",
        "--dir",
        &pki_arg,
        "--trust-domain",
        "unefois.test",
        "--participants",
        "caf,dgfip,france-services-lyon",
    ])?;
    for name in ["ca", "broker", "caf", "dgfip", "france-services-lyon"] {
        assert!(pki.join(format!("{name}.crt")).is_file(), "{name}.crt");
        let mode = std::fs::metadata(pki.join(format!("{name}.key")))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key is private");
    }
    let out = run(&[
        "certs",
        "issue-agent",
        "--dir",
        &pki_arg,
        "--participant",
        "france-services-lyon",
        "--agent",
        "a.martin",
    ])?;
    assert!(
        out.contains("spiffe://unefois.test/participant/france-services-lyon/agent/a.martin"),
        "{out}"
    );

    let before = unefois_certs::crl_info(&unefois_certs::load_crls(&pki.join("crl.pem"))?[0])?;
    assert!(before.revoked_serials.is_empty());
    run(&["certs", "revoke", "--dir", &pki_arg, "caf"])?;
    let after = unefois_certs::crl_info(&unefois_certs::load_crls(&pki.join("crl.pem"))?[0])?;
    let caf = unefois_certs::peer_certificate(
        &unefois_certs::load_certificates(&pki.join("caf.crt"))?[0],
    )?;
    assert_eq!(after.revoked_serials, vec![caf.serial]);

    // Revoking a mediation structure revokes its agents, and says so.
    let out = run(&["certs", "revoke", "--dir", &pki_arg, "france-services-lyon"])?;
    assert!(
        out.contains("france-services-lyon revoked")
            && out.contains("france-services-lyon/a.martin revoked")
            && out.contains("an agent of france-services-lyon"),
        "{out}"
    );
    let crl = unefois_certs::crl_info(&unefois_certs::load_crls(&pki.join("crl.pem"))?[0])?;
    let agent = unefois_certs::peer_certificate(
        &unefois_certs::load_certificates(&pki.join("agents/france-services-lyon/a.martin.crt"))?
            [0],
    )?;
    assert!(
        crl.revoked_serials.contains(&agent.serial),
        "the agent is in the CRL"
    );
    Ok(())
}

/// Runs the `unefois` client in `cwd` (so that the default `--home .unefois-dev` is the one the
/// broker created) against the broker at `addr`.
fn unefois_client(cwd: &Path, addr: SocketAddr, args: &[&str]) -> anyhow::Result<Outcome> {
    let out = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args(args)
        .args(["--addr", &addr.to_string()])
        .output()?;
    Ok(Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[derive(Debug)]
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Waits until the broker answers health checks (it has then written its verifier key).
async fn wait_serving(pki: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok(channel) = broker::client::connect(pki, "mairie-lyon", &addr.to_string()).await
            && let Ok(answer) = HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
            && answer.into_inner().status() == ServingStatus::Serving
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the broker never served")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_grants_fetches_and_revokes() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    let pki = cwd.join(".unefois-dev/pki");
    wait_serving(&pki, addr).await?;

    // The citizen's identity evidence, minted by the development identity provider.
    let minted = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args([
            "dev",
            "id-token",
            "--subject",
            "test:alice",
            "--aud",
            "mairie-lyon",
        ])
        .output()?;
    assert!(minted.status.success(), "{minted:?}");
    let id_token = String::from_utf8(minted.stdout)?.trim().to_string();
    // Without it, the grant is refused.
    let bare = [
        "consent",
        "grant",
        "--as",
        "mairie-lyon",
        "--subject",
        "test:alice",
        "--consumer",
        "mairie-lyon",
        "--type",
        "caf.quotient_familial",
        "--purpose",
        "tarification_cantine",
        "--id-token",
        "",
    ];
    let refused = unefois_client(cwd, addr, &bare)?;
    assert!(!refused.ok, "{refused:?}");
    let mut with_token = bare.to_vec();
    with_token.pop();
    with_token.push(&id_token);
    let granted = unefois_client(cwd, addr, &with_token)?;
    assert!(granted.ok, "{granted:?}");
    let first = granted.stdout.lines().next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{first}");
    assert_eq!((words[0], words[2]), ("consent", "ACTIVE"), "{first}");
    let consent_id = words[1].to_string();
    assert!(
        granted.stdout.contains("tarification_cantine"),
        "{granted:?}"
    );
    // Granted again for the same scope: the same consent, renewed (one consent per scope).
    let again = unefois_client(cwd, addr, &with_token)?;
    assert!(again.ok, "{again:?}");
    assert!(
        again
            .stdout
            .starts_with(&format!("consent {consent_id} ACTIVE")),
        "{again:?}"
    );
    assert!(again.stdout.contains("renewed:"), "{again:?}");

    let fetch_caf = [
        "fetch",
        "--as",
        "mairie-lyon",
        "--subject",
        "test:alice",
        "--type",
        "caf.quotient_familial",
        "--purpose",
        "tarification_cantine",
    ];
    let fetched = unefois_client(cwd, addr, &fetch_caf)?;
    assert!(fetched.ok, "{fetched:?}");
    assert!(
        fetched.stdout.contains("\"quotient_familial\": 612"),
        "{fetched:?}"
    );
    assert!(fetched.stdout.contains("signature: valid"), "{fetched:?}");

    let fetch_law = [
        "fetch",
        "--as",
        "mairie-lyon",
        "--subject",
        "test:alice",
        "--type",
        "dgfip.revenu_fiscal_reference",
        "--purpose",
        "tarification_cantine",
    ];
    let under_law = unefois_client(cwd, addr, &fetch_law)?;
    assert!(under_law.ok, "{under_law:?}");
    assert!(
        under_law
            .stdout
            .contains("\"revenu_fiscal_reference\": 23870"),
        "{under_law:?}"
    );
    assert!(
        under_law.stdout.contains("signature: valid"),
        "{under_law:?}"
    );

    let listed = unefois_client(
        cwd,
        addr,
        &[
            "consent",
            "list",
            "--as",
            "mairie-lyon",
            "--subject",
            "test:alice",
        ],
    )?;
    assert!(listed.ok, "{listed:?}");
    assert!(
        listed.stdout.lines().any(|l| l.starts_with(&format!(
            "{consent_id} ACTIVE mairie-lyon caf.quotient_familial tarification_cantine until "
        ))),
        "{listed:?}"
    );

    let revoked = unefois_client(
        cwd,
        addr,
        &["consent", "revoke", "--as", "mairie-lyon", &consent_id],
    )?;
    assert!(revoked.ok, "{revoked:?}");
    assert_eq!(
        revoked.stdout.trim(),
        format!("consent {consent_id} REVOKED\n  ended: 1 consent(s) in force of this scope")
    );

    let after = unefois_client(cwd, addr, &fetch_caf)?;
    assert!(!after.ok, "{after:?}");
    assert!(
        after
            .stderr
            .contains("error: FAILED_PRECONDITION: CONSENT_REVOKED: "),
        "{after:?}"
    );
    assert!(!after.stdout.contains("612"), "{after:?}");

    let mut as_test = fetch_law;
    as_test[2] = "mairie-test";
    let denied = unefois_client(cwd, addr, &as_test)?;
    assert!(!denied.ok, "{denied:?}");
    assert!(denied.stderr.contains("NO_HABILITATION"), "{denied:?}");

    // Another valid key in place of the published one: nothing verifies any more.
    let other = broker::signing::AttestationSigner::from_seed(&[9; 32], "unefois.test").unwrap();
    std::fs::write(pki.join("attestation.vkey"), format!("{}\n", other.vkey()))?;
    let forged = unefois_client(cwd, addr, &fetch_law)?;
    assert!(!forged.ok, "{forged:?}");
    assert!(forged.stderr.contains("does not verify"), "{forged:?}");
    assert!(!forged.stdout.contains("signature: valid"), "{forged:?}");

    // Without the key file, fetch refuses before asking the broker anything.
    std::fs::remove_file(pki.join("attestation.vkey"))?;
    let keyless = unefois_client(cwd, addr, &fetch_law)?;
    assert!(!keyless.ok, "{keyless:?}");
    assert!(keyless.stderr.contains("attestation.vkey"), "{keyless:?}");

    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "SIGTERM ends the broker cleanly: {exit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auditor_verifies_follows_and_exports_the_log() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let mut served = serve(checkout.path())?;
    let addr = served.addr.to_string();
    let run = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut full = args.to_vec();
        full.extend(["--addr", &addr]);
        Ok(Command::new(unefois_binary()?)
            .current_dir(checkout.path())
            .args(&full)
            .output()?)
    };
    let fetched = run(&[
        "fetch",
        "--as",
        "mairie-lyon",
        "--subject",
        "test:alice",
        "--type",
        "dgfip.revenu_fiscal_reference",
        "--purpose",
        "tarification_cantine",
    ])?;
    assert!(fetched.status.success(), "{fetched:?}");

    let first = run(&["audit", "verify", "--as", "cnil"])?;
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{text} {first:?}");
    assert!(text.contains("first run"), "{text}");
    let second = run(&["audit", "verify", "--as", "cnil"])?;
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{text}");
    assert!(
        text.contains("consistent with the trusted checkpoint"),
        "{text}"
    );
    // A participant that is not an auditor cannot download the log.
    let refused = run(&["audit", "verify", "--as", "mairie-lyon"])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("WRONG_ROLE"));

    let tail = run(&["audit", "tail", "--as", "cnil"])?;
    let text = String::from_utf8_lossy(&tail.stdout);
    assert!(
        text.contains("granted dgfip.revenu_fiscal_reference mairie-lyon"),
        "{text}"
    );

    let export = run(&["audit", "export", "--as", "cnil"])?;
    assert!(export.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(export.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(lines.len() >= 4, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i as u64);
        assert_eq!(line["entry"]["v"], broker::event::RECORD_VERSION);
    }
    assert!(
        !lines.iter().any(|l| l.to_string().contains("alice")),
        "no subject id in the export"
    );
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_see_the_providers_status() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let mut served = serve(checkout.path())?;
    let addr = served.addr.to_string();
    let status = |who: &str| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(unefois_binary()?)
            .current_dir(checkout.path())
            .args(["providers", "status", "--as", who, "--addr", &addr])
            .output()?)
    };
    let out = status("dinum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for ty in [
        "caf.quotient_familial",
        "dgfip.revenu_fiscal_reference",
        "mesr.statut_etudiant",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(ty))
            .unwrap_or_else(|| panic!("{ty} missing: {text}"));
        assert!(
            line.contains("static") && line.contains("yes") && line.contains("closed"),
            "{line}"
        );
    }
    let refused = status("mairie-lyon")?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("WRONG_ROLE"));
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success());
    Ok(())
}

fn dev_id_token(cwd: &Path, subject: &str, aud: &str) -> anyhow::Result<String> {
    let minted = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args(["dev", "id-token", "--subject", subject, "--aud", aud])
        .output()?;
    anyhow::ensure!(minted.status.success(), "{minted:?}");
    Ok(String::from_utf8(minted.stdout)?.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mediator_takes_a_mandate_and_prefills_a_form_with_a_preview() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    wait_serving(&cwd.join(".unefois-dev/pki"), addr).await?;
    let agent = "france-services-lyon/a.martin";

    // The guichet's pre-fill, Alice logged in there: each field with its source, or the
    // reason to ask for it.
    let at_lyon = dev_id_token(cwd, "test:alice", "mairie-lyon")?;
    let filled = unefois_client(
        cwd,
        addr,
        &[
            "prefill",
            "--as",
            "mairie-lyon",
            "--subject",
            "test:alice",
            "--form",
            "inscription_cantine",
            "--id-token",
            &at_lyon,
        ],
    )?;
    assert!(filled.ok, "{filled:?}");
    let line = |out: &str, field: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(field))
            .unwrap_or_default()
            .to_string()
    };
    let rfr = line(&filled.stdout, "revenu_fiscal_reference");
    assert!(
        rfr.contains("23870") && rfr.contains("from dgfip") && rfr.contains("attestation "),
        "{filled:?}"
    );
    // Quotient familial needs Alice's consent, which she has not given: to ask, with why.
    assert!(
        line(&filled.stdout, "quotient_familial").contains("to ask: NO_CONSENT"),
        "{filled:?}"
    );

    // The mandate, Alice present at the France Services desk.
    let document = cwd.join("mandat.pdf");
    std::fs::write(&document, b"%PDF mandat signe")?;
    let token = dev_id_token(cwd, "test:alice", "france-services-lyon")?;
    let created = unefois_client(
        cwd,
        addr,
        &[
            "mandate",
            "create",
            "--as",
            agent,
            "--subject",
            "test:alice",
            "--purpose",
            "aide_energie",
            "--days",
            "31",
            "--document",
            &document.to_string_lossy(),
            "--id-token",
            &token,
        ],
    )?;
    assert!(created.ok, "{created:?}");
    let first = created
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let words: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(
        (words.first(), words.get(2)),
        (Some(&"mandate"), Some(&"ACTIVE"))
    );
    let mandate_id = words.get(1).copied().unwrap_or_default().to_string();
    assert!(created.stdout.contains("a.martin"), "{created:?}");

    let listed = unefois_client(cwd, addr, &["mandate", "list", "--as", agent])?;
    assert!(listed.ok, "{listed:?}");
    assert!(
        listed.stdout.starts_with(&format!(
            "{mandate_id} ACTIVE france-services-lyon agent a.martin for aide_energie until "
        )),
        "{listed:?}"
    );

    // A preview under the mandate: values shown, nothing issued; then confirmed.
    let previewed = unefois_client(
        cwd,
        addr,
        &[
            "prefill",
            "--as",
            agent,
            "--subject",
            "test:alice",
            "--form",
            "aide_energie",
            "--mandate",
            &mandate_id,
            "--preview",
        ],
    )?;
    assert!(previewed.ok, "{previewed:?}");
    let preview_line = line(&previewed.stdout, "preview ");
    let prefill_id = preview_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(!prefill_id.is_empty(), "{previewed:?}");
    assert!(
        line(&previewed.stdout, "revenu_fiscal_reference").contains("preview, not issued"),
        "{previewed:?}"
    );
    // The preview prints its confirmation as a command that runs as it is.
    let hint = previewed
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("preview "))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        hint.contains(" confirm --as france-services-lyon/a.martin ")
            && hint.contains(&format!("--mandate {mandate_id}"))
            && hint.ends_with(&format!("--prefill-id {prefill_id}")),
        "{previewed:?}"
    );
    let ran = Command::new("sh")
        .arg("-c")
        .arg(&hint)
        .current_dir(cwd)
        .output()?;
    let confirmed = Outcome {
        ok: ran.status.success(),
        stdout: String::from_utf8_lossy(&ran.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&ran.stderr).into_owned(),
    };
    assert!(confirmed.ok, "{hint}: {confirmed:?}");
    assert!(
        confirmed.stdout.contains(&format!(
            "preview {prefill_id} confirmed: 1 attestation(s) issued"
        )),
        "{confirmed:?}"
    );

    // Revoked: the next pre-fill under it is refused with the reason.
    let revoked = unefois_client(
        cwd,
        addr,
        &["mandate", "revoke", "--as", agent, &mandate_id],
    )?;
    assert!(
        revoked.ok && revoked.stdout.contains("REVOKED"),
        "{revoked:?}"
    );
    let refused = unefois_client(
        cwd,
        addr,
        &[
            "prefill",
            "--as",
            agent,
            "--subject",
            "test:alice",
            "--form",
            "aide_energie",
            "--mandate",
            &mandate_id,
        ],
    )?;
    assert!(!refused.ok, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("FAILED_PRECONDITION: MANDATE_REVOKED"),
        "{refused:?}"
    );
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "{exit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_registry_of_a_running_broker() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    wait_serving(&cwd.join(".unefois-dev/pki"), addr).await?;
    let show = ["registry", "show", "--as", "mairie-test"];
    let before = unefois_client(cwd, addr, &show)?;
    assert!(before.ok, "{before:?}");
    assert!(!before.stdout.contains("mairie-test.dgfip"), "{before:?}");

    let registry = cwd.join("examples/registry.toml");
    let mut text = std::fs::read_to_string(&registry)?;
    text.push_str(
        "\n[[habilitations]]\nid = \"mairie-test.dgfip\"\nconsumer = \"mairie-test\"\n\
         attestation_type = \"dgfip.revenu_fiscal_reference\"\npurposes = [\"tarification_cantine\"]\n\
         claims = [\"revenu_fiscal_reference\"]\nlegal_basis = { law = \"CRPA, art. L. 114-8\" }\n\
         expires = 2028-12-31\n",
    );
    std::fs::write(&registry, text)?;
    let hup = Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()?;
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = unefois_client(cwd, addr, &show)?;
        if after.stdout.contains("mairie-test.dgfip") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the reload never showed: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "{exit}");
    Ok(())
}

/// What a person meets at the command line when something is off: a second broker on the same
/// home is refused by name before it says anything, an unknown `--as` lists who has a
/// certificate, a structure's certificate where an agent's is needed says so, an error's code
/// is said once; and the registry's forms, types and purposes can be listed.
#[tokio::test(flavor = "multi_thread")]
async fn clear_errors_and_a_discoverable_registry() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    let pki = cwd.join(".unefois-dev/pki");
    wait_serving(&pki, addr).await?;

    // A second broker on the same home: refused by name, nothing printed before.
    let second = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .output()?;
    assert!(!second.status.success(), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "another broker is using .unefois-dev (pid {})",
            served.child.id()
        )),
        "{stderr}"
    );
    assert!(second.stdout.is_empty(), "{second:?}");

    // An unknown participant: who has a certificate here.
    let unknown = unefois_client(cwd, addr, &["registry", "show", "--as", "mairie-lyom"])?;
    assert!(!unknown.ok, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("no certificate for \"mairie-lyom\""),
        "{unknown:?}"
    );
    assert!(
        unknown.stderr.contains("mairie-lyon")
            && unknown.stderr.contains("france-services-lyon/a.martin"),
        "{unknown:?}"
    );

    // The registry's declarations.
    let listed = unefois_client(
        cwd,
        addr,
        &[
            "registry",
            "show",
            "--as",
            "mairie-lyon",
            "--forms",
            "--types",
            "--purposes",
        ],
    )?;
    assert!(listed.ok, "{listed:?}");
    for needle in [
        "form inscription_cantine: Inscription à la restauration scolaire (purpose tarification_cantine)",
        "  quotient_familial (required) <- caf.quotient_familial.quotient_familial",
        "attestation type caf.quotient_familial v1 from caf (static)",
        "purpose tarification_cantine: ",
    ] {
        assert!(listed.stdout.contains(needle), "{needle}: {listed:?}");
    }

    // A mandate taken with the structure's own certificate.
    std::fs::write(cwd.join("mandat.pdf"), b"mandat signe")?;
    let token = dev_id_token(cwd, "test:alice", "france-services-lyon")?;
    let by_structure = unefois_client(
        cwd,
        addr,
        &[
            "mandate",
            "create",
            "--as",
            "france-services-lyon",
            "--subject",
            "test:alice",
            "--purpose",
            "aide_energie",
            "--days",
            "31",
            "--document",
            "mandat.pdf",
            "--id-token",
            &token,
        ],
    )?;
    assert!(!by_structure.ok, "{by_structure:?}");
    assert!(
        by_structure.stderr.contains("NOT_AGENT_OF_STRUCTURE")
            && by_structure.stderr.contains("agent's certificate")
            && !by_structure.stderr.contains("(new)"),
        "{by_structure:?}"
    );

    // An invalid argument: its code once.
    let invalid = unefois_client(
        cwd,
        addr,
        &[
            "fetch",
            "--as",
            "mairie-lyon",
            "--subject",
            "alice",
            "--type",
            "caf.quotient_familial",
            "--purpose",
            "tarification_cantine",
        ],
    )?;
    assert!(!invalid.ok, "{invalid:?}");
    assert!(
        invalid.stderr.contains("error: INVALID_ARGUMENT: ")
            && !invalid
                .stderr
                .contains("INVALID_ARGUMENT: INVALID_ARGUMENT"),
        "{invalid:?}"
    );

    // A development ID token of a chosen lifetime.
    let minted = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args([
            "dev",
            "id-token",
            "--subject",
            "test:alice",
            "--aud",
            "mairie-lyon",
            "--ttl",
            "60",
        ])
        .output()?;
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout)?;
    let claims = token
        .trim()
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWT: {token}"))?;
    use base64::Engine as _;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims)?)?;
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|t| t + 60)
    );

    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "SIGTERM ends the broker cleanly: {exit}");
    Ok(())
}

/// Runs the client against `addr` and fails with its output when it fails.
fn unefois_ok(cwd: &Path, addr: SocketAddr, args: &[&str]) -> anyhow::Result<Outcome> {
    let out = unefois_client(cwd, addr, args)?;
    anyhow::ensure!(out.ok, "{args:?}: {out:?}");
    Ok(out)
}

/// Runs `unefois` offline in `cwd` (no `--addr`: nothing of the broker is asked).
fn unefois_offline(cwd: &Path, args: &[&str]) -> anyhow::Result<Outcome> {
    let out = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args(args)
        .output()?;
    Ok(Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `fetch --as mairie-lyon` of Alice's reference tax income (under the law), with `extra`.
fn fetch_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "fetch",
        "--as",
        "mairie-lyon",
        "--subject",
        "test:alice",
        "--type",
        "dgfip.revenu_fiscal_reference",
        "--purpose",
        "tarification_cantine",
    ];
    args.extend_from_slice(extra);
    args
}

/// The file at `path`, as JSON.
fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// The base64 string at `value`, its bytes changed by `edit`.
fn edit_base64(value: &mut serde_json::Value, edit: impl Fn(&mut Vec<u8>)) -> anyhow::Result<()> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let text = value
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("not a string: {value}"))?;
    let mut bytes = engine.decode(text)?;
    edit(&mut bytes);
    *value = serde_json::Value::String(engine.encode(bytes));
    Ok(())
}

/// Writes `value` to `dir/name` and runs `unefois verify` on it with `extra`; it must fail,
/// naming `check`, after printing only the checks before it.
fn verify_fails(
    dir: &Path,
    name: &str,
    value: &serde_json::Value,
    extra: &[&str],
    check: &str,
) -> anyhow::Result<Outcome> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["verify", path.as_str()];
    args.extend_from_slice(extra);
    let out = unefois_offline(dir, &args)?;
    assert!(!out.ok, "{name} verified: {out:?}");
    assert!(
        out.stderr.contains(&format!("{check}: FAILED")),
        "{name}: {out:?}"
    );
    assert!(
        !out.stdout.contains(&format!("{check}: ")),
        "{name}: the failed check is not printed as passed: {out:?}"
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_receipt_verifies_offline_and_each_tampering_names_its_check() -> anyhow::Result<()>
{
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    wait_serving(&cwd.join(".unefois-dev/pki"), addr).await?;

    let fetched = unefois_ok(cwd, addr, &fetch_args(&["--out", "receipt.json"]))?;
    assert!(
        fetched.stdout.contains("signature: valid")
            && fetched.stdout.contains("receipt saved in receipt.json"),
        "{fetched:?}"
    );
    // Claim values: the user's alone, whatever the umask (a file there before narrowed too).
    std::fs::write(cwd.join("other.json"), "{}")?;
    unefois_ok(cwd, addr, &fetch_args(&["--out", "other.json"]))?;
    for saved in ["receipt.json", "other.json"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(cwd.join(saved))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{saved}: {mode:o}");
    }
    // What is not a file is written to as it is, its mode untouched (here as root, a chmod of
    // /dev/null would succeed, and break every other program).
    unefois_ok(cwd, addr, &fetch_args(&["--out", "/dev/null"]))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata("/dev/null")?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o666, "/dev/null: {mode:o}");
    }
    // A link is written through, not replaced by a file (as /dev/stdout, a link, would be
    // were its target a file: `--out /dev/stdout > r.json`).
    std::os::unix::fs::symlink("other.json", cwd.join("latest.json"))?;
    unefois_ok(cwd, addr, &fetch_args(&["--out", "latest.json"]))?;
    assert!(
        std::fs::symlink_metadata(cwd.join("latest.json"))?.is_symlink(),
        "the link was replaced"
    );
    assert_eq!(
        std::fs::read(cwd.join("latest.json"))?,
        std::fs::read(cwd.join("other.json"))?
    );
    // A later checkpoint, with the proof that the log only grew since the receipt's.
    let later = unefois_ok(
        cwd,
        addr,
        &[
            "audit",
            "checkpoint",
            "--as",
            "mairie-lyon",
            "--for",
            "receipt.json",
            "--out",
            "later.json",
        ],
    )?;
    assert!(
        later.stdout.contains("with 1 consistency proof(s)"),
        "{later:?}"
    );
    // Everything from here on is offline: the broker is gone.
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "{exit}");

    let receipt = read_json(&cwd.join("receipt.json"))?;
    assert_eq!(receipt["format"], "unefois-receipt/v1");
    let leaf = receipt["receipt"]["leaf_index"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no leaf index"))?;
    let verified = unefois_offline(cwd, &["verify", "receipt.json"])?;
    assert!(verified.ok, "{verified:?}");
    let lines: Vec<&str> = verified.stdout.lines().collect();
    assert!(
        lines[0].starts_with("attestation signature: valid (unefois.test/unefois/attestation+"),
        "{verified:?}"
    );
    assert!(
        lines[1].starts_with("checkpoint signature: valid (unefois.test/unefois/audit, size "),
        "{verified:?}"
    );
    assert!(
        lines[2].starts_with(&format!("inclusion proof: valid (leaf {leaf} of ")),
        "{verified:?}"
    );
    assert!(
        lines[3].starts_with("payload hash: matches (attestation "),
        "{verified:?}"
    );
    assert_eq!(lines[4], "receipt.json: verified offline");

    let consistent = unefois_offline(
        cwd,
        &["verify", "receipt.json", "--checkpoint", "later.json"],
    )?;
    assert!(consistent.ok, "{consistent:?}");
    assert!(
        consistent
            .stdout
            .contains("later checkpoint signature: valid (unefois.test/unefois/audit, size ")
            && consistent
                .stdout
                .contains("consistency: valid (the checkpoint of "),
        "{consistent:?}"
    );

    let dir = cwd;
    let mut payload = receipt.clone();
    edit_base64(&mut payload["envelope"]["payload"], |b| b[10] ^= 1)?;
    verify_fails(dir, "payload.json", &payload, &[], "attestation signature")?;

    let mut entry = receipt.clone();
    edit_base64(&mut entry["receipt"]["entry"], |b| b[20] ^= 1)?;
    let out = verify_fails(dir, "entry.json", &entry, &[], "inclusion proof")?;
    assert!(
        out.stdout.contains("checkpoint signature: valid"),
        "{out:?}"
    );

    let mut proof = receipt.clone();
    edit_base64(&mut proof["receipt"]["inclusion_proof"][0], |b| b[0] ^= 1)?;
    verify_fails(dir, "proof.json", &proof, &[], "inclusion proof")?;

    // The root's first base64 character, changed: the signature no longer covers the note.
    let mut checkpoint = receipt.clone();
    let note = checkpoint["receipt"]["checkpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut note_lines: Vec<String> = note.split('\n').map(str::to_string).collect();
    let root = &mut note_lines[2];
    let first = if root.starts_with('A') { "B" } else { "A" };
    root.replace_range(0..1, first);
    checkpoint["receipt"]["checkpoint"] = serde_json::Value::String(note_lines.join("\n"));
    verify_fails(
        dir,
        "checkpoint.json",
        &checkpoint,
        &[],
        "checkpoint signature",
    )?;

    // Another attestation (validly signed) under this receipt: the entry is not about it.
    let other = read_json(&cwd.join("other.json"))?;
    let mut swapped = receipt.clone();
    swapped["envelope"] = other["envelope"].clone();
    let out = verify_fails(dir, "swapped.json", &swapped, &[], "payload hash")?;
    assert!(out.stdout.contains("inclusion proof: valid"), "{out:?}");

    // A later checkpoint whose consistency proof was altered: the log could have forked.
    let mut forked = read_json(&cwd.join("later.json"))?;
    edit_base64(&mut forked["consistency"][0]["proof"][0], |b| b[0] ^= 1)?;
    std::fs::write(cwd.join("forked.json"), serde_json::to_vec(&forked)?)?;
    let out = verify_fails(
        dir,
        "receipt-again.json",
        &receipt,
        &["--checkpoint", "forked.json"],
        "consistency",
    )?;
    assert!(out.stderr.contains("a fork"), "{out:?}");

    // The key checked against is the one given, never one in the file.
    let signer = broker::signing::AttestationSigner::from_seed(&[9; 32], "unefois.test")?;
    std::fs::write(cwd.join("other.vkey"), signer.vkey())?;
    verify_fails(
        dir,
        "receipt-other-key.json",
        &receipt,
        &["--attestation-key", "other.vkey"],
        "attestation signature",
    )?;
    Ok(())
}

/// `accesses` of test:alice as mairie-lyon, with her development ID token, saved in
/// `history.json`.
fn save_alices_history(cwd: &Path, addr: SocketAddr) -> anyhow::Result<Outcome> {
    let token = dev_id_token(cwd, "test:alice", "mairie-lyon")?;
    unefois_ok(
        cwd,
        addr,
        &[
            "accesses",
            "--as",
            "mairie-lyon",
            "--subject",
            "test:alice",
            "--id-token",
            &token,
            "--out",
            "history.json",
        ],
    )
}

/// A history longer than a page: each page's read is recorded before it is read, so the pages'
/// checkpoints differ, and the file carries the proofs that they are of one log: it verifies
/// offline on its own (without them it would end NOT CHECKED).
#[tokio::test(flavor = "multi_thread")]
async fn a_history_of_several_pages_verifies_offline_on_its_own() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    wait_serving(&cwd.join(".unefois-dev/pki"), addr).await?;
    for _ in 0..51 {
        unefois_ok(cwd, addr, &fetch_args(&[]))?;
    }
    save_alices_history(cwd, addr)?;
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "{exit}");
    let history = read_json(&cwd.join("history.json"))?;
    let pages = history["pages"].as_array().map_or(0, Vec::len);
    assert!(pages >= 2, "{pages} page(s)");
    assert!(
        history["one_log"]["consistency"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{}",
        history["one_log"]
    );
    let verified = unefois_offline(cwd, &["verify", "history.json"])?;
    assert!(verified.ok, "{verified:?}");
    assert!(
        verified.stdout.contains("consistency: "),
        "{}",
        verified.stdout
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_citizens_access_history_verifies_offline() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    wait_serving(&cwd.join(".unefois-dev/pki"), addr).await?;
    unefois_ok(cwd, addr, &fetch_args(&[]))?;

    let listed = save_alices_history(cwd, addr)?;
    let line = listed.stdout.lines().next().unwrap_or_default();
    let (time, rest) = line.split_once(' ').unwrap_or_default();
    assert!(
        rest.starts_with(
            "mairie-lyon dgfip.revenu_fiscal_reference tarification_cantine granted (leaf "
        ),
        "{listed:?}"
    );
    assert_rfc3339_seconds(time)?;
    // The log grows; the history's checkpoint is then tied to a later one.
    unefois_ok(cwd, addr, &fetch_args(&[]))?;
    unefois_ok(
        cwd,
        addr,
        &[
            "audit",
            "checkpoint",
            "--as",
            "mairie-lyon",
            "--for",
            "history.json",
            "--out",
            "later.json",
        ],
    )?;
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "{exit}");

    let history = read_json(&cwd.join("history.json"))?;
    assert_eq!(history["format"], "unefois-accesses/v1");
    let leaf = history["pages"][0]["accesses"][0]["leaf_index"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no access"))?;
    let verified = unefois_offline(
        cwd,
        &["verify", "history.json", "--checkpoint", "later.json"],
    )?;
    assert!(verified.ok, "{verified:?}");
    for expected in [
        "checkpoint signature: valid (unefois.test/unefois/audit, size ".to_string(),
        format!("leaf {leaf}: inclusion proof: valid (leaf {leaf} of "),
        format!(
            "leaf {leaf}: access entry: matches the access shown ({time} mairie-lyon dgfip.revenu_fiscal_reference tarification_cantine granted)"
        ),
        "consistency: valid".to_string(),
        "history.json: verified offline".to_string(),
    ] {
        assert!(
            verified.stdout.contains(&expected),
            "{expected}: {verified:?}"
        );
    }

    let mut shown = history.clone();
    shown["pages"][0]["accesses"][0]["consumer"] = "caf".into();
    verify_fails(cwd, "shown.json", &shown, &[], "access entry")?;
    let mut entry = history.clone();
    edit_base64(&mut entry["pages"][0]["accesses"][0]["entry"], |b| {
        b[20] ^= 1
    })?;
    verify_fails(cwd, "entry.json", &entry, &[], "inclusion proof")?;
    Ok(())
}

/// `2026-12-02T10:29:52Z`: RFC 3339, UTC, to the second.
fn assert_rfc3339_seconds(text: &str) -> anyhow::Result<()> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)?;
    anyhow::ensure!(
        text.len() == 20 && text.ends_with('Z') && parsed.offset().is_utc(),
        "not RFC 3339 UTC to the second: {text:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_tail_follow_prints_entries_as_they_land() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let served = serve(cwd)?;
    let addr = served.addr;
    wait_serving(&cwd.join(".unefois-dev/pki"), addr).await?;

    let mut follower = Command::new(unefois_binary()?)
        .current_dir(cwd)
        .args(["audit", "tail", "--follow", "-n", "1", "--as", "cnil"])
        .args(["--addr", &addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = follower
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = |until: Instant| -> anyhow::Result<String> {
        let left = until.saturating_duration_since(Instant::now());
        Ok(lines.recv_timeout(left)?)
    };
    // Following: the latest entry first.
    let first = next_line(Instant::now() + Duration::from_secs(20))?;
    assert!(!first.contains("dgfip"), "{first}");

    unefois_ok(cwd, addr, &fetch_args(&[]))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let exchange = loop {
        let line = next_line(deadline)?;
        if line.contains("exchange") {
            break line;
        }
    };
    let words: Vec<&str> = exchange.split_whitespace().collect();
    assert!(
        exchange.ends_with(
            "granted dgfip.revenu_fiscal_reference mairie-lyon for tarification_cantine"
        ),
        "{exchange}"
    );
    assert_rfc3339_seconds(words[1])?;

    // Ctrl-C ends it cleanly.
    let status = Command::new("kill")
        .args(["-INT", &follower.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = follower.try_wait()? {
            break exit;
        }
        if Instant::now() > deadline {
            follower.kill()?;
            anyhow::bail!("audit tail --follow did not stop on SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    drop(served);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_each_command_quietly() -> anyhow::Result<()> {
    install_crypto();
    let checkout = fresh_checkout()?;
    let cwd = checkout.path();
    let mut served = serve(cwd)?;
    let addr = served.addr;
    wait_serving(&cwd.join(".unefois-dev/pki"), addr).await?;
    unefois_ok(cwd, addr, &fetch_args(&["--out", "receipt.json"]))?;
    let addr = addr.to_string();

    // The reader is gone before the command writes anything (`| head` once it has its line).
    let commands: [&[&str]; 5] = [
        &["audit", "export", "--as", "cnil", "--addr", &addr],
        &[
            "fetch",
            "--as",
            "mairie-lyon",
            "--subject",
            "test:alice",
            "--type",
            "dgfip.revenu_fiscal_reference",
            "--purpose",
            "tarification_cantine",
            "--addr",
            &addr,
        ],
        &["audit", "tail", "--as", "cnil", "--addr", &addr],
        &["registry", "show", "--as", "mairie-lyon", "--addr", &addr],
        &["verify", "receipt.json"],
    ];
    for args in commands {
        let mut child = Command::new(unefois_binary()?)
            .current_dir(cwd)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {} {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }

    // As a shell runs it, the pipeline's status being the command's own.
    let binary = unefois_binary()?;
    for command in [
        format!(
            "{} audit export --as cnil --addr {addr} | head -1",
            binary.display()
        ),
        format!(
            "{} fetch --as mairie-lyon --subject test:alice --type dgfip.revenu_fiscal_reference \
             --purpose tarification_cantine --addr {addr} | head -1",
            binary.display()
        ),
    ] {
        let out = Command::new("bash")
            .current_dir(cwd)
            .args(["-c", &format!("set -o pipefail; {command}")])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{command}: {} {stderr}", out.status);
        assert!(stderr.is_empty(), "{command}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
    let exit = terminate(&mut served.child).await?;
    assert!(exit.success(), "{exit}");
    Ok(())
}

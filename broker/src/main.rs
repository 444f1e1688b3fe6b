//! `unefois`: the broker (`serve`), the federation PKI (`certs`) and participant commands.
//! This file only parses flags and calls into the library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use broker::listener::{AcceptLimits, TlsFiles};
use broker::registry::{Registry, Role};
use clap::{Parser, Subcommand, ValueEnum};
use unefois_certs::{Pki, Validity};
use unefois_proto::v1 as pb;
use unefois_proto::v1::registry_client::RegistryClient;

const DEFAULT_HOME: &str = ".unefois-dev";
const DEFAULT_ADDR: &str = "127.0.0.1:50051";
/// The agent that the development PKI issues for every mediation structure.
const DEV_AGENT: &str = "a.martin";

#[derive(Parser)]
#[command(
    name = "unefois",
    version,
    about = "Une Fois: consented attestations between administrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (with no flag: the embedded development setup).
    Serve(ServeArgs),
    /// Manage the federation PKI.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Read the registry as a participant sees it.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the mTLS listener for participants.
    #[arg(long, default_value = DEFAULT_ADDR)]
    listen: SocketAddr,
    /// Address of the operational listener (health probe); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9451")]
    ops_listen: SocketAddr,
    /// The broker's home: PKI in HOME/pki, state in HOME/data.
    #[arg(long, default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// The registry file.
    #[arg(long, default_value = "examples/registry.toml")]
    registry: PathBuf,
    /// Log output format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Create a development PKI in HOME/pki when it is missing (implied by the default home).
    #[arg(long)]
    dev: bool,
    /// Seconds a client has to finish its TLS handshake.
    #[arg(long, default_value_t = 10)]
    handshake_timeout_secs: u64,
    /// Seconds calls in flight have to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 20)]
    drain_timeout_secs: u64,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a federation CA (if missing) and certificates for the listed participants.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        trust_domain: String,
        /// Comma-separated participant ids.
        #[arg(long, value_delimiter = ',')]
        participants: Vec<String>,
    },
    /// Issue a certificate for an agent of a mediation structure.
    IssueAgent {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        participant: String,
        #[arg(long)]
        agent: String,
    },
    /// Revoke a participant's (`caf`) or an agent's (`france-services-lyon/a.martin`) certificate.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        name: String,
    },
    /// Re-sign the CRL with a new validity (it must be renewed before it expires).
    RenewCrl {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Where the PKI is (HOME/pki).
    #[arg(long, default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// The broker's address.
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: String,
    /// The participant (or `structure/agent`) to act as.
    #[arg(long = "as")]
    as_participant: String,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// What the caller may do: its roles and habilitations.
    Show(ClientArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Certs(cmd) => certs(cmd),
        Command::Registry(RegistryCommand::Show(args)) => registry_show(args).await,
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let pki_dir = args.home.join("pki");
    let dev = args.dev || args.home == Path::new(DEFAULT_HOME);
    if dev {
        dev_pki(&pki_dir, &args.registry)?;
    } else if !pki_dir.join("ca.crt").is_file() {
        bail!(
            "no PKI in {}: create one with `unefois certs init --dir {}` or pass --dev",
            pki_dir.display(),
            pki_dir.display()
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops = tokio::net::TcpListener::bind(args.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.ops_listen))?;
    let addr = listener.local_addr()?;
    let ops_addr = ops.local_addr()?;
    println!("Une Fois broker listening on {addr} (mTLS)");
    println!("Health probe on http://{ops_addr}/healthz");
    println!("Try, in another terminal:");
    let home = args.home.display();
    println!("  cargo run -q -- registry show --home {home} --addr {addr} --as mairie-lyon");
    println!("  cargo run -q -- registry show --home {home} --addr {addr} --as mairie-test");
    println!("  curl http://{ops_addr}/readyz");
    let config = broker::Config {
        registry: args.registry,
        tls: TlsFiles::in_dir(&pki_dir),
        data_dir: args.home.join("data"),
        ops_listener: Some(ops),
        accept: AcceptLimits {
            handshake_timeout: std::time::Duration::from_secs(args.handshake_timeout_secs.max(1)),
            ..AcceptLimits::default()
        },
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_secs),
        journal_faults: None,
    };
    broker::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Creates (or completes) the development PKI: a certificate for every participant of the
/// registry and one agent per mediation structure.
fn dev_pki(pki_dir: &Path, registry: &Path) -> anyhow::Result<()> {
    let registry = Registry::load(registry)?;
    let created = !pki_dir.join("ca.crt").exists();
    let ids: Vec<&str> = registry.participants().map(|p| p.id.as_str()).collect();
    let pki = Pki::init(pki_dir, registry.trust_domain(), &ids)?;
    for p in registry
        .participants()
        .filter(|p| p.has_role(Role::Mediator))
    {
        if !pki.cert_path(&format!("{}/{DEV_AGENT}", p.id)).exists() {
            pki.issue_agent(&p.id, DEV_AGENT, &Validity::default())?;
        }
    }
    if created {
        println!(
            "Created a development PKI in {} (trust domain {}): not for production.",
            pki_dir.display(),
            registry.trust_domain()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the broker");
            let _ = ctrl_c.await;
        }
    }
}

fn certs(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init {
            dir,
            trust_domain,
            participants,
        } => {
            let ids: Vec<&str> = participants.iter().map(String::as_str).collect();
            let pki = Pki::init(&dir, &trust_domain, &ids)?;
            println!(
                "PKI ready in {} (trust domain {}), {} participant certificate(s)",
                dir.display(),
                pki.trust_domain(),
                ids.len()
            );
        }
        CertsCommand::IssueAgent {
            dir,
            participant,
            agent,
        } => {
            let issued =
                Pki::open(&dir)?.issue_agent(&participant, &agent, &Validity::default())?;
            println!(
                "{} issued: {}",
                issued.spiffe_id,
                issued.cert_path.display()
            );
        }
        CertsCommand::Revoke { dir, name } => {
            Pki::open(&dir)?.revoke(&name)?;
            println!(
                "{name} revoked in {}; the broker refuses it once it reloads the CRL",
                dir.join("crl.pem").display()
            );
        }
        CertsCommand::RenewCrl { dir, days } => {
            let now = time::OffsetDateTime::now_utc();
            Pki::open(&dir)?.write_crl(now, now + time::Duration::days(i64::from(days.max(1))))?;
            println!("CRL renewed for {days} day(s)");
        }
    }
    Ok(())
}

async fn registry_show(args: ClientArgs) -> anyhow::Result<()> {
    let channel =
        broker::client::connect(&args.home.join("pki"), &args.as_participant, &args.addr).await?;
    let mut client = RegistryClient::new(channel);
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .context("WhoAmI")?
        .into_inner();
    let habilitations = client
        .list_habilitations(pb::ListHabilitationsRequest {})
        .await
        .context("ListHabilitations")?
        .into_inner();
    let roles: Vec<&str> = me
        .roles()
        .map(|r| r.as_str_name().trim_start_matches("ROLE_"))
        .collect();
    let agent = if me.agent.is_empty() {
        String::new()
    } else {
        format!(", agent {}", me.agent)
    };
    println!("{} ({}){agent}", me.participant, me.name);
    println!("roles: {}", roles.join(", ").to_lowercase());
    println!("registry: sha256 {}", me.registry_sha256);
    let own: Vec<_> = habilitations
        .habilitations
        .iter()
        .filter(|h| h.consumer == me.participant)
        .collect();
    if own.is_empty() {
        println!("habilitations: none (deny by default: this participant may obtain nothing)");
    }
    for h in own {
        let basis = match &h.legal_basis {
            Some(b) if b.kind() == pb::LegalBasisKind::Law => format!("law: {}", b.law_citation),
            _ => "consent of the person".to_string(),
        };
        let until = h
            .expires_at
            .as_ref()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds - 1).ok())
            .map(|t| t.date().to_string())
            .unwrap_or_default();
        println!("habilitation {}", h.id);
        println!(
            "  may obtain {} [{}]",
            h.attestation_type,
            h.claims.join(", ")
        );
        println!("  for {}", h.purposes.join(", "));
        println!("  under {basis}, until {until} inclusive");
    }
    let others = habilitations.habilitations.len()
        - habilitations
            .habilitations
            .iter()
            .filter(|h| h.consumer == me.participant)
            .count();
    if others > 0 {
        println!(
            "{others} habilitation(s) of other participants on its attestation types or in its audit scope"
        );
    }
    Ok(())
}
